"""Means, bootstrap intervals (over tiles or whole areas) and the verdict against persistence.

Verdicts come from the paired interval over whole areas (or blocks) only, worded by :mod:`stsynth_lib.verdict`;
the intervals over tiles of :func:`summarise` describe a model's mean and never decide."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd

from stsynth_lib import metrics as M
from stsynth_lib.book.report_format import model_display_name
from stsynth_lib.evaluate.data import LPIPS_METRICS, METRICS, PERSISTENCE, UPPER_BOUND, gap_bucket_order
from stsynth_lib.metrics import perceptual as P
from stsynth_lib.verdict import SENTENCE_METRICS, UNCLEAR, as_better, row_verdict, verdict, verdict_sentence

POOLED_F1 = {"f1_micro": ("tp", "fp", "fn"), "f1_new_micro": ("tp_new", "fp_new", "fn_new"),
             "f1_drawn_micro": ("tp_drawn", "fp_drawn", "fn_drawn")}
# pooled ratios sum(numerator) / sum(denominator) over tiles (objects and pixels of different tiles pooled)
POOLED_RATIOS = {"object_recall_new": ("new_objects_drawn", "new_objects"),
                 "unrequested_share": ("unrequested_px", "unbuilt_px")}


def pooled_ratio(values: np.ndarray) -> float:
    """``sum(values[:, 0]) / sum(values[:, 1])`` (NaN when the denominator is 0)."""
    den = float(values[:, 1].sum())
    return float(values[:, 0].sum()) / den if den > 0 else float("nan")


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
            if metric in POOLED_F1:
                cols = list(POOLED_F1[metric])
                if not set(cols) <= set(g.columns):
                    continue
                vals = g[cols].to_numpy(float)
                est, lo, hi, n = M.bootstrap_ci(vals, n_boot, ci, seed, statistic=M.micro_f1)
            elif metric in POOLED_RATIOS:
                cols = list(POOLED_RATIOS[metric])
                if not set(cols) <= set(g.columns):
                    continue
                est, lo, hi, n = M.bootstrap_ci(g[cols].to_numpy(float), n_boot, ci, seed, statistic=pooled_ratio)
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
                  digits: int = 3, labels: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Wide table, models x metrics, cells 'mean [lo, hi]' ("n/a" where a row has no score of that metric); LPIPS
    headers say 'uncalibrated' when they are.
    ``labels`` (``EvalResult.labels`` / summary.json ``model_labels``) renames the rows, e.g. the ControlNet's row
    to "ControlNet [tiny random backbone]" (:func:`stsynth_lib.book.report_format.model_display_name`)."""
    metrics = [m for m in metrics if m in set(summary["metric"])]
    order = [m for m in [PERSISTENCE] + [x for x in summary["model"].unique() if x not in (PERSISTENCE, UPPER_BOUND)] + [UPPER_BOUND]
             if m in set(summary["model"])]
    table = pd.DataFrame(index=order)
    for metric in metrics:
        s = summary[summary["metric"] == metric].set_index("model")
        cal = bool(s["calibrated"].all()) if len(s) else True
        header = P.label(METRICS[metric][1], cal) + (" ↑" if METRICS[metric][0] else " ↓")
        col = []
        for m in order:
            r = s.loc[m] if m in s.index else None
            if r is None or r["mean"] != r["mean"]:  # not scored for this row (the judge's ceiling has no PSNR)
                col.append("n/a")
                continue
            ci = "" if math.isnan(r["ci_lo"]) else f" [{r['ci_lo']:.{digits}f}, {r['ci_hi']:.{digits}f}]"
            col.append(f"{r['mean']:.{digits}f}{ci}")
        table[header] = col
    ns = summary.groupby("model")["n"].max()
    table["tiles"] = [int(ns.get(m, 0)) for m in order]
    if labels is not None:
        table.index = [model_display_name(m, labels) for m in order]
    table.index.name = "model"
    return table


