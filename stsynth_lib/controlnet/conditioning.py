"""What the ControlNet sees: the conditioning image (past [+ past frames] + future mask [+ time gap]) and the prompt.

Conditioning image, ``(B, C [+ K' (C + 2)] [+ 1] [+ 1], H, W)`` in [0, 1] like diffusers' ControlNet expects:

* channels ``0..C-1``: the past image, [-1, 1] -> [0, 1] (the past shapes the future),
* with ``context_offsets_months`` (the guidance option the cGANs read, :mod:`stsynth_lib.conditioning`), for each
  of its ``K'`` offsets other than 0, in the order given: the frame's ``C`` bands, [-1, 1] -> [0, 1] (an absent
  month is the dataset's zeros, so 0.5, as the cGANs see it), its validity plane ``context_valid *
  context_present`` (0 where absent or unusable) and its age plane ``min(context_age_months / gap_scale_months, 1)``
  (0 where absent): the cGANs' per-frame channels (:func:`stsynth_lib.conditioning.context_planes`), the age clipped
  to [0, 1] like the gap plane. ``None`` (default) or ``[0]`` add nothing,
* next channel (``use_mask``; dropped for unlabelled datasets such as ``sn7_real_128``):
  the future building mask, {0, 1} (the guidance),
* last channel (``use_gap_plane``): a constant plane ``min(gap_months / gap_scale_months, 1)``.

Prompts come from a template filled with the sample's metadata. The template is
a comma-separated list of segments; a segment whose fields are unknown (e.g.
``{n_new_buildings}`` for an unlabelled AOI) is dropped instead of printing
"None". Fields: ``aoi``, ``month_name``, ``year`` (future date), ``past_month_name``,
``past_year``, ``gap_months``, ``n_new_buildings``, ``n_buildings``,
``building_pct`` (future mask cover, %).
"""

from __future__ import annotations

import calendar
import string
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

# The AOI name is left out of the default: splits are drawn by AOI, so test AOIs never appear in training prompts.
DEFAULT_PROMPT_TEMPLATE = (
    "satellite image, {month_name} {year}, {gap_months} months later, {n_new_buildings} new buildings"
)


CONTEXT_KEYS = ("context", "context_valid", "context_present", "context_age_months")


def extra_offsets(context_offsets_months: Sequence[int | str] | None) -> list[tuple[int, int | str]]:
    """``(position in the dataset's context, offset)`` of each context frame the conditioning holds (offset 0, the
    past image itself, aside), checked as the dataset checks them."""
    from stsynth_lib.data.dataset import check_context_offsets

    return [(k, o) for k, o in enumerate(check_context_offsets(context_offsets_months) or ()) if o != 0]


def conditioning_channels(n_bands: int = 3, use_gap_plane: bool = True, use_mask: bool = True,
                          context_offsets_months: Sequence[int | str] | None = None) -> int:
    """Number of ControlNet conditioning channels for images with ``n_bands`` bands (each context frame other than
    offset 0 adds its bands, a validity and an age plane)."""
    n_extra = len(extra_offsets(context_offsets_months))
    return int(n_bands) * (1 + n_extra) + 2 * n_extra + int(bool(use_mask)) + int(bool(use_gap_plane))


def conditioning_channel_names(n_bands: int = 3, use_gap_plane: bool = True, use_mask: bool = True,
                               context_offsets_months: Sequence[int | str] | None = None) -> list[str]:
    """The name of each conditioning channel, in order (the cGANs' names for the context frames)."""
    from stsynth_lib.conditioning import context_tag

    names = [f"past_b{i + 1}" for i in range(n_bands)]
    for _, o in extra_offsets(context_offsets_months):
        tag = context_tag(o)
        names += [f"{tag}_b{i + 1}" for i in range(n_bands)] + [f"{tag}_valid", f"{tag}_age_scaled"]
    return names + (["future_mask"] if use_mask else []) + (["gap_months_scaled"] if use_gap_plane else [])


