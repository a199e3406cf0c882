"""Residual diffusion (``diffusion_target: residual``): the denoiser learns the latent change from the past image.

With ``diffusion_target: image`` (the default) the ControlNet learns the whole future latent ``z_future``; on real
data the best it can do is redraw the past, and it loses to persistence. With ``residual`` it learns

    r = (z_future - z_start) * residual_scale,   z_start = image_latents(backbone, past)  (posterior mean)

and generation returns ``decode(z_start + r / residual_scale)``: a sampled residual of 0 is exactly the past image
through the VAE (the autoencoder's reconstruction, its ceiling), so "nothing changed" is the easy answer.

``residual_scale`` brings the change to the unit scale the noise schedule expects: ``1 / RMS(z_future - z_past)``
(the root mean square around 0, over latent pixels whose footprint is valid) on ``residual_scale_pairs`` seeded
training pairs, with the RMS floored at :data:`RMS_FLOOR` so an all-zero change cannot divide by 0. It is fitted
once, at the start of a fresh run, and recorded in ``<run>/residual.yaml`` (:data:`RESIDUAL_FILE`): a resume reads
it back (never refits), and generation, the predictor and the strength sweep read it from there.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import yaml

RESIDUAL_FILE = "residual.yaml"  # run folder: the residual scale of a diffusion_target: residual run
RMS_FLOOR = 1e-2  # the smallest RMS of the latent change the scale divides by (scale <= 100)
TARGETS = ("image", "residual")


def is_residual(params: Mapping[str, Any]) -> bool:
    """Whether a run's options (``params.yaml`` or a config as a dict) train residual diffusion (runs recorded before
    the option existed learned the image)."""
    target = params.get("diffusion_target", "image") or "image"
    if target not in TARGETS:
        raise ValueError(f"diffusion_target must be one of {TARGETS}, got {target!r}")
    return target == "residual"


def scale_from_rms(rms: float) -> float:
    """``1 / max(rms, RMS_FLOOR)``."""
    return 1.0 / max(float(rms), RMS_FLOOR)


@torch.no_grad()
def latent_change_rms(backbone, dataset, n_pairs: int, seed: int, resolution_px: int, device,
                      batch_size: int = 8) -> tuple[float, int]:
    """(RMS of ``z_future - z_past`` over the valid latent pixels, number of pairs) on ``n_pairs`` pairs of
    ``dataset`` drawn with ``seed`` (all of them when it has fewer), at the training resolution. Posterior means,
    no augmentation drawn from the global RNG (the dataset should not augment), no RNG stream touched."""
    from stsynth_lib.controlnet.conditioning import resize_batch
    from stsynth_lib.controlnet.backbone import image_latents
    from stsynth_lib.controlnet.losses import latent_valid_weight
    from stsynth_lib.training import collate

    n = len(dataset)
    if n == 0:
        raise ValueError("no training pair to fit the residual scale on")
    idx = np.sort(np.random.default_rng(seed).permutation(n)[: min(int(n_pairs), n)])
    sq, count = 0.0, 0.0
    for start in range(0, len(idx), batch_size):
        batch = resize_batch(collate([dataset[int(i)] for i in idx[start:start + batch_size]]), resolution_px)
        change = (image_latents(backbone, batch["future"].to(device))
                  - image_latents(backbone, batch["past"].to(device))).double()
        w = latent_valid_weight(batch["valid"].to(device), backbone.vae_scale_factor).double().expand_as(change)
        sq += float((change ** 2 * w).sum())
        count += float(w.sum())
    if count == 0:
        raise ValueError("the pairs drawn to fit the residual scale have no valid latent pixel")
    return (sq / count) ** 0.5, len(idx)


def residual_record(rms: float, n_pairs: int) -> dict[str, Any]:
    """What ``residual.yaml`` holds."""
    return {"diffusion_target": "residual", "residual_scale": scale_from_rms(rms), "latent_change_rms": float(rms),
            "rms_floor": RMS_FLOOR, "n_pairs": int(n_pairs), "start_offset_months": 0,
            "start": "past image (offset 0), VAE posterior mean"}


def read_residual_scale(run_dir: str | os.PathLike) -> float:
    """The residual scale recorded in ``<run_dir>/residual.yaml``."""
    path = Path(run_dir) / RESIDUAL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: a diffusion_target: residual run records its residual scale "
                                "there when training starts; train (or resume) the run to write it")
    rec = yaml.safe_load(path.read_text()) or {}
    scale = float(rec["residual_scale"])
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError(f"{path}: residual_scale {scale} is not a positive number")
    return scale


def run_residual_scale(run_dir: str | os.PathLike, params: Mapping[str, Any]) -> float | None:
    """The residual scale of a trained run (None for a run that learned the image)."""
    return read_residual_scale(run_dir) if is_residual(params) else None
