"""Raster reading with errors that name the file and the fix, and pixel validity."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from stsynth_lib.data.errors import SN7DataError


def read_raster(path: str | Path, bands: Sequence[int] | None = None, with_profile: bool = False):
    """Read a GeoTIFF as a (C, H, W) array (all bands, or the 1-based ``bands``).

    Raises :class:`stsynth_lib.data.errors.SN7DataError` naming the file when it is
    missing, corrupt or lacks a requested band. 16-bit and multi-band files are
    returned as stored (no silent scaling); see :func:`to_uint8_image`.
    """
    import rasterio

    path = Path(path)
    if not path.is_file():  # also refuses FIFOs and other non-regular files, which would block GDAL
        what = "is not a regular file" if path.exists() else "does not exist"
        raise SN7DataError(f"{path} {what}. Rescan the SpaceNet 7 tree (notebook 01) or fix data_root.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                if bands is not None:
                    missing = [b for b in bands if b < 1 or b > src.count]
                    if missing:
                        raise SN7DataError(
                            f"{path} has {src.count} bands; bands {missing} were asked for. "
                            f"Set bands to a subset of 1..{src.count}."
                        )
                arr = src.read(list(bands) if bands is not None else None)
                profile = {"transform": src.transform, "crs": src.crs, "count": src.count, "dtype": src.dtypes[0],
                           "nodata": src.nodata}
    except rasterio.errors.RasterioError as exc:
        raise SN7DataError(f"Cannot read GeoTIFF {path}: {exc}. The file is corrupt or truncated; re-download it.") from exc
    return (arr, profile) if with_profile else arr


def _nodata_pixels(colour: np.ndarray, nodata: float | None) -> np.ndarray:
    """(H, W) True where every colour band holds the nodata value (0 when the file declares none) or is not finite."""
    bad = ~np.isfinite(colour).all(axis=0) if colour.dtype.kind == "f" else np.zeros(colour.shape[1:], bool)
    if nodata is not None and np.isnan(nodata):
        return bad | np.isnan(colour).all(axis=0)
    return bad | (colour == (0 if nodata is None else nodata)).all(axis=0)


def to_uint8_image(arr: np.ndarray, dtype_hint: str | None = None, nodata: float | None = None) -> np.ndarray:
    """Bring an image to uint8 [0, 255]: uint8 unchanged, 16-bit (or float) scaled by a 2-98 % stretch per band.

    SpaceNet 7 mosaics are uint8; other sources (16-bit Planet or Sentinel
    products) are stretched per band, the percentiles taken over the pixels
    that are not nodata (``nodata``, else 0), so that the rest of the pipeline
    sees the same range. Valid pixels map to 1..255 and nodata pixels to 0, so
    that a uint8 copy (``downsample``) keeps SpaceNet 7's all-zero nodata
    convention; validity still comes from the stored values
    (:func:`validity_mask`), not from this output. Returns a new array.
    """
    if arr.dtype == np.uint8:
        return arr.copy()
    out = np.empty(arr.shape, np.uint8)
    data = ~_nodata_pixels(arr, nodata)
    for b in range(arr.shape[0]):
        band = arr[b].astype(np.float64)
        finite = band[np.isfinite(band) & data]
        lo, hi = (np.percentile(finite, [2, 98]) if finite.size else (0.0, 1.0))
        out[b] = np.clip(np.round(np.nan_to_num((band - lo) / max(hi - lo, 1e-9) * 255)), 1, 255).astype(np.uint8)
    out[:, ~data] = 0  # nodata stays 0, valid pixels are 1..255: a uint8 copy keeps the all-zero nodata convention
    return out


def validity_mask(image: np.ndarray, udm: np.ndarray | None = None, alpha_band: int | None = None,
                  nodata: float | None = None, source: str = "") -> np.ndarray:
    """1 where a pixel is usable: not flagged in the UDM, not transparent in the alpha band, not nodata.

    ``image`` is the full (C, H, W) image AS STORED (not stretched: a 16-bit
    image's stretch maps dark pixels to 0); ``alpha_band`` is the 0-based
    index of an alpha band (SpaceNet 7's 4th band) or None. Nodata is where
    every colour band equals the file's ``nodata`` value, or 0 when the file
    declares none (SpaceNet 7's ``images_masked`` convention), or is NaN.
    ``source`` names the image in errors.
    """
    valid = np.ones(image.shape[-2:], bool)
    if alpha_band is not None and image.shape[0] > alpha_band:
        valid &= image[alpha_band] != 0
    colour = image[: alpha_band if alpha_band is not None else image.shape[0]]
    valid &= ~_nodata_pixels(colour, nodata)
    if udm is not None:
        u = udm[0] if udm.ndim == 3 else udm
        if u.shape != valid.shape:
            raise SN7DataError(
                f"UDM mask of {source or 'the image'} is {u.shape[0]}x{u.shape[1]} px, the image is "
                f"{valid.shape[0]}x{valid.shape[1]} px: the UDM belongs to another image or was resampled. "
                "Replace it with the UDM of this image or delete it (then no pixel is flagged)."
            )
        valid &= u == 0
    return valid.astype(np.uint8)
