"""Shared fixtures: a tiny synthetic SpaceNet 7 tree and its tile store, and the real samples in ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")
# predictors run eagerly in tests (compiling costs seconds per model); tests/test_inference_fast.py compiles on purpose
os.environ.setdefault("STSYNTH_COMPILE", "0")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("STSYNTH_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data"))
REAL_128 = SHARED_DATA / "sn7_real_128"
REAL_TILE = SHARED_DATA / "sn7_real_tile"

# The metric weights a user has fetched (make weights), captured before the tests hide them.
USER_WEIGHTS_DIR = Path(os.environ.get("STSYNTH_WEIGHTS_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "stsynth" / "weights")


@pytest.fixture(autouse=True)
def hermetic_metric_weights(tmp_path_factory, monkeypatch):
    """No test fetches metric weights or sees the user's converted copies unless it asks (tests/test_weights.py)."""
    monkeypatch.setenv("STSYNTH_WEIGHTS_FETCH", "0")
    monkeypatch.setenv("STSYNTH_WEIGHTS_DIR", str(tmp_path_factory.getbasetemp() / "no-metric-weights"))


needs_real_128 = pytest.mark.skipif(not REAL_128.is_dir(), reason=f"real SpaceNet 7 128 px sample not at {REAL_128}")
needs_real_tile = pytest.mark.skipif(not REAL_TILE.is_dir(), reason=f"real SpaceNet 7 tile not at {REAL_TILE}")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared real data not at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_sn7_root(tmp_path_factory) -> Path:
    """A synthetic SpaceNet 7 tree: 5 AOIs x 6 months of 64 px, clouds likely."""
    from stsynth_lib.data.synthetic import generate_synthetic_sn7

    root = tmp_path_factory.mktemp("sn7") / "sn7"
    return generate_synthetic_sn7(root, n_aois=5, n_months=6, size_px=64, cloud_probability=0.3, seed=1, progress=False)


@pytest.fixture(scope="session")
def tiny_dataset_dir(tiny_sn7_root, tmp_path_factory) -> Path:
    """The tile store of ``tiny_sn7_root``: 32 px tiles (4 per image), gaps 1-4 months, every split non-empty."""
    from stsynth_lib.data.build import build_dataset
    from stsynth_lib.data.sn7 import scan_sn7

    out = tmp_path_factory.mktemp("dataset") / "dataset"
    meta = scan_sn7(tiny_sn7_root, progress=False)
    build_dataset(meta, out, tile_size_px=32, max_gap_months=4, split_fractions=(0.6, 0.2, 0.2), seed=0, progress=False)
    return out


@pytest.fixture
def unlabelled_dataset_dir(tiny_dataset_dir, tmp_path) -> Path:
    """A copy of ``tiny_dataset_dir`` whose pairs all say ``has_mask: False`` (an unlabelled tree, like sn7_real_128)."""
    import shutil

    import pandas as pd

    out = tmp_path / "nolabels"
    shutil.copytree(tiny_dataset_dir, out)
    pairs = pd.read_parquet(out / "pairs.parquet")
    pairs["has_mask"] = False
    pairs.to_parquet(out / "pairs.parquet")
    return out


@pytest.fixture
def one_torch_thread():
    """The tiny models are far faster on one thread than on oversubscribed shared cores."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def stsynth_cache_in_tmp(tmp_path_factory):
    """Trainers build the CLIP tokenizer files in $STSYNTH_CACHE: keep them out of the user's ~/.cache."""
    import os

    old = os.environ.get("STSYNTH_CACHE")
    os.environ["STSYNTH_CACHE"] = str(tmp_path_factory.mktemp("stsynth_cache"))
    yield
    if old is None:
        os.environ.pop("STSYNTH_CACHE", None)
    else:
        os.environ["STSYNTH_CACHE"] = old


@pytest.fixture(scope="module")
def one_step_controlnet_run(tiny_dataset_dir, tmp_path_factory, stsynth_cache_in_tmp):
    """A one-step ControlNet run on the tiny random backbone (32 px tiles): its zero convolutions are no longer
    zero. Trained on one thread."""
    import torch

    from stsynth_lib.controlnet.train import train_controlnet

    old_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield train_controlnet(tiny_controlnet_config(tiny_dataset_dir, tmp_path_factory.mktemp("runs")))
    finally:
        torch.set_num_threads(old_threads)


@pytest.fixture
def no_residual_refit(monkeypatch):
    """``forbid(why)``: any refit of the residual scale (``residual.latent_change_rms``) now fails with ``why``;
    ``forbid(why, run)`` first sets the scale recorded in ``run`` to 7.0, a number no refit would give."""
    import yaml

    from stsynth_lib.controlnet import residual as R

    def forbid(why: str, run: Path | None = None) -> None:
        if run is not None:
            path = Path(run) / R.RESIDUAL_FILE
            rec = yaml.safe_load(path.read_text())
            rec["residual_scale"] = 7.0
            path.write_text(yaml.safe_dump(rec))

        def refit(*a, **kw):
            raise AssertionError(why)

        monkeypatch.setattr(R, "latent_change_rms", refit)

    return forbid


def tiny_controlnet_config(dataset_dir, runs_dir, **kw):
    """A ControlNet config for the tiny random backbone (32 px tiles) with the test suite's small settings."""
    from stsynth_lib.controlnet.config import ControlNetTrainConfig

    base = dict(dataset_dir=str(dataset_dir), runs_dir=str(runs_dir), profile="test", max_train_steps=1,
                train_batch_size=2, learning_rate=1e-3, validate_at_start=False, validation_steps=0,
                checkpointing_steps=0, max_train_pairs=8, progress=False)
    return ControlNetTrainConfig(**{**base, **kw})