def paired_vs_persistence(per_tile: pd.DataFrame, metrics: Iterable[str] = ("l1", "psnr", "ssim"),
                          cluster: str | None = None, n_boot: int = 2000, ci: float = 0.95, seed: int = 0,
                          psnr_cap_db: float = 100.0) -> pd.DataFrame:
    """Each model minus persistence on the SAME pairs, with an interval that respects the areas:
    :func:`paired_vs_baseline` with ``baseline="persistence"`` (without its ``baseline`` column)."""
    out = paired_vs_baseline(per_tile, PERSISTENCE, metrics, cluster=cluster, n_boot=n_boot, ci=ci, seed=seed,
                             psnr_cap_db=psnr_cap_db)
    return out.drop(columns="baseline", errors="ignore")


def rows_vs_persistence(res, models: Iterable[str], metrics: Iterable[str], n_boot: int = 2000) -> list[dict]:
    """One plain row per model of an evaluation ``res`` (``evaluate_models``): its mean of each metric and
    ``<metric>_minus_persistence`` = [mean difference, interval low, high] on the same pairs, areas resampled
    (:func:`paired_vs_persistence` with ``cluster="cluster"``): the rows the experiments' results files hold."""
    metrics = list(metrics)
    paired = paired_vs_persistence(res.per_tile, metrics=metrics, cluster="cluster", n_boot=n_boot)
    means = res.summary.pivot_table(index="model", columns="metric", values="mean")
    rows = []
    for model in models:
        row = {"model": model}
        for m in metrics:
            row[m] = float(means.loc[model, m])
            d = paired[(paired["model"] == model) & (paired["metric"] == m)].iloc[0]
            row[f"{m}_minus_persistence"] = [float(d["mean_diff"]), float(d["ci_lo"]), float(d["ci_hi"])]
        rows.append(row)
    return rows


def paired_vs_baseline(per_tile: pd.DataFrame, baseline: str = PERSISTENCE,
                       metrics: Iterable[str] = ("l1", "psnr", "ssim"), cluster: str | None = None,
                       n_boot: int = 2000, ci: float = 0.95, seed: int = 0, psnr_cap_db: float = 100.0) -> pd.DataFrame:
    """Each other row of ``per_tile`` (models and the other simple baselines) minus ``baseline`` on the SAME pairs,
    with an interval that respects the areas.

    Tiles of one area (AOI) share its light, season and land cover, so they are not independent:
    a bootstrap over tiles (as in :func:`summarise`) makes intervals too narrow when a model wins
    in some areas and loses in others. Here the difference ``model - baseline`` is computed per
    pair, then whole areas are resampled with replacement (cluster bootstrap); the statistic is the
    mean difference over the pairs of the resampled areas. A model is better than the baseline on a
    metric only when the whole interval is on the good side of zero (``better``: True; the sign of ``mean_diff``
    is model minus baseline whatever the metric, ``better`` reads it by the metric's direction; the rule is
    :func:`stsynth_lib.verdict.verdict`). ``cluster`` names
    the column of the resampled unit: default ``"cluster"`` when present (whole blocks on block-split data, see
    :func:`~stsynth_lib.evaluate.scoring.resampling_clusters`), else ``"aoi"``. Pooled building F1
    (``f1_micro``, ``f1_new_micro``) sums TP/FP/FN over the pairs of the resampled clusters, for the model
    and for the baseline, and takes the difference of the two F1s.

    Returns one row per (model, metric): ``baseline``, ``mean_diff``, ``ci_lo``, ``ci_hi``, ``better`` (True /
    False / None when the interval contains zero), ``areas_better`` (areas whose mean difference
    is on the good side) out of ``n_areas``, and ``n_pairs``.
    """
    df = per_tile[per_tile["common"]] if "common" in per_tile else per_tile
    if baseline not in set(df["model"]):
        raise ValueError(f"baseline {baseline!r} has no rows in per_tile (models: {sorted(set(df['model']))}); "
                         "score it first, e.g. evaluate_models(..., baselines=(...))")
    cluster = cluster or ("cluster" if "cluster" in df else "aoi")
    base = df[df["model"] == baseline].set_index("pair_id")
    unit = "block" if base[cluster].astype(str).str.contains("/block-").any() else "area"
    rows = []
    rng = np.random.default_rng(seed)
    for model, g in df[~df["model"].isin([baseline, UPPER_BOUND])].groupby("model", sort=False):
        g = g.set_index("pair_id")
        common = g.index.intersection(base.index)
        areas = base.loc[common, cluster].to_numpy()
        for metric in metrics:
            if metric in POOLED_F1:
                res = _pooled_f1_diff(g.loc[common], base.loc[common], areas, POOLED_F1[metric], rng, n_boot)
            elif metric in POOLED_RATIOS:
                res = _pooled_diff(g.loc[common], base.loc[common], areas, POOLED_RATIOS[metric], rng, n_boot,
                                   lambda c: np.where(c[..., 1] > 0, c[..., 0] / np.maximum(c[..., 1], 1e-12), np.nan))
            elif metric in g.columns and metric in base.columns:
                res = _mean_diff(g.loc[common, metric], base.loc[common, metric], areas, metric, psnr_cap_db, rng, n_boot)
            else:
                continue
            if res is not None:
                rows.append({"model": model, "baseline": baseline, "metric": metric, **_verdict(metric, *res, ci),
                             "unit": unit})
    return pd.DataFrame(rows)


