"""Per-tile scoring of saved predictions, persistence and the real future (:func:`evaluate_models`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stsynth_lib import metrics as M
from stsynth_lib.baselines import baseline_offsets, baseline_prediction
from stsynth_lib.evaluate.data import (
    PERSISTENCE,
    UPPER_BOUND,
    EvalResult,
    SplitData,
    _load_model_predictions,
    _same_persistence,
    gap_bucket,
    load_split,
    model_labels,
)
from stsynth_lib.evaluate.report import save_results
from stsynth_lib.evaluate.stats import summarise
from stsynth_lib.metrics import perceptual as P
from stsynth_lib.training import resolve_device


def scoring_device(device: str = "auto") -> str:
    """The torch device (``"cuda"`` or ``"cpu"``) for metric networks, segmenters and generation outside training:
    the device :func:`stsynth_lib.training.resolve_device` picks (``auto``: CUDA when available; ``cuda`` without a
    GPU is an error)."""
    return "cuda" if resolve_device(device, mixed_precision="no", channels_last=False).on_cuda else "cpu"


def segmenter_compiles(device: str) -> bool:
    """Whether the judge runs compiled on ``device`` (:func:`stsynth_lib.training.resolve_device` for inference)."""
    return resolve_device(device, mixed_precision="no", channels_last=False, compile="auto", for_inference=True).compile


def _score_images(pred: np.ndarray, data: SplitData, lpips_metric: P.LPIPSMetric | None, batch: int = 64) -> dict[str, np.ndarray]:
    """Image metrics of generated uint8 images ``pred`` (aligned with ``data``) against the future tiles.

    Over all valid pixels, and on labelled pairs (NaN elsewhere) over ``changed`` pixels (footprint differs between
    t0 and t1), ``unchanged`` pixels and ``new``-building pixels (footprint at t1, not at t0). SSIM and LPIPS over a
    region are the means of one full-tile SSIM / LPIPS map over the region's pixels (each pixel's score still sees
    its window), so the extra regions cost no extra pass.
    """
    out: dict[str, list[np.ndarray]] = {}
    n = len(data)
    for i in range(0, n, batch):
        sl = slice(i, i + batch)
        p = pred[sl].astype(np.float64) / 255.0
        t = data.future[sl].astype(np.float64) / 255.0
        v = data.valid[sl]
        changed, unchanged = M.change_masks(data.past_mask[sl], data.future_mask[sl], v)
        new = changed.numpy() * (data.future_mask[sl] > 0)  # built at t1 and not at t0, valid
        hm = data.has_mask[sl]
        nan = np.full(len(p), np.nan)
        masks = [v, changed, unchanged, new] if hm.any() else [v]  # change-aware scores need labels
        ssim = M.masked_ssim_many(p, t, masks, data_range=1.0)
        psnr, l1 = M.masked_psnr_many(p, t, masks, data_range=1.0), M.masked_l1_many(p, t, masks)  # one pass each
        res = {
            "psnr": psnr[0],
            "ssim": ssim[0],
            "l1": l1[0],
            "valid_fraction": v.reshape(len(v), -1).mean(1),
            "changed_fraction": np.where(hm, changed.reshape(len(v), -1).mean(1).numpy(), nan),
        }
        res["psnr_changed"] = np.where(hm, psnr[1], nan) if hm.any() else nan
        res["psnr_unchanged"] = np.where(hm, psnr[2], nan) if hm.any() else nan
        res["ssim_changed"] = np.where(hm, ssim[1], nan) if hm.any() else nan
        res["ssim_unchanged"] = np.where(hm, ssim[2], nan) if hm.any() else nan
        if lpips_metric is not None:
            lps = lpips_metric.masked_many(p, t, masks, input_range=(0, 1))
            res["lpips"] = lps[0]
            res["lpips_changed"] = np.where(hm, lps[1], nan) if hm.any() else nan
            res["lpips_unchanged"] = np.where(hm, lps[2], nan) if hm.any() else nan
            res["lpips_new"] = np.where(hm, lps[3], nan) if hm.any() else nan
        res.update(_region_scores(p, hm, new, ssim, psnr, l1))
        for k, val in res.items():
            out.setdefault(k, []).append(np.asarray(val, dtype=np.float64))
    return {k: np.concatenate(v) for k, v in out.items()}


def _region_scores(p, hm, new, ssim, psnr, l1) -> dict[str, np.ndarray]:
    """L1 over changed / unchanged pixels and PSNR / SSIM / L1 / share of new-building pixels (the per-mask scores
    ``ssim``, ``psnr``, ``l1`` over [valid, changed, unchanged, new]); NaN without labels (and where a tile has no
    such pixel)."""
    nan = np.full(len(p), np.nan)
    if not hm.any():
        return {k: nan for k in ("new_fraction", "l1_changed", "l1_unchanged", "psnr_new", "ssim_new", "l1_new")}
    return {
        "new_fraction": np.where(hm, new.reshape(len(p), -1).mean(1), nan),
        "l1_changed": np.where(hm, l1[1], nan),
        "l1_unchanged": np.where(hm, l1[2], nan),
        "psnr_new": np.where(hm, psnr[3], nan),
        "ssim_new": np.where(hm, ssim[3], nan),
        "l1_new": np.where(hm, l1[3], nan),
    }


def _lpips_metric(net: str, allow_uncalibrated: bool, device: str, seed: int, notes: list[str]) -> P.LPIPSMetric:
    """The LPIPS metric, and a note naming its weights (or saying it is uncalibrated)."""
    lp = P.LPIPSMetric(net, allow_uncalibrated=allow_uncalibrated, device=device, seed=seed)
    if lp.calibrated:
        notes.append(f"LPIPS weights: {lp.description}.")
    else:
        notes.append(f"LPIPS is {P.UNCALIBRATED} ({lp.description}): no ImageNet {net} weights in the torch hub cache, "
                     "the project cache (make weights) or the package index, so a seeded random backbone was used "
                     "(allow_uncalibrated_metrics: true). Compare LPIPS only between rows of this table, never with papers.")
    return lp


def _score_buildings(seg_masks: np.ndarray, data: SplitData, seg_past: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Building scores of segmented masks vs the future mask (+ new-building scores, and, given the segmenter's
    masks of the past images ``seg_past``, the scores of the buildings drawn anew); NaN where no labels."""
    b = M.building_scores(seg_masks, data.future_mask, data.valid)
    nb = M.new_building_scores(seg_masks, data.future_mask, data.past_mask, data.valid)
    out = {k: b[k].astype(np.float64) for k in ("precision", "recall", "f1", "iou", "tp", "fp", "fn")}
    out.update({f"{k}_new": nb[k].astype(np.float64) for k in ("precision", "recall", "f1", "tp", "fp", "fn")})
    out.update({k: v.astype(np.float64) for k, v in
                M.new_building_objects(seg_masks, data.future_mask, data.past_mask, data.valid).items()})
    if seg_past is not None:
        dn = M.drawn_new_building_scores(seg_masks, seg_past, data.future_mask, data.past_mask, data.valid)
        out.update({f"{k}_drawn": dn[k].astype(np.float64) for k in ("recall", "tp", "fp", "fn")})
    for v in out.values():
        v[~data.has_mask] = np.nan
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
    baselines: Sequence[str] = (),
) -> EvalResult:
    """Score persistence and every model in ``runs`` ({name: predictions folder}) on the same tiles.

    A model whose folder is missing or empty becomes a note (not a crash). Tiles a model did not
    predict are left out of *every* model's summary, so that all rows of the table share one tile
    set (the count is in the notes). ``segmenter`` (a :class:`~stsynth_lib.metrics.segmentation.SegUNet`,
    or None) scores buildings on labelled tiles; without it or without labels the building columns
    are NaN with a note. ``persistence_dir`` (optional) receives the persistence baseline's
    "predictions" as GeoTIFF + PNG, like a model's. ``baselines`` (e.g. ``("mean_last_3", "seasonal")``, see
    :mod:`stsynth_lib.baselines`) adds simple baselines computed from the tile store's past frames of the same pairs,
    scored like models (rows after persistence); default none: today's tables.
    """
    extra = [b for b in dict.fromkeys(baselines) if b != PERSISTENCE]
    offsets = baseline_offsets(extra) if extra else None
    data = load_split(dataset_dir, split, max_pairs=max_pairs, seed=seed, context_offsets_months=offsets)
    notes: list[str] = []
    if max_pairs is not None and len(data) == max_pairs:
        notes.append(f"Scored a seeded random subset of {len(data)} {split} pairs (max_pairs={max_pairs}), the same for every model.")
    preds, have = _gather_predictions(data, runs, split, persistence_dir, notes, extra)
    res = score_split(data, preds, have, notes=notes, segmenter=segmenter, lpips_net=lpips_net,
                      allow_uncalibrated=allow_uncalibrated, compute_lpips=compute_lpips, device=device, n_boot=n_boot,
                      psnr_cap_db=psnr_cap_db, seed=seed, split=split, progress=progress)
    res.labels = model_labels(runs)
    if out_dir is not None:
        meta = {"dataset_dir": str(dataset_dir), "split": split, "lpips_net": lpips_net,
                "lpips_weights": res.lpips_weights, "runs": {k: str(v) for k, v in (runs or {}).items()},
                **({"baselines": extra} if extra else {})}
        res.out_dir = save_results(res, out_dir, meta=meta)
    return res


