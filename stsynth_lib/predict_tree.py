"""Apply a trained run to every (past, future) month pair of a SpaceNet 7 tree: the work behind
``python -m stsynth_lib.predict`` (see :func:`stsynth_lib.predict.main`).

``<out>/``::

    <aoi>/pred_<YYYY_MM future>_from_<YYYY_MM past>.tif   uint8, the model's bands, the past image's CRS and transform
    index.csv      pair_id, aoi, past_date, future_date, gap_months, past_image, future_image, prediction,
                   used_mask, model, run   (dates "YYYY-MM"; prediction relative to <out>; used_mask true/false)
    predict.yaml   the options, run, data, n_pairs, start/end time, git commit

Pairs come from :func:`stsynth_lib.data.build.build_pairs` (the dataset builder's pair logic) on the months the
tree has. Footprint masks are rasterised onto the past image's grid by
:func:`stsynth_lib.data.rasterize.footprint_mask`. A rerun into the same folder skips pairs whose GeoTIFF exists.
"""

from __future__ import annotations

import datetime as dt
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from stsynth_lib.data.errors import SN7DataError
from stsynth_lib.runs import atomic_write_text, save_yaml
from stsynth_lib.scene import predict_scene, resolve_overlap

INDEX_COLUMNS = ["pair_id", "aoi", "past_date", "future_date", "gap_months", "past_image", "future_image",
                 "prediction", "used_mask", "model", "run"]
PAIR_SEED_STRIDE = 10_000  # tile k of pair p is sampled with seed + PAIR_SEED_STRIDE * p + k (ControlNet)


@dataclass
class TreeOptions:
    """What to predict and how (the CLI's options, recorded in ``predict.yaml``)."""

    min_gap_months: int = 1
    max_gap_months: int = 12
    aois: Sequence[str] | None = None
    max_pairs: int | None = None
    seed: int = 0
    batch_size: int = 16
    overlap_px: int | None = None  # None: a quarter tile
    overwrite: bool = False
    progress: bool = True


def run_bands(run_dir: str | Path, n_bands: int) -> list[int]:
    """The 1-based image bands the run was trained on: its dataset's ``bands`` (``dataset.yaml``), else 1..n."""
    params_path = Path(run_dir) / "params.yaml"
    params = yaml.safe_load(params_path.read_text()) if params_path.is_file() else {}
    dataset_yaml = Path(str(params.get("dataset_dir", ""))) / "dataset.yaml"
    if params.get("dataset_dir") and dataset_yaml.is_file():
        bands = yaml.safe_load(dataset_yaml.read_text()).get("bands")
        if bands and len(bands) == n_bands:
            return [int(b) for b in bands]
    return list(range(1, n_bands + 1))


def month_str(row: pd.Series) -> str:
    return f"{int(row['year'])}-{int(row['month']):02d}"


def scan_tree(data: str | Path) -> pd.DataFrame:
    """The scanner's table of ``data`` (one row per image; missing/empty/corrupt files stop with their name)."""
    from stsynth_lib.data.sn7 import scan_sn7

    return scan_sn7(data, on_error="raise", cloud_stats=False, progress=False)


def plan_pairs(meta: pd.DataFrame, options: TreeOptions) -> pd.DataFrame:
    """The pairs to predict, one row each: ``pair_id, aoi, past_index, future_index, gap_months, past_date,
    future_date`` (indexes are row labels of ``meta``); ``--aoi`` and a seeded ``--max-pairs`` subset applied."""
    from stsynth_lib.data.build import build_pairs

    if options.aois:
        unknown = sorted(set(options.aois) - set(meta["aoi"]))
        if unknown:
            raise SN7DataError(f"--aoi {', '.join(unknown)}: not in the tree (it has {', '.join(sorted(meta['aoi'].unique()))}). "
                               "Check the AOI names (folder names under train/) or drop --aoi.")
        meta = meta[meta["aoi"].isin(options.aois)]
    pairs = build_pairs(meta, options.min_gap_months, options.max_gap_months)
    months = meta.groupby("aoi")["month_index"].nunique()
    without = sorted(set(months.index) - set(pairs["aoi"]))
    if pairs.empty or (options.aois and without):
        counts = ", ".join(f"{a} ({months[a]} month{'s' if months[a] != 1 else ''})" for a in without)
        raise SN7DataError(f"no (past, future) pair {options.min_gap_months}-{options.max_gap_months} months apart in "
                           f"{counts}: an area needs images of at least 2 months that far apart. Add images to its "
                           "images/ folder, widen --min-gap-months/--max-gap-months or leave the area out (--aoi).")
    if options.max_pairs is not None and options.max_pairs < len(pairs):
        keep = np.random.default_rng(options.seed).choice(len(pairs), options.max_pairs, replace=False)
        pairs = pairs.iloc[np.sort(keep)]
    pairs = pairs.reset_index(drop=True)
    pairs.insert(0, "pair_id", np.arange(len(pairs)))
    pairs["past_date"] = [month_str(meta.loc[i]) for i in pairs["past_index"]]
    pairs["future_date"] = [month_str(meta.loc[i]) for i in pairs["future_index"]]
    pairs.attrs["areas_without_pairs"] = without
    return pairs


