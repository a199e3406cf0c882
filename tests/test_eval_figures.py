"""Chapter 6's figures and the per-area table, as the book shows them: area names readable and apart, a table narrow
enough for the page, models told apart in the metric-vs-gap panels, example figures with horizontal text that fill
the column (stsynth_lib.evaluate.figures, .report, .stats)."""

from __future__ import annotations

import itertools
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from stsynth_lib.figure_check import BOOK_WIDTH_IN, check_legends, check_text_size  # noqa: E402

MODELS = ("pix2pix", "attention_unet", "controlnet", "controlnet_sample_mean")
LABELS = {"controlnet": "ControlNet [tiny, trained from scratch on the x train split (data/x); img2img from the past "
                        "image, strength 0.1]",
          "controlnet_sample_mean": "ControlNet [tiny, trained from scratch on the x train split (data/x); img2img "
                                    "from the past image, strength 0.1; per-pixel mean of 4 samples]"}


def _boxes(fig, texts):
    renderer = fig.canvas.get_renderer()
    return [t.get_window_extent(renderer) for t in texts if t.get_visible() and t.get_text().strip()]


def _overlapping(boxes, min_px: float = 1.0):
    return [(a, b) for a, b in itertools.combinations(boxes, 2)
            if min(a.x1, b.x1) - max(a.x0, b.x0) > min_px and min(a.y1, b.y1) - max(a.y0, b.y0) > min_px]


def _strict(fn, *args, **kw):
    """``fn(*args, **kw)`` with every warning an error: checked() warns on a legend over a panel or text < 9 pt."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args, **kw)


def _area_table(n_areas: int, seed: int = 0) -> pd.DataFrame:
    """A paired_gain_by_area table: SpaceNet 7 style area names, 4 models, 3 baselines."""
    rng = np.random.default_rng(seed)
    areas = [f"L15-{1000 + 37 * k:04d}E-{1100 + 11 * k:04d}N_{4000 + k}_{3000 + k}_13" for k in range(n_areas)]
    level = dict(zip(areas, rng.uniform(16, 29, n_areas)))
    return pd.DataFrame([{"model": m, "baseline": b, "aoi": a, "mean_diff": float(rng.normal(0, 1.5)),
                          "persistence": level[a], "n_pairs": 20}
                         for b in ("persistence", "mean_last_3", "seasonal") for m in MODELS for a in areas])


@pytest.mark.parametrize("n_areas", [7, 16])
def test_gain_by_area_names_every_area_on_the_y_axis_readable_and_apart(n_areas):
    """Problem 1: the per-area figure names every area (7 areas, or 16 blocks) in >= 9 pt labels that overlap
    neither each other nor a panel nor a title, all inside the figure; each panel plots every mean difference."""
    from stsynth_lib.evaluate import plot_gain_by_area
    from stsynth_lib.evaluate.stats import short_area_names

    t = _area_table(n_areas)
    fig = _strict(plot_gain_by_area, t, "psnr", labels=LABELS)
    assert fig.get_figwidth() <= BOOK_WIDTH_IN + 1e-9 and check_text_size(fig) == [] and check_legends(fig) == []
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ticks = [tl for tl in fig.axes[0].get_yticklabels() if tl.get_text()]
    short = short_area_names(t["aoi"])
    assert sorted(tl.get_text().split(" (")[0] for tl in ticks) == sorted(short.values())  # every area, once
    assert all(tl.get_fontsize() >= 9 for tl in ticks)
    boxes = _boxes(fig, ticks)
    assert _overlapping(boxes) == []
    frame = fig.bbox
    drawn = fig.get_tightbbox(renderer)  # inches: nothing reaches past the figure's edges (the book would shrink it)
    assert drawn.x0 >= -0.01 and drawn.x1 <= BOOK_WIDTH_IN + 0.01
    panels = [ax.get_window_extent(renderer) for ax in fig.axes]
    titles = _boxes(fig, [ax.title for ax in fig.axes])
    assert len(titles) == 3 and _overlapping(titles) == []
    for b in boxes:
        assert b.x0 >= frame.x0 and b.x1 <= frame.x1 and b.y0 >= frame.y0 and b.y1 <= frame.y1
        assert not _overlapping([b] + panels[:1]) and all(not _overlapping([b, tb]) for tb in titles)
    order = t.groupby("aoi")["persistence"].first().sort_values().index  # least stable at the top
    assert [tl.get_text().split(" (")[0] for tl in ticks] == [short[a] for a in order]
    for ax, base in zip(fig.axes, ("persistence", "mean_last_3", "seasonal")):
        assert ax.get_title() == f"model - {base}"
        drawn = np.sort(np.concatenate([ln.get_xdata() for ln in ax.lines if ln.get_marker() not in (None, "None")]))
        assert drawn == pytest.approx(np.sort(t[t["baseline"] == base]["mean_diff"].to_numpy()))
    plt.close(fig)


def test_gain_by_area_with_one_area_and_many_models_keeps_its_room():
    """One test area (the smoke profile) and seven models: the figure once shrank to 2.4 in, its title over the
    panels' titles and the legend over the panels. Now: no warning, the title above the panel titles, the legend
    below every panel."""
    from stsynth_lib.evaluate import plot_gain_by_area

    t = _area_table(1)
    t = pd.concat([t.assign(model=f"{m}_{k}") for k in range(2) for m in t["model"].unique()[:4]])
    t = t[t["model"].isin(sorted(t["model"].unique())[:7])]
    fig = _strict(plot_gain_by_area, t, "psnr")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    titles = _boxes(fig, [ax.title for ax in fig.axes])
    assert all(not _overlapping([sup, tb]) for sup in _boxes(fig, [fig._suptitle]) for tb in titles)
    legend = (fig.legends[0] if fig.legends else fig.axes[0].get_legend()).get_window_extent(renderer)
    assert all(legend.y1 <= ax.get_window_extent(renderer).y0 for ax in fig.axes)
    plt.close(fig)


def test_short_area_names_drop_the_tile_suffix_only_while_unique():
    from stsynth_lib.evaluate.stats import short_area_names

    names = ["L15-0434E-1218N_1736_3318_13", "L15-0683E-1006N_2732_4164_13/block-1-2"]
    assert short_area_names(names) == {names[0]: "L15-0434E-1218N", names[1]: "L15-0683E-1006N/block-1-2"}
    same = ["L15-0434E-1218N_1736_3318_13", "L15-0434E-1218N_1737_3318_13"]
    assert short_area_names(same) == {n: n for n in same}


def test_gain_by_area_table_is_long_and_narrow_and_keeps_every_number():
    """Problem 2: one row per (model, area), a column per baseline plus the area's persistence level: no word
    longer than a model name's, no area name wider than its short form; every mean difference and level is there."""
    from stsynth_lib.book.report_format import model_display_name
    from stsynth_lib.evaluate.stats import gain_by_area_table, short_area_names

    t = _area_table(7)
    out = gain_by_area_table(t, "psnr", labels=LABELS, digits=2)
    assert list(out.index.names) == ["model", "area"] and len(out) == 4 * 7
    assert len(out.columns) == 1 + 3  # the level, then model - each baseline (was 3 index columns + 3 wide ones)
    words = [w for c in out.columns for w in str(c).split()] + [w for a in out.index.get_level_values(1)
                                                                for w in a.split()]
    assert max(len(w) for w in words) <= 15  # no long unbreakable header or area name widens a column
    short = short_area_names(t["aoi"])
    for _, r in t.iterrows():
        row = out.loc[(model_display_name(r["model"], LABELS), short[r["aoi"]])]
        assert row[f"model − {r['baseline']}"] == pytest.approx(round(r["mean_diff"], 2))
        assert row["area's persistence PSNR (dB)"] == pytest.approx(round(r["persistence"], 2))
    levels = out.xs("pix2pix", level="model").iloc[:, 0].to_numpy()
    assert np.all(np.diff(levels) >= 0)  # areas in the figure's order: least stable first


