"""One verdict for the whole project: is a model better than a baseline, worse, or not clearly different?

The decision rule: model − baseline on the same test pairs, with a 95 % interval from resampling the project's unit
(whole areas, or whole blocks on block-split data: :func:`stsynth_lib.evaluate.stats.paired_vs_baseline`). A model
is **better** on a metric only when the whole interval lies on the metric's good side of zero, **worse** when it lies
wholly on the bad side; otherwise (the interval contains zero, or one resampled unit gave no interval) there is
**no clear difference**. Intervals over tiles never decide: tiles of one area share its light and land cover.

Every page that states a verdict words it here: the landing page and the README's results block
(:mod:`stsynth_lib.book.publish`), ``results.md`` and ``python -m stsynth_lib.evaluate``
(:mod:`stsynth_lib.evaluate.report`), chapter 6, and the ✔ / ✘ marks of the tables.

* :func:`verdict` -- "better" / "worse" / "no clear difference" from an interval and the metric's direction;
* :func:`row_verdict` / :func:`mark` -- the same for one paired row (``metric``, ``ci_lo``, ``ci_hi``);
* :func:`strongest_baseline_text` -- how a sentence names the bar (the strongest simple baseline);
* :func:`verdict_sentence` -- "Against `seasonal`, pix2pix and attention_unet are better on SSIM and not clearly
  different on PSNR and L1 (...)": one sentence for every model paired with one baseline.

Standard library only: the light book environment (no numpy, pandas or torch) runs it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping

BETTER, WORSE, UNCLEAR = "better", "worse", "no clear difference"
VERDICTS = (BETTER, WORSE, UNCLEAR)
MARKS = {BETTER: "✔", WORSE: "✘", UNCLEAR: ""}
MARK_LEGEND = "✔ better, ✘ worse, no mark: no clear difference (the interval contains zero)"
# how a sentence words each verdict ("pix2pix is better on SSIM and not clearly different on PSNR")
CLAUSES = {BETTER: "better on", WORSE: "worse on", UNCLEAR: "not clearly different on"}
# the metrics a sentence names, in this order, and the short names it gives them
SENTENCE_METRICS = ("psnr", "ssim", "lpips", "l1", "f1_micro", "f1_new_micro")
METRIC_NAMES = {"psnr": "PSNR", "ssim": "SSIM", "lpips": "LPIPS", "l1": "L1", "f1_micro": "building F1",
                "f1_new_micro": "new-building F1", "l1_new": "new-building L1", "psnr_new": "new-building PSNR"}
_LOWER_IS_BETTER = ("l1", "lpips", "unrequested")  # every L1 and LPIPS variant; PSNR, SSIM, F1, IoU, recall: higher


def higher_is_better(metric: str) -> bool:
    """The direction of a metric of :data:`stsynth_lib.evaluate.data.METRICS`: False for L1 and LPIPS (and their
    changed / unchanged / new-building variants) and the share of buildings drawn where none was asked for, True
    for the others."""
    return not str(metric).startswith(_LOWER_IS_BETTER)


def as_number(v) -> float | None:
    """A bound as a float, or None when missing (None, NaN, text)."""
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


def verdict(low, high, higher_is_better: bool) -> str:
    """The project's decision rule on one paired interval of model − baseline: ``"better"`` when the whole interval
    is on the good side of zero (above it when higher is better, below it otherwise), ``"worse"`` when it is wholly
    on the bad side, else ``"no clear difference"`` (the interval touches or contains zero, or is missing: one
    resampled unit gives none)."""
    lo, hi = as_number(low), as_number(high)
    if lo is None or hi is None:
        return UNCLEAR
    lo, hi = min(lo, hi), max(lo, hi)
    good, bad = (lo > 0, hi < 0) if higher_is_better else (hi < 0, lo > 0)
    return BETTER if good else WORSE if bad else UNCLEAR


def row_verdict(row: Mapping) -> str:
    """:func:`verdict` of one paired row (as computed or read back from ``summary.json``: ``metric``, ``ci_lo``,
    ``ci_hi``); the row's own ``better`` flag is not read, the interval decides."""
    return verdict(row.get("ci_lo"), row.get("ci_hi"), higher_is_better(row["metric"]))


