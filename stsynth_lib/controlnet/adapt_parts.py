"""The pieces of stage 1 (:mod:`stsynth_lib.controlnet.adapt`): the single-image dataset, the tiny trainable
architecture, the EMA, min-SNR loss weights, and the VAE's reconstruction scores.

* :class:`TileImageDataset`: every tile-month of a split (not pairs: stage 1 learns what one image of the area
  looks like at a date), as ``image`` in [-1, 1], ``valid``, ``month``, ``year`` and the prompt built from
  ``prompt_template`` (fields ``month_name``, ``year``; the AOI is left out, as in the ControlNet's prompts).
* :func:`tiny_trainable_configs`: a VAE with downsampling factor 4 (SD's is 8: at 128 px tiles a factor-8 latent is
  16 x 16 and its reconstruction bounds every later number too low), a 3-level UNet and a 2-layer CLIP text encoder.
* :class:`EMA`: exponential moving average of the UNet weights with a warm-up (``decay = min(decay, (1+n)/(10+n))``,
  as diffusers' ``EMAModel``).
* :func:`min_snr_weights`: Hang et al. 2023, as diffusers' ``train_text_to_image.py --snr_gamma``.
* :func:`vae_reconstruction_scores`: PSNR / SSIM of VAE(encode -> decode) on a split, over valid pixels: the
  ceiling of any image the backbone draws.
"""

from __future__ import annotations

import calendar
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

STAGE1_PROMPT_TEMPLATE = "satellite image, {month_name} {year}"


def tile_prompt(template: str, month: int, year: int) -> str:
    """``template`` filled with a tile's date (fields ``month_name``, ``year``, ``month``)."""
    return template.format(month_name=calendar.month_name[int(month)], year=int(year), month=int(month))


class TileImageDataset(torch.utils.data.Dataset):
    """Every tile-month image of one split of a built dataset (``split='all'`` for all of them).

    ``crop_px`` returns a random square crop (training of the fully convolutional VAE); ``augment`` adds random
    flips and 90-degree rotations. Randomness comes from the ``numpy`` global RNG, which the trainer seeds per step.
    """

    def __init__(self, dataset_dir: str | os.PathLike, split: str = "train", prompt_template: str = STAGE1_PROMPT_TEMPLATE,
                 augment: bool = False, crop_px: int | None = None, max_tiles: int | None = None, seed: int = 0):
        from stsynth_lib.data.dataset import TileStore

        self.store = TileStore(dataset_dir)
        tiles = self.store.tiles if split == "all" else self.store.tiles[self.store.tiles["split"] == split]
        if max_tiles is not None and len(tiles) > max_tiles:
            tiles = tiles.sample(n=int(max_tiles), random_state=seed).sort_values("tile_id")
        self.tiles = tiles.reset_index(drop=True)
        self.split, self.prompt_template, self.augment = split, prompt_template, augment
        t = self.store.tile_size_px
        if crop_px is not None and not 8 <= int(crop_px) <= t:
            raise ValueError(f"crop_px={crop_px} must be between 8 and the tile size {t}")
        self.crop_px = int(crop_px) if crop_px else None

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        from stsynth_lib.data.dataset import random_rot_flip, to_unit

        row = self.tiles.iloc[idx]
        tid = int(row["tile_id"])
        img = to_unit(np.asarray(self.store.images[tid]))
        valid = np.asarray(self.store.valid[tid], dtype=np.float32)[None]
        if self.crop_px:
            t, c = img.shape[-1], self.crop_px
            y, x = np.random.randint(0, t - c + 1, size=2)
            img, valid = img[:, y:y + c, x:x + c], valid[:, y:y + c, x:x + c]
        if self.augment:
            img, valid = random_rot_flip([img, valid])
        return {"image": torch.from_numpy(np.ascontiguousarray(img)), "valid": torch.from_numpy(np.ascontiguousarray(valid)),
                "month": int(row["month"]), "year": int(row["year"]), "aoi": str(row["aoi"]), "tile_id": tid,
                "prompt": tile_prompt(self.prompt_template, int(row["month"]), int(row["year"]))}


