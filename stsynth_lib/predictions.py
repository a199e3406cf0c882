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


def load_predictions(out_dir: str | os.PathLike) -> dict[int, np.ndarray]:
    """Read ``{pair_id: (C, H, W) uint8}`` from a predictions folder (last entry wins on duplicates)."""
    import rasterio

    out_dir = Path(out_dir)
    index = out_dir / "index.csv"
    if not index.is_file():
        raise FileNotFoundError(f"{index} not found: no predictions were saved in {out_dir}. Run the model's notebook first.")
    result: dict[int, np.ndarray] = {}
    import warnings

    with open(index, newline="") as fh:
        for row in csv.DictReader(fh):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
                with rasterio.open(out_dir / row["tif"]) as src:
                    result[int(row["pair_id"])] = src.read()
    return result


def clear_predictions(out_dir: str | os.PathLike) -> None:
    """Remove a predictions folder's index and files so a fresh run does not mix with an old one."""
    out_dir = Path(out_dir)
    if out_dir.is_dir():
        for p in out_dir.iterdir():
            if p.suffix in {".tif", ".png"} or p.name == "index.csv":
                p.unlink()
