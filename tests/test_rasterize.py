"""Footprints to masks: the three SpaceNet 7 label conventions agree; empty GeoJSON is an empty mask."""

from __future__ import annotations

import json

import pytest
from conftest import REAL_TILE, needs_real_tile

from stsynth_lib.data.io import read_raster
from stsynth_lib.data.rasterize import footprint_mask, read_footprints
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
    polys, _ = read_footprints(p)
    assert polys == []
    mask = footprint_mask({"labels_match_pix_path": str(p)}, (16, 16), source="pix")
    assert mask.shape == (16, 16) and mask.sum() == 0
    p.write_text("")  # a zero-byte file is an empty month too
    assert read_footprints(p)[0] == []


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