def context_conditioning(context: Mapping[str, Any], context_offsets_months: Sequence[int | str],
                         n_bands: int, size: tuple[int, int], gap_scale_months: float = 24.0) -> list[torch.Tensor]:
    """Per context frame other than offset 0: its bands in [0, 1], its validity (valid * present) and its age plane
    ``min(age / gap_scale_months, 1)`` (0 where absent), each ``(B, ., H, W)``. ``context``: a collated batch (or a
    sample with a batch axis added) holding the dataset's ``context*`` keys for exactly these offsets."""
    offsets = list(context_offsets_months)
    missing = [k for k in CONTEXT_KEYS if k not in context]
    if missing:
        raise ValueError(f"this ControlNet's conditioning holds the past frames at offsets {offsets} (its "
                         f"context_offsets_months) but the batch has no {missing}: build the dataset with "
                         f"PairedTileDataset(..., context_offsets_months={offsets}), or pass context={{offset: "
                         "image}} to predict()")
    ctx = context["context"]
    if ctx.ndim != 5 or ctx.shape[1] != len(offsets) or ctx.shape[2] != n_bands or tuple(ctx.shape[-2:]) != size:
        raise ValueError(f"context must be (B, {len(offsets)}, {n_bands}, {size[0]}, {size[1]}) for the offsets "
                         f"{offsets}, got {tuple(ctx.shape)}")
    dev = ctx.device
    present = torch.as_tensor(context["context_present"], device=dev).float()
    age = torch.as_tensor(context["context_age_months"], device=dev).float()
    valid = torch.as_tensor(context["context_valid"], device=dev).float()
    out = []
    for k, _ in extra_offsets(offsets):
        out.append(((ctx[:, k].float() + 1.0) / 2.0).clamp(0, 1))
        out.append(valid[:, k] * present[:, k, None, None, None])
        a = (age[:, k] * present[:, k] / float(gap_scale_months)).clamp(0, 1)
        out.append(a[:, None, None, None].expand(-1, 1, *size))
    return out


def make_conditioning(
    past: torch.Tensor,
    future_mask: torch.Tensor,
    gap_months: torch.Tensor | float | None = None,
    use_gap_plane: bool = True,
    gap_scale_months: float = 24.0,
    use_mask: bool = True,
    context_offsets_months: Sequence[int | str] | None = None,
    context: Mapping[str, Any] | None = None,
) -> torch.Tensor:
    """Stack the past image, its context frames, the future mask and an optional time-gap plane into a [0, 1] tensor.

    ``past`` is ``(B, C, H, W)`` in [-1, 1] (``PairedTileDataset`` convention),
    ``future_mask`` ``(B, 1, H, W)`` in {0, 1}, ``gap_months`` ``(B,)``.
    Unbatched inputs (``(C, H, W)``) are accepted and return ``(C', H, W)``.
    ``context_offsets_months`` with frames other than 0 needs ``context``: a batch (or, unbatched, the sample) with
    the dataset's ``context*`` keys for those offsets (:func:`context_conditioning`).
    """
    unbatched = past.dim() == 3
    extra = extra_offsets(context_offsets_months)
    if extra and context is None:
        raise ValueError(f"context_offsets_months={list(context_offsets_months)} puts past frames in the "
                         "conditioning: pass context= (the sample or batch with the dataset's context keys)")
    if unbatched:
        past, future_mask = past[None], future_mask[None]
        if gap_months is not None:
            gap_months = torch.as_tensor(gap_months).reshape(1)
        if extra:
            context = {k: torch.as_tensor(context[k])[None] for k in CONTEXT_KEYS if k in context}
    if past.dim() != 4 or future_mask.dim() != 4 or future_mask.shape[1] != 1:
        raise ValueError(
            f"past must be (B, C, H, W) and future_mask (B, 1, H, W); got {tuple(past.shape)} and {tuple(future_mask.shape)}"
        )
    if past.shape[0] != future_mask.shape[0] or past.shape[-2:] != future_mask.shape[-2:]:
        raise ValueError(f"past {tuple(past.shape)} and future_mask {tuple(future_mask.shape)} differ in batch or size")
    lo, hi = float(past.min()), float(past.max())
    if lo < -1.001 or hi > 1.001:
        raise ValueError(
            f"past image values span [{lo:.3f}, {hi:.3f}], expected [-1, 1] (PairedTileDataset scaling v/127.5-1); "
            "did you pass uint8 or [0, 1] images?"
        )
    if not torch.all((future_mask == 0) | (future_mask == 1)):
        raise ValueError("future_mask must hold only 0 and 1 (building footprints); got other values")
    parts = [((past.float() + 1.0) / 2.0).clamp(0, 1)]
    if extra:
        parts += [p.to(past.device) for p in context_conditioning(context, context_offsets_months, past.shape[1],
                                                                  tuple(past.shape[-2:]), gap_scale_months)]
    if use_mask:
        parts.append(future_mask.float())
    if use_gap_plane:
        if gap_months is None:
            raise ValueError("use_gap_plane=True needs gap_months (the sample's 'gap_months')")
        g = torch.as_tensor(gap_months, dtype=torch.float32, device=past.device).reshape(-1, 1, 1, 1)
        if g.shape[0] != past.shape[0]:
            raise ValueError(f"gap_months has {g.shape[0]} values for a batch of {past.shape[0]}")
        parts.append((g / float(gap_scale_months)).clamp(0, 1).expand(-1, 1, *past.shape[-2:]))
    cond = torch.cat(parts, dim=1)
    return cond[0] if unbatched else cond


