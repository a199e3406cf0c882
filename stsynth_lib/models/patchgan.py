"""PatchGAN discriminator (pix2pix's ``NLayerDiscriminator``) and its receptive field.

With ``n_layers=3`` (the default) each output logit sees a 70 x 70 px patch of
its input: the "70x70 PatchGAN" of Isola et al. 2017. The input is the whole
condition (past image, future mask, time planes: whatever the generator got)
concatenated with the real or generated future image, so the discriminator
judges whether the image is plausible *for that condition*.
"""

from __future__ import annotations

import torch
from torch import nn

from stsynth_lib.models.unet import norm_layer


class PatchGANDiscriminator(nn.Module):
    """``(B, cond_channels + image_channels, H, W)`` -> ``(B, 1, H', W')`` real/fake logits per patch."""

    def __init__(self, in_channels: int, ndf: int = 64, n_layers: int = 3, norm: str = "instance"):
        super().__init__()
        Norm = norm_layer(norm)
        use_bias = norm != "batch"
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2**n, 8)
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, 2, 1, bias=use_bias), Norm(ndf * mult), nn.LeakyReLU(0.2, True)]
        prev, mult = mult, min(2**n_layers, 8)
        layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, 1, 1, bias=use_bias), Norm(ndf * mult), nn.LeakyReLU(0.2, True)]
        layers += [nn.Conv2d(ndf * mult, 1, 4, 1, 1)]
        self.model = nn.Sequential(*layers)
        self.in_channels = in_channels
        self.n_layers = n_layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"PatchGAN expected (B, {self.in_channels}, H, W) = condition + image channels, got {tuple(x.shape)}"
            )
        return self.model(x)
