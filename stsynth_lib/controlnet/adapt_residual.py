"""Stage 1 with ``unet_target: residual`` (issue 33): the backbone UNet learns the scaled latent change of training
pairs, ``(z_future - z_past) * residual_scale``, the target the residual ControlNet learns beside it, instead of tile
images. The pairs, their latents and the scale (fitted once with the ControlNet's
:func:`~stsynth_lib.controlnet.residual.latent_change_rms`, kept on resume); :mod:`stsynth_lib.controlnet.adapt`
trains with them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from stsynth_lib.controlnet import residual as R
from stsynth_lib.controlnet.backbone import Backbone, image_latents
from stsynth_lib.runs import save_yaml

if TYPE_CHECKING:
    from stsynth_lib.controlnet.adapt import BackboneAdaptConfig


@torch.no_grad()
def _pair_latents(bb: Backbone, cfg: BackboneAdaptConfig, batch: dict[str, Any], residual_scale: float | None,
                  device, g: torch.Generator | None):
    """(``(z_future - z_past) * residual_scale``, pixel validity of both dates, prompts) of a batch of pairs:
    ``z_future`` a posterior sample drawn from ``g`` (its mean when ``g`` is None), ``z_past`` the posterior mean,
    as :func:`~stsynth_lib.controlnet.losses.diffusion_loss`. The prompts are the ControlNet's, with stage 1's
    template."""
    from stsynth_lib.controlnet.conditioning import batch_prompts, resize_batch

    if residual_scale is None:
        raise ValueError("unet_target: residual needs the residual scale (stage1_residual_scale)")
    batch = resize_batch(batch, int(cfg.resolution_px) if cfg.resolution_px else None)
    future, past, valid = batch["future"].to(device), batch["past"].to(device), batch["valid"].to(device)
    post = bb.vae.encode(future.to(bb.vae.dtype)).latent_dist
    z = post.mean if g is None else post.mean + post.std * torch.randn(post.mean.shape, generator=g).to(device)
    lat = (z.float() * bb.vae.config.scaling_factor - image_latents(bb, past)) * float(residual_scale)
    return lat, valid, batch_prompts(batch, cfg.prompt_template)


def stage1_pairs(cfg: BackboneAdaptConfig, split: str, augment: bool = False, max_pairs: int | None = -1):
    """The pairs of ``split`` that ``unet_target: residual`` trains (``train``, capped by ``max_train_tiles``) or
    validates on (``val``, capped by ``max_val_tiles``), drawn with the seed as the ControlNet draws them
    (``max_pairs``: another cap, None for none; -1: the split's option)."""
    from stsynth_lib.data.dataset import PairedTileDataset

    if max_pairs == -1:
        max_pairs = cfg.max_train_tiles if split == "train" else cfg.max_val_tiles
    return PairedTileDataset(cfg.dataset_dir, split, max_pairs=max_pairs, augment=augment,
                             subsample_seed=cfg.seed if max_pairs or split != "train" else None)


def stage1_residual_scale(cfg: BackboneAdaptConfig, run_dir: Path, bb: Backbone, device) -> float | None:
    """``unet_target: residual``: the residual scale, fitted at the start of phase ``unet`` of a fresh run on
    ``residual_scale_pairs`` un-augmented training pairs (:func:`~stsynth_lib.controlnet.residual.latent_change_rms`,
    the ControlNet's fit) and written to ``<run_dir>/residual.yaml``; read back on resume (never refitted). None for
    ``image``."""
    if not cfg.residual:
        return None
    path = Path(run_dir) / R.RESIDUAL_FILE
    if not (cfg.resume_from_checkpoint and path.is_file()):
        ds = stage1_pairs(cfg, "train")
        res = int(cfg.resolution_px or ds.tile_size_px)
        devices = [torch.cuda.current_device()] if torch.device(device).type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # the training RNG streams stay as they were
            rms, n = R.latent_change_rms(bb, ds, cfg.residual_scale_pairs, cfg.seed, res, device)
        save_yaml(R.stage1_record(rms, n), path)
    return R.read_residual_scale(run_dir)
