"""The ControlNet sees the past sequence the cGANs see (issue 33): ``context_offsets_months`` puts each earlier frame
after the past image's bands in the conditioning image (its bands in [0, 1], its validity and age planes, an absent
month as the cGANs see it), training feeds them, and every way of predicting with such a run (the predictor, the
split, the tree) passes them -- or refuses, naming what is missing."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch
import yaml

from stsynth_lib.controlnet.conditioning import (
    batch_conditioning,
    conditioning_channel_names,
    conditioning_channels,
    make_conditioning,
    resize_batch,
)
from stsynth_lib.data.dataset import PairedTileDataset, to_uint8
from stsynth_lib.training import collate

OFFSETS = [0, -1, "same_month_last_year"]  # the tiny store spans 6 months: last year's month is always absent
RUN_OFFSETS = [0, -1]
STEPS = 2  # sampling steps of the predictions here


def _hand_conditioning(batch, offsets, gap_scale=24.0) -> torch.Tensor:
    """The layout written out channel by channel, independently of the library: past, then per frame other than
    offset 0 its bands (x + 1) / 2, valid * present and min(age / gap_scale, 1) * present, then mask and gap."""
    past = batch["past"]
    b, _, h, w = past.shape
    parts = [(past + 1) / 2]
    for k, o in enumerate(offsets):
        if o == 0:
            continue
        present = batch["context_present"][:, k].float()
        parts += [(batch["context"][:, k] + 1) / 2, batch["context_valid"][:, k] * present[:, None, None, None],
                  (batch["context_age_months"][:, k] * present / gap_scale).clamp(0, 1)[:, None, None, None]
                  .expand(b, 1, h, w)]
    gap = (batch["gap_months"] / gap_scale).clamp(0, 1)[:, None, None, None].expand(b, 1, h, w)
    return torch.cat([*parts, batch["future_mask"], gap], 1)


def test_conditioning_holds_the_context_frames_after_the_past(tiny_dataset_dir):
    ds = PairedTileDataset(tiny_dataset_dir, "train", context_offsets_months=OFFSETS)
    present = [i for i in range(len(ds)) if bool(ds[i]["context_present"][1])]
    absent = [i for i in range(len(ds)) if not bool(ds[i]["context_present"][1])]
    assert present and absent
    batch = collate([ds[i] for i in present[:2] + absent[:2]])
    cond = batch_conditioning(batch, True, 24.0, True, OFFSETS)
    n = conditioning_channels(3, True, True, OFFSETS)
    assert n == 3 + 2 * (3 + 2) + 2 == len(conditioning_channel_names(3, True, True, OFFSETS))
    assert cond.shape == (4, n, 32, 32) and cond.min() >= 0 and cond.max() <= 1
    assert torch.allclose(cond, _hand_conditioning(batch, OFFSETS))
    names = conditioning_channel_names(3, True, True, OFFSETS)
    assert names[3:8] == ["ctx_t0-1_b1", "ctx_t0-1_b2", "ctx_t0-1_b3", "ctx_t0-1_valid", "ctx_t0-1_age_scaled"]
    assert names[8:13] == [f"ctx_last_year_b{i}" for i in (1, 2, 3)] + ["ctx_last_year_valid",
                                                                        "ctx_last_year_age_scaled"]
    # the frame of the month before is the store's tile, mapped to [0, 1]
    assert torch.equal(cond[0, 3:6], ((ds[present[0]]["context"][1] + 1) / 2).clamp(0, 1))
    assert cond[0, 7].unique().tolist() == pytest.approx([min(float(ds[present[0]]["context_age_months"][1]) / 24, 1)])
    # an absent month: the dataset's zeros (mid grey, as the cGANs see it), validity 0, age 0
    assert torch.all(cond[2:, 3:6] == 0.5) and torch.all(cond[2:, 6:8] == 0)
    assert torch.all(cond[:, 8:11] == 0.5) and torch.all(cond[:, 11:13] == 0)  # last year: before the series
    # the past image, the mask and the gap plane are today's channels, in today's order around the frames
    today = batch_conditioning(batch, True, 24.0, True)
    assert today.shape[1] == conditioning_channels(3, True, True) == 5
    assert torch.equal(cond[:, [0, 1, 2, 13, 14]], today)
    assert conditioning_channels(3, True, True, [0]) == 5  # offset 0 alone is the past image: nothing added
    assert torch.equal(batch_conditioning(batch, context_offsets_months=[0]), today)
    # one sample (unbatched) gives its row; the frames follow a resize to the backbone's resolution
    s = ds[present[0]]
    single = make_conditioning(s["past"], s["future_mask"], s["gap_months"], context_offsets_months=OFFSETS, context=s)
    assert torch.equal(single, cond[0])
    big = resize_batch(batch, 64)
    assert big["context"].shape == (4, 3, 3, 64, 64) and big["context_valid"].shape == (4, 3, 1, 64, 64)
    assert batch_conditioning(big, True, 24.0, True, OFFSETS).shape == (4, n, 64, 64)
    without = collate([PairedTileDataset(tiny_dataset_dir, "train", max_pairs=1)[0]])
    with pytest.raises(ValueError, match=r"no \['context', 'context_valid'"):
        batch_conditioning(without, True, 24.0, True, OFFSETS)


def test_plot_conditioning_shows_the_frames(tiny_dataset_dir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from stsynth_lib.controlnet.plots import plot_conditioning

    ds = PairedTileDataset(tiny_dataset_dir, "train", context_offsets_months=OFFSETS)
    i = next(i for i in range(len(ds)) if bool(ds[i]["context_present"][1]))
    s = ds[i]
    cond = make_conditioning(s["past"], s["future_mask"], s["gap_months"], context_offsets_months=OFFSETS, context=s)
    fig = plot_conditioning(cond, "p", context_offsets_months=OFFSETS)
    titles = [ax.get_title().replace("\n", " ") for ax in fig.axes]
    notes = " ".join(t.get_text() for t in fig.texts)
    # a present frame is drawn; an absent month and a constant plane are said in the note, not drawn as flat panels
    assert any(t.startswith("channels 3-7: frame t0-1") for t in titles)
    assert "absent month (last_year; channels 8-12)" in notes
    assert "channel 14: gap plane = " in notes and not any("gap plane" in t for t in titles)
    assert "channel 13: future mask" in titles or "channel 13: future mask = " in notes
    plt.close(fig)
    with pytest.raises(ValueError, match="past frames"):
        plot_conditioning(cond[:5], "p", context_offsets_months=OFFSETS)


@pytest.fixture(scope="module")
def context_run(tiny_dataset_dir, tmp_path_factory, stsynth_cache_in_tmp):
    """A two-step ControlNet run with the month before as a past frame, validated once (so the validator builds
    the conditioning with the frames too). Two steps: the first moves only the zero convolutions (no gradient
    reaches the conditioning encoder through them while they are zero), the second the encoder's zero conv_out."""
    pytest.importorskip("diffusers")
    from conftest import tiny_controlnet_config
    from stsynth_lib.controlnet.train import train_controlnet

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = tiny_controlnet_config(tiny_dataset_dir, tmp_path_factory.mktemp("runs"), max_train_steps=2,
                                     validation_steps=2, num_validation_images=1, num_validation_loss_pairs=2,
                                     validation_batch_size=2, validation_inference_steps=2, max_val_pairs=4,
                                     context_offsets_months=RUN_OFFSETS)
        yield train_controlnet(cfg)
    finally:
        torch.set_num_threads(threads)


