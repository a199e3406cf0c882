"""What evaluation writes and shows: results files, galleries, metric-vs-gap curves, FID/KID tables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from stsynth_lib.book.report_format import model_display_name, model_legend_markdown, plural, short_model_name, wrap_name
from stsynth_lib.evaluate.data import (
    CHANGE_METRICS,
    LPIPS_METRICS,
    METRICS,
    MODEL_MARKERS,  # noqa: F401 (re-exported: the figures' markers)
    PERSISTENCE,
    EvalResult,
    _load_model_predictions,
    gap_bucket,
    gap_bucket_order,
    load_split,
    model_labels,
    model_style,
)
from stsynth_lib.evaluate.stats import (
    paired_table,
    paired_vs_persistence,
    persistence_verdict,
    results_table,
    summarise,
)
from stsynth_lib.metrics import perceptual as P
from stsynth_lib.verdict import strongest_baseline_text, verdict_sentence
from stsynth_lib.figure_check import BOOK_WIDTH_IN, checked, show_mask


def save_results(res: EvalResult, out_dir: str | Path, meta: Mapping[str, Any] | None = None,
                 header: str | None = None, resample_unit: str | None = None) -> Path:
    """Write per_tile.csv, summary.csv, summary.json, paired_vs_persistence.csv and results.md atomically under
    ``out_dir``. ``header`` (markdown, optional) opens results.md: what was scored; ``resample_unit`` says what the
    paired interval resampled (default: whole blocks or whole areas, read from the clusters). results.md is
    :func:`results_markdown` of summary.json: its verdicts are the paired interval's (:mod:`stsynth_lib.verdict`)."""
    from stsynth_lib.runs import atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "per_tile.csv", res.per_tile.to_csv(index=False))
    atomic_write_text(out / "summary.csv", res.summary.to_csv(index=False))
    labels = dict(res.labels or {})
    by_block = "cluster" in res.per_tile and bool(res.per_tile["cluster"].astype(str).str.contains("/block-").any())
    unit = resample_unit or ("whole blocks (the dataset is split by blocks)" if by_block else "whole areas (AOIs)")
    paired = _paired(res.per_tile)
    atomic_write_text(out / "paired_vs_persistence.csv", paired.to_csv(index=False))
    payload = {
        **dict(meta or {}),
        "n_pairs": len(res.data),
        "n_common_tiles": int(res.per_tile.loc[res.per_tile["model"] == PERSISTENCE, "common"].sum()),
        "calibrated": res.calibrated,
        "notes": res.notes,
        "summary": json.loads(res.summary.to_json(orient="records")),
        "paired_vs_persistence": json.loads(paired.to_json(orient="records")),
        "paired_resamples": unit,
        "model_labels": labels,  # a model's long description (a ControlNet: which backbone produced it, how sampled)
        # the short name tables and legends show (report_format.short_model_name), the description once in a legend
        "model_names": {m: short_model_name(m, labels) for m in labels},
        "results_header": header,  # opens results.md, which is rewritten from this file (record_strongest_baseline)
    }
    _write_summary_and_results(out, payload)
    return out


def verdicts(payload: Mapping[str, Any]) -> list[str]:
    """The verdict sentences of a summary.json payload: every model against persistence and, once chapter 6 recorded
    it, against the strongest simple baseline; paired intervals only (:func:`stsynth_lib.verdict.verdict_sentence`)."""
    labels = dict(payload.get("model_labels") or {})
    split = payload.get("split") or "test"
    out = persistence_verdict(payload.get("paired_vs_persistence") or [], labels, split=split)
    best = (payload.get("strongest_baseline") or {}).get("name")
    if best:
        line = verdict_sentence(payload.get("paired_vs_strongest_baseline") or [], best,
                                baseline_text=strongest_baseline_text(
                                    best, payload["strongest_baseline"].get("chosen_on", "val")),
                                name=lambda m: model_display_name(m, labels), split=split)
        out += [line] if line else []
    return out


