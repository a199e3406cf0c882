"""Scanner, synthetic tree and raster I/O."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import rasterio
from conftest import REAL_128, needs_real_128

from stsynth_lib.data.io import read_raster, to_uint8_image, validity_mask
from stsynth_lib.data.sn7 import SN7DataError, find_aoi_dirs, scan_sn7
from stsynth_lib.data.synthetic import (
    SN7_PIXEL_M,
    aoi_name,
    aoi_transform,
    generate_synthetic_sn7,
)


def test_synthetic_tree_has_sn7_layout_and_formats(tiny_sn7_root):
    aois = find_aoi_dirs(tiny_sn7_root)
    assert len(aois) == 5
    aoi = aois[0]
    for sub in ("images", "images_masked", "UDM_masks", "labels", "labels_match", "labels_match_pix"):
        assert (aoi / sub).is_dir(), sub
    img = sorted((aoi / "images").glob("*.tif"))[0]
    assert img.name.startswith("global_monthly_2018_01_mosaic_") and img.name.endswith(f"{aoi.name}.tif")
    with rasterio.open(img) as src:
        assert src.count == 4 and src.dtypes[0] == "uint8"
        assert src.crs.to_epsg() == 3857
        assert src.transform.a == pytest.approx(SN7_PIXEL_M, rel=1e-6) and src.transform.e == pytest.approx(-SN7_PIXEL_M, rel=1e-6)
    geo = json.loads((aoi / "labels" / f"{img.stem}_Buildings.geojson").read_text())
    assert geo["crs"]["properties"]["name"] == "urn:ogc:def:crs:OGC:1.3:CRS84"
    lon, lat = geo["features"][0]["geometry"]["coordinates"][0][0]
    assert -180 <= lon <= 180 and -90 <= lat <= 90


def test_synthetic_names_follow_the_zoom13_grid():
    # The real tile of ../shared/data: L15-1615E-1205N_6460_3370_13, origin (11564616.63, 3551570.08).
    assert aoi_name(6460, 3370) == "L15-1615E-1205N_6460_3370_13"
    t = aoi_transform(6460, 3370)
    assert t.c == pytest.approx(11564616.63, abs=0.05) and t.f == pytest.approx(3551570.08, abs=0.05)


def test_synthetic_buildings_only_grow_and_keep_ids(tiny_sn7_root):
    meta = scan_sn7(tiny_sn7_root, progress=False)
    for _, g in meta.groupby("aoi"):
        counts = g["building_count"].to_numpy()
        assert (np.diff(counts) >= 0).all()
        ids = [
            {f["properties"]["Id"] for f in json.loads(open(p).read())["features"]}
            for p in g["labels_match_pix_path"]
        ]
        for earlier, later in zip(ids, ids[1:]):
            assert earlier <= later  # a labelled building keeps its Id and never disappears


def test_synthetic_generation_is_seeded_and_idempotent(tmp_path):
    a = generate_synthetic_sn7(tmp_path / "a", n_aois=1, n_months=2, size_px=32, seed=3, progress=False)
    b = generate_synthetic_sn7(tmp_path / "b", n_aois=1, n_months=2, size_px=32, seed=3, progress=False)
    fa = sorted(a.rglob("images/*.tif"))
    fb = sorted(b.rglob("images/*.tif"))
    assert [p.name for p in fa] == [p.name for p in fb]
    assert np.array_equal(read_raster(fa[0]), read_raster(fb[0]))
    mtime = fa[0].stat().st_mtime_ns
    generate_synthetic_sn7(tmp_path / "a", n_aois=1, n_months=2, size_px=32, seed=3, progress=False)
    assert fa[0].stat().st_mtime_ns == mtime  # same parameters: kept


def test_udm_and_masked_images_agree(tiny_sn7_root):
    meta = scan_sn7(tiny_sn7_root, progress=False)
    cloudy = meta[meta["cloud_fraction"] > 0]
    assert len(cloudy), "fixture should contain at least one cloudy month"
    row = cloudy.iloc[0]
    udm = read_raster(row["udm_path"])[0]
    masked = read_raster(row["image_masked_path"])
    assert (masked[:, udm > 0] == 0).all()
    assert row["cloud_fraction"] == pytest.approx((udm > 0).mean())


def test_scan_table_columns_and_counts(tiny_sn7_root):
    meta = scan_sn7(tiny_sn7_root, progress=False)
    assert len(meta) == 5 * 6
    assert meta["has_labels"].all() and (meta["building_count"] > 0).all()
    assert (meta.groupby("aoi")["month_index"].diff().dropna() == 1).all()
    assert meta.attrs["scan_report"].missing_folders == {}


def test_scan_accepts_parent_train_and_kaggle_roots(tiny_sn7_root, tmp_path):
    assert len(scan_sn7(tiny_sn7_root / "train", progress=False)) == 30
    kaggle = tmp_path / "download"
    (kaggle / "SN7_buildings_train").mkdir(parents=True)
    shutil.copytree(tiny_sn7_root / "train", kaggle / "SN7_buildings_train" / "train")
    assert len(scan_sn7(kaggle, progress=False)) == 30


def test_scan_reports_missing_folders_without_failing(tiny_sn7_root, tmp_path):
    root = tmp_path / "partial"
    shutil.copytree(tiny_sn7_root, root)
    for aoi in find_aoi_dirs(root)[:2]:
        shutil.rmtree(aoi / "labels_match_pix")
        shutil.rmtree(aoi / "UDM_masks")
    meta = scan_sn7(root, progress=False)
    report = meta.attrs["scan_report"]
    assert len(report.missing_folders["UDM_masks"]) == 2
    assert "missing UDM_masks/ in 2 of 5 AOIs" in report.summary()
    # labels still found through labels_match
    assert meta["has_labels"].all()
    assert meta["cloud_fraction"].isna().sum() == 2 * 6


def test_scan_wrong_folder_names_the_fix(tmp_path):
    with pytest.raises(SN7DataError, match="does not exist"):
        scan_sn7(tmp_path / "nope", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SN7DataError, match="No SpaceNet 7 AOI folders"):
        scan_sn7(tmp_path / "empty", progress=False)


def test_corrupt_geotiff_is_named_or_skipped(tiny_sn7_root, tmp_path):
    root = tmp_path / "corrupt"
    shutil.copytree(tiny_sn7_root, root)
    victim = sorted(root.rglob("images/*.tif"))[3]
    victim.write_bytes(b"II*\x00 this is not a tiff")
    with pytest.raises(SN7DataError, match=victim.name):
        scan_sn7(root, progress=False)
    with pytest.warns(UserWarning, match="Skipping"):
        meta = scan_sn7(root, on_error="skip", progress=False)
    assert len(meta) == 29
    assert meta.attrs["scan_report"].skipped_files == [str(victim)]


def test_corrupt_geojson_is_named(tiny_sn7_root, tmp_path):
    root = tmp_path / "badjson"
    shutil.copytree(tiny_sn7_root, root)
    victim = sorted(root.rglob("labels_match_pix/*.geojson"))[0]
    victim.write_text("{ not json")
    with pytest.raises(SN7DataError, match=victim.name):
        scan_sn7(root, progress=False)


@needs_real_128
def test_scan_real_128_partial_tree():
    meta = scan_sn7(REAL_128, progress=False)
    assert meta["aoi"].nunique() == 48
    assert len(meta) == len(list(REAL_128.glob("train/*/images/*.tif")))  # every image read (1,140 here)
    assert not meta["has_labels"].any() and meta["building_count"].isna().all()
    assert (meta["bands"] == 3).all() and (meta["width"] == 128).all()
    assert not meta["georeferenced"].any()
    report = meta.attrs["scan_report"]
    assert set(report.missing_folders) == {"images_masked", "UDM_masks", "labels", "labels_match", "labels_match_pix"}
    assert meta.groupby("aoi").size().between(18, 26).all()


def test_read_raster_band_errors_and_16bit_stretch(tmp_path):
    from affine import Affine

    path = tmp_path / "x16.tif"
    arr = np.random.default_rng(0).integers(0, 4000, (2, 8, 8)).astype(np.uint16)
    with rasterio.open(path, "w", driver="GTiff", width=8, height=8, count=2, dtype="uint16",
                       crs="EPSG:3857", transform=Affine.identity()) as dst:
        dst.write(arr)
    with pytest.raises(SN7DataError, match="has 2 bands"):
        read_raster(path, bands=[1, 2, 3])
    u8 = to_uint8_image(read_raster(path))
    assert u8.dtype == np.uint8 and u8.min() == 1 and u8.max() == 255  # 0 is kept for nodata


def test_validity_mask_combines_udm_alpha_and_nodata():
    img = np.full((4, 4, 4), 100, np.uint8)
    img[3, 0, 0] = 0          # transparent (alpha)
    img[:3, 1, 1] = 0         # nodata (all-zero colour)
    udm = np.zeros((4, 4), np.uint8)
    udm[2, 2] = 255           # cloud
    v = validity_mask(img, udm, alpha_band=3)
    assert v.sum() == 13 and v[0, 0] == 0 and v[1, 1] == 0 and v[2, 2] == 0


# --------------------------------------------------------------------------- bad inputs (issue 10)


def test_geojson_whose_top_level_is_a_list_is_named_or_skipped(tiny_sn7_root, tmp_path):
    """A top-level JSON list used to raise AttributeError, which on_error='skip' did not skip."""
    root = tmp_path / "listjson"
    shutil.copytree(tiny_sn7_root, root)
    victim = sorted(root.rglob("labels_match_pix/*.geojson"))[0]
    victim.write_text(json.dumps([{"type": "Feature", "geometry": None, "properties": {}}]))
    with pytest.raises(SN7DataError, match=f"{victim.name}: its top level is a JSON list"):
        scan_sn7(root, progress=False)
    with pytest.warns(UserWarning, match="Skipping"):
        meta = scan_sn7(root, on_error="skip", progress=False)
    assert len(meta) == 29 and len(meta.attrs["scan_report"].skipped_files) == 1


def test_aoi_with_an_empty_images_folder_is_in_the_scan_report(tiny_sn7_root, tmp_path):
    root = tmp_path / "emptyaoi"
    shutil.copytree(tiny_sn7_root, root)
    aoi = find_aoi_dirs(root)[1]
    for f in (aoi / "images").iterdir():
        f.unlink()
    with pytest.warns(UserWarning, match=f"AOI {aoi.name}: no usable image"):
        meta = scan_sn7(root, progress=False)
    report = meta.attrs["scan_report"]
    assert report.empty_aois == [aoi.name]
    assert "1 AOI without any usable image" in report.summary() and aoi.name in report.summary()


def test_fifo_named_tif_is_skipped_not_opened(tiny_sn7_root, tmp_path):
    """A FIFO named .tif used to hang the scanner (GDAL blocks opening it)."""
    import os
    import threading

    root = tmp_path / "fifo"
    shutil.copytree(tiny_sn7_root, root)
    aoi = find_aoi_dirs(root)[0]
    fifo = aoi / "images" / f"global_monthly_2019_12_mosaic_{aoi.name}.tif"
    os.mkfifo(fifo)
    result = {}

    def scan():
        with pytest.warns(UserWarning, match="not a regular file"):
            result["meta"] = scan_sn7(root, progress=False)

    th = threading.Thread(target=scan, daemon=True)
    th.start()
    th.join(timeout=20)
    if th.is_alive():  # unblock the hung open() so the test process can finish
        fd = os.open(fifo, os.O_RDWR)
        os.close(fd)
        th.join(timeout=5)
        pytest.fail("scan_sn7 blocked on a FIFO named .tif")
    assert len(result["meta"]) == 30
    assert result["meta"].attrs["scan_report"].skipped_files == [str(fifo)]
    with pytest.raises(SN7DataError, match="not a regular file"):
        read_raster(fifo)


def test_zero_byte_label_file_counts_as_no_buildings(tiny_sn7_root, tmp_path):
    root = tmp_path / "zerolabel"
    shutil.copytree(tiny_sn7_root, root)
    victim = sorted(root.rglob("labels_match_pix/*.geojson"))[-1]
    victim.write_text("")
    meta = scan_sn7(root, progress=False)
    assert meta.loc[meta["labels_match_pix_path"] == str(victim), "building_count"].item() == 0


@pytest.mark.parametrize("content", [b"", b"this is a text file, not a GeoTIFF\n", b"II*\x00\x08\x00\x00\x00truncated"],
                         ids=["zero_byte", "text", "truncated"])
def test_zero_byte_text_and_truncated_geotiffs_are_named(tmp_path, content):
    """Already handled well before issue 10: kept as a regression test for the bad-input table."""
    path = tmp_path / "global_monthly_2018_01_mosaic_X.tif"
    path.write_bytes(content)
    with pytest.raises(SN7DataError, match=f"Cannot read GeoTIFF .*{path.name}.*corrupt or truncated"):
        read_raster(path)


def test_16bit_stretch_keeps_dark_valid_pixels_off_zero():
    """Dark 16-bit pixels used to become (0, 0, 0) -- the nodata convention -- after the 2-98 % stretch."""
    rng = np.random.default_rng(0)
    arr = rng.integers(2000, 4000, (3, 16, 16)).astype(np.uint16)
    arr[:, :4] = 50  # dark but valid
    arr[:, -2:] = 0  # nodata
    u8 = to_uint8_image(arr)
    assert (u8[:, :4] >= 1).all() and (u8[:, -2:] == 0).all() and u8.max() == 255
    assert validity_mask(u8)[:-2].all() and not validity_mask(u8)[-2:].any()
