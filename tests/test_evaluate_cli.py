"""python -m stsynth_lib.evaluate --pred <folder> --data <tree>: whole-image predictions scored in tiles.

Prediction folders are written by hand after the contract of ``python -m stsynth_lib.predict --out``: a uint8
GeoTIFF per pair with the input image's size, CRS and transform, and index.csv with INDEX_COLUMNS.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stsynth_lib.data.sn7 import scan_sn7
from stsynth_lib.data.synthetic import generate_synthetic_sn7
from stsynth_lib.evaluate.__main__ import main
from stsynth_lib.evaluate.folder import INDEX_COLUMNS
from stsynth_lib.predict.files import write_geotiff

SIZE = 64
TILE = 32


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """Two AOIs x 3 months of 64 px, labelled."""
    root = tmp_path_factory.mktemp("cli") / "sn7"
    return generate_synthetic_sn7(
        root, n_aois=2, n_months=3, size_px=SIZE, cloud_probability=0.3, seed=3, progress=False
    )


def _copy(tree: Path, dest: Path, aois: int | None = None, rows: int | None = None, labels: bool = True) -> Path:
    """A copy of the tree: the first ``aois`` AOIs, images cropped to ``rows`` rows (CRS and transform kept),
    without the label folders when ``labels`` is False."""
    import rasterio

    shutil.copytree(tree, dest)
    for i, aoi in enumerate(sorted((dest / "train").iterdir())):
        if aois is not None and i >= aois:
            shutil.rmtree(aoi)
            continue
        if not labels:
            for sub in ("labels", "labels_match", "labels_match_pix"):
                shutil.rmtree(aoi / sub, ignore_errors=True)
        for tif in aoi.glob("*/*.tif") if rows else []:
            with rasterio.open(tif) as src:
                arr, profile = src.read()[:, :rows], src.profile
            profile.update(height=rows)
            with rasterio.open(tif, "w", **profile) as dst:
                dst.write(arr)
    return dest


def _pairs(root: Path) -> list[tuple[dict, dict]]:
    meta = scan_sn7(root, cloud_stats=False, progress=False)
    out = []
    for _, g in meta.groupby("aoi"):
        rows = g.to_dict("records")
        out += [(rows[i], rows[j]) for i in range(len(rows)) for j in range(i + 1, len(rows))]
    return out


def _write_folder(root: Path, folder: Path, which: str = "future", model: str = "pix2pix", edit=None) -> Path:
    """Predictions = the future (``which="future"``) or past image's RGB, as stsynth_lib.predict writes them."""
    import rasterio

    folder.mkdir(parents=True)
    with open(folder / "index.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(INDEX_COLUMNS)
        for k, (p, f) in enumerate(_pairs(root)):
            with rasterio.open(p["image_path"] if which == "past" else f["image_path"]) as src:
                img = src.read([1, 2, 3])
            with rasterio.open(p["image_path"]) as src:  # the input image's grid
                transform, crs = src.transform, src.crs.to_string()
            name = f"pred/{k:04d}.tif"
            write_geotiff(folder / name, img, tuple(transform)[:6], crs)
            row = [
                k,
                p["aoi"],
                f"{p['year']}-{p['month']:02d}",
                f"{f['year']}-{f['month']:02d}",
                (f["year"] - p["year"]) * 12 + f["month"] - p["month"],
                p["image_path"],
                f["image_path"],
                name,
                "true",
                model,
                "runs/smoke/" + model,
            ]
            w.writerow(edit(row) if edit else row)
    return folder


def _run(pred: Path, data: Path, *extra: str, lpips: bool = False) -> int:
    args = ["--pred", str(pred), "--data", str(data), "--tile-size-px", str(TILE), "--block-size-px", str(TILE),
            "--n-bootstrap", "50", "--no-progress"]
    return main(args + ([] if lpips else ["--no-lpips"]) + list(extra))


def _summary(pred: Path, model: str) -> dict:
    payload = json.loads((pred / "eval" / "summary.json").read_text())
    return payload, {r["metric"]: r for r in payload["summary"] if r["model"] == model}


def test_future_as_prediction_is_perfect_and_every_pixel_is_scored(tree, tmp_path):
    pred = _write_folder(tree, tmp_path / "pred", "future")
    assert _run(pred, tree) == 0
    payload, s = _summary(pred, "pix2pix")
    n_pairs = len(_pairs(tree))
    assert payload["n_image_pairs"] == n_pairs and payload["n_tiles"] == 4 * n_pairs
    assert payload["clusters"] == "areas" and payload["n_clusters"] == 2  # two AOIs: whole areas resampled
    assert payload["paired_resamples"] == "whole areas (AOIs)"
    assert s["psnr"]["mean"] == 100.0 and s["l1"]["mean"] == 0.0 and s["ssim"]["mean"] == pytest.approx(1.0)
    # the new-building metrics exist on a labelled tree, perfect for the truth itself
    assert s["l1_new"]["mean"] == 0.0 and s["psnr_new"]["mean"] == 100.0 and s["l1_changed"]["mean"] == 0.0
    assert s["l1_unchanged"]["n"] > 0 and "l1_new" in {r["metric"] for r in payload["paired_vs_persistence"]}
    md = (pred / "eval" / "results.md").read_text()
    assert str(pred.resolve()) in md and str(tree.resolve()) in md and f"{4 * n_pairs} tiles of {TILE} px" in md
    assert "L1 new-building px" in md and "resample 2 whole areas" in md
    tiles = pd.read_csv(pred / "eval" / "tiles.csv")
    for _, g in tiles.groupby("source_pair_id"):
        cover = np.zeros((SIZE, SIZE), int)
        for r, c in zip(g["row_off"], g["col_off"]):
            cover[r : r + TILE, c : c + TILE] += 1
        assert (cover >= 1).all()


def test_past_as_prediction_equals_persistence_on_an_odd_sized_single_area(tree, tmp_path):
    data = _copy(tree, tmp_path / "one", aois=1, rows=SIZE - 1)  # 63 rows, like SpaceNet 7's 1023
    pred = _write_folder(data, tmp_path / "pred", "past", model="attention_unet")
    assert _run(pred, data) == 0
    payload, s = _summary(pred, "attention_unet")
    _, p = _summary(pred, "persistence")
    for metric in ("psnr", "ssim", "l1", "psnr_new", "l1_new", "l1_unchanged"):
        assert s[metric]["mean"] == p[metric]["mean"], metric
    paired = [r for r in payload["paired_vs_persistence"] if r["model"] == "attention_unet"]
    assert paired and all(r["mean_diff"] == 0 and r["ci_lo"] == 0 and r["ci_hi"] == 0 for r in paired)
    # one area: whole blocks are resampled (4 blocks of 32 px; the shifted last tile row goes to its centre's block)
    assert payload["clusters"] == "blocks" and payload["n_clusters"] == 4
    assert payload["paired_resamples"] == f"whole blocks of {TILE} px (one area)"
    tiles = pd.read_csv(pred / "eval" / "tiles.csv")
    assert sorted(set(tiles["row_off"])) == [0, SIZE - 1 - TILE] and (tiles["image_height"] == SIZE - 1).all()
    for _, g in tiles.groupby("source_pair_id"):
        cover = np.zeros((SIZE - 1, SIZE), int)
        for r, c in zip(g["row_off"], g["col_off"]):
            cover[r : r + TILE, c : c + TILE] += 1
        assert (cover >= 1).all()


def test_new_building_metrics_are_nan_without_labels(tree, tmp_path):
    data = _copy(tree, tmp_path / "nolabels", labels=False)
    pred = _write_folder(data, tmp_path / "pred", "past")
    assert _run(pred, data, "--out", str(tmp_path / "out"), "--name", "mine") == 0
    per_tile = pd.read_csv(tmp_path / "out" / "per_tile.csv")
    assert set(per_tile["model"]) == {"persistence", "mine"}
    for col in ("l1_new", "psnr_new", "ssim_new", "l1_changed", "l1_unchanged"):
        assert col in per_tile and per_tile[col].isna().all(), col
    payload = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert "l1_new" not in {r["metric"] for r in payload["summary"]}
    assert any("Building scores skipped: no --segmenter" in n for n in payload["notes"])
    assert not any("Building F1 skipped" in n for n in payload["notes"])  # one note, not two


def test_lpips_new_with_uncalibrated_weights(tree, tmp_path):
    data = _copy(tree, tmp_path / "one", aois=1)
    pred = _write_folder(data, tmp_path / "pred", "future")
    assert _run(pred, data, "--allow-uncalibrated-metrics", "--device", "cpu", lpips=True) == 0
    _, s = _summary(pred, "pix2pix")
    assert s["lpips_new"]["calibrated"] is False and s["lpips_new"]["mean"] == pytest.approx(0.0, abs=1e-6)


def _err(capsys, code: int) -> str:
    assert code == 2
    return capsys.readouterr().err


def test_bad_inputs_are_named(tree, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    msg = _err(capsys, _run(empty, tree))
    assert f"{empty / 'index.csv'} not found" in msg and "python -m stsynth_lib.predict" in msg
    assert "Traceback" not in msg
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "index.csv").write_text("pair_id,aoi,tif\n0,a,x.tif\n")
    msg = _err(capsys, _run(garbage, tree))
    assert "index.csv" in msg and "past_date" in msg and "missing" in msg
    pred = _write_folder(tree, tmp_path / "pred", "future")
    (pred / "pred" / "0001.tif").unlink()
    msg = _err(capsys, _run(pred, tree))
    assert "0001.tif does not exist" in msg and "line 3" in msg


def test_prediction_of_another_size_or_crs_is_refused(tree, tmp_path, capsys):
    pred = _write_folder(tree, tmp_path / "pred", "future")
    tif = pred / "pred" / "0000.tif"
    write_geotiff(tif, np.zeros((3, SIZE, SIZE // 2), np.uint8), None, None)
    msg = _err(capsys, _run(pred, tree))
    assert str(tif) in msg and f"{SIZE} x {SIZE // 2} px" in msg and "input image's size, CRS and transform" in msg


def test_tree_without_the_listed_aoi_or_month(tree, tmp_path, capsys):
    pred = _write_folder(tree, tmp_path / "pred", "future")
    other = _copy(tree, tmp_path / "moved", aois=1)  # the second AOI is gone
    idx = pd.read_csv(pred / "index.csv")
    gone = sorted(set(idx["aoi"]))[1]
    # the listed absolute paths are gone too (the tree moved): nothing to fall back on
    shutil.rmtree(tree.parent / "gone-tree", ignore_errors=True)
    idx["past_image"] = idx["past_image"].str.replace(str(tree), str(tree.parent / "gone-tree"), regex=False)
    idx["future_image"] = idx["future_image"].str.replace(str(tree), str(tree.parent / "gone-tree"), regex=False)
    idx.to_csv(pred / "index.csv", index=False)
    msg = _err(capsys, _run(pred, other))
    assert f"has no image of AOI {gone}" in msg and "index.csv, line" in msg and "--data" in msg
    # the moved tree with every AOI is found by AOI and month, not by the stale paths
    assert _run(pred, _copy(tree, tmp_path / "moved_all")) == 0


def test_absolute_paths_are_the_fallback(tree, tmp_path):
    pred = _write_folder(tree, tmp_path / "pred", "future")
    partial = _copy(tree, tmp_path / "partial", aois=1)
    assert _run(pred, partial) == 0  # the second AOI is read from the index's absolute paths, with a note
    payload, _ = _summary(pred, "pix2pix")
    assert payload["n_aois"] == 2 and any("absolute paths" in n for n in payload["notes"])


def test_several_models_in_one_index_and_reserved_names(tree, tmp_path, capsys):
    flip = iter(range(1000))
    pred = _write_folder(
        tree, tmp_path / "pred", "future", edit=lambda r: r[:9] + [("a", "b")[next(flip) % 2]] + r[10:]
    )
    assert "several models (a, b)" in _err(capsys, _run(pred, tree))
    assert "reserved" in _err(capsys, _run(pred, tree, "--name", "persistence"))


def test_segmenter_scores_buildings_and_a_missing_one_is_named(tree, tmp_path, capsys):
    from stsynth_lib.metrics.segmentation import SegUNet, save_segmenter

    seg = save_segmenter(SegUNet(in_channels=3, base_channels=4, depth=2), tmp_path / "segmenter.pt", {"steps": 0})
    pred = _write_folder(tree, tmp_path / "pred", "future")
    assert _run(pred, tree, "--segmenter", str(seg), "--device", "cpu") == 0
    payload, s = _summary(pred, "pix2pix")
    _, upper = _summary(pred, "real_future")
    assert {"f1_micro", "f1_new_micro", "recall_new"} <= set(s) and s["f1_micro"]["mean"] == upper["f1_micro"]["mean"]
    assert payload["segmenter"] == str(seg)
    msg = _err(capsys, _run(pred, tree, "--segmenter", str(tmp_path / "nope.pt")))
    assert "nope.pt does not exist" in msg and "segmenter.pt" in msg