def results_markdown(payload: Mapping[str, Any]) -> str:
    """results.md from a summary.json payload alone: the header, the table over tiles, the verdicts (paired
    intervals), the notes, the change-aware table and the paired tables with persistence and the strongest
    baseline."""
    summary = pd.DataFrame(payload.get("summary") or [])
    for c in ("mean", "ci_lo", "ci_hi"):
        if c in summary:
            summary[c] = summary[c].astype(float)
    labels = dict(payload.get("model_labels") or {})
    unit = payload.get("paired_resamples", "whole areas (AOIs)")
    header = payload.get("results_header")
    text = (header.rstrip() + "\n\n" if header else "")
    if len(summary):
        text += _md(results_table(summary, labels=labels)) + "\n\n"
        legend = model_legend_markdown(list(dict.fromkeys(summary["model"])), labels)
        text += (legend + "\n\n") if legend else ""
    text += "\n".join(f"- {v}" for v in verdicts(payload) + list(payload.get("notes") or [])) + "\n"
    change = [m for m in CHANGE_METRICS if m in set(summary["metric"])] if len(summary) else []
    if change:
        text += ("\nChange-aware pixel scores (labelled pairs only): new-building pixels (built at t1, not at t0), "
                 "changed pixels (footprint differs) and unchanged pixels:\n\n"
                 + _md(results_table(summary, change, labels=labels)) + "\n")
    paired = pd.DataFrame(payload.get("paired_vs_persistence") or [])
    if len(paired):
        text += (f"\nPaired with persistence on the same pairs, 95 % interval from resampling {unit}:\n\n"
                 + _md(paired_table(paired, labels=labels).set_index("model")) + "\n")
    best, rows = (payload.get("strongest_baseline") or {}).get("name"), payload.get("paired_vs_strongest_baseline")
    if best and rows:
        bar = strongest_baseline_text(best, payload["strongest_baseline"].get("chosen_on", "val"))
        text += (f"\nPaired with {bar} on the same pairs, 95 % interval from resampling {unit}:\n\n"
                 + _md(paired_table(pd.DataFrame(rows), labels=labels).set_index("model")) + "\n")
    return text


def _write_summary_and_results(out: Path, payload: dict) -> None:
    """summary.json (with its verdict sentences) and results.md, both from ``payload``, atomically."""
    from stsynth_lib.runs import atomic_write_text

    payload["verdict"] = verdicts(payload)
    atomic_write_text(out / "summary.json", json.dumps(payload, indent=2, allow_nan=True))
    atomic_write_text(out / "results.md", results_markdown(payload))


def record_strongest_baseline(out_dir: str | Path, baseline: str, paired: pd.DataFrame | None, *,
                              chosen_on: str = "val", chosen_by: str = "psnr") -> dict:
    """Add the comparison with the strongest simple baseline to ``out_dir/summary.json`` (atomically), so the
    results file that the book and the README read holds it: ``strongest_baseline`` = {name, chosen_on,
    chosen_by} and ``paired_vs_strongest_baseline`` = the rows of :func:`~stsynth_lib.evaluate.stats.paired_vs_baseline`
    (model minus that baseline on the same test pairs); results.md is rewritten with its verdict and table.
    ``baseline`` must have been chosen on ``chosen_on``, never on the split that summary.json scores. Returns the
    updated payload."""
    path = Path(out_dir) / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: write it first with evaluate_models(..., out_dir={out_dir!s})")
    payload = json.loads(path.read_text())
    if chosen_on == payload.get("split"):
        raise ValueError(f"the strongest baseline must be chosen on another split than the scored one "
                         f"({payload.get('split')!r}): choose it on validation")
    rows = [] if paired is None or not len(paired) else json.loads(pd.DataFrame(paired).to_json(orient="records"))
    payload["strongest_baseline"] = {"name": baseline, "chosen_on": chosen_on, "chosen_by": chosen_by}
    payload["paired_vs_strongest_baseline"] = rows
    _write_summary_and_results(Path(out_dir), payload)
    return payload


def _paired(per_tile: pd.DataFrame) -> pd.DataFrame:
    """Model minus persistence: the headline metrics, then (a second draw, so the first rows do not move) the
    change-aware ones that were scored."""
    has = [m for m in ("lpips",) + CHANGE_METRICS if m in per_tile and bool(per_tile[m].notna().any())]
    cluster = "cluster" if "cluster" in per_tile else "aoi"
    paired = paired_vs_persistence(per_tile, metrics=("l1", "psnr", "ssim") + (("lpips",) if "lpips" in has else ()),
                                   cluster=cluster)
    change = [m for m in CHANGE_METRICS if m in has]
    change += [m for m, cols in (("f1_micro", "tp"), ("f1_new_micro", "tp_new"), ("f1_drawn_micro", "tp_drawn"))
               if cols in per_tile and bool(per_tile[cols].notna().any())]  # pooled building F1 (segmenter)
    if not change:
        return paired
    extra = paired_vs_persistence(per_tile, metrics=change, cluster=cluster)
    return pd.concat([paired, extra], ignore_index=True) if len(extra) else paired


