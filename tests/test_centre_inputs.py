"""``centre_inputs``: a temporal generator that sees colours relative to the tile's mean colour (issue 13 round 4)."""

from __future__ import annotations

import pytest
import torch
import yaml

from stsynth_lib.conditioning import GuidanceConfig, build_condition, usable_frames
from stsynth_lib.data.dataset import SAME_MONTH_LAST_YEAR
from stsynth_lib.models.registry import build_generator, init_weights

from test_context import _train_cfg, long_dataset_dir  # noqa: F401  (the 15-month fixture)
from test_temporal_fusion import OFFSETS, _batch


def _generator(cfg, fusion: str, centre: bool, model: str = "pix2pix"):
    torch.manual_seed(0)
    G = init_weights(build_generator(model, cfg.n_channels, 3, 32, ngf=8, residual=True, temporal_fusion=fusion,
                                     channels=cfg.channel_names(), centre_inputs=centre))
    with torch.no_grad():  # leave the zero-initialised start: every layer matters
        for p in G.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return G.eval()


def _shift_images(x: torch.Tensor, names: list[str], offset: float) -> torch.Tensor:
    """Every image band of the condition plus ``offset`` (validity, age and time planes untouched)."""
    shift = torch.tensor([offset if "_b" in n else 0.0 for n in names])
    return x + shift[None, :, None, None]


@pytest.mark.parametrize("fusion", ["tile_reweight", "attention"])
def test_centred_generator_follows_a_brightness_offset_and_a_raw_one_does_not(long_dataset_dir, fusion):
    batch = _batch(long_dataset_dir, 6)
    cfg = GuidanceConfig(context_offsets_months=OFFSETS).resolve(False, 3)
    x = build_condition(batch, cfg) * 0.4 - 0.3  # well inside [-1, 1]: no clamping after the offset
    names = cfg.channel_names()
    for centre in (True, False):
        G = _generator(cfg, fusion, centre)
        with torch.no_grad():
            out, brighter = G(x), G(_shift_images(x, names, 0.2))
            start, start_b = G.residual_start(x), G.residual_start(_shift_images(x, names, 0.2))
        inside = (out.abs() < 0.95) & (brighter.abs() < 0.95)
        assert inside.float().mean() > 0.9
        moved = (brighter - out)[inside]
        if centre:
            assert torch.allclose(moved, torch.full_like(moved, 0.2), atol=1e-5)
            assert torch.allclose(start_b - start, torch.full_like(start, 0.2), atol=1e-5)
        else:
            assert (moved - 0.2).abs().max() > 1e-2


def test_centre_is_the_mean_of_the_usable_frames_and_the_untrained_output_is_the_base(long_dataset_dir):
    batch = _batch(long_dataset_dir, 6)
    cfg = GuidanceConfig(context_offsets_months=OFFSETS, residual_base="seasonal").resolve(False, 3)
    x = build_condition(batch, cfg)
    torch.manual_seed(0)
    G = init_weights(build_generator("pix2pix", cfg.n_channels, 3, 32, ngf=8, residual=True,
                                     temporal_fusion="tile_reweight", channels=cfg.channel_names(),
                                     centre_inputs=True)).eval()
    xc, m = G.centred(x)
    want = usable_frames(batch, cfg).mean((1, 3, 4))[:, :, None, None]
    assert torch.allclose(m, want, atol=1e-6)
    past = cfg.channel_names().index("past_b1")
    assert torch.allclose(xc[:, past : past + 3], x[:, past : past + 3] - m, atol=1e-6)
    assert torch.allclose(xc[:, :3], x[:, :3] - m, atol=1e-6)  # the residual base too
    gap = cfg.channel_names().index("gap_months_scaled")
    assert torch.equal(xc[:, gap], x[:, gap])  # time planes are no colour
    with torch.no_grad():  # zero-initialised heads: exactly the seasonal base, shifted back
        assert torch.allclose(G(x), x[:, :3].clamp(-1, 1), atol=1e-5)
        assert torch.allclose(G.residual_start(x), x[:, :3], atol=1e-5)


