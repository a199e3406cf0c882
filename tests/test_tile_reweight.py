"""Per-tile reweighting of the residual start (``temporal_fusion: tile_reweight``, issue 13 round 3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from stsynth_lib.conditioning import GuidanceConfig, build_condition, usable_frames
from stsynth_lib.data.dataset import SAME_MONTH_LAST_YEAR, PairedTileDataset
from stsynth_lib.models.registry import build_generator, init_weights
from stsynth_lib.models.temporal import TileReweightGenerator

from test_context import _train_cfg, long_dataset_dir  # noqa: F401  (the 15-month fixture)
from test_temporal_fusion import OFFSETS, _batch, resumed_generators


def _generator(cfg, model="pix2pix"):
    return init_weights(build_generator(model, cfg.n_channels, 3, 32, ngf=8, residual=True,
                                        temporal_fusion="tile_reweight", channels=cfg.channel_names()))


@pytest.mark.parametrize("model", ["pix2pix", "attention_unet"])
def test_untrained_generator_outputs_the_residual_base(long_dataset_dir, model):
    torch.manual_seed(0)
    batch = _batch(long_dataset_dir, 6)
    cfg = GuidanceConfig(context_offsets_months=OFFSETS, residual_base="seasonal").resolve(False, 3)
    x = build_condition(batch, cfg)
    G = _generator(cfg, model).eval()
    assert isinstance(G, TileReweightGenerator)
    with torch.no_grad():
        assert torch.equal(G.residual_start(x), x[:, :3])  # the seasonal blend, untouched
        assert torch.allclose(G(x), x[:, :3].clamp(-1, 1), atol=1e-6)


def test_start_is_the_base_plus_per_tile_frame_weights(long_dataset_dir):
    """Set the head's output by hand: the start must be base + dw * usable frame + db, the usable frame being the
    context frame where present and valid and the past image elsewhere (as ``usable_frames``)."""
    batch = _batch(long_dataset_dir)
    cfg = GuidanceConfig(context_offsets_months=OFFSETS).resolve(False, 3)
    x = build_condition(batch, cfg)
    G = _generator(cfg)
    tags, _ = G.tile_changes(x)
    assert tags == ["past", "ctx_t0-1", "ctx_t0-2", "ctx_last_year", "bias"]
    k_ly = tags.index("ctx_last_year")
    changes = torch.zeros(len(tags), 3)
    changes[k_ly, 1] = 0.5  # band 2 takes half of last year's frame more
    changes[-1, 0] = 0.1  # band 1 is shifted
    with torch.no_grad():
        G.blend.head[-1].bias.copy_(changes.reshape(-1))
        start = G.residual_start(x)
    frames = usable_frames(batch, cfg)  # offsets order: 0, -1, -2, same month last year
    want = x[:, :3].clone()
    want[:, 1] += 0.5 * frames[:, 3, 1]
    want[:, 0] += 0.1
    assert torch.allclose(start, want, atol=1e-5)
    absent = ~torch.as_tensor(batch["context_present"])[:, 3].bool()
    assert absent.any()  # where last year is missing the past image stands in for it
    assert torch.allclose(start[absent, 1], x[absent, 1] * 1.5, atol=1e-5)


def test_one_step_moves_the_tile_weights(long_dataset_dir):
    torch.manual_seed(0)
    batch = _batch(long_dataset_dir, 6)
    cfg = GuidanceConfig(context_offsets_months=OFFSETS).resolve(False, 3)
    x = build_condition(batch, cfg)
    G = _generator(cfg).train()
    before = G.blend.head[-1].weight.detach().clone()
    (G(x) - batch["future"]).abs().mean().backward()
    torch.optim.SGD(G.parameters(), lr=0.1).step()
    assert not torch.equal(before, G.blend.head[-1].weight)
    with pytest.raises(ValueError, match="tile_changes"):
        G.frame_weights(x)


def test_tile_reweight_options_are_checked():
    with pytest.raises(ValueError, match="changes the residual's start"):
        _train_cfg("d", "r", residual=False, temporal_fusion="tile_reweight", context_offsets_months=OFFSETS)
    with pytest.raises(ValueError, match="context_offsets_months"):
        _train_cfg("d", "r", temporal_fusion="tile_reweight", context_offsets_months=[0])
    for base in ("past", "seasonal", "linear"):  # any residual base can be reweighted
        assert _train_cfg("d", "r", temporal_fusion="tile_reweight", context_offsets_months=OFFSETS,
                          residual_base=base).temporal_fusion == "tile_reweight"


def test_tile_reweight_cgan_trains_calibrates_reloads_and_resumes(tiny_dataset_dir, tmp_path):
    from stsynth_lib.cgan.model_io import load_generator
    from stsynth_lib.cgan.plots import plot_frame_weights
    from stsynth_lib.cgan.train import train_cgan
    from stsynth_lib.cgan.predictor import predict_and_score

    kw = dict(context_offsets_months=[0, -1, SAME_MONTH_LAST_YEAR], temporal_fusion="tile_reweight",
              checkpoint_every_steps=2)
    cal = train_cgan(_train_cfg(tiny_dataset_dir, tmp_path / "cal", calibrate_residual_scale=True, **kw))
    assert yaml.safe_load((cal / "model.yaml").read_text())["temporal_fusion"] == "tile_reweight"
    G, guide = load_generator(cal, "best")
    assert isinstance(G, TileReweightGenerator)
    best = yaml.safe_load((cal / "best" / "best.yaml").read_text())
    assert float(G.residual_scale) == pytest.approx(best["residual_scale"])
    df = predict_and_score(cal, PairedTileDataset(tiny_dataset_dir, "test", max_pairs=3), tmp_path / "pred",
                           progress=False)
    assert len(df) == 3 and np.isfinite(df["l1"]).all()
    with pytest.raises(ValueError, match="temporal_fusion"):
        plot_frame_weights(G, PairedTileDataset(tiny_dataset_dir, "val"), guide)
    from stsynth_lib.predict import load_predictor

    pred = load_predictor(cal)  # the start pools over its input: whole images are cut into trained-size tiles
    assert pred.tile_size_px == pred.trained_tile_size_px > 0
    # 2 steps + resume to 4 equal 4 steps at once, the tile encoder included
    a, b = resumed_generators(tiny_dataset_dir, tmp_path, "tile_reweight")
    assert any(k.startswith("blend.encoder.") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_tile_weights_figure_shows_fitted_and_tile_weights(long_dataset_dir):
    import matplotlib

    matplotlib.use("Agg")
    from stsynth_lib.cgan.plots import plot_tile_weights

    fitted = tuple((g, (0.4, 0.2, 0.1, 0.3), -0.05 * g) for g in range(1, 13))  # weights in the offsets' order
    cfg = GuidanceConfig(context_offsets_months=OFFSETS, residual_base="linear", linear_base=fitted).resolve(False, 3)
    G = _generator(cfg)
    changes = torch.zeros(5, 3)
    changes[3] = torch.tensor([0.3, 0.0, 0.0])  # last year's frame, band 1 only: +0.1 in the band mean
    with torch.no_grad():
        G.blend.head[-1].bias.copy_(changes.reshape(-1))
    ds = PairedTileDataset(long_dataset_dir, "all", context_offsets_months=OFFSETS)
    fig = plot_tile_weights(G, ds, cfg, n=1)
    bars = [p.get_height() for p in fig.axes[0].patches]
    gap = int(fig.axes[0].get_title().rsplit("+", 1)[1].split()[0])
    grey, blue = np.array(bars[:5]), np.array(bars[5:])
    assert np.allclose(grey[:4], [0.4, 0.2, 0.1, 0.3])  # past, t0-1, t0-2, last year: the fitted weights
    assert np.allclose(blue - grey, [0, 0, 0, 0.1, 0], atol=1e-6)
    assert grey[4] == pytest.approx(-0.05 * gap)  # the bias of the pair's gap
    with pytest.raises(ValueError, match="tile_reweight"):
        plot_tile_weights(build_generator("pix2pix", cfg.n_channels, 3, 32, ngf=8, residual=True), ds, cfg)
    # the notebooks' entry point picks the figure by the generator's fusion
    from stsynth_lib.cgan.plots import plot_start_weights

    same = plot_start_weights(G, ds, cfg, n=1)
    assert [p.get_height() for p in same.axes[0].patches] == bars
    with pytest.raises(ValueError, match="attention or tile_reweight"):
        plot_start_weights(build_generator("pix2pix", cfg.n_channels, 3, 32, ngf=8, residual=True), ds, cfg)


def test_frames_keep_their_weights_in_any_offset_order(long_dataset_dir):
    """Offsets not starting at 0: each weight change still multiplies its own frame (found by channel name), not the
    frame at the same place in ``context_offsets_months``."""
    other = [-1, 0, SAME_MONTH_LAST_YEAR]
    ds = PairedTileDataset(long_dataset_dir, "all", context_offsets_months=other)
    from stsynth_lib.training import collate

    batch = collate([ds[i] for i in range(len(ds))])
    cfg = GuidanceConfig(context_offsets_months=other).resolve(False, 3)
    x = build_condition(batch, cfg)
    G = _generator(cfg)
    tags, _ = G.tile_changes(x)
    changes = torch.zeros(len(tags), 3)
    changes[tags.index("ctx_t0-1"), 0] = 0.25
    changes[tags.index("ctx_last_year"), 2] = 0.5
    with torch.no_grad():
        G.blend.head[-1].bias.copy_(changes.reshape(-1))
        start = G.residual_start(x)
    frames = usable_frames(batch, cfg)  # in the offsets' order: t0-1, t0, last year
    want = batch["past"].clone()
    want[:, 0] += 0.25 * frames[:, 0, 0]
    want[:, 2] += 0.5 * frames[:, 2, 2]
    assert torch.allclose(start, want, atol=1e-5)
    assert not torch.allclose(frames[:, 0, 0], frames[:, 2, 0])  # the two frames differ: the test can tell them apart
