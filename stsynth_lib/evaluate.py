"""Score every model and the persistence baseline on the same test tiles; tables, galleries, curves, FID.

Entry points
------------
* :func:`evaluate_models` -- per-tile metrics (PSNR, SSIM, L1, LPIPS; the same over changed / unchanged
  footprint pixels; building precision/recall/F1/IoU and new-building scores through a segmenter)
  for ``persistence`` (future = past, computed from the dataset), every model's saved predictions
  and the real future images (segmentation upper bound). Writes ``per_tile.csv``, ``summary.csv``,
  ``summary.json`` and ``results.md`` under ``out_dir``.
* :func:`summarise` / :func:`results_table` / :func:`persistence_verdict` -- mean and 95 % bootstrap
  interval over tiles, the wide table of the book, and the plain sentence saying which model beats
  persistence on what.
* :func:`gallery` / :func:`plot_metric_vs_gap` -- best / median / worst tiles, metric vs time gap.
* :func:`fid_report` -- FID and KID per model, per gap bucket, and of persistence (notebook 07).

All images are compared in [0, 1] (``uint8 / 255``, ``data_range = 1``) over valid pixels
(``past_valid * future_valid``); LPIPS gets the same images in [-1, 1].
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from stsynth_lib import metrics as M

PERSISTENCE = "persistence"
UPPER_BOUND = "real_future"  # the real future images through the segmenter: building-score upper bound

# metric -> (higher is better, human name)
METRICS: dict[str, tuple[bool, str]] = {
    "psnr": (True, "PSNR (dB)"),
    "ssim": (True, "SSIM"),
    "l1": (False, "L1 ([0,1] units)"),
    "lpips": (False, "LPIPS"),
    "psnr_changed": (True, "PSNR changed px (dB)"),
    "psnr_unchanged": (True, "PSNR unchanged px (dB)"),
    "ssim_changed": (True, "SSIM changed px"),
    "ssim_unchanged": (True, "SSIM unchanged px"),
    "lpips_changed": (False, "LPIPS changed px"),
    "lpips_unchanged": (False, "LPIPS unchanged px"),
    "f1": (True, "building F1"),
    "f1_micro": (True, "building F1 (all pixels pooled)"),
    "iou": (True, "building IoU"),
    "precision": (True, "building precision"),
    "recall": (True, "building recall"),
    "f1_new_micro": (True, "new-building F1 (pooled)"),
    "recall_new": (True, "new-building recall"),
}
LPIPS_METRICS = ("lpips", "lpips_changed", "lpips_unchanged")
DEFAULT_GAP_EDGES = (1, 2, 4, 7, 13, 10_000)  # buckets [1], [2-3], [4-6], [7-12], [13+]


# --------------------------------------------------------------------------- data


@dataclass
class SplitData:
    """The ground truth of one split as arrays aligned with ``pairs`` (uint8 images, {0,1} masks)."""

    pairs: pd.DataFrame
    past: np.ndarray  # (N, C, H, W) uint8
    future: np.ndarray  # (N, C, H, W) uint8
    past_mask: np.ndarray  # (N, 1, H, W) uint8
    future_mask: np.ndarray
    valid: np.ndarray  # (N, 1, H, W) uint8, past_valid * future_valid
    has_mask: np.ndarray  # (N,) bool
    transform: np.ndarray  # (N, 6)
    crs: list[str]

    @property
    def pair_ids(self) -> np.ndarray:
        return self.pairs["pair_id"].to_numpy()

    def __len__(self) -> int:
        return len(self.pairs)


def load_split(dataset_dir: str | Path, split: str = "test", max_pairs: int | None = None, seed: int = 0) -> SplitData:
    """Read one split's pairs from the tile store; ``max_pairs`` keeps a seeded random subset (same for every model)."""
    from stsynth_lib.data.dataset import PairedTileDataset

    ds = PairedTileDataset(dataset_dir, split)
    pairs = ds.pairs
    if len(pairs) == 0:
        raise ValueError(f"{dataset_dir}: split {split!r} has no pairs; rebuild the dataset with more AOIs or other split fractions.")
    if max_pairs is not None and len(pairs) > max_pairs:
        pairs = pairs.sample(n=max_pairs, random_state=seed).sort_values("pair_id")
    pairs = pairs.reset_index(drop=True)
    s = ds.store
    t0 = pairs["past_tile_id"].to_numpy(int)
    t1 = pairs["future_tile_id"].to_numpy(int)
    tiles = s.tiles.set_index("tile_id", drop=False).loc[t1]
    return SplitData(
        pairs=pairs,
        past=np.asarray(s.images[t0]),
        future=np.asarray(s.images[t1]),
        past_mask=np.asarray(s.masks[t0])[:, None],
        future_mask=np.asarray(s.masks[t1])[:, None],
        valid=(np.asarray(s.valid[t0]) * np.asarray(s.valid[t1]))[:, None].astype(np.uint8),
        has_mask=pairs["has_mask"].to_numpy(bool),
        transform=tiles[[f"transform_{c}" for c in "abcdef"]].to_numpy(np.float64),
        crs=[str(c) for c in tiles["crs"]],
    )