def strongest_baseline(table: pd.DataFrame, metric: str = "psnr", candidates: Iterable[str] | None = None,
                       psnr_cap_db: float = 100.0) -> str:
    """The name of the best simple baseline (persistence included) on ``metric``, by its mean over the tiles every
    row shares. ``table``: a ``per_tile`` table (rows with ``pair_id``) or a :func:`summarise` table (``metric``,
    ``mean``). ``candidates``: default every simple baseline in the table (``persistence``, ``mean_last_<k>``,
    ``seasonal``)."""
    from stsynth_lib.baselines import is_baseline

    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; one of {sorted(METRICS)}")
    names = [m for m in dict.fromkeys(table["model"]) if (m in set(candidates) if candidates is not None
                                                           else is_baseline(m))]
    if "mean" in table and "metric" in table:  # a summary
        s = table[(table["metric"] == metric) & table["model"].isin(names)].set_index("model")["mean"]
    else:
        df = table[table["common"]] if "common" in table else table
        df = df[df["model"].isin(names)]
        vals = M.finite_psnr(df[metric].to_numpy(float), psnr_cap_db) if metric.startswith("psnr") else df[metric]
        s = pd.Series(np.asarray(vals, float), index=df["model"].to_numpy()).groupby(level=0).mean()
    s = s.dropna()
    if s.empty:
        raise ValueError(f"no simple baseline with {metric!r} scores in the table (rows: {sorted(set(table['model']))})")
    return str(s.idxmax() if METRICS[metric][0] else s.idxmin())


def _mean_diff(a: pd.Series, b: pd.Series, areas: np.ndarray, metric: str, psnr_cap_db: float, rng, n_boot: int):
    """(full-sample mean difference, bootstrap means, per-cluster mean differences, n pairs) or None."""
    a, b = a.to_numpy(float), b.to_numpy(float)
    if metric.startswith("psnr"):
        a, b = M.finite_psnr(a, psnr_cap_db), M.finite_psnr(b, psnr_cap_db)
    d = a - b
    keep = ~np.isnan(d)
    d, ar = d[keep], areas[keep]
    if len(d) == 0:
        return None
    names, inv = np.unique(ar, return_inverse=True)
    sums, counts = np.bincount(inv, weights=d), np.bincount(inv)
    pick = rng.integers(0, len(names), size=(n_boot, len(names)))
    return float(d.mean()), sums[pick].sum(1) / counts[pick].sum(1), sums / counts, len(d)