def test_metric_vs_gap_draws_one_band_for_persistence_and_a_marker_per_model():
    """Problem 3: with seven models the panels show one confidence band (persistence's), and every other model a
    line of its own colour and marker, all named once in the legend under the panels."""
    from stsynth_lib.evaluate import plot_metrics_vs_gap
    from stsynth_lib.evaluate.data import EvalResult, gap_bucket
    from matplotlib.collections import PolyCollection

    rng = np.random.default_rng(0)
    names = ("persistence", "mean_last_3", "seasonal") + MODELS
    per_tile = pd.DataFrame([{"model": m, "pair_id": i, "aoi": f"a{i % 4}", "gap_months": 1 + i % 12,
                              "psnr": 22 + rng.normal(), "ssim": 0.8 + 0.01 * rng.normal(), "common": True}
                             for m in names for i in range(80)])
    per_tile["gap_bucket"] = gap_bucket(per_tile["gap_months"])
    res = EvalResult.__new__(EvalResult)
    res.per_tile, res.labels = per_tile, LABELS
    res.summary = pd.DataFrame({"metric": ["psnr", "ssim"]})
    fig = _strict(plot_metrics_vs_gap, res, ("psnr", "ssim"), n_boot=20)
    for ax in fig.axes:
        bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
        assert len(bands) == 1  # was one per model: seven overlapping bands
        lines = [ln for ln in ax.lines if ln.get_label() and not ln.get_label().startswith("_")]
        assert len(lines) == len(names)
        pers = next(ln for ln in lines if ln.get_label() == "persistence")
        assert pers.get_linestyle() == "--"
        styles = {(matplotlib.colors.to_hex(ln.get_color()), ln.get_marker()) for ln in lines if ln is not pers}
        assert len(styles) == len(names) - 1  # every model its own colour and marker
    assert len(fig.legends) == 1 and len(fig.legends[0].get_texts()) == len(names)
    plt.close(fig)


