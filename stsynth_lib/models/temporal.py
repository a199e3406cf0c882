"""Attention over time for the context cGANs (``temporal_fusion: attention``), the alternative to channel stacking.

Plain stacking (``temporal_fusion: concat``) hands the U-Net every context frame as extra channels and lets the
residual start from the past image; the U-Net must learn from scratch to take colours from older frames.
:class:`TemporalBlend` instead scores each frame per pixel with one small convolutional net shared by all frames
(its input: the frame's bands, its validity and age planes, and the pair's time planes), adds a learned bias per
frame slot, and takes a softmax over the frames that are present and valid at that pixel. The blend
``sum_k w_k * frame_k`` is where the residual U-Net starts (:class:`TemporalAttentionGenerator`), so the generator
learns both which past frames to trust where (for example the same month of last year for the season's colours,
the last frame for what was built) and a change on top.

At initialisation every score is 0: the start is the mean of the valid frames at each pixel. Absent frames
(``context_present`` 0, e.g. before the series starts) and invalid pixels (clouds, no-data) get weight 0; the past
image is always a candidate. Known limit: the condition carries no validity plane for the past image itself, so a
cloud in the past image is not masked (the scorer can only learn to see it from its colours).

Frames are found by the condition's channel names (:meth:`stsynth_lib.conditioning.GuidanceConfig.channel_names`):
``past_b*`` (the past image) and, per extra context frame ``<tag>``, ``<tag>_b*``, ``<tag>_valid`` and
``<tag>_age_scaled``; the time planes are ``gap_months_scaled`` and ``future_month_sin/cos`` when present.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

NEG = -1.0e4  # the score of a frame that cannot be used at a pixel (softmax weight ~0)
TIME_PLANES = ("gap_months_scaled", "future_month_sin", "future_month_cos")


def context_frames(channels: Sequence[str], n_bands: int) -> list[dict]:
    """``[{"tag", "bands": [idx], "valid": idx | None, "age": idx | None}]``: the past image first, then each extra
    context frame, as indices into a condition with these channel names."""
    names = list(channels)
    idx = {n: i for i, n in enumerate(names)}
    past = [f"past_b{i + 1}" for i in range(n_bands)]
    missing = [n for n in past if n not in idx]
    if missing:
        raise ValueError(f"temporal attention needs the past image's channels {past} in the condition; missing {missing}")
    frames = [{"tag": "past", "bands": [idx[n] for n in past], "valid": None, "age": None}]
    for n in names:
        if n.startswith("ctx_") and n.endswith("_b1"):
            tag = n[: -len("_b1")]
            bands = [f"{tag}_b{i + 1}" for i in range(n_bands)]
            need = bands + [f"{tag}_valid", f"{tag}_age_scaled"]
            if any(b not in idx for b in need):
                raise ValueError(f"context frame {tag!r}: the condition lacks {[b for b in need if b not in idx]}")
            frames.append({"tag": tag, "bands": [idx[b] for b in bands], "valid": idx[f"{tag}_valid"],
                           "age": idx[f"{tag}_age_scaled"]})
    if len(frames) < 2:
        raise ValueError("temporal attention needs context frames besides the past image: set "
                         "context_offsets_months, e.g. [0, -1, -2, same_month_last_year]")
    return frames


def usable_condition_frames(x: torch.Tensor, frames: list[dict]) -> torch.Tensor:
    """``(B, K, n_bands, H, W)``: each past frame of condition ``x`` where its validity plane is 1, else the past
    image (as :func:`stsynth_lib.conditioning.usable_frames`)."""
    past = x[:, frames[0]["bands"]]
    out = [past]
    for f in frames[1:]:
        valid = x[:, f["valid"] : f["valid"] + 1]
        out.append(past + valid * (x[:, f["bands"]] - past))
    return torch.stack(out, 1)


class TemporalBlend(nn.Module):
    """Per-pixel softmax weights over the past frames of a condition, and their weighted mean (see the module
    docstring). ``forward(x) -> (blend (B, n_bands, H, W), weights (B, K, H, W))``."""

    def __init__(self, channels: Sequence[str], n_bands: int, hidden: int = 16):
        super().__init__()
        self.frames = context_frames(channels, n_bands)
        self.tags = [f["tag"] for f in self.frames]
        self.time_idx = [i for i, n in enumerate(channels) if n in TIME_PLANES]
        self.n_bands = n_bands
        n_in = n_bands + 2 + len(self.time_idx)  # bands, validity, age, time planes
        self.score = nn.Sequential(
            nn.Conv2d(n_in, hidden, 3, padding=1), nn.ReLU(True),
            nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(True),
            nn.Conv2d(hidden, 1, 1),
        )
        last = self.score[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        last._stsynth_zero_init = True  # init_weights keeps it at zero: the first blend is the mean of valid frames
        self.slot_bias = nn.Parameter(torch.zeros(len(self.frames)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, _, h, w = x.shape
        time = x[:, self.time_idx] if self.time_idx else x.new_zeros(b, 0, h, w)
        images, feats, usable = [], [], []
        for f in self.frames:
            img = x[:, f["bands"]]
            ones, zeros = x.new_ones(b, 1, h, w), x.new_zeros(b, 1, h, w)
            valid = ones if f["valid"] is None else x[:, f["valid"] : f["valid"] + 1]
            age = zeros if f["age"] is None else x[:, f["age"] : f["age"] + 1]
            images.append(img)
            feats.append(torch.cat([img, valid, age, time], 1))
            usable.append(valid > 0.5)
        k = len(self.frames)
        logits = self.score(torch.cat(feats, 0)).reshape(k, b, h, w).permute(1, 0, 2, 3)  # one net for every frame
        logits = logits + self.slot_bias.to(logits.dtype).reshape(1, k, 1, 1)
        logits = logits.masked_fill(~torch.cat(usable, 1), NEG)
        weights = torch.softmax(logits.float(), 1).to(x.dtype)
        blend = (weights.unsqueeze(2) * torch.stack(images, 1)).sum(1)
        return blend, weights


class TileReweight(nn.Module):
    """Per-tile corrections of the start's frame weights (``temporal_fusion: tile_reweight``): a small strided
    encoder reads the whole condition, pools it over the tile (with the condition's own channel means, so the time
    planes and each frame's present/valid share reach the head unnormalised) and outputs, per band, one weight
    change per past frame and a bias. ``forward(x) -> (start (B, n_bands, H, W), changes (B, K + 1, n_bands))``:
    ``start = x[:, :n_bands] + sum_k dw_k * frame_k + db``, ``x[:, :n_bands]`` being the condition's first image
    (the residual base, e.g. the linear blend fitted on train) and ``frame_k`` a past frame where it is present and
    valid, else the past image (as :func:`stsynth_lib.conditioning.usable_frames`). The head starts at zero, so the
    first start is exactly the residual base.

    Why: the fitted linear blend uses one set of weights per time gap everywhere. Which frames resemble the future
    depends on the tile (a hazy or off-colour month, a series whose last months drift); a per-pixel softmax
    (:class:`TemporalBlend`) cannot scale or shift colours, a per-tile linear correction can."""

    def __init__(self, channels: Sequence[str], n_bands: int, width: int = 32, hidden: int = 128):
        # width, hidden and the layers are not written to model.yaml: changing them breaks loading saved runs
        super().__init__()
        self.frames = context_frames(channels, n_bands)
        self.tags = [f["tag"] for f in self.frames]
        self.n_bands = n_bands
        n_in, w = len(channels), width
        layers, c_in = [], n_in
        for i, c_out in enumerate((w, 2 * w, 4 * w, 4 * w)):
            layers += [nn.Conv2d(c_in, c_out, 4, 2, 1)] + ([nn.GroupNorm(8, c_out)] if i else []) + [nn.LeakyReLU(0.2)]
            c_in = c_out
        self.encoder = nn.Sequential(*layers)
        k = len(self.frames)
        self.head = nn.Sequential(nn.Linear(4 * w + n_in, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, (k + 1) * n_bands))
        last = self.head[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        last._stsynth_zero_init = True  # init_weights keeps it at zero: the first start is the residual base

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = torch.cat([self.encoder(x).mean((2, 3)), x.mean((2, 3))], 1)
        k = len(self.frames)
        changes = self.head(pooled).reshape(-1, k + 1, self.n_bands).to(x.dtype)
        frames = usable_condition_frames(x, self.frames)
        start = x[:, : self.n_bands] + (changes[:, :k, :, None, None] * frames).sum(1) + changes[:, k, :, None, None]
        return start, changes


class TemporalAttentionGenerator(nn.Module):
    """A residual U-Net generator (``inner``, pix2pix or attention U-Net) that starts from :class:`TemporalBlend`'s
    blend of the past frames instead of the past image: ``inner`` sees ``[blend, condition]`` (both centred on the
    tile's mean colour with ``centre_inputs``, see :meth:`centred`) and adds its change to the blend. Exposes the
    residual interface of :class:`~stsynth_lib.models.unet.UNetGenerator`
    (``residual``, ``forward_head``, ``residual_scale``, ``residual_full_gap_months``, ``gap_channel``) plus
    :meth:`residual_start` (the blend) and :meth:`frame_weights` (per-pixel weights; subclasses may start otherwise,
    see :class:`TileReweightGenerator`)."""

    fusion = "attention"

    def __init__(self, inner_cls, channels: Sequence[str], out_channels: int = 3, tile_size_px: int = 256,
                 gap_channel: int | None = None, blend_hidden: int = 16, centre_inputs: bool = False, **kwargs):
        super().__init__()
        if not kwargs.pop("residual", True):
            raise ValueError(f"temporal_fusion: {self.fusion} is a residual generator: set residual: true")
        self.centre_inputs = bool(centre_inputs)
        frames = context_frames(channels, out_channels)
        # per condition channel: which band it is (the first image, i.e. the residual base, and every frame's bands)
        # and 1 for such image channels, 0 for time, validity and age planes (not saved: rebuilt from the channels)
        band_of, is_image = torch.zeros(len(channels), dtype=torch.long), torch.zeros(len(channels))
        for idx in [list(range(out_channels))] + [f["bands"] for f in frames]:
            band_of[idx], is_image[idx] = torch.arange(out_channels), 1.0
        self.register_buffer("band_of_channel", band_of, persistent=False)
        self.register_buffer("is_image_channel", is_image, persistent=False)
        self._frames = frames
        self.channels = list(channels)
        self.in_channels, self.out_channels = len(self.channels), out_channels
        self.blend = self.make_start(self.channels, out_channels, blend_hidden)
        self.gap_channel = gap_channel
        self.inner = inner_cls(in_channels=self.in_channels + out_channels, out_channels=out_channels,
                               tile_size_px=tile_size_px, residual=True,
                               gap_channel=None if gap_channel is None else gap_channel + out_channels, **kwargs)
        self.residual = True

    @staticmethod
    def make_start(channels: Sequence[str], n_bands: int, blend_hidden: int) -> nn.Module:
        return TemporalBlend(channels, n_bands, hidden=blend_hidden)

    @property
    def residual_scale(self) -> torch.Tensor:
        return self.inner.residual_scale

    @property
    def residual_full_gap_months(self) -> torch.Tensor:
        return self.inner.residual_full_gap_months

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected a (B, {self.in_channels}, H, W) condition, got shape {tuple(x.shape)}; "
                             "check the GuidanceConfig used to build the condition matches the model's")

    def centred(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(condition, centre (B, n_bands, 1, 1))``. With ``centre_inputs`` the centre is the tile's mean colour
        over its usable past frames, and every image channel of the condition has it subtracted: the networks then
        see only colours relative to the tile's own, and the output is shifted back, so a brighter or darker tile
        gets the same change: an offset on every image channel of the condition (the residual base included, which
        a fitted linear start around 0, ``linear_centre: none``, does not follow exactly) moves the output by that
        offset, up to the clamp to [-1, 1]. Elementwise (no matmul), so mixed precision subtracts and adds back the
        same numbers. Without it: ``x`` and 0."""
        self._check(x)
        if not self.centre_inputs:
            return x, x.new_zeros(x.shape[0], self.out_channels, 1, 1)
        m = usable_condition_frames(x, self._frames).mean((1, 3, 4))  # (B, n_bands)
        shift = m[:, self.band_of_channel] * self.is_image_channel.to(m.dtype)  # (B, in_channels)
        return x - shift[:, :, None, None], m[:, :, None, None]

    def residual_start(self, x: torch.Tensor) -> torch.Tensor:
        """The image the change is added to: the blend of the past frames."""
        xc, m = self.centred(x)
        return self.blend(xc)[0] + m

    def frame_weights(self, x: torch.Tensor) -> tuple[list[str], torch.Tensor]:
        """``(frame tags, (B, K, H, W) weights)``: how much each past frame contributes at each pixel."""
        return self.blend.tags, self.blend(self.centred(x)[0])[1]

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        xc, _ = self.centred(x)
        return self.inner.forward_head(torch.cat([self.blend(xc)[0], xc], 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xc, m = self.centred(x)
        inner_x = torch.cat([self.blend(xc)[0], xc], 1)
        if not self.centre_inputs:
            return self.inner(inner_x)
        change = self.inner.change_scale(inner_x).to(x.dtype) * self.inner.forward_head(inner_x)
        return torch.clamp(inner_x[:, : self.out_channels] + m + change, -1.0, 1.0)


class TileReweightGenerator(TemporalAttentionGenerator):
    """:class:`TemporalAttentionGenerator` whose start is :class:`TileReweight`'s per-tile reweighting of the residual
    base (``temporal_fusion: tile_reweight``). It has no per-pixel frame weights: :meth:`tile_changes` gives the
    per-tile weight changes instead."""

    fusion = "tile_reweight"

    @staticmethod
    def make_start(channels: Sequence[str], n_bands: int, blend_hidden: int) -> nn.Module:
        return TileReweight(channels, n_bands)

    def frame_weights(self, x: torch.Tensor) -> tuple[list[str], torch.Tensor]:
        raise ValueError("a temporal_fusion: tile_reweight generator has no per-pixel frame weights; see tile_changes")

    def tile_changes(self, x: torch.Tensor) -> tuple[list[str], torch.Tensor]:
        """``(frame tags + ["bias"], (B, K + 1, n_bands))``: the per-tile weight changes and bias of the start (with
        ``centre_inputs`` the weights act on the frames minus the tile's mean colour)."""
        return self.blend.tags + ["bias"], self.blend(self.centred(x)[0])[1]
