"""The ControlNet training loss (diffusers' example, fp32, masked to valid latents) and its parameter groups."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from stsynth_lib.controlnet.backbone import Backbone

def masked_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Mean squared error in fp32 over the latent pixels where ``weight`` (B, 1, h, w) is 1."""
    err = (pred.float() - target.float()) ** 2
    if weight is None:
        return err.mean()
    w = weight.float().expand_as(err)
    return (err * w).sum() / w.sum().clamp_min(1.0)


def latent_valid_weight(valid: torch.Tensor, factor: int) -> torch.Tensor:
    """(B, 1, H, W) pixel validity -> (B, 1, H/f, W/f): 1 where the whole f x f footprint is valid."""
    return (F.avg_pool2d(valid.float(), factor) > 0.999).float()


def zero_conv_parameters(controlnet) -> tuple[list, list]:
    """(zero-convolution parameters, the others) of a diffusers ControlNetModel."""
    zero, other = [], []
    for name, p in controlnet.named_parameters():
        is_zero = name.startswith(("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding.conv_out"))
        (zero if is_zero else other).append(p)
    return zero, other


def diffusion_loss(
    backbone: Backbone,
    controlnet,
    pixels: torch.Tensor,
    cond: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    valid: torch.Tensor | None,
    weight_dtype: torch.dtype,
    noise: torch.Tensor | None = None,
    timesteps: torch.Tensor | None = None,
    use_control: bool = True,
    start: torch.Tensor | None = None,
    residual_scale: float = 1.0,
) -> torch.Tensor:
    """One ControlNet training loss (diffusers example), fp32, masked to valid latents.

    ``pixels`` are the target images in [-1, 1]; ``use_control=False`` runs the
    bare UNet (to measure what the control adds). ``start`` (residual diffusion,
    :mod:`stsynth_lib.controlnet.residual`): the start images in [-1, 1] (the past, same size as ``pixels``); the
    latents that get noised are then ``(z_future - image_latents(start)) * residual_scale`` instead of ``z_future``
    (``z_future`` a posterior sample as without ``start``; the start's latent is the posterior mean).
    """
    vae, unet, sched = backbone.vae, backbone.unet, backbone.noise_scheduler
    with torch.no_grad(), torch.autocast(device_type=pixels.device.type, enabled=False):  # VAE in its dtype (fp32)
        latents = vae.encode(pixels.to(vae.dtype)).latent_dist.sample() * vae.config.scaling_factor
    latents = latents.float()
    if start is not None:
        from stsynth_lib.controlnet.backbone import image_latents

        latents = (latents - image_latents(backbone, start.to(latents.device))) * float(residual_scale)
    if noise is None:
        noise = torch.randn_like(latents)
    if timesteps is None:
        timesteps = torch.randint(0, sched.config.num_train_timesteps, (latents.shape[0],), device=latents.device)
    timesteps = timesteps.long().to(latents.device)
    noisy = sched.add_noise(latents, noise, timesteps)
    x = noisy.to(weight_dtype)
    if use_control:
        down, mid = controlnet(x, timesteps, encoder_hidden_states=encoder_hidden_states,
                               controlnet_cond=cond.to(weight_dtype), return_dict=False)
        pred = unet(x, timesteps, encoder_hidden_states=encoder_hidden_states,
                    down_block_additional_residuals=[d.to(weight_dtype) for d in down],
                    mid_block_additional_residual=mid.to(weight_dtype), return_dict=False)[0]
    else:
        pred = unet(x, timesteps, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]
    if sched.config.prediction_type == "epsilon":
        target = noise
    elif sched.config.prediction_type == "v_prediction":
        target = sched.get_velocity(latents, noise, timesteps)
    else:
        raise ValueError(f"unsupported prediction_type {sched.config.prediction_type!r}")
    w = latent_valid_weight(valid, backbone.vae_scale_factor) if valid is not None else None
    return masked_mse(pred, target, w)


def reinit_cond_embedding(controlnet, generator_seed: int = 0) -> None:
    """Re-initialise the ControlNet's conditioning encoder (the small conv stack before the zero ``conv_out``)
    with He-normal weights and zero biases.

    With PyTorch's default init, 7 conv+SiLU layers shrink the input-dependent part of the signal by orders of
    magnitude: the encoder's output is almost a constant (its biases) whatever the conditioning image, so the
    ControlNet can only learn a generic correction and ignores its condition for a long time (measured by
    ``cond_gain``). He init keeps the signal's scale through the stack. ``conv_out`` stays zero (zero conv).
    """
    emb = controlnet.controlnet_cond_embedding
    g = torch.Generator().manual_seed(generator_seed)
    with torch.no_grad():
        for conv in [emb.conv_in, *emb.blocks]:
            fan_in = conv.weight[0].numel()
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            if conv.bias is not None:
                conv.bias.zero_()
