"""Chapter 5's figures and tables as the book shows them: the conditioning figure draws only the channels that carry
information, legends sit off the curves, the tables fit the cell-output column (no "NaN"), and the two VAE tile
counts say what they count."""

from __future__ import annotations

import html
import re

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402

from stsynth_lib.controlnet.conditioning import conditioning_channels  # noqa: E402
from stsynth_lib.figure_check import BOOK_COLUMN_PX  # noqa: E402

# the real profile's past frames: five months besides the past image
OFFSETS = [0, -1, -2, "same_month_last_year-1", "same_month_last_year", "same_month_last_year+1"]
# a table cell's text in the book (sphinx-book-theme): measured in Chromium, 8.5 px a character and 16 px of padding a
# column over-estimate every chapter-5 table's width by at most 10 %
CHAR_PX, CELL_PAD_PX = 8.5, 16


def _cond(n_bands=3, offsets=OFFSETS, present=(), use_mask=False, mask=None, gap=1 / 24):
    """A conditioning image: a random past image, the frames of ``present`` (positions among the non-zero offsets)
    with bands and half their pixels valid, the others absent (bands 0.5, validity 0, age 0), then mask and gap."""
    rng = np.random.default_rng(0)
    n = conditioning_channels(n_bands, True, use_mask, offsets)
    c = np.zeros((n, 32, 32), np.float32)
    c[:n_bands] = rng.random((n_bands, 32, 32))
    for k in range(len([o for o in offsets if o != 0])):
        ch = n_bands + k * (n_bands + 2)
        c[ch:ch + n_bands] = rng.random((n_bands, 32, 32)) if k in present else 0.5
        if k in present:
            c[ch + n_bands, :16] = 1.0
            c[ch + n_bands + 1] = 0.1
    if use_mask:
        c[-2] = 0.0 if mask is None else mask
    c[-1] = gap
    return c


def _all_text(fig) -> str:
    return "\n".join([t.get_text() for t in fig.texts] + [t.get_text() for ax in fig.axes for t in ax.texts]
                     + [ax.get_title() for ax in fig.axes] + [fig._suptitle.get_text() if fig._suptitle else ""])


def test_conditioning_draws_only_channels_that_carry_information():
    from stsynth_lib.controlnet.plots import plot_conditioning

    # the real profile's case: every past month absent, a constant gap plane -> the past image is the only panel
    fig = plot_conditioning(_cond(), "a prompt", use_mask=False, context_offsets_months=OFFSETS)
    assert len(fig.axes) == 1 and fig.axes[0].get_images()
    text = _all_text(fig)
    assert text.count("absent") == 1, text  # the five absent months in one line
    assert all(tag in text for tag in ("t0-1", "t0-2", "last_year-1", "last_year+1")) and "channels 3-27" in text
    assert "gap plane = 0.04" in text and not any("gap plane" in ax.get_title() for ax in fig.axes)
    plt.close(fig)

    # a present frame and a mask with a building are drawn; the absent frame and the constant gap plane are stated
    offs = [0, -1, "same_month_last_year"]
    mask = np.zeros((32, 32), np.float32)
    mask[8:16, 8:16] = 1
    fig = plot_conditioning(_cond(offsets=offs, present=(0,), use_mask=True, mask=mask, gap=0.25), "p",
                            context_offsets_months=offs)
    titles = [ax.get_title().replace("\n", " ") for ax in fig.axes]
    assert len(fig.axes) == 3 and titles[1].startswith("channels 3-7: frame t0-1")
    assert titles[2] == "channel 13: future mask"
    text = _all_text(fig)
    assert "1 absent month (last_year; channels 8-12)" in text and "channel 14: gap plane = 0.25" in text
    plt.close(fig)

    # an empty mask is a constant plane too: said, not drawn
    fig = plot_conditioning(_cond(offsets=offs, present=(0, 1), use_mask=True), "p", context_offsets_months=offs)
    assert len(fig.axes) == 3 and "channel 13: future mask = 0.00 (no building)" in _all_text(fig)
    assert "absent" not in _all_text(fig)
    plt.close(fig)


def test_conditioning_notes_stay_inside_the_figure():
    from stsynth_lib.controlnet.plots import plot_conditioning

    fig = plot_conditioning(_cond(), "satellite image, February 2018, 1 month later", use_mask=False,
                            context_offsets_months=OFFSETS)
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    box = fig.bbox
    for t in fig.texts:
        e = t.get_window_extent(r)
        assert e.x0 >= box.x0 and e.x1 <= box.x1 and e.y0 >= box.y0, t.get_text()
    notes = [t for t in fig.texts if "absent" in t.get_text()][0].get_window_extent(r)
    assert notes.y1 <= fig.axes[0].get_window_extent(r).y0  # under the panel, not over it
    plt.close(fig)