def score_split(
    data: SplitData,
    preds: Mapping[str, np.ndarray],
    have: Mapping[str, np.ndarray],
    *,
    notes: list[str] | None = None,
    clusters: np.ndarray | None = None,
    segmenter: Any = None,
    lpips_net: str = "alex",
    allow_uncalibrated: bool = False,
    compute_lpips: bool = True,
    device: str = "cpu",
    n_boot: int = 1000,
    psnr_cap_db: float = 100.0,
    seed: int = 0,
    split: str = "test",
    progress: bool = True,
    no_segmenter_note: str | None = None,
) -> EvalResult:
    """Score uint8 images ``preds`` ({name: (N, C, H, W)} aligned with ``data``, persistence included) on the tiles
    of ``data``; ``have[name]`` ((N,) bool) says which tiles a model predicted.

    The arrays may come from a tile store (:func:`evaluate_models`) or be cut from whole images
    (:mod:`stsynth_lib.evaluate.folder`): the metrics, summaries and intervals are the same. Tiles some model did
    not predict are left out of every summary. ``clusters`` ((N,) labels) is what the paired bootstrap resamples;
    default :func:`resampling_clusters` of ``data.pairs``. ``segmenter`` (or None) scores buildings on labelled
    tiles, plus the real future as the upper bound (``no_segmenter_note``: the note said without one). ``notes``
    (appended to) become the result's notes; ``split`` only names the tiles in them. Nothing is written: see :func:`~stsynth_lib.evaluate.report.save_results`.
    """
    from tqdm import tqdm

    notes = [] if notes is None else notes
    common = np.logical_and.reduce([np.asarray(h, bool) for h in have.values()])
    lp = _lpips_metric(lpips_net, allow_uncalibrated, device, seed, notes) if compute_lpips else None
    calibrated = {"lpips": bool(lp.calibrated) if lp is not None else False}
    seg_on = _segmenter_usable(segmenter, data, split, notes, no_segmenter_note)
    base = pd.DataFrame({
        "pair_id": data.pair_ids, "aoi": data.pairs["aoi"].to_numpy(), "gap_months": data.pairs["gap_months"].to_numpy(float),
        "has_mask": data.has_mask,
    })
    base["gap_bucket"] = gap_bucket(base["gap_months"])
    base["cluster"] = resampling_clusters(data.pairs) if clusters is None else np.asarray(clusters).astype(str)
    frames, seg_masks = [], {}
    for name in tqdm(list(preds), desc="scoring models", disable=not progress):
        frames.append(_score_model(name, preds[name], np.asarray(have[name], bool), common, base, data, lp,
                                   segmenter if seg_on else None, device, seg_masks))
    if seg_on:
        frames.append(_score_upper_bound(segmenter, data, base, common, device, seg_masks))
    per_tile = pd.concat(frames, ignore_index=True)
    per_tile["lpips_calibrated"] = calibrated["lpips"]
    summary = summarise(per_tile, n_boot=n_boot, psnr_cap_db=psnr_cap_db, seed=seed, calibrated=calibrated)
    n_inf = int(np.isposinf(per_tile["psnr"]).sum())
    if n_inf:
        notes.append(f"{n_inf} tile(s) match the truth exactly (PSNR = inf); means use {psnr_cap_db:g} dB for them.")
    return EvalResult(per_tile, summary, notes, calibrated, data, dict(preds), dict(have), seg_masks,
                      lpips_weights=lp.description if lp is not None else None)