def _md(table: pd.DataFrame) -> str:
    return table.to_markdown() if _has_tabulate() else table.to_string()


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401

        return True
    except ImportError:
        return False


# --------------------------------------------------------------------------- figures


def rgb_image(img_uint8: np.ndarray) -> np.ndarray:
    """(C, H, W) uint8 -> (H, W, 3) for imshow (the first three bands)."""
    return np.asarray(img_uint8)[:3].transpose(1, 2, 0)


def gallery(res: EvalResult, model: str, metric: str = "lpips", title: str | None = None):
    """Best, median and worst tiles of ``model`` by ``metric``: past | future mask (labelled pairs only) | generated |
    truth | error map."""
    import matplotlib.pyplot as plt

    df = res.per_tile[(res.per_tile["model"] == model) & res.per_tile["common"]].dropna(subset=[metric])
    if df.empty:
        raise ValueError(f"no scored tile for model {model!r} and metric {metric!r}")
    hib = METRICS[metric][0]
    df = df.sort_values(metric, ascending=not hib).reset_index(drop=True)
    picks = [("best", df.iloc[0]), ("median", df.iloc[len(df) // 2]), ("worst", df.iloc[-1])]
    index = {int(p): i for i, p in enumerate(res.data.pair_ids)}
    cal = res.calibrated.get("lpips", True) if metric in LPIPS_METRICS else True
    shown = model_display_name(model, res.labels) if res.labels else model
    labelled = any(bool(res.data.has_mask[index[int(row["pair_id"])]]) for _, row in picks)  # else no mask column
    n_cols = 5 if labelled else 4
    side = (BOOK_WIDTH_IN - 1.9) / n_cols  # 1.9 in: the (horizontal) row labels and the colour bar
    fig, axes = plt.subplots(3, n_cols, figsize=(BOOK_WIDTH_IN, 3 * (side + 0.1) + 1.4), layout="constrained")
    for r, (tag, row) in enumerate(picks):
        i = index[int(row["pair_id"])]
        pred = res.predictions[model][i]
        truth = res.data.future[i]
        err = np.abs(pred.astype(float) - truth.astype(float)).mean(0) / 255.0
        invalid = res.data.valid[i, 0] == 0
        err = np.ma.masked_where(invalid, err)
        panels = ([(rgb_image(res.data.past[i]), "past")]
                  + ([(res.data.future_mask[i, 0], "future buildings" if res.data.has_mask[i] else "no labels")]
                     if labelled else [])
                  + [(rgb_image(pred), wrap_name(shown, 16)), (rgb_image(truth), "truth"),
                     (err, "|error|\n(invalid masked)")])
        for c, (img, t) in enumerate(panels):
            ax = axes[r, c]
            if c == n_cols - 1:
                im = ax.imshow(img, cmap="magma", vmin=0, vmax=0.5)
            elif img.ndim == 2:
                show_mask(ax, img)
            else:
                ax.imshow(img)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(t, fontsize=9)
        axes[r, 0].set_ylabel(f"{tag}\n{wrap_name(P.label(METRICS[metric][1], cal), 10)}\n= {row[metric]:.3f}\n"
                              f"gap {plural(round(float(row['gap_months'])), 'month')}", fontsize=9, rotation=0,
                              ha="right", va="center")  # horizontal: a rotated label is hard to read
    fig.colorbar(im, ax=axes[:, n_cols - 1], fraction=0.05)
    fig.suptitle(title or f"{wrap_name(shown, 40)}:\nbest / median / worst tiles by {P.label(METRICS[metric][1], cal)}",
                 fontsize=11)
    return checked(fig)


def plot_metric_vs_gap(res_or_per_tile, metric: str = "psnr", n_boot: int = 300, seed: int = 0, calibrated: bool | None = None, ax=None,
                       labels: Mapping[str, str] | None = None, legend: bool = True):
    """Mean metric per time-gap bucket, one line per model incl. persistence (named by ``labels``, default an
    EvalResult's own): persistence dashed black with its 95% bootstrap band, every other model a colour and a marker
    of its own, without a band; ``legend``: False leaves the legend to the caller (several panels:
    :func:`stsynth_lib.evaluate.figures.plot_metrics_vs_gap` draws one, under the panels)."""
    import matplotlib.pyplot as plt

    per_tile = res_or_per_tile.per_tile if isinstance(res_or_per_tile, EvalResult) else res_or_per_tile
    if labels is None and isinstance(res_or_per_tile, EvalResult) and res_or_per_tile.labels:
        labels = res_or_per_tile.labels
    if calibrated is None:
        calibrated = bool(per_tile["lpips_calibrated"].iloc[0]) if metric in LPIPS_METRICS and "lpips_calibrated" in per_tile else True
    s = summarise(per_tile, n_boot=n_boot, seed=seed, by="gap_bucket", calibrated={"lpips": calibrated})
    s = s[s["metric"] == metric]
    order = [b for b in gap_bucket_order() if b in set(s["gap_bucket"])]
    if ax is None:
        _, ax = plt.subplots(figsize=(6.8, 3.8))
    others = [m for m in dict.fromkeys(s["model"]) if m != PERSISTENCE]
    for model, g in s.groupby("model", sort=False):
        g = g.set_index("gap_bucket").reindex(order)
        x = np.arange(len(order))
        name = model if labels is None else model_display_name(model, labels)
        if model == PERSISTENCE:  # the reference: its band only (seven overlapping bands read as one blob)
            ax.plot(x, g["mean"], marker="o", ls="--", color="k", label=name, zorder=3)
            ax.fill_between(x, g["ci_lo"], g["ci_hi"], alpha=0.15, color="k", lw=0)
            continue
        j = others.index(model)  # a colour and marker each, points a little apart so equal means stay visible
        ax.plot(x + (j - (len(others) - 1) / 2) * 0.04, g["mean"], label=name, **model_style(model))
    ax.set_xticks(np.arange(len(order)), order)
    ax.set_xlabel("time gap t1 - t0 (months)")
    ax.set_ylabel(P.label(METRICS[metric][1], calibrated))
    ax.set_title(f"{P.label(METRICS[metric][1], calibrated)} vs time gap (mean; grey: persistence's 95% CI)",
                 fontsize=10)
    if legend:
        ax.legend(fontsize=9)
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
    feat = P.InceptionFeatures(allow_uncalibrated=allow_uncalibrated, device=device, seed=seed)
    if feat.calibrated:
        notes.append(f"FID/KID weights: {feat.source}; computed by torchmetrics (FrechetInceptionDistance, KernelInceptionDistance).")
    else:
        notes.append(f"FID/KID are {P.UNCALIBRATED}: no FID Inception weights in the torch hub cache, the project cache (make weights) "
                     "or the package index, so a seeded random Inception was used. "
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
            notes.append(skipped_buckets_note(skipped, min_bucket_pairs))
    for bucket, sel in groups:
        for name, f in feats.items():
            n = int(sel.sum())
            if n < 2:
                continue
            kid, kid_std = P.kid_from_features(f[sel], real[sel], kid_subset_size, kid_subsets, seed)
            rows.append({"model": name, "gap_bucket": bucket, "n": n, "fid": P.fid_from_features(f[sel], real[sel]),
                         "kid": kid, "kid_std": kid_std, "calibrated": feat.calibrated, "weights": feat.source})
    table = pd.DataFrame(rows)
    labels = model_labels(runs)
    if len(table) and labels:  # the name the FID table shows (a ControlNet: which backbone produced it)
        table["label"] = [model_display_name(m, labels) for m in table["model"]]
    kid_note = negative_kid_note(table)
    if kid_note:
        notes.append(kid_note)
    if len(real) < 2048:
        notes.append(f"n = {len(real)} < 2048 (the feature dimension): FID is biased upwards at this size and only comparable "
                     "between rows with the same n; KID (unbiased) is the headline.")
    if out_dir is not None:
        from stsynth_lib.runs import atomic_write_text

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "fid.csv", table.to_csv(index=False))
        atomic_write_text(out / "fid.json", json.dumps({"dataset_dir": str(dataset_dir), "split": split, "calibrated": feat.calibrated,
                                                         "weights": feat.source, "notes": notes, "model_labels": labels,
                                                         "rows": json.loads(table.to_json(orient="records"))}, indent=2))
    return table, notes, feat.calibrated


def skipped_buckets_note(skipped: list[str], min_pairs: int) -> str:
    """The note on gap buckets too small for FID: "... fewer than 20 pairs: 1 month." / "...: 1, 2-3 months."."""
    months = "month" if list(skipped) == ["1"] else "months"
    return f"No FID for gap buckets with fewer than {plural(min_pairs, 'pair')}: {', '.join(skipped)} {months}."


def negative_kid_note(table: pd.DataFrame) -> str:
    """A note for a FID/KID table (:func:`fid_report`) with a KID below 0: the unbiased estimator can come out
    negative when the two sets are close, and such a value reads as 0 within its spread (± one standard deviation
    over subsets); "" when no KID is negative. Names the rows, and says which negative ones lie further than two
    standard deviations from 0 (then the sets are small or the subsets few: not a real "better than identical")."""
    if table is None or not len(table) or "kid" not in table:
        return ""
    neg = table[table["kid"] < 0]
    if neg.empty:
        return ""
    name = lambda r: r["label"] if "label" in r and pd.notna(r["label"]) else r["model"]  # noqa: E731
    gaps = lambda b: "all gaps" if b == "all" else f"{b} month" + ("" if str(b) == "1" else "s")  # noqa: E731
    rows = [f"{name(r)} ({gaps(r['gap_bucket'])}: "
            f"{r['kid'] * 1000:.2f} ± {r['kid_std'] * 1000:.2f})" for _, r in neg.head(4).iterrows()]
    more = f" and {len(neg) - 4} more" if len(neg) > 4 else ""
    far = neg[neg["kid"] < -2 * neg["kid_std"]]
    tail = ("" if far.empty else f" {plural(len(far), 'negative value')} lie more than two standard deviations below "
            "0: too few tiles or subsets for KID to separate these sets, not a model better than the real images.")
    return (f"KID x1000 is below 0 in {plural(len(neg), 'row')}, e.g. {'; '.join(rows)}{more}. KID is an unbiased "
            "estimate (squared MMD with the diagonal terms left out), so it can come out below 0 when the two sets "
            "are close: read such a value as 0 within its spread (± one standard deviation over subsets), i.e. "
            f"these images cannot be told from the real ones at this size.{tail}")


def weights_line(what: str, source: str | None, notes: Iterable[str] = ()) -> str:
    """``"LPIPS weights: <source>"`` to print beside a table, or "" when one of the ``notes`` shown above already
    names ``source`` (a page names its weights once)."""
    if source and any(str(source) in str(n) for n in notes):
        return ""
    return f"{what} weights: {source or 'not computed'}"


def fid_table(table: pd.DataFrame, calibrated: bool) -> pd.DataFrame:
    """FID/KID table for the book: one row per (model, time-gap bucket), three narrow columns (KID x1000 as
    mean ± std, FID, n), headers labelled 'uncalibrated' when so. Long rather than wide, so the page never cuts it
    off; the Inception weights are printed next to it (``table["weights"]``). Models are named by the table's
    ``label`` column where :func:`fid_report` wrote one (a ControlNet: "ControlNet [<backbone>]")."""
    order = [b for b in ["all"] + gap_bucket_order() if b in set(table["gap_bucket"])]
    order += [b for b in table["gap_bucket"].unique() if b not in order]
    t = table.copy()
    t["_b"] = t["gap_bucket"].map({b: i for i, b in enumerate(order)})
    t["_m"] = t["model"].map({m: i for i, m in enumerate(t["model"].unique())})
    t = t.sort_values(["_m", "_b"])
    kid = P.label("KID x1000", calibrated) + " ↓"
    fid = P.label("FID", calibrated) + " ↓"
    out = pd.DataFrame({
        "model": (t["label"].fillna(t["model"]) if "label" in t else t["model"]).to_numpy(),
        "time gap (months)": t["gap_bucket"].astype(str).to_numpy(),
        kid: [f"{k * 1000:.2f} ± {s * 1000:.2f}" for k, s in zip(t["kid"], t["kid_std"])],
        fid: [f"{v:.2f}" for v in t["fid"]],
        "n": t["n"].astype(int).to_numpy(),
    })
    return out.set_index(["model", "time gap (months)"])


def prediction_dirs(runs_dir: str | Path, profile: str, models: Iterable[str], split: str = "test") -> dict[str, Path]:
    """``{model: runs/<profile>/<model>/predictions/<split>}`` (folders may not exist: evaluate_models notes it).

    ``models`` may also be one comma-separated string (``papermill -p models pix2pix,controlnet``). A name ending in
    ``_sample_mean`` (``controlnet_sample_mean``) is the per-pixel mean of that run's samples,
    ``runs/<profile>/controlnet/predictions/<split>_sample_mean`` (chapter 5's ``test_sample_mean``).
    """
    from stsynth_lib.predict.split import SAMPLE_MEAN_SUFFIX

    if isinstance(models, str):
        models = [m.strip(" '\"") for m in models.strip("[]").split(",") if m.strip(" '\"")]
    out = {}
    for m in models:
        run, mean = (m[: -len(SAMPLE_MEAN_SUFFIX)], SAMPLE_MEAN_SUFFIX) if m.endswith(SAMPLE_MEAN_SUFFIX) else (m, "")
        out[m] = Path(runs_dir) / profile / run / "predictions" / (split + mean)
    return out