def test_centre_inputs_is_checked_saved_and_reloaded(tiny_dataset_dir, tmp_path):
    from stsynth_lib.cgan.model_io import load_generator
    from stsynth_lib.cgan.train import train_cgan

    with pytest.raises(ValueError, match="centre_inputs"):
        _train_cfg("d", "r", centre_inputs=True, context_offsets_months=OFFSETS)  # concat: no frames to centre on
    run = train_cgan(_train_cfg(tiny_dataset_dir, tmp_path / "c", max_steps=2, centre_inputs=True,
                                temporal_fusion="tile_reweight",
                                context_offsets_months=[0, -1, SAME_MONTH_LAST_YEAR]))
    assert yaml.safe_load((run / "model.yaml").read_text())["centre_inputs"] is True
    G, _ = load_generator(run, "best")
    assert G.centre_inputs
    plain = train_cgan(_train_cfg(tiny_dataset_dir, tmp_path / "p", max_steps=2, temporal_fusion="tile_reweight",
                                  context_offsets_months=[0, -1, SAME_MONTH_LAST_YEAR]))
    assert "centre_inputs" not in yaml.safe_load((plain / "model.yaml").read_text())  # older runs load unchanged
    assert not load_generator(plain, "best")[0].centre_inputs


@pytest.mark.parametrize("fusion", ["tile_reweight", "attention"])
def test_centred_output_is_its_start_plus_the_scaled_change(long_dataset_dir, fusion):
    """What calibration assumes: ``G(x) = clamp(residual_start(x) + k(gap) * forward_head(x))``, with a scale and a
    gap ramp set, for a centred generator too."""
    batch = _batch(long_dataset_dir, 6)
    cfg = GuidanceConfig(context_offsets_months=OFFSETS).resolve(False, 3)
    x = build_condition(batch, cfg)
    torch.manual_seed(0)
    G = init_weights(build_generator("pix2pix", cfg.n_channels, 3, 32, ngf=8, residual=True, temporal_fusion=fusion,
                                     channels=cfg.channel_names(), centre_inputs=True,
                                     gap_channel=cfg.channel_names().index("gap_months_scaled")))
    with torch.no_grad():
        for p in G.parameters():
            p.add_(0.05 * torch.randn_like(p))
        G.inner.residual_scale.fill_(0.6)
        G.inner.residual_full_gap_months.fill_(6.0)
    G.eval()
    with torch.no_grad():
        k = G.inner.change_scale(torch.cat([G.residual_start(x), x], 1))
        assert float(k.min()) < 0.6  # the gap ramp is active for the short gaps
        want = torch.clamp(G.residual_start(x) + k * G.forward_head(x), -1, 1)
        assert torch.allclose(G(x), want, atol=1e-6)


def test_tile_weights_figure_counts_the_centre_as_a_share_of_each_frame(long_dataset_dir):
    import matplotlib

    matplotlib.use("Agg")
    import numpy as np

    from stsynth_lib.cgan.plots import plot_tile_weights
    from stsynth_lib.data.dataset import PairedTileDataset

    cfg = GuidanceConfig(context_offsets_months=OFFSETS).resolve(False, 3)
    figures = []
    for centre in (False, True):
        torch.manual_seed(0)
        G = init_weights(build_generator("pix2pix", cfg.n_channels, 3, 32, ngf=8, residual=True,
                                         temporal_fusion="tile_reweight", channels=cfg.channel_names(),
                                         centre_inputs=centre))
        changes = torch.zeros(5, 3)
        changes[3] = 0.3  # last year's frame, every band
        with torch.no_grad():
            G.blend.head[-1].bias.copy_(changes.reshape(-1))
        ds = PairedTileDataset(long_dataset_dir, "all", context_offsets_months=OFFSETS)
        fig = plot_tile_weights(G, ds, cfg, n=1)
        bars = np.array([p.get_height() for p in fig.axes[0].patches])
        figures.append(bars[5:] - bars[:5])  # this tile minus the base
    assert np.allclose(figures[0], [0, 0, 0, 0.3, 0], atol=1e-6)
    # start = base + 0.3 (f_ly - m), m the mean of the 4 frames: f_ly's weight +0.225, each other frame -0.075
    assert np.allclose(figures[1], [-0.075, -0.075, -0.075, 0.225, 0], atol=1e-6)
