"""Benchmark reading one real month of footprints (~4,900 polygons) into a mask: geopandas vs hand-written code.

    python benchmarks/bench_labels.py --out bench_results [--root ../shared/data/sn7_real_labelled]

For each label folder (``labels``: lon/lat, reprojected; ``labels_match``: EPSG:3857), the median of 5 runs of
read + reproject + make valid + rasterise onto the 1023 x 1024 image, with stsynth's reader
(``geopandas.read_file``, ``to_crs``, ``make_valid``; :func:`stsynth_lib.data.rasterize.footprint_mask`) and with
the hand-written reader it replaced (``json`` + ``shapely.shape`` + ``buffer(0)`` + ``pyproj``), which kept only
one lobe of a self-intersecting ring. Writes ``<out>/labels.json``; skips when the real sample is absent.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stsynth_lib.data.io import read_raster  # noqa: E402
from stsynth_lib.data.rasterize import footprint_mask, rasterize_polygons  # noqa: E402

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "sn7_real_labelled"
ALIASES = {"urn:ogc:def:crs:OGC:1.3:CRS84": "OGC:CRS84", "urn:ogc:def:crs:EPSG::3857": "EPSG:3857"}


def hand_written_mask(path: str, shape, transform, crs: str) -> np.ndarray:
    """The pre-geopandas reader (for comparison only)."""
    import shapely
    from pyproj import Transformer
    from shapely.geometry import shape as to_shape

    data = json.loads(Path(path).read_text())
    name = ((data.get("crs") or {}).get("properties") or {}).get("name")
    file_crs = ALIASES.get(name, name)
    polys = []
    for feat in data["features"]:
        g = to_shape(feat["geometry"])
        polys.append(g if g.is_valid else g.buffer(0))
    if file_crs and file_crs != crs:
        tf = Transformer.from_crs(file_crs, crs, always_xy=True).transform
        polys = list(shapely.transform(np.asarray(polys, dtype=object), lambda xy: np.column_stack(tf(xy[:, 0], xy[:, 1]))))
    return rasterize_polygons(polys, shape, transform)


def _median_s(fn, repeats: int = 5) -> tuple[float, np.ndarray]:
    out = fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="bench_results")
    ap.add_argument("--root", default=str(DEFAULT_ROOT))
    a = ap.parse_args(argv)
    images = sorted(Path(a.root).glob("train/*/images/*.tif"))
    if not images:
        print(f"no labelled real AOI under {a.root}: skipped")
        return 0
    img = images[-1]
    aoi = img.parent.parent
    _, prof = read_raster(img, with_profile=True)
    crs, transform = prof["crs"].to_string(), prof["transform"]
    shape = read_raster(img, bands=[1]).shape[1:]
    name = img.stem + "_Buildings.geojson"
    rows = []
    for folder, col, source in (("labels", "labels_path", "geo"), ("labels_match", "labels_match_path", "match")):
        path = str(aoi / folder / name)
        n = len(json.loads(Path(path).read_text())["features"])
        t_gpd, m_gpd = _median_s(lambda: footprint_mask({col: path}, shape, transform, crs, source=source))
        t_old, m_old = _median_s(lambda: hand_written_mask(path, shape, transform, crs))
        rows.append({"folder": folder, "footprints": n, "geopandas_s": t_gpd, "hand_written_s": t_old,
                     "same_mask": bool(np.array_equal(m_gpd, m_old)), "cover": float(m_gpd.mean())})
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "labels.json").write_text(json.dumps({"image": img.name, "rows": rows}, indent=2))
    print(f"{img.name} ({shape[0]} x {shape[1]} px)")
    print(f"{'folder':14s} {'footprints':>10s} {'geopandas s':>12s} {'hand-written s':>15s} {'same mask':>10s}")
    for r in rows:
        print(f"{r['folder']:14s} {r['footprints']:>10d} {r['geopandas_s']:>12.3f} {r['hand_written_s']:>15.3f} {str(r['same_mask']):>10s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