def _pooled_f1_diff(g: pd.DataFrame, base: pd.DataFrame, areas: np.ndarray, cols, rng, n_boot: int):
    """Pooled F1 (model) - pooled F1 (persistence), clusters resampled whole; None without building scores."""

    def f1(c):  # c: (..., 3) tp, fp, fn
        denom = 2 * c[..., 0] + c[..., 1] + c[..., 2]
        return np.where(denom > 0, 2 * c[..., 0] / np.maximum(denom, 1e-12), np.nan)

    return _pooled_diff(g, base, areas, cols, rng, n_boot, f1)


def _pooled_diff(g: pd.DataFrame, base: pd.DataFrame, areas: np.ndarray, cols, rng, n_boot: int, stat):
    """``stat`` of counts pooled over the resampled clusters (model) minus the same for the baseline; ``stat`` maps
    ``(..., len(cols))`` sums to a score. None without the columns."""
    if not set(cols) <= set(g.columns) or not set(cols) <= set(base.columns):
        return None
    a, b = g[list(cols)].to_numpy(float), base[list(cols)].to_numpy(float)
    keep = ~(np.isnan(a).any(1) | np.isnan(b).any(1))
    a, b, ar = a[keep], b[keep], areas[keep]
    if len(a) == 0:
        return None
    names, inv = np.unique(ar, return_inverse=True)
    per_a = np.stack([np.bincount(inv, weights=a[:, j], minlength=len(names)) for j in range(len(cols))], 1)
    per_b = np.stack([np.bincount(inv, weights=b[:, j], minlength=len(names)) for j in range(len(cols))], 1)
    pick = rng.integers(0, len(names), size=(n_boot, len(names)))
    boots = stat(per_a[pick].sum(1)) - stat(per_b[pick].sum(1))
    boots = boots[~np.isnan(boots)]
    full = float(stat(per_a.sum(0)) - stat(per_b.sum(0)))
    return full, boots, stat(per_a) - stat(per_b), len(a)


def _verdict(metric: str, mean_diff: float, boots: np.ndarray, per_cluster: np.ndarray, n_pairs: int, ci: float) -> dict:
    """Interval, verdict and per-cluster count of one paired comparison (no interval with one cluster)."""
    alpha = (1 - ci) / 2
    k = len(per_cluster)
    lo, hi = np.quantile(boots, [alpha, 1 - alpha]) if k > 1 and len(boots) else (float("nan"), float("nan"))
    higher_better = METRICS[metric][0]
    good = (lambda x: x > 0) if higher_better else (lambda x: x < 0)
    # the project's rule (stsynth_lib.verdict); None: the interval contains zero, or one area only (no interval)
    better = as_better(verdict(lo, hi, higher_better) if k > 1 else UNCLEAR)
    return {"mean_diff": float(mean_diff), "ci_lo": float(lo), "ci_hi": float(hi), "better": better,
            "areas_better": int(np.nansum(good(per_cluster))), "n_areas": k, "n_pairs": n_pairs}


