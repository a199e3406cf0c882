"""Attention U-Net generator: the pix2pix U-Net with additive attention gates on its skips.

Oktay et al. 2018, "Attention U-Net: Learning Where to Look for the Pancreas"
(arXiv:1804.03999), Fig. 2: for a skip feature ``x`` (resolution r) and the
gating signal ``g`` from the coarser decoder level (resolution r/2)::

    q     = psi(ReLU(W_x * x  +  W_g * g))       W_x: 2x2 conv, stride 2;  W_g, psi: 1x1 convs
    alpha = upsample(sigmoid(q))                 bilinear back to resolution r, values in (0, 1)
    x_hat = W(alpha * x)                         1x1 conv + norm

``x_hat`` replaces ``x`` in the concatenation. The gates start near 0.5
everywhere and learn to pass skip features where the future image differs from
what the coarse decoder already knows. :func:`attention_maps` returns the alphas
for a figure.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stsynth_lib.models.unet import UNetGenerator, level_channels, norm_layer


class AttentionGate(nn.Module):
    """Additive attention gate (Oktay et al. 2018) with the gating signal at half the skip's resolution."""

    def __init__(self, x_channels: int, g_channels: int, inter_channels: int | None = None, norm: str = "instance"):
        super().__init__()
        inter = inter_channels or max(1, x_channels // 2)
        self.theta_x = nn.Conv2d(x_channels, inter, 2, 2, 0, bias=False)
        self.phi_g = nn.Conv2d(g_channels, inter, 1, 1, 0, bias=True)
        self.psi = nn.Conv2d(inter, 1, 1, 1, 0, bias=True)
        Norm = norm_layer(norm)
        # 1x1 output transform; no norm at 1x1-ish resolutions where instance norm is undefined
        self.out = nn.Sequential(nn.Conv2d(x_channels, x_channels, 1), Norm(x_channels) if norm == "batch" else nn.Identity())
        self.last_alpha: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        q = self.psi(F.relu(self.theta_x(x) + self.phi_g(g), inplace=True))
        alpha = torch.sigmoid(F.interpolate(q, size=x.shape[-2:], mode="bilinear", align_corners=False))
        self.last_alpha = alpha.detach()
        return self.out(alpha * x)


class AttentionUNetGenerator(UNetGenerator):
    """:class:`UNetGenerator` with an :class:`AttentionGate` on every skip connection.

    Same arguments as :class:`UNetGenerator`. ``self.gates[j]`` gates the
    encoder feature of level ``j`` (resolution ``H / 2**(j+1)``).
    """

    def __init__(self, in_channels: int, out_channels: int = 3, tile_size_px: int = 256, ngf: int = 64,
                 norm: str = "instance", dropout: float = 0.5, depth: int | None = None, n_dropout: int | None = None,
                 residual: bool = False, gap_channel: int | None = None, gap_scale_months: float = 24.0):
        super().__init__(in_channels, out_channels, tile_size_px, ngf, norm, dropout, depth, n_dropout, residual,
                         gap_channel, gap_scale_months)
        ch = level_channels(ngf, self.depth)
        d = self.depth
        gates = []
        for j in range(d - 1):
            # gating signal = decoder input at level j+1: e_{d-1} (innermost) or cat(u, skip) = 2 * ch[j+1]
            g_ch = ch[j + 1] if j + 1 == d - 1 else 2 * ch[j + 1]
            gates.append(AttentionGate(ch[j], g_ch, norm=norm))
        self.gates = nn.ModuleList(gates)

    def gate(self, level: int, skip: torch.Tensor, gating: torch.Tensor) -> torch.Tensor:
        return self.gates[level](skip, gating)


@torch.no_grad()
def attention_maps(model: AttentionUNetGenerator, condition: torch.Tensor, upsample: bool = True) -> list[torch.Tensor]:
    """Run ``model`` on ``condition`` and return one attention map per gate, finest level first.

    Each map is ``(B, 1, H, W)`` in (0, 1) (bilinearly upsampled to the input size when
    ``upsample``; else at the gate's own resolution ``H / 2**(j+1)``). The model is
    run in eval mode and put back in its previous mode.
    """
    net = getattr(model, "inner", model)  # a temporal-attention generator wraps the attention U-Net
    if not isinstance(net, AttentionUNetGenerator):
        raise TypeError(f"attention_maps needs an AttentionUNetGenerator, got {type(net).__name__}")
    was_training = model.training
    model.eval()
    try:
        model(condition)  # the whole model: a wrapper puts its blend in front of the condition
        maps = [g.last_alpha for g in net.gates]
    finally:
        model.train(was_training)
    if upsample:
        maps = [F.interpolate(m.float(), size=condition.shape[-2:], mode="bilinear", align_corners=False) for m in maps]
    return maps
