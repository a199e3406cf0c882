"""Legends must not cover another panel and text must stay readable in the book's column (stsynth_lib.figure_check),
checked where the library returns a figure."""

import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from stsynth_lib.figure_check import LegendOverlapWarning, check_legends, checked  # noqa: E402


def _two_panels():
    fig, (a, b) = plt.subplots(1, 2, figsize=(6, 3))
    for ax in (a, b):
        ax.plot([0, 1], [0, 1], label="a model with a long name")
    return fig, a, b


def test_check_legends_flags_a_legend_over_the_neighbouring_panel():
    fig, a, b = _two_panels()
    a.legend(loc="upper left", bbox_to_anchor=(0.9, 1.0), fontsize=9)  # reaches into b
    found = check_legends(fig)
    assert len(found) == 1 and "legend of axes 0" in found[0] and "overlaps axes 1" in found[0]
    with pytest.warns(LegendOverlapWarning):
        assert checked(fig) is fig
    plt.close(fig)


def test_check_legends_flags_a_figure_legend_over_a_panel_and_passes_one_outside():
    fig, a, b = _two_panels()
    fig.legend(loc="center")
    assert any(f.startswith("figure legend overlaps") for f in check_legends(fig))
    plt.close(fig)
    fig, (a, b) = plt.subplots(1, 2, figsize=(6, 3), layout="constrained")
    a.plot([0, 1], label="x")
    fig.legend(loc="outside right upper", fontsize=9)
    b.legend(*a.get_legend_handles_labels(), fontsize=9)  # inside its own axes: fine
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_legends(fig) == [] and checked(fig) is fig and checked(None) is None
    plt.close(fig)


def test_figure_check_imports_no_heavy_package():
    import subprocess
    import sys

    code = "import sys, stsynth_lib.figure_check; print(sorted(m for m in ('numpy','pandas','torch') if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.strip() == "[]", r.stdout + r.stderr


def test_a_legend_over_its_twin_axes_is_one_panel():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from stsynth_lib.figure_check import check_legends

    fig, (a, b) = plt.subplots(1, 2, figsize=(6, 3))
    a.plot([0, 1], label="loss")
    twin = a.twinx()
    twin.plot([1, 0], color="C3", label="PSNR")
    a.legend(loc="upper center")
    twin.legend(loc="center right")
    assert check_legends(fig) == []  # the twin shares the panel's box
    b.plot([0, 1], label="x")
    a.legend(loc="center left", bbox_to_anchor=(1.05, 0.5))  # over the neighbouring panel: still reported
    assert any("overlaps axes 1" in p for p in check_legends(fig))
    plt.close(fig)


def test_the_metric_vs_gap_panels_share_one_legend_outside_them():
    """Chapter 6's metric-vs-gap figure: one legend for all panels, under them, overlapping none, and the note under
    the legend (issue 35)."""
    import warnings

    import numpy as np
    import pandas as pd

    from stsynth_lib.evaluate import plot_metrics_vs_gap
    from stsynth_lib.evaluate.data import EvalResult
    from stsynth_lib.figure_check import LegendOverlapWarning, check_legends

    rng = np.random.default_rng(0)
    rows = [{"model": m, "pair_id": i, "aoi": f"a{i % 3}", "gap_months": 1 + i % 12, "psnr": 20 + rng.normal(),
             "ssim": 0.7 + 0.01 * rng.normal()} for m in ("persistence", "pix2pix", "a very long model name (tiny)")
            for i in range(60)]
    per_tile = pd.DataFrame(rows)
    from stsynth_lib.evaluate.data import gap_bucket
    per_tile["gap_bucket"] = gap_bucket(per_tile["gap_months"])
    res = EvalResult.__new__(EvalResult)
    res.per_tile, res.labels = per_tile, {}
    res.summary = pd.DataFrame({"metric": ["psnr", "ssim"]})
    with warnings.catch_warnings():
        warnings.simplefilter("error", LegendOverlapWarning)
        fig = plot_metrics_vs_gap(res, ("psnr", "ssim", "lpips"), n_boot=20, note="LPIPS: none")
    assert len(fig.axes) == 2 and len(fig.legends) == 1 and all(ax.get_legend() is None for ax in fig.axes)
    assert check_legends(fig) == []
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["persistence", "pix2pix", "a very long model name (tiny)"]
    renderer = fig.canvas.get_renderer()
    note = next(t for t in fig.texts if t.get_text() == "LPIPS: none").get_window_extent(renderer)
    legend = fig.legends[0].get_window_extent(renderer)
    assert note.y1 <= legend.y0 + 1  # the note sits under the legend, not on it
    assert legend.y1 <= min(ax.get_window_extent(renderer).y0 for ax in fig.axes)  # the legend under every panel


