"""A seeded synthetic SpaceNet 7: the embedded default data set.

It writes SpaceNet 7's own folder layout and file formats, so the code path
that reads a real SpaceNet 7 download is the one exercised end to end::

    <root>/train/<AOI>/images/global_monthly_YYYY_MM_mosaic_<AOI>.tif          4-band uint8, EPSG:3857, 4.777 m
    <root>/train/<AOI>/images_masked/global_monthly_YYYY_MM_mosaic_<AOI>.tif   cloudy pixels set to 0
    <root>/train/<AOI>/UDM_masks/global_monthly_YYYY_MM_mosaic_<AOI>_UDM.tif   1 band, 255 = unusable
    <root>/train/<AOI>/labels/..._Buildings.geojson                              CRS84 polygons, persistent ``Id``
    <root>/train/<AOI>/labels_match/..._Buildings.geojson                        EPSG:3857, ``Id``, ``area``, ``iou_score``
    <root>/train/<AOI>/labels_match_pix/..._Buildings.geojson                    pixel coordinates, ``image_fname``

The content is made to be learnable and to look like urban growth: fractal
terrain with a seasonal vegetation cycle, roads, buildings (oriented
rectangles, roof colours, shadows) that appear over the months after a phase of
cleared soil, clouds with matching UDM masks, and month-to-month radiometric
jitter. AOI names and geotransforms follow SpaceNet 7's zoom-13 web-mercator
tiling (``L15-xxxxE-yyyyN_<tx>_<ty>_13``), so tiles sit on the real grid.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import yaml

# SpaceNet 7 geometry: each AOI is one zoom-13 web-mercator tile of 1024 x 1024 pixels.
WEB_MERCATOR_HALF_WORLD_M = 20037508.342789244
Z13_TILE_M = 2 * WEB_MERCATOR_HALF_WORLD_M / 2**13
SN7_PIXEL_M = Z13_TILE_M / 1024  # about 4.777 m

ROOF_COLOURS = np.array(
    [[178, 74, 58], [196, 98, 70], [150, 150, 155], [205, 205, 200], [120, 130, 150], [225, 220, 205], [95, 95, 100]],
    dtype=np.float32,
)


@dataclass(frozen=True)
class SyntheticSN7Config:
    """Parameters of the synthetic SpaceNet 7 tree (recorded in ``<root>/synthetic.yaml``)."""

    n_aois: int = 4
    n_months: int = 12
    size_px: int = 256
    start_year: int = 2018
    start_month: int = 1
    buildings_per_km2_min: float = 250.0
    buildings_per_km2_max: float = 900.0
    initial_built_fraction: float = 0.4
    cloud_probability: float = 0.2
    seed: int = 0


def aoi_name(tx: int, ty: int) -> str:
    """SpaceNet 7 AOI name for zoom-13 tile (tx, ty), e.g. ``L15-1615E-1205N_6460_3370_13``."""
    return f"L15-{tx // 4:04d}E-{(2**13 - ty) // 4:04d}N_{tx}_{ty}_13"


def aoi_transform(tx: int, ty: int, pixel_m: float = SN7_PIXEL_M):
    """Affine geotransform (EPSG:3857) of the top-left of zoom-13 tile (tx, ty)."""
    from affine import Affine

    x0 = -WEB_MERCATOR_HALF_WORLD_M + tx * Z13_TILE_M
    y0 = WEB_MERCATOR_HALF_WORLD_M - ty * Z13_TILE_M
    return Affine(pixel_m, 0.0, x0, 0.0, -pixel_m, y0)


def _fractal_noise(rng: np.random.Generator, size: int, octaves: int = 5, base: int = 4) -> np.ndarray:
    """Smooth fractal noise in [0, 1] of shape (size, size)."""
    from scipy.ndimage import zoom

    out = np.zeros((size, size), np.float32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        cells = base * 2**o
        if cells > size:
            break
        grid = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
        up = zoom(grid, size / cells, order=3, mode="reflect", grid_mode=False)[:size, :size]
        out += amp * up
        total += amp
        amp *= 0.55
    out /= total
    lo, hi = np.percentile(out, [1, 99])
    return np.clip((out - lo) / max(hi - lo, 1e-6), 0, 1)


def _rect(cx: float, cy: float, w: float, h: float, angle: float):
    from shapely.geometry import Polygon

    c, s = math.cos(angle), math.sin(angle)
    pts = [(-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2)]
    return Polygon([(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts])


class _AOIPlan:
    """Everything about one synthetic AOI that does not change from month to month."""

    def __init__(self, cfg: SyntheticSN7Config, rng: np.random.Generator, tx: int, ty: int):
        from rasterio.features import rasterize
        from shapely.geometry import LineString

        self.tx, self.ty = tx, ty
        self.name = aoi_name(tx, ty)
        n = cfg.size_px
        self.transform = aoi_transform(tx, ty)
        self.vegetation = _fractal_noise(rng, n)
        self.soil_tone = _fractal_noise(rng, n)
        self.grain = rng.normal(0, 1, (3, n, n)).astype(np.float32)
        # Roads: a rough grid at a random orientation.
        theta = rng.uniform(0, math.pi / 2)
        roads = []
        for k in range(int(rng.integers(2, 5)) * max(1, n // 128)):
            ang = theta + (math.pi / 2) * (k % 2)
            off = rng.uniform(-0.35, 0.35) * n
            cx, cy = n / 2 - off * math.sin(ang), n / 2 + off * math.cos(ang)
            dx, dy = math.cos(ang) * n * 1.5, math.sin(ang) * n * 1.5
            roads.append((LineString([(cx - dx, cy - dy), (cx + dx, cy + dy)]), ang))
        road_shapes = [(line.buffer(rng.uniform(1.0, 1.8)), 1) for line, _ in roads]
        self.road_mask = rasterize(road_shapes, out_shape=(n, n), fill=0, dtype="uint8").astype(bool)
        # Buildings along the roads, non-overlapping, with a construction month each.
        area_km2 = (n * SN7_PIXEL_M / 1000) ** 2
        target = max(3, int(area_km2 * rng.uniform(cfg.buildings_per_km2_min, cfg.buildings_per_km2_max)))
        occupied = self.road_mask.copy()
        polys, ids = [], []
        tries = 0
        while len(polys) < target and tries < target * 10:
            tries += 1
            line, ang = roads[int(rng.integers(len(roads)))]
            t = rng.uniform(0, 1)
            p = line.interpolate(t, normalized=True)
            side = rng.choice([-1, 1])
            dist = rng.uniform(3.5, 9.0)
            cx = p.x - side * dist * math.sin(ang)
            cy = p.y + side * dist * math.cos(ang)
            w, h = rng.uniform(2.5, 7.0), rng.uniform(2.5, 6.0)
            if not (2 <= cx < n - 2 and 2 <= cy < n - 2):
                continue
            r = math.hypot(w, h) / 2 + 1.0  # cheap bounding box test before building the polygon
            x0, y0, x1, y1 = max(int(cx - r), 0), max(int(cy - r), 0), int(cx + r), int(cy + r)
            if occupied[y0 : y1 + 2, x0 : x1 + 2].any():
                continue
            poly = _rect(cx, cy, w, h, ang + rng.normal(0, 0.05))
            occupied[y0 : y1 + 2, x0 : x1 + 2] = True
            polys.append(poly)
            ids.append(len(ids) + 1)
        self.polys = polys
        nb = len(polys)
        self.roof = ROOF_COLOURS[rng.integers(len(ROOF_COLOURS), size=nb)] + rng.normal(0, 8, (nb, 3))
        built0 = rng.random(nb) < cfg.initial_built_fraction
        # Month the roof appears; -1 = already there. Construction (cleared soil) starts 1-2 months before.
        self.roof_month = np.where(built0, -1, rng.integers(1, max(cfg.n_months, 2), size=nb))
        self.cleared_month = self.roof_month - rng.integers(1, 3, size=nb)
        self.id_map = np.zeros((n, n), np.int32)
        self.shadow_map = np.zeros((n, n), np.int32)
        if nb:
            from shapely import affinity

            self.id_map = rasterize(
                [(p, i + 1) for i, p in enumerate(polys)], out_shape=(n, n), fill=0, dtype="int32"
            )
            shadows = [(affinity.translate(p, 1.0, 1.0), i + 1) for i, p in enumerate(polys)]
            self.shadow_map = rasterize(shadows, out_shape=(n, n), fill=0, dtype="int32")
            self.shadow_map[self.id_map > 0] = 0
            lot = [(p.buffer(1.2), i + 1) for i, p in enumerate(polys)]
            self.lot_map = rasterize(lot, out_shape=(n, n), fill=0, dtype="int32")
        else:
            self.lot_map = np.zeros((n, n), np.int32)

    def render(self, cfg: SyntheticSN7Config, rng: np.random.Generator, month_idx: int, month_of_year: int):
        """Return (image (4, n, n) uint8, udm (n, n) uint8, ids of labelled buildings)."""
        n = cfg.size_px
        season = 0.5 + 0.5 * math.cos(2 * math.pi * (month_of_year - 7) / 12)  # 1 in July, 0 in January
        green = np.array([55, 95, 45], np.float32) * (0.75 + 0.25 * season) + np.array([40, 20, 20]) * (1 - season)
        dry = np.array([150, 130, 100], np.float32)
        soil = np.array([165, 140, 110], np.float32)
        veg = np.clip((self.vegetation - 0.35) * 2.5, 0, 1)[None]
        tone = (0.85 + 0.3 * self.soil_tone)[None]
        img = (veg * green[:, None, None] + (1 - veg) * dry[:, None, None]) * tone
        img = np.where(self.road_mask[None], np.array([140, 138, 135], np.float32)[:, None, None], img)
        # Buildings by phase.
        nb = len(self.polys)
        state = np.zeros(nb + 1, np.int8)  # 0 none, 1 cleared soil, 2 roof
        if nb:
            state[1:][self.cleared_month < month_idx] = 1
            state[1:][self.roof_month <= month_idx] = 2
            lot_state = state[self.lot_map]
            img = np.where((lot_state >= 1)[None], soil[:, None, None] * tone, img)
            shadow_state = state[self.shadow_map]
            img = np.where((shadow_state == 2)[None], img * 0.45, img)
            roof_lut = np.vstack([np.zeros((1, 3), np.float32), self.roof]).T  # (3, nb+1)
            bstate = state[self.id_map]
            img = np.where((bstate == 2)[None], roof_lut[:, self.id_map], img)
        img = img + 3.0 * self.grain
        # Radiometric jitter of the mosaic.
        gain = rng.normal(1.0, 0.03, (3, 1, 1))
        offset = rng.normal(0.0, 3.0, (3, 1, 1))
        img = img * gain + offset
        udm = np.zeros((n, n), np.uint8)
        if rng.random() < cfg.cloud_probability:
            cloud = _fractal_noise(rng, n, octaves=4, base=2)
            thr = rng.uniform(0.55, 0.8)
            alpha = np.clip((cloud - thr) / 0.12, 0, 1)
            img = img * (1 - alpha[None]) + 238.0 * alpha[None]
            udm[alpha > 0.3] = 255
        rgb = np.clip(np.round(img), 0, 255).astype(np.uint8)
        out = np.concatenate([rgb, np.full((1, n, n), 255, np.uint8)])
        labelled = [i for i in range(nb) if state[i + 1] == 2]
        return out, udm, labelled


def _write_tif(path: Path, arr: np.ndarray, transform, crs: str = "EPSG:3857") -> None:
    import rasterio

    arr = arr if arr.ndim == 3 else arr[None]
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        path, "w", driver="GTiff", width=arr.shape[2], height=arr.shape[1], count=arr.shape[0],
        dtype="uint8", crs=crs, transform=transform, compress="lzw",
    ) as dst:
        dst.write(arr)


def _ring(coords) -> list[list[list[float]]]:
    return [[[float(x), float(y)] for x, y in coords]]


class _LabelWriter:
    """Per-building GeoJSON features in the three SpaceNet 7 conventions, encoded once per AOI."""

    def __init__(self, plan: _AOIPlan, to_lonlat):
        from shapely import affinity

        t = plan.transform
        self.pix, self.match, self.geo = [], [], []
        for i, poly in enumerate(plan.polys):
            map_poly = affinity.affine_transform(poly, [t.a, t.b, t.d, t.e, t.c, t.f])
            xs, ys = (np.asarray(v) for v in zip(*map_poly.exterior.coords))
            lon, lat = to_lonlat(xs, ys)
            bid = i + 1
            geom = lambda coords: json.dumps({"type": "Polygon", "coordinates": _ring(coords)})
            self.pix.append((bid, map_poly.area, geom(poly.exterior.coords)))
            self.match.append(json.dumps({"type": "Feature", "properties": {"Id": bid, "area": map_poly.area, "iou_score": 1.0},
                                          "geometry": {"type": "Polygon", "coordinates": _ring(map_poly.exterior.coords)}}))
            self.geo.append(json.dumps({"type": "Feature", "properties": {"Id": bid},
                                        "geometry": {"type": "Polygon", "coordinates": _ring(zip(lon, lat))}}))

    def write(self, aoi_dir: Path, stem: str, labelled: list[int]) -> None:
        pix = [
            '{"type": "Feature", "properties": ' + json.dumps({"Id": bid, "area": area, "image_fname": f"{stem}.tif"})
            + ', "geometry": ' + geom + "}"
            for bid, area, geom in (self.pix[i] for i in labelled)
        ]
        name = f"{stem}_Buildings.geojson"
        for sub, feats, crs_name in (
            ("labels", [self.geo[i] for i in labelled], "urn:ogc:def:crs:OGC:1.3:CRS84"),
            ("labels_match", [self.match[i] for i in labelled], "urn:ogc:def:crs:EPSG::3857"),
            ("labels_match_pix", pix, None),
        ):
            (aoi_dir / sub).mkdir(parents=True, exist_ok=True)
            head = '{"type": "FeatureCollection", '
            if crs_name:
                head += '"crs": {"type": "name", "properties": {"name": "' + crs_name + '"}}, '
            (aoi_dir / sub / name).write_text(head + '"features": [\n' + ",\n".join(feats) + "\n]}\n")


def generate_synthetic_sn7(root: str | os.PathLike, config: SyntheticSN7Config | None = None, progress: bool = True, **overrides) -> Path:
    """Write a synthetic SpaceNet 7 tree under ``root`` (``root/train/<AOI>/...``) and return ``root``.

    Idempotent: if ``root/synthetic.yaml`` records the same parameters the tree
    is kept; with other parameters it is regenerated. The tree is written to
    ``root.partial`` and renamed when complete, so an interrupted run never
    leaves a tree that looks finished.
    """
    from pyproj import Transformer
    from tqdm.auto import tqdm

    cfg = config or SyntheticSN7Config()
    if overrides:
        cfg = SyntheticSN7Config(**{**asdict(cfg), **overrides})
    if cfg.size_px < 16 or cfg.n_aois < 1 or cfg.n_months < 2:
        raise ValueError(f"synthetic SpaceNet 7 needs size_px >= 16, n_aois >= 1, n_months >= 2; got {cfg}")
    root = Path(root)
    stamp = root / "synthetic.yaml"
    if stamp.is_file() and yaml.safe_load(stamp.read_text()) == asdict(cfg) and (root / "train").is_dir():
        return root
    partial = root.with_name(root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    rng = np.random.default_rng(cfg.seed)
    to_lonlat = Transformer.from_crs("EPSG:3857", "OGC:CRS84", always_xy=True).transform
    # Distinct zoom-13 tiles on land-ish latitudes.
    tiles: set[tuple[int, int]] = set()
    while len(tiles) < cfg.n_aois:
        tiles.add((int(rng.integers(1000, 7000)), int(rng.integers(2500, 3900))))
    months = [(cfg.start_year + (cfg.start_month - 1 + k) // 12, (cfg.start_month - 1 + k) % 12 + 1) for k in range(cfg.n_months)]
    bar = tqdm(total=cfg.n_aois * cfg.n_months, desc="synthetic SpaceNet 7", unit="image", disable=not progress)
    for tx, ty in sorted(tiles):
        aoi_rng = np.random.default_rng(rng.integers(2**63))
        plan = _AOIPlan(cfg, aoi_rng, tx, ty)
        aoi_dir = partial / "train" / plan.name
        labels = _LabelWriter(plan, to_lonlat)
        for k, (year, month) in enumerate(months):
            stem = f"global_monthly_{year}_{month:02d}_mosaic_{plan.name}"
            img, udm, labelled = plan.render(cfg, aoi_rng, k, month)
            _write_tif(aoi_dir / "images" / f"{stem}.tif", img, plan.transform)
            masked = img.copy()
            masked[:, udm > 0] = 0
            _write_tif(aoi_dir / "images_masked" / f"{stem}.tif", masked, plan.transform)
            _write_tif(aoi_dir / "UDM_masks" / f"{stem}_UDM.tif", udm, plan.transform)
            labels.write(aoi_dir, stem, labelled)
            bar.update()
    bar.close()
    (partial / "synthetic.yaml").write_text(yaml.safe_dump(asdict(cfg), sort_keys=False))
    if root.exists():
        shutil.rmtree(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    os.replace(partial, root)
    return root
