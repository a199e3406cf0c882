"""Training augmentation of whole batches: the same flips/rotations on every spatial tensor, radiometric jitter."""

from __future__ import annotations

from typing import Any

import torch

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

