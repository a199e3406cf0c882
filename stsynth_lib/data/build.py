"""From a scanned SpaceNet 7 tree to the tile store that every model reads.

Steps, each a function with its own tests:

* :func:`split_aois`  -- AOIs into train/val/test, deterministic from a seed (no AOI in two splits);
* :func:`build_pairs` -- (past month t0, future month t1) pairs within an AOI, ``min_gap <= t1 - t0 <= max_gap``;
* :func:`tile_grid` / :func:`tile_transform` -- cut mosaics into ``tile_size_px`` tiles (every pixel covered: the
  last row/column of tiles shifts inward) with their geotransforms;
* :func:`build_dataset` -- read each image once, rasterise its footprints, cut tiles, write the store
  (see :mod:`stsynth_lib.data.dataset` for the format) into a temporary folder renamed when complete.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import yaml

from stsynth_lib.data.blocks import SPLIT_BY, STRATIFY, allocate, block_split, new_building_weights
from stsynth_lib.data.errors import SN7DataError


def split_aois(aois: Sequence[str], fractions: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0) -> dict[str, list[str]]:
    """Assign each AOI to exactly one of train/val/test.

    Deterministic from ``seed`` and independent of the input order. With three
    or more AOIs every split gets at least one.
    """
    uniq = sorted(set(aois))
    rng = np.random.default_rng(seed)
    return allocate([uniq[i] for i in rng.permutation(len(uniq))], fractions)


def build_pairs(meta: pd.DataFrame, min_gap_months: int = 1, max_gap_months: int = 12) -> pd.DataFrame:
    """All (t0, t1) month pairs within each AOI with ``min_gap <= t1 - t0 <= max_gap`` (t1 > t0 strictly).

    ``meta`` needs ``aoi`` and ``month_index``; the result has ``aoi,
    past_index, future_index`` (row labels of ``meta``) and ``gap_months``.
    """
    if min_gap_months < 1:
        raise ValueError(f"min_gap_months must be >= 1 (a pair needs t1 > t0), got {min_gap_months}")
    if max_gap_months < min_gap_months:
        raise ValueError(f"max_gap_months ({max_gap_months}) < min_gap_months ({min_gap_months})")
    out = []
    for aoi, g in meta.groupby("aoi", sort=True):
        idx = g.index.to_numpy()
        mi = g["month_index"].to_numpy()
        gap = mi[None, :] - mi[:, None]  # [past, future]
        p, f = np.nonzero((gap >= min_gap_months) & (gap <= max_gap_months))
        out.append(pd.DataFrame({"aoi": aoi, "past_index": idx[p], "future_index": idx[f], "gap_months": gap[p, f]}))
    if not out:
        return pd.DataFrame(columns=["aoi", "past_index", "future_index", "gap_months"])
    return pd.concat(out, ignore_index=True)


def _offsets(length: int, tile_size_px: int) -> list[int]:
    """Tile starts along one axis: every ``tile_size_px``, plus one last tile shifted inward to end at the edge."""
    starts = list(range(0, length - tile_size_px + 1, tile_size_px))
    if starts[-1] + tile_size_px < length:
        starts.append(length - tile_size_px)  # overlaps its neighbour; all its pixels are real
    return starts


def tile_grid(height: int, width: int, tile_size_px: int) -> list[tuple[int, int]]:
    """Top-left (row, col) offsets of tiles that cover every pixel of the image.

    Tiles sit every ``tile_size_px``; where the size is not a multiple of the tile size (SpaceNet 7 has
    1023-row images), the last row/column of tiles is shifted inward to end at the image edge, so it overlaps
    its neighbour instead of being dropped or padded. Images that are a multiple of the tile size get the plain
    non-overlapping grid.
    """
    if tile_size_px > min(height, width):
        raise SN7DataError(
            f"tile_size_px={tile_size_px} is larger than the image ({height}x{width} px). "
            f"Choose tile_size_px <= {min(height, width)}."
        )
    return [(r, c) for r in _offsets(height, tile_size_px) for c in _offsets(width, tile_size_px)]


def compose(a, b):
    """Affine composition ``a`` then ``b`` in pixel space (``a @ b``; ``*`` on affine < 2.4)."""
    return a @ b if hasattr(type(a), "__matmul__") else a * b


def tile_transform(transform, row_off: int, col_off: int):
    """Geotransform of a tile whose top-left pixel is (row_off, col_off) of the mosaic."""
    from affine import Affine

    return compose(transform, Affine.translation(col_off, row_off))


def _resample(arr: np.ndarray, size: int, nearest: bool) -> np.ndarray:
    """Resize (C, H, W) to (C, size, size): area averaging for images, nearest for masks."""
    from PIL import Image

    res = Image.NEAREST if nearest else Image.BOX
    return np.stack([np.asarray(Image.fromarray(b).resize((size, size), res)) for b in arr])


MIN_MODEL_TILE_PX = 32  # the cGANs' U-Net needs a power of two, the 3-layer PatchGAN at least 32 px


def check_tile_size(tile_size_px: int) -> None:
    """Refuse tile sizes the models cannot take, at build time rather than after a build and at training."""
    t = int(tile_size_px)
    if t < MIN_MODEL_TILE_PX or t & (t - 1):
        ok = ", ".join(str(2**k) for k in range(5, 11))
        raise SN7DataError(
            f"tile_size_px={tile_size_px}: the models need a power of two of at least {MIN_MODEL_TILE_PX} px "
            f"({ok}): the cGAN U-Net halves the tile down to 1 px and its 70x70 PatchGAN needs >= 32 px. "
            "Set tile_size_px in params/<profile>/common.yaml (and resize_to_px, if used) and rebuild; "
            "build_dataset(..., allow_any_tile_size=True) builds other sizes for other uses."
        )


def read_image(row: dict, bands: Sequence[int], use_masked_images: bool, mask_source: str):
    """One mosaic on its native grid: uint8 bands, validity (from the stored values), footprint mask, georeference."""
    from stsynth_lib.data.io import read_raster, to_uint8_image, validity_mask
    from stsynth_lib.data.rasterize import footprint_mask

    path = row["image_masked_path"] if use_masked_images and row["image_masked_path"] else row["image_path"]
    full, prof = read_raster(path, with_profile=True)
    udm = read_raster(row["udm_path"]) if row["udm_path"] else None
    if max(bands) > full.shape[0]:
        raise SN7DataError(f"{row['image_path']} has {full.shape[0]} bands; bands={list(bands)} asked for more.")
    alpha = 3 if full.shape[0] == 4 and row["dtype"] == "uint8" and 4 not in bands else None
    raw = full[[b - 1 for b in bands]]
    source = f"{path}" + (f" ({row['udm_path']})" if udm is not None else "")
    val = validity_mask(np.concatenate([raw, full[3:4].astype(raw.dtype)]) if alpha is not None else raw, udm,
                        alpha_band=len(bands) if alpha is not None else None, nodata=prof["nodata"], source=source)
    img = to_uint8_image(raw, nodata=prof["nodata"])
    transform = prof["transform"]
    crs = prof["crs"].to_string() if prof["crs"] else ""
    if row["has_labels"]:
        mask = footprint_mask(row, full.shape[1:], transform, crs or None, source=mask_source)
    else:
        mask = np.zeros(full.shape[1:], np.uint8)
    return img, val, mask, transform, crs


def _resize_all(img, val, mask, transform, size: int):
    from affine import Affine

    h0, w0 = img.shape[1:]
    img = _resample(img, size, nearest=False)
    val = (_resample(val[None] * 255, size, nearest=False)[0] >= 255).astype(np.uint8)
    mask = (_resample(mask[None] * 255, size, nearest=False)[0] >= 128).astype(np.uint8)
    return img, val, mask, compose(transform, Affine.scale(w0 / size, h0 / size))


def _tile_images(meta, partial: Path, grids, tile_info, bands, tile_size_px, resize_to_px, mask_source,
                 use_masked_images, on_error, progress):
    """Cut every image into tiles in ``partial``'s arrays; returns (tiles table, meta rows skipped)."""
    import warnings

    from tqdm.auto import tqdm

    n_tiles = int(sum(len(grids[a]) for a in meta["aoi"]))
    c, t = len(bands), tile_size_px
    images = np.lib.format.open_memmap(partial / "tiles_images.npy", "w+", np.uint8, (n_tiles, c, t, t))
    masks = np.lib.format.open_memmap(partial / "tiles_masks.npy", "w+", np.uint8, (n_tiles, t, t))
    valid = np.lib.format.open_memmap(partial / "tiles_valid.npy", "w+", np.uint8, (n_tiles, t, t))
    tile_rows, bad_images, next_id = [], [], 0
    for i, row in tqdm(meta.iterrows(), total=len(meta), desc="tile images", unit="image", disable=not progress):
        try:
            img, val, mask, transform, crs = read_image(row.to_dict(), bands, use_masked_images, mask_source)
        except SN7DataError as exc:
            if on_error == "raise":
                raise
            warnings.warn(f"Skipping {row['image_path']}: {exc}", stacklevel=3)
            bad_images.append(i)
            continue
        if resize_to_px:
            img, val, mask, transform = _resize_all(img, val, mask, transform, resize_to_px)
        for r0, c0 in grids[row["aoi"]]:
            images[next_id] = img[:, r0 : r0 + t, c0 : c0 + t]
            masks[next_id] = mask[r0 : r0 + t, c0 : c0 + t]
            valid[next_id] = val[r0 : r0 + t, c0 : c0 + t]
            tt = tile_transform(transform, r0, c0)
            info = tile_info[row["aoi"]][(r0, c0)]
            tile_rows.append({
                "tile_id": next_id, "meta_index": i, "aoi": row["aoi"], "split": info["split"],
                "year": int(row["year"]), "month": int(row["month"]), "month_index": int(row["month_index"]),
                "row_off": r0, "col_off": c0, "crs": crs,
                **{f"transform_{k}": float(v) for k, v in zip("abcdef", tuple(tt)[:6])},
                "has_labels": bool(row["has_labels"]),
                "building_fraction": float(masks[next_id].mean()),
                "valid_fraction": float(valid[next_id].mean()),
                **{k: v for k, v in info.items() if k != "split"},  # block_row, block_col (split_by="block")
            })
            next_id += 1
    images.flush(); masks.flush(); valid.flush()
    del images, masks, valid
    if next_id != n_tiles:  # skipped images: compact the arrays
        for name in ("tiles_images.npy", "tiles_masks.npy", "tiles_valid.npy"):
            arr = np.load(partial / name, mmap_mode="r")[:next_id]
            np.save(partial / (name + ".tmp.npy"), arr)
            del arr
            os.replace(partial / (name + ".tmp.npy"), partial / name)
    return pd.DataFrame(tile_rows), bad_images


