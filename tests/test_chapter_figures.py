"""Chapters 1-4's figures as the book shows them (the sn7_real_128 review): tick labels side by side without
overlapping, whole-number count ticks, legends outside the data, labels that name what they show in full, image
panels that fill the column."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from stsynth_lib.figure_check import BOOK_WIDTH_IN, check_legend_covers_data, check_legends  # noqa: E402

from test_context import long_dataset_dir  # noqa: E402,F401  (the 15-month fixture)

REAL_OFFSETS = [0, -1, -2, "same_month_last_year-1", "same_month_last_year", "same_month_last_year+1"]


def _extents(texts, renderer):
    return [t.get_window_extent(renderer) for t in texts if t.get_visible() and t.get_text().strip()]


def _overlapping(texts, renderer) -> list[tuple[str, str]]:
    """Pairs of drawn texts (tick labels of one axis) whose boxes overlap."""
    shown = [t for t in texts if t.get_visible() and t.get_text().strip()]
    boxes = _extents(shown, renderer)
    return [(shown[i].get_text(), shown[j].get_text()) for i in range(len(boxes)) for j in range(i + 1, len(boxes))
            if boxes[i].overlaps(boxes[j])]


def _legend_outside_every_axes(fig, legend) -> bool:
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = legend.get_window_extent(renderer)
    return not any(box.overlaps(ax.get_window_extent(renderer)) for ax in fig.axes if ax.get_visible())


def _strict(fn, *args, **kw):
    """``fn(*args, **kw)`` with every warning an error (a legend over a panel or data, text under 9 pt)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        return fn(*args, **kw)


# ----------------------------------------------------------------------------------------------- chapter 1
def _collection(n_aois=48, labelled=False):
    rng = np.random.default_rng(0)
    rows = [{"aoi": f"L15-{a:04d}E-1204N_5056_4070_13", "date": d, "has_labels": labelled,
             "building_count": float(rng.integers(10, 99)) if labelled else np.nan, "cloud_fraction": np.nan}
            for a in range(n_aois) for d in pd.date_range("2017-07-01", "2020-01-01", freq="MS")[a % 3 * 4:]]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("labelled", [False, True])
def test_collection_overview_month_ticks_do_not_overlap_and_counts_are_whole(labelled):
    from stsynth_lib.data.plots import plot_collection_overview

    fig = _strict(plot_collection_overview, _collection(48, labelled))
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    dated = [ax for ax in fig.axes if "month" in ax.get_title() or "growth" in ax.get_title()]
    assert dated and len(dated) == 1 + labelled
    for ax in dated:
        labels = ax.get_xticklabels()
        assert len(_extents(labels, renderer)) >= 3  # still dated
        assert _overlapping(labels, renderer) == [], ax.get_title()
    hist = fig.axes[0]  # 48 AOIs: how many AOIs have how many months
    for ticks in (hist.get_yticks(), hist.get_xticks()):
        assert len(ticks) >= 3 and all(float(t).is_integer() for t in ticks)  # no 2.5 AOIs, no 22.5 months
    plt.close(fig)


# ----------------------------------------------------------------------------------------------- chapter 2
def _store(labelled, root=None):
    pairs = pd.DataFrame([{"split": s, "gap_months": g} for s, k in (("train", 60), ("val", 12), ("test", 13))
                          for g in range(1, 13) for _ in range(k - 3 * g)])
    rng = np.random.default_rng(0)
    tiles = pd.DataFrame({"valid_fraction": np.clip(1 - rng.exponential(0.01, 500), 0, 1), "has_labels": labelled,
                          "building_fraction": rng.random(500)})
    store = SimpleNamespace(pairs=pairs, tiles=tiles, splits={"train": ["a"] * 34, "val": ["b"] * 7, "test": ["c"] * 7})
    if root is not None:
        store.root = root
    return store


@pytest.mark.parametrize("labelled", [False, True])
def test_dataset_summary_legend_is_off_the_curves_and_gap_ticks_are_whole(labelled):
    from stsynth_lib.data.plots import plot_dataset_summary

    fig = _strict(plot_dataset_summary, _store(labelled))
    legend = fig.axes[0].get_legend()  # still the pairs panel's legend (callers read its texts)
    assert legend is not None and _legend_outside_every_axes(fig, legend)
    assert check_legend_covers_data(fig) == [] and check_legends(fig) == []
    assert [t.get_text() for t in legend.get_texts()][0].startswith("train: 34 AOIs, ")
    assert all(float(t).is_integer() for t in fig.axes[0].get_xticks())  # months: no 2.5
    plt.close(fig)


