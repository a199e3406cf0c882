"""Footprints to masks: the three SpaceNet 7 label conventions agree; empty GeoJSON is an empty mask."""

from __future__ import annotations

import json

import pytest
from conftest import REAL_TILE, needs_real_tile

from stsynth_lib.data.io import read_raster
from stsynth_lib.data.rasterize import footprint_mask, read_footprints_gdf
from stsynth_lib.data.sn7 import SN7DataError, scan_sn7


def _masks(row):
    img, prof = read_raster(row["image_path"], with_profile=True)
    crs = prof["crs"].to_string() if prof["crs"] else None
    return {s: footprint_mask(row, img.shape[1:], prof["transform"], crs, source=s) for s in ("pix", "match", "geo")}


def _iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


@needs_real_tile
def test_three_label_files_agree_on_the_real_tile():
    meta = scan_sn7(REAL_TILE, progress=False)
    row = meta.iloc[0].to_dict()
    m = _masks(row)
    cover = m["pix"].mean()
    assert 0.08 < cover < 0.11  # the README: about 9.3 % of the tile
    assert _iou(m["pix"], m["match"]) > 0.99
    assert _iou(m["pix"], m["geo"]) > 0.99


@needs_real_tile
def test_real_tile_mask_is_aligned_with_the_image():
    """Buildings are brighter/more textured than their surroundings: the mask must not be shifted or flipped."""
    meta = scan_sn7(REAL_TILE, progress=False)
    row = meta.iloc[0].to_dict()
    img = read_raster(row["image_path"]).astype(float)[:3].mean(0)
    mask = _masks(row)["pix"].astype(bool)
    aligned = img[mask].mean() - img[~mask].mean()
    flipped = img[mask[::-1]].mean() - img[~mask[::-1]].mean()
    assert aligned > flipped + 5


def test_synthetic_label_files_agree(tiny_sn7_root):
    meta = scan_sn7(tiny_sn7_root, progress=False)
    row = meta.iloc[-1].to_dict()
    m = _masks(row)
    assert m["pix"].sum() > 0
    assert _iou(m["pix"], m["match"]) > 0.97 and _iou(m["pix"], m["geo"]) > 0.97


def test_empty_geojson_gives_empty_mask(tmp_path):
    p = tmp_path / "empty_Buildings.geojson"
    p.write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    assert len(read_footprints_gdf(p)) == 0
    mask = footprint_mask({"labels_match_pix_path": str(p)}, (16, 16), source="pix")
    assert mask.shape == (16, 16) and mask.sum() == 0
    p.write_text("")  # a zero-byte file is an empty month too
    assert len(read_footprints_gdf(p)) == 0


def test_map_labels_without_georeference_fail_clearly(tmp_path):
    p = tmp_path / "m_Buildings.geojson"
    p.write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    with pytest.raises(SN7DataError, match="georeferenced"):
        footprint_mask({"labels_match_path": str(p)}, (8, 8), None, None, source="match")


def test_pixel_labels_rasterise_where_they_are():
    from shapely.geometry import box

    from stsynth_lib.data.rasterize import rasterize_polygons

    m = rasterize_polygons([box(2, 3, 5, 7)], (10, 10))  # x 2..5 (cols), y 3..7 (rows)
    assert m.sum() == 12
    assert m[3:7, 2:5].all()


# --------------------------------------------------------------------------- bad inputs (issue 10, item 4 and 5)


def _fc(features, crs_name=None):
    data = {"type": "FeatureCollection", "features": features}
    if crs_name:
        data["crs"] = {"type": "name", "properties": {"name": crs_name}}
    return json.dumps(data)


def _poly(ring):
    return {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [ring]}}


def _strip_crs(src, dst):
    data = json.loads(open(src).read())
    data.pop("crs", None)
    dst.write_text(json.dumps(data))
    return dst


def test_self_intersecting_footprint_keeps_both_lobes(tmp_path):
    """A bow-tie ring: buffer(0) kept one triangle; make_valid keeps the whole area (two triangles of 25 px)."""
    p = tmp_path / "bowtie_Buildings.geojson"
    p.write_text(_fc([_poly([[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]])]))
    mask = footprint_mask({"labels_match_pix_path": str(p)}, (16, 16), source="pix")
    assert mask[:, :5].sum() > 15 and mask[:, 5:].sum() > 15  # a lobe on each side of the crossing
    assert 40 <= mask.sum() <= 60


def test_lonlat_labels_without_crs_member_are_reprojected(tiny_sn7_root, tmp_path):
    """A GeoJSON without 'crs' is lon/lat (RFC 7946): it used to be read as image metres, giving an empty mask."""
    row = scan_sn7(tiny_sn7_root, progress=False).iloc[-1].to_dict()
    row["labels_match_path"] = str(_strip_crs(row["labels_path"], tmp_path / "lonlat_nocrs_Buildings.geojson"))
    m = _masks(row)
    assert m["pix"].sum() > 0
    assert _iou(m["pix"], m["match"]) > 0.97


def test_map_coordinates_in_a_file_without_crs_are_refused(tiny_sn7_root, tmp_path):
    row = scan_sn7(tiny_sn7_root, progress=False).iloc[-1].to_dict()
    row["labels_match_path"] = str(_strip_crs(row["labels_match_path"], tmp_path / "metres_nocrs_Buildings.geojson"))
    with pytest.raises(SN7DataError, match="metres_nocrs_Buildings.geojson.*cannot be longitude/latitude"):
        _masks(row)


def test_pixel_labels_that_are_not_on_the_image_are_refused(tiny_sn7_root, tmp_path):
    """lon/lat coordinates in the pixel-label folder used to give an empty mask without a word."""
    row = scan_sn7(tiny_sn7_root, progress=False).iloc[-1].to_dict()
    row["labels_match_pix_path"] = str(_strip_crs(row["labels_path"], tmp_path / "pix_lonlat_Buildings.geojson"))
    with pytest.raises(SN7DataError, match="pix_lonlat_Buildings.geojson: none of its .* footprints lies on the image"):
        footprint_mask(row, (64, 64), source="pix")


def test_geojson_whose_top_level_is_a_list_is_named(tmp_path):
    p = tmp_path / "list_Buildings.geojson"
    p.write_text(json.dumps([_poly([[0, 0], [4, 0], [4, 4], [0, 0]])]))
    with pytest.raises(SN7DataError, match="list_Buildings.geojson.*top level is a JSON list"):
        footprint_mask({"labels_match_pix_path": str(p)}, (8, 8), source="pix")


REAL_LABELLED = REAL_TILE.parent / "sn7_real_labelled"


@pytest.mark.skipif(not REAL_LABELLED.is_dir(), reason=f"no labelled real AOI at {REAL_LABELLED}")
def test_real_month_labels_agree_and_read_fast():
    """A real labelled month (~4,900 footprints): the three label folders agree, read with geopandas in < 5 s."""
    import time

    img = sorted(REAL_LABELLED.glob("train/*/images/*2020_01*.tif"))[0]
    aoi = img.parent.parent
    name = img.stem + "_Buildings.geojson"
    row = {"image_path": str(img), "labels_path": str(aoi / "labels" / name),
           "labels_match_path": str(aoi / "labels_match" / name), "labels_match_pix_path": str(aoi / "labels_match_pix" / name)}
    t = time.perf_counter()
    m = _masks(row)
    assert time.perf_counter() - t < 5
    assert 0.05 < m["pix"].mean() < 0.1
    assert _iou(m["pix"], m["match"]) > 0.99 and _iou(m["pix"], m["geo"]) > 0.99
