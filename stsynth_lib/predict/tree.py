"""Apply a trained run to every (past, future) month pair of a SpaceNet 7 tree: the work behind
``python -m stsynth_lib.predict`` (see :func:`stsynth_lib.predict.cli.main`).

``<out>/``::

    <aoi>/pred_<YYYY_MM future>_from_<YYYY_MM past>.tif   uint8, the model's bands, the past image's CRS and transform
    index.csv      pair_id, aoi, past_date, future_date, gap_months, past_image, future_image, prediction,
                   used_mask, model, run   (dates "YYYY-MM"; prediction relative to <out>; used_mask true/false)
    predict.yaml   the options, run, data, n_pairs, start/end time, git commit

Pairs come from :func:`stsynth_lib.data.build.build_pairs` (the dataset builder's pair logic) on the months the
tree has. Footprint masks are rasterised onto the past image's grid by
:func:`stsynth_lib.data.rasterize.footprint_mask`. A model trained with context frames (``context_offsets_months``)
reads them from the tree as the dataset does (:func:`stsynth_lib.data.dataset.context_lookup`): offset ``o`` is the
month ``t0 + o``, ``same_month_last_year[+-k]`` the month ``t1 - 12 [+- k]``; a month the tree lacks, or one after
``t0``, is absent. A rerun into the same folder skips pairs whose GeoTIFF exists.

Speed: images and rasterised footprints are cached (each month serves up to 24 pairs), the next pairs' inputs are
read in a background thread and the finished GeoTIFFs written in another while the model computes, and
``predict.yaml`` records the seconds per pair (``benchmarks/bench_scene.py`` measures it against the plain loop).
"""

from __future__ import annotations

import datetime as dt
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml

from stsynth_lib.book.publish.stamp import head_commit
from stsynth_lib.data.errors import SN7DataError
from stsynth_lib.predict.scene import predict_scene, resolve_overlap
from stsynth_lib.runs import atomic_write_text, save_yaml

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


class SceneCache:
    """The decoded images and rasterised footprints of the tree's months, least recently used dropped past
    ``max_items`` (a 1024 px RGB month is 3 MB). Used from one thread at a time."""

    def __init__(self, bands: Sequence[int], max_items: int = 64):
        self.bands, self.max_items = list(bands), int(max_items)
        self._items: OrderedDict = OrderedDict()

    def _get(self, key, make):
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = self._items[key] = make()
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)
        return value

    def image(self, row: pd.Series) -> tuple[np.ndarray, Any, str]:
        return self._get(("image", row["image_path"]), lambda: read_scene(row, self.bands))

    def footprints(self, row: pd.Series, shape: tuple[int, int], transform: Any, crs: str) -> np.ndarray:
        key = ("mask", row["image_path"], tuple(shape), tuple(transform)[:6] if transform is not None else None, crs)
        return self._get(key, lambda: scene_footprints(row, shape, transform, crs))


def context_months(meta: pd.DataFrame, pair: pd.Series, offsets: Sequence[int | str]) -> dict[int | str, Any]:
    """``{offset: meta row label}`` of the pair's context frames that the tree has (offset 0, the past image, and
    months after ``t0`` left out), as :func:`stsynth_lib.data.dataset.context_lookup` picks them in training."""
    from stsynth_lib.data.dataset import last_year_shift

    t0 = int(meta.loc[pair["past_index"], "month_index"])
    t1 = int(meta.loc[pair["future_index"], "month_index"])
    months = meta[meta["aoi"] == pair["aoi"]]
    by_month = dict(zip(months["month_index"].astype(int), months.index))
    out = {}
    for o in offsets:
        if o == 0:
            continue
        shift = last_year_shift(o)
        month = t1 - 12 + shift if shift is not None else t0 + int(o)
        if month <= t0 and month in by_month:
            out[o] = by_month[month]
    return out


def pair_inputs(predictor, meta: pd.DataFrame, pair: pd.Series, tile_px: int, cache: SceneCache) -> dict[str, Any]:
    """What :func:`stsynth_lib.predict.scene.predict_scene` needs for one pair (images, masks and context frames
    that the model reads), with the past image's transform and CRS."""
    past_row, future_row = meta.loc[pair["past_index"]], meta.loc[pair["future_index"]]
    past, transform, crs = cache.image(past_row)
    shape = past.shape[1:]
    if min(shape) < tile_px:
        raise SN7DataError(f"{past_row['image_path']} is {shape[0]} x {shape[1]} px, smaller than the {tile_px} px tiles "
                           "the run was trained on. Use a run trained on tiles that fit the image, or leave the area "
                           "out (--aoi).")
    inputs = {"past": past, "transform": transform, "crs": crs,
              "future_mask": cache.footprints(future_row, shape, transform, crs) if predictor.uses_mask else None,
              "past_mask": (cache.footprints(past_row, shape, transform, crs)
                            if getattr(predictor, "uses_past_mask", False) else None), "context": None}
    if getattr(predictor, "needs_context", False):
        context = {}
        for o, label in context_months(meta, pair, predictor.context_offsets).items():
            img = cache.image(meta.loc[label])[0]
            if img.shape != past.shape:
                raise SN7DataError(f"{meta.loc[label, 'image_path']} is {img.shape[1]} x {img.shape[2]} px, but the past "
                                   f"image {past_row['image_path']} is {shape[0]} x {shape[1]}: the months of an area must "
                                   "share one grid to serve as context frames")
            context[o] = img
        inputs["context"] = context
    return inputs