def gap_bucket(gap_months, edges: Iterable[int] = DEFAULT_GAP_EDGES) -> np.ndarray:
    """Label each gap (months) with its bucket, e.g. '1', '2-3', '13+'."""
    edges = list(edges)
    labels = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        labels.append(str(lo) if hi - lo == 1 else (f"{lo}+" if hi >= 10_000 else f"{lo}-{hi - 1}"))
    g = np.asarray(gap_months, dtype=float)
    idx = np.clip(np.searchsorted(edges, g, side="right") - 1, 0, len(labels) - 1)
    return np.array([labels[i] for i in idx])


def gap_bucket_order(edges: Iterable[int] = DEFAULT_GAP_EDGES) -> list[str]:
    edges = list(edges)
    return list(gap_bucket([e for e in edges[:-1]], edges))


# --------------------------------------------------------------------------- per-tile scoring


def _score_images(pred: np.ndarray, data: SplitData, lpips_metric: M.LPIPSMetric | None, batch: int = 64) -> dict[str, np.ndarray]:
    """Image metrics of generated uint8 images ``pred`` (aligned with ``data``) against the future tiles."""
    out: dict[str, list[np.ndarray]] = {}
    n = len(data)
    for i in range(0, n, batch):
        sl = slice(i, i + batch)
        p = pred[sl].astype(np.float64) / 255.0
        t = data.future[sl].astype(np.float64) / 255.0
        v = data.valid[sl]
        changed, unchanged = M.change_masks(data.past_mask[sl], data.future_mask[sl], v)
        hm = data.has_mask[sl]
        nan = np.full(len(p), np.nan)
        masks = [v, changed, unchanged] if hm.any() else [v]  # change-aware scores need labels
        ssim = M.masked_ssim_many(p, t, masks, data_range=1.0)
        res = {
            "psnr": M.masked_psnr(p, t, v, data_range=1.0),
            "ssim": ssim[0],
            "l1": M.masked_l1(p, t, v),
            "valid_fraction": v.reshape(len(v), -1).mean(1),
            "changed_fraction": np.where(hm, changed.reshape(len(v), -1).mean(1).numpy(), nan),
        }
        res["psnr_changed"] = np.where(hm, M.masked_psnr(p, t, changed, 1.0), nan) if hm.any() else nan
        res["psnr_unchanged"] = np.where(hm, M.masked_psnr(p, t, unchanged, 1.0), nan) if hm.any() else nan
        res["ssim_changed"] = np.where(hm, ssim[1], nan) if hm.any() else nan
        res["ssim_unchanged"] = np.where(hm, ssim[2], nan) if hm.any() else nan
        if lpips_metric is not None:
            lps = lpips_metric.masked_many(p * 2 - 1, t * 2 - 1, masks)
            res["lpips"] = lps[0]
            res["lpips_changed"] = np.where(hm, lps[1], nan) if hm.any() else nan
            res["lpips_unchanged"] = np.where(hm, lps[2], nan) if hm.any() else nan
        for k, val in res.items():
            out.setdefault(k, []).append(np.asarray(val, dtype=np.float64))
    return {k: np.concatenate(v) for k, v in out.items()}


def _score_buildings(seg_masks: np.ndarray, data: SplitData) -> dict[str, np.ndarray]:
    """Building scores of segmented masks vs the future mask (+ new-building scores); NaN where no labels."""
    b = M.building_scores(seg_masks, data.future_mask, data.valid)
    nb = M.new_building_scores(seg_masks, data.future_mask, data.past_mask, data.valid)
    out = {k: b[k].astype(np.float64) for k in ("precision", "recall", "f1", "iou", "tp", "fp", "fn")}
    out.update({f"{k}_new": nb[k].astype(np.float64) for k in ("precision", "recall", "f1", "tp", "fp", "fn")})
    for k in out:
        out[k][~data.has_mask] = np.nan
    return out


@dataclass
class EvalResult:
    per_tile: pd.DataFrame
    summary: pd.DataFrame
    notes: list[str]
    calibrated: dict[str, bool]
    data: SplitData
    predictions: dict[str, np.ndarray] = field(repr=False)  # name -> (N, C, H, W) uint8 aligned with data (NaN rows absent)
    available: dict[str, np.ndarray] = field(repr=False)  # name -> (N,) bool, tile predicted by the model
    seg_masks: dict[str, np.ndarray] = field(repr=False, default_factory=dict)
    out_dir: Path | None = None