def test_an_empty_building_mask_is_a_labelled_grey_panel_not_a_black_square():
    import numpy as np

    from stsynth_lib.figure_check import show_mask

    fig, (a, b) = plt.subplots(1, 2)
    mask = np.zeros((8, 8))
    show_mask(a, mask)
    assert [t.get_text() for t in a.texts] == ["no\nbuilding\nhere"]  # a word a line: fits a narrow panel
    fig.set_size_inches(2.4, 1.4)  # two panels of about 0.9 in, a gallery's: "no building here" is wider
    fig.canvas.draw()
    inside = a.get_window_extent(fig.canvas.get_renderer())
    words = a.texts[0].get_window_extent(fig.canvas.get_renderer())
    assert words.x0 >= inside.x0 - 1 and words.x1 <= inside.x1 + 1
    assert float(np.asarray(a.images[0].get_array()).min()) > 0.5  # light grey, not black
    mask[2:4, 2:4] = 1
    show_mask(b, mask)
    assert not b.texts and np.array_equal(np.asarray(b.images[0].get_array()), mask)
    assert b.images[0].get_cmap().name == "gray"
    plt.close(fig)


def test_text_too_small_once_the_book_scales_a_wide_figure_down():
    """A 16-inch figure is shown a cell output's width (676 px): its 10 pt ticks become ~4 pt; the same text in a
    figure of BOOK_WIDTH_IN stays 10.4 pt. Text of an axis turned off is not drawn, so it is not counted."""
    from stsynth_lib.figure_check import BOOK_COLUMN_PX, BOOK_WIDTH_IN, SmallTextWarning, check_text_size, shown_scale

    wide, (a, b) = plt.subplots(1, 2, figsize=(16, 3))
    a.plot([0, 1])
    a.set_title("loss", fontsize=12)
    b.axis("off")
    found = check_text_size(wide)
    assert found and all("in the book" in f for f in found)
    assert any("'loss'" in f and "12 pt" in f for f in found) and len(found) == 2  # the 10 pt ticks, the 12 pt title
    wide.canvas.draw()
    assert shown_scale(wide, wide.canvas.get_renderer()) == pytest.approx(BOOK_COLUMN_PX / ((wide.get_tightbbox().width + 0.2) * 100) * 100 / 96,
                                                                       rel=1e-6)
    with pytest.warns(SmallTextWarning):
        checked(wide)
    narrow, ax = plt.subplots(figsize=(BOOK_WIDTH_IN - 0.2, 3))
    ax.plot([0, 1])
    ax.set_title("loss", fontsize=10)
    assert check_text_size(narrow) == []
    ax.set_title("loss", fontsize=8)  # under 9 pt even at full size
    assert any("'loss'" in f and "8 pt" in f for f in check_text_size(narrow))
    plt.close(wide)
    plt.close(narrow)


def test_image_rows_wrap_long_rows_and_hide_the_unused_cells():
    from stsynth_lib.figure_check import BOOK_WIDTH_IN, image_rows

    fig, rows = image_rows(2, 10, max_cols=7)
    assert len(rows) == 2 and all(len(r) == 10 for r in rows)
    assert len(fig.axes) == 2 * 2 * 7  # two lines of seven per item
    shown = [ax for ax in fig.axes if ax.axison]
    assert len(shown) == 20 and all(ax in shown for r in rows for ax in r)
    assert fig.get_figwidth() <= BOOK_WIDTH_IN + 1e-9
    y = [ax.get_position().y0 for ax in rows[0]]
    assert y[6] > y[7] and y[0] == y[6]  # panel 8 starts a new line
    plt.close(fig)