def expected_label_file(row: pd.Series) -> Path:
    """Where the tree would hold the footprints of this image (``labels_match_pix/<stem>_Buildings.geojson``)."""
    image = Path(row["image_path"])
    return image.parent.parent / "labels_match_pix" / f"{image.stem}_Buildings.geojson"


def check_labels(meta: pd.DataFrame, pairs: pd.DataFrame, needs_future: bool, needs_past: bool) -> None:
    """Refuse, before any prediction, a mask-guided model on a pair whose month has no building labels."""
    for column, needed, what in (("future_index", needs_future, "future"), ("past_index", needs_past, "past")):
        if not needed:
            continue
        lacking = [meta.loc[i] for i in pairs[column].unique() if not meta.loc[i, "has_labels"]]
        if lacking:
            row = lacking[0]
            raise SN7DataError(
                f"this run was trained with the {what} building mask as guidance, but {row['aoi']} {month_str(row)} "
                f"has no building labels (expected {expected_label_file(row)}; {len(lacking)} month(s) lack labels). "
                "Use a run trained without masks (use_mask: false), supply the labels, or leave those areas out (--aoi).")


def read_scene(row: pd.Series, bands: Sequence[int]) -> tuple[np.ndarray, Any, str]:
    """An image of the tree as the model sees it: uint8 ``(C, H, W)`` of ``bands``, its transform and CRS."""
    from stsynth_lib.data.io import read_raster, to_uint8_image

    raw, profile = read_raster(row["image_path"], bands, with_profile=True)
    crs = profile["crs"].to_string() if profile["crs"] else ""
    return to_uint8_image(raw, nodata=profile["nodata"]), profile["transform"], crs


def scene_footprints(row: pd.Series, shape: tuple[int, int], transform: Any, crs: str) -> np.ndarray:
    """The 0/1 footprints of ``row``'s month on another image's grid (the project's rasteriser, source ``auto``)."""
    from stsynth_lib.data.rasterize import footprint_mask

    return footprint_mask(row.to_dict(), shape, transform, crs or None)


def prediction_name(pair: pd.Series) -> str:
    """``<aoi>/pred_<YYYY_MM future>_from_<YYYY_MM past>.tif`` (relative to the output folder)."""
    return f"{pair['aoi']}/pred_{pair['future_date'].replace('-', '_')}_from_{pair['past_date'].replace('-', '_')}.tif"


def index_table(meta: pd.DataFrame, pairs: pd.DataFrame, used_mask: bool, model: str, run_dir: Path) -> pd.DataFrame:
    """``index.csv``'s rows (:data:`INDEX_COLUMNS`): absolute source paths, prediction relative to the output."""
    return pd.DataFrame({
        "pair_id": pairs["pair_id"], "aoi": pairs["aoi"], "past_date": pairs["past_date"],
        "future_date": pairs["future_date"], "gap_months": pairs["gap_months"].astype(int),
        "past_image": [str(Path(meta.loc[i, "image_path"]).resolve()) for i in pairs["past_index"]],
        "future_image": [str(Path(meta.loc[i, "image_path"]).resolve()) for i in pairs["future_index"]],
        "prediction": [prediction_name(p) for _, p in pairs.iterrows()],
        "used_mask": "true" if used_mask else "false", "model": model, "run": str(run_dir),
    }, columns=INDEX_COLUMNS)