def _pair_tiles(meta, tiles, min_gap_months, max_gap_months, min_valid_fraction, bad_images) -> pd.DataFrame:
    """Pairs of tiles at the same position, months min_gap..max_gap apart, both usable enough."""
    month_pairs = build_pairs(meta.drop(index=bad_images), min_gap_months, max_gap_months)
    key = tiles.set_index(["meta_index", "row_off", "col_off"])["tile_id"] if len(tiles) else pd.Series(dtype=int)
    tiles_by_meta = tiles.groupby("meta_index") if len(tiles) else None
    pair_rows = []
    vf = tiles.set_index("tile_id")["valid_fraction"] if len(tiles) else pd.Series(dtype=float)
    for mp in month_pairs.itertuples(index=False):
        past_tiles = tiles_by_meta.get_group(mp.past_index)
        for tr in past_tiles.itertuples(index=False):
            fut = key.get((mp.future_index, tr.row_off, tr.col_off))
            if fut is None or vf[tr.tile_id] < min_valid_fraction or vf[fut] < min_valid_fraction:
                continue
            frow = meta.loc[mp.future_index]
            prow = meta.loc[mp.past_index]
            pair_rows.append({
                "aoi": mp.aoi, "split": tr.split, "row_off": tr.row_off, "col_off": tr.col_off,
                "past_tile_id": int(tr.tile_id), "future_tile_id": int(fut), "gap_months": int(mp.gap_months),
                "past_year": int(prow["year"]), "past_month": int(prow["month"]),
                "future_year": int(frow["year"]), "future_month": int(frow["month"]),
                "has_mask": bool(prow["has_labels"] and frow["has_labels"]),
            })
    pairs = pd.DataFrame(pair_rows, columns=[
        "aoi", "split", "row_off", "col_off", "past_tile_id", "future_tile_id", "gap_months", "past_year",
        "past_month", "future_year", "future_month", "has_mask"])
    pairs.insert(0, "pair_id", np.arange(len(pairs), dtype=np.int64))
    if len(pairs):
        bf = tiles.set_index("tile_id")["building_fraction"]
        pairs["past_building_fraction"] = bf[pairs["past_tile_id"]].to_numpy()
        pairs["future_building_fraction"] = bf[pairs["future_tile_id"]].to_numpy()
    if "block_row" in tiles:  # split_by="block": the block of both tiles (the same position)
        by_id = tiles.set_index("tile_id")
        for k in ("block_row", "block_col"):
            pairs[k] = by_id.loc[pairs["past_tile_id"], k].to_numpy() if len(pairs) else np.zeros(0, np.int64)
    return pairs


