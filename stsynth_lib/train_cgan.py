"""One trainer for both cGAN generators (pix2pix U-Net and attention U-Net) with a PatchGAN.

Objective (Isola et al. 2017), computed on valid pixels only::

    L_D = 0.5 * [ GAN(D(c, y), real) + GAN(D(c, G(c)), fake) ]
    L_G = GAN(D(c, G(c)), real) + lambda_L1 * |y - G(c)|_1

``c`` is the condition built by :func:`stsynth_lib.conditioning.build_condition`
(past image, future mask, time planes), ``y`` the future image. ``GAN`` is
binary cross-entropy on logits (``gan_mode="vanilla"``) or least squares
(``"lsgan"``). Invalid pixels (cloud/UDM, nodata: ``valid == 0``) are zeroed in
every discriminator input, each patch logit is weighted by the valid fraction
under it, and the L1 term averages over valid pixels only, so a change in an
invalid pixel of the target changes no loss and no gradient.

Optimisation as pix2pix: Adam (lr 2e-4, betas 0.5/0.999), the learning rate
constant for ``epochs_constant`` epochs then decaying linearly to 0 over
``epochs_decay`` epochs. Accelerate places models and batches (``accelerate
launch -m stsynth_lib.train_cgan ...`` runs data-parallel on several GPUs),
bf16 autocast on CUDA, channels-last on CUDA.

Run folder ``<runs_dir>/<profile>/<run_name or model>/`` (see :mod:`stsynth_lib.runs`)::

    params.yaml   model.yaml   log.csv (train losses, images/s)   val.csv (per-epoch validation)
    checkpoints/checkpoint-<step>/state.pt     everything needed to resume
    best/generator.pt + best.yaml              the best generator by ``best_metric``
    best/residual_scale.csv                    val L1 per residual scale (``calibrate_residual_scale``)
    samples/step-<step>.png                    past | mask | generated | truth grids

Resuming (``resume_from_checkpoint="latest"``) restores models, optimisers,
schedulers, RNG states and the position inside the epoch: on CPU a resumed run
ends with bit-identical weights to an uninterrupted one (on CUDA up to
non-deterministic kernels).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from stsynth_lib.conditioning import GuidanceConfig, build_condition, dataset_has_mask
from stsynth_lib.data.dataset import PairedTileDataset, to_uint8
from stsynth_lib.models.registry import build_discriminator, build_generator, init_weights
from stsynth_lib.runs import (
    merge_params,
    parse_cli_value,
    CSVLogger,
    atomic_checkpoint_dir,
    atomic_torch_save,
    atomic_write_text,
    latest_checkpoint,
    prepare_run_dir,
    resolve_resume,
    save_yaml,
    seed_everything,
)

GAN_MODES = ("vanilla", "lsgan")
BEST_METRICS = {"val_l1": "min", "val_psnr": "max", "val_ssim": "max"}
SPATIAL_KEYS = ("past", "future", "past_mask", "future_mask", "past_valid", "future_valid", "valid")


@dataclass
class CGANTrainConfig:
    """Every option of a cGAN run (recorded in the run's ``params.yaml``)."""

    dataset_dir: str = "data/smoke/dataset"
    model: str = "pix2pix"  # pix2pix | attention_unet
    runs_dir: str = "runs"
    profile: str = "smoke"
    run_name: str | None = None  # folder under runs/<profile>/; default: the model name
    # guidance (see stsynth_lib.conditioning)
    use_mask: Any = "auto"  # auto | true | false
    time_encoding: str = "planes"  # planes | none
    gap_scale_months: float = 24.0
    use_month: bool = True
    # architecture
    ngf: int = 64
    ndf: int = 64
    norm: str = "instance"  # instance | batch | none
    dropout: float = 0.5
    d_layers: int = 3  # 3 = 70x70 PatchGAN
    residual: bool = False  # generator outputs clamp(past + tanh(.)) (not pix2pix; starts at persistence)
    # loss
    gan_mode: str = "vanilla"  # vanilla (BCE) | lsgan
    lambda_l1: float = 100.0
    # optimisation
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    batch_size: int = 8
    epochs_constant: int = 1
    epochs_decay: int = 1
    max_steps: int | None = None  # stop early after this many optimiser steps (a checkpoint is written)
    max_train_pairs: int | None = None
    max_val_pairs: int | None = None
    augment: bool = True  # random flips / 90-degree rotations of training pairs
    radiometric_jitter: float = 0.0  # >0: the same random per-band gain 1+-j and offset +-j on past AND future
    num_workers: int = 0
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    mixed_precision: str = "auto"  # auto (bf16 on CUDA) | no | bf16 | fp16
    channels_last: Any = "auto"  # auto (on CUDA) | true | false
    # bookkeeping
    log_every_steps: int = 10
    sample_every_steps: int = 200
    n_sample_rows: int = 4
    checkpoint_every_steps: int = 0  # 0: at the end of each epoch only
    checkpoints_total_limit: int = 2
    val_every_epochs: int = 1
    val_every_steps: int = 0  # >0: also validate (and update best/) every this many optimiser steps
    best_metric: str = "val_l1"  # val_l1 | val_psnr | val_ssim
    calibrate_residual_scale: bool = False  # residual models: after training, scale the change on the FULL val split
    resume_from_checkpoint: str | None = None  # None/"" fresh (clears the run folder) | latest | checkpoint-<step>
    progress: bool = True

    def __post_init__(self):
        from stsynth_lib.models.registry import GENERATORS

        if self.model not in GENERATORS:
            raise ValueError(f"model must be one of {sorted(GENERATORS)}, got {self.model!r}")
        if self.gan_mode not in GAN_MODES:
            raise ValueError(f"gan_mode must be one of {GAN_MODES}, got {self.gan_mode!r}")
        if self.best_metric not in BEST_METRICS:
            raise ValueError(f"best_metric must be one of {sorted(BEST_METRICS)}, got {self.best_metric!r}")
        if self.calibrate_residual_scale and not self.residual:
            raise ValueError("calibrate_residual_scale: true needs residual: true (it scales the predicted change)")
        if not 0 <= self.radiometric_jitter < 1:
            raise ValueError(f"radiometric_jitter must be in [0, 1), got {self.radiometric_jitter}")
        if self.radiometric_jitter > 0 and not self.augment:
            raise ValueError("radiometric_jitter > 0 needs augment: true (it is part of the training augmentation)")
        if self.epochs_constant < 0 or self.epochs_decay < 0 or self.epochs_constant + self.epochs_decay < 1:
            raise ValueError(
                f"epochs_constant={self.epochs_constant}, epochs_decay={self.epochs_decay}: both must be >= 0 "
                "and their sum (the number of epochs) >= 1"
            )
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    @property
    def epochs(self) -> int:
        return self.epochs_constant + self.epochs_decay

    def guidance(self) -> GuidanceConfig:
        return GuidanceConfig(use_mask=self.use_mask, time_encoding=self.time_encoding,
                              gap_scale_months=self.gap_scale_months, use_month=self.use_month)

    @classmethod
    def from_params(cls, params: Mapping[str, Any], **overrides: Any) -> "CGANTrainConfig":
        """Build from a parameter dict (e.g. a notebook's), keeping only the keys that are fields."""
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in params.items() if k in names}
        kw.update(overrides)
        return cls(**kw)


