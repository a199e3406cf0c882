"""Simple baselines that learn nothing: the future predicted from the past frames alone (only frames up to t0).

* ``persistence`` -- the future is the past image (scored by :mod:`stsynth_lib.evaluate` from the past tiles);
* ``mean_last_<k>`` (:func:`mean_of_last_k`) -- per pixel, the mean of the valid present frames among t0, t0 - 1,
  ..., t0 - (k - 1) (invalid pixels and absent months ignored; the past frame where none is valid).
  ``mean_last_1`` is persistence;
* ``seasonal`` (:func:`seasonal_blend`) -- the average of the past frame and the same month one year before the
  target (t1 - 12, only when it is not after t0) where that frame exists and its pixel is valid, else the past frame.

They read the context fields of :class:`~stsynth_lib.data.dataset.PairedTileDataset` samples or batches
(``context`` (..., K, C, H, W), float in [-1, 1] or uint8; ``context_valid`` (..., K, 1, H, W);
``context_present`` (..., K)) together with the ``offsets`` the frames were looked up with, and return uint8
images (..., C, H, W) like the models' predictions (rounded to the nearest integer).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from stsynth_lib.data.dataset import SAME_MONTH_LAST_YEAR, check_context_offsets

PERSISTENCE = "persistence"
SEASONAL = "seasonal"
_MEAN_LAST = re.compile(r"^mean_last_([1-9][0-9]*)$")


def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _frames(fields: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(frames in [0, 255] float64 (B, K, C, H, W), usable (B, K, 1, H, W) bool); a sample gets a batch axis."""
    ctx = _numpy(fields["context"])
    valid = _numpy(fields["context_valid"])
    present = _numpy(fields["context_present"]).astype(bool)
    if ctx.ndim == 4:
        ctx, valid, present = ctx[None], valid[None], present[None]
    if ctx.ndim != 5 or valid.shape[:2] != ctx.shape[:2] or present.shape != ctx.shape[:2]:
        raise ValueError(f"context must be (B, K, C, H, W) with context_valid (B, K, 1, H, W) and context_present "
                         f"(B, K); got {ctx.shape}, {valid.shape}, {present.shape}")
    x = ctx.astype(np.float64) if ctx.dtype == np.uint8 else (ctx.astype(np.float64) + 1.0) * 127.5
    return x, (valid > 0) & present[:, :, None, None, None]


def _position(offsets: Sequence[int | str], offset: int | str, who: str) -> int:
    offsets = list(offsets)
    if offset not in offsets:
        raise ValueError(f"{who} needs the context frame at offset {offset!r}, but the frames were looked up with "
                         f"offsets {offsets}: add it to context_offsets_months (see baseline_offsets)")
    return offsets.index(offset)


def _uint8(x: np.ndarray, batched: bool) -> np.ndarray:
    out = np.clip(np.round(x), 0, 255).astype(np.uint8)
    return out if batched else out[0]


def mean_of_last_k(fields: Mapping[str, Any], offsets: Sequence[int | str], k: int) -> np.ndarray:
    """Per pixel, the mean of the usable frames among t0, ..., t0 - (k - 1); the past frame where none is."""
    if k < 1:
        raise ValueError(f"mean_of_last_k needs k >= 1, got {k}")
    x, usable = _frames(fields)
    pos = [_position(offsets, -j, f"mean_last_{k}") for j in range(k)]
    w = usable[:, pos].astype(np.float64)
    total = (x[:, pos] * w).sum(1)
    count = w.sum(1)
    past = x[:, pos[0]]
    out = np.where(count > 0, total / np.maximum(count, 1), past)
    return _uint8(out, np.ndim(fields["context"]) == 5)


def seasonal_mix(past, last_year, usable):
    """The seasonal rule, for numpy arrays and torch tensors alike: ``past + (last_year - past) / 2`` where ``usable``
    (1 / True: the same-month-last-year frame is present and its pixel valid), ``past`` where not (0 / False).
    :func:`seasonal_blend` (the baseline, uint8) and ``conditioning.seasonal_base`` (the cGAN's residual start, in
    [-1, 1]) both compute it here."""
    return past + 0.5 * usable * (last_year - past)


def seasonal_blend(fields: Mapping[str, Any], offsets: Sequence[int | str]) -> np.ndarray:
    """The average of the past frame and the same-month-last-year frame where that is present and valid; else the
    past frame (:func:`seasonal_mix`)."""
    x, usable = _frames(fields)
    p0, p12 = _position(offsets, 0, SEASONAL), _position(offsets, SAME_MONTH_LAST_YEAR, SEASONAL)
    out = seasonal_mix(x[:, p0], x[:, p12], usable[:, p12])
    return _uint8(out, np.ndim(fields["context"]) == 5)


def is_baseline(name: str) -> bool:
    """True for the names of the simple baselines (``persistence``, ``mean_last_<k>``, ``seasonal``)."""
    return name in (PERSISTENCE, SEASONAL) or bool(_MEAN_LAST.match(str(name)))


def baseline_offsets(names: Sequence[str]) -> tuple[int | str, ...]:
    """The context offsets the baselines ``names`` read (always starting with 0, the past frame)."""
    out: list[int | str] = [0]
    for name in names:
        m = _MEAN_LAST.match(str(name))
        if m:
            need: list[int | str] = [-j for j in range(int(m.group(1)))]
        elif name == SEASONAL:
            need = [0, SAME_MONTH_LAST_YEAR]
        elif name == PERSISTENCE:
            need = [0]
        else:
            raise ValueError(f"unknown baseline {name!r}: use persistence, seasonal or mean_last_<k> (k >= 1)")
        out += [o for o in need if o not in out]
    return check_context_offsets(out)


def baseline_prediction(name: str, fields: Mapping[str, Any], offsets: Sequence[int | str]) -> np.ndarray:
    """The uint8 prediction of the baseline ``name`` from context fields looked up with ``offsets``."""
    m = _MEAN_LAST.match(str(name))
    if m:
        return mean_of_last_k(fields, offsets, int(m.group(1)))
    if name == SEASONAL:
        return seasonal_blend(fields, offsets)
    if name == PERSISTENCE:
        return mean_of_last_k(fields, offsets, 1)
    raise ValueError(f"unknown baseline {name!r}: use persistence, seasonal or mean_last_<k> (k >= 1)")