def resampling_unit(pairs: pd.DataFrame) -> str:
    """``"block"`` for pairs of a dataset split by blocks (``block_row`` / ``block_col`` set), else ``"area"``."""
    return "area" if "block_row" not in pairs or pairs["block_row"].isna().all() else "block"


def resampling_clusters(pairs: pd.DataFrame) -> np.ndarray:
    """What the paired bootstrap resamples: whole areas (AOIs), or, for a dataset split by blocks
    (``split_by: block``, pairs with ``block_row`` / ``block_col``), whole blocks: ``"<aoi>/block-<row>-<col>"``.
    Pairs of one block share their place, so a block is the unit of independent evidence there."""
    aoi = pairs["aoi"].astype(str).to_numpy()
    if resampling_unit(pairs) == "area":
        return aoi
    rows, cols = pairs["block_row"].to_numpy(), pairs["block_col"].to_numpy()
    return np.array([f"{a}/block-{int(r)}-{int(c)}" for a, r, c in zip(aoi, rows, cols)])


def baseline_images(data: SplitData, names: Sequence[str], chunk: int = 256) -> dict[str, np.ndarray]:
    """``{name: uint8 (N, C, H, W)}`` of the simple baselines ``names`` on the pairs of ``data`` (loaded with the
    context offsets they need, :func:`~stsynth_lib.baselines.baseline_offsets`), chunk by chunk."""
    out = {name: np.zeros_like(data.past) for name in names}
    for start in range(0, len(data) if names else 0, chunk):
        fields = data.context_fields(slice(start, start + chunk))
        for name in names:
            out[name][start : start + chunk] = baseline_prediction(name, fields, data.context_offsets)
    return out


