"""Figures and tables of stage 1 (:mod:`stsynth_lib.controlnet.adapt`): its training curves, what the adapted backbone
draws from a prompt alone, and the VAE's scores as the chapter shows them (short column names, long rather than wide,
so they fit the book's column). The figures are pyplot figures: ``plt.show()`` displays them in a notebook.

Two tile counts of the VAE differ and are labelled apart: stage 1's ``summary.yaml`` (``vae_val``) scores the seeded
``max_val_tiles`` subset of the validation tiles the VAE was validated on during training; the chapter's table
(:func:`vae_scores_table`) scores every tile of each split."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch

from stsynth_lib.figure_check import BOOK_WIDTH_IN, checked

# stage 1's summary.yaml rows, as the chapter names them ("vae_val / split" is always val: left out)
STAGE1_SUMMARY_LABELS = {
    "vae_val / n_tiles": "VAE: val tiles used for validation during training (max_val_tiles)",
    "vae_val / psnr_db": "VAE: PSNR (dB) on those tiles",
    "vae_val / ssim": "VAE: SSIM on those tiles",
}


def stage1_summary_table(stage1_dir: str | os.PathLike) -> pd.DataFrame:
    """Stage 1's ``summary.yaml`` as a settings table, its VAE check named for what it counts
    (:data:`STAGE1_SUMMARY_LABELS`): the ``max_val_tiles`` tiles validated during training, not the whole split."""
    from stsynth_lib.book.report_format import settings_table

    return settings_table(Path(stage1_dir) / "summary.yaml", exclude=["vae_val / split"], labels=STAGE1_SUMMARY_LABELS)


def vae_scores_table(scores: Sequence[dict]) -> pd.DataFrame:
    """:func:`~stsynth_lib.controlnet.adapt_parts.vae_reconstruction_scores` of several splits (one dict each), one
    row per split: the tiles scored (every tile of the split when scored without ``max_tiles``, as the chapter
    does), PSNR (dB, 2 decimals) and SSIM (3 decimals)."""
    rows = {s["split"]: {"tiles scored (whole split)": int(s["n_tiles"]), "PSNR (dB)": round(float(s["psnr_db"]), 2),
                         "SSIM": round(float(s["ssim"]), 3)} for s in scores}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.columns.name = "split"  # in the header's corner, over the split names: one header row
    return table


def ceiling_table(scores: pd.DataFrame) -> pd.DataFrame:
    """:func:`~stsynth_lib.controlnet.ceiling.ceiling_vs_persistence`'s two rows, long: one row per metric (PSNR in
    dB, SSIM), a column for the VAE ceiling (named by its label), persistence and the mean paired difference
    ("Δ vs persistence", signed), as text; the number of pairs in the header's corner."""
    label = next(i for i in scores.index if i != "persistence")
    ceil, pers = scores.loc[label], scores.loc["persistence"]
    rows = {}
    for name, col, diff, digits in (("PSNR (dB)", "psnr_db", "psnr_minus_persistence_db", 2),
                                    ("SSIM", "ssim", "ssim_minus_persistence", 3)):
        rows[name] = [f"{float(ceil[col]):.{digits}f}", f"{float(pers[col]):.{digits}f}",
                      f"{float(ceil[diff]):+.{digits}f}"]
    table = pd.DataFrame.from_dict(rows, orient="index", columns=[str(label), "persistence", "Δ vs persistence"])
    table.columns.name = f"{int(ceil['pairs'])} pairs"
    return table


def plot_stage1_training(run_dir: str | os.PathLike):
    """Top: the VAE's loss and validation reconstruction PSNR; bottom: the UNet's loss and EMA validation loss. Each
    panel's legend (headed by the phase's name) sits above it, off the curves."""
    import matplotlib.pyplot as plt

    from stsynth_lib.controlnet.plots import legend_above

    run_dir = Path(run_dir)
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(BOOK_WIDTH_IN, 7.2))
    vae_log = run_dir / "vae" / "log.csv"
    if vae_log.is_file():
        v = pd.read_csv(vae_log)
        a1.plot(v["step"], v["loss"], label="train loss (L1 + KL)")
        a1.set_xlabel("VAE step")
        a1.set_ylabel("loss")
        va = v.dropna(subset=["val_psnr_db"])
        ax = a1.twinx()
        ax.plot(va["step"], va["val_psnr_db"], "o-", color="C3", label="val reconstruction PSNR (dB, right axis)")
        ax.set_ylabel("PSNR (dB)")
        (h1, l1), (h2, l2) = a1.get_legend_handles_labels(), ax.get_legend_handles_labels()
        legend_above(a1, h1 + h2, l1 + l2, ncol=2, title="phase vae")
    else:
        a1.text(0.5, 0.5, "no VAE phase (pretrained VAE kept)", ha="center", va="center")
        a1.axis("off")
    u = pd.read_csv(run_dir / "unet" / "log.csv")
    a2.plot(u["step"], u["loss"], label="train loss (min-SNR weighted MSE)")
    ua = u.dropna(subset=["val_loss_ema"])
    a2.plot(ua["step"], ua["val_loss_ema"], "o-", label="val denoising MSE, EMA weights")
    a2.set_xlabel("UNet step")
    a2.set_ylabel("loss")
    legend_above(a2, ncol=2, title="phase unet")
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
