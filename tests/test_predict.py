"""The predictor API: any trained run folder predicts the future from plain numpy arrays, exactly as the split
predictions do (cGANs) or as generation does (ControlNet)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stsynth_lib.cgan.config import CGANTrainConfig
from stsynth_lib.cgan.train import train_cgan
from stsynth_lib.data.dataset import PairedTileDataset
from stsynth_lib.cgan.predictor import predict_and_score
from stsynth_lib.predict import inputs_from_sample, load_predictor, make_batch, parse_month
from stsynth_lib.predict.files import load_predictions


def _sample_arrays(ds: PairedTileDataset, i: int):
    """(sample, past uint8 (C, H, W), future mask 0/1, (past date, future date)) as a user would have them."""
    s = ds[i]
    x = inputs_from_sample(s)
    return s, x["past"], x["future_mask"], (x["past_date"], x["future_date"])


@pytest.mark.parametrize("model", ["pix2pix", "attention_unet"])
def test_cgan_predictor_matches_the_split_predictions(tiny_dataset_dir, tmp_path, model):
    cfg = CGANTrainConfig(dataset_dir=str(tiny_dataset_dir), runs_dir=str(tmp_path), profile="t", model=model, ngf=8,
                          ndf=8, batch_size=4, max_steps=2, max_train_pairs=8, max_val_pairs=4, progress=False,
                          device="cpu", use_mask=True)
    run = train_cgan(cfg)
    test_ds = PairedTileDataset(tiny_dataset_dir, "test", max_pairs=3)
    predict_and_score(run, test_ds, tmp_path / "pred", progress=False)
    saved = load_predictions(tmp_path / "pred")

    # the README's few lines
    predictor = load_predictor(run)
    s, past, mask, (t0, t1) = _sample_arrays(test_ds, 0)
    future = predictor.predict(past, past_date=t0, future_date=t1, future_mask=mask)

    assert future.dtype == np.uint8 and future.shape == past.shape
    np.testing.assert_array_equal(future, saved[int(s["pair_id"])])
    # a batch (N, C, H, W) gives the images that one-by-one calls give
    arrays = [_sample_arrays(test_ds, i) for i in range(3)]
    batch_out = predictor.predict(np.stack([a[1] for a in arrays]), t0, t1, np.stack([a[2] for a in arrays]))
    assert batch_out.shape == (3, *past.shape)
    for i, a in enumerate(arrays):
        one = predictor.predict(a[1], t0, t1, a[2]).astype(int)
        assert np.abs(batch_out[i].astype(int) - one).max() <= 1


def test_cgan_predictor_refuses_what_it_cannot_use(tiny_dataset_dir, tmp_path):
    cfg = CGANTrainConfig(dataset_dir=str(tiny_dataset_dir), runs_dir=str(tmp_path), profile="t", ngf=8, ndf=8,
                          batch_size=4, max_steps=1, max_train_pairs=4, max_val_pairs=2, progress=False, device="cpu",
                          use_mask=True)
    predictor = load_predictor(train_cgan(cfg))
    past = np.zeros((3, 32, 32), np.uint8)
    with pytest.raises(ValueError, match="future_mask"):
        predictor.predict(past, "2019-01", "2019-03")  # trained with masks: the mask is required
    with pytest.raises(ValueError, match="uint8"):
        predictor.predict(past.astype(np.float32), "2019-01", "2019-03", np.zeros((32, 32)))
    with pytest.raises(ValueError, match="after"):
        predictor.predict(past, "2019-03", "2019-03", np.zeros((32, 32)))
    with pytest.raises(ValueError, match="0/1"):
        predictor.predict(past, "2019-01", "2019-03", np.full((32, 32), 255))
    with pytest.raises(FileNotFoundError, match="not a trained run folder"):
        load_predictor(tmp_path)


def test_make_batch_has_the_dataset_keys(tiny_dataset_dir):
    ds = PairedTileDataset(tiny_dataset_dir, "train", max_pairs=1)
    s, past, mask, (t0, t1) = _sample_arrays(ds, 0)
    b = make_batch(past, t0, t1, mask)
    assert set(s) <= set(b)
    torch.testing.assert_close(b["past"][0], s["past"])
    assert float(b["gap_months"][0]) == float(s["gap_months"])
    assert parse_month("2020-12-01") == (2020, 12) and parse_month((2019, 2)) == (2019, 2)
    with pytest.raises(ValueError, match="month 13"):
        parse_month("2019-13")


def test_controlnet_predictor_matches_generation(tiny_dataset_dir, tmp_path, monkeypatch):
    pytest.importorskip("diffusers")
    pytest.importorskip("open_clip")
    from stsynth_lib.controlnet.config import ControlNetTrainConfig
    from stsynth_lib.controlnet.generate import generate_split
    from stsynth_lib.controlnet.train import train_controlnet

    monkeypatch.setenv("STSYNTH_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)
    cfg = ControlNetTrainConfig(dataset_dir=str(tiny_dataset_dir), runs_dir=str(tmp_path), profile="t",
                                max_train_steps=1, train_batch_size=2, validation_steps=0, validate_at_start=False,
                                checkpointing_steps=0, max_train_pairs=4, progress=False, device="cpu")
    run = train_controlnet(cfg)
    out = generate_split(run, tiny_dataset_dir, "test", max_pairs=1, num_inference_steps=2, seed=0, batch_size=1,
                         progress=False, device="cpu")
    saved = load_predictions(out)
    ds = PairedTileDataset(tiny_dataset_dir, "test", max_pairs=1)
    s, past, mask, (t0, t1) = _sample_arrays(ds, 0)

    predictor = load_predictor(run, num_inference_steps=2)
    future = predictor.predict(past, t0, t1, future_mask=mask, seed=int(s["pair_id"]))  # generation seeds by pair id

    assert future.shape == past.shape and future.dtype == np.uint8
    diff = np.abs(future.astype(int) - saved[int(s["pair_id"])].astype(int))
    assert diff.max() <= 1, diff.max()
