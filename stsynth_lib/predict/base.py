"""What every predictor shares, whatever the model: the :class:`Predictor` base (arrays in, arrays out), the batch
dict it builds from arrays (:func:`make_batch`, the keys of ``PairedTileDataset`` samples) and its date parsing.

The model families' predictors subclass it next to their models (:class:`stsynth_lib.cgan.predictor.CGANPredictor`,
:class:`stsynth_lib.controlnet.generate.ControlNetPredictor`); :func:`stsynth_lib.predict.load_predictor` picks one
for a run folder, and :func:`stsynth_lib.predict.split.predict_split` runs any of them over a tile store's split.
This module sits in the training core layer (``docs/ARCHITECTURE.md``): it imports only the data layer.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from stsynth_lib.data.dataset import to_uint8

# precision of a cGAN predictor: no = fp32 (the default, the chapters' numbers) | bf16 (autocast) | auto (resolve_device)
INFERENCE_PRECISIONS = ("no", "bf16", "auto")

DateLike = str | tuple[int, int] | _dt.date


def parse_month(value: DateLike) -> tuple[int, int]:
    """``"2019-07"`` / ``"2019-07-01"`` / ``(2019, 7)`` / ``date(2019, 7, 1)`` -> ``(2019, 7)``."""
    if isinstance(value, _dt.date):
        return value.year, value.month
    if isinstance(value, str):
        parts = value.strip().split("-")
        if len(parts) >= 2 and parts[0].isdigit() and parts[1].isdigit():
            year, month = int(parts[0]), int(parts[1])
        else:
            raise ValueError(f"date {value!r}: expected 'YYYY-MM' (e.g. '2019-07')")
    else:
        year, month = (int(v) for v in value)
    if not 1 <= month <= 12:
        raise ValueError(f"date {value!r}: month {month} is not in 1..12")
    return year, month


def _images(arr: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(arr)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4:
        raise ValueError(f"{name} must be (C, H, W) or (N, C, H, W), got shape {a.shape}")
    if a.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 in [0, 255] as in the GeoTIFFs (got {a.dtype}); convert it first, "
                         "e.g. with stsynth_lib.data.io.to_uint8_image for 16-bit imagery")
    return a


def _masks(arr: np.ndarray | None, n: int, hw: tuple[int, int], name: str) -> np.ndarray:
    """``(H, W)``, ``(N, H, W)`` or ``(N, 1, H, W)`` 0/1 masks -> float32 ``(N, 1, H, W)`` (zeros for ``None``)."""
    if arr is None:
        return np.zeros((n, 1, *hw), np.float32)
    m = np.asarray(arr)
    m = m[None, None] if m.ndim == 2 else (m[:, None] if m.ndim == 3 else m)
    if m.ndim == 4 and m.shape[0] == 1 and n > 1:
        m = np.repeat(m, n, 0)
    if m.shape != (n, 1, *hw):
        raise ValueError(f"{name} must be (H, W) or (N, H, W) matching the images {hw}, got shape {np.shape(arr)}")
    if not np.isin(m, (0, 1)).all():
        raise ValueError(f"{name} must hold 0/1 values (building footprints), got values in [{m.min()}, {m.max()}]")
    return m.astype(np.float32)


def context_fields(past: np.ndarray, gap: int, offsets: Sequence[int | str],
                   context: Mapping[int | str, np.ndarray | None] | None) -> dict[str, torch.Tensor]:
    """The ``context*`` keys of a batch: offset 0 is ``past`` (uint8 (N, C, H, W)), every other offset the uint8
    image ``context[offset]`` (shaped like ``past``; missing or ``None``: absent). Present frames count as valid."""
    from stsynth_lib.data.dataset import check_context_offsets, last_year_shift

    offsets, context = check_context_offsets(offsets), dict(context or {})
    unknown = [o for o in context if o not in offsets]
    if unknown:
        raise ValueError(f"context offsets {unknown} are not among the model's {list(offsets)}")
    n = past.shape[0]
    frames = np.zeros((n, len(offsets), *past.shape[1:]), np.float32)
    present, ages = np.zeros((n, len(offsets)), bool), np.zeros((n, len(offsets)), np.float32)
    for k, o in enumerate(offsets):
        img = past if o == 0 else context.get(o)
        if img is None:
            continue
        img = _images(img, f"context[{o!r}]")
        if img.shape != past.shape:
            raise ValueError(f"context[{o!r}] has shape {img.shape}; it must match past {past.shape}")
        shift = last_year_shift(o)
        if shift is not None and gap > 12 - shift:
            raise ValueError(f"context[{o!r}]: that month (future_date - {12 - shift} months) is after past_date "
                             f"when the gap is {gap} months (> {12 - shift}); leave it out")
        age = 12 - shift if shift is not None else gap - o
        frames[:, k], present[:, k], ages[:, k] = img.astype(np.float32) / 127.5 - 1.0, True, age
    valid = np.broadcast_to(present[:, :, None, None, None], (n, len(offsets), 1, *past.shape[2:]))
    return {"context": torch.from_numpy(frames), "context_valid": torch.from_numpy(valid.astype(np.float32)),
            "context_present": torch.from_numpy(present), "context_age_months": torch.from_numpy(ages)}


def make_batch(past: np.ndarray, past_date: DateLike, future_date: DateLike, future_mask: np.ndarray | None = None,
               past_mask: np.ndarray | None = None, valid: np.ndarray | None = None, aoi: str = "custom",
               context: Mapping[int | str, np.ndarray | None] | None = None,
               context_offsets: Sequence[int | str] | None = None) -> dict[str, Any]:
    """A collated batch with the keys of ``PairedTileDataset`` samples, built from arrays (for any model).

    ``context_offsets`` (a model's ``context_offsets_months``) adds the ``context*`` keys, from ``past`` (offset 0)
    and ``context`` ({offset: uint8 image like ``past``}; an offset left out is absent): see :func:`context_fields`.
    """
    imgs = _images(past, "past")
    n, _, h, w = imgs.shape
    (y0, m0), (y1, m1) = parse_month(past_date), parse_month(future_date)
    gap = (y1 - y0) * 12 + (m1 - m0)
    if gap < 1:
        raise ValueError(f"future_date {future_date!r} must be at least one month after past_date {past_date!r}")
    x = torch.from_numpy(imgs.astype(np.float32) / 127.5 - 1.0)
    valid_t = torch.from_numpy(_masks(valid, n, (h, w), "valid")) if valid is not None else torch.ones(n, 1, h, w)
    full = lambda v, dtype=torch.int64: torch.full((n,), v, dtype=dtype)
    extra = context_fields(imgs, gap, context_offsets, context) if context_offsets is not None else {}
    if 0 in (context_offsets or ()):  # the past frame's validity, as the dataset gives it
        extra["context_valid"][:, list(context_offsets).index(0)] = valid_t
    return {**extra,
        "past": x, "future": torch.zeros_like(x),
        "past_mask": torch.from_numpy(_masks(past_mask, n, (h, w), "past_mask")),
        "future_mask": torch.from_numpy(_masks(future_mask, n, (h, w), "future_mask")),
        "has_mask": torch.full((n,), future_mask is not None, dtype=torch.bool),
        "past_valid": valid_t, "future_valid": valid_t, "valid": valid_t,
        "gap_months": full(float(gap), torch.float32), "past_month": full(m0), "future_month": full(m1),
        "past_year": full(y0), "future_year": full(y1), "transform": torch.zeros(n, 6, dtype=torch.float64),
        "crs": [""] * n, "aoi": [aoi] * n, "pair_id": torch.arange(n),
    }


class Predictor:
    """A trained model ready to predict futures from arrays (:meth:`predict`) or from collated batches
    (:meth:`generate`). Use :func:`stsynth_lib.predict.load_predictor`."""

    family: str = ""
    uses_mask: bool = False
    uses_past_mask: bool = False
    tile_size_px: int | None = None  # the input size the model requires (None: any multiple of its downsampling)
    trained_tile_size_px: int = 0  # the tile size it was trained on (whole images are cut into such tiles)
    n_bands: int = 3
    context_offsets: tuple | None = None  # the run's context_offsets_months (None: the past image only)

    @property
    def needs_context(self) -> bool:
        """True when the model reads context frames besides the past image (``context=`` of :meth:`predict`)."""
        return any(o != 0 for o in (self.context_offsets or ()))

    def predict(self, past: np.ndarray, past_date: DateLike, future_date: DateLike,
                future_mask: np.ndarray | None = None, past_mask: np.ndarray | None = None,
                seed: int = 0, aoi: str = "custom", context: Mapping[int | str, np.ndarray | None] | None = None,
                ) -> np.ndarray:
        """The predicted future, uint8 with the shape of ``past``. ``context``: for a model trained with
        ``context_offsets_months``, ``{offset: uint8 image like past}`` (e.g. ``{-1: the month before past_date,
        "same_month_last_year": ...}``; an offset left out counts as a missing month)."""
        if self.needs_context and context is None:
            raise ValueError(f"this {self.family} model was trained with context frames at offsets "
                             f"{list(self.context_offsets)} (months relative to past_date): pass context={{offset: "
                             "uint8 image}} (leave out the months you do not have)")
        if not self.needs_context and context:
            raise ValueError(f"this {self.family} model was trained without context frames: pass context=None")
        if self.uses_mask and future_mask is None:
            raise ValueError(f"this {self.family} model was trained with the future building mask as guidance: pass "
                             "future_mask (0/1 footprints of the future date)")
        if self.uses_past_mask and past_mask is None:
            raise ValueError(f"this {self.family} model also takes the past building mask as guidance: pass past_mask "
                             "(0/1 footprints of the past date)")
        if not self.uses_mask and future_mask is not None:
            raise ValueError(f"this {self.family} model was trained without building masks: it cannot use future_mask "
                             "(pass None)")
        batch = make_batch(past, past_date, future_date, future_mask, past_mask, aoi=aoi, context=context,
                           context_offsets=self.context_offsets if self.needs_context else None)
        size = self.tile_size_px
        if size and tuple(batch["past"].shape[-2:]) != (size, size):
            raise ValueError(f"the model was trained on {size} x {size} px tiles; got {tuple(batch['past'].shape[-2:])}. "
                             f"Cut the image into {size} px tiles first")
        out = to_uint8(self.generate(batch, seed))
        return out[0] if np.asarray(past).ndim == 3 else out

    def generate(self, batch: dict[str, Any], seed: int | Sequence[int]) -> torch.Tensor:  # pragma: no cover
        """The predicted futures of a collated batch, ``(B, C, H, W)`` float in [-1, 1] on the CPU. ``seed``: one
        noise seed per image, or an int (image ``i`` gets ``seed + i``, see :func:`batch_seeds`); deterministic
        models ignore it."""
        raise NotImplementedError

    def prepare_dataset(self, dataset):
        """``dataset`` with what the model reads besides the sample's own keys (a model trained with context frames
        looks them up: the same pairs opened with its ``context_offsets``); the split predictor calls it once before
        iterating."""
        if not self.needs_context or getattr(dataset, "context_offsets_months", None) == tuple(self.context_offsets):
            return dataset
        if not hasattr(dataset, "with_context_offsets"):
            raise ValueError(f"this {self.family} model needs context frames at offsets {list(self.context_offsets)}: "
                             "pass a PairedTileDataset opened with context_offsets_months set to them")
        return dataset.with_context_offsets(self.context_offsets)


def batch_seeds(seed: int | Sequence[int], n: int) -> list[int]:
    """One seed per image of a batch of ``n``: ``seed + i`` for an int, else the given seeds (checked to be ``n``)."""
    if isinstance(seed, (int, np.integer)):
        return [int(seed) + i for i in range(n)]
    seeds = [int(s) for s in seed]
    if len(seeds) != n:
        raise ValueError(f"{len(seeds)} seeds for a batch of {n} images")
    return seeds


__all__: Sequence[str] = ("INFERENCE_PRECISIONS", "DateLike", "Predictor", "batch_seeds", "context_fields",
                          "make_batch", "parse_month")