def git_commit() -> str | None:
    """The commit of the stsynth checkout this code runs from, or None (not a git checkout, no git)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], check=False, cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip() if out.returncode == 0 else ""
    return commit or None


def predict_pair(predictor, meta: pd.DataFrame, pair: pd.Series, bands: Sequence[int], tile_px: int,
                 options: TreeOptions) -> tuple[np.ndarray, Any, str]:
    """One pair's whole-image prediction with the past image's transform and CRS."""
    past_row, future_row = meta.loc[pair["past_index"]], meta.loc[pair["future_index"]]
    past, transform, crs = read_scene(past_row, bands)
    shape = past.shape[1:]
    if min(shape) < tile_px:
        raise SN7DataError(f"{past_row['image_path']} is {shape[0]} x {shape[1]} px, smaller than the {tile_px} px tiles "
                           "the run was trained on. Use a run trained on tiles that fit the image, or leave the area "
                           "out (--aoi).")
    future_mask = scene_footprints(future_row, shape, transform, crs) if predictor.uses_mask else None
    past_mask = scene_footprints(past_row, shape, transform, crs) if getattr(predictor, "uses_past_mask", False) else None
    image = predict_scene(predictor, past, pair["past_date"], pair["future_date"], tile_px, future_mask=future_mask,
                          past_mask=past_mask, overlap_px=options.overlap_px, batch_size=options.batch_size,
                          seed=options.seed + PAIR_SEED_STRIDE * int(pair["pair_id"]), aoi=str(pair["aoi"]))
    return image, transform, crs


def predict_tree(predictor, run_dir: str | Path, data: str | Path, out: str | Path, tile_px: int, bands: Sequence[int],
                 options: TreeOptions, settings: dict[str, Any] | None = None, log=print) -> pd.DataFrame:
    """Predict every planned pair of the tree ``data`` into ``out`` (see the module doc); returns the index table.
    ``settings`` (how the model was loaded: device, weights, sampling steps) go into ``predict.yaml`` as they are."""
    from tqdm.auto import tqdm

    from stsynth_lib.predictions import write_geotiff

    if getattr(predictor, "needs_context", False):
        raise ValueError(f"{run_dir} was trained with context frames (context_offsets_months="
                         f"{list(predictor.context_offsets)}): whole-tree prediction passes only the past image; "
                         "predict its tiles with Predictor.predict(..., context={offset: image})")
    started = dt.datetime.now().astimezone()
    run_dir, out = Path(run_dir).resolve(), Path(out)
    meta = scan_tree(data)
    pairs = plan_pairs(meta, options)
    check_labels(meta, pairs, predictor.uses_mask, getattr(predictor, "uses_past_mask", False))
    if pairs.attrs["areas_without_pairs"]:
        log(f"no pairs in {len(pairs.attrs['areas_without_pairs'])} area(s) with too few months: "
            + ", ".join(pairs.attrs["areas_without_pairs"]))
    index = index_table(meta, pairs, predictor.uses_mask, predictor.family, run_dir)
    done = [(out / p).is_file() and not options.overwrite for p in index["prediction"]]
    if any(done):
        log(f"resuming: {sum(done)} of {len(pairs)} pairs already have their GeoTIFF in {out}; skipped "
            "(--overwrite predicts them again)")
    log(f"predicting {len(pairs) - sum(done)} pairs of {data} with {predictor.family} ({run_dir}), "
        f"{tile_px} px tiles, bands {list(bands)}")
    for (_, pair), skip, name in tqdm(list(zip(pairs.iterrows(), done, index["prediction"])), desc="predict",
                                      unit="pair", disable=not options.progress):
        if not skip:
            image, transform, crs = predict_pair(predictor, meta, pair, bands, tile_px, options)
            write_geotiff(out / name, image, transform, crs or None)
    atomic_write_text(out / "index.csv", index.to_csv(index=False))
    save_yaml({"run": str(run_dir), "data": str(Path(data).resolve()), "model": predictor.family,
               "tile_size_px": tile_px, "tile_overlap_px": resolve_overlap(tile_px, options.overlap_px),
               "bands": list(bands), "options": {**asdict(options), **(settings or {})}, "n_pairs": len(pairs),
               "n_skipped_existing": int(sum(done)), "start_time": started.isoformat(timespec="seconds"),
               "end_time": dt.datetime.now().astimezone().isoformat(timespec="seconds"), "git_commit": git_commit()},
              out / "predict.yaml")
    log(f"wrote {len(pairs)} predictions and {out / 'index.csv'}")
    return index


__all__ = [
    "INDEX_COLUMNS",
    "TreeOptions",
    "check_labels",
    "plan_pairs",
    "predict_tree",
    "prediction_name",
    "run_bands",
    "scan_tree",
]