@pytest.fixture(scope="module")
def scored(tiny_dataset_dir):
    """The tiny test split scored with its past sequence, plus four models (noisy truths) named as chapter 6's."""
    from stsynth_lib import evaluate as E

    res = E.evaluate_models(tiny_dataset_dir, "test", {}, compute_lpips=False, progress=False, n_boot=10,
                            baselines=("mean_last_3", "seasonal"))
    rng = np.random.default_rng(0)
    for m in MODELS:
        noise = rng.integers(-20, 20, res.data.future.shape)
        res.predictions[m] = np.clip(res.data.future.astype(int) + noise, 0, 255).astype(np.uint8)
        res.available[m] = np.ones(len(res.data), bool)
    res.labels = dict(LABELS)
    return res


def _check_example_figure(fig, n_items: int, n_panels: int, names):
    """Horizontal text only, >= 9 pt, no two texts over each other, every model named whole, the panels of each item
    as wide as the column and spread evenly over their lines (fewer empty cells than lines)."""
    from stsynth_lib.book.report_format import model_display_name

    assert check_text_size(fig) == []
    texts = [t for t in fig.findobj(matplotlib.text.Text) if t.get_visible() and t.get_text().strip()]
    assert texts and all(t.get_rotation() == 0 for t in texts)  # no rotated row labels
    assert _overlapping(_boxes(fig, texts)) == []
    titles = {ax.get_title().replace("_\n", "_").replace("\n", " ") for ax in fig.axes}
    assert {model_display_name(m, LABELS) for m in names} <= titles  # wrapped between words, never inside one
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == n_items * n_panels
    renderer = fig.canvas.get_renderer()
    boxes = [ax.get_window_extent(renderer) for ax in panels[:n_panels]]
    cols = len({round(b.x0) for b in boxes})
    lines = len({round(b.y0) for b in boxes})
    assert cols * lines - n_panels < lines  # 8 panels: 4 + 4, not 5 + 3
    width = max(b.x1 for b in boxes) - min(b.x0 for b in boxes)
    assert width >= 0.9 * fig.bbox.width and fig.get_figwidth() <= BOOK_WIDTH_IN + 1e-9
    drawn = fig.get_tightbbox(renderer)  # inches: nothing (a long header, a title) reaches past the figure's edges
    assert drawn.x0 >= -0.01 and drawn.x1 <= BOOK_WIDTH_IN + 0.01


def test_example_figures_fill_the_column_with_horizontal_readable_text(scored):
    """Problem 4: plot_examples / plot_new_buildings / plot_sequence_examples: a horizontal header per pair (area,
    dates, gap) instead of a rotated label, titles whole at >= 9 pt, panels spread evenly over the width."""
    import dataclasses

    from stsynth_lib import evaluate as E
    from stsynth_lib.evaluate.figures import pick_new_building_pairs, plot_examples, plot_new_buildings

    res = scored
    names = [m for m in res.predictions if m not in ("persistence", "real_future")]
    unlabelled = dataclasses.replace(res, data=dataclasses.replace(res.data, has_mask=np.zeros(len(res.data), bool)))
    fig = _strict(plot_examples, unlabelled, n=2)
    _check_example_figure(fig, 2, 2 + len(names), names)
    headers = [t.get_text() for t in fig.texts if t is not fig._suptitle]
    assert len(headers) == 2 and all("gap" in h and "→" in h for h in headers)
    plt.close(fig)
    picks = pick_new_building_pairs(res, n=2, min_gap_months=0)
    fig = _strict(plot_new_buildings, res, indices=picks)
    _check_example_figure(fig, len(picks), 3 + len(names), names)
    assert all("new-building pixel" in t.get_text() for t in fig.texts if t is not fig._suptitle)
    plt.close(fig)
    fig = _strict(E.plot_sequence_examples, res, n=2)
    _check_example_figure(fig, 2, len(res.data.context_offsets) + 1 + len(names), names)
    plt.close(fig)


def test_gallery_row_labels_are_horizontal_beside_the_panels(scored):
    from stsynth_lib import evaluate as E

    fig = _strict(E.gallery, scored, "seasonal", "psnr")
    assert check_text_size(fig) == []
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    rows = [ax for ax in fig.axes if ax.get_ylabel()]
    assert len(rows) == 3
    for ax in rows:
        assert ax.yaxis.label.get_rotation() == 0
        label = ax.yaxis.label.get_window_extent(renderer)
        assert label.x1 <= ax.get_window_extent(renderer).x0 and label.x0 >= 0  # left of its row, inside the figure
    assert _overlapping(_boxes(fig, [t for t in fig.findobj(matplotlib.text.Text)])) == []
    plt.close(fig)
