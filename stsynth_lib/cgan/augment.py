"""Training augmentation of whole batches: the same flips/rotations on every spatial tensor, radiometric jitter, and
synthetic construction (standing buildings erased from the past image, to be drawn anew)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

SPATIAL_KEYS = ("past", "future", "past_mask", "future_mask", "past_valid", "future_valid", "valid", "context",
                "context_valid")


def augment_batch(batch: dict[str, Any], generator: torch.Generator, radiometric_jitter: float = 0.0) -> dict[str, Any]:
    """Random 90-degree rotation and horizontal flip per sample, identical on every spatial tensor.

    ``radiometric_jitter`` = j > 0 also maps both images of a pair through the
    same random per-band line ``x * gain + offset`` (gain in [1 - j, 1 + j],
    offset in [-j, j], in [-1, 1] units, clipped to [-1, 1]). The change from
    past to future is kept (rescaled by the gain), but a generator can no longer
    tie its output to the absolute colours of the few training areas (34 AOIs
    on sn7_real_128), which new areas do not share. Context frames (``context``, when the batch has them) go
    through the same rotation, flip and line (absent frames stay 0).
    """
    b = batch["past"].shape[0]
    ks = torch.randint(0, 4, (b,), generator=generator).tolist()
    flips = (torch.rand(b, generator=generator) < 0.5).tolist()
    out = dict(batch)
    for key in SPATIAL_KEYS:
        if key not in batch:
            continue
        x = batch[key]
        items = []
        for i in range(b):
            xi = torch.rot90(x[i], ks[i], dims=(-2, -1))
            items.append(torch.flip(xi, dims=(-1,)) if flips[i] else xi)
        out[key] = torch.stack(items)
    if radiometric_jitter > 0:
        if radiometric_jitter >= 1:
            raise ValueError(f"radiometric_jitter must be in [0, 1), got {radiometric_jitter}")
        n_bands = batch["past"].shape[1]
        gain = 1 + radiometric_jitter * (2 * torch.rand(b, n_bands, 1, 1, generator=generator) - 1)
        offset = radiometric_jitter * (2 * torch.rand(b, n_bands, 1, 1, generator=generator) - 1)
        for key in ("past", "future"):
            x = out[key]
            out[key] = (x * gain.to(x.dtype) + offset.to(x.dtype)).clamp(-1, 1)
        if "context" in out:
            x = out["context"]
            present = torch.as_tensor(batch["context_present"]).to(x.dtype)[:, :, None, None, None]
            out["context"] = (x * gain[:, None].to(x.dtype) + offset[:, None].to(x.dtype)).clamp(-1, 1) * present
    return out


def building_components(mask: torch.Tensor) -> torch.Tensor:
    """Connected components (8-neighbour) of binary masks (B, 1, H, W): int64 labels, 0 off the buildings.

    Pure torch on the mask's device (label propagation by 3x3 max-pooling until nothing changes, as many passes as
    the longest path inside a component: about 40 on sn7_labelled's 128 px tiles), so training needs no scipy. Each
    component takes the largest flat index + 1 of its pixels, unique within its image.
    """
    b, _, h, w = mask.shape
    on = mask > 0.5
    # float32 holds every index exactly up to 2**24 pixels (4096 x 4096) and max-pools on every device
    idx = torch.arange(1, h * w + 1, dtype=torch.float32, device=mask.device).view(1, 1, h, w).expand(b, 1, h, w)
    lab = torch.where(on, idx, torch.zeros((), dtype=torch.float32, device=mask.device))
    for _ in range(h * w):  # a path visits each pixel at most once: this always converges
        new = torch.where(on, F.max_pool2d(lab, 3, stride=1, padding=1), lab)
        if torch.equal(new, lab):
            break
        lab = new
    return lab.to(torch.int64)


def _gaussian_blur(x: torch.Tensor, sigma_px: float) -> torch.Tensor:
    radius = max(1, int(round(3 * sigma_px)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma_px) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1).contiguous(), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1).contiguous(), groups=c)


def background_fill(image: torch.Tensor, keep: torch.Tensor, sigma_px: float = 3.0) -> torch.Tensor:
    """What ``image`` (B, C, H, W) looks like without its non-``keep`` pixels: a normalised Gaussian blur of the
    kept pixels (the surrounding ground). Farther than about 3 sigma from any kept pixel (inside a footprint wider
    than about 18 px at sigma 3) it falls back to the image's mean kept colour, a flat patch."""
    keep = keep.to(image.dtype)
    c = image.shape[1]
    blurred = _gaussian_blur(torch.cat([image * keep, keep], dim=1), sigma_px)  # one pass: numerator, denominator
    num, den = blurred[:, :c], blurred[:, c:]
    mean = (image * keep).sum((-2, -1), keepdim=True) / keep.sum((-2, -1), keepdim=True).clamp_min(1)
    return torch.where(den > 1e-3, num / den.clamp_min(1e-3), mean)


