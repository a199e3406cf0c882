"""Spatial splits inside an area (``split_by="block"``): square blocks of an AOI's image go to train/val/test.

With one AOI (``sn7_labelled``) splitting by AOI cannot work. Each AOI's image is cut into a grid of
``block_size_px`` squares from its top-left corner (the last row/column of blocks is clipped at the image edge),
the blocks that hold at least one whole tile are drawn into train/val/test from the seed and the AOI's name, and
tiles that cross a block border are dropped. Blocks partition the image, so no pixel of a test tile is in a train
or val tile of the same AOI, even where the last tile of a row shifts inward to overlap its neighbour
(:func:`stsynth_lib.data.build.tile_grid`): it overlaps only tiles of its own block or is dropped.

With ``block_size_px`` a multiple of ``tile_size_px`` no tile is dropped unless the last, clipped row/column of
blocks is thinner than a tile.

Construction is clustered, so a plain draw of a few blocks can leave val or test without new buildings;
``block_stratify="new_buildings"`` (:func:`stratified_allocate`) keeps the block counts but shares the pixels built
between an AOI's first and last labelled month among the splits in proportion to their fractions. ``splits.json``
then records each block's ``weight`` (those pixels).
"""

from __future__ import annotations

import zlib
from typing import Sequence

import numpy as np
import pandas as pd

from stsynth_lib.data.errors import SN7DataError

SPLIT_BY = ("aoi", "block")
STRATIFY = ("none", "new_buildings")


