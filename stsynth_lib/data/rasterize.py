"""Building footprints (SpaceNet 7 GeoJSON) to masks aligned with the image.

SpaceNet 7 ships each month's footprints three times: ``labels_match_pix``
(pixel coordinates), ``labels_match`` (EPSG:3857) and ``labels`` (CRS84
lon/lat). :func:`footprint_mask` rasterises any of them onto the image grid;
the three agree on real data (see ``tests/test_rasterize.py``).

Files are read with ``geopandas.read_file``: the file's own CRS (a GeoJSON
without a ``crs`` member is lon/lat WGS 84, as RFC 7946 says), ``to_crs`` to
the image's CRS, and ``make_valid`` for invalid (self-intersecting) rings,
which keeps every lobe. Footprints that cannot lie on the image (coordinates
outside lon/lat range in a lon/lat file, or no footprint overlapping the
image) raise :class:`SN7DataError` instead of giving an empty mask.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from stsynth_lib.data.errors import SN7DataError

POLYGONAL = ("Polygon", "MultiPolygon")


def _first_char(path: Path) -> str:
    with open(path, "rb") as fh:
        head = fh.read(4096).lstrip()
    return head[:1].decode("ascii", "replace")


def read_footprints_gdf(path: str | Path):
    """A GeoDataFrame of the file's footprints: valid, polygonal, non-empty, in the file's own CRS.

    A zero-byte file is an empty month. A file that is not a GeoJSON
    FeatureCollection (invalid JSON, a top-level list, ...) raises
    :class:`SN7DataError` naming it.
    """
    import geopandas as gpd
    import shapely

    path = Path(path)
    if not path.is_file():
        raise SN7DataError(f"GeoJSON {path} does not exist or is not a regular file. Rescan the tree (notebook 01).")
    if path.stat().st_size == 0 or not _first_char(path).strip():
        return gpd.GeoDataFrame(geometry=[], crs="OGC:CRS84")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            gdf = gpd.read_file(path)
    except Exception as exc:  # pyogrio/fiona raise their own DataSourceError types
        what = ("its top level is a JSON list, not a FeatureCollection object" if _first_char(path) == "["
                else f"it is not a readable GeoJSON FeatureCollection ({exc})")
        raise SN7DataError(f"Cannot read GeoJSON {path}: {what}. Re-download or delete this file.") from exc
    geoms = gdf.geometry
    keep = geoms.notna() & ~geoms.is_empty
    gdf = gdf[keep]
    if len(gdf) and not gdf.geometry.is_valid.all():
        gdf = gdf.set_geometry(gdf.geometry.make_valid())  # keeps every lobe (buffer(0) drops some)
    types = gdf.geometry.geom_type
    if len(gdf) and not types.isin(POLYGONAL).all():  # make_valid can give collections with lines or points
        parts = [shapely.get_parts(g) for g in gdf.geometry]
        polys = [shapely.multipolygons([p for p in ps if p.geom_type == "Polygon"]) for ps in parts]
        gdf = gdf.set_geometry(polys, crs=gdf.crs)
        gdf = gdf[~gdf.geometry.is_empty]
    return gdf


def rasterize_polygons(polys, shape: tuple[int, int], transform=None) -> np.ndarray:
    """Burn polygons into a uint8 {0, 1} mask of ``shape``; ``transform`` maps pixel to polygon coordinates."""
    from affine import Affine
    from rasterio.features import rasterize

    polys = list(polys)
    if not polys:
        return np.zeros(shape, np.uint8)
    return rasterize(
        [(p, 1) for p in polys], out_shape=shape, transform=transform or Affine.identity(), fill=0, dtype="uint8"
    )


def _image_bounds(shape: tuple[int, int], transform) -> tuple[float, float, float, float]:
    from affine import Affine

    a, b, c0, d, e, f0 = tuple(transform or Affine.identity())[:6]
    corners = ((0, 0), (shape[1], 0), (0, shape[0]), (shape[1], shape[0]))
    xs = [a * c + b * r + c0 for c, r in corners]
    ys = [d * c + e * r + f0 for c, r in corners]
    return min(xs), min(ys), max(xs), max(ys)


def _check_on_image(gdf, path, shape, transform, what: str) -> None:
    """Refuse footprints that cannot be on this image (they would give an empty mask without a word)."""
    if not len(gdf):
        return
    x0, y0, x1, y1 = _image_bounds(shape, transform)
    fb = gdf.total_bounds
    if not np.all(np.isfinite(fb)) or fb[2] < x0 or fb[0] > x1 or fb[3] < y0 or fb[1] > y1:
        raise SN7DataError(
            f"{path}: none of its {len(gdf)} footprints lies on the image ({what}; footprints span "
            f"x {fb[0]:.6g}..{fb[2]:.6g}, y {fb[1]:.6g}..{fb[3]:.6g}; the image spans x {x0:.6g}..{x1:.6g}, "
            f"y {y0:.6g}..{y1:.6g}). The file's coordinates are not in the CRS it declares (a GeoJSON without a "
            "'crs' member is lon/lat): add the right 'crs' member, or use another label folder (mask_source)."
        )


def _to_image_crs(gdf, path, crs: str):
    """Reproject map-coordinate footprints to the image CRS, refusing coordinates impossible in the file's CRS."""
    if gdf.crs is None:
        gdf = gdf.set_crs("OGC:CRS84")
    if gdf.crs.is_geographic and len(gdf):
        b = gdf.total_bounds
        if b[0] < -180.5 or b[2] > 180.5 or b[1] < -90.5 or b[3] > 90.5:
            raise SN7DataError(
                f"{path}: coordinates span x {b[0]:.6g}..{b[2]:.6g}, y {b[1]:.6g}..{b[3]:.6g}, which cannot be "
                f"longitude/latitude, yet the file's CRS is {gdf.crs.to_string()} (GeoJSON without a 'crs' member "
                f"means lon/lat). If they are in the image's CRS ({crs}), add "
                '"crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::3857"}} (with that EPSG code).'
            )
    return gdf.to_crs(crs) if not gdf.crs.equals(crs) else gdf


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
        gdf = read_footprints_gdf(path)
        if cand == "pix":
            geoms = gdf.geometry.to_numpy()
            if pixel_scale != 1.0:
                geoms = shapely.transform(geoms, lambda xy: xy * pixel_scale)
            gdf = gdf.set_geometry(list(geoms), crs=None)
            _check_on_image(gdf, path, shape, None, "pixel coordinates")
            return rasterize_polygons(gdf.geometry, shape)
        if transform is None or not crs:
            raise SN7DataError(
                f"{path}: map-coordinate labels need a georeferenced image, but the image has no CRS/transform. "
                "Use labels_match_pix (source='pix')."
            )
        gdf = _to_image_crs(gdf, path, crs)
        _check_on_image(gdf, path, shape, transform, f"reprojected to {crs}")
        return rasterize_polygons(gdf.geometry, shape, transform)
    raise SN7DataError(f"No label file for {row.get('image_path', 'this image')} (looked for {candidates}).")
