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

Stage 1 (:mod:`stsynth_lib.controlnet.adapt`) can train the backbone's UNet on the same target (``unet_target:
residual``): it fits the scale with :func:`latent_change_rms` on its own training pairs, records it in its run folder
and in the backbone folder (``<backbone>/residual.yaml``, and ``unet_target`` in ``stsynth_backbone.json``). A
ControlNet trained beside such a backbone (``diffusion_target: residual``) takes the backbone's scale instead of
refitting one (:func:`backbone_residual_record`), and a ControlNet whose target differs from what its stage-1
backbone learned is refused (:func:`check_backbone_target`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import yaml

RESIDUAL_FILE = "residual.yaml"  # run folder: the residual scale of a diffusion_target: residual run
RMS_FLOOR = 1e-2  # the smallest RMS of the latent change the scale divides by (scale <= 100)
TARGETS = ("image", "residual")
STAGE1_KINDS = ("tiny-trained", "pretrained-adapted")  # backbones a stage 1 of this project trained


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


# --------------------------------------------------------------------------- stage-1 backbones


def check_target(name: str, target: Any) -> str:
    """``target`` if it is one of :data:`TARGETS`, else a ValueError naming the option ``name``."""
    if target not in TARGETS:
        raise ValueError(f"{name} must be one of {TARGETS}, got {target!r}")
    return str(target)


def stage1_record(rms: float, n_pairs: int) -> dict[str, Any]:
    """What a stage-1 run with ``unet_target: residual`` records in ``residual.yaml`` (its run and backbone folders):
    :func:`residual_record` with ``unet_target`` in place of ``diffusion_target``."""
    rec = residual_record(rms, n_pairs)
    del rec["diffusion_target"]
    return {"unet_target": "residual", **rec}


def backbone_unet_target(pretrained_model: str | os.PathLike | None) -> str | None:
    """What the UNet of a stage-1 backbone folder learned (its ``stsynth_backbone.json``): ``image`` or
    ``residual`` (a stage-1 backbone that records nothing was trained before the option existed: ``image``). None for
    a backbone no stage 1 trained (``tiny-random``, a Stable Diffusion hub id or folder): there was no choice."""
    from stsynth_lib.controlnet.backbone import _MARKER

    if pretrained_model is None:
        return None
    marker = Path(str(pretrained_model)) / _MARKER
    if not marker.is_file():
        return None
    rec = json.loads(marker.read_text())
    if rec.get("backbone") not in STAGE1_KINDS:
        return None
    return check_target(f"{marker}: unet_target", rec.get("unet_target", "image") or "image")


def target_mismatch(diffusion_target: str, unet_target: str, backbone: str) -> str:
    """The error of a ControlNet whose ``diffusion_target`` differs from its stage-1 backbone's ``unet_target``."""
    return (f"the ControlNet's diffusion_target is {diffusion_target!r} but its backbone ({backbone}) was trained in "
            f"stage 1 with unet_target: {unet_target!r}: the frozen UNet would denoise "
            f"{'latent changes' if unet_target == 'residual' else 'images'} while the ControlNet learns "
            f"{'latent changes' if diffusion_target == 'residual' else 'images'}. Set diffusion_target: "
            f"{unet_target!r}, or train stage 1 with unet_target: {diffusion_target!r} (stage1 = "
            f"{{\"unet_target\": \"{diffusion_target}\"}} in chapter 5).")


def check_backbone_target(diffusion_target: str, pretrained_model: str | os.PathLike | None) -> str | None:
    """The backbone's ``unet_target`` (None when no stage 1 trained it); a ValueError naming both options when it
    is not the ControlNet's ``diffusion_target``."""
    diffusion_target = check_target("diffusion_target", diffusion_target or "image")
    unet_target = backbone_unet_target(pretrained_model)
    if unet_target is not None and unet_target != diffusion_target:
        raise ValueError(target_mismatch(diffusion_target, unet_target, str(pretrained_model)))
    return unet_target


def backbone_residual_record(pretrained_model: str | os.PathLike) -> dict[str, Any]:
    """The residual record (``residual.yaml``) of a stage-1 backbone trained with ``unet_target: residual``, as a
    ControlNet run records it: ``diffusion_target: residual``, the backbone's scale, and where it came from."""
    path = Path(str(pretrained_model)) / RESIDUAL_FILE
    scale = read_residual_scale(path.parent)  # checks that it is there and positive
    rec = yaml.safe_load(path.read_text()) or {}
    rec.pop("unet_target", None)
    return {"diffusion_target": "residual", **rec, "residual_scale": scale,
            "scale_from": f"{path} (the stage-1 backbone, trained with unet_target: residual)"}