def test_the_fid_by_gap_figure_fits_the_column_with_its_legend_and_note_under_the_panels():
    """Chapter 7's KID / FID per gap (once an 11-inch figure drawn in the notebook, shown at 66 %): two stacked
    panels, one legend under them, the Inception note under the legend (issue 35)."""
    import pandas as pd

    from stsynth_lib.evaluate import plot_fid_by_gap
    from stsynth_lib.figure_check import BOOK_WIDTH_IN

    rows = [{"model": m, "gap_bucket": b, "kid": 0.01 * (i + 1), "kid_std": 0.002, "fid": 30.0 + 5 * i, "n": 40}
            for m in ("persistence", "pix2pix") for i, b in enumerate(("1", "2-3", "4-6", "all"))]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a legend over a panel or text under 9 pt fails here
        fig = plot_fid_by_gap(pd.DataFrame(rows), calibrated=True, note="Inception: torch hub cache")
    assert fig.get_figwidth() <= BOOK_WIDTH_IN + 1e-9 and len(fig.axes) == 2 and len(fig.legends) == 1
    assert [t.get_text() for t in fig.axes[1].get_xticklabels()] == ["1\n(n=40)", "2-3\n(n=40)", "4-6\n(n=40)"]
    renderer = fig.canvas.get_renderer()
    note = next(t for t in fig.texts if t.get_text().startswith("Inception")).get_window_extent(renderer)
    legend = fig.legends[0].get_window_extent(renderer)
    assert note.y1 <= legend.y0 + 1 and legend.y1 <= min(ax.get_window_extent(renderer).y0 for ax in fig.axes)
    plt.close(fig)
    # the legend names a ControlNet as the FID table does (its short name), never by its run name
    label = "ControlNet [tiny, trained from scratch on the x train split; img2img from the past image, strength 0.1]"
    rows += [dict(r, model="controlnet", label=label) for r in rows if r["model"] == "pix2pix"]
    fig = plot_fid_by_gap(pd.DataFrame(rows), calibrated=True)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["persistence", "pix2pix",
                                                                  "ControlNet (tiny, from scratch)"]
    # one colour per model name, the same as chapter 6's figures give it
    from stsynth_lib.evaluate.data import model_style

    assert [c.lines[0].get_color() for c in fig.axes[0].containers][1:] == [model_style(m)["color"]
                                                                            for m in ("pix2pix", "controlnet")]
    # the KID error bars of the models sit side by side at each gap, not on top of each other
    xs = [c.lines[0].get_xdata() for c in fig.axes[0].containers]  # each model's error-bar points
    assert len(xs) == 3 and all(len(set(col)) == 3 for col in zip(*xs))
    plt.close(fig)


def test_a_legend_over_its_own_axes_data_warns_one_in_an_empty_corner_or_outside_does_not():
    """A legend inside an axes on top of that axes' line / dashed reference line / scatter or errorbar points is a
    LegendCoversDataWarning (reported by ``checked``); one in a corner the data leaves empty, or outside, is not."""
    import numpy as np

    from stsynth_lib.figure_check import LegendCoversDataWarning, check_legend_covers_data

    x = np.linspace(0, 1, 50)

    def figure(draw, **legend_kw):
        fig, ax = plt.subplots(figsize=(5, 3))
        draw(ax)
        ax.legend(fontsize=9, **legend_kw)
        return fig, ax

    covering = [
        (lambda ax: ax.plot(x, 1 - x, label="falling from the top left"), {"loc": "upper left"}),
        (lambda ax: (ax.plot(x, x, label="rising"), ax.axhline(0.5, ls="--", color="gray", label="baseline")),
         {"loc": "center right"}),  # two vertices only: sampled along it
        (lambda ax: (ax.scatter(x, np.full_like(x, 0.5), label="points"), ax.set_ylim(0, 1)), {"loc": "center"}),
        (lambda ax: ax.errorbar(x[::3], np.full(17, 0.1), yerr=0.05, fmt="o", label="means"), {"loc": "lower center"}),
    ]
    for draw, kw in covering:
        fig, ax = figure(draw, **kw)
        assert len(check_legend_covers_data(fig)) == 1 and "covers" in check_legend_covers_data(fig)[0]
        with pytest.warns(LegendCoversDataWarning):
            checked(fig)
        assert issubclass(LegendCoversDataWarning, LegendOverlapWarning)  # the tests' error filter catches it
        plt.close(fig)
    free = [
        (lambda ax: ax.plot(x, x, label="rising"), {"loc": "upper left"}),  # the empty corner above the line
        (lambda ax: ax.plot(x, np.full_like(x, 0.9), label="flat"), {"loc": "upper left", "bbox_to_anchor": (1.02, 1)}),
        (lambda ax: ax.plot(x, x, label="rising"), {"loc": "upper center", "bbox_to_anchor": (0.5, -0.15)}),
    ]
    for draw, kw in free:
        fig, ax = figure(draw, **kw)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert check_legend_covers_data(fig) == [] and checked(fig) is fig
        plt.close(fig)
    fig, ax = plt.subplots()
    ax.plot(x, x)  # no legend: nothing to check
    assert check_legend_covers_data(fig) == []
    plt.close(fig)
