"""cGAN trainer: masked losses, one optimisation step, exact resume, atomic checkpoints, predictions."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

import stsynth_lib.cgan.train as cgan_train
from stsynth_lib.cgan.augment import augment_batch
from stsynth_lib.cgan.calibrate import calibrate_residual_scale
from stsynth_lib.cgan.config import CGANTrainConfig
from stsynth_lib.cgan.losses import cgan_losses, masked_l1_loss, train_step
from stsynth_lib.cgan.model_io import load_generator
from stsynth_lib.cgan.predictor import predict_and_score
from stsynth_lib.cgan.train import parse_args, train_cgan
from stsynth_lib.conditioning import GuidanceConfig, build_condition
from stsynth_lib.data.dataset import PairedTileDataset
from stsynth_lib.evaluate.generator import _metric_rows, _unit01, area_comparison, comparison_table
from stsynth_lib.models import build_discriminator, build_generator, init_weights
from stsynth_lib.runs import latest_checkpoint, list_checkpoints
from stsynth_lib.training import collate, lr_factor

GUIDE = GuidanceConfig().resolve(dataset_has_mask=True, n_bands=3)


def _random_batch(b=4, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    future = torch.rand(b, 3, size, size, generator=g) * 2 - 1
    valid = torch.ones(b, 1, size, size)
    valid[:, :, :, : size // 3] = 0  # a cloud band on the left
    return {
        "past": (future + 0.3 * torch.randn(b, 3, size, size, generator=g)).clamp(-1, 1),
        "future": future,
        "future_mask": (torch.rand(b, 1, size, size, generator=g) > 0.7).float(),
        "valid": valid,
        "gap_months": torch.full((b,), 6.0),
        "future_month": torch.full((b,), 3),
    }


def _models(name="pix2pix", size=32, seed=0, dropout=0.5):
    torch.manual_seed(seed)
    G = init_weights(build_generator(name, GUIDE.n_channels, 3, size, ngf=8, dropout=dropout))
    D = init_weights(build_discriminator(GUIDE.n_channels, 3, ndf=8))
    return G, D


@pytest.mark.parametrize("gan_mode", ["vanilla", "lsgan"])
def test_invalid_pixels_change_no_loss_and_no_metric(gan_mode):
    G, D = _models()
    G.eval()  # no dropout noise between the two evaluations
    batch = _random_batch()
    base = cgan_losses(G, D, batch, GUIDE, gan_mode=gan_mode)
    changed = dict(batch)
    invalid = batch["valid"] == 0
    changed["future"] = torch.where(invalid, torch.rand_like(batch["future"]) * 2 - 1, batch["future"])
    assert not torch.equal(changed["future"], batch["future"])
    again = cgan_losses(G, D, changed, GUIDE, gan_mode=gan_mode)
    for k in ("loss_d", "loss_g", "loss_g_gan", "loss_g_l1"):
        assert torch.equal(base[k], again[k]), k
    # pixel metrics ignore them too (SSIM: stsynth_lib.metrics masks window centres, so windows
    # straddling the cloud edge still see invalid pixels; that definition belongs to the evaluation)
    m1 = _metric_rows(_unit01(base["fake"]), _unit01(batch["future"]), batch["valid"])
    m2 = _metric_rows(_unit01(base["fake"]), _unit01(changed["future"]), batch["valid"])
    for k in ("l1", "psnr"):
        np.testing.assert_array_equal(m1[k], m2[k])
    # ...while a change in a valid pixel does change the losses (the test can fail)
    poked = dict(batch)
    poked["future"] = batch["future"].clone()
    poked["future"][:, :, 16, 20] = -batch["future"][:, :, 16, 20]
    poked_losses = cgan_losses(G, D, poked, GUIDE, gan_mode=gan_mode)
    assert poked_losses["loss_g_l1"] != base["loss_g_l1"]
    assert poked_losses["loss_d"] != base["loss_d"]


def test_masked_l1_loss_definition():
    pred, target = torch.zeros(1, 3, 4, 4), torch.ones(1, 3, 4, 4)
    valid = torch.zeros(1, 1, 4, 4)
    valid[..., :2, :] = 1
    target[..., 2:, :] = 100.0  # invalid half: huge error that must not count
    assert masked_l1_loss(pred, target, valid).item() == pytest.approx(1.0)
    assert masked_l1_loss(pred, target, torch.zeros_like(valid)).item() == 0.0


@pytest.mark.parametrize("name", ["pix2pix", "attention_unet"])
def test_one_training_step_lowers_the_loss_on_a_fixed_batch(name):
    G, D = _models(name, dropout=0.0)
    batch = _random_batch()
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    with torch.no_grad():
        before = cgan_losses(G, D, batch, GUIDE)
    train_step(G, D, opt_g, opt_d, batch, GUIDE)
    with torch.no_grad():
        after = cgan_losses(G, D, batch, GUIDE)
    assert after["loss_g_l1"] < before["loss_g_l1"]
    assert after["loss_g"] < before["loss_g"]
    assert all(p.requires_grad for p in D.parameters())  # D unfrozen again after the generator step


def test_lr_schedule_constant_then_linear_to_zero():
    f = [lr_factor(s, steps_per_epoch=10, epochs_constant=2, epochs_decay=2) for s in range(40)]
    assert f[:20] == [1.0] * 20
    assert all(a > b for a, b in zip(f[20:], f[21:]))
    assert 0 < f[-1] < 0.06


def _cfg(dataset_dir, runs_dir, **kw):
    base = dict(dataset_dir=str(dataset_dir), runs_dir=str(runs_dir), profile="test", model="pix2pix", ngf=8, ndf=8,
                batch_size=4, epochs_constant=1, epochs_decay=1, max_train_pairs=16, max_val_pairs=4,
                log_every_steps=1, sample_every_steps=3, checkpoints_total_limit=2, progress=False, device="cpu")
    base.update(kw)
    return CGANTrainConfig(**base)


def _state(run_dir, step):
    return torch.load(Path(run_dir) / "checkpoints" / f"checkpoint-{step}" / "state.pt", weights_only=True)


def _assert_same(a, b, path=""):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _assert_same(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


@pytest.mark.parametrize("model, extra", [("pix2pix", {}), ("attention_unet", {}),
                                          ("pix2pix", {"use_past_mask": True, "erase_building_fraction": 0.5})])
def test_resume_gives_the_uninterrupted_run(tiny_dataset_dir, tmp_path, model, extra):
    full = train_cgan(_cfg(tiny_dataset_dir, tmp_path / "a", model=model, **extra))
    assert [s for s, _ in list_checkpoints(full)] == [4, 8]  # 16 pairs / batch 4 = 4 steps per epoch, 2 epochs
    # interrupted mid-epoch 2, then resumed from the latest checkpoint
    part = train_cgan(_cfg(tiny_dataset_dir, tmp_path / "b", model=model, max_steps=6, **extra))
    assert [s for s, _ in list_checkpoints(part)] == [4, 6]
    resumed = train_cgan(_cfg(tiny_dataset_dir, tmp_path / "b", model=model, resume_from_checkpoint="latest", **extra))
    a, b = _state(full, 8), _state(resumed, 8)
    for key in ("generator", "discriminator", "opt_g", "opt_d", "sched_g", "sched_d", "rng_cpu", "best"):
        _assert_same(a[key], b[key], key)
    assert [s for s, _ in list_checkpoints(resumed)] == [6, 8]  # kept-count limit 2
    log_a, log_b = pd.read_csv(full / "log.csv"), pd.read_csv(resumed / "log.csv")
    assert list(log_b["step"]) == list(range(1, 9))
    np.testing.assert_array_equal(log_a["loss_g"].to_numpy(), log_b["loss_g"].to_numpy())
    val = pd.read_csv(resumed / "val.csv")
    assert list(val["epoch"]) == [1, 2]
    # run folder contents
    params = yaml.safe_load((full / "params.yaml").read_text())
    assert params["model"] == model and params["steps_per_epoch"] == 4
    assert (full / "best" / "generator.pt").is_file() and (full / "samples" / "step-0000003.png").is_file()
    G, guide = load_generator(full, "best")
    assert guide.use_mask is True and not G.training
    G2, _ = load_generator(full, "latest")
    _assert_same(G2.state_dict(), a["generator"])


def test_failed_checkpoint_write_keeps_the_previous_one(tiny_dataset_dir, tmp_path, monkeypatch):
    run = train_cgan(_cfg(tiny_dataset_dir, tmp_path, max_steps=4))
    ck4 = run / "checkpoints" / "checkpoint-4" / "state.pt"
    digest = hashlib.sha256(ck4.read_bytes()).hexdigest()

    # 1. the process is interrupted in the middle of writing checkpoint-8
    def dying_save(obj, path):
        Path(path).write_bytes(b"half a checkpoint")
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(cgan_train, "atomic_torch_save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        train_cgan(_cfg(tiny_dataset_dir, tmp_path, resume_from_checkpoint="latest", sample_every_steps=0,
                           val_every_epochs=99))  # no validation: only the checkpoint write can die
    monkeypatch.undo()
    assert [p.name for _, p in list_checkpoints(run)] == ["checkpoint-4"]
    assert not any(p.name.endswith(".tmp") for p in (run / "checkpoints").iterdir())
    assert hashlib.sha256(ck4.read_bytes()).hexdigest() == digest

    # 2. SIGKILL mid-write (no cleanup runs): a real process dies inside atomic_checkpoint_dir
    code = (
        "import os, signal, sys\n"
        "from stsynth_lib.runs import atomic_checkpoint_dir\n"
        "with atomic_checkpoint_dir(sys.argv[1], 8) as tmp:\n"
        "    (tmp / 'state.pt').write_bytes(b'partial')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(run)], cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == -9
    assert (run / "checkpoints" / "checkpoint-8.tmp").is_dir()  # the debris is there...
    assert latest_checkpoint(run).name == "checkpoint-4"  # ...but never taken for a checkpoint
    resumed = train_cgan(_cfg(tiny_dataset_dir, tmp_path, resume_from_checkpoint="latest"))
    assert [s for s, _ in list_checkpoints(resumed)] == [4, 8]
    assert int(_state(resumed, 8)["step"]) == 8


def test_val_every_steps_validates_inside_epochs_and_keeps_the_best(tiny_dataset_dir, tmp_path):
    # 16 pairs / batch 4 = 4 steps per epoch, 2 epochs: validation at steps 3, 4 (epoch end), 6, 8 (epoch end)
    run = train_cgan(_cfg(tiny_dataset_dir, tmp_path / "runs", val_every_steps=3))
    val = pd.read_csv(run / "val.csv")
    assert val["step"].tolist() == [3, 4, 6, 8]
    assert val["best"].iloc[0] == 1
    best = yaml.safe_load((run / "best" / "best.yaml").read_text())
    assert best["value"] == pytest.approx(val["val_l1"].min())
    assert best["step"] == int(val.loc[val["val_l1"].idxmin(), "step"])
    plain = train_cgan(_cfg(tiny_dataset_dir, tmp_path / "runs2"))
    assert pd.read_csv(plain / "val.csv")["step"].tolist() == [4, 8]


def test_no_labels_trains_on_image_and_time(unlabelled_dataset_dir, tmp_path):
    ds_dir = unlabelled_dataset_dir
    run = train_cgan(_cfg(ds_dir, tmp_path / "runs", model="attention_unet", max_steps=1))
    spec = yaml.safe_load((run / "model.yaml").read_text())
    assert "future_mask" not in spec["channels"]
    assert spec["in_channels"] == 3 + 3  # RGB + gap + month sin/cos
    forced = train_cgan(_cfg(ds_dir, tmp_path / "runs2", use_mask=True, time_encoding="none", max_steps=1))
    assert yaml.safe_load((forced / "model.yaml").read_text())["channels"] == ["past_b1", "past_b2", "past_b3", "future_mask"]


def test_predict_and_score_writes_predictions_and_scores_persistence(tiny_dataset_dir, tmp_path):
    from stsynth_lib.metrics import masked_l1
    from stsynth_lib.predict.files import load_predictions

    run = train_cgan(_cfg(tiny_dataset_dir, tmp_path, max_steps=2))
    test = PairedTileDataset(tiny_dataset_dir, "test", max_pairs=6)
    out = run / "predictions" / "test"
    df = predict_and_score(run, test, out, progress=False, metrics_csv=run / "test_metrics.csv")
    preds = load_predictions(out)
    assert sorted(preds) == sorted(df["pair_id"]) == sorted(int(test[i]["pair_id"]) for i in range(len(test)))
    s = test[0]
    img = preds[int(s["pair_id"])]
    assert img.dtype == np.uint8 and img.shape == (3, 32, 32)
    # persistence L1 computed independently on [0, 1] images, reported in [-1, 1] units
    expect = masked_l1((s["past"][None] + 1) / 2, (s["future"][None] + 1) / 2, s["valid"][None])[0] * 2
    got = df.set_index("pair_id").loc[int(s["pair_id"]), "persistence_l1"]
    assert got == pytest.approx(expect, abs=1e-2)  # persistence is scored after uint8 quantisation
    # the model's score is computed on what was written to disk
    gen = torch.from_numpy(img[None].astype(np.float32) / 255.0)
    own = masked_l1(gen, (s["future"][None] + 1) / 2, s["valid"][None])[0] * 2
    assert df.set_index("pair_id").loc[int(s["pair_id"]), "l1"] == pytest.approx(own, abs=1e-4)
    table = comparison_table(df, "pix2pix")
    assert list(table.index) == ["pix2pix", "persistence (future = past)"]
    assert (run / "test_metrics.csv").is_file()
    # a second call replaces, never mixes
    predict_and_score(run, PairedTileDataset(tiny_dataset_dir, "test", max_pairs=2), out, progress=False)
    assert len(load_predictions(out)) == 2


def test_cli_parses_every_option(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("profile: smoke\nlambda_l1: 10\nlr: 1e-4\n")
    cfg = parse_args(["--params", str(p), "--dataset-dir", "data/x", "--model", "attention_unet",
                         "--max-steps", "none", "--use-mask", "false", "--lambda-l1", "50", "--gan-mode", "lsgan"])
    assert cfg.dataset_dir == "data/x" and cfg.model == "attention_unet" and cfg.max_steps is None
    assert cfg.use_mask is False and cfg.lambda_l1 == 50 and cfg.gan_mode == "lsgan" and cfg.profile == "smoke"
    assert cfg.lr == 1e-4  # YAML reads 1e-4 as text: the check converts it
    p.write_text("profile: smoke\nunrelated_key: 1\n")
    with pytest.raises(ValueError, match="unrelated_key"):  # unknown keys are refused, not ignored
        parse_args(["--params", str(p), "--dataset-dir", "data/x"])
    with pytest.raises(ValueError, match="model must be one of"):
        parse_args(["--model", "vae"])


def test_radiometric_jitter_maps_past_and_future_through_the_same_line():
    gen = torch.Generator().manual_seed(3)
    past = torch.rand(4, 3, 16, 16, generator=gen) - 0.5  # |x| <= 0.5: no clipping at j = 0.2
    future = torch.rand(4, 3, 16, 16, generator=gen) - 0.5
    valid = (torch.rand(4, 1, 16, 16, generator=gen) > 0.2).float()
    batch = {"past": past, "future": future, "valid": valid, "aoi": ["a"] * 4}
    plain = augment_batch(batch, torch.Generator().manual_seed(9))
    jit = augment_batch(batch, torch.Generator().manual_seed(9), radiometric_jitter=0.2)
    assert torch.equal(jit["valid"], plain["valid"])  # masks: same geometry, no radiometry
    assert not torch.allclose(jit["past"], plain["past"])
    for i in range(4):
        for c in range(3):
            x = plain["past"][i, c].flatten()
            A = torch.stack([x, torch.ones_like(x)], 1).double()
            gain, offset = torch.linalg.lstsq(A, jit["past"][i, c].flatten().double()[:, None]).solution.flatten()
            assert 0.8 - 1e-6 <= gain <= 1.2 + 1e-6 and abs(offset) <= 0.2 + 1e-6
            # the future went through the very same line: the past -> future change is kept, only rescaled
            torch.testing.assert_close(jit["future"][i, c].double(), plain["future"][i, c].double() * gain + offset,
                                       atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="radiometric_jitter"):
        CGANTrainConfig(dataset_dir="x", radiometric_jitter=0.2, augment=False)


class _ShiftedFuture:
    """A split whose future image is the past image plus ``shift`` (clipped): a known best change."""

    def __init__(self, ds, shift, gain=1.0, full_gap_months=None):
        self.ds, self.shift, self.gain, self.full_gap = ds, shift, gain, full_gap_months

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        s = dict(self.ds[i])
        shift = self.shift
        if self.full_gap is not None:  # the change grows with the gap until full_gap months
            shift = shift * min(1.0, float(s["gap_months"]) / self.full_gap)
        s["future"] = (s["past"] * self.gain + shift).clamp(-1, 1)
        return s


def _constant_change_generator(change: float, size: int):
    """A residual generator whose predicted change is ``change`` everywhere (zero weights, tanh(bias) = change)."""
    G = build_generator("pix2pix", GUIDE.n_channels, 3, size, ngf=8, residual=True,
                        gap_channel=GUIDE.channel_names().index("gap_months_scaled"), gap_scale_months=GUIDE.gap_scale_months)
    head = G.ups[0][1]
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.constant_(head.bias, float(np.arctanh(change)))
    return G.eval()


def test_residual_scale_is_calibrated_on_held_out_pairs(tiny_dataset_dir):
    val = PairedTileDataset(tiny_dataset_dir, "val")
    size = val.tile_size_px
    G = _constant_change_generator(0.4, size)
    # the truth moved by half of what the model predicts: the right scale is 0.5, the same at every gap
    chosen, table = calibrate_residual_scale(G, _ShiftedFuture(val, 0.2), GUIDE, batch_size=4)
    assert chosen["residual_scale"] == pytest.approx(0.5) and chosen["residual_full_gap_months"] == 1.0
    assert table["chosen"].sum() == 1
    # the truth moved by the full change only from 3 months on, proportionally less before: found from the gaps
    every = PairedTileDataset(tiny_dataset_dir, "all")
    assert every.pairs["gap_months"].min() < 3 < every.pairs["gap_months"].max()
    chosen_ramp, _ = calibrate_residual_scale(G, _ShiftedFuture(every, 0.4, full_gap_months=3), GUIDE, batch_size=8)
    assert chosen_ramp == {"residual_scale": pytest.approx(1.0), "residual_full_gap_months": 3.0}
    # nothing changed: the calibration falls back to persistence (scale 0) instead of keeping the overconfident model
    chosen0, table0 = calibrate_residual_scale(G, _ShiftedFuture(val, 0.0), GUIDE, batch_size=4)
    assert chosen0["residual_scale"] == 0.0 and table0["val_l1"].iloc[0] < 1e-6
    # the criterion averages areas, not pairs: recompute it for scale 0 (persistence) by hand on several areas
    damped = _ShiftedFuture(every, 0.0, gain=0.5)  # pair-dependent L1
    _, table_all = calibrate_residual_scale(G, damped, GUIDE, scales=(0.0, 1.0), full_gaps_months=(1,), batch_size=8)
    per_pair = []
    for i in range(len(every)):
        s = damped[i]
        per_pair.append(float(((s["past"] - s["future"]).abs() * s["valid"]).sum() / (s["valid"].sum() * 3).clamp(min=1)))
    by_area = pd.Series(per_pair).groupby(every.pairs["aoi"].to_numpy()).mean()
    assert by_area.size >= 2 and abs(by_area.mean() - np.mean(per_pair)) > 1e-4  # the two averages differ here
    assert table_all["val_l1_area_mean"].iloc[0] == pytest.approx(by_area.mean(), abs=1e-5)
    assert table_all["val_l1"].iloc[0] == pytest.approx(np.mean(per_pair), abs=1e-5)
    # the scale and the ramp are saved buffers: forward uses them, a state-dict round trip keeps them
    G.residual_scale.fill_(0.5)
    G.residual_full_gap_months.fill_(4.0)
    b = collate([every[i] for i in range(len(every))])
    out = G(build_condition(b, GUIDE))
    k = 0.5 * torch.clamp(b["gap_months"] / 4.0, max=1.0).reshape(-1, 1, 1, 1)
    torch.testing.assert_close(out, (b["past"] + k * 0.4).clamp(-1, 1), atol=1e-5, rtol=0)
    G2 = _constant_change_generator(0.4, size)
    G2.load_state_dict(G.state_dict())
    assert float(G2.residual_scale) == 0.5 and float(G2.residual_full_gap_months) == 4.0
    with pytest.raises(ValueError, match="residual=True"):
        calibrate_residual_scale(build_generator("pix2pix", GUIDE.n_channels, 3, size, ngf=8), val, GUIDE)


def test_training_run_writes_and_uses_the_calibrated_scale(tiny_dataset_dir, tmp_path):
    run = train_cgan(_cfg(tiny_dataset_dir, tmp_path, residual=True, calibrate_residual_scale=True, max_steps=4))
    table = pd.read_csv(run / "best" / "residual_scale.csv")
    best = yaml.safe_load((run / "best" / "best.yaml").read_text())
    row = table[table["chosen"]].iloc[0]
    assert best["residual_scale"] == row["residual_scale"]
    assert best["residual_full_gap_months"] == row["full_gap_months"]
    assert table["val_l1_area_mean"].min() == pytest.approx(row["val_l1_area_mean"])
    G, _ = load_generator(run, "best")
    assert float(G.residual_scale) == pytest.approx(row["residual_scale"])
    assert float(G.residual_full_gap_months) == pytest.approx(row["full_gap_months"])
    assert G.gap_channel == yaml.safe_load((run / "model.yaml").read_text())["channels"].index("gap_months_scaled")
    from stsynth_lib.cgan.plots import plot_residual_calibration

    fig = plot_residual_calibration(run)
    assert fig is not None and "persistence (scale 0)" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert plot_residual_calibration(tmp_path / "no-such-run") is None
    G_latest, _ = load_generator(run, "latest")  # checkpoints keep the trained scale of 1
    assert float(G_latest.residual_scale) == 1.0
    with pytest.raises(ValueError, match="residual: true"):
        _cfg(tiny_dataset_dir, tmp_path, residual=False, calibrate_residual_scale=True)


def test_area_comparison_counts_areas_and_pairs():
    rows = []
    for a, (n, model_l1, pers_l1) in enumerate([(10, 0.10, 0.12), (30, 0.20, 0.19), (5, 0.05, 0.06)]):
        for i in range(n):
            rows.append({"pair_id": 100 * a + i, "aoi": f"A{a}", "l1": model_l1, "psnr": 20.0, "ssim": 0.5,
                         "persistence_l1": pers_l1, "persistence_psnr": 19.0, "persistence_ssim": 0.5})
    per_area, paired = area_comparison(pd.DataFrame(rows), "m", n_boot=200)
    assert per_area["pairs"].tolist() == [10, 30, 5]
    assert per_area["model_better"].tolist() == [True, False, True]
    l1 = paired.set_index("metric").loc["l1"]
    assert l1["areas_better"] == 2 and l1["n_areas"] == 3 and l1["n_pairs"] == 45
    assert l1["mean_diff"] == pytest.approx((10 * -0.02 + 30 * 0.01 + 5 * -0.01) / 45 / 2)  # [0, 1] units
    assert paired.set_index("metric").loc["psnr", "better"] is True  # +1 dB in every area


def test_chapter_comparison_resamples_blocks_on_a_block_split(tiny_dataset_dir, tmp_path):
    """On a dataset split by blocks (one area, sn7_labelled), chapters 3-4's model - persistence interval resamples
    whole blocks, as chapter 6 does, instead of giving "n/a (1 area)"."""
    from test_blocks import OneAreaInBlocks

    cfg = GuidanceConfig().resolve(True, 3)
    G = build_generator("pix2pix", cfg.n_channels, 3, 32, ngf=8, residual=True)
    torch.manual_seed(0)
    with torch.no_grad():  # a generator that changes the image, so model and persistence differ
        for p in G.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ds = OneAreaInBlocks(tiny_dataset_dir, "test")
    df = predict_and_score(G.eval(), ds, tmp_path / "pred", guidance=cfg, progress=False)
    assert set(df["cluster"]) == {"one_area/block-0-0", "one_area/block-1-0"}
    _, paired = area_comparison(df, "m", n_boot=200)
    psnr = paired.set_index("metric").loc["psnr"]
    assert psnr["n_areas"] == 2 and not pd.isna(psnr["ci_lo"]) and psnr["ci_lo"] <= psnr["ci_hi"]
    plain = predict_and_score(G.eval(), PairedTileDataset(tiny_dataset_dir, "test"), tmp_path / "pred2",
                              guidance=cfg, progress=False)
    assert "cluster" not in plain  # split by areas: areas are resampled, as before


def test_chapter_call_trains_then_predicts_the_test_split(tiny_dataset_dir, tmp_path):
    """Chapters 3 and 4 share one call (stsynth_lib.cgan.chapter.train_and_test): the run, then its best generator's
    test predictions compared with persistence, as predict_and_score gives them."""
    from stsynth_lib.cgan.chapter import scores_text, train_and_test

    run = train_and_test(_cfg(tiny_dataset_dir, tmp_path, max_steps=2), max_test_pairs=3)
    assert len(run.test_ds) == len(run.per_pair) == 3
    assert (run.run_dir / "predictions" / "test" / "index.csv").is_file()
    assert (run.run_dir / "test_metrics.csv").is_file()
    again = predict_and_score(run.run_dir, run.test_ds, tmp_path / "again", progress=False)
    pd.testing.assert_frame_equal(run.per_pair, again)
    # the saved GeoTIFFs are the best generator as it trained (eager, fp32) on the test pairs, bit for bit
    from stsynth_lib.data.dataset import to_uint8
    from stsynth_lib.predict.files import load_predictions

    G, guidance = load_generator(run.run_dir, "best")
    batch = collate([run.test_ds[i] for i in range(len(run.test_ds))])
    with torch.no_grad():
        want = to_uint8(G.eval()(build_condition(batch, guidance)))
    saved = load_predictions(run.run_dir / "predictions" / "test")
    assert np.array_equal(np.stack([saved[int(p)] for p in batch["pair_id"]]), want)
    assert list(run.table.index) == ["pix2pix", "persistence (future = past)"]
    assert set(run.per_area.index) == set(run.per_pair["aoi"])
    text = scores_text({"l1": 0.5, "psnr": 20.0})
    assert text.startswith("L1 ") and ", PSNR (dB) " in text


def test_chapter_4_is_the_twin_of_chapter_3s_run(tiny_dataset_dir, tmp_path):
    """twin_config: chapter 3's recorded options with another generator and the listed changes only; the twin
    comparison is the per-pair difference of the two runs' test scores (L1 in [0, 1] units), areas resampled."""
    from stsynth_lib.cgan.chapter import paired_with_twin, train_and_test, twin_config

    first = train_and_test(_cfg(tiny_dataset_dir, tmp_path, max_steps=2, lambda_l1=50.0), max_test_pairs=4)
    with pytest.raises(FileNotFoundError, match="run chapter 3 first"):
        twin_config(tmp_path, "test", "no_such_run", "attention_unet")
    with pytest.raises(ValueError, match="no_such_option: not a cGAN option a twin may change"):
        twin_config(tmp_path, "test", first.run_dir.name, "attention_unet", changes={"no_such_option": 1})
    with pytest.raises(ValueError, match="lr = -1.0: accepted values"):
        twin_config(tmp_path, "test", first.run_dir.name, "attention_unet", changes={"lr": -1.0})
    twin = twin_config(tmp_path, "test", first.run_dir.name, "attention_unet", changes={"lr": 1e-3}, progress=False)
    recorded = yaml.safe_load((first.run_dir / "params.yaml").read_text())
    assert twin.model == "attention_unet" and twin.lr == 1e-3
    assert twin.lambda_l1 == recorded["lambda_l1"] == 50.0 and twin.max_steps == recorded["max_steps"]
    assert twin.dataset_dir == recorded["dataset_dir"] and twin.seed == recorded["seed"]
    top = set(first.per_pair.nlargest(2, "persistence_l1")["pair_id"])
    assert {int(first.test_ds.pairs.iloc[i]["pair_id"]) for i in first.most_changed(2)} == top
    second = train_and_test(twin, max_test_pairs=4)
    paired = paired_with_twin(second, first.run_dir)
    assert set(paired["metric"]) >= {"l1", "psnr", "ssim"} and set(paired["baseline"]) == {first.run_dir.name}
    l1 = paired.set_index("metric").loc["l1"]
    want = ((second.per_pair.set_index("pair_id")["l1"] - first.per_pair.set_index("pair_id")["l1"]) / 2).mean()
    assert l1["mean_diff"] == pytest.approx(want, rel=1e-9)
    if second.per_pair["aoi"].nunique() > 1:
        assert l1["ci_lo"] <= l1["mean_diff"] <= l1["ci_hi"]
    else:  # one area: nothing to resample, no interval (and so no verdict)
        assert np.isnan(l1["ci_lo"]) and np.isnan(l1["ci_hi"])