def _gather_predictions(data: SplitData, runs, split: str, persistence_dir, notes: list[str],
                        baselines: Sequence[str] = ()):
    """``({name: uint8 images}, {name: which pairs it predicted})`` for persistence, the simple ``baselines`` and
    every model of ``runs``; the persistence "predictions" are written to ``persistence_dir`` (GeoTIFF + PNG) when
    given."""
    from stsynth_lib.predict.files import clear_predictions, save_predictions

    preds: dict[str, np.ndarray] = {PERSISTENCE: data.past.copy(), **baseline_images(data, baselines)}
    have: dict[str, np.ndarray] = {name: np.ones(len(data), bool) for name in preds}
    if persistence_dir is not None and not _same_persistence(persistence_dir, data):
        clear_predictions(persistence_dir)
        save_predictions(persistence_dir, data.past.astype(np.float32) / 127.5 - 1, data.pair_ids, data.pairs["aoi"],
                         data.transform, data.crs)
    for name, (arr, ok) in _load_model_predictions(runs, data, split, notes).items():
        if not ok.all():
            notes.append(f"{name}: predictions for {ok.sum()} of {len(data)} {split} pairs; the summary uses only the tiles every model predicted.")
        preds[name], have[name] = arr, ok
    return preds, have


def _segmenter_usable(segmenter, data: SplitData, split: str, notes: list[str],
                      no_segmenter_note: str | None = None) -> bool:
    if segmenter is None:
        notes.append(no_segmenter_note or "Building F1 skipped: no building segmenter (the training split has no "
                                          "building labels, or none was trained).")
    elif not data.has_mask.any():
        notes.append(f"Building F1 skipped: no {split} pair has building labels (has_mask is False): the data have no building labels.")
    return segmenter is not None and bool(data.has_mask.any())


def _score_model(name, pred, have, common, base, data, lp, segmenter, device, seg_masks) -> pd.DataFrame:
    """One model's per-tile rows: image scores, building scores (when ``segmenter``), NaN where it did not predict."""
    from stsynth_lib.metrics.segmentation import predict_masks

    df = base.copy()
    df.insert(0, "model", name)
    df["predicted"] = have
    df["common"] = common
    for k, v in _score_images(pred, data, lp).items():
        df[k] = v
    if segmenter is not None:
        seg_masks[name] = predict_masks(segmenter, pred, device=device, compile=segmenter_compiles(device))
        seg_past = seg_masks[name] if name == PERSISTENCE else seg_masks.get(PERSISTENCE)  # persistence comes first
        for k, v in _score_buildings(seg_masks[name], data, seg_past).items():
            df[k] = v
    df.loc[~df["predicted"], [c for c in df.columns if c not in base.columns and c not in ("model", "predicted", "common")]] = np.nan
    return df


def _score_upper_bound(segmenter, data, base, common, device, seg_masks) -> pd.DataFrame:
    """The segmenter on the real future images: the building-score upper bound."""
    from stsynth_lib.metrics.segmentation import predict_masks

    seg_masks[UPPER_BOUND] = predict_masks(segmenter, data.future, device=device,
                                            compile=segmenter_compiles(device))
    df = base.copy()
    df.insert(0, "model", UPPER_BOUND)
    df["predicted"] = True
    df["common"] = common
    for k, v in _score_buildings(seg_masks[UPPER_BOUND], data, seg_masks.get(PERSISTENCE)).items():
        df[k] = v
    return df