def as_better(word: str) -> bool | None:
    """The ``better`` column of paired rows: True (better), False (worse), None (no clear difference)."""
    return {BETTER: True, WORSE: False}.get(word)


def mark(row: Mapping) -> str:
    """"✔", "✘" or "" for a paired row (:data:`MARK_LEGEND`)."""
    return MARKS[row_verdict(row)]


def join_words(items: Iterable[str]) -> str:
    """"A", "A and B", "A, B and C"."""
    items = list(items)
    if len(items) < 2:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def clause(verdicts: Mapping[str, str]) -> str:
    """``{metric: verdict}`` as words: "better on SSIM and not clearly different on PSNR and L1"."""
    parts = []
    for v in VERDICTS:
        names = [METRIC_NAMES.get(m, m) for m, w in verdicts.items() if w == v]
        if names:
            parts.append(f"{CLAUSES[v]} {join_words(names)}")
    return join_words(parts)


def strongest_baseline_text(name: str, chosen_on: str = "val") -> str:
    """How a verdict sentence names the bar: "the strongest no-learning baseline (`seasonal`, chosen on the
    validation split)"."""
    split = {"val": "the validation split"}.get(chosen_on, f"the `{chosen_on}` split")
    return f"the strongest no-learning baseline (`{name}`, chosen on {split})"


def _units_note(rows: list[Mapping], split: str) -> str:
    n = max((int(r["n_areas"]) for r in rows if as_number(r.get("n_areas")) is not None), default=None)
    unit = next((r["unit"] for r in rows if isinstance(r.get("unit"), str) and r["unit"]), "area")
    if n is None:
        return "95 % paired intervals"
    if n == 1:
        return f"one {split} {unit} only: no interval, so no difference is clear"
    return f"95 % paired intervals over {n} {split} {unit}s, each resampled whole"


def verdict_sentence(rows: Iterable[Mapping], baseline: str, *, baseline_text: str | None = None,
                     name: Callable[[str], str] | Mapping[str, str] | None = None,
                     metrics: Iterable[str] = SENTENCE_METRICS, split: str = "test") -> str:
    """One sentence for every model paired with ``baseline``: "Against `seasonal`, pix2pix and attention_unet are
    better on SSIM and not clearly different on PSNR and L1; controlnet is worse on PSNR, SSIM and L1 (95 % paired
    intervals over 7 test areas, each resampled whole)."

    ``rows``: paired rows of model − baseline (``model``, ``metric``, ``ci_lo``, ``ci_hi``, ``n_areas``, ``unit``;
    rows naming another ``baseline`` are skipped). Models with the same verdicts share a clause, in the order of
    their first row. ``baseline_text`` words the baseline (default: its name in backticks); ``name`` gives the name a
    model shows (a function or a mapping; default the model's own name). "" when no row compares a model with it."""
    metrics = list(metrics)
    rows = [r for r in rows if r.get("baseline") in (None, baseline) and r["model"] != baseline
            and r["metric"] in metrics]
    if not rows:
        return ""
    shown = name if callable(name) else (lambda m, d=dict(name or {}): d.get(m, m))
    by_model: dict[str, dict[str, str]] = {}
    for r in sorted(rows, key=lambda r: metrics.index(r["metric"])):
        by_model.setdefault(r["model"], {})[r["metric"]] = row_verdict(r)
    groups: dict[tuple, list[str]] = {}
    for m in dict.fromkeys(r["model"] for r in rows):
        groups.setdefault(tuple(by_model[m].items()), []).append(m)
    parts = [f"{join_words(shown(m) for m in models)} {'is' if len(models) == 1 else 'are'} {clause(dict(key))}"
             for key, models in groups.items()]
    return f"Against {baseline_text or f'`{baseline}`'}, {'; '.join(parts)} ({_units_note(rows, split)})."
