"""Figures of stage 1 (:mod:`stsynth_lib.controlnet.adapt`): its training curves and what the adapted backbone
draws from a prompt alone. They are pyplot figures: ``plt.show()`` displays them in a notebook."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch

from stsynth_lib.figure_check import BOOK_WIDTH_IN, checked


def plot_stage1_training(run_dir: str | os.PathLike):
    """Top: the VAE's loss and validation reconstruction PSNR; bottom: the UNet's loss and EMA validation loss."""
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(BOOK_WIDTH_IN, 6.6))
    vae_log = run_dir / "vae" / "log.csv"
    if vae_log.is_file():
        v = pd.read_csv(vae_log)
        a1.plot(v["step"], v["loss"], label="train loss (L1 + KL)")
        a1.set_xlabel("VAE step")
        a1.set_ylabel("loss")
        va = v.dropna(subset=["val_psnr_db"])
        ax = a1.twinx()
        ax.plot(va["step"], va["val_psnr_db"], "o-", color="C3", label="val reconstruction PSNR (dB)")
        ax.set_ylabel("PSNR (dB)")
        a1.legend(loc="upper center", fontsize=9)
        ax.legend(loc="center right", fontsize=9)
        a1.set_title("phase vae", fontsize=10)
    else:
        a1.text(0.5, 0.5, "no VAE phase (pretrained VAE kept)", ha="center", va="center")
        a1.axis("off")
    u = pd.read_csv(run_dir / "unet" / "log.csv")
    a2.plot(u["step"], u["loss"], label="train loss (min-SNR weighted MSE)")
    ua = u.dropna(subset=["val_loss_ema"])
    a2.plot(ua["step"], ua["val_loss_ema"], "o-", label="val denoising MSE, EMA weights")
    a2.set_xlabel("UNet step")
    a2.set_ylabel("loss")
    a2.legend(fontsize=9)
    a2.set_title("phase unet", fontsize=10)
    fig.suptitle("Stage 1: adapting the backbone", fontsize=10)
    fig.tight_layout()
    return checked(fig)


def plot_prompt_samples(backbone, prompts: Sequence[str], seeds: Sequence[int] = (0, 1, 2), size_px: int = 128,
                        num_inference_steps: int = 20, scheduler: str = "unipc", guidance_scale: float = 1.0,
                        title: str = ""):
    """A grid of images drawn by the backbone alone: one column per prompt, one row per seed (same noise per row)."""
    import matplotlib.pyplot as plt

    from stsynth_lib.controlnet.generate import make_scheduler, sample_images
    from stsynth_lib.data.dataset import to_uint8

    dev = next(backbone.unet.parameters()).device
    sched = make_scheduler(scheduler, backbone.noise_scheduler.config)
    side = min(2.2, BOOK_WIDTH_IN / len(prompts))
    fig, axes = plt.subplots(len(seeds), len(prompts), figsize=(side * len(prompts), (side + 0.1) * len(seeds) + 1.2),
                             squeeze=False)
    for r, s in enumerate(seeds):
        shape = torch.zeros(len(prompts), 1, size_px, size_px, device=dev)  # only sizes the batch (no control)
        imgs = sample_images(backbone, None, shape, list(prompts), sched, num_inference_steps, guidance_scale,
                             seeds=[int(s)] * len(prompts))
        for c, p in enumerate(prompts):
            ax = axes[r][c]
            ax.imshow(to_uint8(imgs[c]).transpose(1, 2, 0))
            ax.axis("off")
            if r == 0:
                ax.set_title(textwrap.fill(p.replace("satellite image, ", ""), 16), fontsize=9)
    fig.suptitle(title or "Backbone alone, from the prompt (one row per seed)", fontsize=10)
    fig.tight_layout()
    return checked(fig)
