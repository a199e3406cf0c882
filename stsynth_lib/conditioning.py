"""Turn a ``PairedTileDataset`` batch into the cGAN generator's input: the guidance channels, explicitly.

Channels, in this order (see :meth:`GuidanceConfig.channel_names`):

1. the past image, all its bands (RGB, or RGBN when the dataset keeps 4 bands), in [-1, 1];
2. the future building mask in {0, 1}, if ``use_mask`` (``"auto"``: only when the
   dataset has labels; the unlabelled ``sn7_real_128`` profile trains on image + time);
   then, if ``use_past_mask`` (needs ``use_mask``), the past building mask, so that the generator
   sees which buildings are new (future mask 1, past mask 0);
3. time as constant planes (``time_encoding="planes"``): ``gap_months / gap_scale_months``,
   and, if ``use_month``, ``sin`` and ``cos`` of the future month of year
   (``2 pi (month - 1) / 12``), so December and January are neighbours.

``time_encoding="none"`` drops 3.

4. with ``context_offsets_months`` (the offsets of the dataset's ``context`` frames, see
   :mod:`stsynth_lib.data.dataset`), for each context frame other than offset 0 (the past image, already
   channel 1): its bands, its validity plane (``context_valid * context_present``) and its age plane
   (``context_age_months / gap_scale_months``; 0 where absent). ``None`` or ``[0]`` add nothing: today's channels.

``residual_base="seasonal"`` (needs ``same_month_last_year`` among the offsets) puts, before 1., the seasonal blend
of :mod:`stsynth_lib.baselines` per pixel: the past image averaged with the same-month-last-year frame where that
frame is present and valid, else the past image. A residual generator adds its change to the first channels, so it
then starts from the seasonal baseline instead of persistence. The default ``"past"`` adds nothing.

``residual_base="linear"`` puts there instead a per-pixel linear blend of the context frames,
``sum_k w_k(gap) frame_k + b(gap)``, each frame replaced by the past image where it is absent or its pixel unusable.
The weights, one set per time gap in months, are fitted once by least squares on the training split
(:func:`fit_linear_base`, called by the trainer) and stored in ``model.yaml``, so a run predicts the same everywhere.
Least squares targets the conditional mean, which PSNR rewards; on real SpaceNet 7 the fit shrinks towards the
older frames and, fitted around 0, towards one dark global colour as the gap grows (its weights sum under 1 and its
bias is negative), which ruins bright areas such as deserts. ``linear_centre="tile_mean"`` fits and applies the
blend around the tile's own mean colour m instead, ``m + sum_k w_k(gap) (frame_k - m) + b(gap)``, m per band over
all the tile's usable frames and pixels: the start then follows any brightness offset exactly (chosen on held-out
train and val areas, ``experiments/temporal_context/linear_start_cv.py``). Known limit: training's
``radiometric_jitter`` maps every frame and the future through one random gain ``g`` and offset ``o`` before the
condition is built, and the fitted blend does not follow them exactly (its weights sum to a little under 1 and it
has a bias): its start is then off by ``o (sum w - 1) + b (1 - g)`` (``b (1 - g)`` only with ``tile_mean``), zero
on average over the draws, at most about 0.04 in [-1, 1] units with the ``sn7_real_128`` weights fitted around 0 and
jitter 0.2. Evaluation has no jitter. Around gaps of 10-12 months the frames ``same_month_last_year+-1`` can be t0,
t0-1 or t0-2 themselves (or absent: the past image), so weights are shared between copies there; the small ridge
term keeps the fit well posed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch

from stsynth_lib.baselines import seasonal_mix
from stsynth_lib.data.dataset import SAME_MONTH_LAST_YEAR, check_context_offsets, last_year_shift

TIME_ENCODINGS = ("planes", "none")
RESIDUAL_BASES = ("past", "seasonal", "linear")
LINEAR_CENTRES = ("none", "tile_mean")


@dataclass(frozen=True)
class GuidanceConfig:
    """Which guidance the generator sees. ``use_mask``: ``"auto"`` | ``True`` | ``False``."""

    n_bands: int = 3
    use_mask: bool | str = "auto"
    use_past_mask: bool = False
    time_encoding: str = "planes"
    gap_scale_months: float = 24.0
    use_month: bool = True
    context_offsets_months: tuple | None = None
    residual_base: str = "past"  # past | seasonal | linear: the image in the first channels (a residual generator's start)
    # residual_base linear: ((gap_months, (w_0, ..., w_{K-1}), bias), ...), one row per fitted gap (fit_linear_base)
    linear_base: tuple | None = None
    # residual_base linear: what the blend shrinks towards. "none": sum_k w_k frame_k + b (a global colour when the
    # weights sum under 1); "tile_mean": m + sum_k w_k (frame_k - m) + b, m the tile's mean colour over its frames
    linear_centre: str = "none"

    def __post_init__(self):
        object.__setattr__(self, "context_offsets_months", check_context_offsets(self.context_offsets_months))
        if self.residual_base not in RESIDUAL_BASES:
            raise ValueError(f"residual_base must be one of {RESIDUAL_BASES}, got {self.residual_base!r}")
        if self.residual_base == "seasonal" and SAME_MONTH_LAST_YEAR not in (self.context_offsets_months or ()):
            raise ValueError("residual_base: seasonal blends the past image with the same-month-last-year frame: "
                             f"add {SAME_MONTH_LAST_YEAR!r} to context_offsets_months")
        if self.residual_base == "linear" and len(self.context_offsets_months or ()) < 2:
            raise ValueError("residual_base: linear blends the past frames: set context_offsets_months with frames "
                             "besides the past image, e.g. [0, -1, -2, same_month_last_year]")
        if self.linear_centre not in LINEAR_CENTRES:
            raise ValueError(f"linear_centre must be one of {LINEAR_CENTRES}, got {self.linear_centre!r}")
        if self.linear_centre != "none" and self.residual_base != "linear":
            raise ValueError(f"linear_centre: {self.linear_centre} centres the linear start: it needs residual_base: "
                             f"linear, got {self.residual_base!r}")
        if self.linear_base is not None:
            rows = tuple((int(g), tuple(float(v) for v in w), float(b)) for g, w, b in self.linear_base)
            k = len(self.context_offsets_months or ())
            if self.residual_base != "linear" or not rows or any(len(w) != k for _, w, _ in rows):
                raise ValueError(f"linear_base must hold, per gap, {k} weights (one per context offset) and a bias, "
                                 f"with residual_base: linear; got residual_base {self.residual_base!r} and {rows!r}")
            object.__setattr__(self, "linear_base", rows)
        if self.use_mask not in (True, False, "auto"):
            raise ValueError(f"use_mask must be true, false or 'auto', got {self.use_mask!r}")
        if self.use_past_mask not in (True, False):
            raise ValueError(f"use_past_mask must be true or false, got {self.use_past_mask!r}")
        if self.use_past_mask and self.use_mask is False:
            raise ValueError("use_past_mask: true needs the future mask too (use_mask: true or auto): the past mask "
                             "only tells the generator which of the future buildings are new")
        if self.time_encoding not in TIME_ENCODINGS:
            raise ValueError(f"time_encoding must be one of {TIME_ENCODINGS}, got {self.time_encoding!r}")
        if self.gap_scale_months <= 0:
            raise ValueError(f"gap_scale_months must be > 0, got {self.gap_scale_months}")

    def resolve(self, dataset_has_mask: bool, n_bands: int | None = None) -> GuidanceConfig:
        """Replace ``use_mask="auto"`` by whether the dataset has labels (and set ``n_bands``)."""
        use_mask = bool(dataset_has_mask) if self.use_mask == "auto" else self.use_mask
        if self.use_past_mask and not use_mask:
            raise ValueError("use_past_mask: true, but the dataset has no building labels (use_mask resolved to "
                             "false): set use_past_mask: false for unlabelled data")
        return replace(self, use_mask=use_mask, n_bands=n_bands if n_bands is not None else self.n_bands)

    @property
    def time_channels(self) -> int:
        if self.time_encoding == "none":
            return 0
        return 1 + (2 if self.use_month else 0)

    @property
    def extra_context(self) -> list[tuple[int, int | str]]:
        """``(position in the dataset's context, offset)`` of each context frame the channels hold (offset 0 aside)."""
        return [(k, o) for k, o in enumerate(self.context_offsets_months or ()) if o != 0]

    def channel_names(self) -> list[str]:
        if self.use_mask == "auto":
            raise ValueError("GuidanceConfig.use_mask is still 'auto': call .resolve(dataset_has_mask) first")
        names = [f"past_b{i + 1}" for i in range(self.n_bands)]
        if self.residual_base in ("seasonal", "linear"):
            names = [f"{self.residual_base}_b{i + 1}" for i in range(self.n_bands)] + names
        if self.use_mask:
            names.append("future_mask")
        if self.use_past_mask:
            names.append("past_mask")
        if self.time_encoding == "planes":
            names.append("gap_months_scaled")
            if self.use_month:
                names += ["future_month_sin", "future_month_cos"]
        for _, o in self.extra_context:
            tag = context_tag(o)
            names += [f"{tag}_b{i + 1}" for i in range(self.n_bands)] + [f"{tag}_valid", f"{tag}_age_scaled"]
        return names

    @property
    def n_channels(self) -> int:
        return len(self.channel_names())

    def to_dict(self) -> dict[str, Any]:
        """The fields (``context_offsets_months`` and ``residual_base`` only when set: runs without them keep
        today's ``model.yaml``)."""
        d = asdict(self)
        if d["residual_base"] == "past":
            del d["residual_base"]
        if d["context_offsets_months"] is None:
            del d["context_offsets_months"]
        else:
            d["context_offsets_months"] = list(d["context_offsets_months"])
        if d["linear_centre"] == "none":
            del d["linear_centre"]
        if d["linear_base"] is None:
            del d["linear_base"]
        else:
            d["linear_base"] = [{"gap_months": g, "weights": list(w), "bias": b} for g, w, b in self.linear_base]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GuidanceConfig:
        keys = ("n_bands", "use_mask", "use_past_mask", "time_encoding", "gap_scale_months", "use_month",
                "context_offsets_months", "residual_base", "linear_centre")
        kw = {k: d[k] for k in keys if k in d}
        if d.get("linear_base") is not None:
            kw["linear_base"] = tuple((r["gap_months"], r["weights"], r["bias"]) for r in d["linear_base"])
        return cls(**kw)


def context_tag(offset: int | str) -> str:
    """The channel-name prefix of a context frame: ``ctx_t0-1``, ``ctx_last_year``, ``ctx_last_year-1``, ..."""
    shift = last_year_shift(offset)
    if shift is None:
        return f"ctx_t0{offset}"
    return "ctx_last_year" if shift == 0 else f"ctx_last_year{shift:+d}"


def dataset_has_mask(dataset) -> bool:
    """True when any pair of a ``PairedTileDataset`` (or its ``pairs`` table) comes from a labelled AOI."""
    pairs = getattr(dataset, "pairs", None)
    if pairs is not None and "has_mask" in pairs:
        return bool(pairs["has_mask"].any())
    return any(bool(dataset[i]["has_mask"]) for i in range(len(dataset)))


def time_planes(batch: Mapping[str, Any], cfg: GuidanceConfig, height: int, width: int) -> torch.Tensor:
    """``(B, cfg.time_channels, H, W)`` constant planes of the time guidance."""
    past = batch["past"]
    gap = torch.as_tensor(batch["gap_months"], device=past.device, dtype=past.dtype).reshape(-1)
    feats = [gap / cfg.gap_scale_months]
    if cfg.use_month:
        month = torch.as_tensor(batch["future_month"], device=past.device).reshape(-1).to(past.dtype)
        angle = 2 * math.pi * (month - 1) / 12
        feats += [torch.sin(angle), torch.cos(angle)]
    v = torch.stack(feats, 1)  # (B, k)
    return v[:, :, None, None].expand(-1, -1, height, width)


def build_condition(batch: Mapping[str, Any], cfg: GuidanceConfig) -> torch.Tensor:
    """Concatenate the guidance of a collated batch into ``(B, cfg.n_channels, H, W)``."""
    if cfg.use_mask == "auto":
        raise ValueError("build_condition needs a resolved GuidanceConfig (use_mask true/false): call cfg.resolve(...)")
    past = batch["past"]
    if past.ndim != 4:
        raise ValueError(f"batch['past'] must be (B, C, H, W), got {tuple(past.shape)}; collate samples with a DataLoader")
    if past.shape[1] != cfg.n_bands:
        raise ValueError(f"batch['past'] has {past.shape[1]} bands but the GuidanceConfig says n_bands={cfg.n_bands}")
    parts = [past]
    if cfg.residual_base == "seasonal":
        parts.insert(0, seasonal_base(batch, cfg))
    elif cfg.residual_base == "linear":
        parts.insert(0, linear_base(batch, cfg))
    if cfg.use_mask:
        parts.append(batch["future_mask"].to(past.dtype))
    if cfg.use_past_mask:
        parts.append(batch["past_mask"].to(past.dtype))
    if cfg.time_encoding == "planes":
        parts.append(time_planes(batch, cfg, past.shape[-2], past.shape[-1]))
    if cfg.extra_context:
        parts += context_planes(batch, cfg)
    return torch.cat(parts, 1)


def seasonal_base(batch: Mapping[str, Any], cfg: GuidanceConfig) -> torch.Tensor:
    """``(B, C, H, W)`` in [-1, 1]: the past image averaged with the same-month-last-year context frame where that
    frame is present and its pixel valid, else the past image (the seasonal baseline, per pixel)."""
    past = batch["past"]
    k = list(cfg.context_offsets_months).index(SAME_MONTH_LAST_YEAR)
    if "context" not in batch:
        raise ValueError("residual_base: seasonal needs the batch's context frames: build the dataset with "
                         f"PairedTileDataset(..., context_offsets_months={list(cfg.context_offsets_months)})")
    present = torch.as_tensor(batch["context_present"], device=past.device)[:, k].to(past.dtype)
    w = batch["context_valid"][:, k].to(past.dtype) * present[:, None, None, None]
    return seasonal_mix(past, batch["context"][:, k].to(past.dtype), w)


def usable_frames(batch: Mapping[str, Any], cfg: GuidanceConfig) -> torch.Tensor:
    """``(B, K, C, H, W)``: each context frame where it is present and its pixel valid, else the past image."""
    past = batch["past"]
    if "context" not in batch:
        raise ValueError(f"residual_base: {cfg.residual_base} needs the batch's context frames: build the dataset "
                         f"with PairedTileDataset(..., context_offsets_months={list(cfg.context_offsets_months)})")
    present = torch.as_tensor(batch["context_present"], device=past.device).to(past.dtype)
    use = batch["context_valid"].to(past.dtype) * present[:, :, None, None, None]
    ctx = batch["context"].to(past.dtype)
    return past[:, None] + use * (ctx - past[:, None])


def _nearest_gap_rows(gaps: torch.Tensor, fitted: list[int]) -> torch.Tensor:
    f = torch.as_tensor(fitted, dtype=torch.float64)
    return (gaps.to(torch.float64)[:, None] - f[None]).abs().argmin(1)


def linear_base(batch: Mapping[str, Any], cfg: GuidanceConfig) -> torch.Tensor:
    """``(B, C, H, W)`` in [-1, 1]: ``sum_k w_k(gap) usable_frame_k + b(gap)`` with the weights of the nearest fitted
    gap (see :func:`fit_linear_base`); with ``linear_centre: tile_mean``, ``m + sum_k w_k(gap) (usable_frame_k - m) +
    b(gap)``, ``m`` the tile's mean colour (:func:`blend_centre`)."""
    if cfg.linear_base is None:
        raise ValueError("residual_base: linear has no fitted weights: fit them on the training split with "
                         "stsynth_lib.conditioning.fit_linear_base(train_dataset, cfg) (train_cgan does this)")
    frames = usable_frames(batch, cfg)
    past = batch["past"]
    gap = torch.as_tensor(batch["gap_months"], device=past.device).reshape(-1)
    rows = _nearest_gap_rows(gap.cpu(), [g for g, _, _ in cfg.linear_base])
    w = torch.tensor([w for _, w, _ in cfg.linear_base], dtype=past.dtype)[rows].to(past.device)
    b = torch.tensor([b for _, _, b in cfg.linear_base], dtype=past.dtype)[rows].to(past.device)
    centre = blend_centre(frames, cfg)
    out = centre[:, 0] + ((frames - centre) * w[:, :, None, None, None]).sum(1) + b[:, None, None, None]
    return out.clamp(-1, 1)


def blend_centre(frames: torch.Tensor, cfg: GuidanceConfig) -> torch.Tensor:
    """``(B, 1, C, 1, 1)``: what the linear start's weights act around: 0 (``linear_centre: none``), or the tile's
    mean colour per band over all its usable frames and pixels (``tile_mean``; no validity mask, so nothing of the
    future enters)."""
    if cfg.linear_centre == "tile_mean":
        return frames.mean((1, 3, 4), keepdim=True)
    return frames.new_zeros(frames.shape[0], 1, frames.shape[2], 1, 1)


def fit_linear_base(dataset, cfg: GuidanceConfig, max_pairs_per_gap: int = 300, pixels_per_pair: int = 256,
                    min_pairs_per_gap: int = 5, seed: int = 0, decimals: int = 5) -> tuple:
    """Least-squares weights of ``residual_base: linear``, one set per time gap in months: the future image
    regressed on the usable context frames (see :func:`usable_frames`) and a bias, all minus the blend's centre
    (:func:`blend_centre`: 0, or the tile's mean colour with ``linear_centre: tile_mean``), over
    ``pixels_per_pair`` random valid pixels of up to ``max_pairs_per_gap`` random pairs of ``dataset`` (the training
    split) per gap. Gaps with fewer than ``min_pairs_per_gap`` pairs are left out (they use the nearest fitted gap).
    Seeded and rounded to ``decimals``, so a resumed run fits the same weights. Returns
    ``GuidanceConfig.linear_base``."""
    offsets = list(cfg.context_offsets_months or ())
    if len(offsets) < 2 or list(getattr(dataset, "context_offsets_months", None) or ()) != offsets:
        raise ValueError(f"fit_linear_base needs a dataset opened with the guidance's context offsets {offsets}; "
                         f"it has {getattr(dataset, 'context_offsets_months', None)}")
    gaps = dataset.pairs["gap_months"].to_numpy(int)
    rng = np.random.default_rng(seed)
    rows = []
    for g in sorted(set(gaps.tolist())):
        idx = np.flatnonzero(gaps == g)
        if len(idx) < min_pairs_per_gap:
            continue
        idx = np.sort(rng.choice(idx, size=min(len(idx), max_pairs_per_gap), replace=False))
        xs, ys = [], []
        for i in idx:
            # a batch of one (training.collate is a layer above this module)
            batch = {k: v[None] if isinstance(v, torch.Tensor) else [v] for k, v in dataset[int(i)].items()}
            frames = usable_frames(batch, cfg).double()
            centre = blend_centre(frames, cfg)[0, 0].numpy()  # (C, 1, 1): the fit is around the blend's centre
            frames = frames[0].numpy() - centre  # (K, C, H, W)
            valid = np.asarray(batch["valid"][0, 0]).astype(bool)
            pix = np.flatnonzero(valid.reshape(-1))
            if len(pix) == 0:
                continue
            pix = rng.choice(pix, size=min(len(pix), pixels_per_pair), replace=False)
            k, c = frames.shape[:2]
            xs.append(frames.reshape(k, c, -1)[:, :, pix].reshape(k, -1).T)
            ys.append((np.asarray(batch["future"][0], np.float64) - centre).reshape(c, -1)[:, pix].reshape(-1))
        if not xs:
            continue
        x, y = np.concatenate(xs), np.concatenate(ys)
        a = np.c_[x, np.ones(len(x))]
        sol = np.linalg.solve(a.T @ a + 1e-6 * len(a) * np.eye(a.shape[1]), a.T @ y)
        sol = np.round(sol, decimals)
        rows.append((int(g), tuple(float(v) for v in sol[:-1]), float(sol[-1])))
    if not rows:
        raise ValueError(f"fit_linear_base: no time gap has {min_pairs_per_gap} or more training pairs with valid "
                         f"pixels ({len(gaps)} pairs): use residual_base: seasonal or past, or more data")
    return tuple(rows)


def context_planes(batch: Mapping[str, Any], cfg: GuidanceConfig) -> list[torch.Tensor]:
    """Per extra context frame: its bands, validity (valid * present) and age / ``gap_scale_months`` planes."""
    past = batch["past"]
    k_needed = len(cfg.context_offsets_months)
    missing = [k for k in ("context", "context_valid", "context_present", "context_age_months") if k not in batch]
    if missing:
        raise ValueError(f"this guidance uses context frames at offsets {list(cfg.context_offsets_months)} but the "
                         f"batch has no {missing}: build the dataset with PairedTileDataset(..., "
                         f"context_offsets_months={list(cfg.context_offsets_months)})")
    ctx = batch["context"]
    if ctx.ndim != 5 or ctx.shape[1] != k_needed or ctx.shape[2] != cfg.n_bands:
        raise ValueError(f"batch['context'] must be (B, {k_needed}, {cfg.n_bands}, H, W) for the offsets "
                         f"{list(cfg.context_offsets_months)}, got {tuple(ctx.shape)}")
    present = torch.as_tensor(batch["context_present"], device=past.device).to(past.dtype)
    age = torch.as_tensor(batch["context_age_months"], device=past.device).to(past.dtype) / cfg.gap_scale_months
    h, w = past.shape[-2:]
    out = []
    for k, _ in cfg.extra_context:
        out.append(ctx[:, k].to(past.dtype))
        out.append(batch["context_valid"][:, k].to(past.dtype) * present[:, k, None, None, None])
        out.append((age[:, k] * present[:, k])[:, None, None, None].expand(-1, 1, h, w))
    return out