def test_a_context_run_trains_and_records_its_offsets(context_run):
    import pandas as pd

    params = yaml.safe_load((context_run / "params.yaml").read_text())
    assert params["context_offsets_months"] == RUN_OFFSETS and params["conditioning_channels"] == 3 + 5 + 2
    cn = yaml.safe_load((context_run / "controlnet" / "config.json").read_text())
    assert cn["conditioning_channels"] == 10
    log = pd.read_csv(context_run / "log.csv")
    assert np.isfinite(log["loss"].dropna()).all() and np.isfinite(log["cond_gain"].dropna()).all()
    assert len(log["cond_gain"].dropna()) == 1  # the validator ran with the frames


@pytest.mark.usefixtures("one_torch_thread")
def test_predictor_and_split_pass_the_frames(context_run, tiny_dataset_dir, tmp_path):
    """generate_split, the predictor on a batch and predict() on arrays all give the image sample_images draws from
    a conditioning built by hand from the same pairs (their frames looked up in the store)."""
    from stsynth_lib.controlnet.conditioning import batch_prompts
    from stsynth_lib.controlnet.generate import ControlNetPredictor, generate_split, make_scheduler, sample_images
    from stsynth_lib.predict import inputs_from_sample, predictor_sample
    from stsynth_lib.predict.files import load_predictions
    from stsynth_lib.predict.split import sample_seed

    def has_frame(s):  # 3 test pairs drawn with subsample seed s, one of them with the month before
        ds = PairedTileDataset(tiny_dataset_dir, "test", max_pairs=3, subsample_seed=s,
                               context_offsets_months=RUN_OFFSETS)
        return any(bool(ds[i]["context_present"][1]) for i in range(len(ds)))

    seed = next(s for s in range(50) if has_frame(s))
    out = generate_split(context_run, tiny_dataset_dir, "test", num_inference_steps=STEPS, batch_size=3, max_pairs=3,
                         subsample_seed=seed, device="cpu", progress=False, write_png=False)
    saved = load_predictions(out)
    predictor = ControlNetPredictor(context_run, "cpu", "unipc", STEPS)
    assert predictor.needs_context and predictor.context_offsets == (0, -1)
    ds = PairedTileDataset(tiny_dataset_dir, "test", max_pairs=3, subsample_seed=seed)  # opened without the frames
    batch = collate([predictor_sample(ds, i, predictor) for i in range(len(ds))])
    assert bool(batch["context_present"][:, 1].any())
    p, ids = predictor.params, batch["pair_id"].tolist()
    seeds = [sample_seed(0, pid) for pid in ids]
    ref = sample_images(predictor.backbone, predictor.controlnet, _hand_conditioning(batch, RUN_OFFSETS),
                        batch_prompts(batch, p["prompt_template"], p["empty_prompt"]),
                        make_scheduler("unipc", predictor.backbone.noise_scheduler.config), STEPS, 1.0, seeds,
                        init_image=batch["past"])
    assert np.array_equal(np.stack([saved[i] for i in ids]), to_uint8(ref))
    got = predictor.generate(batch, seeds)
    assert np.array_equal(to_uint8(got), to_uint8(ref))
    # the frames reach the model: the same batch with the month before marked absent draws other floats (two steps
    # of training moved the zero convolutions only a little, so not necessarily other grey levels)
    blind = {**batch, "context_present": torch.zeros_like(batch["context_present"]),
             "context_valid": torch.zeros_like(batch["context_valid"])}
    assert not torch.equal(predictor.generate(blind, seeds), got)
    # predict() on arrays, the frames as {offset: image}: its batch carries the frame (a present frame counts as
    # valid everywhere: arrays carry no cloud mask), and its image is the one drawn from that batch's hand-built
    # conditioning
    i = int(np.flatnonzero(batch["context_present"][:, 1].numpy())[0])
    x = inputs_from_sample(predictor_sample(ds, i, predictor), predictor)
    assert set(x["context"]) == {-1}
    seen = []
    real = predictor.generate
    predictor.generate = lambda b, s: seen.append(b) or real(b, s)
    one = predictor.predict(**x, seed=seeds[i])
    (b,) = seen
    assert np.array_equal(to_uint8(b["context"][0, 1]), to_uint8(batch["context"][i, 1]))
    assert b["context_present"][0].tolist() == [True, True] and bool((b["context_valid"][0, 1] == 1).all())
    mine = sample_images(predictor.backbone, predictor.controlnet, _hand_conditioning(b, RUN_OFFSETS),
                         batch_prompts(b, p["prompt_template"], p["empty_prompt"]),
                         make_scheduler("unipc", predictor.backbone.noise_scheduler.config), STEPS, 1.0, [seeds[i]],
                         init_image=b["past"])
    assert np.array_equal(one, to_uint8(mine[0]))