def test_tile_validity_title_names_only_the_masks_the_store_had(tmp_path):
    from stsynth_lib.data.plots import plot_dataset_summary, validity_sources

    assert validity_sources(_store(False)) == "unusable pixels"  # the store does not tell
    meta = pd.DataFrame({"udm_path": ["", ""], "bands": [4, 4], "dtype": ["uint8", "uint8"]})
    meta.to_parquet(tmp_path / "metadata.parquet")
    fig = plot_dataset_summary(_store(False, tmp_path))
    title = fig.axes[1].get_title()
    assert "UDM" not in title and "alpha" in title and "nodata" in title
    plt.close(fig)
    meta.assign(udm_path=["a_UDM.tif", ""]).to_parquet(tmp_path / "metadata.parquet")
    assert validity_sources(SimpleNamespace(root=tmp_path)).startswith("UDM")
    meta.assign(bands=3).to_parquet(tmp_path / "metadata.parquet")
    assert validity_sources(SimpleNamespace(root=tmp_path)) == "nodata"  # 3-band images: no alpha band either
    meta[["bands"]].to_parquet(tmp_path / "metadata.parquet")  # an older table without udm_path
    assert validity_sources(SimpleNamespace(root=tmp_path)) == "unusable pixels"


# ----------------------------------------------------------------------------------------------- chapters 3-4 curves
def _run(tmp_path):
    step = np.arange(0, 1700, 10)
    # as sn7_real_128's run: G's adversarial loss climbs steeply to where a legend in the upper left sat
    g = np.clip(0.7 + (step - 700) / 60, 0.7, 5.5) + 0.3 * np.sin(step / 37)
    d = np.where(step < 650, 0.69, 0.02)
    pd.DataFrame({"step": step, "loss_g_gan": g, "loss_d_real": d, "loss_d_fake": d, "loss_g_l1": 0.11,
                  "lr": 2e-4, "images_per_s": 30.0, "loss_d": d}).to_csv(tmp_path / "log.csv", index=False)
    steps = [200, 400, 600, 853, 1000, 1200, 1706]
    pd.DataFrame({"step": steps, "epoch": [1, 1, 1, 1, 2, 2, 2], "val_l1": np.linspace(0.146, 0.14, 7),
                  "val_psnr": np.linspace(20.3, 20.6, 7), "val_ssim": 0.72, "best": 1}).to_csv(tmp_path / "val.csv",
                                                                                          index=False)
    scale = np.round(np.arange(0, 1.01, 0.05), 2)
    t = pd.concat([pd.DataFrame({"residual_scale": scale, "full_gap_months": gap, "chosen": False,
                                 "val_l1_area_mean": 0.14 - 0.003 * scale + 0.0015 * scale ** 2 + 1e-4 * gap * scale})
                   for gap in (1.0, 3.0)], ignore_index=True)
    t.loc[(t["full_gap_months"] == 3.0) & (t["residual_scale"] == 0.95), "chosen"] = True
    (tmp_path / "best").mkdir()
    t.to_csv(tmp_path / "best" / "residual_scale.csv", index=False)
    return tmp_path


def test_loss_validation_and_calibration_legends_sit_outside_the_data(tmp_path):
    from stsynth_lib.cgan.plots import plot_losses, plot_residual_calibration, plot_validation

    run = _run(tmp_path)
    figures = {"losses": _strict(plot_losses, run),
               "validation": _strict(plot_validation, run, {"l1": 0.186, "psnr": 18.5, "ssim": 0.65}),
               "calibration": _strict(plot_residual_calibration, run)}
    for name, fig in figures.items():
        legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
        assert len(legends) == 1, name
        texts = [t.get_text() for t in legends[0].get_texts()]
        assert {"losses": "G adversarial", "validation": "persistence", "calibration": "chosen"}[name] in texts
        assert _legend_outside_every_axes(fig, legends[0]), name  # off every curve and dashed line
        assert check_legend_covers_data(fig) == [], name
        assert fig.get_figwidth() <= BOOK_WIDTH_IN + 1e-9, name
    fig = figures["validation"]
    renderer = fig.canvas.get_renderer()
    label = fig._supxlabel.get_window_extent(renderer)
    legend = fig.legends[0].get_window_extent(renderer)
    assert "step" in fig.get_supxlabel() and not label.overlaps(legend)  # the step label between panels and legend
    assert figures["calibration"].axes[0].get_legend() is not None  # still the axes' legend (callers read it)
    for fig in figures.values():
        plt.close(fig)


# ----------------------------------------------------------------------------------------------- chapter 3 weights
def _tile_weights(long_dataset_dir):
    from stsynth_lib.cgan.plots import plot_tile_weights
    from stsynth_lib.conditioning import GuidanceConfig
    from stsynth_lib.data.dataset import PairedTileDataset
    from stsynth_lib.models.registry import build_generator, init_weights

    fitted = tuple((g, (0.2, 0.15, 0.15, 0.15, 0.2, 0.15), -0.05) for g in range(1, 14))
    cfg = GuidanceConfig(context_offsets_months=REAL_OFFSETS, residual_base="linear",
                         linear_base=fitted).resolve(False, 3)
    G = init_weights(build_generator("pix2pix", cfg.n_channels, 3, 32, ngf=8, residual=True,
                                     temporal_fusion="tile_reweight", channels=cfg.channel_names()))
    ds = PairedTileDataset(long_dataset_dir, "all", context_offsets_months=REAL_OFFSETS)
    indices = [len(ds) - 1, len(ds) - 2]  # late pairs: last year's frames present
    return _strict(plot_tile_weights, G, ds, cfg, indices=indices), [str(ds[i]["aoi"]) for i in indices]


