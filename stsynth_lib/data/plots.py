"""Figures for the data chapters (notebooks 01 and 02). Each function returns a matplotlib Figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from stsynth_lib.book.report_format import plural
from stsynth_lib.figure_check import BOOK_WIDTH_IN, checked, legend_below, show_mask

ATTRIBUTION = "SpaceNet 7 (SpaceNet LLC / Planet), CC BY-SA 4.0"


def _plt():
    import matplotlib.pyplot as plt

    return plt


def plot_aoi_timeline(meta: pd.DataFrame, aoi: str | None = None, n_months: int = 6, footprints: bool = True,
                      source_note: str | None = None):
    """One AOI over time: ``n_months`` images evenly spread over its months, footprints outlined in yellow."""
    from stsynth_lib.data.io import read_raster, to_uint8_image
    from stsynth_lib.data.rasterize import footprint_mask

    plt = _plt()
    aoi = aoi or meta.groupby("aoi")["building_count"].max().fillna(0).idxmax()
    g = meta[meta["aoi"] == aoi].sort_values("month_index")
    picks = g.iloc[np.unique(np.linspace(0, len(g) - 1, min(n_months, len(g))).round().astype(int))]
    cols = min(len(picks), 4)  # wrapped: four images a row stay large enough to see buildings in
    rows = -(-len(picks) // cols)
    side = BOOK_WIDTH_IN / cols
    fig, axes = plt.subplots(rows, cols, figsize=(BOOK_WIDTH_IN, (side + 0.55) * rows + 0.3), squeeze=False)
    for ax in axes.ravel()[len(picks):]:
        ax.axis("off")
    for ax, (_, row) in zip(axes.ravel(), picks.iterrows()):
        img, prof = read_raster(row["image_path"], with_profile=True)
        rgb = to_uint8_image(img[:3]).transpose(1, 2, 0)
        ax.imshow(rgb)
        title = f"{row['year']}-{row['month']:02d}"
        if footprints and row["has_labels"]:
            mask = footprint_mask(row.to_dict(), img.shape[1:], prof["transform"],
                                  prof["crs"].to_string() if prof["crs"] else None)
            ax.contour(mask, levels=[0.5], colors="yellow", linewidths=0.5)
            title += f"\n{plural(int(row['building_count']), 'building')}"
        if row.get("cloud_fraction", 0) and row["cloud_fraction"] > 0:
            title += f", {row['cloud_fraction']:.0%} cloud"
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.suptitle(f"{aoi}" + (f"\n({source_note})" if source_note else ""), fontsize=10)
    fig.tight_layout()
    return checked(fig)


def _two_or_three_panels(three: bool):
    """A figure as wide as the book's column with two panels side by side, or three (two rows, the fourth cell
    left out): ``(fig, [axes...])``."""
    plt = _plt()
    if not three:
        fig, axes = plt.subplots(1, 2, figsize=(BOOK_WIDTH_IN, 3.5))
        return fig, list(axes)
    fig, grid = plt.subplots(2, 2, figsize=(BOOK_WIDTH_IN, 6.5))
    grid[1, 1].remove()
    return fig, [grid[0, 0], grid[0, 1], grid[1, 0]]


def _whole_numbers(*axes) -> None:
    """Ticks at whole numbers only on these axes (counts, months: no 2.5 AOIs)."""
    from matplotlib.ticker import MaxNLocator

    for axis in axes:
        axis.set_major_locator(MaxNLocator(integer=True))


def _month_ticks(ax) -> None:
    """A date x axis with at most seven ticks, labelled concisely (``2018``, ``Apr``, ...) and unrotated: the
    labels of a tick per quarter, rotated, ran into each other in a half-width panel."""
    import matplotlib.dates as mdates

    locator = mdates.AutoDateLocator(minticks=3, maxticks=7)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))


def plot_collection_overview(meta: pd.DataFrame):
    """Months per AOI, building growth per AOI (only when the tree has building labels: no empty panel) and cloud
    cover per month (images per month without UDM masks)."""
    labelled = bool(meta["has_labels"].any())
    fig, axes = _two_or_three_panels(labelled)
    months = meta.groupby("aoi").size().sort_values()
    if len(months) <= 12:  # one bar per AOI, named
        # outlined and hatched, not filled: a filled bar is a one-colour rectangle that book-check cannot tell from
        # an empty image panel (its "constant image" finding)
        axes[0].barh(range(len(months)), months.to_numpy(), fill=False, edgecolor="tab:blue", hatch="//")
        axes[0].set_yticks(range(len(months)), [a[:16] for a in months.index], fontsize=9)
        axes[0].set_xlabel("months with an image")
        axes[0].set_title("Months per AOI", fontsize=11)
    else:  # too many AOIs to name readably: how many AOIs have how many months
        axes[0].hist(months.to_numpy(), bins=np.arange(months.min() - 0.5, months.max() + 1.5), histtype="step",
                     linewidth=1.5, color="tab:blue")  # outlined, as the bars above
        axes[0].set_xlabel("months with an image")
        axes[0].set_ylabel("AOIs")
        axes[0].set_title(f"Months per AOI ({len(months)} AOIs)", fontsize=11)
        _whole_numbers(axes[0].yaxis)
    _whole_numbers(axes[0].xaxis)
    if labelled:
        for aoi, g in meta[meta["has_labels"]].groupby("aoi"):
            axes[1].plot(g["date"], g["building_count"], lw=1, alpha=0.7)
        axes[1].set_ylabel("buildings labelled")
        axes[1].set_title("Building growth (a line per AOI)", fontsize=11)
        _month_ticks(axes[1])
    last = axes[-1]
    if meta["cloud_fraction"].notna().any():
        cc = meta.groupby("date")["cloud_fraction"].mean()
        last.bar(cc.index, cc.to_numpy(), width=20, color="tab:gray")
        last.set_ylabel("mean UDM cloud fraction")
        last.set_title("Cloud cover per month", fontsize=11)
    else:
        per_month = meta.groupby("date").size()
        last.bar(per_month.index, per_month.to_numpy(), width=20, color="tab:gray")
        last.set_ylabel("images")
        last.set_title("Images per month (no UDM)", fontsize=11)
        _whole_numbers(last.yaxis)
    _month_ticks(last)
    fig.tight_layout()
    return checked(fig)


def plot_dataset_summary(store):
    """Pairs per time gap and split (its legend outside the panel: under the panels, or in the fourth cell), tiles'
    usable-pixel fraction, and building cover of tiles (only when the tiles have building labels: no empty
    panel)."""
    pairs, tiles = store.pairs, store.tiles
    labelled = bool(tiles["has_labels"].any())
    fig, axes = _two_or_three_panels(labelled)
    for split, colour in zip(("train", "val", "test"), ("tab:blue", "tab:orange", "tab:green")):
        counts = pairs[pairs["split"] == split]["gap_months"].value_counts().sort_index()
        axes[0].plot(counts.index, counts.to_numpy(), "o-", ms=3, color=colour,
                     label=f"{split}: {plural(len(store.splits[split]), 'AOI')}, {plural(int((pairs['split'] == split).sum()), 'pair')}")
    axes[0].set_xlabel("time gap (months)")
    axes[0].set_ylabel("pairs")
    axes[0].set_title("Pairs per time gap", fontsize=11)
    _whole_numbers(axes[0].xaxis)
    axes[1].hist(tiles["valid_fraction"], bins=20, color="tab:gray")
    axes[1].set_xlabel("usable-pixel fraction of a tile")
    axes[1].set_title(f"Tile validity\n({validity_sources(store)})", fontsize=11)
    if labelled:
        axes[2].hist(tiles.loc[tiles["has_labels"], "building_fraction"], bins=20, color="tab:red")
        axes[2].set_xlabel("building cover of a tile")
        axes[2].set_title("Building cover", fontsize=11)
        fig.tight_layout()
        right, low = axes[1].get_position(), axes[2].get_position()  # the empty fourth cell: right column, row 2
        axes[0].legend(loc="center", bbox_to_anchor=(right.x0, low.y0, right.width, low.height),
                       bbox_transform=fig.transFigure, fontsize=9, title="pairs per split", title_fontsize=9)
    else:
        fig.set_figheight(fig.get_figheight() + 0.5)
        legend_below(fig, *axes[0].get_legend_handles_labels(), ncol=2, ax=axes[0])
    return checked(fig)


def validity_sources(store) -> str:
    """What marked a tile's pixels unusable, for a title, from the store's ``metadata.parquet``: the UDM (cloud)
    masks only when its images had them, the alpha band only for 4-band 8-bit images, nodata always;
    ``unusable pixels`` when the store does not tell."""
    try:
        meta = pd.read_parquet(Path(store.root) / "metadata.parquet", columns=["udm_path", "bands", "dtype"])
    except (AttributeError, TypeError, OSError, KeyError, ValueError):  # no folder, no table, an older table
        return "unusable pixels"
    udm = bool((meta["udm_path"].fillna("").astype(str) != "").any())
    alpha = bool(((meta["bands"] == 4) & (meta["dtype"].astype(str) == "uint8")).any())
    return ", ".join(["UDM"] * udm + ["alpha"] * alpha + ["nodata"])


def plot_pair_examples(dataset, n: int = 4, seed: int = 0):
    """``n`` random pairs of a ``PairedTileDataset``: past | future mask (only when a shown pair is labelled) |
    future, one row each."""
    from stsynth_lib.data.dataset import to_uint8

    plt = _plt()
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(dataset), size=min(n, len(dataset)), replace=False)
    samples = [dataset[int(i)] for i in idx]
    labelled = any(bool(s["has_mask"]) for s in samples)  # no labels: no all-black mask column
    cols = 3 if labelled else 2
    fig, axes = plt.subplots(len(idx), cols, figsize=(min(2.5 * cols, BOOK_WIDTH_IN), 2.5 * len(idx)), squeeze=False)
    for r, s in enumerate(samples):
        axes[r, 0].imshow(to_uint8(s["past"][:3]).transpose(1, 2, 0))
        axes[r, 0].set_title(f"past {int(s['past_year'])}-{int(s['past_month']):02d}", fontsize=9)
        if labelled:
            show_mask(axes[r, 1], s["future_mask"][0])
            axes[r, 1].set_title("future buildings" if bool(s["has_mask"]) else "no labels", fontsize=9)
        fut = axes[r, cols - 1]
        fut.imshow(to_uint8(s["future"][:3]).transpose(1, 2, 0))
        inval = 1 - s["valid"][0].numpy()
        if inval.any():
            fut.contour(inval, levels=[0.5], colors="cyan", linewidths=0.6)
        fut.set_title(f"future {int(s['future_year'])}-{int(s['future_month']):02d} (+{int(s['gap_months'])} mo)",
                      fontsize=9)
        for ax in axes[r]:
            ax.axis("off")
    fig.tight_layout()
    return checked(fig)


SPLIT_COLOURS = {"train": "tab:blue", "val": "tab:orange", "test": "tab:green"}


def _mosaic_from_tiles(store, aoi: str, month_index: int) -> np.ndarray:
    """The AOI's image at ``month_index`` put back together from its stored tiles (black where no tile is kept)."""
    g = store.tiles[(store.tiles["aoi"] == aoi) & (store.tiles["month_index"] == month_index)]
    t = store.tile_size_px
    h, w = int(g["row_off"].max()) + t, int(g["col_off"].max()) + t
    img = np.zeros((h, w, 3), np.uint8)
    for tr in g.itertuples():
        img[tr.row_off : tr.row_off + t, tr.col_off : tr.col_off + t] = store.images[tr.tile_id][:3].transpose(1, 2, 0)
    return img