def _fake_runs(tmp_path):
    """A ControlNet run folder (params.yaml, log.csv) and a stage-1 folder (vae/ and unet/ logs, summary.yaml) whose
    curves fill their panels: wherever a legend sits inside, it covers data."""
    rng = np.random.default_rng(0)
    run = tmp_path / "controlnet"
    run.mkdir()
    (run / "params.yaml").write_text(yaml.safe_dump({"backbone": "tiny-trained", "backbone_description": "tiny"}))
    rows = []
    for s in range(0, 401, 5):
        r = {"step": s, "loss": np.nan if s == 0 else 0.55 + 0.1 * rng.standard_normal(), "images_per_s": 6.3}
        if s % 100 == 0:
            r.update(val_loss=0.575 - 3e-5 * s, val_loss_nocontrol=0.5748, control_gain=5e-5 * s, cond_gain=8e-5 * s)
        rows.append(r)
    pd.DataFrame(rows).to_csv(run / "log.csv", index=False)
    stage1 = tmp_path / "backbone"
    for phase in ("vae", "unet"):
        (stage1 / phase).mkdir(parents=True)
    vs = np.arange(0, 4001, 10)
    v = pd.DataFrame({"step": vs, "loss": 0.12 * np.exp(-vs / 200) + 0.003})
    v["val_psnr_db"] = np.where(vs % 200 == 0, 24 + 10 * (1 - np.exp(-vs / 1500)), np.nan)
    v.loc[v.step == 3400, "val_psnr_db"] = 28.5  # the dip the old legend hid
    v.to_csv(stage1 / "vae" / "log.csv", index=False)
    us = np.arange(0, 401, 10)
    u = pd.DataFrame({"step": us, "loss": 0.5 + 0.5 * np.exp(-us / 60)})
    u["val_loss_ema"] = np.where(us % 200 == 0, 0.52, np.nan)
    u.to_csv(stage1 / "unet" / "log.csv", index=False)
    (stage1 / "summary.yaml").write_text(yaml.safe_dump(
        {"backbone": "tiny-trained", "wall_s": 1410.0,
         "vae_val": {"split": "val", "n_tiles": 32, "psnr_db": 33.91, "ssim": 0.981}}))
    return run, stage1


def _legends_off_their_axes(fig) -> int:
    """The number of legends checked; fails when one overlaps its own axes (or, for a twin, the shared box)."""
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    n = 0
    for ax in fig.axes:
        leg = ax.get_legend()
        if leg is None:
            continue
        a, b = leg.get_window_extent(r), ax.get_window_extent(r)
        w, h = min(a.x1, b.x1) - max(a.x0, b.x0), min(a.y1, b.y1) - max(a.y0, b.y0)
        assert not (w > 0 and h > 0 and w * h >= 4), f"the legend of {ax.get_ylabel()!r} covers its panel"
        n += 1
    return n


def test_training_figures_keep_their_legends_off_the_curves(tmp_path):
    from stsynth_lib.controlnet.adapt_plots import plot_stage1_training
    from stsynth_lib.controlnet.plots import plot_training

    run, stage1 = _fake_runs(tmp_path)
    fig = plot_training(run)
    assert _legends_off_their_axes(fig) == 2
    labels = [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
    assert any(t.startswith("cond_gain") for t in labels)
    plt.close(fig)
    fig = plot_stage1_training(stage1)
    assert _legends_off_their_axes(fig) == 2  # one legend per phase, the VAE's holding its PSNR (twin axis) too
    vae_legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any("PSNR" in t for t in vae_legend) and any("train loss" in t for t in vae_legend)
    plt.close(fig)


def _column_px(table_html: str, words: bool = False) -> float:
    """The width of an HTML table (index and header included) as the book shows it, each column as wide as its widest
    cell text; ``words``: as narrow as its widest word (the browser wraps the rest: the least it can take)."""
    widths: dict[int, int] = {}
    for row in re.findall(r"<tr[^>]*>(.*?)</tr>", table_html, re.S):
        for j, cell in enumerate(re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, re.S)):
            text = html.unescape(cell.strip())
            n = max((len(w) for w in text.split()), default=0) if words else len(text)
            widths[j] = max(widths.get(j, 0), n)
    return sum(CHAR_PX * n + CELL_PAD_PX for n in widths.values())