def predict_pair(predictor, pair: pd.Series, inputs: dict[str, Any], tile_px: int, options: TreeOptions) -> np.ndarray:
    """One pair's whole-image prediction from :func:`pair_inputs`."""
    return predict_scene(predictor, inputs["past"], pair["past_date"], pair["future_date"], tile_px,
                         future_mask=inputs["future_mask"], past_mask=inputs["past_mask"], overlap_px=options.overlap_px,
                         batch_size=options.batch_size, seed=options.seed + PAIR_SEED_STRIDE * int(pair["pair_id"]),
                         aoi=str(pair["aoi"]), context=inputs["context"])


PREFETCH_PAIRS = 2  # pairs whose inputs are read ahead while the model computes


def predict_tree(predictor, run_dir: str | Path, data: str | Path, out: str | Path, tile_px: int, bands: Sequence[int],
                 options: TreeOptions, settings: dict[str, Any] | None = None, log=print) -> pd.DataFrame:
    """Predict every planned pair of the tree ``data`` into ``out`` (see the module doc); returns the index table.
    ``settings`` (how the model was loaded: device, weights, sampling steps) go into ``predict.yaml`` as they are."""
    from tqdm.auto import tqdm

    from stsynth_lib.predict.files import write_geotiff

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
    todo = [(pair, name) for (_, pair), skip, name in zip(pairs.iterrows(), done, index["prediction"]) if not skip]
    cache = SceneCache(bands)
    compute_s, loop_start = 0.0, time.perf_counter()
    # reads run ahead in one thread, writes behind in another; the model computes in this one (torch's threads)
    with ThreadPoolExecutor(1, thread_name_prefix="stsynth-read") as reader, \
            ThreadPoolExecutor(1, thread_name_prefix="stsynth-write") as writer:
        reads = deque(reader.submit(pair_inputs, predictor, meta, p, tile_px, cache) for p, _ in todo[:PREFETCH_PAIRS])
        writes = []
        for k, (pair, name) in enumerate(tqdm(todo, desc="predict", unit="pair", disable=not options.progress)):
            inputs = reads.popleft().result()
            if k + PREFETCH_PAIRS < len(todo):
                reads.append(reader.submit(pair_inputs, predictor, meta, todo[k + PREFETCH_PAIRS][0], tile_px, cache))
            t = time.perf_counter()
            image = predict_pair(predictor, pair, inputs, tile_px, options)
            compute_s += time.perf_counter() - t
            writes.append(writer.submit(write_geotiff, out / name, image, inputs["transform"], inputs["crs"] or None))
            while writes and writes[0].done():
                writes.pop(0).result()  # a failed write stops the run here, naming its error
        for w in writes:
            w.result()
    loop_s = time.perf_counter() - loop_start
    atomic_write_text(out / "index.csv", index.to_csv(index=False))
    save_yaml({"run": str(run_dir), "data": str(Path(data).resolve()), "model": predictor.family,
               "tile_size_px": tile_px, "tile_overlap_px": resolve_overlap(tile_px, options.overlap_px),
               "bands": list(bands), "options": {**asdict(options), **(settings or {})}, "n_pairs": len(pairs),
               "n_skipped_existing": int(sum(done)),
               "seconds_per_pair": round(loop_s / len(todo), 4) if todo else None,
               "model_seconds_per_pair": round(compute_s / len(todo), 4) if todo else None,
               "torch_threads": torch.get_num_threads(), "start_time": started.isoformat(timespec="seconds"),
               "end_time": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
               "git_commit": head_commit(Path(__file__).parent, short=False)},
              out / "predict.yaml")
    log(f"wrote {len(pairs)} predictions and {out / 'index.csv'}")
    return index


__all__ = [
    "INDEX_COLUMNS",
    "TreeOptions",
    "SceneCache",
    "check_labels",
    "context_months",
    "pair_inputs",
    "plan_pairs",
    "predict_tree",
    "prediction_name",
    "run_bands",
    "scan_tree",
]
