"""What the footprints add (issue 32): each guided model minus its no-mask twin on the same pairs, and the pooled
k-fold table of ``experiments/guidance_kfold`` (every block of a labelled profile tested once).

The differences are :func:`~stsynth_lib.evaluate.stats.paired_vs_baseline` rows (whole areas or blocks resampled),
so :func:`~stsynth_lib.evaluate.stats.paired_table` shows them and :mod:`stsynth_lib.verdict` words them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from stsynth_lib.evaluate.stats import POOLED_RATIOS, paired_vs_baseline

# new-building pixels (L1, PSNR), the share of new buildings the judge sees, and the whole image
GUIDANCE_METRICS = ("l1_new", "psnr_new", "object_recall_new", "psnr")


def _results(results: Mapping | str | Path, fix: str) -> Mapping:
    """A study's results: the mapping itself, or its JSON file read (missing: an error that says ``fix``)."""
    if isinstance(results, Mapping):
        return results
    path = Path(results)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {fix}")
    return json.loads(path.read_text())


def guidance_gain(per_tile: pd.DataFrame, twins: Mapping[str, str], metrics: Sequence[str] = GUIDANCE_METRICS,
                  n_boot: int = 2000, seed: int = 0) -> tuple[pd.DataFrame, list[str]]:
    """``(rows, notes)``: for each ``model -> twin`` of ``twins`` with both scored in ``per_tile``
    (:func:`~stsynth_lib.evaluate.scoring.evaluate_models`), the model minus its twin on ``metrics`` (the metrics
    ``per_tile`` has), pairs matched, blocks or areas resampled; a note for each pair that was not scored."""
    scored = set(per_tile["model"])
    rows, notes = [], []
    for model, twin in twins.items():
        missing = [m for m in (model, twin) if m not in scored]
        if missing:
            notes.append(f"{model} minus its no-mask twin {twin}: not scored ({', '.join(missing)} has no "
                         "predictions; train the twin with nomask_twin in chapter 3 or 4, or "
                         "python -m stsynth_lib.cgan.twin)")
            continue
        have = [m for m in metrics if m in per_tile or m in POOLED_RATIOS and POOLED_RATIOS[m][1] in per_tile]
        both = per_tile[per_tile["model"].isin([model, twin])]
        t = paired_vs_baseline(both, twin, metrics=have, n_boot=n_boot, seed=seed)
        rows.append(t[t["model"] == model])
    return (pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()), notes


def kfold_paired(results: Mapping | str | Path, against: Sequence[str] = ("nomask", "persistence", "seasonal"),
                 metrics: Sequence[str] = GUIDANCE_METRICS) -> pd.DataFrame:
    """The pooled k-fold rows of a ``kfold_guidance.py pool`` results file (or its loaded mapping): per model
    family, the guided model minus each of ``against`` (``nomask``: its no-mask twin), in paired-row form with the
    models named ``<family> (guided)`` and the twin ``<family> (no mask)``."""
    results = _results(results, "run experiments/guidance_kfold/kfold_guidance.py (run, then pool), or set "
                                "kfold_results: null")
    out = []
    for family, res in results.items():
        names = {"guided": f"{family} (guided)", "nomask": f"{family} (no mask)"}
        for base in against:
            rows = pd.DataFrame((res.get("paired") or {}).get(base) or [])
            if rows.empty:
                continue
            rows = rows[(rows["model"] == "guided") & rows["metric"].isin(metrics)].copy()
            rows["model"] = names["guided"]
            rows["baseline"] = names.get(base, base)
            out.append(rows)
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


JUDGE_BAR = {"f1_future": 0.55, "object_recall_new": 0.5}  # issue 32's bar for a judge worth its name


def judge_quality(results: Mapping | str | Path, baseline: str = "judge300") -> pd.DataFrame:
    """How well the building judge sees real buildings, from ``experiments/segmenter``'s results file: the
    ``baseline`` judge at p > 0.5 and the judge the last threshold round chose on validation, on the TEST blocks
    (building F1 on the real future images, object recall of real new buildings) and on the labelled tile of another
    area (``sn7_real_tile``, at p > 0.5: the round scored only the blocks at its threshold), beside the bar."""
    results = _results(results, "run experiments/segmenter/compare_judges.py, or set judge_results: null")
    rows = []
    if baseline in results:
        r = results[baseline]
        rows.append({"judge": f"{baseline} (p > 0.5)", "F1, real future (test)": r["test"]["f1_future"],
                     "object recall, new buildings (test)": r["test"]["object_recall_new"],
                     "F1, another area at p > 0.5": (r.get("real_tile") or {}).get("f1_real_tile")})
    rounds = results.get("threshold_sweep") or []
    if rounds:
        c = rounds[-1]["chosen"]
        other = (results.get(c["judge"]) or {}).get("real_tile") or {}
        rows.append({"judge": f"{c['judge']} (p > {c['threshold']:g}, chosen on validation)",
                     "F1, real future (test)": c["test"]["f1_future"],
                     "object recall, new buildings (test)": c["test"]["object_recall_new"],
                     "F1, another area at p > 0.5": other.get("f1_real_tile")})
    bar = f"the bar (F1 ≥ {JUDGE_BAR['f1_future']:g}, recall ≥ {JUDGE_BAR['object_recall_new']:g})"
    rows.append({"judge": bar, "F1, real future (test)": JUDGE_BAR["f1_future"],
                 "object recall, new buildings (test)": JUDGE_BAR["object_recall_new"],
                 "F1, another area at p > 0.5": None})
    return pd.DataFrame(rows).round(3)


def kfold_report(kfold_results: str | Path | None) -> list[tuple[str, pd.DataFrame | None]]:
    """Chapter 6's k-fold section: ``[(Markdown, paired table or None), ...]``, one table per comparison (guided
    minus its twin, persistence, the seasonal blend), or a note when there is no results file (yet)."""
    from stsynth_lib.evaluate.stats import paired_table

    if not kfold_results:
        return [("> **Note:** no k-fold results for this profile (`kfold_results: null`).", None)]
    if not Path(kfold_results).is_file():
        return [(f"> **Note:** `{kfold_results}` is not there yet: run `experiments/guidance_kfold/kfold_guidance.py` "
                 "(run, then pool) to table the k-fold here.", None)]
    rows = kfold_paired(kfold_results)
    return [(f"**Guided minus {base}**", paired_table(part)) for base, part in rows.groupby("baseline", sort=False)]