def _mosaic_masks(store, aoi: str, month_index: int) -> np.ndarray:
    g = store.tiles[(store.tiles["aoi"] == aoi) & (store.tiles["month_index"] == month_index)]
    t = store.tile_size_px
    out = np.zeros((int(g["row_off"].max()) + t, int(g["col_off"].max()) + t), np.uint8)
    for tr in g.itertuples():
        out[tr.row_off : tr.row_off + t, tr.col_off : tr.col_off + t] = store.masks[tr.tile_id]
    return out


def plot_block_split(store, aoi: str | None = None, month_index: int | None = None):
    """A ``split_by="block"`` split over the AOI's image: blocks filled by split, kept tiles outlined.

    The image is rebuilt from the store's tiles of ``month_index`` (default: the AOI's last month), so areas of
    dropped tiles (crossing a block border) stay black.
    """
    import json

    from matplotlib.patches import Patch, Rectangle

    plt = _plt()
    blocks = json.loads((store.root / "splits.json").read_text()).get("blocks")
    if not blocks:
        raise ValueError(f"{store.root} was built with split_by='aoi': there are no blocks to draw.")
    aoi = aoi or blocks[0]["aoi"]
    g = store.tiles[store.tiles["aoi"] == aoi]
    month_index = int(g["month_index"].max()) if month_index is None else int(month_index)
    fig, ax = plt.subplots(figsize=(6.4, 6.9))
    ax.imshow(_mosaic_from_tiles(store, aoi, month_index))
    counts = {s: 0 for s in SPLIT_COLOURS}
    for b in (b for b in blocks if b["aoi"] == aoi):
        counts[b["split"]] += 1
        ax.add_patch(Rectangle((b["col0"] - 0.5, b["row0"] - 0.5), b["col1"] - b["col0"], b["row1"] - b["row0"],
                               facecolor=SPLIT_COLOURS[b["split"]], alpha=0.35, edgecolor="white", lw=2))
    first = _mosaic_masks(store, aoi, int(g["month_index"].min()))
    new = _mosaic_masks(store, aoi, month_index) > first
    if new.any():
        ax.contour(new, levels=[0.5], colors="red", linewidths=0.6)
    t = store.tile_size_px
    for tr in g[["row_off", "col_off"]].drop_duplicates().itertuples():
        ax.add_patch(Rectangle((tr.col_off - 0.5, tr.row_off - 0.5), t, t, fill=False, edgecolor="black", lw=0.6,
                               ls="--"))
    ax.legend(handles=[Patch(color=c, alpha=0.6, label=f"{s}: {plural(counts[s], 'block')}") for s, c in SPLIT_COLOURS.items()],
              loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=3, fontsize=9)
    row = g[g["month_index"] == month_index].iloc[0]
    ax.set_title(f"{aoi}, {int(row['year'])}-{int(row['month']):02d}: blocks by split, tiles dashed,\n"
                 "new buildings since the first month in red", fontsize=10)
    ax.set_xlabel("column (px)")
    ax.set_ylabel("row (px)")
    fig.tight_layout()
    return checked(fig)


