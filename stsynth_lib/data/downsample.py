"""Downsample a full SpaceNet 7 download into the 128 px tree of the ``sn7_real_128`` profile.

    python -m stsynth_lib.data.downsample ~/SN7_buildings_train data/sn7_real_128 --size-px 128

Writes ``<out>/train/<AOI>/images/global_monthly_YYYY_MM_mosaic_<AOI>.tif``:
RGB (bands 1-3), uint8, area-averaged to ``size_px``, LZW -- the layout of
``../shared/data/sn7_real_128``. By default the geotransform is rescaled and
kept (the shared sample has none; keeping it costs nothing and lets outputs be
georeferenced); ``--drop-georef`` reproduces the shared files exactly.
``--with-labels`` also copies ``labels`` and ``labels_match`` (map coordinates
stay valid at any resolution). Existing outputs are skipped, so an interrupted
run resumes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path


def downsample_sn7(src_root: str | Path, out_root: str | Path, size_px: int = 128, drop_georef: bool = False,
                   with_labels: bool = False, progress: bool = True) -> int:
    """Downsample every image of a SpaceNet 7 tree; return the number of images written."""
    import rasterio
    from affine import Affine
    from tqdm.auto import tqdm

    from stsynth_lib.data.build import _resample, compose
    from stsynth_lib.data.io import read_raster, to_uint8_image
    from stsynth_lib.data.sn7 import scan_sn7

    meta = scan_sn7(src_root, cloud_stats=False, progress=progress)
    out_root = Path(out_root)
    written = 0
    for _, row in tqdm(meta.iterrows(), total=len(meta), desc=f"downsample to {size_px} px", disable=not progress):
        src = Path(row["image_path"])
        dst = out_root / "train" / row["aoi"] / "images" / src.name
        if dst.is_file():
            continue
        arr, prof = read_raster(src, bands=[1, 2, 3], with_profile=True)
        small = _resample(to_uint8_image(arr), size_px, nearest=False)
        kw = {}
        if not drop_georef and prof["crs"] is not None:
            h, w = arr.shape[1:]
            kw = {"crs": prof["crs"], "transform": compose(prof["transform"], Affine.scale(w / size_px, h / size_px))}
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.tmp")
        with rasterio.open(tmp, "w", driver="GTiff", width=size_px, height=size_px, count=3, dtype="uint8",
                           compress="lzw", **kw) as out:
            out.write(small)
        os.replace(tmp, dst)
        if with_labels:
            for col, folder in (("labels_path", "labels"), ("labels_match_path", "labels_match")):
                if row[col]:
                    target = out_root / "train" / row["aoi"] / folder / Path(row[col]).name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(row[col], target)
        written += 1
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src_root", help="your SpaceNet 7 download (the folder holding train/, e.g. SN7_buildings_train)")
    ap.add_argument("out_root", help="where to write the 128 px tree (e.g. data/sn7_real_128)")
    ap.add_argument("--size-px", type=int, default=128)
    ap.add_argument("--drop-georef", action="store_true", help="write no CRS/transform, like the shared sample")
    ap.add_argument("--with-labels", action="store_true", help="also copy labels/ and labels_match/")
    args = ap.parse_args(argv)
    n = downsample_sn7(args.src_root, args.out_root, args.size_px, args.drop_georef, args.with_labels)
    print(f"wrote {n} images under {args.out_root}/train")
    return 0


if __name__ == "__main__":
    sys.exit(main())