def test_tile_weights_labels_fit_side_by_side_and_name_the_whole_area(long_dataset_dir):
    fig, aois = _tile_weights(long_dataset_dir)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    bar_panels = [ax for ax in fig.axes if ax.patches]
    assert len(bar_panels) == 2
    for ax, aoi in zip(bar_panels, aois):
        labels = [t.get_text() for t in ax.get_xticklabels()]
        assert labels == ["past", "t0-1", "t0-2", "t1-13", "t1-12", "t1-11", "bias"]  # the context strip's names
        assert all(t.get_rotation() == 0 for t in ax.get_xticklabels())
        assert _overlapping(ax.get_xticklabels(), renderer) == []
        assert aoi in ax.get_title() and len(aoi) > 16  # the whole name, not its first 16 characters
        title = ax.title.get_window_extent(renderer)
        assert title.x0 >= 0 and title.x1 <= fig.bbox.width  # inside the figure
    assert check_legends(fig) == [] and fig.legends and _legend_outside_every_axes(fig, fig.legends[0])
    plt.close(fig)


def test_frame_weights_rows_are_headed_by_their_pair_and_titles_do_not_collide(long_dataset_dir):
    from stsynth_lib.cgan.plots import plot_frame_weights
    from stsynth_lib.conditioning import GuidanceConfig
    from stsynth_lib.data.dataset import PairedTileDataset
    from stsynth_lib.models.registry import build_generator

    cfg = GuidanceConfig(context_offsets_months=REAL_OFFSETS).resolve(False, 3)
    G = build_generator("pix2pix", cfg.n_channels, 3, 32, ngf=8, residual=True, temporal_fusion="attention",
                        channels=cfg.channel_names())
    ds = PairedTileDataset(long_dataset_dir, "all", context_offsets_months=REAL_OFFSETS)
    fig = _strict(plot_frame_weights, G, ds, cfg, indices=[len(ds) - 1])
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    s = ds[len(ds) - 1]
    assert any(str(s["aoi"]) in t.get_text() and f"+{int(s['gap_months'])} month" in t.get_text() for t in fig.texts)
    titles = [ax.title for ax in fig.axes if ax.get_title()]
    assert [t.get_text().split("\n")[0] for t in titles][:6] == ["past", "t0-1", "t0-2", "t1-13", "t1-12", "t1-11"]
    assert _overlapping(titles + list(fig.texts), renderer) == []  # titles, heading and suptitle apart
    assert fig.get_figwidth() <= BOOK_WIDTH_IN + 1e-9
    plt.close(fig)


# ----------------------------------------------------------------------------------------------- chapter 4 gates
def test_attention_maps_fill_the_column_and_each_row_names_its_pair(long_dataset_dir):
    from stsynth_lib.cgan.plots import plot_attention
    from stsynth_lib.data.dataset import PairedTileDataset
    from stsynth_lib.models import build_generator
    from stsynth_lib.training import collate

    ds = PairedTileDataset(long_dataset_dir, "all")
    batch = collate([ds[i] for i in (0, 5, 9)])
    batch["has_mask"] = torch.zeros(3, dtype=torch.bool)
    torch.manual_seed(0)
    g = build_generator("attention_unet", 4, 3, 32, ngf=4).eval()
    with torch.no_grad():
        fig = _strict(plot_attention, g, torch.cat([batch["past"], batch["future_mask"]], 1), batch, n=3)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    panels = [ax for ax in fig.axes if ax.images and ax.get_aspect() == 1.0]
    cols = len(panels) // 3
    left = min(ax.get_window_extent(renderer).x0 for ax in panels)
    right = max(ax.get_window_extent(renderer).x1 for ax in panels)
    assert (right - left) / fig.dpi >= 0.95 * BOOK_WIDTH_IN  # the panels span the column (no side colour bar)
    assert all(ax.get_window_extent(renderer).width / fig.dpi >= 0.9 * BOOK_WIDTH_IN / cols for ax in panels)
    headings = [t.get_text() for t in fig.texts]
    for i in (0, 5, 9):
        s = ds[i]
        assert any(str(s["aoi"]) in h and f"+{int(s['gap_months'])} month" in h for h in headings)
    assert _overlapping([ax.title for ax in panels if ax.get_title()] + list(fig.texts), renderer) == []
    assert all(t.get_fontsize() >= 9 for t in fig.texts)
    plt.close(fig)
    # a batch without area or dates: rows are still told apart
    from stsynth_lib.data.plots import pair_heading

    assert pair_heading({"past": None}, 1) == "pair 2"