def build_dataset(
    meta: pd.DataFrame,
    out_dir: str | Path,
    tile_size_px: int = 256,
    bands: Sequence[int] = (1, 2, 3),
    min_gap_months: int = 1,
    max_gap_months: int = 12,
    split_fractions: Sequence[float] = (0.7, 0.15, 0.15),
    min_valid_fraction: float = 0.5,
    resize_to_px: int | None = None,
    mask_source: str = "auto",
    use_masked_images: bool = False,
    seed: int = 0,
    on_error: str = "raise",
    progress: bool = True,
    allow_any_tile_size: bool = False,
    split_by: str = "aoi",
    block_size_px: int = 256,
    block_stratify: str = "none",
) -> dict:
    """Build the tile store of :mod:`stsynth_lib.data.dataset` in ``out_dir`` and return its summary.

    Each image is read once: bands ``bands`` (1-based; SpaceNet 7's 4th band is
    alpha and goes into validity), optional resampling to ``resize_to_px``,
    UDM, alpha and the file's nodata value into the validity mask (from the
    stored values, before any 16-bit stretch), footprints rasterised onto the
    same grid, then cut into tiles. Pairs whose past or future tile has less
    than ``min_valid_fraction`` usable pixels are dropped. ``on_error="skip"``
    drops unreadable images, UDMs and label files with a warning instead of
    stopping. ``tile_size_px`` must suit the models (:func:`check_tile_size`)
    unless ``allow_any_tile_size``. ``split_by="aoi"`` puts whole AOIs in
    train/val/test; ``"block"`` cuts each AOI into ``block_size_px`` blocks
    drawn into the splits and drops tiles that cross a block border
    (:mod:`stsynth_lib.data.blocks`; ``splits.json`` records the blocks);
    ``block_stratify="new_buildings"`` spreads the blocks with most
    construction (first to last labelled month) over the splits. The store is written to
    ``<out_dir>.partial`` and renamed when complete; a failed build removes it.
    """
    out_dir = Path(out_dir)
    meta = meta.reset_index(drop=True).copy()
    if meta.empty:
        raise SN7DataError("The metadata table is empty: nothing to build. Check data_root and the scan report.")
    if not allow_any_tile_size:
        check_tile_size(tile_size_px)
    # Tile grid per AOI, from the smallest image of the AOI (SpaceNet 7 sizes vary by a pixel or two).
    if resize_to_px:
        grid_hw = {a: (resize_to_px, resize_to_px) for a in meta["aoi"].unique()}
    else:
        grid_hw = {a: (int(g["height"].min()), int(g["width"].min())) for a, g in meta.groupby("aoi")}
    grids = {a: tile_grid(h, w, tile_size_px) for a, (h, w) in grid_hw.items()}
    splits, tile_info, grids, split_record = _plan_splits(meta, grid_hw, grids, split_by, split_fractions, seed,
                                                          tile_size_px, block_size_px, block_stratify, mask_source,
                                                          resize_to_px)

    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        tiles, bad_images = _tile_images(meta, partial, grids, tile_info, bands, tile_size_px, resize_to_px,
                                         mask_source, use_masked_images, on_error, progress)
        pairs = _pair_tiles(meta, tiles, min_gap_months, max_gap_months, min_valid_fraction, bad_images)
        summary = _write_store(partial, meta, tiles, pairs, splits, bad_images, split_record, seed=seed,
                               split_fractions=split_fractions, tile_size_px=tile_size_px, bands=list(bands),
                               resize_to_px=resize_to_px, min_gap_months=min_gap_months,
                               max_gap_months=max_gap_months, min_valid_fraction=min_valid_fraction)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)  # never leave <dataset>.partial behind
        raise
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(partial, out_dir)
    return summary