def collate_tiles(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    out = {k: torch.stack([s[k] for s in samples]) for k in ("image", "valid")}
    out.update({k: [s[k] for s in samples] for k in ("month", "year", "aoi", "tile_id", "prompt")})
    return out


def tiny_trainable_configs(vae_channels: Sequence[int] = (16, 32, 64), unet_channels: Sequence[int] = (32, 64, 64),
                           text_hidden_size: int = 64, latent_channels: int = 4) -> dict[str, dict[str, Any]]:
    """Configs of the tiny backbone trained from scratch (VAE factor ``2 ** (len(vae_channels) - 1)``)."""
    vae_channels, unet_channels = tuple(int(c) for c in vae_channels), tuple(int(c) for c in unet_channels)
    n = len(unet_channels)
    if n < 2:
        raise ValueError(f"unet_channels needs at least 2 levels, got {unet_channels}")
    groups = min(8, min(vae_channels))
    return {
        "text_encoder": dict(
            vocab_size=49408, hidden_size=text_hidden_size, intermediate_size=2 * text_hidden_size, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=77, projection_dim=text_hidden_size,
            bos_token_id=49406, eos_token_id=49407, pad_token_id=49407),
        "vae": dict(
            in_channels=3, out_channels=3, latent_channels=latent_channels, layers_per_block=1, norm_num_groups=groups,
            block_out_channels=vae_channels, down_block_types=("DownEncoderBlock2D",) * len(vae_channels),
            up_block_types=("UpDecoderBlock2D",) * len(vae_channels), mid_block_add_attention=False),
        "unet": dict(
            in_channels=latent_channels, out_channels=latent_channels, layers_per_block=1,
            block_out_channels=unet_channels, down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
            up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",), cross_attention_dim=text_hidden_size,
            attention_head_dim=8, norm_num_groups=min(16, min(unet_channels))),
    }


class EMA:
    """Exponential moving average of a module's parameters (diffusers' ``EMAModel`` warm-up rule)."""

    def __init__(self, module: torch.nn.Module, decay: float = 0.999):
        self.decay, self.num_updates = float(decay), 0
        self.shadow = [p.detach().clone().float() for p in module.parameters()]

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        self.num_updates += 1
        d = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        for s, p in zip(self.shadow, module.parameters()):
            s.mul_(d).add_(p.detach().float(), alpha=1 - d)

    @torch.no_grad()
    def copy_to(self, module: torch.nn.Module) -> None:
        for s, p in zip(self.shadow, module.parameters()):
            p.copy_(s.to(p.dtype))

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay, self.num_updates = float(state["decay"]), int(state["num_updates"])
        self.shadow = [s.clone() for s in state["shadow"]]


def min_snr_weights(noise_scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-sample loss weights ``min(SNR, gamma) / SNR`` (epsilon prediction) or ``/ (SNR + 1)`` (v-prediction)."""
    ac = noise_scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    snr = ac / (1 - ac)
    w = torch.clamp(snr, max=float(gamma))
    return w / (snr + 1) if noise_scheduler.config.prediction_type == "v_prediction" else w / snr


@torch.no_grad()
def reconstruct(vae, images: torch.Tensor) -> torch.Tensor:
    """VAE encode (posterior mean) -> decode, clamped to [-1, 1]."""
    z = vae.encode(images.to(vae.dtype)).latent_dist.mean
    return vae.decode(z).sample.float().clamp(-1, 1)


@torch.no_grad()
def vae_reconstruction_scores(vae, dataset_dir: str | os.PathLike, split: str = "val", batch_size: int = 16,
                              max_tiles: int | None = None, device: str | torch.device = "cpu") -> dict[str, float]:
    """Mean PSNR (dB) and SSIM of VAE reconstructions of a split's tile images, on valid pixels, with n."""
    from stsynth_lib.metrics import finite_psnr, masked_psnr, masked_ssim

    ds = TileImageDataset(dataset_dir, split, max_tiles=max_tiles)
    psnr, ssim = [], []
    vae = vae.to(device).eval()
    for a in range(0, len(ds), batch_size):
        b = collate_tiles([ds[i] for i in range(a, min(a + batch_size, len(ds)))])
        rec = reconstruct(vae, b["image"].to(device)).cpu()
        t = b["image"]
        p01, t01 = (rec + 1) / 2, (t + 1) / 2
        psnr.append(finite_psnr(masked_psnr(p01, t01, b["valid"])))
        ssim.append(masked_ssim(p01, t01, b["valid"]))
    if not psnr:
        raise ValueError(f"split {split!r} of {dataset_dir} has no tiles: nothing to reconstruct")
    p, s = np.concatenate(psnr), np.concatenate(ssim)
    return {"split": split, "n_tiles": int(len(p)), "psnr_db": float(np.nanmean(p)), "ssim": float(np.nanmean(s))}


def latent_scaling_factor(vae, dataset_dir: str | os.PathLike, split: str = "train", n_tiles: int = 64,
                          seed: int = 0, device: str | torch.device = "cpu") -> float:
    """``1 / std`` of the VAE's latents on ``n_tiles`` tiles of the split (how SD's 0.18215 was chosen)."""
    ds = TileImageDataset(dataset_dir, split, max_tiles=n_tiles, seed=seed)
    x = torch.stack([ds[i]["image"] for i in range(len(ds))]).to(device)
    with torch.no_grad():
        std = float(vae.encode(x.to(vae.dtype)).latent_dist.mean.float().std())
    return 1.0 / max(std, 1e-6)


def plot_reconstructions(vae, dataset_dir: str | os.PathLike, split: str = "val", n: int = 4, title: str = ""):
    """Rows of image | VAE reconstruction | |difference| for ``n`` tiles spread over the split (a Figure)."""
    import matplotlib.pyplot as plt

    from stsynth_lib.data.dataset import to_uint8
    from stsynth_lib.figure_check import BOOK_WIDTH_IN, checked
    from stsynth_lib.training import spread_indices

    ds = TileImageDataset(dataset_dir, split)
    idx = spread_indices(len(ds), n)
    x = torch.stack([ds[i]["image"] for i in idx])
    rec = reconstruct(vae.eval(), x).cpu()
    fig, axes = plt.subplots(len(idx), 3, figsize=(BOOK_WIDTH_IN, 2.6 * len(idx) + 0.6), squeeze=False)
    for r, i in enumerate(idx):
        diff = (rec[r] - x[r]).abs().mean(0).numpy() / 2
        for ax, (img, t) in zip(axes[r], [(to_uint8(x[r]).transpose(1, 2, 0), f"{ds[i]['aoi'][:16]}\n{ds[i]['year']}-{ds[i]['month']:02d}"),
                                          (to_uint8(rec[r]).transpose(1, 2, 0), "VAE\nreconstruction"), (diff, "|difference|\n")]):
            ax.imshow(img, cmap="magma" if img.ndim == 2 else None, vmin=0, vmax=0.25 if img.ndim == 2 else None)
            ax.set_title(t, fontsize=9)
            ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return checked(fig)


def backbone_description(kind: str, dataset_dir: str | os.PathLike, profile: str, pretrained: str | None = None) -> str:
    """How tables name a stage-1 backbone: never "Stable Diffusion" for the tiny one."""
    if pretrained:
        return f"{pretrained}, UNet fine-tuned on the {profile} train split"
    return f"tiny, trained from scratch on the {profile} train split ({Path(dataset_dir).as_posix()})"