# --------------------------------------------------------------------------- losses


def masked_l1_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean |pred - target| over the valid pixels of the whole batch (0 if none is valid)."""
    v = valid.to(pred.dtype).expand_as(pred)
    return ((pred - target).abs() * v).sum() / v.sum().clamp_min(1.0)


def patch_weights(valid: torch.Tensor, logits_hw: Sequence[int]) -> torch.Tensor:
    """Valid fraction of the input region under each PatchGAN logit, ``(B, 1, h, w)`` (area average)."""
    return F.adaptive_avg_pool2d(valid.float(), tuple(logits_hw))


def gan_loss(logits: torch.Tensor, target_is_real: bool, weights: torch.Tensor | None = None, mode: str = "vanilla") -> torch.Tensor:
    """Per-patch GAN loss, averaged with ``weights`` (the valid fraction of each patch)."""
    logits = logits.float()
    target = torch.ones_like(logits) if target_is_real else torch.zeros_like(logits)
    if mode == "vanilla":
        per = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    elif mode == "lsgan":
        per = (logits - target) ** 2
    else:
        raise ValueError(f"gan_mode must be one of {GAN_MODES}, got {mode!r}")
    if weights is None:
        return per.mean()
    return (per * weights).sum() / weights.sum().clamp_min(1e-8)


def discriminator_input(condition: torch.Tensor, image: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``cat(condition, image)`` with invalid pixels zeroed, so the discriminator never sees them."""
    return torch.cat([condition, image.to(condition.dtype)], 1) * valid.to(condition.dtype)


def set_requires_grad(net: nn.Module, flag: bool) -> None:
    for p in net.parameters():
        p.requires_grad_(flag)


def cgan_losses(G: nn.Module, D: nn.Module, batch: Mapping[str, torch.Tensor], guidance: GuidanceConfig,
                lambda_l1: float = 100.0, gan_mode: str = "vanilla") -> dict[str, torch.Tensor]:
    """Generator and discriminator losses on one batch (no optimiser step); for tests and notebooks."""
    cond = build_condition(batch, guidance)
    real, valid = batch["future"], batch["valid"]
    fake = G(cond)
    d_fake = D(discriminator_input(cond, fake.detach(), valid))
    w = patch_weights(valid, d_fake.shape[-2:])
    d_real = D(discriminator_input(cond, real, valid))
    loss_d = 0.5 * (gan_loss(d_fake, False, w, gan_mode) + gan_loss(d_real, True, w, gan_mode))
    g_gan = gan_loss(D(discriminator_input(cond, fake, valid)), True, w, gan_mode)
    g_l1 = masked_l1_loss(fake, real, valid)
    return {"loss_d": loss_d, "loss_g": g_gan + lambda_l1 * g_l1, "loss_g_gan": g_gan, "loss_g_l1": g_l1, "fake": fake}