def month_label(year_month: int) -> str:
    """``year * 12 + month`` -> ``"YYYY-MM"``."""
    return f"{(year_month - 1) // 12}-{(year_month - 1) % 12 + 1:02d}"


def short_offset_label(offset) -> str:
    """``t0``, ``t0-1``, ``t1-12``, ``t1-13``: a context offset as a small panel title."""
    from stsynth_lib.data.dataset import last_year_shift

    shift = last_year_shift(offset)
    if shift is not None:
        return f"t1-{12 - shift}"
    return "t0" if offset == 0 else f"t0{offset:+d}"


def pair_heading(batch, i: int) -> str:
    """Which pair item ``i`` of a collated batch is, as a figure's row heading: its area, past and future month and
    gap (those the batch has; else ``pair i + 1``)."""
    parts = [str(batch["aoi"][i])] if "aoi" in batch else []
    if all(f"{t}_{u}" in batch for t in ("past", "future") for u in ("year", "month")):
        past, future = (int(batch[f"{t}_year"][i]) * 12 + int(batch[f"{t}_month"][i]) for t in ("past", "future"))
        parts.append(f"{month_label(past)} \u2192 {month_label(future)}")
    if "gap_months" in batch:
        parts.append(f"+{plural(int(batch['gap_months'][i]), 'month')}")
    return ", ".join(parts) or f"pair {i + 1}"


