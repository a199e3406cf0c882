"""``python -m stsynth_lib.predict``: whole images stitched from tiles without seams, every pair of a SpaceNet 7
tree predicted into GeoTIFFs + index.csv, bad trees stopped with a message that names the file and the fix."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import rasterio
import yaml

from stsynth_lib.cgan.config import CGANTrainConfig
from stsynth_lib.cgan.train import train_cgan
from stsynth_lib.data.synthetic import generate_synthetic_sn7
from stsynth_lib.predict import load_predictor
from stsynth_lib.predict.cli import main
from stsynth_lib.predict.scene import predict_scene, tile_starts
from stsynth_lib.predict.tree import INDEX_COLUMNS

LABEL_FOLDERS = ("labels", "labels_match", "labels_match_pix")


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


def _train(dataset_dir, runs_dir, model: str, use_mask: bool):
    cfg = CGANTrainConfig(dataset_dir=str(dataset_dir), runs_dir=str(runs_dir), profile="t", model=model, ngf=8, ndf=8,
                          batch_size=4, max_steps=2, max_train_pairs=8, max_val_pairs=4, progress=False, device="cpu",
                          use_mask=use_mask)
    return train_cgan(cfg)


@pytest.fixture(scope="module")
def mask_run(tiny_dataset_dir, tmp_path_factory):
    """pix2pix trained 2 steps on 32 px tiles with the future mask as guidance."""
    return _train(tiny_dataset_dir, tmp_path_factory.mktemp("mask_run"), "pix2pix", True)


@pytest.fixture(scope="module")
def maskless_run(tiny_dataset_dir, tmp_path_factory):
    """attention U-Net trained 2 steps on 32 px tiles without masks."""
    return _train(tiny_dataset_dir, tmp_path_factory.mktemp("maskless_run"), "attention_unet", False)


@pytest.fixture(scope="module")
def new_tree(tmp_path_factory):
    """A labelled tree of 2 areas x 3 months of 64 px whose areas the runs never saw (another seed)."""
    root = tmp_path_factory.mktemp("new_tree") / "sn7"
    return generate_synthetic_sn7(root, n_aois=2, n_months=3, size_px=64, cloud_probability=0.0, seed=7,
                                  progress=False)


@pytest.fixture
def tree(new_tree, tmp_path):
    """A private copy of ``new_tree`` that a test may break."""
    return shutil.copytree(new_tree, tmp_path / "tree")


def _aoi_dirs(root):
    return sorted(p for p in (root / "train").iterdir() if p.is_dir())


def _predict(capsys, *args) -> tuple[int, str]:
    rc = main([*map(str, args), "--no-progress"])
    captured = capsys.readouterr()
    return rc, captured.out + captured.err


def _reflect_rows(image: np.ndarray, rows: int) -> np.ndarray:
    """``image`` (C, H, W) reflected downward (edge rows not repeated: no jump, no flat row) to ``rows`` rows."""
    copies, n = [image], image.shape[1]
    while n < rows:
        copies.append(image[:, -2::-1] if len(copies) % 2 else image[:, 1:])
        n += copies[-1].shape[1]
    return np.concatenate(copies, axis=1)[:, :rows]


def _stretch_to_rows(tif, rows: int) -> None:
    """Rewrite a GeoTIFF with ``rows`` rows (mirrored copies), keeping its CRS, transform, bands and dtype."""
    with rasterio.open(tif) as src:
        profile, data = src.profile, src.read()
    profile.update(height=rows)
    with rasterio.open(tif, "w", **profile) as dst:
        dst.write(_reflect_rows(data, rows))


class IdentityModel:
    """A model that returns its input: stitching must give back the image unchanged."""

    def predict(self, past, past_date, future_date, future_mask=None, past_mask=None, seed=0, aoi="custom"):
        return past.copy()


class TileNormModel:
    """Each tile minus its own mean plus 128: the per-tile brightness offsets that instance normalisation gives the
    cGANs (their generators normalise with each tile's statistics), exaggerated. Stitched without overlap it leaves
    a step at every tile border."""

    def predict(self, past, past_date, future_date, future_mask=None, past_mask=None, seed=0, aoi="custom"):
        x = past.astype(np.float64)
        return np.clip(x - x.mean(axis=(2, 3), keepdims=True) + 128, 0, 255).astype(np.uint8)


def _seam_ratio(image: np.ndarray, tile_px: int, overlap_px: int) -> float:
    """Mean |difference| of vertically adjacent pixels across tile borders over that of all other adjacent rows."""
    diff = np.abs(np.diff(image.astype(np.float64), axis=1)).mean(axis=(0, 2))  # diff[i]: rows i and i + 1
    starts = tile_starts(image.shape[1], tile_px, overlap_px)
    border = sorted({s - 1 for s in starts if s > 0} | {s + tile_px - 1 for s in starts if s + tile_px < image.shape[1]})
    inside = np.setdiff1d(np.arange(len(diff)), border)
    return float(diff[border].mean() / diff[inside].mean())


@pytest.mark.parametrize("overlap_px", [0, 5, 8, 16])
def test_stitching_an_identity_model_gives_back_the_image(overlap_px):
    past = np.random.default_rng(0).integers(0, 256, (3, 1023, 77), dtype=np.uint8)
    mask = np.zeros((1023, 77), np.uint8)
    out = predict_scene(IdentityModel(), past, "2019-01", "2019-02", 32, future_mask=mask, overlap_px=overlap_px,
                        batch_size=7)
    np.testing.assert_array_equal(out, past)


def test_tile_starts_cover_the_image_with_the_last_tile_shifted_inward():
    assert tile_starts(1023, 256, 64) == [0, 192, 384, 576, 767]
    assert tile_starts(64, 32, 0) == [0, 32]
    with pytest.raises(ValueError, match="smaller than the model's 32 px tiles"):
        tile_starts(20, 32, 8)
    with pytest.raises(ValueError, match="overlap_px"):
        tile_starts(64, 32, 32)


def test_tile_borders_are_no_worse_than_tile_interiors(mask_run, tmp_path):
    """Rows of a 1023-row image across tile borders differ no more than rows inside tiles.

    The image: a 256 px synthetic mosaic reflected down to 1023 rows (on it the ratio is 0.99). Models: the smoke
    cGAN (its border/interior ratio is about 0.8 without overlap and 1.04 with it: a 2-step generator's output is
    mostly its own texture, whose strength varies across a tile) and a stand-in with exaggerated per-tile offsets,
    which shows that the measure sees seams (about 2 without overlap). Tolerance 10 %: border rows are 84 of 1022,
    each averaged over 256 columns x 3 bands."""
    from stsynth_lib.predict.tree import read_scene, scan_tree, scene_footprints

    root = generate_synthetic_sn7(tmp_path / "sn7", n_aois=1, n_months=2, size_px=256, cloud_probability=0.0, seed=7,
                                  progress=False)
    meta = scan_tree(root)
    past, transform, crs = read_scene(meta.iloc[0], [1, 2, 3])
    mask = scene_footprints(meta.iloc[1], past.shape[1:], transform, crs)
    past, mask = _reflect_rows(past, 1023), _reflect_rows(mask[None], 1023)[0]
    assert abs(_seam_ratio(past, 32, 8) - 1) < 0.03
    cgan = predict_scene(load_predictor(mask_run), past, "2018-01", "2018-03", 32, future_mask=mask, batch_size=64)
    assert cgan.shape == past.shape and _seam_ratio(cgan, 32, 8) <= 1.10
    assert _seam_ratio(predict_scene(TileNormModel(), past, "2018-01", "2018-03", 32, overlap_px=0), 32, 0) > 1.5
    assert _seam_ratio(predict_scene(TileNormModel(), past, "2018-01", "2018-03", 32), 32, 8) <= 1.10


def _index(out) -> pd.DataFrame:
    return pd.read_csv(out / "index.csv", keep_default_na=False, dtype={"used_mask": str})  # the text true/false


def _check_outputs(out, index: pd.DataFrame) -> None:
    """Every prediction: uint8, 3 bands, the past image's size, CRS and transform."""
    for row in index.itertuples():
        with rasterio.open(row.past_image) as past, rasterio.open(out / row.prediction) as pred:
            assert pred.dtypes == ("uint8",) * 3 and pred.shape == past.shape
            assert pred.crs == past.crs and pred.transform == past.transform


def test_labelled_tree_with_a_mask_model_in_areas_never_seen(new_tree, mask_run, tiny_dataset_dir, tmp_path, capsys):
    out = tmp_path / "out"
    rc, log = _predict(capsys, "--run", mask_run, "--data", new_tree, "--out", out, "--max-gap-months", "2")
    assert rc == 0, log
    index = _index(out)
    assert list(index.columns) == INDEX_COLUMNS
    assert len(index) == 2 * 3 and set(index["used_mask"]) == {"true"} and set(index["model"]) == {"pix2pix"}
    assert set(index["gap_months"]) == {1, 2} and index["past_date"].str.fullmatch(r"\d{4}-\d{2}").all()
    assert set(index["run"]) == {str(mask_run.resolve())}
    trained_on = set(pd.read_parquet(tiny_dataset_dir / "tiles.parquet")["aoi"])
    assert not set(index["aoi"]) & trained_on
    first = index.iloc[0]
    assert first["prediction"] == f"{first['aoi']}/pred_2018_02_from_2018_01.tif"
    _check_outputs(out, index)
    record = yaml.safe_load((out / "predict.yaml").read_text())
    assert record["n_pairs"] == 6 and record["options"]["max_gap_months"] == 2 and record["tile_size_px"] == 32


def test_unlabelled_tree_takes_a_maskless_model_and_refuses_a_mask_model(tree, maskless_run, mask_run, tmp_path,
                                                                          capsys):
    for aoi_dir in _aoi_dirs(tree):
        for folder in LABEL_FOLDERS:
            shutil.rmtree(aoi_dir / folder)
    out = tmp_path / "out"
    rc, log = _predict(capsys, "--run", maskless_run, "--data", tree, "--out", out, "--max-pairs", "2")
    assert rc == 0, log
    index = _index(out)
    assert len(index) == 2 and set(index["used_mask"]) == {"false"} and set(index["model"]) == {"attention_unet"}
    _check_outputs(out, index)

    rc, log = _predict(capsys, "--run", mask_run, "--data", tree, "--out", tmp_path / "out2")
    assert rc == 2 and "Traceback" not in log
    aoi = _aoi_dirs(tree)[0].name
    assert f"{aoi} 2018-02 has no building labels" in log and "labels_match_pix" in log and "use_mask: false" in log


def test_images_of_1023_rows_keep_their_size_crs_and_transform(tree, mask_run, tmp_path, capsys):
    aoi_dir = _aoi_dirs(tree)[0]
    for tif in (aoi_dir / "images").glob("*.tif"):
        _stretch_to_rows(tif, 1023)
    out = tmp_path / "out"
    rc, log = _predict(capsys, "--run", mask_run, "--data", tree, "--out", out, "--aoi", aoi_dir.name,
                       "--max-gap-months", "1", "--batch-size", "64")
    assert rc == 0, log
    index = _index(out)
    assert len(index) == 2
    _check_outputs(out, index)
    with rasterio.open(out / index["prediction"][0]) as pred:
        assert pred.height == 1023


def test_rerun_skips_pairs_already_predicted(new_tree, maskless_run, tmp_path, capsys):
    out = tmp_path / "out"
    args = ("--run", maskless_run, "--data", new_tree, "--out", out, "--max-gap-months", "1")
    assert _predict(capsys, *args)[0] == 0
    first = _index(out)
    stamps = {p: (out / p).stat().st_mtime_ns for p in first["prediction"]}
    (out / first["prediction"][0]).unlink()
    rc, log = _predict(capsys, *args)
    assert rc == 0 and "resuming: 3 of 4 pairs already have their GeoTIFF" in log
    assert [(out / p).stat().st_mtime_ns for p in first["prediction"][1:]] == [stamps[p] for p in first["prediction"][1:]]
    pd.testing.assert_frame_equal(_index(out), first)
    rc, log = _predict(capsys, *args, "--overwrite")
    assert rc == 0 and "resuming" not in log
    assert (out / first["prediction"][1]).stat().st_mtime_ns != stamps[first["prediction"][1]]


def _corrupt_image(root):
    tif = sorted((_aoi_dirs(root)[0] / "images").glob("*.tif"))[1]
    tif.write_bytes(b"not a GeoTIFF")
    return tif.name, "corrupt or truncated"


def _no_aoi_folders(root):
    for aoi_dir in _aoi_dirs(root):
        shutil.rmtree(aoi_dir / "images")
    return "No SpaceNet 7 AOI folders", "train/<AOI>/images"


def _empty_images(root):
    for tif in (_aoi_dirs(root)[0] / "images").glob("*.tif"):
        tif.unlink()
    shutil.rmtree(_aoi_dirs(root)[1])
    return "No readable images found", str(root)


def _one_month(root):
    for tif in sorted((_aoi_dirs(root)[0] / "images").glob("*.tif"))[1:]:
        tif.unlink()
    return f"{_aoi_dirs(root)[0].name} (1 month)", "at least 2 months"


def _small_images(root):
    for tif in (_aoi_dirs(root)[0] / "images").glob("*.tif"):
        _stretch_to_rows(tif, 20)
    return "is 20 x 64 px, smaller than the 32 px tiles", "Use a run trained on tiles that fit"


@pytest.mark.parametrize("break_tree", [_corrupt_image, _no_aoi_folders, _empty_images, _one_month, _small_images])
def test_bad_trees_stop_with_the_file_and_the_fix(tree, maskless_run, tmp_path, capsys, break_tree):
    aoi = _aoi_dirs(tree)[0].name
    expected = break_tree(tree)
    rc, log = _predict(capsys, "--run", maskless_run, "--data", tree, "--out", tmp_path / "out", "--aoi", aoi)
    assert rc == 2 and "Traceback" not in log
    for text in expected:
        assert text in log
    assert not (tmp_path / "out" / "index.csv").exists()


def test_an_area_not_in_the_tree_is_named(new_tree, maskless_run, tmp_path, capsys):
    rc, log = _predict(capsys, "--run", maskless_run, "--data", new_tree, "--out", tmp_path / "out", "--aoi", "L15-nowhere")
    assert rc == 2 and "--aoi L15-nowhere: not in the tree" in log and _aoi_dirs(new_tree)[0].name in log


def test_module_runs_as_a_command(tmp_path):
    done = subprocess.run([sys.executable, "-m", "stsynth_lib.predict", "--run", str(tmp_path), "--data", str(tmp_path),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, check=False)
    assert done.returncode == 2 and "not a trained run folder" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow  # ~10 s of diffusion sampling; make test-all runs it
def test_controlnet_predicts_a_whole_image(tiny_dataset_dir, new_tree, tmp_path, capsys, monkeypatch):
    pytest.importorskip("diffusers")
    pytest.importorskip("open_clip")
    from stsynth_lib.controlnet.config import ControlNetTrainConfig
    from stsynth_lib.controlnet.train import train_controlnet

    monkeypatch.setenv("STSYNTH_CACHE", str(tmp_path / "cache"))
    cfg = ControlNetTrainConfig(dataset_dir=str(tiny_dataset_dir), runs_dir=str(tmp_path), profile="t",
                                max_train_steps=1, train_batch_size=2, validation_steps=0, validate_at_start=False,
                                checkpointing_steps=0, max_train_pairs=4, progress=False, device="cpu")
    run = train_controlnet(cfg)
    out = tmp_path / "out"
    rc, log = _predict(capsys, "--run", run, "--data", new_tree, "--out", out, "--max-pairs", "1",
                       "--num-inference-steps", "2", "--overlap-px", "0")
    assert rc == 0, log
    index = _index(out)
    assert len(index) == 1 and index["model"][0] == "ControlNet" and index["used_mask"][0] == "true"
    _check_outputs(out, index)


def test_a_past_mask_model_gets_both_footprints(new_tree, tiny_dataset_dir, tmp_path, capsys):
    """use_past_mask: the run takes the past footprints as a second mask channel; the tree's labels supply both."""
    from stsynth_lib.predict import load_predictor

    cfg = CGANTrainConfig(dataset_dir=str(tiny_dataset_dir), runs_dir=str(tmp_path / "runs"), profile="t", ngf=8, ndf=8,
                          batch_size=4, max_steps=2, max_train_pairs=8, max_val_pairs=4, progress=False, device="cpu",
                          use_mask=True, use_past_mask=True)
    run = train_cgan(cfg)
    predictor = load_predictor(run)
    assert predictor.uses_mask and predictor.uses_past_mask
    past, mask = np.zeros((3, 32, 32), np.uint8), np.zeros((32, 32), np.uint8)
    with pytest.raises(ValueError, match="past_mask"):
        predictor.predict(past, "2019-01", "2019-03", future_mask=mask)
    assert predictor.predict(past, "2019-01", "2019-03", future_mask=mask, past_mask=mask).shape == past.shape
    out = tmp_path / "out"
    rc, log = _predict(capsys, "--run", run, "--data", new_tree, "--out", out, "--max-pairs", "2")
    assert rc == 0, log
    index = _index(out)
    assert len(index) == 2 and set(index["used_mask"]) == {"true"}
    _check_outputs(out, index)
