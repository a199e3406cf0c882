"""Attention over time (``temporal_fusion: attention``) and where a residual generator's change starts."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import yaml

from stsynth_lib.conditioning import GuidanceConfig, build_condition, seasonal_base
from stsynth_lib.data.dataset import SAME_MONTH_LAST_YEAR, PairedTileDataset
from stsynth_lib.models.registry import build_generator
from stsynth_lib.models.temporal import TemporalAttentionGenerator, TemporalBlend, context_frames
from stsynth_lib.training import collate

from test_context import _train_cfg, long_dataset_dir  # noqa: F401  (the 15-month fixture)

OFFSETS = [0, -1, -2, SAME_MONTH_LAST_YEAR]


def _batch(dataset_dir, n=None):
    """All pairs, or the first ``n`` of those with an older frame (the first months of a series have none)."""
    ds = PairedTileDataset(dataset_dir, "all", context_offsets_months=OFFSETS)
    batch = collate([ds[i] for i in range(len(ds))])
    if n is None:
        return batch
    keep = torch.as_tensor(batch["context_present"])[:, 1:].any(1).nonzero()[:n, 0].tolist()
    assert len(keep) == n
    return collate([ds[i] for i in keep])


def test_frames_are_found_by_channel_name():
    cfg = GuidanceConfig(context_offsets_months=OFFSETS).resolve(False, 3)
    names = cfg.channel_names()
    frames = context_frames(names, 3)
    assert [f["tag"] for f in frames] == ["past", "ctx_t0-1", "ctx_t0-2", "ctx_last_year"]
    for f in frames[1:]:
        assert [names[i] for i in f["bands"]] == [f"{f['tag']}_b{i}" for i in (1, 2, 3)]
        assert names[f["valid"]] == f"{f['tag']}_valid" and names[f["age"]] == f"{f['tag']}_age_scaled"
    with pytest.raises(ValueError, match="context_offsets_months"):
        context_frames(GuidanceConfig().resolve(False, 3).channel_names(), 3)


def test_untrained_blend_is_the_mean_of_the_usable_frames(long_dataset_dir):
    batch = _batch(long_dataset_dir)
    cfg = GuidanceConfig(context_offsets_months=OFFSETS).resolve(False, 3)
    x = build_condition(batch, cfg)
    blend, w = TemporalBlend(cfg.channel_names(), 3)(x)
    frames = torch.stack([batch["past"]] + [batch["context"][:, k] for k in (1, 2, 3)], 1)  # (B, 4, 3, H, W)
    usable = torch.stack([torch.ones_like(batch["valid"])] + [
        batch["context_valid"][:, k] * torch.as_tensor(batch["context_present"])[:, k, None, None, None].float()
        for k in (1, 2, 3)], 1)  # (B, 4, 1, H, W)
    want = (frames * usable).sum(1) / usable.sum(1)
    assert torch.allclose(blend, want, atol=1e-5)
    assert torch.allclose(w.sum(1), torch.ones_like(w[:, 0]), atol=1e-5)
    absent = ~torch.as_tensor(batch["context_present"])[:, 3].bool()
    assert absent.any() and float(w.detach()[absent][:, 3].max()) < 1e-6  # no frame last year: weight 0


def test_untrained_generator_outputs_the_blend_and_learns_weights(long_dataset_dir):
    torch.manual_seed(0)
    batch = _batch(long_dataset_dir, 6)
    cfg = GuidanceConfig(context_offsets_months=OFFSETS).resolve(False, 3)
    x = build_condition(batch, cfg)
    G = build_generator("pix2pix", cfg.n_channels, 3, 32, ngf=8, residual=True, temporal_fusion="attention",
                        channels=cfg.channel_names())
    assert isinstance(G, TemporalAttentionGenerator)
    with torch.no_grad():
        assert torch.allclose(G.eval()(x), G.residual_start(x).clamp(-1, 1), atol=1e-6)
    # one gradient step moves the blend's scores (the weights are learned, not fixed)
    G.train()
    before = [p.detach().clone() for p in G.blend.parameters()]
    loss = (G(x) - batch["future"]).abs().mean()
    loss.backward()
    torch.optim.SGD(G.parameters(), lr=0.1).step()
    assert any(not torch.equal(a, b) for a, b in zip(before, G.blend.parameters()))


def test_attention_options_are_checked():
    with pytest.raises(ValueError, match="residual"):
        _train_cfg("d", "r", residual=False, temporal_fusion="attention", context_offsets_months=OFFSETS)
    with pytest.raises(ValueError, match="context_offsets_months"):
        _train_cfg("d", "r", temporal_fusion="attention", context_offsets_months=[0])
    with pytest.raises(ValueError, match="temporal_fusion"):
        _train_cfg("d", "r", temporal_fusion="transformer", context_offsets_months=OFFSETS)
    with pytest.raises(ValueError, match="residual_base: past"):
        _train_cfg("d", "r", temporal_fusion="attention", context_offsets_months=OFFSETS, residual_base="seasonal")
    with pytest.raises(ValueError, match="channel names"):
        build_generator("pix2pix", 10, 3, 32, residual=True, temporal_fusion="attention", channels=None)


@pytest.mark.parametrize("model", ["pix2pix", "attention_unet"])
def test_attention_cgan_trains_calibrates_saves_and_reloads(tiny_dataset_dir, tmp_path, model):
    from stsynth_lib.cgan.model_io import load_generator
    from stsynth_lib.cgan.train import train_cgan
    from stsynth_lib.cgan.predictor import predict_and_score

    offsets = [0, -1, SAME_MONTH_LAST_YEAR]
    run = train_cgan(_train_cfg(tiny_dataset_dir, tmp_path / "runs", model=model, context_offsets_months=offsets,
                                temporal_fusion="attention", calibrate_residual_scale=True))
    spec = yaml.safe_load((run / "model.yaml").read_text())
    assert spec["temporal_fusion"] == "attention"
    G, guide = load_generator(run, "best")
    assert isinstance(G, TemporalAttentionGenerator) and guide.context_offsets_months == tuple(offsets)
    assert (run / "best" / "residual_scale.csv").is_file()
    best = yaml.safe_load((run / "best" / "best.yaml").read_text())
    assert float(G.residual_scale) == pytest.approx(best["residual_scale"])  # the calibrated scale reached the model
    assert float(G.residual_full_gap_months) == pytest.approx(best["residual_full_gap_months"])
    df = predict_and_score(run, PairedTileDataset(tiny_dataset_dir, "test", max_pairs=3), tmp_path / "pred",
                           progress=False)
    assert len(df) == 3 and np.isfinite(df["l1"]).all()
    # a run without the key (every older run) is plain channel stacking
    plain = train_cgan(_train_cfg(tiny_dataset_dir, tmp_path / "plain", context_offsets_months=offsets))
    assert "temporal_fusion" not in yaml.safe_load((plain / "model.yaml").read_text())


def test_calibration_starts_from_the_residual_base(long_dataset_dir):
    """Scale 0 of the calibration is the generator's start: the seasonal blend with ``residual_base: seasonal``
    (not the past image)."""
    from stsynth_lib.cgan.calibrate import calibrate_residual_scale
    from stsynth_lib.data.dataset import to_uint8
    from stsynth_lib.metrics import masked_l1

    ds = PairedTileDataset(long_dataset_dir, "all", context_offsets_months=OFFSETS)
    cfg = GuidanceConfig(context_offsets_months=OFFSETS, residual_base="seasonal").resolve(False, 3)
    G = build_generator("pix2pix", cfg.n_channels, 3, 32, ngf=8, residual=True)
    _, table = calibrate_residual_scale(G, ds, cfg, batch_size=64, device="cpu", progress=False)
    batch = collate([ds[i] for i in range(len(ds))])
    start = torch.from_numpy(to_uint8(seasonal_base(batch, cfg))).float() / 127.5 - 1.0
    want = np.nanmean(masked_l1(start, batch["future"], batch["valid"]))
    past_l1 = np.nanmean(masked_l1(batch["past"], batch["future"], batch["valid"]))
    got = float(table.loc[table["residual_scale"] == 0, "val_l1"].iloc[0])
    assert got == pytest.approx(want, rel=1e-5) and abs(want - past_l1) > 1e-4


def test_frame_weights_figure(long_dataset_dir):
    import matplotlib

    matplotlib.use("Agg")
    from stsynth_lib.cgan.plots import plot_frame_weights

    cfg = GuidanceConfig(context_offsets_months=OFFSETS).resolve(False, 3)
    G = build_generator("pix2pix", cfg.n_channels, 3, 32, ngf=8, residual=True, temporal_fusion="attention",
                        channels=cfg.channel_names())
    ds = PairedTileDataset(long_dataset_dir, "all")  # opened without context: the figure looks the frames up
    fig = plot_frame_weights(G, ds, cfg, n=2)
    titles = [a.get_title() for a in fig.axes if re.fullmatch(r"[^\n]+\n\d\.\d\d", a.get_title())]  # "<frame>\n<mean>"
    assert len(titles) == 2 * 4
    means = [float(t.split("\n")[1]) for t in titles]
    assert sum(means[:4]) == pytest.approx(1.0, abs=0.02)  # the weights of one pair sum to 1
    with pytest.raises(ValueError, match="temporal_fusion"):
        plot_frame_weights(build_generator("pix2pix", cfg.n_channels, 3, 32, ngf=8, residual=True), ds, cfg)
    # offsets in another order (0 not first): each frame keeps its own image and label
    other = [-1, 0, SAME_MONTH_LAST_YEAR]
    cfg2 = GuidanceConfig(context_offsets_months=other).resolve(False, 3)
    G2 = build_generator("pix2pix", cfg2.n_channels, 3, 32, ngf=8, residual=True, temporal_fusion="attention",
                         channels=cfg2.channel_names())
    ds2 = PairedTileDataset(long_dataset_dir, "all", context_offsets_months=other)
    i = next(i for i in range(len(ds2)) if bool(ds2[i]["context_present"].all()))
    fig = plot_frame_weights(G2, ds2, cfg2, indices=[i])
    shown = {a.get_title().split("\n")[0]: a.get_images()[0].get_array() for a in fig.axes if re.fullmatch(r"[^\n]+\n\d\.\d\d", a.get_title())}
    from stsynth_lib.data.dataset import to_uint8
    s = ds2[i]
    assert np.array_equal(shown["past"], to_uint8(s["past"]).transpose(1, 2, 0))
    assert np.array_equal(shown["t0-1"], to_uint8(s["context"][0]).transpose(1, 2, 0))


def test_attention_maps_of_a_temporal_attention_unet(long_dataset_dir):
    from stsynth_lib.models.attention_unet import attention_maps

    batch = _batch(long_dataset_dir, 2)
    cfg = GuidanceConfig(context_offsets_months=OFFSETS).resolve(False, 3)
    G = build_generator("attention_unet", cfg.n_channels, 3, 32, ngf=8, residual=True, temporal_fusion="attention",
                        channels=cfg.channel_names())
    maps = attention_maps(G, build_condition(batch, cfg))
    assert len(maps) == G.inner.depth - 1 and maps[0].shape == (2, 1, 32, 32)


def test_attention_cgan_resumes_exactly(tiny_dataset_dir, tmp_path):
    """2 steps + resume to 4 equal 4 steps at once (the blend's weights included)."""
    a, b = resumed_generators(tiny_dataset_dir, tmp_path, "attention")
    assert any(k.startswith("blend.") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)


def resumed_generators(dataset_dir, tmp_path, temporal_fusion: str) -> tuple[dict, dict]:
    """Generator states at step 4 of a run trained 4 steps at once and of one trained 2 steps then resumed to 4."""
    from stsynth_lib.cgan.train import train_cgan

    kw = dict(context_offsets_months=[0, -1, SAME_MONTH_LAST_YEAR], temporal_fusion=temporal_fusion,
              checkpoint_every_steps=2)
    full = train_cgan(_train_cfg(dataset_dir, tmp_path / "full", max_steps=4, **kw))
    train_cgan(_train_cfg(dataset_dir, tmp_path / "part", max_steps=2, **kw))
    part = train_cgan(_train_cfg(dataset_dir, tmp_path / "part", max_steps=4, resume_from_checkpoint="latest", **kw))
    return tuple(torch.load(run / "checkpoints" / "checkpoint-4" / "state.pt", weights_only=True)["generator"]
                 for run in (full, part))
