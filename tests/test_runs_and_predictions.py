"""Run-folder utilities (atomic checkpoints, pruning, resume, CSV log) and the predictions format."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch

from stsynth_lib.predict.files import load_predictions, save_predictions
from stsynth_lib.runs import (
    CSVLogger,
    atomic_checkpoint_dir,
    atomic_torch_save,
    find_project_root,
    latest_checkpoint,
    list_checkpoints,
    prepare_run_dir,
    resolve_resume,
)


def test_checkpoints_are_atomic_pruned_and_resolved(tmp_path):
    run = prepare_run_dir(tmp_path, "smoke", "m", {"lr": 2e-4, "path": tmp_path})
    assert (run / "params.yaml").read_text().startswith("lr: 0.0002")
    for step in (10, 20, 30):
        with atomic_checkpoint_dir(run, step, keep=2) as d:
            atomic_torch_save({"step": step}, d / "state.pt")
    assert [s for s, _ in list_checkpoints(run)] == [20, 30]
    with pytest.raises(RuntimeError):
        with atomic_checkpoint_dir(run, 40, keep=2) as d:
            (d / "state.pt").write_bytes(b"half")
            raise RuntimeError("killed mid-write")
    assert latest_checkpoint(run).name == "checkpoint-30"  # the half-written one never became visible
    assert not (run / "checkpoints" / "checkpoint-40.tmp").exists()
    assert torch.load(latest_checkpoint(run) / "state.pt")["step"] == 30
    assert resolve_resume(run, "latest").name == "checkpoint-30"
    assert resolve_resume(run, "checkpoint-20").name == "checkpoint-20"
    assert resolve_resume(run, None) is None
    with pytest.raises(FileNotFoundError, match="checkpoint-30"):
        resolve_resume(run, "checkpoint-99")


def test_atomic_save_keeps_old_file_when_serialisation_fails(tmp_path):
    target = tmp_path / "w.pt"
    atomic_torch_save({"a": 1}, target)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError):
        atomic_torch_save({"a": Boom()}, target)
    assert torch.load(target) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["w.pt"]


def test_csv_logger_appends_and_truncates_for_resume(tmp_path):
    log = CSVLogger(tmp_path / "log.csv")
    for step in range(1, 6):
        log.log({"step": step, "loss": 1.0 / step})
    log.truncate_after(3)
    CSVLogger(tmp_path / "log.csv").log({"step": 4, "loss": 0.5})
    lines = (tmp_path / "log.csv").read_text().strip().splitlines()
    assert lines[0] == "step,loss" and [l.split(",")[0] for l in lines[1:]] == ["1", "2", "3", "4"]


def test_find_project_root_from_a_subfolder():
    here = find_project_root()
    assert find_project_root(here / "notebooks") == here
    assert (here / "stsynth_lib").is_dir()


def test_predictions_roundtrip_with_crs_and_transform(tmp_path):
    imgs = torch.rand(2, 3, 16, 16) * 2 - 1
    tfs = torch.tensor([[4.77, 0, 1000.0, 0, -4.77, 5000.0], [4.77, 0, 2000.0, 0, -4.77, 6000.0]], dtype=torch.float64)
    save_predictions(tmp_path, imgs, [7, 9], ["A", "B"], tfs, ["EPSG:3857", ""])
    with rasterio.open(tmp_path / "000007.tif") as src:
        assert src.crs.to_epsg() == 3857
        assert src.transform.c == 1000.0 and src.transform.f == 5000.0 and src.transform.a == pytest.approx(4.77)
        assert src.count == 3 and src.dtypes[0] == "uint8"
    with rasterio.open(tmp_path / "000009.tif") as src:
        assert src.crs is None
    preds = load_predictions(tmp_path)
    assert set(preds) == {7, 9}
    expected = np.clip(np.round((imgs[0].numpy() + 1) * 127.5), 0, 255).astype(np.uint8)
    assert np.array_equal(preds[7], expected)
    assert (tmp_path / "000007.png").is_file()
    with pytest.raises(FileNotFoundError, match="no predictions"):
        load_predictions(tmp_path / "nothing")


def test_sample_grid_path_orders_steps_numerically(tmp_path):
    from stsynth_lib.runs import parse_cli_value, sample_grid_path

    (tmp_path / "samples").mkdir()
    for step in (5, 40, 300):
        (tmp_path / "samples" / f"step-{step:06d}.png").write_bytes(b"")
    assert sample_grid_path(tmp_path).name == "step-000300.png"
    assert sample_grid_path(tmp_path, "first").name == "step-000005.png"
    assert sample_grid_path(tmp_path, 40).name == "step-000040.png"
    with pytest.raises(FileNotFoundError, match="step 41"):
        sample_grid_path(tmp_path, 41)
    assert parse_cli_value("1e-4") == 1e-4 and parse_cli_value("none") is None and parse_cli_value("[1, 2]") == [1, 2]


# --------------------------------------------------------------------------- odd prediction files (issue 10)


def _write_tif(path, arr):
    with rasterio.open(path, "w", driver="GTiff", width=arr.shape[2], height=arr.shape[1], count=arr.shape[0],
                       dtype=arr.dtype.name) as dst:
        dst.write(arr)


@pytest.mark.parametrize("kind", ["float_0_1", "float_minus1_1", "float_with_nan", "uint16"])
def test_prediction_that_is_not_uint8_is_refused_and_named(tmp_path, kind):
    """Float predictions used to be cast to uint8 silently (PSNR 7 dB, SSIM 0.0002)."""
    rng = np.random.default_rng(0)
    arr = {
        "float_0_1": rng.random((3, 16, 16)).astype(np.float32),
        "float_minus1_1": (rng.random((3, 16, 16)) * 2 - 1).astype(np.float32),
        "float_with_nan": np.where(rng.random((3, 16, 16)) < 0.1, np.nan, rng.random((3, 16, 16)) * 255).astype(np.float32),
        "uint16": rng.integers(0, 4000, (3, 16, 16)).astype(np.uint16),
    }[kind]
    save_predictions(tmp_path, torch.zeros(1, 3, 16, 16), [4], ["A"], torch.zeros(1, 6, dtype=torch.float64), [""])
    _write_tif(tmp_path / "000004.tif", arr)
    with pytest.raises(ValueError, match=r"000004.tif is (float32|uint16) .*expected uint8 in \[0, 255\]"):
        load_predictions(tmp_path)


@pytest.mark.parametrize("text", ["hello\nworld\n", "id,file\n1,000001.tif\n", "pair_id,aoi,tif,png\nseven,A,x.tif,\n"])
def test_garbage_prediction_index_is_named(tmp_path, text):
    """A garbage index.csv used to raise KeyError: 'tif'."""
    (tmp_path / "index.csv").write_text(text)
    with pytest.raises(ValueError, match=r"index.csv.*(missing|not an integer).*pair_id"):
        load_predictions(tmp_path)


def test_missing_listed_prediction_is_named_or_left_out_with_a_note(tiny_dataset_dir, tmp_path):
    """A listed prediction file that is missing used to stop the evaluation with a raw rasterio error."""
    from stsynth_lib.evaluate.data import _load_model_predictions, load_split

    data = load_split(tiny_dataset_dir, "test")
    imgs = torch.from_numpy(data.future[:3].astype(np.float32) / 127.5 - 1)
    save_predictions(tmp_path, imgs, data.pair_ids[:3], ["A"] * 3, data.transform[:3], data.crs[:3])
    gone = tmp_path / f"{int(data.pair_ids[1]):06d}.tif"
    gone.unlink()
    with pytest.raises(ValueError, match=f"{gone.name} is listed in .*index.csv .*does not exist"):
        load_predictions(tmp_path)
    notes: list[str] = []
    out = _load_model_predictions({"m": tmp_path}, data, "test", notes)
    arr, ok = out["m"]
    assert ok.tolist()[:3] == [True, False, True] and ok.sum() == 2
    assert np.array_equal(arr[0], data.future[0])
    assert len(notes) == 1 and "1 prediction files" in notes[0] and gone.name in notes[0]
