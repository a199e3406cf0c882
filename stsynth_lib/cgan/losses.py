"""The pix2pix objective on valid pixels only, and one optimisation step of G and D."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from stsynth_lib.cgan.config import GAN_MODES
from stsynth_lib.conditioning import GuidanceConfig, build_condition


def masked_l1_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean |pred - target| over the valid pixels of the whole batch (0 if none is valid)."""
    v = valid.to(pred.dtype).expand_as(pred)
    return ((pred - target).abs() * v).sum() / v.sum().clamp_min(1.0)


def l1_weights(batch: Mapping[str, torch.Tensor], new_building_l1_weight: float = 0.0) -> torch.Tensor:
    """Per-pixel L1 weights: the validity mask, and ``1 + new_building_l1_weight`` on new-building pixels (built at
    t1, not at t0) of labelled pairs. New buildings cover well under 1 % of a real tile, so a plain L1 barely asks the
    generator to draw them; the weighted mean (normalised by the weights) does."""
    valid = batch["valid"]
    if not new_building_l1_weight:
        return valid
    new = (batch["future_mask"] > 0.5) & (batch["past_mask"] < 0.5)
    return valid * (1.0 + float(new_building_l1_weight) * new.to(valid.dtype))


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
                lambda_l1: float = 100.0, gan_mode: str = "vanilla", new_building_l1_weight: float = 0.0,
                ) -> dict[str, torch.Tensor]:
    """Generator and discriminator losses on one batch (no optimiser step); for tests and notebooks."""
    cond = build_condition(batch, guidance)
    real, valid = batch["future"], batch["valid"]
    fake = G(cond)
    d_fake = D(discriminator_input(cond, fake.detach(), valid))
    w = patch_weights(valid, d_fake.shape[-2:])
    d_real = D(discriminator_input(cond, real, valid))
    loss_d = 0.5 * (gan_loss(d_fake, False, w, gan_mode) + gan_loss(d_real, True, w, gan_mode))
    g_gan = gan_loss(D(discriminator_input(cond, fake, valid)), True, w, gan_mode)
    g_l1 = masked_l1_loss(fake, real, l1_weights(batch, new_building_l1_weight))
    return {"loss_d": loss_d, "loss_g": g_gan + lambda_l1 * g_l1, "loss_g_gan": g_gan, "loss_g_l1": g_l1, "fake": fake}


def train_step(G: nn.Module, D: nn.Module, opt_g, opt_d, batch: Mapping[str, Any], guidance: GuidanceConfig,
               lambda_l1: float = 100.0, gan_mode: str = "vanilla", accelerator=None,
               new_building_l1_weight: float = 0.0) -> dict[str, float]:
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
        loss_g_l1 = masked_l1_loss(fake.float(), real.float(), l1_weights(batch, new_building_l1_weight))
        loss_g = loss_g_gan + lambda_l1 * loss_g_l1
    backward(loss_g)
    opt_g.step()
    set_requires_grad(D_raw, True)
    return {"loss_g": loss_g.item(), "loss_g_gan": loss_g_gan.item(), "loss_g_l1": loss_g_l1.item(),
            "loss_d": 0.5 * (loss_d_fake.item() + loss_d_real.item()),
            "loss_d_real": loss_d_real.item(), "loss_d_fake": loss_d_fake.item()}