def train_step(G: nn.Module, D: nn.Module, opt_g, opt_d, batch: Mapping[str, Any], guidance: GuidanceConfig,
               lambda_l1: float = 100.0, gan_mode: str = "vanilla", accelerator=None) -> dict[str, float]:
    """One pix2pix update on a batch already on the device: a discriminator step then a generator step.

    ``G``/``D`` may be Accelerate/DDP-wrapped (pass the ``accelerator``); the
    discriminator is used unwrapped and frozen for the generator step, and each
    discriminator forward is followed by its own backward, which keeps DDP happy.
    Returns the losses as floats.
    """
    import contextlib

    autocast = accelerator.autocast if accelerator is not None else contextlib.nullcontext
    backward = accelerator.backward if accelerator is not None else (lambda loss: loss.backward())
    D_raw = accelerator.unwrap_model(D) if accelerator is not None else D
    real, valid = batch["future"], batch["valid"]
    with autocast():
        cond = build_condition(batch, guidance)
        fake = G(cond)
        set_requires_grad(D_raw, True)
        opt_d.zero_grad(set_to_none=True)
        d_fake = D(discriminator_input(cond, fake.detach(), valid))
        w = patch_weights(valid, d_fake.shape[-2:])
        loss_d_fake = gan_loss(d_fake, False, w, gan_mode)
    backward(0.5 * loss_d_fake)
    with autocast():
        loss_d_real = gan_loss(D(discriminator_input(cond, real, valid)), True, w, gan_mode)
    backward(0.5 * loss_d_real)
    opt_d.step()
    set_requires_grad(D_raw, False)
    opt_g.zero_grad(set_to_none=True)
    with autocast():
        loss_g_gan = gan_loss(D_raw(discriminator_input(cond, fake, valid)), True, w, gan_mode)
        loss_g_l1 = masked_l1_loss(fake.float(), real.float(), valid)
        loss_g = loss_g_gan + lambda_l1 * loss_g_l1
    backward(loss_g)
    opt_g.step()
    set_requires_grad(D_raw, True)
    return {"loss_g": loss_g.item(), "loss_g_gan": loss_g_gan.item(), "loss_g_l1": loss_g_l1.item(),
            "loss_d": 0.5 * (loss_d_fake.item() + loss_d_real.item()),
            "loss_d_real": loss_d_real.item(), "loss_d_fake": loss_d_fake.item()}


def lr_factor(step: int, steps_per_epoch: int, epochs_constant: int, epochs_decay: int) -> float:
    """pix2pix schedule per step: 1 for ``epochs_constant`` epochs, then linear to 0 over ``epochs_decay``."""
    const = epochs_constant * steps_per_epoch
    decay = epochs_decay * steps_per_epoch
    if step < const or decay == 0:
        return 1.0
    return max(0.0, 1.0 - (step - const + 1) / (decay + 1))


# --------------------------------------------------------------------------- data helpers


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack a list of ``PairedTileDataset`` samples (tensors stacked, strings kept as lists)."""
    out: dict[str, Any] = {}
    for k in samples[0]:
        vals = [s[k] for s in samples]
        out[k] = torch.stack(vals) if isinstance(vals[0], torch.Tensor) else vals
    return out


def augment_batch(batch: dict[str, Any], generator: torch.Generator, radiometric_jitter: float = 0.0) -> dict[str, Any]:
    """Random 90-degree rotation and horizontal flip per sample, identical on every spatial tensor.

    ``radiometric_jitter`` = j > 0 also maps both images of a pair through the
    same random per-band line ``x * gain + offset`` (gain in [1 - j, 1 + j],
    offset in [-j, j], in [-1, 1] units, clipped to [-1, 1]). The change from
    past to future is kept (rescaled by the gain), but a generator can no longer
    tie its output to the absolute colours of the few training areas (34 AOIs
    on sn7_real_128), which new areas do not share.
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
    return out


def to_device(batch: Mapping[str, Any], device, channels_last: bool = False) -> dict[str, Any]:
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device, non_blocking=True)
            if channels_last and v.ndim == 4 and v.dtype.is_floating_point:
                v = v.contiguous(memory_format=torch.channels_last)
        out[k] = v
    return out