def allocate(order: Sequence[str], fractions: Sequence[float]) -> dict[str, list[str]]:
    """Cut an already shuffled ``order`` into train/val/test by ``fractions``; with 3+ names every split with a
    positive fraction gets at least one."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise ValueError(f"split fractions must be three non-negative numbers (train, val, test), got {fractions}")
    n = len(order)
    frac = np.asarray(fractions, float) / sum(fractions)
    n_val = int(round(frac[1] * n))
    n_test = int(round(frac[2] * n))
    if n >= 3:
        n_val = max(n_val, 1 if frac[1] > 0 else 0)
        n_test = max(n_test, 1 if frac[2] > 0 else 0)
        while n - n_val - n_test < 1:
            if n_val >= n_test and n_val > 1:
                n_val -= 1
            else:
                n_test -= 1
    n_train = n - n_val - n_test
    return {
        "train": sorted(order[:n_train]),
        "val": sorted(order[n_train : n_train + n_val]),
        "test": sorted(order[n_train + n_val :]),
    }


def block_of(row_off: int, col_off: int, tile_size_px: int, block_size_px: int) -> tuple[int, int] | None:
    """(block row, block col) holding the whole tile, or None when the tile crosses a block border."""
    br, bc = row_off // block_size_px, col_off // block_size_px
    last_r, last_c = (row_off + tile_size_px - 1) // block_size_px, (col_off + tile_size_px - 1) // block_size_px
    return (br, bc) if (br, bc) == (last_r, last_c) else None


def check_block_size(block_size_px: int, tile_size_px: int) -> None:
    if int(block_size_px) < int(tile_size_px):
        raise SN7DataError(
            f"block_size_px={block_size_px} is smaller than tile_size_px={tile_size_px}: every tile would cross a "
            "block border. Choose block_size_px >= tile_size_px, ideally a multiple of it (no tile is then dropped)."
        )


def stratified_allocate(names: list, weights: Sequence[float], fractions: Sequence[float], rng) -> dict:
    """Draw ``names`` into train/val/test with the counts of :func:`allocate`, sharing the total ``weight`` (e.g.
    new-building pixels) among the splits in proportion to ``fractions``.

    Names are taken heaviest first (random ties); each weighted name goes to the split, among those with places
    left, that is furthest below its share of the total weight (random ties); names of weight 0 go to a random
    split with places left, in proportion to its places. Clustered construction then reaches every split, train
    getting the largest share, instead of landing wherever a plain draw puts its few blocks.
    """
    sizes = {k: len(v) for k, v in allocate(list(names), fractions).items()}
    frac = dict(zip(("train", "val", "test"), np.asarray(fractions, float) / sum(fractions)))
    total = float(sum(weights))
    tie = rng.permutation(len(names))
    out: dict[str, list] = {"train": [], "val": [], "test": []}
    got = dict.fromkeys(out, 0.0)
    for i in sorted(range(len(names)), key=lambda i: (-float(weights[i]), tie[i])):
        free = [k for k in out if len(out[k]) < sizes[k]]
        if weights[i] > 0:
            deficit = {k: frac[k] * total - got[k] for k in free}
            best = [k for k in free if deficit[k] == max(deficit.values())]
            split = best[int(rng.integers(len(best)))]
        else:
            places = np.array([sizes[k] - len(out[k]) for k in free], float)
            split = free[int(rng.choice(len(free), p=places / places.sum()))]
        out[split].append(names[i])
        got[split] += float(weights[i])
    return {k: sorted(v) for k, v in out.items()}


def assign_blocks(aoi: str, height: int, width: int, grid: list[tuple[int, int]], tile_size_px: int,
                  block_size_px: int, fractions: Sequence[float], seed: int, weights: dict | None = None):
    """Blocks of one AOI and their splits; returns (blocks, kept {(row_off, col_off): block record}, dropped offsets).

    Only blocks holding at least one whole tile of ``grid`` are drawn (an empty block would make an empty
    split). Deterministic from ``seed`` and ``aoi``; AOIs of the same size get different draws. ``weights``
    ({(block row, block col): weight}, e.g. new-building pixels) stratifies the draw
    (:func:`stratified_allocate`).
    """
    check_block_size(block_size_px, tile_size_px)
    kept_pos, dropped = {}, []
    for r, c in grid:
        b = block_of(r, c, tile_size_px, block_size_px)
        (dropped.append((r, c)) if b is None else kept_pos.setdefault(b, []).append((r, c)))
    names = sorted(kept_pos)
    need = sum(1 for f in fractions if f > 0)
    if len(names) < max(need, 1):
        n_br, n_bc = -(-height // block_size_px), -(-width // block_size_px)
        raise SN7DataError(
            f"AOI {aoi} ({height}x{width} px) has {len(names)} blocks of {block_size_px} px holding a whole "
            f"{tile_size_px} px tile ({n_br}x{n_bc} blocks in all), fewer than the {need} splits with a positive "
            f"fraction in {list(fractions)}. Reduce block_size_px, or use split_by='aoi' with several AOIs."
        )
    rng = np.random.default_rng([int(seed), zlib.crc32(aoi.encode())])
    if weights is None:
        alloc = allocate([names[i] for i in rng.permutation(len(names))], fractions)
    else:
        alloc = stratified_allocate(names, [weights.get(b, 0) for b in names], fractions, rng)
    split_of = {b: s for s, bs in alloc.items() for b in bs}
    blocks, kept = [], {}
    for br, bc in names:
        rec = {"aoi": aoi, "block_row": int(br), "block_col": int(bc), "row0": int(br * block_size_px),
               "col0": int(bc * block_size_px), "row1": int(min(height, (br + 1) * block_size_px)),
               "col1": int(min(width, (bc + 1) * block_size_px)), "split": split_of[(br, bc)],
               "n_tile_positions": len(kept_pos[(br, bc)])}
        if weights is not None:
            rec["weight"] = float(weights.get((br, bc), 0))
        blocks.append(rec)
        for pos in kept_pos[(br, bc)]:
            kept[pos] = rec
    return blocks, kept, dropped


def new_building_weights(new_mask: np.ndarray, block_size_px: int) -> dict:
    """{(block row, block col): pixels of ``new_mask`` (built between an AOI's first and last month) in it}."""
    h, w = new_mask.shape
    return {(br, bc): int(np.count_nonzero(new_mask[br * block_size_px : (br + 1) * block_size_px,
                                                    bc * block_size_px : (bc + 1) * block_size_px]))
            for br in range(-(-h // block_size_px)) for bc in range(-(-w // block_size_px))}


def block_split(grid_hw: dict, grids: dict, tile_size_px: int, block_size_px: int, fractions, seed: int,
                weights: dict | None = None):
    """:func:`assign_blocks` for every AOI: (splits {split: AOIs with a block in it}, tile_info per AOI and
    position, blocks, grids restricted to the kept tiles, dropped tile positions per AOI)."""
    tile_info, blocks, kept_grids, dropped = {}, [], {}, {}
    for aoi in sorted(grids):
        h, w = grid_hw[aoi]
        b, kept, drop = assign_blocks(aoi, h, w, grids[aoi], tile_size_px, block_size_px, fractions, seed,
                                      None if weights is None else weights[aoi])
        blocks += b
        kept_grids[aoi] = [p for p in grids[aoi] if p in kept]
        tile_info[aoi] = {p: {"split": r["split"], "block_row": r["block_row"], "block_col": r["block_col"]}
                          for p, r in kept.items()}
        dropped[aoi] = drop
    splits = {s: sorted({b["aoi"] for b in blocks if b["split"] == s}) for s in ("train", "val", "test")}
    return splits, tile_info, blocks, kept_grids, dropped


def change_summary(store) -> pd.DataFrame:
    """Per split: tile positions, pairs, pairs with new buildings, new-building pixels over the pairs, and new
    building regions (connected components of pixels built between the first and last month of each AOI, counted
    over the split's tiles; adjacent buildings merge, so it is a lower bound on new footprints)."""
    from scipy import ndimage

    tiles, pairs, t = store.tiles, store.pairs, store.tile_size_px
    masks = store.masks
    new_px = np.zeros(len(pairs), np.int64)
    for i, (p, f) in enumerate(zip(pairs["past_tile_id"].to_numpy(), pairs["future_tile_id"].to_numpy())):
        new_px[i] = int(np.count_nonzero(masks[f] > masks[p]))
    rows = []
    for split in ("train", "val", "test"):
        in_split = pairs["split"].to_numpy() == split
        regions, positions = 0, 0
        for aoi, g in tiles[(tiles["split"] == split) & tiles["has_labels"]].groupby("aoi"):
            first, last = g["month_index"].min(), g["month_index"].max()
            pos = g[["row_off", "col_off"]].drop_duplicates()
            positions += len(pos)
            h, w = int(pos["row_off"].max()) + t, int(pos["col_off"].max()) + t
            built = np.zeros((h, w), bool)
            for tr in pos.itertuples():
                a = g[(g["row_off"] == tr.row_off) & (g["col_off"] == tr.col_off)].set_index("month_index")
                if first not in a.index or last not in a.index:  # an image skipped at build
                    continue
                new = masks[int(a.loc[last, "tile_id"])] > masks[int(a.loc[first, "tile_id"])]
                built[tr.row_off : tr.row_off + t, tr.col_off : tr.col_off + t] |= new
            regions += int(ndimage.label(built)[1])
        rows.append({"split": split, "tile_positions": positions, "pairs": int(in_split.sum()),
                     "pairs_with_new_buildings": int((new_px[in_split] > 0).sum()),
                     "new_building_pixels_over_pairs": int(new_px[in_split].sum()),
                     "new_building_regions": regions})
    return pd.DataFrame(rows).set_index("split")
