"""Spatio-temporal context: sequence samples, the simple baselines, their evaluation rows and context cGANs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from stsynth_lib import evaluate as E
from stsynth_lib.baselines import baseline_offsets, baseline_prediction, mean_of_last_k, seasonal_blend
from stsynth_lib.cgan.augment import augment_batch
from stsynth_lib.conditioning import GuidanceConfig, build_condition
from stsynth_lib.data.dataset import SAME_MONTH_LAST_YEAR, PairedTileDataset, TileStore, check_context_offsets, to_unit
from stsynth_lib.training import collate

SMLY = SAME_MONTH_LAST_YEAR
OFFSETS = [0, -1, -2, SMLY]


@pytest.fixture(scope="module")
def long_dataset_dir(tmp_path_factory):
    """3 AOIs x 15 months (one 32 px tile each) with a gap (month 6 of the first AOI removed); gaps 1-13 months."""
    from stsynth_lib.data.build import build_dataset
    from stsynth_lib.data.sn7 import scan_sn7
    from stsynth_lib.data.synthetic import generate_synthetic_sn7

    root = generate_synthetic_sn7(tmp_path_factory.mktemp("sn7long") / "sn7", n_aois=3, n_months=15, size_px=32,
                                  cloud_probability=0.3, seed=2, progress=False)
    meta = scan_sn7(root, progress=False)
    first = min(meta["aoi"].unique())
    months = sorted(meta.loc[meta["aoi"] == first, "month_index"].unique())
    meta = meta[~((meta["aoi"] == first) & (meta["month_index"] == months[5]))].reset_index(drop=True)
    out = tmp_path_factory.mktemp("dslong") / "dataset"
    build_dataset(meta, out, tile_size_px=32, max_gap_months=13, split_fractions=(0.34, 0.33, 0.33), seed=0,
                  min_valid_fraction=0.0, progress=False)
    return out


def _month_tile(store: TileStore, aoi, row_off, col_off, abs_month):
    t = store.tiles
    hit = t[(t["aoi"] == aoi) & (t["row_off"] == row_off) & (t["col_off"] == col_off)
            & (t["year"] * 12 + t["month"] == abs_month)]
    return None if hit.empty else int(hit["tile_id"].iloc[0])


# --------------------------------------------------------------------------- samples


def test_offsets_are_checked():
    assert check_context_offsets(None) is None
    assert check_context_offsets([0, -1, SMLY]) == (0, -1, SMLY)
    for bad in ([1], [0, 0], [], "same_month_last_year", [True], ["last_year"]):
        with pytest.raises(ValueError):
            check_context_offsets(bad)


def test_context_frames_are_the_store_tiles_of_their_months(long_dataset_dir):
    ds = PairedTileDataset(long_dataset_dir, "all", context_offsets_months=OFFSETS)
    store = ds.store
    first_month = (store.tiles["year"] * 12 + store.tiles["month"]).groupby(store.tiles["aoi"]).min()
    seen_absent = seen_smly = seen_gap_absent = False
    for i in range(len(ds)):
        s, p = ds[i], ds.pairs.iloc[i]
        t0 = int(p["past_year"]) * 12 + int(p["past_month"])
        t1 = int(p["future_year"]) * 12 + int(p["future_month"])
        assert s["context"].shape == (4, 3, 32, 32) and s["context_valid"].shape == (4, 1, 32, 32)
        for k, o in enumerate(OFFSETS):
            month = t1 - 12 if o == SMLY else t0 + o
            tid = _month_tile(store, p["aoi"], p["row_off"], p["col_off"], month) if month <= t0 else None
            present = bool(s["context_present"][k])
            assert present == (tid is not None), (i, o)
            if present:
                np.testing.assert_array_equal(s["context"][k].numpy(), to_unit(np.asarray(store.images[tid])))
                np.testing.assert_array_equal(s["context_valid"][k, 0].numpy(), np.asarray(store.valid[tid]))
                assert float(s["context_age_months"][k]) == t1 - month
            else:
                assert not s["context"][k].any() and not s["context_valid"][k].any()
                assert float(s["context_age_months"][k]) == 0
                seen_absent = True
                seen_gap_absent |= o != SMLY and month >= first_month[p["aoi"]]  # a gap inside the series
            if o == SMLY:
                assert present == (t1 - 12 <= t0 and tid is not None)
                seen_smly |= present
        torch.testing.assert_close(s["context"][0], s["past"], rtol=0, atol=0)
    assert seen_absent and seen_smly and seen_gap_absent


def test_k1_and_none_give_todays_samples_bit_for_bit(tiny_dataset_dir):
    plain = PairedTileDataset(tiny_dataset_dir, "train")
    k1 = PairedTileDataset(tiny_dataset_dir, "train", context_offsets_months=[0])
    assert "context" not in plain[0]
    for i in range(len(plain)):
        a, b = plain[i], k1[i]
        for key, v in a.items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(v, b[key]) and v.dtype == b[key].dtype, key
            else:
                assert v == b[key], key
        assert torch.equal(b["context"][0], a["past"]) and torch.equal(b["context_valid"][0], a["past_valid"])
    # the same with augmentation: the same RNG draws give the same pixels
    aug_a = PairedTileDataset(tiny_dataset_dir, "train", augment=True)
    aug_b = PairedTileDataset(tiny_dataset_dir, "train", augment=True, context_offsets_months=[0])
    np.random.seed(3)
    sa = [aug_a[i] for i in range(4)]
    np.random.seed(3)
    sb = [aug_b[i] for i in range(4)]
    for a, b in zip(sa, sb):
        assert torch.equal(a["past"], b["past"]) and torch.equal(a["future"], b["future"])
        assert torch.equal(b["context"][0], a["past"])  # context rotated/flipped like past


def test_augmentation_moves_context_with_the_other_tensors(long_dataset_dir):
    ds = PairedTileDataset(long_dataset_dir, "all", augment=True, context_offsets_months=OFFSETS)
    plain = PairedTileDataset(long_dataset_dir, "all", context_offsets_months=OFFSETS)
    i = int(np.flatnonzero(plain._context_ids[:, 1] >= 0)[0])
    ref = plain[i]
    for seed in range(6):
        np.random.seed(seed)
        s = ds[i]
        assert torch.equal(s["context"][0], s["past"]) and torch.equal(s["context_valid"][0], s["past_valid"])
        # the same rotation/flip on the month before: find it among the 8 symmetries of the reference
        ok = False
        for k in range(4):
            for flip in (False, True):
                def f(x, k=k, flip=flip):
                    x = torch.rot90(x, k, dims=(-2, -1))
                    return torch.flip(x, dims=(-1,)) if flip else x

                if torch.equal(f(ref["past"]), s["past"]):
                    ok = (torch.equal(f(ref["context"]), s["context"])
                          and torch.equal(f(ref["context_valid"]), s["context_valid"]))
        assert ok
    # batch augmentation (the trainer's) too, jitter keeping absent frames at 0
    batch = collate([plain[j] for j in range(min(4, len(plain)))])
    out = augment_batch(batch, torch.Generator().manual_seed(0), radiometric_jitter=0.1)
    absent = ~batch["context_present"]
    assert not out["context"][absent].any()
    gen = torch.Generator().manual_seed(0)
    plain_out = augment_batch({k: v for k, v in batch.items() if not k.startswith("context")}, gen, 0.1)
    assert torch.equal(plain_out["past"], out["past"]) and torch.equal(plain_out["future"], out["future"])
    torch.testing.assert_close(out["context"][:, 0], out["past"])


def test_k1_condition_is_todays_condition(tiny_dataset_dir):
    batch = collate([PairedTileDataset(tiny_dataset_dir, "train", context_offsets_months=[0])[i] for i in range(4)])
    old = GuidanceConfig().resolve(True, 3)
    for cfg in (GuidanceConfig(context_offsets_months=[0]).resolve(True, 3),
                GuidanceConfig(context_offsets_months=None).resolve(True, 3)):
        assert cfg.channel_names() == old.channel_names()
        assert torch.equal(build_condition(batch, cfg), build_condition(batch, old))
    from stsynth_lib.models import build_generator

    torch.manual_seed(0)
    G = build_generator("pix2pix", old.n_channels, 3, 32, ngf=8, residual=True).eval()
    with torch.no_grad():
        assert torch.equal(G(build_condition(batch, cfg)), G(build_condition(batch, old)))
    assert old.to_dict() == GuidanceConfig.from_dict(old.to_dict()).to_dict()
    assert "context_offsets_months" not in old.to_dict()  # model.yaml of runs without context unchanged


def test_context_channels(long_dataset_dir):
    ds = PairedTileDataset(long_dataset_dir, "all", context_offsets_months=[0, -1, SMLY])
    batch = collate([ds[i] for i in range(len(ds))])
    cfg = GuidanceConfig(use_mask=False, context_offsets_months=[0, -1, SMLY]).resolve(False, 3)
    names = cfg.channel_names()
    assert names[:6] == ["past_b1", "past_b2", "past_b3", "gap_months_scaled", "future_month_sin", "future_month_cos"]
    assert len(names) == 6 + 2 * (3 + 2) and names[6:11] == ["ctx_t0-1_b1", "ctx_t0-1_b2", "ctx_t0-1_b3",
                                                          "ctx_t0-1_valid", "ctx_t0-1_age_scaled"]
    c = build_condition(batch, cfg)
    assert c.shape[1] == cfg.n_channels
    torch.testing.assert_close(c[:, 6:9], batch["context"][:, 1])
    torch.testing.assert_close(c[:, 9], batch["context_valid"][:, 1, 0])
    torch.testing.assert_close(c[:, 10, 0, 0], batch["context_age_months"][:, 1] / 24.0)
    torch.testing.assert_close(c[:, 15, 0, 0], batch["context_age_months"][:, 2] / 24.0)
    with pytest.raises(ValueError, match="context_offsets_months"):
        build_condition({k: v for k, v in batch.items() if not k.startswith("context")}, cfg)


# --------------------------------------------------------------------------- baselines


def _fields():
    """2 pixels, 1 band, offsets [0, -1, -2, SMLY]: hand-made values, validity and presence."""
    ctx = np.array([[[[[10, 20]]], [[[30, 40]]], [[[90, 90]]], [[[50, 250]]]]], np.uint8)  # (1, 4, 1, 1, 2)
    valid = np.array([[[[[1, 0]]], [[[1, 1]]], [[[0, 1]]], [[[1, 1]]]]], np.uint8)
    present = np.array([[True, True, False, True]])
    return {"context": ctx, "context_valid": valid, "context_present": present}


def test_baseline_formulas_on_hand_made_arrays():
    f = _fields()
    # mean of last 3: pixel 0 -> frames 0 and -1 valid (-2 absent) -> (10 + 30) / 2; pixel 1 -> only -1 valid -> 40
    np.testing.assert_array_equal(mean_of_last_k(f, OFFSETS, 3)[0, 0, 0], [20, 40])
    np.testing.assert_array_equal(mean_of_last_k(f, OFFSETS, 1)[0, 0, 0], [10, 20])  # persistence, invalid kept
    # nothing valid -> the past frame
    g = {**f, "context_valid": np.zeros_like(f["context_valid"])}
    np.testing.assert_array_equal(mean_of_last_k(g, OFFSETS, 3)[0, 0, 0], [10, 20])
    # seasonal: average with last year's frame where present and valid
    np.testing.assert_array_equal(seasonal_blend(f, OFFSETS)[0, 0, 0], [30, 135])
    h = {**f, "context_present": np.array([[True, True, False, False]])}
    np.testing.assert_array_equal(seasonal_blend(h, OFFSETS)[0, 0, 0], [10, 20])
    # a sample (no batch axis), float [-1, 1] tensors as PairedTileDataset gives them
    s = {"context": torch.from_numpy(to_unit(f["context"][0])), "context_valid": torch.from_numpy(f["context_valid"][0]),
         "context_present": torch.from_numpy(f["context_present"][0])}
    np.testing.assert_array_equal(baseline_prediction("mean_last_3", s, OFFSETS)[0, 0], [20, 40])
    assert baseline_prediction("seasonal", s, OFFSETS).dtype == np.uint8
    assert baseline_offsets(["mean_last_3", "seasonal"]) == (0, -1, -2, SMLY)
    with pytest.raises(ValueError, match="offset -3"):
        mean_of_last_k(f, OFFSETS, 4)
    with pytest.raises(ValueError, match="unknown baseline"):
        baseline_offsets(["mean_last_x"])


def test_baselines_in_evaluate_models_and_the_strongest(long_dataset_dir, tmp_path):
    res = E.evaluate_models(long_dataset_dir, "all", runs={}, baselines=("mean_last_1", "mean_last_3", "seasonal"),
                            compute_lpips=False, n_boot=20, progress=False)
    summ = res.summary.set_index(["model", "metric"])
    assert list(dict.fromkeys(res.per_tile["model"])) == ["persistence", "mean_last_1", "mean_last_3", "seasonal"]
    for metric in ("psnr", "ssim", "l1"):
        assert summ.loc[("mean_last_1", metric), "mean"] == summ.loc[("persistence", metric), "mean"]
    np.testing.assert_array_equal(res.predictions["mean_last_1"], res.data.past)
    seasonal = res.predictions["seasonal"]
    ids = res.data.context_tile_ids
    assert ids is not None and (ids[:, 3] >= 0).any()  # some pairs have last year's frame
    only_past = ids[:, 3] < 0
    np.testing.assert_array_equal(seasonal[only_past], res.data.past[only_past])
    # strongest baseline: from the summary and from per_tile alike
    best = E.strongest_baseline(res.summary, "psnr")
    psnr = {m: summ.loc[(m, "psnr"), "mean"] for m in ("persistence", "mean_last_1", "mean_last_3", "seasonal")}
    assert psnr[best] == max(psnr.values())
    assert E.strongest_baseline(res.per_tile, "psnr") in {m for m, v in psnr.items() if v == psnr[best]}
    assert E.strongest_baseline(res.summary, "l1", candidates=["persistence"]) == "persistence"
    # the default: today's tables
    plain = E.evaluate_models(long_dataset_dir, "all", runs={}, compute_lpips=False, n_boot=20, progress=False)
    assert set(plain.per_tile["model"]) == {"persistence"}


def _better(p, model, metric):
    v = p.loc[(model, metric), "better"]
    return None if v is None else bool(v)


def test_paired_vs_baseline_signs():
    rows = []
    for a in range(4):
        for j in range(3):
            pid = a * 3 + j
            rows += [{"model": "persistence", "pair_id": pid, "aoi": f"A{a}", "l1": 0.10, "psnr": 20.0, "common": True},
                     {"model": "seasonal", "pair_id": pid, "aoi": f"A{a}", "l1": 0.08, "psnr": 21.0, "common": True},
                     {"model": "gan", "pair_id": pid, "aoi": f"A{a}", "l1": 0.09, "psnr": 20.5, "common": True}]
    pt = pd.DataFrame(rows)
    p = E.paired_vs_baseline(pt, "seasonal", metrics=("l1", "psnr"), n_boot=200).set_index(["model", "metric"])
    assert set(p.index.get_level_values(0)) == {"gan", "persistence"} and set(p["baseline"]) == {"seasonal"}
    assert p.loc[("gan", "l1"), "mean_diff"] == pytest.approx(0.01) and _better(p, "gan", "l1") is False
    assert p.loc[("gan", "psnr"), "mean_diff"] == pytest.approx(-0.5) and _better(p, "gan", "psnr") is False
    q = E.paired_vs_baseline(pt, "persistence", metrics=("l1", "psnr"), n_boot=200).set_index(["model", "metric"])
    assert _better(q, "gan", "psnr") is True and _better(q, "seasonal", "l1") is True
    legacy = E.paired_vs_persistence(pt, metrics=("l1", "psnr"), n_boot=200)
    assert "baseline" not in legacy.columns
    pd.testing.assert_frame_equal(legacy, q.reset_index().drop(columns="baseline"))
    table = E.paired_table(p.reset_index())
    assert "model − seasonal" in table.columns and "95% interval" in table.columns
    assert E.strongest_baseline(pt, "psnr") == "seasonal" and E.strongest_baseline(pt, "l1") == "seasonal"
    with pytest.raises(ValueError, match="no rows"):
        E.paired_vs_baseline(pt, "mean_last_3")


# --------------------------------------------------------------------------- cGAN with context


def _train_cfg(dataset_dir, runs_dir, **kw):
    from stsynth_lib.cgan.config import CGANTrainConfig

    return CGANTrainConfig(**{
        "dataset_dir": str(dataset_dir), "runs_dir": str(runs_dir), "ngf": 8, "ndf": 8, "batch_size": 4,
        "max_steps": 2, "max_train_pairs": 8, "max_val_pairs": 4, "progress": False, "device": "cpu",
        "mixed_precision": "no", "channels_last": False, "residual": True, "log_every_steps": 1,
        "sample_every_steps": 0, "radiometric_jitter": 0.05, **kw})


def test_k1_training_is_todays_training(tiny_dataset_dir, tmp_path):
    from stsynth_lib.cgan.train import train_cgan

    a = train_cgan(_train_cfg(tiny_dataset_dir, tmp_path / "a"))
    b = train_cgan(_train_cfg(tiny_dataset_dir, tmp_path / "b", context_offsets_months=[0]))
    sa = torch.load(a / "checkpoints" / "checkpoint-2" / "state.pt", weights_only=True)["generator"]
    sb = torch.load(b / "checkpoints" / "checkpoint-2" / "state.pt", weights_only=True)["generator"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    spec_a = yaml.safe_load((a / "model.yaml").read_text())
    assert "context_offsets_months" not in spec_a["guidance"]


def test_context_cgan_trains_saves_and_reloads(tiny_dataset_dir, tmp_path):
    from stsynth_lib.cgan.model_io import load_generator
    from stsynth_lib.cgan.train import train_cgan
    from stsynth_lib.cgan.predictor import predict_and_score
    from stsynth_lib.predict import load_predictor

    offsets = [0, -1, SMLY]
    run = train_cgan(_train_cfg(tiny_dataset_dir, tmp_path / "runs", context_offsets_months=offsets))
    spec = yaml.safe_load((run / "model.yaml").read_text())
    base = GuidanceConfig().resolve(True, 3).n_channels
    assert spec["in_channels"] == base + (3 + 2) * 2
    assert spec["guidance"]["context_offsets_months"] == offsets
    G, guide = load_generator(run, "best")
    first_conv = next(v for v in G.state_dict().values() if v.ndim == 4)
    assert guide.context_offsets_months == tuple(offsets) and first_conv.shape[1] == spec["in_channels"]
    # the chapters' test split opened without context: predict_and_score looks the frames up
    test_ds = PairedTileDataset(tiny_dataset_dir, "test", max_pairs=3)
    df = predict_and_score(run, test_ds, tmp_path / "pred", progress=False)
    assert len(df) == 3 and np.isfinite(df["l1"]).all()
    # the predictor needs the context frames and says which
    pred = load_predictor(run)
    sample = PairedTileDataset(tiny_dataset_dir, "test", context_offsets_months=offsets)[0]
    past = ((sample["past"].numpy() + 1) * 127.5).round().astype(np.uint8)
    with pytest.raises(ValueError, match="context"):
        pred.predict(past, "2019-01", "2019-03", future_mask=np.zeros((32, 32), np.uint8))
    out = pred.predict(past, "2019-01", "2019-03", future_mask=np.zeros((32, 32), np.uint8), context={-1: past})
    assert out.shape == past.shape and out.dtype == np.uint8
    out2 = pred.predict(past, "2019-01", "2019-03", future_mask=np.zeros((32, 32), np.uint8),
                        context={-1: past, SMLY: past})
    assert out2.shape == past.shape
    with pytest.raises(ValueError, match="after past_date"):
        pred.predict(past, "2019-01", "2020-03", future_mask=np.zeros((32, 32), np.uint8), context={SMLY: past})


def test_seasonal_residual_base_is_the_seasonal_baseline(long_dataset_dir):
    from stsynth_lib.conditioning import seasonal_base

    ds = PairedTileDataset(long_dataset_dir, "all", context_offsets_months=OFFSETS)
    batch = collate([ds[i] for i in range(len(ds))])
    assert bool(batch["context_present"][:, 3].any()) and not bool(batch["context_present"][:, 3].all())
    cfg = GuidanceConfig(context_offsets_months=OFFSETS, residual_base="seasonal").resolve(False, 3)
    base = seasonal_base(batch, cfg)
    want = seasonal_blend(batch, OFFSETS)  # the baseline chapter 6 scores, uint8
    got = ((base.numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    absent = ~batch["context_present"][:, 3].numpy().astype(bool)
    assert torch.equal(base[absent], batch["past"][absent])  # no frame last year: the past image
    # it comes first (the residual generator's start), then the past image and the rest as before
    x = build_condition(batch, cfg)
    plain = build_condition(batch, GuidanceConfig(context_offsets_months=OFFSETS).resolve(False, 3))
    assert x.shape[1] == plain.shape[1] + 3 and cfg.channel_names()[:4] == ["seasonal_b1", "seasonal_b2",
                                                                            "seasonal_b3", "past_b1"]
    assert torch.equal(x[:, :3], base) and torch.equal(x[:, 3:], plain)


def test_seasonal_residual_base_is_checked_and_saved():
    with pytest.raises(ValueError, match="same_month_last_year"):
        GuidanceConfig(context_offsets_months=[0, -1], residual_base="seasonal")
    with pytest.raises(ValueError, match="residual_base"):
        GuidanceConfig(residual_base="median")
    cfg = GuidanceConfig(context_offsets_months=OFFSETS, residual_base="seasonal")
    assert GuidanceConfig.from_dict(cfg.to_dict()) == cfg
    assert "residual_base" not in GuidanceConfig(context_offsets_months=OFFSETS).to_dict()  # old model.yaml unchanged


def test_residual_generator_starts_from_the_seasonal_baseline(long_dataset_dir):
    from stsynth_lib.models.registry import build_generator

    ds = PairedTileDataset(long_dataset_dir, "all", context_offsets_months=OFFSETS)
    batch = collate([ds[i] for i in range(4)])
    cfg = GuidanceConfig(context_offsets_months=OFFSETS, residual_base="seasonal").resolve(False, 3)
    G = build_generator("pix2pix", in_channels=cfg.n_channels, out_channels=3, ngf=8, tile_size_px=32, residual=True)
    with torch.no_grad():
        for p in G.parameters():
            p.zero_()  # no change predicted: the output is the first channels, the seasonal blend
        out = G.eval()(build_condition(batch, cfg))
    from stsynth_lib.conditioning import seasonal_base
    assert torch.allclose(out, seasonal_base(batch, cfg).clamp(-1, 1))


def test_seasonal_base_cgan_trains_saves_and_reloads(tiny_dataset_dir, tmp_path):
    from stsynth_lib.cgan.model_io import load_generator
    from stsynth_lib.cgan.train import train_cgan
    from stsynth_lib.cgan.predictor import predict_and_score

    offsets = [0, SMLY]
    run = train_cgan(_train_cfg(tiny_dataset_dir, tmp_path / "runs", context_offsets_months=offsets,
                                residual_base="seasonal"))
    spec = yaml.safe_load((run / "model.yaml").read_text())
    assert spec["guidance"]["residual_base"] == "seasonal"
    assert spec["in_channels"] == GuidanceConfig().resolve(True, 3).n_channels + 3 + (3 + 2)
    _, guide = load_generator(run, "best")
    assert guide.residual_base == "seasonal"
    df = predict_and_score(run, PairedTileDataset(tiny_dataset_dir, "test", max_pairs=3), tmp_path / "pred",
                           progress=False)
    assert len(df) == 3 and np.isfinite(df["l1"]).all()


def test_context_predictor_from_a_sample_gives_the_saved_prediction(tiny_dataset_dir, tmp_path):
    """Chapter 3's last cell: one test pair through the array predictor (with its context frames) equals the saved
    test prediction; a sample without the frames is refused with the fix."""
    from stsynth_lib.cgan.train import train_cgan
    from stsynth_lib.cgan.predictor import predict_and_score
    from stsynth_lib.predict import inputs_from_sample, load_predictor, predictor_sample
    from stsynth_lib.predict.files import load_predictions

    offsets = [0, -1, -2]
    run = train_cgan(_train_cfg(tiny_dataset_dir, tmp_path / "runs", context_offsets_months=offsets, max_steps=4))
    test_ds = PairedTileDataset(tiny_dataset_dir, "test")
    ctx = test_ds.with_context_offsets(offsets)
    with_frames = [i for i in range(len(ctx)) if bool(ctx[i]["context_present"][1:].any())][:3]
    test_ds = PairedTileDataset(tiny_dataset_dir, "test")
    test_ds.pairs = test_ds.pairs.iloc[[0] + with_frames].reset_index(drop=True)  # a first pair + 3 with history
    predict_and_score(run, test_ds, tmp_path / "pred", progress=False)
    saved = load_predictions(tmp_path / "pred")
    pred = load_predictor(run)
    with pytest.raises(ValueError, match="predictor_sample"):
        inputs_from_sample(test_ds[0], pred)
    checked = 0
    for i in range(len(test_ds)):
        s = predictor_sample(test_ds, i, pred)
        x = inputs_from_sample(s, pred)
        assert set(x["context"]) == {o for k, o in enumerate(offsets) if o != 0 and bool(s["context_present"][k])}
        checked += bool(x["context"])
        assert np.array_equal(pred.predict(**x), saved[int(s["pair_id"])])
    assert checked > 0  # at least one pair had an earlier frame
