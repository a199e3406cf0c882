"""How high can a latent diffusion model score at most? Its autoencoder's reconstruction of the true future images,
next to persistence on the same pairs (issue 33).

Every image the diffusion model draws is decoded by the backbone's VAE, so the VAE's reconstruction of the *future*
image of a pair (encode, posterior mean, decode) bounds what any latent the model produces can score on that pair.
When that ceiling sits at or below persistence's score (the past image as the prediction), the diffusion model cannot
beat persistence by construction, whatever it learns. :func:`ceiling_vs_persistence` scores both on the same pairs
and valid pixels (PSNR in dB on [0, 1] images, SSIM), with the paired difference.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import torch

from stsynth_lib.controlnet.adapt_parts import reconstruct


@torch.no_grad()
def ceiling_vs_persistence(vae, dataset_dir: str | os.PathLike, split: str = "test", max_pairs: int | None = None,
                           batch_size: int = 32, device: str | torch.device = "cpu", label: str = "VAE ceiling",
                           seed: int = 0) -> pd.DataFrame:
    """Per-pair scores of ``label`` (the VAE's reconstruction of the future image) and of persistence on the pairs of
    ``split`` (``max_pairs``: a seeded subset), valid pixels only. Returns a two-row table (``label`` and
    ``persistence``) with ``pairs``, mean ``psnr_db`` and ``ssim``, and ``psnr_minus_persistence_db`` /
    ``ssim_minus_persistence`` (the mean paired difference; 0 for the persistence row)."""
    from stsynth_lib.data.dataset import PairedTileDataset
    from stsynth_lib.metrics import finite_psnr, masked_psnr, masked_ssim

    ds = PairedTileDataset(dataset_dir, split, max_pairs=max_pairs, subsample_seed=seed if max_pairs else None)
    if len(ds) == 0:
        raise ValueError(f"split {split!r} of {dataset_dir} has no pairs: nothing to score")
    vae = vae.to(device).eval()
    scores: dict[str, dict[str, list]] = {label: {"psnr": [], "ssim": []}, "persistence": {"psnr": [], "ssim": []}}
    for a in range(0, len(ds), batch_size):
        items = [ds[i] for i in range(a, min(a + batch_size, len(ds)))]
        future = torch.stack([s["future"] for s in items])
        valid = torch.stack([s["valid"] for s in items])
        past = torch.stack([s["past"] for s in items])
        rec = reconstruct(vae, future.to(device)).cpu()
        truth01 = (future + 1) / 2
        for name, pred in ((label, rec), ("persistence", past)):
            p01 = (pred + 1) / 2
            scores[name]["psnr"].append(finite_psnr(masked_psnr(p01, truth01, valid)))
            scores[name]["ssim"].append(masked_ssim(p01, truth01, valid))
    per = {n: {k: np.concatenate(v) for k, v in s.items()} for n, s in scores.items()}
    rows = []
    for name in (label, "persistence"):
        psnr, ssim = per[name]["psnr"], per[name]["ssim"]
        rows.append({"": name, "pairs": len(ds), "psnr_db": float(np.nanmean(psnr)), "ssim": float(np.nanmean(ssim)),
                     "psnr_minus_persistence_db": float(np.nanmean(psnr - per["persistence"]["psnr"])),
                     "ssim_minus_persistence": float(np.nanmean(ssim - per["persistence"]["ssim"]))})
    return pd.DataFrame(rows).set_index("")