def test_the_twin_command_trains_a_no_mask_control_of_a_guided_run(tiny_dataset_dir, tmp_path, capsys):
    """python -m stsynth_lib.cgan.twin: the run's recorded options with the mask channels removed, its test
    predictions, and the paired table against the run; bad input answers with the fix, exit code 2."""
    from stsynth_lib.cgan.chapter import train_and_test
    from stsynth_lib.cgan.twin import main as twin_main

    guided = train_and_test(_cfg(tiny_dataset_dir, tmp_path, max_steps=2, use_mask=True), max_test_pairs=4)
    assert twin_main(["--run", str(guided.run_dir), "--run-name", "pix2pix_nomask", "--set", "use_mask=false",
                      "--max-test-pairs", "4", "--device", "cpu", "--no-progress"]) == 0
    out = capsys.readouterr().out
    twin_dir = guided.run_dir.parent / "pix2pix_nomask"
    recorded = yaml.safe_load((twin_dir / "params.yaml").read_text())
    original = yaml.safe_load((guided.run_dir / "params.yaml").read_text())
    assert recorded["use_mask"] is False and original["use_mask"] is True
    same = lambda d: {k: v for k, v in d.items() if k not in ("use_mask", "run_name", "resolved_guidance")}  # noqa: E731
    assert same(recorded) == same(original) and recorded["resolved_guidance"]["use_mask"] is False
    assert (twin_dir / "test_metrics.csv").is_file() and "model − pix2pix" in out
    assert twin_main(["--run", str(guided.run_dir), "--run-name", "x", "--set", "use_mask=maybe"]) == 2
    assert "use_mask" in capsys.readouterr().err
    assert twin_main(["--run", str(guided.run_dir), "--run-name", guided.run_dir.name]) == 2