def _new_building_masks(meta, grid_hw, mask_source, resize_to_px) -> dict:
    """Per AOI: pixels inside a footprint in its last labelled month and not in its first (on the tile grid)."""
    out = {}
    for aoi, g in meta.groupby("aoi"):
        h, w = grid_hw[aoi]
        lab = g[g["has_labels"].astype(bool)].sort_values("month_index")
        if len(lab) < 2:
            out[aoi] = np.zeros((h, w), bool)
            continue
        masks = []
        for _, row in lab.iloc[[0, -1]].iterrows():
            img, val, mask, transform, _ = read_image(row.to_dict(), (1,), False, mask_source)
            if resize_to_px:
                mask = _resize_all(img, val, mask, transform, resize_to_px)[2]
            masks.append(mask[:h, :w] > 0)
        out[aoi] = masks[1] & ~masks[0]
    return out


def _plan_splits(meta, grid_hw, grids, split_by, fractions, seed, tile_size_px, block_size_px, stratify="none",
                 mask_source="auto", resize_to_px=None):
    """(splits, split of every tile position, grids of the kept tiles, what splits.json adds in block mode)."""
    if split_by not in SPLIT_BY:
        raise ValueError(f"split_by must be one of {', '.join(SPLIT_BY)}, got {split_by!r}")
    if stratify not in STRATIFY:
        raise ValueError(f"block_stratify must be one of {', '.join(STRATIFY)}, got {stratify!r}")
    if split_by == "aoi":
        splits = split_aois(meta["aoi"].unique(), fractions, seed)
        aoi_split = {a: s for s, aois in splits.items() for a in aois}
        return splits, {a: {p: {"split": aoi_split[a]} for p in g} for a, g in grids.items()}, grids, None
    weights = None
    if stratify == "new_buildings":
        weights = {a: new_building_weights(m, block_size_px)
                   for a, m in _new_building_masks(meta, grid_hw, mask_source, resize_to_px).items()}
    splits, tile_info, blocks, kept, dropped = block_split(grid_hw, grids, tile_size_px, block_size_px, fractions, seed,
                                                           weights)
    n_images = meta.groupby("aoi").size()
    record = {
        "split_by": "block", "block_size_px": int(block_size_px), "block_stratify": stratify, "blocks": blocks,
        "dropped_tile_positions": {a: [list(p) for p in d] for a, d in dropped.items() if d},
        "n_tiles_dropped_at_block_borders": int(sum(len(d) * int(n_images[a]) for a, d in dropped.items())),
    }
    return splits, tile_info, kept, record


