"""What both trainers share (stsynth_lib.training): batching, precision, and run folders that are never lost.

Issue 10, item 1: a new run must not destroy the previous one before it has produced something, stale
predictions must never sit next to another run's parameters, checkpoint limits must not delete every
checkpoint, and resuming with other options must be refused or recorded."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
import yaml

import stsynth_lib.cgan.train as cgan_train
from stsynth_lib.cgan.config import CGANTrainConfig
from stsynth_lib.cgan.train import train_cgan
from stsynth_lib.training import (
    config_defaults,
    epoch_batches,
    fresh_run,
    resolve_device,
    resume_changes,
    steps_per_epoch,
)


def _cfg(dataset_dir, runs_dir, **kw):
    base = dict(dataset_dir=str(dataset_dir), runs_dir=str(runs_dir), profile="test", model="pix2pix", ngf=8, ndf=8,
                batch_size=4, max_steps=2, max_train_pairs=8, max_val_pairs=4, log_every_steps=1, progress=False,
                device="cpu")
    base.update(kw)
    return CGANTrainConfig(**base)


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def finished_run(tiny_dataset_dir, tmp_path):
    """A finished cGAN run with test predictions beside it, as notebook 03 leaves it."""
    run = train_cgan(_cfg(tiny_dataset_dir, tmp_path))
    pred = run / "predictions" / "test"
    pred.mkdir(parents=True)
    (pred / "index.csv").write_text("pair_id,tif\n")
    return run


@pytest.mark.parametrize("limit", [0, -1])
def test_checkpoint_limit_zero_or_negative_is_refused(tiny_dataset_dir, tmp_path, limit):
    with pytest.raises(ValueError, match="checkpoints_total_limit"):
        _cfg(tiny_dataset_dir, tmp_path, checkpoints_total_limit=limit)
    pytest.importorskip("diffusers")
    from stsynth_lib.controlnet.config import ControlNetTrainConfig

    with pytest.raises(ValueError, match="checkpoints_total_limit"):
        ControlNetTrainConfig(checkpoints_total_limit=limit)


def test_checkpoint_limit_none_keeps_every_checkpoint(tiny_dataset_dir, tmp_path):
    run = train_cgan(_cfg(tiny_dataset_dir, tmp_path, max_steps=3, checkpoint_every_steps=1, checkpoints_total_limit=None))
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]


def test_fresh_run_that_crashes_early_keeps_the_previous_run(finished_run, tiny_dataset_dir, tmp_path):
    before = _digest(finished_run)
    with pytest.raises(Exception):
        train_cgan(_cfg(tiny_dataset_dir, tmp_path, ngf=0))  # the example of an early crash
    assert _digest(finished_run) == before


def test_fresh_run_killed_in_training_restores_the_previous_run(finished_run, tiny_dataset_dir, tmp_path, monkeypatch):
    before = _digest(finished_run)

    def killed(self):
        (self.run_dir / "log.csv").write_text("half a log")
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(cgan_train.CGANRun, "fit", killed)
    with pytest.raises(KeyboardInterrupt):
        train_cgan(_cfg(tiny_dataset_dir, tmp_path, lr=1e-3))
    assert _digest(finished_run) == before
    assert not finished_run.with_name(finished_run.name + ".previous").exists()


def test_successful_fresh_run_leaves_no_stale_predictions(finished_run, tiny_dataset_dir, tmp_path):
    train_cgan(_cfg(tiny_dataset_dir, tmp_path, lr=1e-3))
    assert not (finished_run / "predictions").exists()  # they belonged to the previous parameters
    assert yaml.safe_load((finished_run / "params.yaml").read_text())["lr"] == 1e-3
    assert not finished_run.with_name(finished_run.name + ".previous").exists()


def test_resume_with_other_options_is_refused_or_recorded(tiny_dataset_dir, tmp_path):
    run = train_cgan(_cfg(tiny_dataset_dir, tmp_path, max_steps=2))
    with pytest.raises(ValueError, match=r"lr: 0.0002 -> 0.001"):
        train_cgan(_cfg(tiny_dataset_dir, tmp_path, max_steps=3, lr=1e-3, resume_from_checkpoint="latest"))
    train_cgan(_cfg(tiny_dataset_dir, tmp_path, max_steps=3, lr=1e-3, resume_from_checkpoint="latest",
                    allow_resume_changes=True))
    params = yaml.safe_load((run / "params.yaml").read_text())
    assert params["lr"] == 1e-3
    assert params["resumed"] == [{"step": 2, "changed": {"lr": [0.0002, 0.001]}}]
    # max_steps is what resuming is for: not a change
    assert resume_changes({"max_steps": 2, "lr": 1.0}, {"max_steps": 3, "lr": 1.0}) == {}
    # a run saved before an option existed ran with its default: turning it on when resuming is a change
    old_params = {k: v for k, v in params.items() if k != "erase_building_fraction"}
    defaults = config_defaults(CGANTrainConfig)
    got = resume_changes(old_params, {"erase_building_fraction": 0.3}, defaults)
    assert got == {"erase_building_fraction": (0.0, 0.3)}
    assert resume_changes(old_params, {"erase_building_fraction": 0.0}, defaults) == {}
    assert resume_changes(old_params, {"erase_building_fraction": 0.3}) == {}  # no defaults given: left out
    (run / "params.yaml").write_text(yaml.safe_dump({**old_params, "resumed": []}))
    with pytest.raises(ValueError, match=r"erase_building_fraction: 0.0 -> 0.3"):
        train_cgan(_cfg(tiny_dataset_dir, tmp_path, max_steps=4, lr=1e-3, resume_from_checkpoint="latest",
                        erase_building_fraction=0.3))


@pytest.mark.parametrize("key, value", [("lambda_l1", 0), ("lambda_l1", -1.0), ("lr", "fast"), ("lr", 0)])
def test_non_positive_or_non_numeric_lr_and_l1_weight_are_refused(tiny_dataset_dir, tmp_path, key, value):
    with pytest.raises(ValueError, match=key):
        _cfg(tiny_dataset_dir, tmp_path, **{key: value})


def test_fresh_run_clears_a_folder_without_results(tmp_path):
    leftover = tmp_path / "run"
    leftover.mkdir()
    (leftover / "params.yaml").write_text("a: 1\n")
    with fresh_run(leftover):
        assert not leftover.exists()
    assert not leftover.with_name("run.previous").exists()


def test_epoch_batches_shard_and_drop_last():
    full = epoch_batches(10, 4, epoch=0, seed=1)
    assert [len(b) for b in full] == [4, 4, 2] and sorted(sum(full, [])) == list(range(10))
    assert [len(b) for b in epoch_batches(10, 4, 0, 1, drop_last=True)] == [4, 4]
    assert steps_per_epoch(10, 4) == 3 and steps_per_epoch(10, 4, drop_last=True) == 2
    r0, r1 = epoch_batches(10, 2, 0, 1, rank=0, world=2), epoch_batches(10, 2, 0, 1, rank=1, world=2)
    assert not set(sum(r0, [])) & set(sum(r1, [])) and len(sum(r0 + r1, [])) == 10
    assert epoch_batches(10, 4, 1, 1) != full  # each epoch its own order, the same for a given (seed, epoch)
    assert epoch_batches(10, 4, 0, 1) == full


def test_resolve_device_precision_rules():
    assert resolve_device("cpu", "auto", cpu_bf16=False).mixed_precision == "no"
    cpu_bf16 = resolve_device("cpu", "auto", cpu_bf16=True)
    assert cpu_bf16.mixed_precision == "bf16" and cpu_bf16.channels_last
    assert resolve_device("cpu", "auto", cpu_auto_precision="no", cpu_bf16=True).mixed_precision == "no"
    assert resolve_device("cpu", "no", channels_last=True).channels_last
    with pytest.raises(ValueError, match="fp16"):
        resolve_device("cpu", "fp16")
    with pytest.raises(ValueError, match="mixed_precision"):
        resolve_device("cpu", "fp8")


def test_controlnet_fresh_run_that_fails_restores_the_previous_run(tiny_dataset_dir, tmp_path, monkeypatch):
    pytest.importorskip("diffusers")
    pytest.importorskip("open_clip")
    import stsynth_lib.controlnet.train as cn_train
    from stsynth_lib.controlnet.config import ControlNetTrainConfig

    monkeypatch.setenv("STSYNTH_CACHE", str(tmp_path / "cache"))
    old = tmp_path / "test" / "controlnet"  # a previous run: trained weights, predictions, params
    (old / "controlnet").mkdir(parents=True)
    (old / "controlnet" / "config.json").write_text("{}")
    (old / "predictions" / "test").mkdir(parents=True)
    (old / "params.yaml").write_text("learning_rate: 1.0e-05\n")
    before = _digest(old)

    def out_of_memory(self):
        raise MemoryError("out of memory")

    monkeypatch.setattr(cn_train.ControlNetRun, "fit", out_of_memory)
    with pytest.raises(MemoryError):
        cn_train.train_controlnet(ControlNetTrainConfig(dataset_dir=str(tiny_dataset_dir), runs_dir=str(tmp_path),
                                                        profile="test", max_train_pairs=4, progress=False, device="cpu"))
    assert _digest(old) == before


def test_trainer_command_line_refuses_a_typo_in_a_params_file(tmp_path):
    from stsynth_lib.cgan.train import parse_args
    from stsynth_lib.params import ParamError

    bad = tmp_path / "03_train_cgan.yaml"
    bad.write_text("lamda_l1: 50\n")
    with pytest.raises(ParamError, match=r"lamda_l1.*Did you mean 'lambda_l1'"):
        parse_args(["--params", str(bad)])
    good = tmp_path / "ok.yaml"
    good.write_text("lambda_l1: 50\nlr: 1e-4\n")
    cfg = parse_args(["--params", str(good), "--batch-size", "2", "--dataset-dir", "data/x", "--profile", "x"])
    assert (cfg.lambda_l1, cfg.lr, cfg.batch_size) == (50, 1e-4, 2)


def test_oversampled_batches_give_each_batch_its_share_of_favoured_pairs():
    from stsynth_lib.training import epoch_batches, oversampled_epoch_batches

    favoured = [3, 17, 40]
    batches = oversampled_epoch_batches(50, favoured, 0.25, 8, epoch=2, seed=1)
    plain = epoch_batches(50, 8, epoch=2, seed=1)
    assert [len(b) for b in batches] == [len(b) for b in plain]  # same epoch length: the LR schedule is unchanged
    for b in batches:
        assert sum(i in favoured for i in b[:2]) == 2  # round(0.25 * 8) = 2 places per batch
    drawn = [i for b in batches for i in b[:2]]
    counts = {f: drawn.count(f) for f in favoured}
    assert max(counts.values()) - min(counts.values()) <= 1  # a shuffled cycle: every favoured pair about as often
    share = sum(i in favoured for b in batches for i in b) / 50
    assert share > 0.25 > len(favoured) / 50  # far above the plain share (6 %)
    assert batches == oversampled_epoch_batches(50, favoured, 0.25, 8, epoch=2, seed=1)  # resume replays it
    assert batches != oversampled_epoch_batches(50, favoured, 0.25, 8, epoch=3, seed=1)
    assert sum(i in favoured for i in oversampled_epoch_batches(50, favoured, 0.01, 8, 0, 0)[0]) >= 1  # at least 1
    with pytest.raises(ValueError, match="fraction"):
        oversampled_epoch_batches(50, favoured, 1.0, 8, 0, 0)
    with pytest.raises(ValueError, match="favoured"):
        oversampled_epoch_batches(50, [], 0.5, 8, 0, 0)


def test_new_building_pixels_count_future_but_not_past_footprints(tiny_dataset_dir):
    import numpy as np

    from stsynth_lib.data.dataset import PairedTileDataset

    ds = PairedTileDataset(tiny_dataset_dir, "all")
    got = ds.new_building_pixels()
    assert got.shape == (len(ds),)
    for i in range(0, len(ds), max(1, len(ds) // 7)):
        s = ds[i]
        want = int(((s["future_mask"] > 0) & ~(s["past_mask"] > 0)).sum())
        assert got[i] == want
    assert got.max() > 0  # the synthetic areas grow: some pairs have new buildings


def test_change_pair_fraction_trains_and_records_the_change_pairs(tiny_dataset_dir, tmp_path):
    run = train_cgan(_cfg(tiny_dataset_dir, tmp_path, change_pair_fraction=0.5, min_new_building_px=1))
    params = yaml.safe_load((run / "params.yaml").read_text())
    assert params["change_pair_fraction"] == 0.5 and params["n_train_change_pairs"] >= 1
    with pytest.raises(ValueError, match="new-building pixels"):
        train_cgan(_cfg(tiny_dataset_dir, tmp_path / "b", change_pair_fraction=0.5, min_new_building_px=10**6))
    with pytest.raises(ValueError, match="change_pair_fraction"):
        _cfg(tiny_dataset_dir, tmp_path, change_pair_fraction=1.0)
    assert params["change_pairs_per_batch"] == 2  # half of a batch of 4
    with pytest.raises(ValueError, match="multiple of 1/4"):  # 0.1 x 4 would silently be 1 of 4 = 25 %
        _cfg(tiny_dataset_dir, tmp_path, change_pair_fraction=0.1)


def test_make_accelerator_forgets_a_previous_runs_device():
    """A ``device: cpu`` run after a CUDA run in the same process (a notebook, benchmarks/gpu_check.py) ran on the
    GPU: Accelerate's per-process state kept the first run's device. A fake device stands for that GPU here."""
    from accelerate.state import AcceleratorState, PartialState

    from stsynth_lib.training import make_accelerator, resolve_device

    setup = resolve_device("cpu", "no")
    assert make_accelerator(setup).device.type == "cpu"
    PartialState._shared_state["device"] = torch.device("meta")
    try:
        assert make_accelerator(setup).device.type == "cpu"
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