def pairs_with_full_context(dataset, n: int = 1, search: int = 500) -> list[int]:
    """The first ``n`` of the first ``search`` pairs of a context dataset whose frames are all present (falling back
    to the first pairs when fewer are): the pairs a figure about the past sequence shows by default."""
    full = [i for i in range(min(len(dataset), search)) if bool(dataset[i]["context_present"].all())]
    return (full or list(range(len(dataset))))[:n]


def plot_context_strip(dataset, index: int | None = None, suptitle: str | None = None):
    """The frames a context model sees for one pair of a ``PairedTileDataset`` built with
    ``context_offsets_months``, with their dates, then the target (t1). Absent frames (no image that month, or a
    same-month-last-year frame after t0) are grey; cloud/no-data pixels are outlined in cyan. ``index`` None: the
    first pair whose frames are all present (else pair 0)."""
    from stsynth_lib.data.dataset import to_uint8

    offsets = getattr(dataset, "context_offsets_months", None)
    if not offsets:
        raise ValueError("plot_context_strip needs a dataset built with context_offsets_months (e.g. "
                         "PairedTileDataset(..., context_offsets_months=[0, -1, -2, 'same_month_last_year']))")
    if len(dataset) == 0:
        raise ValueError("the dataset has no pairs: nothing to show")
    if index is None:
        index = pairs_with_full_context(dataset, 1)[0]
    s = dataset[int(index)]
    t1 = int(s["future_year"]) * 12 + int(s["future_month"])
    plt = _plt()
    k = len(offsets)
    side = min(2.3, BOOK_WIDTH_IN / (k + 1))
    fig, axes = plt.subplots(1, k + 1, figsize=(side * (k + 1), side + 1.0), squeeze=False)
    for j, o in enumerate(offsets):
        ax = axes[0, j]
        if bool(s["context_present"][j]):
            ax.imshow(to_uint8(s["context"][j][:3]).transpose(1, 2, 0))
            inval = 1 - s["context_valid"][j][0].numpy()
            if inval.any():
                ax.contour(inval, levels=[0.5], colors="cyan", linewidths=0.6)
            date = month_label(t1 - int(s["context_age_months"][j]))
        else:
            ax.imshow(np.full(tuple(s["past"].shape[-2:]) + (3,), 200, np.uint8))
            ax.text(0.5, 0.5, "absent", transform=ax.transAxes, ha="center", va="center", fontsize=9)
            date = "-"
        ax.set_title(f"{short_offset_label(o)}\n{date}", fontsize=9)
    ax = axes[0, k]
    ax.imshow(to_uint8(s["future"][:3]).transpose(1, 2, 0))
    ax.set_title(f"t1 (+{int(s['gap_months'])} mo)\n{month_label(t1)}", fontsize=9, fontweight="bold")
    for ax in axes[0]:
        ax.axis("off")
    fig.suptitle(suptitle or f"What a context model sees: {s['aoi']}, pair {int(s['pair_id'])}\n"
                 "(t0: the past image; t0-k: k months before it; t1-k: k months before the target)", fontsize=10)
    fig.tight_layout()
    return checked(fig)