def paired_table(paired: pd.DataFrame, digits: int = 4, unit: str | None = None,
                 labels: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Wide, readable form of :func:`paired_vs_persistence` / :func:`paired_vs_baseline` for the book.

    Accepts the rows as computed or as read back from ``summary.json`` (NaN as null). With one resampled unit there
    is no interval: the cell says "n/a (1 area)" or "n/a (1 block)" instead of printing ``nan``
    (:func:`stsynth_lib.book.report_format.format_interval`). ``unit`` ("area" / "block") overrides the rows' own
    ``unit`` column (rows written before it existed count areas). ``labels`` renames the models as
    :func:`results_table` does."""
    from stsynth_lib.book.report_format import format_interval, plural

    out = []
    for _, r in paired.iterrows():
        word = row_verdict(r)  # from the interval: the project's one rule (stsynth_lib.verdict)
        name = METRICS[r["metric"]][1]
        base = r.get("baseline", PERSISTENCE)
        base = PERSISTENCE if not isinstance(base, str) else base
        lo, hi = (np.nan if v is None else float(v) for v in (r["ci_lo"], r["ci_hi"]))
        n = int(r["n_areas"])
        row_unit = unit or (r["unit"] if isinstance(r.get("unit"), str) else "area")
        interval = format_interval(lo, hi, n, row_unit, digits)
        out.append({"model": r["model"] if labels is None else model_display_name(r["model"], labels), "metric": name + (" ↑" if METRICS[r["metric"]][0] else " ↓"),
                    f"model − {base}": f"{float(r['mean_diff']):+.{digits}f}",
                    "95% interval": interval,
                    "model better in": f"{int(r['areas_better'])} of {plural(n, row_unit)}",
                    "verdict": word})
    return pd.DataFrame(out)


VERDICT_METRICS = SENTENCE_METRICS  # the metrics a verdict sentence names (stsynth_lib.verdict)


def persistence_verdict(paired, labels: Mapping[str, str] | None = None, metrics: Iterable[str] = VERDICT_METRICS,
                        split: str = "test", baseline: str = PERSISTENCE,
                        baseline_text: str | None = None) -> list[str]:
    """The verdict in words: one sentence saying, for every model, on which metrics it is better than ``baseline``,
    worse, or not clearly different (:func:`stsynth_lib.verdict.verdict_sentence`), from the PAIRED rows of
    :func:`paired_vs_persistence` / :func:`paired_vs_baseline` (a DataFrame, or the records of ``summary.json``),
    whose interval resamples whole areas or blocks. ``labels`` names the models as the tables do."""
    if isinstance(paired, pd.DataFrame):
        if len(paired) and "mean_diff" not in paired:
            raise TypeError("persistence_verdict reads paired rows (paired_vs_persistence, or summary.json's "
                            "'paired_vs_persistence'), not the per-tile summary: tile intervals never decide")
        paired = paired.to_dict("records")
    rows = list(paired or [])
    default = "persistence (the past image as the prediction)" if baseline == PERSISTENCE else None
    sentence = verdict_sentence(rows, baseline, baseline_text=baseline_text or default,
                                name=lambda m: model_display_name(m, labels) if labels is not None else m,
                                metrics=metrics, split=split)
    if sentence:
        return [sentence]
    return [f"No model was paired with {baseline}: the table shows the baselines only."]


def paired_gain_by_gap(per_tile: pd.DataFrame, baselines: Iterable[str], metric: str = "psnr",
                       models: Iterable[str] | None = None, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Where a model's gain comes from: ``model - baseline`` on ``metric`` for every baseline of ``baselines`` and
    every time-gap bucket (``gap_bucket`` column of ``per_tile``), each with :func:`paired_vs_baseline`'s interval
    (whole areas or blocks resampled within the bucket). ``models`` None: every row that is not a baseline of the
    list. Columns: ``model, baseline, gap_bucket, mean_diff, ci_lo, ci_hi, better, areas_better, n_areas,
    n_pairs``; buckets in time order."""
    baselines = list(dict.fromkeys(baselines))
    df = per_tile[per_tile["common"]] if "common" in per_tile else per_tile
    wanted = set(models) if models is not None else set(df["model"]) - set(baselines)
    order = [b for b in gap_bucket_order() if b in set(df["gap_bucket"])]
    rows = []
    for base in baselines:
        for bucket in order:
            g = df[df["gap_bucket"] == bucket]
            g = g[g["model"].isin(wanted | {base})]
            if base not in set(g["model"]) or len(set(g["model"])) < 2:
                continue
            t = paired_vs_baseline(g, base, metrics=(metric,), n_boot=n_boot, seed=seed)
            rows.append(t.assign(gap_bucket=bucket))
    if not rows:
        return pd.DataFrame(columns=["model", "baseline", "gap_bucket", "mean_diff", "ci_lo", "ci_hi", "better",
                                     "areas_better", "n_areas", "n_pairs"])
    out = pd.concat(rows, ignore_index=True)
    keep = [c for c in ("model", "baseline", "gap_bucket", "mean_diff", "ci_lo", "ci_hi", "better", "areas_better",
                        "n_areas", "n_pairs") if c in out]
    return out[keep]


def paired_gain_by_area(per_tile: pd.DataFrame, baselines: Iterable[str], metric: str = "psnr",
                        models: Iterable[str] | None = None) -> pd.DataFrame:
    """Whether a gain is broad or carried by a few areas: per model, baseline and area (``aoi``), the mean over the
    area's pairs of ``model - baseline`` on ``metric``, with the area's persistence level on it (how stable the
    area is: a high persistence PSNR leaves little to gain and much to lose). ``models`` None: every row that is not
    a baseline of the list or persistence. Columns: ``model, baseline, aoi, mean_diff, persistence, n_pairs``."""
    from stsynth_lib.evaluate.data import PERSISTENCE

    baselines = list(dict.fromkeys(baselines))
    df = per_tile[per_tile["common"]] if "common" in per_tile else per_tile
    wide = df.pivot_table(index=["aoi", "pair_id"], columns="model", values=metric)
    wanted = [m for m in (models if models is not None else wide.columns)
              if m in wide.columns and m not in baselines and m != PERSISTENCE]
    columns = ["model", "baseline", "aoi", "mean_diff", "persistence", "n_pairs"]
    if PERSISTENCE not in wide.columns or not wanted:
        return pd.DataFrame(columns=columns)
    level = wide[PERSISTENCE].groupby("aoi").mean()
    rows = []
    for base in (b for b in baselines if b in wide.columns):
        for m in wanted:
            diff = (wide[m] - wide[base]).dropna().groupby("aoi")
            rows.append(pd.DataFrame({"model": m, "baseline": base, "mean_diff": diff.mean(),
                                      "n_pairs": diff.size()}).rename_axis("aoi").reset_index())
    out = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=columns)
    out["persistence"] = out["aoi"].map(level)
    return out[columns]



