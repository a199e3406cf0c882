"""pix2pix U-Net generator (Isola et al. 2017), written flat so its depth follows the tile size.

The reference implementation (``junyanz/pytorch-CycleGAN-and-pix2pix``, ``unet_256``)
nests ``UnetSkipConnectionBlock`` objects 8 deep for 256 px tiles, so the
bottleneck is 1 x 1. Here ``depth`` defaults to ``log2(tile_size_px)`` (64 px -> 6,
128 -> 7, 256 -> 8, 512 -> 9) and the blocks are the same:

* encoder level 0: ``Conv4x4/2`` (no norm); levels 1..d-1: ``LeakyReLU(0.2)``,
  ``Conv4x4/2``, norm (no norm on the innermost level); channels
  ``ngf * min(2**i, 8)``;
* decoder: ``ReLU``, ``ConvTranspose4x4/2``, norm, then concatenation with the
  encoder feature of the same resolution (the skip connection); the outermost
  level ends with ``Tanh`` so outputs lie in [-1, 1] like the targets;
* ``Dropout(0.5)`` on the ``d - 5`` decoder levels just outside the innermost
  one (3 at 256 px, as in pix2pix), or on ``n_dropout`` levels if given.

``residual=True`` (not in pix2pix; off by default) makes the tanh output a
*change* added to the past image, ``clamp(past + tanh(.), -1, 1)``, where the
past image is the first ``out_channels`` channels of the condition (the order
:mod:`stsynth_lib.conditioning` guarantees), and the last layer starts at zero
(as ControlNet's zero convolutions), so the untrained generator *is* the
persistence baseline (future = past) and training only has to learn the change.
That matters when the training budget is small.

A residual generator also carries two buffers saved with its weights,
``residual_scale`` (1 while training) and ``residual_full_gap_months`` (0 = off):
the output is ``clamp(past + k * tanh(.), -1, 1)`` with
``k = residual_scale * min(1, gap / residual_full_gap_months)``, the gap being read
from the condition's gap plane (``gap_channel``). The trainer sets them after
training by calibrating on the validation split (see
``stsynth_lib.cgan.calibrate.calibrate_residual_scale``): k < 1 pulls the predicted
change towards "no change" where the model was over-confident, e.g. one month
ahead, where little real change happens.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

NORMS = ("instance", "batch", "none")


def norm_layer(kind: str):
    """Return a factory ``f(channels) -> nn.Module`` for ``instance`` / ``batch`` / ``none`` normalisation."""
    if kind == "instance":  # pix2pix: affine=False, no running stats
        return functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=False)
    if kind == "batch":
        return functools.partial(nn.BatchNorm2d, affine=True, track_running_stats=True)
    if kind == "none":
        return lambda _c: nn.Identity()
    raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")


def depth_for_size(tile_size_px: int) -> int:
    """Number of stride-2 levels that bring ``tile_size_px`` down to a 1 x 1 bottleneck."""
    d = int(round(math.log2(tile_size_px))) if tile_size_px > 0 else 0
    if tile_size_px < 8 or 2**d != tile_size_px:
        raise ValueError(
            f"tile_size_px={tile_size_px}: the U-Net depth follows the tile size and needs a power of two >= 8 "
            "(32, 64, 128, 256, 512, ...). Set tile_size_px in params/<profile>/common.yaml to one of these and "
            "rebuild the dataset (notebook 02); resize_to_px can bring odd mosaics to such a size."
        )
    return d


def level_channels(ngf: int, depth: int) -> list[int]:
    return [ngf * min(2**i, 8) for i in range(depth)]


class UNetGenerator(nn.Module):
    """pix2pix U-Net: ``(B, in_channels, H, W)`` condition -> ``(B, out_channels, H, W)`` image in [-1, 1].

    Parameters
    ----------
    in_channels, out_channels:
        Condition channels (see :mod:`stsynth_lib.conditioning`) and image bands.
    tile_size_px:
        Sets ``depth = log2(tile_size_px)`` when ``depth`` is not given.
    ngf:
        Filters of the first level (64 in pix2pix).
    norm:
        ``"instance"`` (default), ``"batch"`` (pix2pix's default, meant for batch size 1) or ``"none"``.
    dropout:
        Dropout probability on the innermost decoder levels (0.5 in pix2pix; 0 disables).
    n_dropout:
        How many decoder levels get dropout; ``None`` = ``max(0, depth - 5)`` as in pix2pix.
    residual:
        Output ``clamp(past + tanh(.), -1, 1)`` instead of ``tanh(.)`` (see the module docstring).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 3,
        tile_size_px: int = 256,
        ngf: int = 64,
        norm: str = "instance",
        dropout: float = 0.5,
        depth: int | None = None,
        n_dropout: int | None = None,
        residual: bool = False,
        gap_channel: int | None = None,
        gap_scale_months: float = 24.0,
    ):
        super().__init__()
        if residual and in_channels < out_channels:
            raise ValueError(f"residual=True needs the past image ({out_channels} bands) first in the condition, "
                             f"but the condition has only {in_channels} channels")
        self.residual = residual
        if gap_channel is not None and not 0 <= gap_channel < in_channels:
            raise ValueError(f"gap_channel={gap_channel} is not a channel of the {in_channels}-channel condition")
        self.gap_channel, self.gap_scale_months = gap_channel, float(gap_scale_months)
        self.depth = depth if depth is not None else depth_for_size(tile_size_px)
        if self.depth < 2:
            raise ValueError(f"depth must be >= 2, got {self.depth}")
        self.in_channels, self.out_channels = in_channels, out_channels
        Norm = norm_layer(norm)
        use_bias = norm != "batch"  # as in pix2pix: no conv bias before a BatchNorm
        ch = level_channels(ngf, self.depth)
        d = self.depth
        n_drop = max(0, d - 5) if n_dropout is None else n_dropout
        # decoder levels with dropout: the n_drop levels just outside the innermost one
        self.dropout_levels = sorted(range(max(1, d - 1 - n_drop), d - 1)) if dropout > 0 else []

        downs = []
        for i in range(d):
            cin = in_channels if i == 0 else ch[i - 1]
            layers: list[nn.Module] = [] if i == 0 else [nn.LeakyReLU(0.2, True)]
            layers.append(nn.Conv2d(cin, ch[i], 4, 2, 1, bias=use_bias))
            if 0 < i < d - 1:
                layers.append(Norm(ch[i]))
            downs.append(nn.Sequential(*layers))
        self.downs = nn.ModuleList(downs)

        ups = []
        for i in range(d):
            # up[i] maps resolution of e_i to resolution of e_{i-1} (or the output for i = 0)
            cin = ch[i] if i == d - 1 else 2 * ch[i]
            if i == 0:
                layers = [nn.ReLU(True), nn.ConvTranspose2d(cin, out_channels, 4, 2, 1), nn.Tanh()]
            else:
                layers = [nn.ReLU(True), nn.ConvTranspose2d(cin, ch[i - 1], 4, 2, 1, bias=use_bias), Norm(ch[i - 1])]
                if i in self.dropout_levels:
                    layers.append(nn.Dropout(dropout))
            ups.append(nn.Sequential(*layers))
        self.ups = nn.ModuleList(ups)
        if residual:
            # zero-initialised last layer: the untrained generator outputs exactly the past image
            head = self.ups[0][1]
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
            head._stsynth_zero_init = True  # init_weights leaves it at zero
            self.register_buffer("residual_scale", torch.ones(()))
            self.register_buffer("residual_full_gap_months", torch.zeros(()))

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected a (B, {self.in_channels}, H, W) condition, got shape {tuple(x.shape)}; "
                "check the GuidanceConfig used to build the condition matches the one the model was built with"
            )
        f = 2**self.depth
        if x.shape[-1] % f or x.shape[-2] % f:
            raise ValueError(
                f"input {x.shape[-2]}x{x.shape[-1]} px is not divisible by 2**depth={f}; "
                f"build the generator with tile_size_px={x.shape[-1]} (or a smaller depth)"
            )

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for down in self.downs:
            x = down(x)
            feats.append(x)
        return feats

    def gate(self, level: int, skip: torch.Tensor, gating: torch.Tensor) -> torch.Tensor:
        """Hook for subclasses: transform the skip feature of ``level`` given the coarser decoder feature."""
        return skip

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """The tanh output in [-1, 1]: the image (``residual=False``) or the change before scaling and clamping."""
        self._check(x)
        e = self.encode(x)
        h = e[-1]
        for i in range(self.depth - 1, 0, -1):
            u = self.ups[i](h)
            skip = self.gate(i - 1, e[i - 1], h)
            h = torch.cat([u, skip], 1)
        return self.ups[0](h)

    def change_scale(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, 1, 1)`` factor on the predicted change (see the module docstring)."""
        k = self.residual_scale.to(x.dtype).expand(x.shape[0]).reshape(-1, 1, 1, 1)
        if self.gap_channel is not None:
            # no .item() on the buffer (it would break a torch.compile graph): 0 = off selects a ramp of exactly 1
            full = self.residual_full_gap_months.to(x.dtype)
            gap_months = x[:, self.gap_channel].mean((-2, -1)) * self.gap_scale_months
            ramp = torch.clamp(gap_months / torch.where(full > 0, full, torch.ones_like(full)), max=1.0)
            k = k * torch.where(full > 0, ramp, torch.ones_like(ramp)).reshape(-1, 1, 1, 1)
        return k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.forward_head(x)
        if self.residual:
            out = torch.clamp(x[:, : self.out_channels] + self.change_scale(x).to(out.dtype) * out, -1.0, 1.0)
        return out