def test_chapters_3_and_4_train_a_no_mask_twin_that_differs_by_the_footprints_only(tiny_dataset_dir, tmp_path):
    """nomask_twin (chapters 3-4): the run's recorded options with use_mask / use_past_mask off and nothing else
    changed, tested on the same pairs, with the paired table against the run; a run that reads no footprints, or a
    twin name that would overwrite the run, is refused."""
    from stsynth_lib.cgan.chapter import train_and_test, train_nomask_twin

    guided = train_and_test(_cfg(tiny_dataset_dir, tmp_path, max_steps=2, use_mask=True, use_past_mask=True),
                            max_test_pairs=4)
    with pytest.raises(ValueError, match="would overwrite"):
        train_nomask_twin(guided, guided.run_dir.name, 4, device="cpu", progress=False)
    twin, gain = train_nomask_twin(guided, "pix2pix_nomask", 4, device="cpu", progress=False)
    recorded = yaml.safe_load((twin.run_dir / "params.yaml").read_text())
    original = yaml.safe_load((guided.run_dir / "params.yaml").read_text())
    assert recorded["use_mask"] is False and recorded["use_past_mask"] is False
    drop = ("use_mask", "use_past_mask", "run_name", "resolved_guidance")
    assert {k: v for k, v in recorded.items() if k not in drop} == {k: v for k, v in original.items() if k not in drop}
    assert set(gain["baseline"]) == {"pix2pix_nomask"} and {"l1", "psnr"} <= set(gain["metric"])
    assert set(twin.per_pair["pair_id"]) == set(guided.per_pair["pair_id"])  # the same test pairs
    with pytest.raises(ValueError, match="reads no footprints"):
        train_nomask_twin(twin, "pix2pix_nomask_nomask", 4, device="cpu", progress=False)
    from stsynth_lib.cgan.chapter import nomask_twin_report

    text, table = nomask_twin_report(guided, None)  # labelled data, no twin asked for: says how to get one
    assert table is None and "set `nomask_twin`" in text