def check_erasable(fraction: float, dataset, dataset_dir, labelled: bool = True) -> None:
    """Refuse ``erase_building_fraction > 0`` on a training set with no labelled pair (nothing to erase); ``labelled``
    False (the ControlNet without its mask channel) refuses too. Shared by the cGAN and ControlNet trainers."""
    if fraction > 0 and not (labelled and dataset.pairs["has_mask"].to_numpy(bool).any()):
        raise ValueError(
            f"erase_building_fraction={fraction}: none of the {len(dataset)} training pairs of {dataset_dir} has "
            "building labels (or the mask is not used), so there is no building to erase: set "
            "erase_building_fraction: 0 (it needs a labelled dataset, e.g. sn7_labelled)")


def erase_generator(step_seed: int, rank: int = 0) -> torch.Generator:
    """The CPU generator of one step's erasing: its own stream beside the step's augmentation seed, one per rank."""
    return torch.Generator().manual_seed(step_seed + 1 + rank * ((1 << 32) - 1))


def erase_buildings(batch: dict[str, Any], generator: torch.Generator, fraction: float,
                    sigma_px: float = 3.0) -> dict[str, Any]:
    """Synthetic construction: erase buildings standing at both dates of a pair from its past image (and its context
    frames), so that the future mask asks for them as new buildings.

    Real new buildings are rare (about 150 in sn7_labelled's train blocks); buildings that stand at both dates are
    thousands. A standing building is a connected component of the pixels that BOTH masks cover; each is chosen
    independently with probability ``fraction`` (so about that share is erased). A chosen one, grown by one pixel
    for its walls and shadow, is painted over with the blurred surrounding ground (:func:`background_fill`, which
    leaves out every building pixel of the past mask and the unusable pixels) and cleared from ``past_mask``; the
    future image and mask are untouched. The generator then learns to draw a building where the future mask has one
    and the past shows ground. Known simplifications: the part of a footprint covered at t0 only (rare: demolished or
    rebuilt) stays, and the one-pixel ring can paint over the edge pixel of a neighbouring building that stays in the
    mask. Pairs without labels (``has_mask`` False) pass unchanged. Works on the batch's device; ``generator`` is a
    CPU generator (its draws are moved), so the choice is the same on every device.
    """
    if not 0 <= fraction <= 1:
        raise ValueError(f"erase_building_fraction must be in [0, 1], got {fraction}")
    if fraction == 0 or "past_mask" not in batch:
        return batch
    past_mask, future_mask = batch["past_mask"], batch["future_mask"]
    b, dev = past_mask.shape[0], past_mask.device
    standing = (past_mask > 0.5) & (future_mask > 0.5)
    if "has_mask" in batch:
        standing = standing & torch.as_tensor(batch["has_mask"]).to(dev).bool().view(b, 1, 1, 1)
    labels = building_components(standing.to(torch.float32))
    n_lab = labels.shape[-1] * labels.shape[-2] + 1
    pick = (torch.rand(b, n_lab, generator=generator) < fraction).to(dev)  # one draw per (image, component label)
    pick[:, 0] = False
    chosen = torch.gather(pick, 1, labels.view(b, -1)).view_as(labels)
    rows = chosen.flatten(1).any(dim=1)
    if not rows.any():
        return batch
    erase = F.max_pool2d(chosen.to(torch.float32), 3, stride=1, padding=1) > 0.5
    ground = ~(F.max_pool2d((past_mask > 0.5).to(torch.float32), 3, stride=1, padding=1) > 0.5)
    if "past_valid" in batch:
        ground = ground & (batch["past_valid"] > 0.5)
    out = dict(batch)
    past = batch["past"]
    new_past = past.clone()
    sel = rows.nonzero().flatten()  # blur only the images that lose a building
    fill = background_fill(past[sel].float(), ground[sel], sigma_px).to(past.dtype)
    new_past[sel] = torch.where(erase[sel], fill, past[sel])
    out["past"] = new_past
    out["past_mask"] = torch.where(chosen, torch.zeros_like(past_mask), past_mask)
    if "context" in batch:
        ctx = batch["context"]  # (B, K, C, H, W); absent frames are 0 and stay 0
        k = ctx.shape[1]
        sub = ctx[sel].flatten(0, 1).float()
        ground_k = ground[sel].repeat_interleave(k, dim=0)
        if "context_valid" in batch:
            ground_k = ground_k & (batch["context_valid"][sel].flatten(0, 1) > 0.5)
        fill_k = background_fill(sub, ground_k, sigma_px).view(len(sel), *ctx.shape[1:]).to(ctx.dtype)
        present = torch.as_tensor(batch["context_present"]).to(dev).bool()[sel][:, :, None, None, None]
        new_ctx = ctx.clone()
        new_ctx[sel] = torch.where(erase[sel][:, None] & present, fill_k, ctx[sel])
        out["context"] = new_ctx
    return out