def batch_conditioning(
    batch: Mapping[str, Any], use_gap_plane: bool = True, gap_scale_months: float = 24.0, use_mask: bool = True,
    context_offsets_months: Sequence[int | str] | None = None,
) -> torch.Tensor:
    """:func:`make_conditioning` on a collated ``PairedTileDataset`` batch (its ``context*`` keys give the frames of
    ``context_offsets_months``)."""
    return make_conditioning(batch["past"], batch["future_mask"], batch.get("gap_months"), use_gap_plane,
                             gap_scale_months, use_mask, context_offsets_months, batch)


def count_new_buildings(past_mask: np.ndarray, future_mask: np.ndarray) -> int:
    """Connected footprints (8-connectivity) of the future mask that do not touch any past footprint."""
    from scipy import ndimage

    fut = np.asarray(future_mask).squeeze() > 0.5
    past = np.asarray(past_mask).squeeze() > 0.5
    labels, n = ndimage.label(fut, structure=np.ones((3, 3)))
    if n == 0:
        return 0
    touched = np.unique(labels[past & fut])
    return int(n - np.count_nonzero(touched))


def prompt_fields(sample: Mapping[str, Any]) -> dict[str, Any]:
    """Template fields of one (uncollated) sample; unknown values are ``None``."""
    has_mask = bool(sample.get("has_mask", True))
    fm = sample["future_mask"]
    fm = fm.detach().cpu().numpy() if isinstance(fm, torch.Tensor) else np.asarray(fm)  # a batch may be on the GPU
    fields: dict[str, Any] = {
        "aoi": str(sample.get("aoi", "")) or None,
        "month_name": calendar.month_name[int(sample["future_month"])],
        "year": int(sample["future_year"]),
        "past_month_name": calendar.month_name[int(sample["past_month"])],
        "past_year": int(sample["past_year"]),
        "gap_months": int(round(float(sample["gap_months"]))),
        "n_new_buildings": None,
        "n_buildings": None,
        "building_pct": None,
    }
    if has_mask:
        from scipy import ndimage

        pm = sample["past_mask"]
        pm = pm.detach().cpu().numpy() if isinstance(pm, torch.Tensor) else np.asarray(pm)
        fields["n_new_buildings"] = count_new_buildings(pm, fm)
        fields["n_buildings"] = int(ndimage.label(fm.squeeze() > 0.5, structure=np.ones((3, 3)))[1])
        fields["building_pct"] = round(100.0 * float((fm > 0.5).mean()), 1)
    return fields