def _align_predictions(preds: dict[int, np.ndarray], data: SplitData) -> tuple[np.ndarray, np.ndarray]:
    arr = np.zeros_like(data.future)
    have = np.zeros(len(data), bool)
    for i, pid in enumerate(data.pair_ids):
        img = preds.get(int(pid))
        if img is None:
            continue
        if img.shape != data.future.shape[1:]:
            raise ValueError(
                f"prediction for pair {pid} has shape {img.shape}, the dataset's tiles are {data.future.shape[1:]}: "
                "the predictions were made on another dataset or tile size."
            )
        arr[i] = img
        have[i] = True
    return arr, have


def _same_persistence(folder: str | Path, data: SplitData) -> bool:
    """True if ``folder`` already holds the persistence images of exactly these pairs (then it is not rewritten).

    Checks the pair ids of ``index.csv`` and the pixels of the first and last image.
    """
    import rasterio

    index = Path(folder) / "index.csv"
    if not index.is_file():
        return False
    try:
        idx = pd.read_csv(index)
        ids = idx["pair_id"].to_numpy()
        if len(ids) != len(data) or set(ids.tolist()) != set(int(p) for p in data.pair_ids):
            return False
        where = {int(p): i for i, p in enumerate(data.pair_ids)}
        for _, row in idx.iloc[[0, -1]].iterrows():
            with rasterio.open(Path(folder) / row["tif"]) as src:
                if not np.array_equal(src.read(), data.past[where[int(row["pair_id"])]]):
                    return False
    except (ValueError, KeyError, OSError, pd.errors.EmptyDataError, rasterio.errors.RasterioIOError):
        return False
    return True