def _write_store(partial: Path, meta, tiles, pairs, splits, bad_images, split_record, seed, split_fractions,
                 **settings) -> dict:
    tiles.to_parquet(partial / "tiles.parquet", index=False)
    pairs.to_parquet(partial / "pairs.parquet", index=False)
    meta_out = meta.copy()
    meta_out.attrs = {}
    meta_out.to_parquet(partial / "metadata.parquet", index=False)
    record = {"seed": seed, "fractions": list(split_fractions), "splits": splits, **(split_record or {})}
    (partial / "splits.json").write_text(json.dumps(record, indent=2))
    summary = {
        **settings,
        "seed": seed,
        "n_images": int(len(meta) - len(bad_images)),
        "n_tiles": int(len(tiles)),
        "n_pairs": {s: int((pairs["split"] == s).sum()) for s in ("train", "val", "test")},
        "n_aois": {s: len(a) for s, a in splits.items()},
        "has_labels": bool(meta["has_labels"].any()),
        "georeferenced": bool(meta["georeferenced"].any()) if "georeferenced" in meta else False,
    }
    if split_record:  # split_by="block" (aoi mode keeps the summary it always had)
        summary["split_by"] = "block"
        summary["block_size_px"] = split_record["block_size_px"]
        summary["block_stratify"] = split_record["block_stratify"]
        summary["n_blocks"] = {s: sum(b["split"] == s for b in split_record["blocks"])
                               for s in ("train", "val", "test")}
        summary["n_tiles_dropped_at_block_borders"] = split_record["n_tiles_dropped_at_block_borders"]
    (partial / "dataset.yaml").write_text(yaml.safe_dump(summary, sort_keys=False))
    return summary
