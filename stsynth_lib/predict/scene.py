"""Predict whole images of any size with a model trained on tiles: cut, predict in batches, stitch.

Tiles of the model's size sit every ``tile - overlap`` pixels; the last row/column of tiles shifts inward to end
at the image edge (as :func:`stsynth_lib.data.build.tile_grid` does), so every pixel is covered by real pixels.
Each tile's prediction is weighted by a window that is 1 in its interior and falls linearly to near 0 over
``overlap`` pixels toward the tile edges that face a neighbour (edges on the image border keep weight 1), and
the weighted sum is divided by the summed weights: across an overlap the two tiles cross-fade, so a tile border
is no sharper than the tile interior, and a model that returns its input gives back the input exactly.
"""

from __future__ import annotations

import functools
from typing import Protocol

import numpy as np


class TilePredictor(Protocol):
    """What :func:`predict_scene` needs of a model (:class:`stsynth_lib.predict.Predictor` has it)."""

    def predict(self, past: np.ndarray, past_date, future_date, future_mask=None, past_mask=None, seed: int = 0,
                aoi: str = "custom", context=None) -> np.ndarray: ...


def tile_starts(length: int, tile_px: int, overlap_px: int) -> list[int]:
    """Tile starts along one axis: every ``tile_px - overlap_px``, the last one shifted inward to end at ``length``."""
    if tile_px > length:
        raise ValueError(f"the image is {length} px along one side, smaller than the model's {tile_px} px tiles")
    if not 0 <= overlap_px < tile_px:
        raise ValueError(f"overlap_px must be in 0..{tile_px - 1} (below the tile size), got {overlap_px}")
    starts = list(range(0, length - tile_px + 1, tile_px - overlap_px))
    if starts[-1] + tile_px < length:
        starts.append(length - tile_px)
    return starts


def edge_ramp(tile_px: int, overlap_px: int, ramp_start: bool, ramp_end: bool) -> np.ndarray:
    """1-D weights of one tile: a linear ramp ``(i + 0.5) / overlap`` over ``overlap_px`` pixels at each end that
    faces a neighbouring tile (two facing ramps sum to 1 across an overlap of that width), 1 elsewhere."""
    w = np.ones(tile_px, np.float64)
    if overlap_px:
        ramp = (np.arange(overlap_px) + 0.5) / overlap_px
        if ramp_start:
            w[:overlap_px] = np.minimum(w[:overlap_px], ramp)
        if ramp_end:
            w[-overlap_px:] = np.minimum(w[-overlap_px:], ramp[::-1])
    return w


def tile_window(starts_rows: list[int], starts_cols: list[int], row: int, col: int, tile_px: int,
                overlap_px: int) -> np.ndarray:
    """2-D weights ``(tile, tile)`` of the tile at (``row``, ``col``): ramps only toward neighbouring tiles."""
    return _window(tile_px, overlap_px, row != starts_rows[0], row != starts_rows[-1], col != starts_cols[0],
                   col != starts_cols[-1])


@functools.lru_cache(maxsize=64)
def _window(tile_px: int, overlap_px: int, top: bool, bottom: bool, left: bool, right: bool) -> np.ndarray:
    """The window of a tile with neighbours on the given sides (at most 9 kinds per scene; read-only)."""
    w = np.outer(edge_ramp(tile_px, overlap_px, top, bottom), edge_ramp(tile_px, overlap_px, left, right))
    w.flags.writeable = False
    return w


def resolve_overlap(tile_px: int, overlap_px: int | None) -> int:
    """``overlap_px``, or a quarter tile when it is None (``--overlap-px auto``)."""
    return tile_px // 4 if overlap_px is None else int(overlap_px)


def _crop(mask: np.ndarray | None, r: int, c: int, tile_px: int) -> np.ndarray | None:
    return None if mask is None else mask[r : r + tile_px, c : c + tile_px]


def predict_scene(predictor: TilePredictor, past: np.ndarray, past_date, future_date, tile_px: int,
                  future_mask: np.ndarray | None = None, past_mask: np.ndarray | None = None,
                  overlap_px: int | None = None, batch_size: int = 16, seed: int = 0, aoi: str = "custom",
                  context: dict | None = None) -> np.ndarray:
    """The predicted future of a whole image: uint8 ``(C, H, W)`` like ``past``, any ``H, W >= tile_px``.

    ``future_mask`` / ``past_mask`` are whole-image 0/1 ``(H, W)`` footprints, cut with the image (``None`` for a
    model that does not use them). ``context``: for a model trained with context frames, ``{offset: whole uint8
    image like past}`` (months left out are absent; ``{}`` when none is there), cut with the image. ``overlap_px`` defaults to a quarter tile. Tile ``k`` (row-major order) is
    sampled with seed ``seed + k`` whatever ``batch_size`` is, so results do not depend on the batching.
    """
    past = np.asarray(past)
    if past.ndim != 3:
        raise ValueError(f"past must be one image (C, H, W), got shape {past.shape}")
    overlap = resolve_overlap(tile_px, overlap_px)
    h, w = past.shape[1:]
    rows, cols = tile_starts(h, tile_px, overlap), tile_starts(w, tile_px, overlap)
    offsets = [(r, c) for r in rows for c in cols]
    total = np.zeros(past.shape, np.float64)
    weight = np.zeros((h, w), np.float64)
    for first in range(0, len(offsets), max(1, int(batch_size))):
        chunk = offsets[first : first + batch_size]
        tiles = np.stack([past[:, r : r + tile_px, c : c + tile_px] for r, c in chunk])
        masks = {name: None if m is None else np.stack([_crop(m, r, c, tile_px) for r, c in chunk])
                 for name, m in (("future_mask", future_mask), ("past_mask", past_mask))}
        kwargs = {k: v for k, v in masks.items() if v is not None}
        if context is not None:
            kwargs["context"] = {o: np.stack([img[:, r : r + tile_px, c : c + tile_px] for r, c in chunk])
                                 for o, img in context.items()}
        out = predictor.predict(tiles, past_date, future_date, seed=seed + first, aoi=aoi, **kwargs)
        for (r, c), pred in zip(chunk, out):
            win = tile_window(rows, cols, r, c, tile_px, overlap)
            total[:, r : r + tile_px, c : c + tile_px] += pred * win
            weight[r : r + tile_px, c : c + tile_px] += win
    return np.clip(np.rint(total / weight), 0, 255).astype(np.uint8)


__all__ = ["TilePredictor", "edge_ramp", "predict_scene", "resolve_overlap", "tile_starts", "tile_window"]
