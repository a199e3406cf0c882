"""One verdict for the project (stsynth_lib.verdict) and the pages that state it: every "better / worse / not clearly
different" claim of the landing page, the README's results block, results.md and summary.json is what the paired
interval (whole areas or blocks resampled) says, and no page words a verdict another way ("beats")."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from stsynth_lib.book import publish as pub
from stsynth_lib import verdict as V
from stsynth_lib.book.publish.pages import model_name
from stsynth_lib.book.report_format import model_description
from stsynth_lib.evaluate.data import METRICS

ROOT = Path(__file__).resolve().parents[1]
SUMMARIES = sorted((ROOT / "book" / "reference").glob("*/results/summary.json"))
CLAIM_WORDS = {"better": V.BETTER, "worse": V.WORSE, "not clearly different": V.UNCLEAR}


# ------------------------------------------------------------------------------------------------- the rule itself
@pytest.mark.parametrize("lo, hi, hib, want", [
    (0.1, 0.5, True, "better"), (-0.5, -0.1, True, "worse"), (-0.5, 0.1, True, "no clear difference"),
    (-0.5, -0.1, False, "better"), (0.1, 0.5, False, "worse"), (-0.1, 0.5, False, "no clear difference"),
    (0.0, 0.5, True, "no clear difference"),  # touching zero is not clear
    (None, 0.5, True, "no clear difference"), (float("nan"), float("nan"), False, "no clear difference"),
    (0.5, 0.1, True, "better"),  # bounds in either order
])
def test_verdict_reads_the_interval_by_the_metric_direction(lo, hi, hib, want):
    assert V.verdict(lo, hi, hib) == want


def test_metric_directions_match_the_evaluation():
    for metric, (hib, _) in METRICS.items():
        assert V.higher_is_better(metric) is hib, metric


def test_sentence_groups_models_with_the_same_verdicts():
    rows = [{"model": m, "metric": k, "ci_lo": lo, "ci_hi": hi, "n_areas": 7, "unit": "area"}
            for m in ("a", "b") for k, lo, hi in (("psnr", -0.8, 1.2), ("ssim", 0.01, 0.02), ("l1", -0.01, 0.003))]
    rows += [{"model": "c", "metric": k, "ci_lo": lo, "ci_hi": hi, "n_areas": 7, "unit": "area"}
             for k, lo, hi in (("psnr", -3.9, -2.1), ("ssim", -0.3, -0.2), ("l1", 0.02, 0.03))]
    got = V.verdict_sentence(rows, "seasonal", name={"c": "C net"})
    assert got == ("Against `seasonal`, a and b are better on SSIM and not clearly different on PSNR and L1; C net is "
                   "worse on PSNR, SSIM and L1 (95 % paired intervals over 7 test areas, each resampled whole).")
    one = [dict(r, ci_lo=None, ci_hi=None, n_areas=1, unit="block") for r in rows if r["model"] == "a"]
    assert V.verdict_sentence(one, "persistence") == (
        "Against `persistence`, a is not clearly different on PSNR, SSIM and L1 (one test block only: no interval, "
        "so no difference is clear).")
    assert V.verdict_sentence(rows, "persistence", metrics=("lpips",)) == ""


def test_tables_and_sentences_agree_with_the_rule():
    """paired_table's verdict column and the ✔/✘ marks are the rule's words for the same interval."""
    import pandas as pd

    from stsynth_lib.evaluate import paired_table

    rows = pd.DataFrame([{"model": "m", "metric": "lpips", "mean_diff": -0.02, "ci_lo": -0.03, "ci_hi": -0.01,
                          "better": None, "areas_better": 6, "n_areas": 7}])  # a stale flag: the interval decides
    assert paired_table(rows)["verdict"].iloc[0] == "better"
    assert V.mark(rows.iloc[0].to_dict()) == "✔"


# ----------------------------------------------------------------------------- the claims a generated page makes
def _expected(row: dict) -> str:
    """The rule, written again independently of stsynth_lib.verdict."""
    lo, hi = row.get("ci_lo"), row.get("ci_hi")
    if lo is None or hi is None or math.isnan(float(lo)) or math.isnan(float(hi)):
        return V.UNCLEAR
    hib = METRICS[row["metric"]][0]
    good, bad = (lo > 0 and hi > 0, lo < 0 and hi < 0) if hib else (lo < 0 and hi < 0, lo > 0 and hi > 0)
    return V.BETTER if good else V.WORSE if bad else V.UNCLEAR


_WORD = {name: key for key, name in V.METRIC_NAMES.items()}
_M = "|".join(sorted(map(re.escape, _WORD), key=len, reverse=True))
_LIST = rf"(?:{_M})(?:(?:, | and )(?:{_M}))*"
_ONE = rf"(?:better|worse|not clearly different) on {_LIST}"
_VERB = re.compile(rf" (?:is|are) (?P<claims>{_ONE}(?:(?:, | and ){_ONE})*)(?=;| \(|$)")
_CLAIM = re.compile(rf"(better|worse|not clearly different) on ({_LIST})")
_SENTENCE = re.compile(r"Against (?P<base>persistence \([^)]*\)|`[^`]+`|the strongest no-learning baseline "
                       r"\(`[^`]+`[^)]*\)), (?P<body>.*) \((?P<units>[^()]*)\)\.$", re.M)


def _baseline(text: str, summary: dict) -> str:
    if text.startswith("persistence"):
        return "persistence"
    name = re.search(r"`([^`]+)`", text).group(1)
    assert name == (summary.get("strongest_baseline") or {}).get("name", name), text
    return name


def _models_in(segment: str, names: dict[str, str]) -> list[str]:
    """The models a segment ("pix2pix and attention_unet") names, checked to be exactly the joined names."""
    found, at = [], 0
    while at < len(segment):
        hit = min(((segment.find(label, at), -len(label), m) for m, label in names.items()
                   if segment.find(label, at) >= 0), default=None)
        if hit is None:
            break
        found.append((hit[0], hit[2]))
        at = hit[0] - hit[1]
    models = [m for _, m in found]
    assert segment == V.join_words(names[m] for m in models), f"unparsed names: {segment!r}"
    return models


def _name_in(text: str, summary: dict, model: str) -> str:
    """How ``text`` names ``model``: the short name of the pages, or (files written before short names: results.md,
    summary.json's verdict) its long description."""
    long = model_description(model, summary.get("model_labels"))
    return long if long != model_name(summary, model) and long in text else model_name(summary, model)


def verdict_claims(text: str, summary: dict) -> list[tuple[str, str, str, str]]:
    """Every (baseline, model, metric, claimed verdict) stated by the verdict sentences of ``text``."""
    every = {r["model"] for r in summary.get("summary", [])}
    claims = []
    for s in _SENTENCE.finditer(text):
        base, body, at = _baseline(s["base"], summary), s["body"], 0
        names = {m: _name_in(body, summary, m) for m in every}
        for v in _VERB.finditer(body):
            models = _models_in(body[at:v.start()].removeprefix("; "), names)
            for word, metrics in _CLAIM.findall(v["claims"]):
                for metric in re.split(r", | and ", metrics):
                    claims += [(base, m, _WORD[metric], CLAIM_WORDS[word]) for m in models]
            at = v.end()
        assert body[at:] == "", f"unparsed text after the last claim: {body[at:]!r}"
    return claims


def _mark_claims(text: str, summary: dict) -> list[tuple[str, str, str, str]]:
    """The ✔ / ✘ / no-mark cells of the strongest-baseline table."""
    best = (summary.get("strongest_baseline") or {}).get("name")
    lines = [l for l in text.splitlines() if l.startswith("| ")]  # table rows (not the |---| line)
    head = next((l for l in lines if "(higher is better)" in l or "(lower is better)" in l), None)
    if head is None:
        return []
    cols = [c.strip() for c in head.strip("|").split("|")]
    by_label = {f"Δ {lab} ({better} is better)": k for k, lab, _, better in pub.STRONGEST_METRICS}
    models = {r["model"] for r in summary.get("summary", [])}
    names = {**{model_description(m, summary.get("model_labels")): m for m in models},
             **{model_name(summary, m): m for m in models}}  # a row names a model by its short name (older: long)
    out = []
    for line in lines[lines.index(head) + 1:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] not in names:
            break
        for col, cell in zip(cols[1:], cells[1:]):
            if col in by_label and "[" in cell:
                word = V.BETTER if cell.endswith("✔") else V.WORSE if cell.endswith("✘") else V.UNCLEAR
                out.append((best, names[cells[0]], by_label[col], word))
    return out


def _check(text: str, summary: dict, where: str, n_min: int) -> int:
    """Fail when ``text`` states a verdict its paired interval does not support; returns the claims checked."""
    assert not re.search(r"\bbeats?\b|does not beat|intervals apart", text, re.I), \
        f"{where}: a verdict worded outside stsynth_lib.verdict: {re.search(r'.*beat.*', text, re.I)}"
    rows = {(r.get("baseline") or "persistence", r["model"], r["metric"]): r
            for r in summary.get("paired_vs_persistence", [])}
    best = (summary.get("strongest_baseline") or {}).get("name")
    rows.update({(best, r["model"], r["metric"]): r for r in summary.get("paired_vs_strongest_baseline") or []})
    claims = verdict_claims(text, summary) + _mark_claims(text, summary)
    wrong = [f"{m} vs {b} on {k}: page says {said!r}, the interval [{rows[(b, m, k)]['ci_lo']}, "
             f"{rows[(b, m, k)]['ci_hi']}] says {_expected(rows[(b, m, k)])!r}"
             for b, m, k, said in claims if said != _expected(rows[(b, m, k)])]
    assert not wrong, f"{where}:\n" + "\n".join(wrong)
    assert len(claims) >= n_min, f"{where}: {len(claims)} verdicts found, expected at least {n_min}"
    assert len(set(claims)) == len({c[:3] for c in claims}), f"{where}: two verdicts for one comparison"
    return len(claims)


def _section(text: str, start: str, stops: tuple[str, ...]) -> str:
    a = text.index(start)
    ends = [text.find(s, a + len(start)) for s in stops]
    return text[a:min([e for e in ends if e > 0], default=len(text))]


def _n_claims(summary: dict, metrics=V.SENTENCE_METRICS) -> int:
    """How many verdicts the sentences state: every model x metric of ``metrics`` against persistence, and every
    row against the bar."""
    pers = {(r["model"], r["metric"]) for r in summary["paired_vs_persistence"] if r["metric"] in metrics}
    return len(pers) + len(summary.get("paired_vs_strongest_baseline") or [])


# the metrics the landing page and the README state against persistence: the table's, and the new-building ones
PAGE_METRICS = tuple(k for k, *_ in pub.HEADLINE_METRICS) + tuple(k for k, *_ in pub.NEW_BUILDING_METRICS)


@pytest.mark.skipif(not SUMMARIES, reason="no committed reference results")
@pytest.mark.parametrize("path", SUMMARIES, ids=lambda p: p.parent.parent.name)
def test_generated_pages_state_only_what_the_paired_interval_supports(path, tmp_path):
    from stsynth_lib.evaluate import results_markdown

    summary, prof = json.loads(path.read_text()), path.parent.parent.name
    n, n_page = _n_claims(summary), _n_claims(summary, PAGE_METRICS)
    out = pub.stage_book("reference", prof, out=tmp_path / "stage", book_dir=ROOT / "book",
                         reference_root=ROOT / "book" / "reference", params_dir=ROOT / "params")
    landing = _section((out / "intro.md").read_text(), f"## Results: `{prof}`", ("\n## ",))
    n_marks = len(summary.get("paired_vs_strongest_baseline") or [])
    # the sentences, and the marks of the strongest-baseline table
    assert _check(landing, summary, "landing page", n_page) == n_page + n_marks
    block = _section(pub.readme_block(ROOT / "book" / "reference"), f"**`{prof}`**", ("\n**`", pub.README_END))
    assert _check(block, summary, "README block (generated)", n_page) == n_page
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    _check(_section(readme, f"**`{prof}`**", ("\n**`", pub.README_END)), summary, "README.md (committed)", n_page)
    _check(results_markdown(summary), summary, "results.md (generated)", n)
    _check((path.parent / "results.md").read_text(), summary, "results.md (committed)", n)
    _check("\n".join(summary.get("verdict", [])), summary, "summary.json verdict", n)
    # the headline sentence leads the profile's section, above the table
    assert landing.index("**In one sentence:** Against the strongest") < landing.index("| model |")


def test_the_check_catches_a_contradicted_claim():
    summary = {"summary": [{"model": m, "metric": "psnr"} for m in ("persistence", "pix2pix")],
               "paired_vs_persistence": [{"model": "pix2pix", "metric": "psnr", "ci_lo": -0.49, "ci_hi": 1.89,
                                          "n_areas": 7, "unit": "area"}]}
    good = pub.persistence_sentence(summary)
    assert "pix2pix is not clearly different on PSNR" in good and _check(good, summary, "good", 1) == 1
    with pytest.raises(AssertionError, match="page says 'better'"):
        _check(good.replace("not clearly different", "better"), summary, "doctored", 1)
    with pytest.raises(AssertionError, match="outside stsynth_lib.verdict"):
        _check("pix2pix beats persistence on PSNR (95% intervals apart on PSNR).", summary, "old bullets", 0)