def _fits(df: pd.DataFrame, words: bool = False) -> None:
    h = df.to_html()
    assert _column_px(h, words) <= BOOK_COLUMN_PX, f"{_column_px(h, words):.0f} px:\n{df}"
    assert not re.search(r">\s*(NaN|nan|None)\s*<", h), h


def _sweep(with_f1: bool):
    from stsynth_lib.controlnet.strength import StrengthSweep

    rows = []
    for s, p in zip([0.1, 0.2, 0.3, 0.6], [18.6482, 18.6361, 18.5844, 18.3027]):
        for model, d in (("controlnet", 0.0), ("prompt_only", 0.1)):
            rows.append({"strength": s, "model": model, "psnr": p - d, "ssim": 0.6597 - d / 10,
                         "lpips": 0.2328 + d / 10, "f1_new": 0.41 - d if with_f1 else np.nan, "n": 256})
    pers = {"psnr": 18.5746, "ssim": 0.6574, "lpips": 0.2340, "f1_new": 0.2 if with_f1 else float("nan")}
    return StrengthSweep(pd.DataFrame(rows), pers, 0.1, "psnr", "val", 256, True, {})


def test_chapter5_tables_fit_the_column_without_nan(tmp_path):
    from stsynth_lib.controlnet.adapt_plots import ceiling_table, vae_scores_table
    from stsynth_lib.controlnet.plots import training_log_table
    from stsynth_lib.controlnet.strength import sweep_table

    run, _ = _fake_runs(tmp_path)
    log = training_log_table(run)
    _fits(log)
    assert list(log.index) == [0, 100, 200, 300, 400] and "n/a" in log.iloc[0].tolist()  # no train loss at step 0

    table = sweep_table(_sweep(False))
    _fits(table)
    assert len(table) == 9 and table["strength"].tolist()[0] == "0.1 (chosen)"  # long: a row per (strength, model)
    assert "persistence (same tiles)" in table["strength"].tolist()
    _fits(sweep_table(_sweep(True)), words=True)  # with the new-building F1 too, wrapped at the spaces at most

    scores = pd.DataFrame([
        {"": "VAE ceiling (tiny, from scratch)", "pairs": 1451, "psnr_db": 33.581, "ssim": 0.977,
         "psnr_minus_persistence_db": 11.449, "ssim_minus_persistence": 0.199},
        {"": "persistence", "pairs": 1451, "psnr_db": 22.132, "ssim": 0.778, "psnr_minus_persistence_db": 0.0,
         "ssim_minus_persistence": 0.0}]).set_index("")
    ceiling = ceiling_table(scores)
    _fits(ceiling)
    assert ceiling.loc["PSNR (dB)", "Δ vs persistence"] == "+11.45" and "1451 pairs" == ceiling.columns.name
    _fits(vae_scores_table([{"split": "val", "n_tiles": 162, "psnr_db": 33.883, "ssim": 0.981},
                            {"split": "test", "n_tiles": 170, "psnr_db": 33.726, "ssim": 0.977}]))


def test_the_two_vae_tile_counts_say_what_they_count(tmp_path):
    """Stage 1's summary counts the max_val_tiles subset validated during training (32 on sn7_real_128); the
    chapter's table scores every tile of the split (162): two labels, never the same."""
    from stsynth_lib.controlnet.adapt_plots import stage1_summary_table, vae_scores_table

    _, stage1 = _fake_runs(tmp_path)
    summary = stage1_summary_table(stage1)
    during = summary.loc[summary["value"] == "32", "setting"].tolist()
    assert len(during) == 1 and "during training" in during[0] and "max_val_tiles" in during[0]
    assert "vae_val / split" not in summary["setting"].tolist()
    scored = vae_scores_table([{"split": "val", "n_tiles": 162, "psnr_db": 33.9, "ssim": 0.98}])
    count_col = [c for c in scored.columns if "tiles" in c]
    assert count_col == ["tiles scored (whole split)"] and scored.loc["val", count_col[0]] == 162
    assert count_col[0] != during[0]


def test_the_width_estimate_flags_the_old_log_table():
    """The estimate is not lenient: the log table as chapter 5 showed it (raw column names, images_per_s, NaN) is
    wider than the column (Chromium: 716 px in a 676 px output)."""
    old = pd.DataFrame({"step": [0, 100], "loss": [np.nan, 0.5562], "val_loss": [0.5748, 0.574],
                        "val_loss_nocontrol": [0.5748, 0.5748], "control_gain": [0.0, 0.0014],
                        "cond_gain": [0.0, 0.0014], "images_per_s": [np.nan, 6.4872]})
    with pytest.raises(AssertionError, match="px"):
        _fits(old)
