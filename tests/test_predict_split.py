"""The one split loop (``stsynth_lib.predict.split.predict_split``) and the predictors agree bit for bit: what the loop
writes (every sample folder) and hands to the scores is what the predictor gives on the same batches, and the
chapters' routes keep today's numbers: the cGAN's trained generator as it is (eager, fp32, no batch-norm folding),
the ControlNet's per-pair seeds ``seed + pair_id + k * 1_000_003`` and its prompt-only mode (the bare backbone)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from stsynth_lib.data.dataset import PairedTileDataset, to_uint8
from stsynth_lib.predict.base import Predictor
from stsynth_lib.predict.files import load_predictions
from stsynth_lib.predict.split import SAMPLE_SEED_STRIDE, SAMPLING_FILE, predict_split, sample_dir, sample_dirs
from stsynth_lib.training import collate


def _batches(ds, batch_size):
    """The batches the split loop forms: ``batch_size`` consecutive pairs, collated."""
    return [collate([ds[i] for i in range(s, min(s + batch_size, len(ds)))]) for s in range(0, len(ds), batch_size)]


class SeedImages(Predictor):
    """Image i of a batch: its seed (mod 251) in every pixel, on the grey scale [-1, 1]; records what it was asked."""

    def __init__(self):
        self.calls, self.prepared = [], False

    def prepare_dataset(self, dataset):
        self.prepared = True
        return dataset

    def generate(self, batch, seed):
        seeds = list(seed)
        self.calls.append((batch["pair_id"].tolist(), seeds))
        vals = torch.tensor([s % 251 for s in seeds], dtype=torch.float32) / 127.5 - 1.0
        return vals[:, None, None, None].expand(len(seeds), *batch["past"].shape[1:]).clone()


def test_the_loop_writes_what_the_predictor_gives(tiny_dataset_dir, tmp_path):
    ds = PairedTileDataset(tiny_dataset_dir, "test", max_pairs=5)
    pred, seen = SeedImages(), []
    out = predict_split(pred, ds, tmp_path / "p", seed=7, num_samples=3, batch_size=2, progress=False,
                        on_batch=lambda b, imgs, k: seen.append((b["pair_id"].tolist(), k, imgs.clone())),
                        record={"how": "test"})
    pids = [int(p) for p in ds.pairs["pair_id"]]
    assert pred.prepared and [c[0] for c in pred.calls] == [pids[0:2]] * 3 + [pids[2:4]] * 3 + [pids[4:]] * 3
    for ids, seeds in pred.calls:  # per-pair seeds, sample k offset by the stride
        k = (seeds[0] - 7 - ids[0]) // SAMPLE_SEED_STRIDE
        assert seeds == [7 + p + k * SAMPLE_SEED_STRIDE for p in ids]
    assert sample_dirs(out) == [sample_dir(out, k) for k in range(3)]
    for k in range(3):
        saved = load_predictions(sample_dir(out, k))
        assert sorted(saved) == pids
        for p in pids:
            assert np.array_equal(saved[p], np.full(saved[p].shape, (7 + p + k * SAMPLE_SEED_STRIDE) % 251, np.uint8))
    for ids, k, imgs in seen:  # the scores see the images as the GeoTIFFs hold them
        saved = load_predictions(sample_dir(out, k))
        assert np.array_equal(to_uint8(imgs), np.stack([saved[p] for p in ids]))
    assert yaml.safe_load((out / SAMPLING_FILE).read_text()) == {"how": "test"}
    # a rerun clears the folder, its samples and its record; no folder: scores only
    predict_split(SeedImages(), ds, out, num_samples=1, progress=False)
    assert sample_dirs(out) == [out] and not (out / SAMPLING_FILE).exists()
    assert predict_split(SeedImages(), ds, None, progress=False) is None


def test_cgan_split_is_the_trained_generator_as_it_is(tiny_dataset_dir, tmp_path, monkeypatch):
    """The chapters' route (predict_and_score) and the trainer's validation (score_generator) write and score the
    eager fp32 generator's images of the same batches, bit for bit, and never prepare it for inference (batch-norm
    folding changes float rounding); the exact predictor gives the same floats; the context frames are looked up."""
    import stsynth_lib.models.inference as inference
    from stsynth_lib.cgan.config import CGANTrainConfig
    from stsynth_lib.cgan.model_io import load_generator
    from stsynth_lib.cgan.predictor import CGANPredictor, predict_and_score, score_generator
    from stsynth_lib.cgan.train import train_cgan
    from stsynth_lib.conditioning import build_condition
    from stsynth_lib.evaluate.generator import _metric_rows, _unit01

    cfg = CGANTrainConfig(dataset_dir=str(tiny_dataset_dir), runs_dir=str(tmp_path), profile="t", ngf=8, ndf=8,
                          batch_size=4, max_steps=2, max_train_pairs=8, max_val_pairs=4, progress=False, device="cpu",
                          use_mask=True, context_offsets_months=[0, -1])
    run = train_cgan(cfg)

    def refuse(*a, **k):
        raise AssertionError("the split predictions of the chapters must not prepare the generator")

    monkeypatch.setattr(inference, "prepare_for_inference", refuse)
    ds = PairedTileDataset(tiny_dataset_dir, "test", max_pairs=7)
    df = predict_and_score(run, ds, tmp_path / "pred", batch_size=3, progress=False).set_index("pair_id")
    saved = load_predictions(tmp_path / "pred")
    G, guidance = load_generator(run, "best")
    val = score_generator(G.train(), ds, guidance, batch_size=3).set_index("pair_id")
    assert G.training  # its mode is left as the trainer had it
    assert all(np.array_equal(val[c].to_numpy(), df[c].to_numpy()) for c in ("l1", "psnr", "ssim"))
    exact = CGANPredictor(run, prepare=False)
    for batch in _batches(ds.with_context_offsets([0, -1]), 3):
        with torch.no_grad():
            ref = G.eval()(build_condition(batch, guidance)).float()
        assert torch.equal(exact.generate(batch, 0), ref)
        ref_u8 = to_uint8(ref)
        ids = batch["pair_id"].tolist()
        assert np.array_equal(np.stack([saved[p] for p in ids]), ref_u8)
        m = _metric_rows(_unit01(torch.from_numpy(ref_u8).float() / 127.5 - 1.0), _unit01(batch["future"]),
                         batch["valid"])
        for col, vals in m.items():
            assert np.array_equal(df.loc[ids, col].to_numpy(), np.asarray(vals, dtype=float)), col
    # the generic loop with the exact predictor writes the same files
    predict_split(exact, ds, tmp_path / "loop", batch_size=3, progress=False)
    again = load_predictions(tmp_path / "loop")
    assert sorted(again) == sorted(saved) and all(np.array_equal(again[p], saved[p]) for p in saved)
    with pytest.raises(ValueError, match="prepare=False"):
        CGANPredictor(run, prepare=False, precision="bf16")


@pytest.mark.usefixtures("one_torch_thread")
def test_controlnet_split_keeps_per_pair_seeds_and_prompt_only(one_step_controlnet_run, tiny_dataset_dir, tmp_path):
    """generate_split writes, in every sample folder, the images of today's loop body on the same batches: the run's
    conditioning and prompts, seeds seed + pair_id + k * 1_000_003, img2img from the past, resized back; prompt-only
    is the backbone without the ControlNet. ControlNetPredictor.generate with those seeds gives the same."""
    pytest.importorskip("diffusers")
    from stsynth_lib.controlnet.conditioning import batch_conditioning, batch_prompts, resize_batch, resize_spatial
    from stsynth_lib.controlnet.generate import (
        ControlNetPredictor,
        generate_split,
        load_trained,
        make_scheduler,
        sample_images,
    )

    run = one_step_controlnet_run
    backbone, controlnet, p = load_trained(run, "cpu")
    ds = PairedTileDataset(tiny_dataset_dir, "test", max_pairs=3)
    kw = dict(num_inference_steps=2, batch_size=2, max_pairs=3, seed=5, strength=0.5, progress=False, device="cpu",
              num_samples_per_pair=2)
    for prompt_only in (False, True):
        out = generate_split(run, tiny_dataset_dir, "test", out_dir=tmp_path / str(prompt_only), prompt_only=prompt_only,
                             **kw)
        predictor = ControlNetPredictor(run, "cpu", "unipc", 2, 1.0, 0.5, 1.0, prompt_only=prompt_only)
        sched = make_scheduler("unipc", backbone.noise_scheduler.config)
        for k in range(2):
            saved = load_predictions(sample_dir(out, k))
            for batch in _batches(ds, 2):
                ids = batch["pair_id"].tolist()
                seeds = [5 + pid + k * 1_000_003 for pid in ids]
                b = resize_batch(batch, p["resolution_px"])
                cond = batch_conditioning(b, p["use_gap_plane"], p["gap_scale_months"], p["use_mask"])
                ref = sample_images(backbone, None if prompt_only else controlnet, cond,
                                    batch_prompts(batch, p["prompt_template"], p["empty_prompt"]), sched, 2, 1.0,
                                    seeds, 1.0, init_image=b["past"], strength=0.5)
                ref = to_uint8(resize_spatial(ref, ds.tile_size_px))
                assert np.array_equal(np.stack([saved[i] for i in ids]), ref), (prompt_only, k, ids)
                assert np.array_equal(to_uint8(predictor.generate(batch, seeds)), ref)
        rec = yaml.safe_load((out / SAMPLING_FILE).read_text())
        assert rec["prompt_only"] is prompt_only and rec["strength"] == 0.5 and rec["seed"] == 5


def test_split_is_complete_needs_every_pair_and_exactly_the_samples(tmp_path):
    from stsynth_lib.predict.split import split_is_complete

    out = tmp_path / "pred"
    assert not split_is_complete(out, 3)  # nothing generated
    out.mkdir()
    (out / "index.csv").write_text("pair_id,path\n1,a.tif\n2,b.tif\n3,c.tif\n")
    assert split_is_complete(out, 3) and not split_is_complete(out, 4)  # an interrupted folder is not kept
    extra = sample_dir(out, 1)
    extra.mkdir(parents=True)
    (extra / "index.csv").write_text("pair_id,path\n1,a.tif\n")
    assert split_is_complete(out, 3, num_samples=2) and not split_is_complete(out, 3, num_samples=1)
