"""The results tables and sentences of the generated pages, formatted from a ``summary.json`` written by chapter 6
(never typed): the headline table and its caption, the model legend, the strongest-baseline section and the verdict
sentences. :mod:`stsynth_lib.book.publish.pages` puts them on the landing page and in the README."""

from __future__ import annotations

import math

from stsynth_lib.book.report_format import model_description, short_model_name
from stsynth_lib.verdict import MARK_LEGEND, mark, strongest_baseline_text, verdict_sentence

README_START = "<!-- results-table:start -->"
README_END = "<!-- results-table:end -->"
# (summary.json metric key, column label, digits of the mean, digits of the paired difference)
HEADLINE_METRICS = (("psnr", "PSNR dB", 2, 2), ("ssim", "SSIM", 3, 4), ("lpips", "LPIPS", 3, 4))
PERSISTENCE = "persistence"
NOT_A_PREDICTOR = ("real_future",)  # the segmenter's ceiling: no image metrics


# ------------------------------------------------------------------------------------------------- results tables
def _fmt(v, digits: int, sign: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"


def _missing(v) -> bool:
    """A value summary.json leaves out: null, or NaN (json.dumps writes NaN for rows that did not pass pandas)."""
    return v is None or (isinstance(v, float) and math.isnan(v))


def _units(rows: list[dict]) -> str:
    """The resampled unit of these paired rows: "area" or "block" (rows carry it; older files: areas)."""
    return next((r["unit"] for r in rows if r.get("unit")), "area")


def _no_interval(row: dict) -> str:
    """What a paired cell shows instead of an interval when one unit (area or block) was resampled."""
    n, unit = row.get("n_areas") or 1, row.get("unit") or "area"
    return f"n/a ({n} {unit}{'s' if n != 1 else ''})"


def _delta_cell(row: dict | None, digits: int, verdict: bool = False) -> str:
    """A paired row as "+0.31 [+0.12, +0.49]" ("n/a (1 area)" in place of a missing interval); ``verdict`` adds the
    row's mark (:func:`stsynth_lib.verdict.mark`: ✔ better, ✘ worse, none: no clear difference)."""
    if row is None:
        return "n/a"
    diff = _fmt(row["mean_diff"], digits, True)
    if _missing(row.get("ci_lo")) or _missing(row.get("ci_hi")):
        return f"{diff} {_no_interval(row)}"
    tick = f" {mark(row)}" if verdict and mark(row) else ""
    return f"{diff} [{_fmt(row['ci_lo'], digits, True)}, {_fmt(row['ci_hi'], digits, True)}]{tick}"


def _model_order(summary: dict) -> list[str]:
    present = []
    for r in summary.get("summary", []):
        if r["model"] not in present and r["model"] not in NOT_A_PREDICTOR and r["metric"] in ("psnr", "ssim", "lpips"):
            present.append(r["model"])
    order = [PERSISTENCE] + list(summary.get("baselines", [])) + list(summary.get("runs", {}))
    return [m for m in order if m in present] + [m for m in present if m not in order]


def model_name(summary: dict, model: str) -> str:
    """The short name a results row and a sentence show: summary.json's ``model_names`` entry, else
    :func:`stsynth_lib.book.report_format.short_model_name` of its ``model_labels`` entry (summaries written before
    short names were recorded: "ControlNet (tiny, from scratch)" for the ~140-character label), "ControlNet (backbone
    not recorded)" for a ControlNet of an older summary, else the model's name. The long description is printed once,
    in :func:`model_legend` under the table."""
    recorded = (summary.get("model_names") or {}).get(model)
    return str(recorded) if recorded else short_model_name(model, summary.get("model_labels"))


def model_legend(summary: dict) -> str:
    """The legend table under the results table: each short name whose model has a longer description (chapter 6's
    ``model_labels``: which backbone, how it was sampled), once; "" when no name needs one."""
    labels = summary.get("model_labels") or {}
    rows = {model_name(summary, m): model_description(m, labels) for m in _model_order(summary)}
    rows = {k: v for k, v in rows.items() if k != v}
    if not rows:
        return ""
    return "\n".join(["| model (as in the tables) | what it is |", "|---|---|"]
                     + [f"| {k} | {v.replace('|', '/')} |" for k, v in rows.items()])


def lpips_calibrated(summary: dict) -> bool:
    rows = [r for r in summary.get("summary", []) if r["metric"] == "lpips"]
    cal = summary.get("calibrated", {})
    cal = cal.get("lpips", True) if isinstance(cal, dict) else cal  # older files: one flag for every metric
    return bool(cal) and all(r.get("calibrated", True) for r in rows)


def headline_table(summary: dict) -> str:
    """The headline tables of the landing page (:func:`headline_tables`), the scores, then after a blank line the
    differences to persistence."""
    return "\n\n".join(headline_tables(summary))


def headline_tables(summary: dict) -> tuple[str, str]:
    """The headline tables of the landing page and the README (Markdown, from a summary.json; the evaluation's
    own wide table is :func:`stsynth_lib.evaluate.results_table`), two of them so that each fits the page's column:
    the scores (every model, persistence and baseline; n pairs; PSNR, SSIM, LPIPS [95 % CI over tiles]) and the
    paired difference of each to persistence [95 % CI, resampling summary["paired_resamples"]]."""
    rows = {(r["model"], r["metric"]): r for r in summary.get("summary", [])}
    paired = {(r["model"], r["metric"]): r for r in summary.get("paired_vs_persistence", [])
              if r.get("baseline", PERSISTENCE) in (PERSISTENCE, None)}
    cal = lpips_calibrated(summary)
    labels = [(k, lab + (" (uncalibrated)" if k == "lpips" and not cal else ""), d, dd)
              for k, lab, d, dd in HEADLINE_METRICS]
    models = _model_order(summary)
    scores = _table(["model", "n pairs"] + [lab for _, lab, _, _ in labels])
    deltas = _table(["model"] + [f"Δ {lab} vs persistence" for _, lab, _, _ in labels])
    for m in models:
        ns = {rows[(m, k)]["n"] for k, *_ in labels if (m, k) in rows}
        cells = [model_name(summary, m), "/".join(str(n) for n in sorted(ns)) or "n/a"]
        for k, _, d, _ in labels:
            r = rows.get((m, k))
            if r is None or _missing(r.get("mean")):
                cells.append("n/a")
            elif _missing(r.get("ci_lo")) or _missing(r.get("ci_hi")):
                cells.append(f"{_fmt(r['mean'], d)} (no interval)")
            else:
                cells.append(f"{_fmt(r['mean'], d)} [{_fmt(r['ci_lo'], d)}, {_fmt(r['ci_hi'], d)}]")
        scores.append("| " + " | ".join(cells) + " |")
        if m != PERSISTENCE:  # the reference row of the differences would be all "(reference)"
            deltas.append("| " + " | ".join([model_name(summary, m)] + [_delta_cell(paired.get((m, k)), dd)
                                                                        for k, _, _, dd in labels]) + " |")
    return "\n".join(scores), "\n".join(deltas)


def _table(head: list[str]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]


STRONGEST_METRICS = (("psnr", "PSNR dB", 2, "higher"), ("ssim", "SSIM", 4, "higher"), ("l1", "L1", 4, "lower"))


def strongest_baseline_section(summary: dict) -> str:
    """Markdown: each learned model minus the strongest simple baseline (chosen on validation by chapter 6 and
    recorded in summary.json), paired on the same test pairs; "" when summary.json has no such comparison."""
    info = summary.get("strongest_baseline")
    rows = summary.get("paired_vs_strongest_baseline") or []
    if not info:
        return ""
    name = info["name"]
    head = (f"**The bar: the strongest simple baseline, `{name}`** (no learning; chosen by "
            f"{info.get('chosen_by', 'psnr').upper()} on the `{info.get('chosen_on', 'val')}` split, never on test). "
            f"Model − `{name}` on the same test pairs [95 % interval, resampling "
            f"{summary.get('paired_resamples', 'whole areas (AOIs)')}]; a model is better than the bar on a metric "
            f"only when the whole interval is on the good side of zero:")
    models = list(dict.fromkeys(r["model"] for r in rows if r["model"] != name))
    if not models:
        return head + "\n\nNo learned model was scored against it.\n"
    by = {(r["model"], r["metric"]): r for r in rows}
    cols = ["model"] + [f"Δ {lab} ({better} is better)" for _, lab, _, better in STRONGEST_METRICS] + [f"{_units(rows)}s better (PSNR)"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for m in models:
        cells = [model_name(summary, m)]
        for k, _, d, _ in STRONGEST_METRICS:
            cells.append(_delta_cell(by.get((m, k)), d, verdict=True))
        p = by.get((m, "psnr"))
        cells.append(f"{p.get('areas_better', 'n/a')} of {p.get('n_areas', 'n/a')}" if p else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    return head + "\n\n" + "\n".join(lines) + f"\n\n{MARK_LEGEND}.\n"


# the new-building scores a labelled profile leads with: (metric, column label, digits of the paired difference)
NEW_BUILDING_METRICS = (("l1_new", "Δ new-building L1", 4), ("psnr_new", "Δ new-building PSNR dB", 2),
                        ("f1_new_micro", "Δ new-building F1", 3))
UPPER_BOUND = "real_future"


def new_building_sentence(summary: dict) -> str:
    """What the footprints are for, in one sentence (labelled profiles only): every model and baseline against
    persistence on the pixels that are building in the future footprints and were not at the past date (paired
    interval decides); "" when the run scored no new-building pixels."""
    return verdict_sentence(summary.get("paired_vs_persistence") or [], PERSISTENCE,
                            baseline_text="persistence (on new-building pixels: footprint at the future date, "
                                          "not at the past one)",
                            name=lambda m: model_name(summary, m), metrics=[k for k, *_ in NEW_BUILDING_METRICS],
                            split=summary.get("split", "test"))


def new_building_section(summary: dict) -> str:
    """Markdown that a labelled profile's results open with: :func:`new_building_sentence` and a table of each row
    minus persistence on new-building pixels [paired interval], beside the share of requested new buildings that
    the judge (chapter 6's segmenter) sees in it, with the real future image as the ceiling; "" without labels."""
    sentence = new_building_sentence(summary)
    if not sentence:
        return ""
    paired = {(r["model"], r["metric"]): r for r in summary.get("paired_vs_persistence", [])
              if r.get("baseline", PERSISTENCE) in (PERSISTENCE, None)}
    recall = {r["model"]: r for r in summary.get("summary", []) if r["metric"] == "object_recall_new"}
    models = [m for m in _model_order(summary) if m != PERSISTENCE and any((m, k) in paired for k, *_ in
                                                                            NEW_BUILDING_METRICS)]
    # each no-mask twin right under its guided model: the pair of rows shows what the footprints add
    twins = {m: f"{m}_nomask" for m in models if f"{m}_nomask" in models}
    models = [x for m in models if m not in twins.values() for x in (m, twins.get(m)) if x]
    lines = _table(["model"] + [lab for _, lab, _ in NEW_BUILDING_METRICS] + ["new buildings the judge sees"])

    def seen(m):
        r = recall.get(m)
        return "n/a" if r is None or _missing(r.get("mean")) else f"{100 * r['mean']:.0f} %"

    for m in [PERSISTENCE] + models + ([UPPER_BOUND] if UPPER_BOUND in recall else []):
        if m in (PERSISTENCE, UPPER_BOUND):
            cells = ["(reference)" if m == PERSISTENCE else "n/a"] * len(NEW_BUILDING_METRICS)
        else:
            cells = [_delta_cell(paired.get((m, k)), d, verdict=True) for k, _, d in NEW_BUILDING_METRICS]
        name = "real future (the judge's ceiling)" if m == UPPER_BOUND else model_name(summary, m)
        lines.append("| " + " | ".join([name] + cells + [seen(m)]) + " |")
    return "\n".join([f"**New buildings first (what the footprints ask for).** {sentence}", "", *lines, "",
                      f"Δ = row − persistence on the same pairs [95 % interval, resampling "
                      f"{summary.get('paired_resamples', 'whole areas (AOIs)')}]; lower L1, higher PSNR and F1 are "
                      f"better; {MARK_LEGEND}. *New buildings the judge sees*: requested new footprints of which "
                      f"the building segmenter of chapter 6 calls at least half the pixels building, pooled over "
                      f"the test pairs.", ""])


def headline_sentence(summary: dict) -> str:
    """The profile's result in one sentence: every learned model against the strongest simple baseline, in the
    words of :func:`stsynth_lib.verdict.verdict_sentence` (the paired interval decides); "" without that
    comparison."""
    info = summary.get("strongest_baseline")
    if not info:
        return ""
    name = info["name"]
    return verdict_sentence(summary.get("paired_vs_strongest_baseline") or [], name,
                            baseline_text=strongest_baseline_text(name, info.get("chosen_on", "val")),
                            name=lambda m: model_name(summary, m), metrics=[k for k, *_ in STRONGEST_METRICS],
                            split=summary.get("split", "test"))


def persistence_sentence(summary: dict) -> str:
    """Every model and simple baseline against persistence in one sentence (the paired interval decides)."""
    # the metrics of the table of differences above it: no verdict on a metric the reader cannot find in a table
    # (new-building F1 has its own sentence and table: new_building_section)
    metrics = [k for k, *_ in HEADLINE_METRICS]
    return verdict_sentence(summary.get("paired_vs_persistence") or [], PERSISTENCE,
                            baseline_text="persistence (the past image as the prediction)",
                            name=lambda m: model_name(summary, m), metrics=metrics, split=summary.get("split", "test"))


def table_caption(summary: dict) -> str:
    unit = summary.get("paired_resamples", "whole areas (AOIs)")
    n_units = sorted({r.get("n_areas") for r in summary.get("paired_vs_persistence", []) if r.get("n_areas")})
    units = (f" ({'/'.join(str(n) for n in n_units)} unit{'s' if n_units != [1] else ''})" if n_units else "")
    cal = "" if lpips_calibrated(summary) else (" LPIPS is **uncalibrated** (random backbone): it ranks these rows "
                                                "and means nothing outside this table.")
    weights = f" LPIPS weights: {summary['lpips_weights']}." if summary.get("lpips_weights") else ""
    split = summary.get("split", "test")
    one = _units(summary.get("paired_vs_persistence", []))
    return (f"Split `{split}`, {summary.get('n_pairs', 'n/a')} {split} pairs. Scores: mean "
            f"[95 % bootstrap interval over tiles]; n pairs = tiles scored. Δ = model − persistence on the same "
            f"pairs [95 % interval, resampling {unit}{units}; \"n/a (1 {one})\" = one {one} resampled, no interval]. "
            f"Higher is better for PSNR and SSIM, lower for LPIPS.{weights}{cal}")