def render_prompt(template: str, fields: Mapping[str, Any]) -> str:
    """Fill ``template``; comma-separated segments with an unknown (``None``) field are dropped, and a count of 1
    takes the singular ("1 month later", not "1 months later")."""
    from stsynth_lib.book.report_format import fix_plurals

    names = {n for _, n, _, _ in string.Formatter().parse(template) if n}
    unknown = names - set(fields)
    if unknown:
        raise KeyError(
            f"prompt template {template!r} uses unknown field(s) {sorted(unknown)}; available: {sorted(fields)}"
        )
    out = []
    for seg in template.split(","):
        seg_names = {n for _, n, _, _ in string.Formatter().parse(seg) if n}
        if any(fields[n] is None for n in seg_names):
            continue
        out.append(seg.strip().format(**fields))
    return fix_plurals(", ".join(s for s in out if s))  # "1 month later", "1 new building"


def build_prompt(sample: Mapping[str, Any], template: str = DEFAULT_PROMPT_TEMPLATE, empty_prompt: bool = False) -> str:
    """The prompt of one sample (``""`` when ``empty_prompt``)."""
    return "" if empty_prompt else render_prompt(template, prompt_fields(sample))


def batch_prompts(batch: Mapping[str, Any], template: str = DEFAULT_PROMPT_TEMPLATE, empty_prompt: bool = False) -> list[str]:
    """Prompts of a collated batch (the per-sample fields are re-split from the batch)."""
    n = len(batch["aoi"])
    if empty_prompt:
        return [""] * n
    keys = ("future_mask", "past_mask", "has_mask", "aoi", "future_month", "future_year", "past_month", "past_year", "gap_months")
    return [build_prompt({k: batch[k][i] for k in keys if k in batch}, template) for i in range(n)]


def apply_prompt_dropout(prompts: Sequence[str], p: float, generator: torch.Generator | None = None) -> list[str]:
    """Replace each prompt by ``""`` with probability ``p`` (classifier-free guidance needs unconditional samples)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"prompt dropout must be in [0, 1], got {p}")
    if p == 0.0:
        return list(prompts)
    drop = torch.rand(len(prompts), generator=generator) < p
    return ["" if d else s for s, d in zip(prompts, drop.tolist())]


def resize_spatial(x: torch.Tensor, size_px: int | None, mode: str = "auto") -> torch.Tensor:
    """Resize ``(B, C, H, W)`` to ``size_px`` (no-op when ``None`` or already that size).

    ``nearest`` keeps masks binary; ``auto`` averages (``area``) when shrinking and is bilinear when enlarging.
    """
    if size_px is None or x.shape[-1] == int(size_px) and x.shape[-2] == int(size_px):
        return x
    if mode == "auto":
        mode = "area" if x.shape[-1] > int(size_px) else "bilinear"
    kw = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(x.float(), size=(int(size_px), int(size_px)), mode=mode, **kw)


_IMAGE_KEYS = ("past", "future")
_MASK_KEYS = ("past_mask", "future_mask", "past_valid", "future_valid", "valid")
_FRAME_KEYS = {"context": "auto", "context_valid": "nearest"}  # (B, K, C, H, W): resized frame by frame


def resize_batch(batch: Mapping[str, Any], size_px: int | None) -> dict[str, Any]:
    """Resize the spatial tensors of a collated batch to ``size_px`` (images: area/bilinear, masks: nearest).

    Used when the backbone works at another size than the tiles (e.g. SD 1.5 at
    512 px on 256 px tiles). ``None`` or the tile size is a no-op.
    """
    out = dict(batch)
    if size_px is None:
        return out
    for k in _IMAGE_KEYS:
        if k in out:
            out[k] = resize_spatial(out[k], size_px).clamp(-1, 1)
    for k in _MASK_KEYS:
        if k in out:
            out[k] = resize_spatial(out[k], size_px, mode="nearest")
    for k, mode in _FRAME_KEYS.items():
        if k in out:
            x = out[k]
            y = resize_spatial(x.reshape(-1, *x.shape[2:]), size_px, mode=mode)
            y = y.reshape(*x.shape[:3], *y.shape[-2:])
            out[k] = y.clamp(-1, 1) if k == "context" else y
    return out
