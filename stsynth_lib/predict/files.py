"""One on-disk format for generated images, shared by every model and read by the evaluation.

``<run_dir>/predictions/<split>/``::

    index.csv                 pair_id, aoi, tif, png
    <pair_id:06d>.tif         GeoTIFF, uint8, C bands, the input tile's CRS and geotransform
    <pair_id:06d>.png         RGB preview

A GIS user can drop the ``.tif`` files onto the source mosaic: they carry the
tile's georeferencing. Tiles from a source without a CRS (the 128 px real
sample) are written without one.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from stsynth_lib.data.dataset import to_uint8


def write_geotiff(path: str | os.PathLike, image_chw_uint8: np.ndarray, transform: Sequence[float] | None, crs: str | None) -> Path:
    """Write a (C, H, W) uint8 array as a GeoTIFF, atomically (temp file then rename)."""
    import rasterio
    from affine import Affine

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(image_chw_uint8)
    if arr.ndim == 2:
        arr = arr[None]
    profile = {
        "driver": "GTiff",
        "height": arr.shape[1],
        "width": arr.shape[2],
        "count": arr.shape[0],
        "dtype": "uint8",
        "compress": "deflate",
    }
    if transform is not None:
        profile["transform"] = Affine(*[float(v) for v in list(transform)[:6]])
    if crs:
        profile["crs"] = crs
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(arr)
    os.replace(tmp, path)
    return path


def save_predictions(
    out_dir: str | os.PathLike,
    images: torch.Tensor | np.ndarray,
    pair_ids: Iterable[int],
    aois: Iterable[str],
    transforms: torch.Tensor | np.ndarray,
    crss: Iterable[str],
    write_png: bool = True,
) -> list[Path]:
    """Save a batch of generated images (``(B, C, H, W)`` in [-1, 1]) as GeoTIFF (+ PNG) and index them."""
    from PIL import Image

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    imgs = to_uint8(images)
    transforms = np.asarray(transforms.cpu() if isinstance(transforms, torch.Tensor) else transforms, dtype=np.float64)
    index = out_dir / "index.csv"
    new = not index.exists()
    written = []
    with open(index, "a", newline="") as fh:
        w = csv.writer(fh)
        if new:
            w.writerow(["pair_id", "aoi", "tif", "png"])
        for img, pid, aoi, tf, crs in zip(imgs, pair_ids, aois, transforms, crss):
            pid = int(pid)
            tif = write_geotiff(out_dir / f"{pid:06d}.tif", img, tf, crs)
            png = ""
            if write_png:
                png_path = out_dir / f"{pid:06d}.png"
                Image.fromarray(img[:3].transpose(1, 2, 0)).save(png_path)
                png = png_path.name
            w.writerow([pid, aoi, tif.name, png])
            written.append(tif)
    return written


class PredictionFileError(ValueError):
    """A predictions folder whose index or images cannot be scored; the message names the file and what was expected."""


INDEX_COLUMNS = ("pair_id", "aoi", "tif", "png")


def read_prediction_index(out_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``[(pair_id, tif path)]`` from ``<out_dir>/index.csv``, checked: the header and every pair id."""
    out_dir = Path(out_dir)
    index = out_dir / "index.csv"
    if not index.is_file():
        raise FileNotFoundError(f"{index} not found: no predictions were saved in {out_dir}. Run the model's notebook first.")
    expected = ",".join(INDEX_COLUMNS)
    with open(index, newline="", errors="replace") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in ("pair_id", "tif") if c not in (reader.fieldnames or [])]
        if missing:
            raise PredictionFileError(
                f"{index}: the header is {reader.fieldnames}, columns {missing} are missing. Expected the header "
                f"'{expected}' that stsynth_lib.predict.files.save_predictions writes; re-run the model's predictions."
            )
        rows = []
        for n, row in enumerate(reader, start=2):
            try:
                pid = int(row["pair_id"])
            except (TypeError, ValueError):
                raise PredictionFileError(
                    f"{index}, line {n}: pair_id {row['pair_id']!r} is not an integer (expected '{expected}' rows)."
                ) from None
            if not row["tif"]:
                raise PredictionFileError(f"{index}, line {n}: no tif file name for pair {pid}.")
            rows.append((pid, out_dir / row["tif"]))
    return rows


def read_prediction_tif(path: Path) -> np.ndarray:
    """One prediction as (C, H, W) uint8; anything but a readable uint8 GeoTIFF is refused (no silent cast)."""
    import warnings

    import rasterio

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                arr = src.read()
                dtype = src.dtypes[0]
    except rasterio.errors.RasterioError as exc:
        raise PredictionFileError(f"Cannot read prediction {path}: {exc}. Re-run the model's predictions.") from exc
    if dtype != "uint8":
        finite = arr[np.isfinite(arr)] if arr.dtype.kind == "f" else arr
        span = f"values {finite.min():.4g}..{finite.max():.4g}" if finite.size else "no finite value"
        nan = f", {int(arr.size - finite.size)} NaN/inf" if finite.size != arr.size else ""
        raise PredictionFileError(
            f"Prediction {path} is {dtype} ({span}{nan}); expected uint8 in [0, 255], as "
            "stsynth_lib.predict.files.save_predictions writes from a [-1, 1] model output. It is not converted "
            "(a [0, 1] or [-1, 1] float cast to uint8 scores as a black image): save it with save_predictions, "
            "or convert it yourself, e.g. np.round(x * 255) for [0, 1] or np.round((x + 1) * 127.5) for [-1, 1]."
        )
    return arr


def load_predictions(out_dir: str | os.PathLike, on_missing: str = "raise",
                     missing: list[str] | None = None) -> dict[int, np.ndarray]:
    """Read ``{pair_id: (C, H, W) uint8}`` from a predictions folder (last entry wins on duplicates).

    A malformed ``index.csv`` or a prediction that is not a readable uint8
    GeoTIFF raises :class:`PredictionFileError` naming the file. A listed file
    that does not exist raises too (``on_missing="raise"``) or is left out
    (``"skip"``) with its path appended to ``missing``.
    """
    if on_missing not in ("raise", "skip"):
        raise ValueError(f"on_missing must be 'raise' or 'skip', got {on_missing!r}")
    result: dict[int, np.ndarray] = {}
    for pid, tif in read_prediction_index(out_dir):
        if not tif.is_file():
            if on_missing == "raise":
                raise PredictionFileError(
                    f"{tif} is listed in {Path(out_dir) / 'index.csv'} (pair {pid}) but does not exist. "
                    "Re-run the model's predictions, or remove the line."
                )
            if missing is not None:
                missing.append(str(tif))
            continue
        result[pid] = read_prediction_tif(tif)
    return result


def clear_predictions(out_dir: str | os.PathLike) -> None:
    """Remove a predictions folder's index and files so a fresh run does not mix with an old one."""
    out_dir = Path(out_dir)
    if out_dir.is_dir():
        for p in out_dir.iterdir():
            if p.suffix in {".tif", ".png"} or p.name == "index.csv":
                p.unlink()
