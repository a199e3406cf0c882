"""Read a SpaceNet 7 tree into one tidy metadata table.

Works on the Kaggle copy (``SN7_buildings_train/train/<AOI>/...``), on the
synthetic tree of :mod:`stsynth_lib.data.synthetic`, and on partial trees with
images only (such as the 128 px real sample). One row per (AOI, month).
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from stsynth_lib.book.report_format import plural
from stsynth_lib.data.errors import SN7DataError
from stsynth_lib.data.io import read_raster

__all__ = ["SN7DataError", "ScanReport", "find_aoi_dirs", "scan_sn7", "save_metadata", "load_metadata"]

IMAGE_RE = re.compile(r"^global_monthly_(\d{4})_(\d{2})_mosaic_(.+)\.tif$")
LABEL_DIRS = {"labels": "labels_path", "labels_match": "labels_match_path", "labels_match_pix": "labels_match_pix_path"}
OPTIONAL_DIRS = ("images_masked", "UDM_masks", *LABEL_DIRS)


@dataclass
class ScanReport:
    """What the scanner found missing or skipped (kept in ``DataFrame.attrs['scan_report']``)."""

    root: str
    n_aois: int = 0
    missing_folders: dict[str, list[str]] = field(default_factory=dict)  # folder -> AOIs lacking it
    skipped_files: list[str] = field(default_factory=list)
    empty_aois: list[str] = field(default_factory=list)  # AOIs whose images/ holds no usable image

    def summary(self, name: str | None = None) -> str:
        """The scan in a few lines; ``name``: what to call the tree in place of its path (a page shows the data's
        name, not the path it has on one machine: :func:`tree_name`)."""
        lines = [f"SpaceNet 7 tree at {self.root if name is None else name}: {plural(self.n_aois, 'AOI')}"]
        for folder, aois in sorted(self.missing_folders.items()):
            share = "all" if len(aois) == self.n_aois else f"{len(aois)} of {self.n_aois}"
            lines.append(f"  missing {folder}/ in {share} AOIs")
        if self.empty_aois:
            lines.append(f"  {plural(len(self.empty_aois), 'AOI')} without any usable image in images/ (left out): "
                         + ", ".join(self.empty_aois[:5]) + (" ..." if len(self.empty_aois) > 5 else ""))
        if self.skipped_files:
            lines.append(f"  skipped {plural(len(self.skipped_files), 'unreadable file')}, e.g. {self.skipped_files[0]}")
        return "\n".join(lines)


def find_aoi_dirs(root: str | Path) -> list[Path]:
    """AOI folders (folders with an ``images/`` child) under ``root``.

    ``root`` may be the AOI parent itself (``.../train``), its parent (the folder
    holding ``train/``) or the Kaggle download folder (``SN7_buildings_train``).
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise SN7DataError(
            f"SpaceNet 7 root {root} does not exist or is not a folder. Point data_root at the folder that holds "
            "train/<AOI>/images/ (for the Kaggle copy: .../SN7_buildings_train), or set synthetic_data: true."
        )
    for candidate in (root, root / "train", root / "SN7_buildings_train" / "train", root / "SN7_buildings_train"):
        if candidate.is_dir():
            aois = sorted(p for p in candidate.iterdir() if (p / "images").is_dir())
            if aois:
                return aois
    raise SN7DataError(
        f"No SpaceNet 7 AOI folders under {root}: expected <root>/train/<AOI>/images/global_monthly_YYYY_MM_mosaic_<AOI>.tif. "
        "Check data_root (it should be the folder that holds train/)."
    )


def _count_features(path: Path) -> int:
    try:
        text = path.read_text()
        if not text.strip():
            return 0  # a zero-byte label file is a month without buildings (as in rasterize)
        data = json.loads(text)
    except (OSError, json.JSONDecodeError) as exc:
        raise SN7DataError(f"Cannot read GeoJSON {path}: {exc}. Re-download or delete this file.") from exc
    if not isinstance(data, dict):
        raise SN7DataError(
            f"{path}: its top level is a JSON {type(data).__name__}, not a GeoJSON FeatureCollection object "
            '({"type": "FeatureCollection", "features": [...]}). Re-download this file.'
        )
    feats = data.get("features")
    if not isinstance(feats, list):
        raise SN7DataError(f"{path} is not a GeoJSON FeatureCollection (no 'features'). Re-download this file.")
    return len(feats)


def _raster_header(path: Path) -> dict:
    import rasterio

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                gt = src.transform
                return {
                    "width": src.width,
                    "height": src.height,
                    "bands": src.count,
                    "dtype": src.dtypes[0],
                    "crs": src.crs.to_string() if src.crs else "",
                    "georeferenced": src.crs is not None and not gt.is_identity,
                }
    except rasterio.errors.RasterioError as exc:
        raise SN7DataError(f"Cannot open GeoTIFF {path}: {exc}. The file is corrupt or truncated; re-download it.") from exc


def _cloud_fraction(udm_path: Path) -> float:
    udm = read_raster(udm_path)
    return float((udm[0] != 0).mean())