def short_area_names(names: Iterable[str]) -> dict[str, str]:
    """``{name: short name}`` for figures and tables: a SpaceNet 7 area id without its tile suffix
    ("L15-0434E-1218N_1736_3318_13" -> "L15-0434E-1218N", a block keeps its "/block-r-c"), where the short names stay
    unique; otherwise every name as it is."""
    import re

    names = [str(n) for n in dict.fromkeys(names)]
    short = {n: re.sub(r"^([^_/]+)_[^/]*", r"\1", n) for n in names}
    return short if len(set(short.values())) == len(short) else {n: n for n in names}


def gain_by_area_table(table: pd.DataFrame, metric: str = "psnr", labels: Mapping[str, str] | None = None,
                       digits: int = 2) -> pd.DataFrame:
    """The book's table beside :func:`~stsynth_lib.evaluate.figures.plot_gain_by_area`, narrow enough for the page:
    one row per (model, area), models in their order and areas from the least stable (lowest persistence) up, as
    in the figure; columns: the area's persistence level and ``model − <baseline>`` per baseline, rounded to
    ``digits``. Areas by :func:`short_area_names`, models by their short names (``labels``). Every number of a
    :func:`paired_gain_by_area` table is in it."""
    unit = METRICS.get(metric, (None, metric))[1]
    level = table.groupby("aoi")["persistence"].first().sort_values(kind="stable")
    short = short_area_names(level.index)
    wide = table.pivot_table(index=["model", "aoi"], columns="baseline", values="mean_diff", sort=False)
    models, bases = list(dict.fromkeys(table["model"])), list(dict.fromkeys(table["baseline"]))
    wide = wide.reindex(pd.MultiIndex.from_product([models, list(level.index)])).dropna(how="all")[bases]
    out = pd.DataFrame({f"area's persistence {unit}": level.reindex(wide.index.get_level_values(1)).to_numpy()},
                       index=wide.index)
    for b in bases:
        out[f"model − {b}"] = wide[b].to_numpy()
    out.index = pd.MultiIndex.from_arrays(
        [[model_display_name(m, labels) if labels is not None else m for m in wide.index.get_level_values(0)],
         [short[a] for a in wide.index.get_level_values(1)]], names=["model", "area"])
    return out.round(digits)
