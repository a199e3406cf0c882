"""Models: cGAN generators (pix2pix U-Net, attention U-Net) and the PatchGAN discriminator, built by name."""

from stsynth_lib.models.registry import (
    GENERATORS,
    build_discriminator,
    build_generator,
    init_weights,
)

__all__ = ["GENERATORS", "build_discriminator", "build_generator", "init_weights"]
