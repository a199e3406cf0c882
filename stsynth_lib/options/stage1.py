"""Options of diffusion stage 1 (the backbone chapter 5 trains or adapts before the ControlNet)."""

from stsynth_lib.options.core import Concern, Option

STAGE1 = Concern("stage1", "Diffusion stage 1", (
    Option("adapt_pretrained", bool, False, "with a pretrained Stable Diffusion: stage 1 fine-tunes its UNet on the "
           "training images first"),
    Option("stage1", dict, {}, "stage-1 options (BackboneAdaptConfig fields: vae_steps, unet_steps, ...; "
           "unet_target: image | residual, what the UNet denoises: tile images or the scaled latent change of "
           "training pairs; it must match diffusion_target, which it follows unless set)"),
))