def test_a_context_run_refuses_to_predict_without_its_frames(context_run, tiny_dataset_dir):
    from stsynth_lib.controlnet.generate import ControlNetPredictor
    from stsynth_lib.predict import inputs_from_sample

    predictor = ControlNetPredictor(context_run, "cpu", "unipc", STEPS)
    sample = PairedTileDataset(tiny_dataset_dir, "test", max_pairs=1)[0]  # no context keys
    with pytest.raises(ValueError, match=r"context frames at offsets \[0, -1\].*pass context="):
        x = inputs_from_sample(sample)
        predictor.predict(x["past"], x["past_date"], x["future_date"], future_mask=x["future_mask"])
    with pytest.raises(ValueError, match=r"predictor_sample"):
        inputs_from_sample(sample, predictor)
    with pytest.raises(ValueError, match=r"offsets \[0, -1\].*no \['context', 'context_valid', 'context_present', "
                                         r"'context_age_months'\].*context_offsets_months=\[0, -1\]"):
        predictor.generate(collate([sample]), 0)


@pytest.mark.usefixtures("one_torch_thread")
def test_predict_on_a_tree_passes_the_frames(context_run, tmp_path, capsys, monkeypatch):
    """``python -m stsynth_lib.predict`` with a context ControlNet: each tile batch carries the frames the tree has
    (the month before the past image, read from its GeoTIFF), and none where the tree lacks that month."""
    import pandas as pd

    from stsynth_lib.controlnet.generate import ControlNetPredictor
    from stsynth_lib.data.synthetic import generate_synthetic_sn7
    from stsynth_lib.predict.cli import main

    tree = generate_synthetic_sn7(tmp_path / "sn7", n_aois=1, n_months=3, size_px=64, cloud_probability=0.0, seed=7,
                                  progress=False)
    seen = []
    real = ControlNetPredictor.generate

    def spy(self, batch, seed):
        seen.append({k: batch[k] for k in ("past_year", "past_month", "context", "context_present")})
        return real(self, batch, seed)

    monkeypatch.setattr(ControlNetPredictor, "generate", spy)
    out = tmp_path / "out"
    rc = main(["--run", str(context_run), "--data", str(tree), "--out", str(out), "--num-inference-steps", str(STEPS),
               "--overlap-px", "0", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    index = pd.read_csv(out / "index.csv")
    assert len(index) == 3 and seen  # 3 months: pairs 1->2, 1->3, 2->3 (months counted from 1)
    by_past = {d: path for d, path in zip(index["past_date"], index["past_image"])}
    first = min(by_past)
    with_frame = 0
    for b in seen:
        past = f"{int(b['past_year'][0])}-{int(b['past_month'][0]):02d}"
        has = past != first  # the month before the past image is in the tree unless the past is its first month
        assert b["context"].shape[1:3] == (2, 3) and bool(b["context_present"][:, 1].all()) is has
        if has:
            y, m = divmod(int(b["past_year"][0]) * 12 + int(b["past_month"][0]) - 2, 12)
            with rasterio.open(by_past[f"{y}-{m + 1:02d}"]) as src:
                month_before = src.read([1, 2, 3])
            assert np.array_equal(to_uint8(b["context"][0, 1]), month_before[:, :32, :32])  # tile (0, 0)
            with_frame += 1
    assert with_frame > 0
