"""Build cGAN generators and discriminators by name: ``pix2pix`` or ``attention_unet``."""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from stsynth_lib.models.attention_unet import AttentionUNetGenerator
from stsynth_lib.models.patchgan import PatchGANDiscriminator
from stsynth_lib.models.unet import UNetGenerator

GENERATORS: dict[str, Callable[..., nn.Module]] = {
    "pix2pix": UNetGenerator,
    "attention_unet": AttentionUNetGenerator,
}


TEMPORAL_FUSIONS = ("concat", "attention", "tile_reweight")


def build_generator(name: str, in_channels: int, out_channels: int = 3, tile_size_px: int = 256,
                    temporal_fusion: str = "concat", channels: list[str] | None = None, **kwargs: Any) -> nn.Module:
    """Generator ``name`` (``pix2pix`` | ``attention_unet``); ``kwargs``: ngf, norm, dropout, depth, n_dropout, residual,
    gap_channel, gap_scale_months. ``temporal_fusion="attention"`` wraps it in
    :class:`~stsynth_lib.models.temporal.TemporalAttentionGenerator`, ``"tile_reweight"`` in
    :class:`~stsynth_lib.models.temporal.TileReweightGenerator` (both need the condition's ``channels`` names);
    ``"concat"`` (default) is the plain generator over stacked channels."""
    if name not in GENERATORS:
        raise ValueError(f"unknown generator {name!r}; choose one of {sorted(GENERATORS)}")
    if temporal_fusion not in TEMPORAL_FUSIONS:
        raise ValueError(f"unknown temporal_fusion {temporal_fusion!r}; choose one of {TEMPORAL_FUSIONS}")
    if temporal_fusion != "concat":
        from stsynth_lib.models.temporal import TemporalAttentionGenerator, TileReweightGenerator

        if channels is None or len(channels) != in_channels:
            raise ValueError(f"temporal_fusion: {temporal_fusion} needs the {in_channels} condition channel names, got "
                             f"{None if channels is None else len(channels)}")
        wrapper = TemporalAttentionGenerator if temporal_fusion == "attention" else TileReweightGenerator
        return wrapper(GENERATORS[name], channels, out_channels, tile_size_px, **kwargs)
    return GENERATORS[name](in_channels=in_channels, out_channels=out_channels, tile_size_px=tile_size_px, **kwargs)


def build_discriminator(cond_channels: int, image_channels: int = 3, ndf: int = 64, n_layers: int = 3,
                        norm: str = "instance") -> PatchGANDiscriminator:
    """PatchGAN seeing the condition and an image (``cond_channels + image_channels`` input channels)."""
    return PatchGANDiscriminator(cond_channels + image_channels, ndf=ndf, n_layers=n_layers, norm=norm)


def init_weights(net: nn.Module, gain: float = 0.02) -> nn.Module:
    """pix2pix initialisation: conv weights ~ N(0, 0.02), batch-norm weights ~ N(1, 0.02), biases 0."""
    for m in net.modules():
        if getattr(m, "_stsynth_zero_init", False):  # e.g. the residual generator's output layer
            nn.init.zeros_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)
    return net