def _scan_image(aoi_dir: Path, img: Path, year: int, month: int, cloud_stats: bool) -> dict:
    """One row of the scan table: the image, its sibling files, its header, label count and cloud share."""
    stem = img.stem
    row = {
        "aoi": aoi_dir.name,
        "year": year,
        "month": month,
        "month_index": year * 12 + month - 1,
        "date": pd.Timestamp(year=year, month=month, day=1),
        "image_path": str(img),
    }
    masked = aoi_dir / "images_masked" / img.name
    udm = aoi_dir / "UDM_masks" / f"{stem}_UDM.tif"
    row["image_masked_path"] = str(masked) if masked.is_file() else ""
    row["udm_path"] = str(udm) if udm.is_file() else ""
    for folder, col in LABEL_DIRS.items():
        p = aoi_dir / folder / f"{stem}_Buildings.geojson"
        row[col] = str(p) if p.is_file() else ""
    row.update(_raster_header(img))
    label_file = row["labels_match_pix_path"] or row["labels_match_path"] or row["labels_path"]
    row["has_labels"] = bool(label_file)
    row["building_count"] = _count_features(Path(label_file)) if label_file else np.nan
    row["cloud_fraction"] = _cloud_fraction(udm) if (cloud_stats and row["udm_path"]) else np.nan
    return row


def scan_sn7(root: str | Path, on_error: str = "raise", cloud_stats: bool = True, progress: bool = True) -> pd.DataFrame:
    """Scan a SpaceNet 7 tree into a table with one row per (AOI, month).

    Columns: ``aoi, year, month, month_index, date, image_path, image_masked_path,
    udm_path, labels_path, labels_match_path, labels_match_pix_path`` (``""`` when
    absent), ``width, height, bands, dtype, crs, georeferenced, has_labels,
    building_count`` (NaN without labels) and ``cloud_fraction`` (share of UDM
    pixels flagged; NaN without UDM).

    Missing optional folders are recorded in ``df.attrs['scan_report']``, not
    fatal; so are AOIs whose ``images/`` holds no usable image (``empty_aois``)
    and files that are not regular files (a FIFO named ``.tif``: skipped, never
    opened). An unreadable image or label file raises :class:`SN7DataError`
    naming it (``on_error="raise"``) or is skipped with a warning
    (``on_error="skip"``).
    """
    from tqdm.auto import tqdm

    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    aoi_dirs = find_aoi_dirs(root)
    report = ScanReport(root=str(root), n_aois=len(aoi_dirs))
    rows = []
    for aoi_dir in tqdm(aoi_dirs, desc="scan SpaceNet 7", unit="AOI", disable=not progress):
        aoi = aoi_dir.name
        for folder in OPTIONAL_DIRS:
            if not (aoi_dir / folder).is_dir():
                report.missing_folders.setdefault(folder, []).append(aoi)
        n_rows = len(rows)
        for img in sorted((aoi_dir / "images").glob("*.tif")):
            if not img.is_file():  # a FIFO, socket or dangling link would block or fail in GDAL
                warnings.warn(f"Skipping {img}: not a regular file", stacklevel=2)
                report.skipped_files.append(str(img))
                continue
            m = IMAGE_RE.match(img.name)
            if not m:
                warnings.warn(f"Ignoring {img}: not named global_monthly_YYYY_MM_mosaic_<AOI>.tif", stacklevel=2)
                continue
            try:
                rows.append(_scan_image(aoi_dir, img, int(m.group(1)), int(m.group(2)), cloud_stats))
            except SN7DataError as exc:
                if on_error == "raise":
                    raise
                warnings.warn(f"Skipping {img.name}: {exc}", stacklevel=2)
                report.skipped_files.append(str(img))
        if len(rows) == n_rows:
            report.empty_aois.append(aoi)
            warnings.warn(f"AOI {aoi}: no usable image in {aoi_dir / 'images'}; left out (see the scan report)", stacklevel=2)
    columns = [
        "aoi", "year", "month", "month_index", "date", "image_path", "image_masked_path", "udm_path",
        "labels_path", "labels_match_path", "labels_match_pix_path", "width", "height", "bands", "dtype", "crs",
        "georeferenced", "has_labels", "building_count", "cloud_fraction",
    ]
    df = pd.DataFrame(rows, columns=columns).sort_values(["aoi", "month_index"]).reset_index(drop=True)
    if df.empty:
        raise SN7DataError(f"No readable images found under {root}.")
    df.attrs["scan_report"] = report
    return df


def save_metadata(df: pd.DataFrame, path: str | Path) -> Path:
    """Save the scan table as Parquet (``.parquet``) or CSV (any other suffix), atomically."""
    import os

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    plain = df.copy()
    plain.attrs = {}
    if path.suffix == ".parquet":
        plain.to_parquet(tmp, index=False)
    else:
        plain.to_csv(tmp, index=False)
    os.replace(tmp, path)
    return path


def load_metadata(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run notebook 01 (make data) to scan the SpaceNet 7 tree first.")
    df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, keep_default_na=False, na_values=[""])
    for col in ("image_masked_path", "udm_path", *LABEL_DIRS.values(), "crs"):
        if col in df:
            df[col] = df[col].fillna("").astype(str)
    return df