def _load_model_predictions(runs, data, split: str, notes: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{model: (images aligned with data, which pairs it predicted)}``; a missing or empty folder becomes a note."""
    from stsynth_lib.predictions import load_predictions

    out = {}
    for name, folder in (runs or {}).items():
        if folder is None or not (Path(folder) / "index.csv").is_file():
            notes.append(f"{name}: no predictions at {folder} (index.csv missing) -- run its notebook first; left out of the tables.")
            continue
        arr, ok = _align_predictions(load_predictions(folder), data)
        if not ok.any():
            notes.append(f"{name}: {folder} holds no prediction for the {len(data)} {split} pairs scored here; left out.")
            continue
        out[name] = (arr, ok)
    return out


def evaluate_models(
    dataset_dir: str | Path,
    split: str = "test",
    runs: Mapping[str, str | Path | None] | None = None,
    out_dir: str | Path | None = None,
    segmenter: Any = None,
    lpips_net: str = "alex",
    allow_uncalibrated: bool = False,
    compute_lpips: bool = True,
    device: str = "cpu",
    max_pairs: int | None = None,
    n_boot: int = 1000,
    psnr_cap_db: float = 100.0,
    seed: int = 0,
    persistence_dir: str | Path | None = None,
    progress: bool = True,
) -> EvalResult:
    """Score persistence and every model in ``runs`` ({name: predictions folder}) on the same tiles.

    A model whose folder is missing or empty becomes a note (not a crash). Tiles a model did not
    predict are left out of *every* model's summary, so that all rows of the table share one tile
    set (the count is in the notes). ``segmenter`` (a :class:`~stsynth_lib.segmentation.SegUNet`,
    or None) scores buildings on labelled tiles; without it or without labels the building columns
    are NaN with a note. ``persistence_dir`` (optional) receives the persistence baseline's
    "predictions" as GeoTIFF + PNG, like a model's.
    """
    from tqdm import tqdm

    from stsynth_lib.predictions import clear_predictions, save_predictions
    from stsynth_lib.segmentation import predict_masks

    data = load_split(dataset_dir, split, max_pairs=max_pairs, seed=seed)
    notes: list[str] = []
    if max_pairs is not None and len(data) == max_pairs:
        notes.append(f"Scored a seeded random subset of {len(data)} {split} pairs (max_pairs={max_pairs}), the same for every model.")

    preds: dict[str, np.ndarray] = {PERSISTENCE: data.past.copy()}
    have: dict[str, np.ndarray] = {PERSISTENCE: np.ones(len(data), bool)}
    if persistence_dir is not None and not _same_persistence(persistence_dir, data):
        clear_predictions(persistence_dir)
        save_predictions(persistence_dir, data.past.astype(np.float32) / 127.5 - 1, data.pair_ids, data.pairs["aoi"],
                         data.transform, data.crs)
    for name, (arr, ok) in _load_model_predictions(runs, data, split, notes).items():
        if not ok.all():
            notes.append(f"{name}: predictions for {ok.sum()} of {len(data)} {split} pairs; the summary uses only the tiles every model predicted.")
        preds[name], have[name] = arr, ok

    common = np.logical_and.reduce(list(have.values()))
    lp = None
    if compute_lpips:
        lp = M.LPIPSMetric(lpips_net, allow_uncalibrated=allow_uncalibrated, device=device, seed=seed)
        if not lp.calibrated:
            notes.append(f"LPIPS is {M.UNCALIBRATED}: no ImageNet {lpips_net} weights in the torch cache, a seeded random backbone was used "
                         "(allow_uncalibrated_metrics: true). Compare LPIPS only between rows of this table, never with papers.")
    calibrated = {"lpips": bool(lp.calibrated) if lp is not None else False}

    seg_on = segmenter is not None and data.has_mask.any()
    if segmenter is None:
        notes.append("Building F1 skipped: no building segmenter (the training split has no building labels, or none was trained).")
    elif not data.has_mask.any():
        notes.append(f"Building F1 skipped: no {split} pair has building labels (has_mask is False), e.g. the sn7_real_128 sample has no labels.")

    frames = []
    seg_masks: dict[str, np.ndarray] = {}
    base = pd.DataFrame({
        "pair_id": data.pair_ids, "aoi": data.pairs["aoi"].to_numpy(), "gap_months": data.pairs["gap_months"].to_numpy(float),
        "has_mask": data.has_mask,
    })
    base["gap_bucket"] = gap_bucket(base["gap_months"])
    for name in tqdm(list(preds), desc="scoring models", disable=not progress):
        df = base.copy()
        df.insert(0, "model", name)
        df["predicted"] = have[name]
        df["common"] = common
        scores = _score_images(preds[name], data, lp)
        for k, v in scores.items():
            df[k] = v
        if seg_on:
            seg_masks[name] = predict_masks(segmenter, preds[name], device=device)
            for k, v in _score_buildings(seg_masks[name], data).items():
                df[k] = v
        df.loc[~df["predicted"], [c for c in df.columns if c not in base.columns and c not in ("model", "predicted", "common")]] = np.nan
        frames.append(df)
    if seg_on:
        seg_masks[UPPER_BOUND] = predict_masks(segmenter, data.future, device=device)
        df = base.copy()
        df.insert(0, "model", UPPER_BOUND)
        df["predicted"] = True
        df["common"] = common
        for k, v in _score_buildings(seg_masks[UPPER_BOUND], data).items():
            df[k] = v
        frames.append(df)
    per_tile = pd.concat(frames, ignore_index=True)
    per_tile["lpips_calibrated"] = calibrated["lpips"]
    summary = summarise(per_tile, n_boot=n_boot, psnr_cap_db=psnr_cap_db, seed=seed, calibrated=calibrated)
    n_inf = int(np.isposinf(per_tile["psnr"]).sum())
    if n_inf:
        notes.append(f"{n_inf} tile(s) match the truth exactly (PSNR = inf); means use {psnr_cap_db:g} dB for them.")
    res = EvalResult(per_tile, summary, notes, calibrated, data, preds, have, seg_masks)
    if out_dir is not None:
        res.out_dir = save_results(res, out_dir, meta={"dataset_dir": str(dataset_dir), "split": split, "lpips_net": lpips_net,
                                                        "runs": {k: str(v) for k, v in (runs or {}).items()}})
    return res


# --------------------------------------------------------------------------- summaries


def summarise(per_tile: pd.DataFrame, n_boot: int = 1000, ci: float = 0.95, psnr_cap_db: float = 100.0, seed: int = 0,
              calibrated: Mapping[str, bool] | None = None, by: str | None = None, common_only: bool = True) -> pd.DataFrame:
    """Long table: one row per (model[, by], metric) with mean, bootstrap CI bounds and tile count.

    ``f1_micro`` / ``f1_new_micro`` pool TP/FP/FN over tiles (bootstrap over tiles too).
    ``common_only`` keeps the tiles every model predicted.
    """
    df = per_tile[per_tile["common"]] if common_only and "common" in per_tile else per_tile
    calibrated = dict(calibrated or {})
    rows = []
    keys = ["model"] + ([by] if by else [])
    for key, g in df.groupby(keys, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        for metric in METRICS:
            if metric in ("f1_micro", "f1_new_micro"):
                cols = ["tp", "fp", "fn"] if metric == "f1_micro" else ["tp_new", "fp_new", "fn_new"]
                if not set(cols) <= set(g.columns):
                    continue
                vals = g[cols].to_numpy(float)
                est, lo, hi, n = M.bootstrap_ci(vals, n_boot, ci, seed, statistic=M.micro_f1)
            else:
                if metric not in g.columns:
                    continue
                vals = g[metric].to_numpy(float)
                if metric.startswith("psnr"):
                    vals = M.finite_psnr(vals, psnr_cap_db)
                est, lo, hi, n = M.bootstrap_ci(vals, n_boot, ci, seed)
            if n == 0:
                continue
            cal = calibrated.get("lpips", True) if metric in LPIPS_METRICS else True
            rows.append({**dict(zip(keys, key)), "metric": metric, "mean": est, "ci_lo": lo, "ci_hi": hi, "n": n, "calibrated": cal})
    return pd.DataFrame(rows)


def results_table(summary: pd.DataFrame, metrics: Iterable[str] = ("psnr", "ssim", "lpips", "l1", "f1_micro", "f1_new_micro"),
                  digits: int = 3) -> pd.DataFrame:
    """Wide table, models x metrics, cells 'mean [lo, hi]'; LPIPS headers say 'uncalibrated' when they are."""
    metrics = [m for m in metrics if m in set(summary["metric"])]
    order = [m for m in [PERSISTENCE] + [x for x in summary["model"].unique() if x not in (PERSISTENCE, UPPER_BOUND)] + [UPPER_BOUND]
             if m in set(summary["model"])]
    table = pd.DataFrame(index=order)
    for metric in metrics:
        s = summary[summary["metric"] == metric].set_index("model")
        cal = bool(s["calibrated"].all()) if len(s) else True
        header = M.label(METRICS[metric][1], cal) + (" ↑" if METRICS[metric][0] else " ↓")
        col = []
        for m in order:
            if m not in s.index:
                col.append("")
                continue
            r = s.loc[m]
            ci = "" if math.isnan(r["ci_lo"]) else f" [{r['ci_lo']:.{digits}f}, {r['ci_hi']:.{digits}f}]"
            col.append(f"{r['mean']:.{digits}f}{ci}")
        table[header] = col
    ns = summary.groupby("model")["n"].max()
    table["tiles"] = [int(ns.get(m, 0)) for m in order]
    table.index.name = "model"
    return table


def paired_vs_persistence(per_tile: pd.DataFrame, metrics: Iterable[str] = ("l1", "psnr", "ssim"),
                          cluster: str = "aoi", n_boot: int = 2000, ci: float = 0.95, seed: int = 0,
                          psnr_cap_db: float = 100.0) -> pd.DataFrame:
    """Each model minus persistence on the SAME pairs, with an interval that respects the areas.

    Tiles of one area (AOI) share its light, season and land cover, so they are not independent:
    a bootstrap over tiles (as in :func:`summarise`) makes intervals too narrow when a model wins
    in some areas and loses in others. Here the difference ``model - persistence`` is computed per
    pair, then whole areas are resampled with replacement (cluster bootstrap); the statistic is the
    mean difference over the pairs of the resampled areas. A model "beats persistence" on a
    metric only when the whole interval is on the good side of zero.

    Returns one row per (model, metric): ``mean_diff``, ``ci_lo``, ``ci_hi``, ``better`` (True /
    False / None when the interval contains zero), ``areas_better`` (areas whose mean difference
    is on the good side) out of ``n_areas``, and ``n_pairs``.
    """
    df = per_tile[per_tile["common"]] if "common" in per_tile else per_tile
    base = df[df["model"] == PERSISTENCE].set_index("pair_id")
    rows = []
    rng = np.random.default_rng(seed)
    alpha = (1 - ci) / 2
    for model, g in df[~df["model"].isin([PERSISTENCE, UPPER_BOUND])].groupby("model", sort=False):
        g = g.set_index("pair_id")
        common = g.index.intersection(base.index)
        areas = base.loc[common, cluster].to_numpy()
        for metric in metrics:
            if metric not in g.columns or metric not in base.columns:
                continue
            a, b = g.loc[common, metric].to_numpy(float), base.loc[common, metric].to_numpy(float)
            if metric.startswith("psnr"):
                a, b = M.finite_psnr(a, psnr_cap_db), M.finite_psnr(b, psnr_cap_db)
            d = a - b
            keep = ~np.isnan(d)
            d, ar = d[keep], areas[keep]
            if len(d) == 0:
                continue
            names, inv = np.unique(ar, return_inverse=True)
            sums, counts = np.bincount(inv, weights=d), np.bincount(inv)
            k = len(names)
            pick = rng.integers(0, k, size=(n_boot, k))
            boots = sums[pick].sum(1) / counts[pick].sum(1)
            lo, hi = (np.quantile(boots, [alpha, 1 - alpha]) if k > 1 else (float("nan"), float("nan")))
            higher_better = METRICS[metric][0]
            good = (lambda x: x > 0) if higher_better else (lambda x: x < 0)
            bad = (lambda x: x < 0) if higher_better else (lambda x: x > 0)
            better = None  # the interval contains zero (or one area only: no interval)
            if k > 1 and good(lo) and good(hi):
                better = True
            elif k > 1 and bad(lo) and bad(hi):
                better = False
            rows.append({"model": model, "metric": metric, "mean_diff": float(d.mean()), "ci_lo": float(lo),
                         "ci_hi": float(hi), "better": better,
                         "areas_better": int(good(sums / counts).sum()), "n_areas": k, "n_pairs": int(len(d))})
    return pd.DataFrame(rows)


def paired_table(paired: pd.DataFrame, digits: int = 4) -> pd.DataFrame:
    """Wide, readable form of :func:`paired_vs_persistence` for the book."""
    out = []
    for _, r in paired.iterrows():
        verdict = {True: "better", False: "worse", None: "no clear difference"}[r["better"]]
        name = METRICS[r["metric"]][1]
        out.append({"model": r["model"], "metric": name + (" ↑" if METRICS[r["metric"]][0] else " ↓"),
                    "model − persistence [95% CI over areas]":
                        f"{r['mean_diff']:+.{digits}f} [{r['ci_lo']:+.{digits}f}, {r['ci_hi']:+.{digits}f}]",
                    "areas where the model is better": f"{r['areas_better']} of {r['n_areas']}",
                    "verdict": verdict})
    return pd.DataFrame(out)


VERDICT_METRICS = ("psnr", "ssim", "lpips", "l1", "psnr_changed", "ssim_changed", "lpips_changed", "f1_micro", "f1_new_micro")


def persistence_verdict(summary: pd.DataFrame, metrics: Iterable[str] = VERDICT_METRICS) -> list[str]:
    """One sentence per model: on which metrics it beats persistence (CIs not overlapping = 'clearly')."""
    out = []
    s = summary.set_index(["model", "metric"])
    models = [m for m in summary["model"].unique() if m not in (PERSISTENCE, UPPER_BOUND)]
    for m in models:
        better, clearly, worse = [], [], []
        for metric in metrics:
            if (m, metric) not in s.index or (PERSISTENCE, metric) not in s.index:
                continue
            a, b = s.loc[(m, metric)], s.loc[(PERSISTENCE, metric)]
            hib = METRICS[metric][0]
            name = M.label(METRICS[metric][1], bool(a["calibrated"]))
            if (a["mean"] > b["mean"]) == hib and a["mean"] != b["mean"]:
                better.append(name)
                if (hib and a["ci_lo"] > b["ci_hi"]) or (not hib and a["ci_hi"] < b["ci_lo"]):
                    clearly.append(name)
            else:
                worse.append(name)
        if not better:
            out.append(f"{m} does NOT beat the persistence baseline on any metric ({', '.join(worse)}).")
        else:
            txt = f"{m} beats persistence on {', '.join(better)}"
            txt += f" (95% intervals apart on {', '.join(clearly)})" if clearly else " (but every 95% interval overlaps persistence's)"
            txt += f"; it does not on {', '.join(worse)}." if worse else "."
            out.append(txt)
    if not models:
        out.append("No model predictions were found: the table shows the persistence baseline only.")
    return out


def save_results(res: EvalResult, out_dir: str | Path, meta: Mapping[str, Any] | None = None) -> Path:
    """Write per_tile.csv, summary.csv, summary.json and results.md atomically under ``out_dir``."""
    from stsynth_lib.runs import atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "per_tile.csv", res.per_tile.to_csv(index=False))
    atomic_write_text(out / "summary.csv", res.summary.to_csv(index=False))
    table = results_table(res.summary)
    verdict = persistence_verdict(res.summary)
    paired = paired_vs_persistence(res.per_tile)
    atomic_write_text(out / "paired_vs_persistence.csv", paired.to_csv(index=False))
    payload = {
        **dict(meta or {}),
        "n_pairs": len(res.data),
        "n_common_tiles": int(res.per_tile.loc[res.per_tile["model"] == PERSISTENCE, "common"].sum()),
        "calibrated": res.calibrated,
        "notes": res.notes,
        "verdict": verdict,
        "summary": json.loads(res.summary.to_json(orient="records")),
        "paired_vs_persistence": json.loads(paired.to_json(orient="records")),
    }
    atomic_write_text(out / "summary.json", json.dumps(payload, indent=2, allow_nan=True))
    md = table.to_markdown() if _has_tabulate() else table.to_string()
    text = md + "\n\n" + "\n".join(f"- {v}" for v in verdict + res.notes) + "\n"
    if len(paired):
        pt = paired_table(paired).set_index("model")
        text += ("\nPaired with persistence on the same pairs, 95 % interval from resampling whole areas (AOIs):\n\n"
                 + (pt.to_markdown() if _has_tabulate() else pt.to_string()) + "\n")
    atomic_write_text(out / "results.md", text)
    return out


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401

        return True
    except ImportError:
        return False


# --------------------------------------------------------------------------- figures


def _rgb(img_uint8: np.ndarray) -> np.ndarray:
    return np.asarray(img_uint8)[:3].transpose(1, 2, 0)


def gallery(res: EvalResult, model: str, metric: str = "lpips", title: str | None = None):
    """Best, median and worst tiles of ``model`` by ``metric``: past | future mask | generated | truth | error map."""
    import matplotlib.pyplot as plt

    df = res.per_tile[(res.per_tile["model"] == model) & res.per_tile["common"]].dropna(subset=[metric])
    if df.empty:
        raise ValueError(f"no scored tile for model {model!r} and metric {metric!r}")
    hib = METRICS[metric][0]
    df = df.sort_values(metric, ascending=not hib).reset_index(drop=True)
    picks = [("best", df.iloc[0]), ("median", df.iloc[len(df) // 2]), ("worst", df.iloc[-1])]
    index = {int(p): i for i, p in enumerate(res.data.pair_ids)}
    cal = res.calibrated.get("lpips", True) if metric in LPIPS_METRICS else True
    fig, axes = plt.subplots(3, 5, figsize=(12, 7.6))
    for r, (tag, row) in enumerate(picks):
        i = index[int(row["pair_id"])]
        pred = res.predictions[model][i]
        truth = res.data.future[i]
        err = np.abs(pred.astype(float) - truth.astype(float)).mean(0) / 255.0
        invalid = res.data.valid[i, 0] == 0
        err = np.ma.masked_where(invalid, err)
        panels = [(_rgb(res.data.past[i]), "past"),
                  (res.data.future_mask[i, 0], "future buildings" if res.data.has_mask[i] else "no labels"),
                  (_rgb(pred), model), (_rgb(truth), "truth"), (err, "|error| (invalid masked)")]
        for c, (img, t) in enumerate(panels):
            ax = axes[r, c]
            if c == 4:
                im = ax.imshow(img, cmap="magma", vmin=0, vmax=0.5)
            else:
                ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1 if img.ndim == 2 else None)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(t, fontsize=9)
        axes[r, 0].set_ylabel(f"{tag}\n{M.label(METRICS[metric][1], cal)}\n= {row[metric]:.3f}\ngap {row['gap_months']:.0f} mo", fontsize=8)
    fig.colorbar(im, ax=axes[:, 4], fraction=0.05)
    fig.suptitle(title or f"{model}: best / median / worst tiles by {M.label(METRICS[metric][1], cal)}", fontsize=11)
    return fig


def plot_metric_vs_gap(res_or_per_tile, metric: str = "psnr", n_boot: int = 300, seed: int = 0, calibrated: bool | None = None, ax=None):
    """Mean metric (95% bootstrap band) per time-gap bucket, one line per model incl. persistence."""
    import matplotlib.pyplot as plt

    per_tile = res_or_per_tile.per_tile if isinstance(res_or_per_tile, EvalResult) else res_or_per_tile
    if calibrated is None:
        calibrated = bool(per_tile["lpips_calibrated"].iloc[0]) if metric in LPIPS_METRICS and "lpips_calibrated" in per_tile else True
    s = summarise(per_tile, n_boot=n_boot, seed=seed, by="gap_bucket", calibrated={"lpips": calibrated})
    s = s[s["metric"] == metric]
    order = [b for b in gap_bucket_order() if b in set(s["gap_bucket"])]
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.8))
    for model, g in s.groupby("model", sort=False):
        g = g.set_index("gap_bucket").reindex(order)
        x = np.arange(len(order))
        style = dict(ls="--", color="k") if model == PERSISTENCE else {}
        ax.plot(x, g["mean"], marker="o", label=model, **style)
        ax.fill_between(x, g["ci_lo"], g["ci_hi"], alpha=0.15, color=style.get("color"))
    ax.set_xticks(np.arange(len(order)), order)
    ax.set_xlabel("time gap t1 - t0 (months)")
    ax.set_ylabel(M.label(METRICS[metric][1], calibrated))
    ax.set_title(f"{M.label(METRICS[metric][1], calibrated)} vs time gap (mean, 95% CI)", fontsize=10)
    ax.legend(fontsize=8)
    return ax


# --------------------------------------------------------------------------- FID / KID


def fid_report(
    dataset_dir: str | Path,
    split: str = "test",
    runs: Mapping[str, str | Path | None] | None = None,
    allow_uncalibrated: bool = False,
    device: str = "cpu",
    max_pairs: int | None = None,
    by_gap: bool = True,
    min_bucket_pairs: int = 10,
    kid_subset_size: int = 1000,
    kid_subsets: int = 100,
    seed: int = 0,
    batch_size: int = 32,
    progress: bool = True,
    out_dir: str | Path | None = None,
) -> tuple[pd.DataFrame, list[str], bool]:
    """FID and KID of each model's images (and of persistence = past images) against the real future tiles.

    Both sets are per pair (a future tile shared by several pairs counts each time) so they have the
    same size ``n``, reported with every number. Per gap bucket when ``by_gap`` (buckets with fewer
    than ``min_bucket_pairs`` pairs are skipped). Returns (table, notes, calibrated); writes
    ``fid.csv`` / ``fid.json`` under ``out_dir``.
    """
    data = load_split(dataset_dir, split, max_pairs=max_pairs, seed=seed)
    notes: list[str] = []
    sets: dict[str, tuple[np.ndarray, np.ndarray]] = {PERSISTENCE: (data.past, np.ones(len(data), bool))}
    sets.update(_load_model_predictions(runs, data, split, notes))
    common = np.logical_and.reduce([ok for _, ok in sets.values()])
    if not common.all():
        notes.append(f"Only the {common.sum()} of {len(data)} pairs that every model predicted are used.")
    feat = M.InceptionFeatures(allow_uncalibrated=allow_uncalibrated, device=device, seed=seed)
    if not feat.calibrated:
        notes.append(f"FID/KID are {M.UNCALIBRATED}: no pt_inception weights in the torch cache, a seeded random Inception was used. "
                     "They rank models within this run only and are not comparable with published FIDs.")
    real = feat(data.future[common], batch_size=batch_size, progress=progress)
    feats = {name: feat(arr[common], batch_size=batch_size, progress=progress) for name, (arr, _) in sets.items()}
    gaps = gap_bucket(data.pairs["gap_months"].to_numpy(float)[common])
    rows = []
    groups = [("all", np.ones(len(real), bool))]
    if by_gap:
        groups += [(b, gaps == b) for b in gap_bucket_order() if (gaps == b).sum() >= min_bucket_pairs]
        skipped = [b for b in gap_bucket_order() if 0 < (gaps == b).sum() < min_bucket_pairs]
        if skipped:
            notes.append(f"No FID for gap buckets with fewer than {min_bucket_pairs} pairs: {', '.join(skipped)} months.")
    for bucket, sel in groups:
        for name, f in feats.items():
            n = int(sel.sum())
            if n < 2:
                continue
            kid, kid_std = M.kid_from_features(f[sel], real[sel], kid_subset_size, kid_subsets, seed)
            rows.append({"model": name, "gap_bucket": bucket, "n": n, "fid": M.fid_from_features(f[sel], real[sel]),
                         "kid": kid, "kid_std": kid_std, "calibrated": feat.calibrated})
    table = pd.DataFrame(rows)
    if len(real) < 2048:
        notes.append(f"n = {len(real)} < 2048 (the feature dimension): FID is biased upwards at this size and only comparable "
                     "between rows with the same n; KID (unbiased) is the headline.")
    if out_dir is not None:
        from stsynth_lib.runs import atomic_write_text

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "fid.csv", table.to_csv(index=False))
        atomic_write_text(out / "fid.json", json.dumps({"dataset_dir": str(dataset_dir), "split": split, "calibrated": feat.calibrated,
                                                         "notes": notes, "rows": json.loads(table.to_json(orient="records"))}, indent=2))
    return table, notes, feat.calibrated


def fid_table(table: pd.DataFrame, calibrated: bool) -> pd.DataFrame:
    """Wide FID/KID table (rows: model; columns per gap bucket), headers labelled 'uncalibrated' when so."""
    t = table.copy()
    t["KID x1000"] = (t["kid"] * 1000).map(lambda v: f"{v:.2f}") + " ± " + (t["kid_std"] * 1000).map(lambda v: f"{v:.2f}")
    t["FID"] = t["fid"].map(lambda v: f"{v:.2f}")
    wide = t.pivot_table(index="model", columns="gap_bucket", values=["KID x1000", "FID", "n"], aggfunc="first", sort=False)
    wide.columns = [f"{M.label(a, calibrated)} [{b}]" if a != "n" else f"n [{b}]" for a, b in wide.columns]
    return wide


__all__ = [
    "PERSISTENCE", "UPPER_BOUND", "METRICS", "SplitData", "load_split", "gap_bucket", "gap_bucket_order", "EvalResult",
    "evaluate_models", "summarise", "results_table", "persistence_verdict", "save_results", "gallery",
    "plot_metric_vs_gap", "fid_report", "fid_table", "prediction_dirs",
]



def prediction_dirs(runs_dir: str | Path, profile: str, models: Iterable[str], split: str = "test") -> dict[str, Path]:
    """``{model: runs/<profile>/<model>/predictions/<split>}`` (folders may not exist: evaluate_models notes it).

    ``models`` may also be one comma-separated string (``papermill -p models pix2pix,controlnet``).
    """
    if isinstance(models, str):
        models = [m.strip(" '\"") for m in models.strip("[]").split(",") if m.strip(" '\"")]
    return {m: Path(runs_dir) / profile / m / "predictions" / split for m in models}