def epoch_batches(n: int, batch_size: int, epoch: int, seed: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """Shuffled index batches of one epoch, the same on every process for a given (seed, epoch), sharded by rank."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g).tolist()
    local = perm[rank::world]
    return [local[i : i + batch_size] for i in range(0, len(local), batch_size)]


def spread_indices(n: int, k: int) -> list[int]:
    """``k`` indices spread evenly over ``range(n)`` (pairs of one tile are adjacent: this shows different places)."""
    return sorted(set(np.linspace(0, n - 1, min(k, n)).round().astype(int).tolist())) if n else []


def steps_per_epoch(n: int, batch_size: int, world: int = 1) -> int:
    return max(1, math.ceil(math.ceil(n / world) / batch_size))


# --------------------------------------------------------------------------- figures


def sample_grid(batch: Mapping[str, Any], generated: torch.Tensor, n_rows: int = 4) -> np.ndarray:
    """``(rows*H, 4*W, 3)`` uint8 grid: past | future mask | generated | truth (invalid truth pixels magenta)."""
    n = min(n_rows, generated.shape[0])
    rows = []
    for i in range(n):
        past = to_uint8(batch["past"][i][:3]).transpose(1, 2, 0)
        mask = (batch["future_mask"][i, 0].float().cpu().numpy() * 255).astype(np.uint8)
        mask = np.repeat(mask[:, :, None], 3, 2)
        gen = to_uint8(generated[i][:3]).transpose(1, 2, 0)
        truth = to_uint8(batch["future"][i][:3]).transpose(1, 2, 0).copy()
        invalid = batch["valid"][i, 0].cpu().numpy() < 0.5
        truth[invalid] = (255, 0, 255)
        rows.append(np.concatenate([past, mask, gen, truth], 1))
    return np.concatenate(rows, 0)


def save_grid(grid: np.ndarray, path: Path) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(grid).save(tmp, format="PNG")
    tmp.replace(path)
    return path


# --------------------------------------------------------------------------- evaluation


def _metric_rows(pred01: torch.Tensor, truth01: torch.Tensor, valid: torch.Tensor, prefix: str = "") -> dict[str, np.ndarray]:
    from stsynth_lib.metrics import finite_psnr, masked_l1, masked_psnr, masked_ssim

    return {
        f"{prefix}l1": masked_l1(pred01, truth01, valid) * 2.0,  # reported in [-1, 1] units, like the L1 loss
        f"{prefix}psnr": finite_psnr(masked_psnr(pred01, truth01, valid, data_range=1.0)),
        f"{prefix}ssim": masked_ssim(pred01, truth01, valid, data_range=1.0),
    }


def _unit01(x: torch.Tensor) -> torch.Tensor:
    return ((x.detach().float().cpu().clamp(-1, 1) + 1) / 2).to(torch.float64)


@torch.no_grad()
def evaluate_generator(G: nn.Module | None, dataset: PairedTileDataset, guidance: GuidanceConfig | None,
                       batch_size: int = 16, device: str | torch.device = "cpu", progress: bool = False,
                       on_batch=None) -> pd.DataFrame:
    """Per-pair masked L1 / PSNR / SSIM of ``G`` (``None``: the persistence baseline, future = past).

    L1 is in [-1, 1] units (the training loss' scale); PSNR (dB) and SSIM on [0, 1]
    images. Generated images are quantised to uint8 first, like the saved predictions.
    ``on_batch(batch, generated)`` is called for each batch (used to save predictions).
    """
    from tqdm.auto import tqdm

    if G is not None:
        was_training = G.training
        G.eval()
        dtype = next(G.parameters()).dtype
    rows = []
    idx = list(range(len(dataset)))
    for start in tqdm(range(0, len(idx), batch_size), disable=not progress, desc="evaluate", leave=False):
        batch = collate([dataset[i] for i in idx[start : start + batch_size]])
        if G is None:
            gen = batch["past"]
        else:
            b = to_device(batch, device)
            gen = G(build_condition(b, guidance).to(dtype)).float().cpu()
        gen = torch.from_numpy(to_uint8(gen)).float() / 127.5 - 1.0  # what the GeoTIFF will hold
        if on_batch is not None:
            on_batch(batch, gen)
        m = _metric_rows(_unit01(gen), _unit01(batch["future"]), batch["valid"])
        for i in range(gen.shape[0]):
            rows.append({"pair_id": int(batch["pair_id"][i]), "aoi": batch["aoi"][i],
                         "gap_months": float(batch["gap_months"][i]), **{k: float(v[i]) for k, v in m.items()}})
    if G is not None:
        G.train(was_training)
    return pd.DataFrame(rows)


def summarize(df: pd.DataFrame) -> dict[str, float]:
    """Mean of each metric over pairs (NaN-aware: pairs without valid pixels are skipped)."""
    return {k: float(np.nanmean(df[k].to_numpy())) for k in ("l1", "psnr", "ssim") if k in df}


def evaluate_persistence(dataset: PairedTileDataset, batch_size: int = 32) -> pd.DataFrame:
    """The persistence baseline (generated future = past image) scored like a model."""
    return evaluate_generator(None, dataset, None, batch_size=batch_size)


# --------------------------------------------------------------------------- model files


def model_spec(cfg: CGANTrainConfig, guidance: GuidanceConfig, n_bands: int, tile_size_px: int) -> dict[str, Any]:
    """Everything needed to rebuild the generator (written to ``model.yaml``)."""
    channels = guidance.channel_names()
    return {
        "name": cfg.model,
        "in_channels": guidance.n_channels,
        "out_channels": n_bands,
        "tile_size_px": tile_size_px,
        "ngf": cfg.ngf,
        "norm": cfg.norm,
        "dropout": cfg.dropout,
        "residual": bool(cfg.residual),
        "gap_channel": channels.index("gap_months_scaled") if "gap_months_scaled" in channels else None,
        "guidance": guidance.to_dict(),
        "channels": channels,
    }


def generator_from_spec(spec: Mapping[str, Any]) -> nn.Module:
    return build_generator(spec["name"], spec["in_channels"], spec["out_channels"], spec["tile_size_px"],
                           ngf=spec["ngf"], norm=spec["norm"], dropout=spec["dropout"],
                           residual=bool(spec.get("residual", False)), gap_channel=spec.get("gap_channel"),
                           gap_scale_months=float(spec.get("guidance", {}).get("gap_scale_months", 24.0)))


RESIDUAL_SCALES = tuple(round(0.05 * i, 2) for i in range(21))  # 0, 0.05, ..., 1
RESIDUAL_FULL_GAPS_MONTHS = tuple(range(1, 13))  # 1 = the same scale at every gap (gaps are >= 1 month)


@torch.no_grad()
def calibrate_residual_scale(G: nn.Module, dataset, guidance: GuidanceConfig, scales: Sequence[float] = RESIDUAL_SCALES,
                             full_gaps_months: Sequence[float] = RESIDUAL_FULL_GAPS_MONTHS, batch_size: int = 32,
                             device: str | torch.device = "cpu", progress: bool = False) -> tuple[dict[str, float], pd.DataFrame]:
    """Choose how much of its predicted change a residual generator applies, on held-out pairs.

    The prediction becomes ``clamp(past + k * change)`` with ``k = scale * min(1, gap / full_gap)``:
    ``scale = 0`` is persistence, ``scale = 1, full_gap = 1`` the trained generator, and
    ``full_gap > 1`` applies less change to short gaps (a month ahead little really changes, and a
    generator that learned its training areas' changes applies them too confidently there).
    Every pair of ``dataset`` (the validation split, never the test split) is scored on the
    uint8-quantised output, like the saved predictions, at ``k`` = 0, 0.05, ..., 1 (other ``k``
    are interpolated linearly between those: L1 is smooth in ``k``). The chosen pair
    ``(scale, full_gap)`` minimises the *area-balanced* L1 -- the mean over areas (AOIs) of each
    area's mean L1 over valid pixels -- so that a few volatile areas cannot buy a setting that
    loses in the steady ones. Without a gap plane in the condition only ``full_gap = 1`` is tried.

    Returns ``({"residual_scale": s, "residual_full_gap_months": g}, table)``; ``table`` has one row
    per (``residual_scale``, ``full_gap_months``) with ``val_l1`` (mean over pairs),
    ``val_l1_area_mean`` (the criterion) and ``chosen``.
    """
    from tqdm.auto import tqdm

    from stsynth_lib.metrics import masked_l1

    if not getattr(G, "residual", False):
        raise ValueError("calibrate_residual_scale needs a generator built with residual=True")
    if len(dataset) == 0:
        raise ValueError("calibrate_residual_scale: the calibration split has no pairs")
    if getattr(G, "gap_channel", None) is None:
        full_gaps_months = (1,)
    was_training = G.training
    G.eval()
    dtype = next(G.parameters()).dtype
    grid = np.round(np.arange(0, 1.0 + 1e-9, 0.05), 2)
    per_pair, gaps, areas = [], [], []
    for start in tqdm(range(0, len(dataset), batch_size), disable=not progress, desc="calibrate", leave=False):
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        b = to_device(batch, device)
        change = G.forward_head(build_condition(b, guidance).to(dtype)).float().cpu()
        past, future, valid = batch["past"], batch["future"], batch["valid"]
        cols = []
        for k in grid:
            gen = torch.clamp(past + float(k) * change, -1.0, 1.0)
            gen = torch.from_numpy(to_uint8(gen)).float() / 127.5 - 1.0
            cols.append(masked_l1(gen, future, valid))  # NaN for a pair without valid pixels: left out below
        per_pair.append(np.stack(cols, 1))
        gaps += batch["gap_months"].tolist()
        areas += list(batch["aoi"])
    G.train(was_training)
    l1_grid = np.concatenate(per_pair)  # (pairs, len(grid))
    gaps_a, areas_a = np.asarray(gaps, float), np.asarray(areas)
    rows_idx = np.arange(len(l1_grid))
    rows = []
    for full_gap in full_gaps_months:
        ramp = np.minimum(1.0, gaps_a / float(full_gap))
        for scale in scales:
            k = np.clip(float(scale) * ramp, 0, 1) / 0.05
            lo = np.minimum(np.floor(k).astype(int), len(grid) - 2)
            w = k - lo
            l1 = (1 - w) * l1_grid[rows_idx, lo] + w * l1_grid[rows_idx, lo + 1]
            rows.append({"residual_scale": float(scale), "full_gap_months": float(full_gap), "val_l1": float(np.nanmean(l1)),
                         "val_l1_area_mean": float(pd.Series(l1).groupby(areas_a).mean().mean())})
    table = pd.DataFrame(rows)
    best = int(table["val_l1_area_mean"].to_numpy().argmin())
    table["chosen"] = np.arange(len(table)) == best
    chosen = {"residual_scale": float(table.loc[best, "residual_scale"]),
              "residual_full_gap_months": float(table.loc[best, "full_gap_months"])}
    return chosen, table


def load_generator(run_dir: str | Path, which: str = "best", map_location: str = "cpu") -> tuple[nn.Module, GuidanceConfig]:
    """Rebuild a run's generator (eval mode) and its :class:`GuidanceConfig`.

    ``which``: ``"best"`` (``best/generator.pt``, the best validation score),
    ``"latest"`` (the newest checkpoint) or a checkpoint folder name.
    """
    run_dir = Path(run_dir)
    spec_path = run_dir / "model.yaml"
    if not spec_path.is_file():
        raise FileNotFoundError(f"{spec_path} not found: {run_dir} is not a cGAN run folder (train it with train_cgan first)")
    spec = yaml.safe_load(spec_path.read_text())
    G = generator_from_spec(spec)
    if which == "best":
        path = run_dir / "best" / "generator.pt"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: the run never validated; use which='latest'")
        state = torch.load(path, map_location=map_location, weights_only=True)
    else:
        ck = latest_checkpoint(run_dir) if which == "latest" else run_dir / "checkpoints" / which
        if ck is None or not (Path(ck) / "state.pt").is_file():
            raise FileNotFoundError(f"no checkpoint {which!r} with a state.pt under {run_dir / 'checkpoints'}")
        state = torch.load(Path(ck) / "state.pt", map_location=map_location, weights_only=True)["generator"]
    if getattr(G, "residual", False):  # runs saved before the calibration buffers existed
        state = {"residual_scale": torch.ones(()), "residual_full_gap_months": torch.zeros(()), **state}
    G.load_state_dict(state)
    G.eval()
    return G, GuidanceConfig.from_dict(spec["guidance"])


def predict_split(model: str | Path | nn.Module, dataset: PairedTileDataset, out_dir: str | Path,
                  guidance: GuidanceConfig | None = None, which: str = "best", batch_size: int = 16,
                  device: str = "cpu", progress: bool = True, metrics_csv: str | Path | None = None) -> pd.DataFrame:
    """Generate every pair of ``dataset``, save GeoTIFF + PNG predictions into ``out_dir`` and score them.

    ``model`` is a run folder (loaded with :func:`load_generator`) or a generator
    (then pass its ``guidance``). The folder is cleared first so runs never mix.
    Returns per-pair metrics of the model and of persistence (``persistence_*``
    columns); written to ``metrics_csv`` if given.
    """
    from stsynth_lib.predictions import clear_predictions, save_predictions

    if isinstance(model, (str, Path)):
        G, guidance = load_generator(model, which)
    else:
        G = model
        if guidance is None:
            raise ValueError("predict_split(model=<nn.Module>) needs the GuidanceConfig the model was trained with")
    G = G.to(device)
    out_dir = Path(out_dir)
    clear_predictions(out_dir)

    def _save(batch, gen):
        save_predictions(out_dir, gen, batch["pair_id"].tolist(), batch["aoi"], batch["transform"], batch["crs"])

    df = evaluate_generator(G, dataset, guidance, batch_size, device, progress, on_batch=_save)
    pers = evaluate_persistence(dataset, batch_size)
    df = df.merge(pers[["pair_id", "l1", "psnr", "ssim"]].add_prefix("persistence_").rename(
        columns={"persistence_pair_id": "pair_id"}), on="pair_id")
    if metrics_csv is not None:
        Path(metrics_csv).parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(metrics_csv, index=False)
    return df


def comparison_table(df: pd.DataFrame, model_name: str) -> pd.DataFrame:
    """Two-row table (model vs persistence) of mean L1 / PSNR / SSIM from :func:`predict_split`'s output."""
    rows = [{"method": model_name, **summarize(df)},
            {"method": "persistence (future = past)", **summarize(df[[c for c in df if c.startswith("persistence_")]]
                                                                .rename(columns=lambda c: c[len("persistence_"):]))}]
    return pd.DataFrame(rows).set_index("method")


def area_comparison(df: pd.DataFrame, model_name: str, n_boot: int = 2000, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Model against persistence area by area, from :func:`predict_split`'s output.

    Returns ``(per_area, paired)``: mean L1 of both per area (AOI) with the pair count and whether the
    model is better there (L1 in the [-1, 1] units of training, like :func:`comparison_table`), and
    :func:`stsynth_lib.evaluate.paired_vs_persistence` (model minus persistence with a 95 % interval
    from resampling whole areas) for L1, PSNR and SSIM, with L1 in [0, 1] units (half the [-1, 1]
    value) like the evaluation chapter.
    """
    from stsynth_lib.evaluate import PERSISTENCE, paired_vs_persistence

    per_area = df.groupby("aoi").agg(pairs=("pair_id", "size"), l1=("l1", "mean"), persistence_l1=("persistence_l1", "mean"))
    per_area["model_better"] = per_area["l1"] < per_area["persistence_l1"]
    cols = ["pair_id", "aoi", "l1", "psnr", "ssim"]
    long = pd.concat([df[cols].assign(model=model_name),
                      df[["pair_id", "aoi"] + [f"persistence_{c}" for c in ("l1", "psnr", "ssim")]]
                      .rename(columns=lambda c: c.replace("persistence_", "")).assign(model=PERSISTENCE)])
    long["l1"] = long["l1"] / 2  # [-1, 1] -> [0, 1] units, the evaluation's (and the table label's) scale
    return per_area, paired_vs_persistence(long, n_boot=n_boot, seed=seed)


# --------------------------------------------------------------------------- training


def split_dataset(cfg: CGANTrainConfig, split: str) -> PairedTileDataset:
    """The pairs of ``split`` a run uses (``max_train_pairs`` / ``max_val_pairs``: a seeded subset)."""
    limit = {"train": cfg.max_train_pairs, "val": cfg.max_val_pairs}.get(split)
    return PairedTileDataset(cfg.dataset_dir, split, max_pairs=limit, subsample_seed=cfg.seed if limit is not None else None)


def _resolve_device(device: str) -> bool:
    """True when the run must stay on CPU."""
    if device == "cpu":
        return True
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' but torch.cuda.is_available() is False; use device='auto' or 'cpu'")
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    return False


def _clear_run(run_dir: Path) -> None:
    for name in ("checkpoints", "samples", "best"):
        shutil.rmtree(run_dir / name, ignore_errors=True)
    for name in ("log.csv", "val.csv"):
        (run_dir / name).unlink(missing_ok=True)


def train_cgan(config: CGANTrainConfig) -> Path:
    """Train ``config.model`` with a PatchGAN on ``config.dataset_dir``; return the run folder."""
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    cfg = config
    cpu = _resolve_device(cfg.device)
    on_cuda = not cpu and torch.cuda.is_available()
    mp = cfg.mixed_precision if cfg.mixed_precision != "auto" else ("bf16" if on_cuda else "no")
    accelerator = Accelerator(cpu=cpu, mixed_precision=mp)
    device = accelerator.device
    channels_last = on_cuda if cfg.channels_last == "auto" else bool(cfg.channels_last)
    rank, world = accelerator.process_index, accelerator.num_processes
    seed_everything(cfg.seed + rank)

    train_ds, val_ds = split_dataset(cfg, "train"), split_dataset(cfg, "val")
    if len(train_ds) == 0:
        raise ValueError(f"{cfg.dataset_dir}: the train split has no pairs; rebuild the dataset with more AOIs/months")
    n_bands, size = train_ds.n_bands, train_ds.tile_size_px
    guidance = cfg.guidance().resolve(dataset_has_mask(train_ds), n_bands)
    spec = model_spec(cfg, guidance, n_bands, size)

    G = init_weights(generator_from_spec(spec))
    D = init_weights(build_discriminator(guidance.n_channels, n_bands, ndf=cfg.ndf, n_layers=cfg.d_layers, norm=cfg.norm))
    if channels_last:
        G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    spe = steps_per_epoch(len(train_ds), cfg.batch_size, world)
    total_steps = spe * cfg.epochs
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    sched = lambda s: lr_factor(s, spe, cfg.epochs_constant, cfg.epochs_decay)  # noqa: E731
    sched_g = torch.optim.lr_scheduler.LambdaLR(opt_g, sched)
    sched_d = torch.optim.lr_scheduler.LambdaLR(opt_d, sched)
    G, D, opt_g, opt_d = accelerator.prepare(G, D, opt_g, opt_d)
    G_raw, D_raw = accelerator.unwrap_model(G), accelerator.unwrap_model(D)

    run_dir = Path(cfg.runs_dir) / cfg.profile / (cfg.run_name or cfg.model)
    ckpt = resolve_resume(run_dir, cfg.resume_from_checkpoint) if run_dir.exists() else None
    if cfg.resume_from_checkpoint and ckpt is None and accelerator.is_main_process:
        print(f"resume_from_checkpoint={cfg.resume_from_checkpoint!r}: no checkpoint in {run_dir}, starting fresh")
    if ckpt is None and accelerator.is_main_process:
        _clear_run(run_dir)
    if accelerator.is_main_process:
        params = {**asdict(cfg), "resolved_guidance": guidance.to_dict(), "steps_per_epoch": spe,
                  "total_steps": total_steps, "n_train_pairs": len(train_ds), "n_val_pairs": len(val_ds),
                  "world_size": world, "mixed_precision_effective": mp, "channels_last_effective": channels_last,
                  "device_effective": str(device), "torch": str(torch.__version__)}
        run_dir = prepare_run_dir(cfg.runs_dir, cfg.profile, cfg.run_name or cfg.model, params)
        save_yaml(spec, run_dir / "model.yaml")
    accelerator.wait_for_everyone()
    log = CSVLogger(run_dir / "log.csv")
    val_log = CSVLogger(run_dir / "val.csv")

    step, best = 0, None
    if ckpt is not None:
        state = torch.load(Path(ckpt) / "state.pt", map_location="cpu", weights_only=True)
        saved_spec = state.get("model_spec")
        if saved_spec is not None and saved_spec != spec:
            diff = {k: (saved_spec.get(k), spec.get(k)) for k in spec if saved_spec.get(k) != spec.get(k)}
            raise ValueError(
                f"cannot resume from {ckpt}: it was trained with a different model/guidance {diff} "
                "(checkpoint value, current value). Use the same parameters, another run_name, or "
                "resume_from_checkpoint=None to start fresh (this clears the run folder)."
            )
        G_raw.load_state_dict(state["generator"])
        D_raw.load_state_dict(state["discriminator"])
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        sched_g.load_state_dict(state["sched_g"])
        sched_d.load_state_dict(state["sched_d"])
        torch.set_rng_state(state["rng_cpu"])
        if on_cuda and state.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(state["rng_cuda"])
        step, best = int(state["step"]), state.get("best")
        if accelerator.is_main_process:
            log.truncate_after(step)
            val_log.truncate_after(step)
            print(f"Resumed from {ckpt} at step {step}")

    def save_checkpoint(at_step: int) -> None:
        if not accelerator.is_main_process:
            return
        state = {
            "generator": G_raw.state_dict(), "discriminator": D_raw.state_dict(),
            "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
            "sched_g": sched_g.state_dict(), "sched_d": sched_d.state_dict(),
            "rng_cpu": torch.get_rng_state(), "rng_cuda": torch.cuda.get_rng_state() if on_cuda else None,
            "step": at_step, "best": best, "model_spec": spec,
        }
        with atomic_checkpoint_dir(run_dir, at_step, keep=cfg.checkpoints_total_limit) as tmp:
            atomic_torch_save(state, tmp / "state.pt")

    # fixed validation batch for sample grids
    grid_ds = val_ds if len(val_ds) else train_ds
    grid_batch = collate([grid_ds[i] for i in spread_indices(len(grid_ds), cfg.n_sample_rows)])

    def write_samples(at_step: int) -> None:
        if not accelerator.is_main_process:
            return
        G_raw.eval()
        with torch.no_grad(), accelerator.autocast():
            b = to_device(grid_batch, device, channels_last)
            gen = G_raw(build_condition(b, guidance)).float().cpu()
        G_raw.train()
        save_grid(sample_grid(grid_batch, gen, cfg.n_sample_rows), run_dir / "samples" / f"step-{at_step:07d}.png")

    def validate(epoch: int, at_step: int):
        nonlocal best
        if not accelerator.is_main_process or len(val_ds) == 0:
            return None
        with accelerator.autocast():
            df = evaluate_generator(G_raw, val_ds, guidance, batch_size=max(cfg.batch_size, 16), device=device)
        s = summarize(df)
        row = {"step": at_step, "epoch": epoch + 1, "val_l1": s["l1"], "val_psnr": s["psnr"], "val_ssim": s["ssim"]}
        better = best is None or (row[cfg.best_metric] < best["value"] if BEST_METRICS[cfg.best_metric] == "min"
                                  else row[cfg.best_metric] > best["value"])
        row["best"] = int(better)
        if better:
            best = {"metric": cfg.best_metric, "value": float(row[cfg.best_metric]), "step": at_step, "epoch": epoch + 1}
            atomic_torch_save(G_raw.state_dict(), run_dir / "best" / "generator.pt")
            save_yaml({**best, **{k: float(v) for k, v in row.items() if k.startswith("val_")}}, run_dir / "best" / "best.yaml")
        val_log.log(row)
        return row

    start_epoch = step // spe
    loader_gen = torch.Generator()  # keeps DataLoader from drawing on the global RNG (exact resume)
    pbar = tqdm(total=total_steps, initial=step, disable=not (cfg.progress and accelerator.is_local_main_process),
                desc=f"train {cfg.model}", unit="step", dynamic_ncols=True)
    G.train()
    D.train()
    t_last, n_img, ema_ips = time.perf_counter(), 0, None
    last_val = None
    for epoch in range(start_epoch, cfg.epochs):
        if step >= total_steps:
            break
        batches = epoch_batches(len(train_ds), cfg.batch_size, epoch, cfg.seed, rank, world)
        skip = step - epoch * spe
        loader = torch.utils.data.DataLoader(train_ds, batch_sampler=batches[skip:], num_workers=cfg.num_workers,
                                             collate_fn=collate, generator=loader_gen,
                                             pin_memory=on_cuda, persistent_workers=False)
        for batch in loader:
            if cfg.augment:
                batch = augment_batch(batch, torch.Generator().manual_seed(cfg.seed * 7919 + step * 104729 + rank),
                                      cfg.radiometric_jitter)
            batch = to_device(batch, device, channels_last)
            losses = train_step(G, D, opt_g, opt_d, batch, guidance, cfg.lambda_l1, cfg.gan_mode, accelerator)
            sched_g.step()
            sched_d.step()
            step += 1
            n_img += batch["past"].shape[0] * world
            pbar.update(1)

            if step % cfg.log_every_steps == 0 or step == total_steps:
                now = time.perf_counter()
                ips = n_img / max(now - t_last, 1e-9)
                ema_ips = ips if ema_ips is None else 0.7 * ema_ips + 0.3 * ips
                t_last, n_img = now, 0
                row = {"step": step, "epoch": epoch + 1, "lr": opt_g.param_groups[0]["lr"], **losses, "images_per_s": ips}
                if accelerator.is_main_process:
                    log.log(row)
                pbar.set_postfix(G=f"{row['loss_g']:.3f}", L1=f"{row['loss_g_l1']:.4f}", D=f"{row['loss_d']:.3f}",
                                 img_s=f"{ema_ips:.1f}")
            if cfg.sample_every_steps and step % cfg.sample_every_steps == 0:
                write_samples(step)
            end_of_epoch = step == (epoch + 1) * spe
            if ((end_of_epoch and (epoch + 1) % cfg.val_every_epochs == 0)
                    or (cfg.val_every_steps and step % cfg.val_every_steps == 0)):
                last_val = validate(epoch, step)
                if last_val:
                    pbar.write(f"epoch {epoch + 1} step {step}: val L1 {last_val['val_l1']:.4f}  PSNR {last_val['val_psnr']:.2f} dB  "
                               f"SSIM {last_val['val_ssim']:.3f}" + ("  (best)" if last_val["best"] else ""))
                t_last = time.perf_counter()  # throughput excludes validation
            if end_of_epoch or step == total_steps or (cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0):
                save_checkpoint(step)
                t_last = time.perf_counter()
            if step >= total_steps:
                break
    pbar.close()
    if accelerator.is_main_process:
        write_samples(step)
        if best is None and len(val_ds):
            validate(max(0, (step - 1) // spe), step)
        if cfg.calibrate_residual_scale and (run_dir / "best" / "generator.pt").is_file():
            G_best = generator_from_spec(spec)
            G_best.load_state_dict(torch.load(run_dir / "best" / "generator.pt", map_location="cpu", weights_only=True))
            G_best.to(device)
            cal_ds = PairedTileDataset(cfg.dataset_dir, "val")
            chosen, table = calibrate_residual_scale(G_best, cal_ds, guidance, batch_size=max(cfg.batch_size, 16),
                                                     device=device, progress=cfg.progress)
            G_best.residual_scale.fill_(chosen["residual_scale"])
            G_best.residual_full_gap_months.fill_(chosen["residual_full_gap_months"])
            atomic_torch_save({k: v.cpu() for k, v in G_best.state_dict().items()}, run_dir / "best" / "generator.pt")
            atomic_write_text(run_dir / "best" / "residual_scale.csv", table.to_csv(index=False))
            best_yaml = yaml.safe_load((run_dir / "best" / "best.yaml").read_text())
            save_yaml({**best_yaml, **chosen, "calibration_pairs": len(cal_ds)}, run_dir / "best" / "best.yaml")
            row = table[table["chosen"]].iloc[0]
            plain = table[(table["residual_scale"] == 1) & (table["full_gap_months"] == 1)]["val_l1_area_mean"].iloc[0]
            pers = table[table["residual_scale"] == 0]["val_l1_area_mean"].iloc[0]
            pbar.write(f"change scale {chosen['residual_scale']:.2f} x min(1, gap / {chosen['residual_full_gap_months']:.0f} months) "
                       f"chosen on {len(cal_ds)} val pairs: area-balanced val L1 {row['val_l1_area_mean']:.4f} "
                       f"(uncalibrated: {plain:.4f}, persistence: {pers:.4f})")
    accelerator.wait_for_everyone()
    return run_dir


# --------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str] | None = None) -> CGANTrainConfig:
    """``--dataset-dir D --model pix2pix --epochs-constant 5 ...`` (every field of :class:`CGANTrainConfig`);
    ``--params FILE.yaml`` (repeatable) loads keys first, flags override."""
    p = argparse.ArgumentParser(prog="python -m stsynth_lib.train_cgan",
                                description="Train a pix2pix or attention-U-Net cGAN on a stsynth tile store.")
    p.add_argument("--params", action="append", default=[], help="YAML file(s) of options (e.g. params/smoke/common.yaml)")
    for f in dataclasses.fields(CGANTrainConfig):
        p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=parse_cli_value, default=argparse.SUPPRESS,
                       help=f"default: {f.default!r}")
    ns = vars(p.parse_args(argv))
    params = ns.pop("params")
    return CGANTrainConfig.from_params(merge_params(params, ns, str_keys=("dataset_dir", "runs_dir", "profile", "run_name", "model")))


def main(argv: Sequence[str] | None = None) -> Path:
    cfg = parse_args(argv)
    run_dir = train_cgan(cfg)
    print(f"Run folder: {run_dir}")
    return run_dir


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
