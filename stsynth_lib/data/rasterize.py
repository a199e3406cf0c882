"""Building footprints (SpaceNet 7 GeoJSON) to masks aligned with the image.

SpaceNet 7 ships each month's footprints three times: ``labels_match_pix``
(pixel coordinates), ``labels_match`` (EPSG:3857) and ``labels`` (CRS84
lon/lat). :func:`footprint_mask` rasterises any of them onto the image grid;
the three agree on real data (see ``tests/test_rasterize.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from stsynth_lib.data.errors import SN7DataError

GEOJSON_CRS_ALIASES = {
    "urn:ogc:def:crs:OGC:1.3:CRS84": "OGC:CRS84",
    "urn:ogc:def:crs:EPSG::3857": "EPSG:3857",
    "urn:ogc:def:crs:EPSG::4326": "EPSG:4326",
}


def read_footprints(path: str | Path) -> tuple[list, str | None]:
    """Return (shapely polygons, CRS string or None) from a SpaceNet 7 GeoJSON. Empty files give ``[]``.

    Unreadable JSON raises :class:`SN7DataError` naming the file.
    """
    from shapely.geometry import shape

    path = Path(path)
    try:
        text = path.read_text()
        data = json.loads(text) if text.strip() else {"features": []}
    except (OSError, json.JSONDecodeError) as exc:
        raise SN7DataError(f"Cannot read GeoJSON {path}: {exc}. Re-download or delete this file.") from exc
    crs_name = ((data.get("crs") or {}).get("properties") or {}).get("name")
    crs = GEOJSON_CRS_ALIASES.get(crs_name, crs_name)
    geoms = []
    for feat in data.get("features") or []:
        geom = feat.get("geometry")
        if not geom:
            continue
        g = shape(geom)
        if not g.is_valid:
            g = g.buffer(0)
        if not g.is_empty:
            geoms.append(g)
    return geoms, crs


def rasterize_polygons(polys: list, shape: tuple[int, int], transform=None) -> np.ndarray:
    """Burn polygons into a uint8 {0, 1} mask of ``shape``; ``transform`` maps pixel to polygon coordinates."""
    from affine import Affine
    from rasterio.features import rasterize

    if not polys:
        return np.zeros(shape, np.uint8)
    return rasterize(
        [(p, 1) for p in polys], out_shape=shape, transform=transform or Affine.identity(), fill=0, dtype="uint8"
    )


def footprint_mask(
    row: dict,
    shape: tuple[int, int],
    transform=None,
    crs: str | None = None,
    source: str = "auto",
    pixel_scale: float = 1.0,
) -> np.ndarray:
    """Building mask (uint8 {0, 1}, ``shape``) for one metadata row.

    ``source``: ``"pix"`` (labels_match_pix, pixel coordinates times
    ``pixel_scale`` for a resampled image), ``"match"`` (labels_match, map
    coordinates through the image ``transform``), ``"geo"`` (labels, lon/lat
    reprojected to the image ``crs``), or ``"auto"``: pix, else match, else
    geo -- the map-coordinate files are preferred whenever the image is
    georeferenced and resampled (``pixel_scale != 1``).
    """
    import shapely
    from pyproj import Transformer

    order = {"pix": ["pix"], "match": ["match"], "geo": ["geo"], "auto": ["pix", "match", "geo"]}
    if source not in order:
        raise ValueError(f"source must be one of {list(order)}, got {source!r}")
    candidates = order[source]
    if source == "auto" and pixel_scale != 1.0 and transform is not None and crs:
        candidates = ["match", "geo", "pix"]
    cols = {"pix": "labels_match_pix_path", "match": "labels_match_path", "geo": "labels_path"}
    for cand in candidates:
        path = row.get(cols[cand]) or ""
        if not path:
            continue
        polys, file_crs = read_footprints(path)
        if cand == "pix":
            if pixel_scale != 1.0:
                from shapely import affinity

                polys = [affinity.scale(p, pixel_scale, pixel_scale, origin=(0, 0)) for p in polys]
            return rasterize_polygons(polys, shape)
        if transform is None or not crs:
            raise SN7DataError(
                f"{path}: map-coordinate labels need a georeferenced image, but the image has no CRS/transform. "
                "Use labels_match_pix (source='pix')."
            )
        if cand == "geo" or (file_crs and file_crs != crs):
            src_crs = file_crs or "OGC:CRS84"
            tf = Transformer.from_crs(src_crs, crs, always_xy=True).transform
            polys = list(shapely.transform(np.asarray(polys, dtype=object),
                                           lambda xy: np.column_stack(tf(xy[:, 0], xy[:, 1]))))
        return rasterize_polygons(polys, shape, transform)
    raise SN7DataError(f"No label file for {row.get('image_path', 'this image')} (looked for {candidates}).")
