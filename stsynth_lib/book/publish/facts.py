"""What a published run can and cannot show, and the glossary of the landing page: both generated from the run's own
files (``summary.json``, ``fid.json``, the executed chapters' outputs), never typed. Standard library only (the light
book environment runs it).

* :func:`run_facts` -- labels (building F1 scored or not), cloud masks (chapter 1's scan of the SpaceNet 7 tree),
  the split (unseen areas or blocks), the diffusion row's backbone, FID/KID: each a fact with the file it came from;
* :func:`capabilities_section` -- "What `<profile>` can and cannot show", Markdown, from :func:`run_facts`;
* :func:`glossary_section` -- persistence, the simple baselines the runs scored, the metrics, and how large a
  difference matters (1 dB of PSNR in error terms; the width of this run's paired intervals).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

from stsynth_lib.book.publish.stamp import read_nb
from stsynth_lib.book.report_format import is_controlnet, model_description, short_model_name
from stsynth_lib.verdict import as_number, join_words

UDM_MISSING = re.compile(r"missing UDM_masks/ in (all|\d+ of \d+) AOIs")
SCAN_HEADER = re.compile(r"SpaceNet 7 tree at .*: (\d+) AOIs?\b")
F1_METRICS = ("f1_micro", "f1_new_micro")


def _outputs_text(nb: Mapping) -> str:
    """Every stream and plain-text output of an executed notebook, joined."""
    parts = []
    for cell in nb.get("cells", []):
        for o in cell.get("outputs", []) or []:
            t = o.get("text")
            if t is None:
                t = (o.get("data") or {}).get("text/plain", "")
            parts.append("".join(t) if isinstance(t, list) else str(t))
    return "\n".join(parts)


def cloud_masks(nb_dir: str | Path) -> tuple[str, str]:
    """("none" | "some" | "all" | "unknown", the evidence): whether the SpaceNet 7 tree chapter 1 scanned had UDM
    (cloud) masks, read from the scan report that chapter 1 prints (``missing UDM_masks/ in ... AOIs``)."""
    nbs = sorted(Path(nb_dir).glob("01_*.ipynb"))
    if not nbs:
        return "unknown", "no chapter 1 in this run"
    text = _outputs_text(read_nb(nbs[0]))
    if not SCAN_HEADER.search(text):
        return "unknown", f"{nbs[0].name} prints no scan report"
    m = UDM_MISSING.search(text)
    if m is None:
        return "all", f"{nbs[0].name}: no AOI lacks UDM_masks/"
    return ("none" if m.group(1) == "all" else "some"), f"{nbs[0].name}: {m.group(0)}"


def has_metric(summary: Mapping, metric: str) -> bool:
    """summary.json has a scored (numeric) row of ``metric`` (e.g. ``f1_micro``: the run had building labels)."""
    return any(r.get("metric") == metric and as_number(r.get("mean")) is not None for r in summary.get("summary", []))


def run_facts(summary: Mapping, nb_dir: str | Path | None = None, fid: Mapping | None = None) -> dict:
    """The facts of one run that decide what its pages can show, each read from a file:

    * ``building_f1`` / ``new_building_f1``: summary.json has scored rows of ``f1_micro`` / ``f1_new_micro``
      (``new_building_px``: of ``l1_new``, the pixel scores on new buildings, which need labels but no segmenter)
      (the building segmenter needs labels); ``f1_note``: summary.json's note on why F1 was skipped, if any;
    * ``clouds``: :func:`cloud_masks` of the run's chapter 1 ("none", "some", "all", "unknown") and its evidence;
    * ``unit`` / ``n_units``: what the paired intervals resample (area: the test areas are unseen in training;
      block: test blocks inside areas that also trained the models) and how many;
    * ``diffusion``: ``[(short name, description)]`` of the ControlNet rows (summary.json ``model_labels``);
    * ``fid_n``: the pairs per model of chapter 7's FID/KID (``fid.json``), None without it.
    """
    paired = list(summary.get("paired_vs_persistence") or []) + list(summary.get("paired_vs_strongest_baseline") or [])
    labels = summary.get("model_labels") or {}
    clouds, evidence = cloud_masks(nb_dir) if nb_dir is not None else ("unknown", "no notebooks given")
    fid_rows = [r for r in (fid or {}).get("rows", []) if r.get("gap_bucket", "all") == "all"]
    models = list(summary.get("runs") or {})
    return {
        "split": summary.get("split", "test"),
        "n_pairs": summary.get("n_pairs"),
        "building_f1": has_metric(summary, "f1_micro"),
        "new_building_f1": has_metric(summary, "f1_new_micro"),
        "new_building_px": has_metric(summary, "l1_new"),
        "f1_note": next((n for n in summary.get("notes") or [] if "F1" in n and "skip" in n.lower()), None),
        "clouds": clouds,
        "clouds_evidence": evidence,
        "unit": next((r["unit"] for r in paired if r.get("unit")), "area"),
        "n_units": max((r.get("n_areas") or 0 for r in paired), default=0) or None,
        "diffusion": [(short_model_name(m, labels), model_description(m, labels)) for m in models if is_controlnet(m)],
        "fid_n": sorted({r["n"] for r in fid_rows if r.get("n")}) or None,
        "lpips_calibrated": all(r.get("calibrated", True) for r in summary.get("summary", [])
                                if r.get("metric") == "lpips"),
    }


def _plural(n, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def capabilities_section(profile: str, facts: Mapping, data_kind: str | None = None) -> str:
    """Markdown: what the run of ``profile`` can show and what it cannot, from :func:`run_facts`."""
    can, cannot = [], []
    n_pairs = facts.get("n_pairs") or "n/a"
    units = facts.get("n_units")
    if data_kind == "synthetic":
        cannot.append("how well the models work on real imagery: these are **synthetic** images, the numbers show "
                      "that the pipeline runs")
    if facts["unit"] == "block":
        can.append(f"image scores on {n_pairs} {facts['split']} pairs from held-out blocks"
                   + (f" ({_plural(units, 'block')})" if units else "")
                   + " of areas whose other blocks trained the models")
        cannot.append("how the models do on places never seen in training (the split is by block inside each area)")
    else:
        can.append(f"image scores (PSNR, SSIM, LPIPS, L1) on {n_pairs} {facts['split']} pairs from "
                   + (_plural(units, "area") if units else "areas") + " unseen in training, each resampled whole")
    if facts["building_f1"]:
        can.append("building F1: whether a building segmenter finds the buildings on the generated images"
                   + (", new buildings included" if facts["new_building_f1"] else ""))
        if not facts["new_building_f1"]:
            cannot.append("new-building F1 (no scored new-building rows in summary.json)")
    else:
        cannot.append("building F1 or new-building scores: no building labels, so no segmenter"
                      + (f" (summary.json: \"{facts['f1_note']}\")" if facts.get("f1_note") else ""))
        cannot.append("whether footprint guidance helps: without labels the models' guidance is the dates and the "
                      "earlier months alone, with no footprints")
    clouds = facts["clouds"]
    if clouds == "none":
        cannot.append("scores on cloud-free pixels: the tree has no UDM (cloud) masks "
                      f"({facts['clouds_evidence']}), so clouds and haze in the past image or in the truth count in "
                      "every score")
    elif clouds == "some":
        cannot.append(f"cloud-free scores everywhere: some areas have no UDM masks ({facts['clouds_evidence']}); "
                      "their clouds count in the scores")
    elif clouds == "all":
        can.append("scores on cloud-free pixels: every area has UDM masks, and masked pixels are left out of "
                   "losses and scores")
    else:
        cannot.append(f"whether clouds were masked: not recorded ({facts['clouds_evidence']})")
    # one line per kind of backbone, naming every diffusion row of that kind (a model and its sample mean share one);
    # the description itself is printed once, in the legend of the table
    kinds: dict[str, list[str]] = {}
    for short, desc in facts["diffusion"]:
        low = desc.lower()
        kind = ("unrecorded" if "not recorded" in low else
                "scratch" if any(w in low for w in ("from scratch", "random")) else "pretrained")
        kinds.setdefault(kind, []).append(f"`{short}`")
    if "unrecorded" in kinds:
        cannot.append(f"which backbone the diffusion rows {join_words(kinds['unrecorded'])} used: not recorded in "
                      "summary.json")
    if "scratch" in kinds:
        verb = "use" if len(kinds["scratch"]) > 1 else "uses"
        cannot.append(f"what a pretrained Stable Diffusion would do: {join_words(kinds['scratch'])} {verb} no "
                      "pretrained weights (see the legend under the results table)")
    if "pretrained" in kinds:
        can.append(f"a ControlNet on a pretrained backbone: {join_words(kinds['pretrained'])} (see the legend under "
                   "the results table)")
    if facts["fid_n"]:
        can.append(f"FID and KID on {'/'.join(map(str, facts['fid_n']))} test pairs per model (chapter 7); FID at "
                   "this size is biased upwards and only comparable between rows of the same size")
    else:
        cannot.append("FID or KID: no `fid.json` (chapter 7) in this run")
    if not facts["lpips_calibrated"]:
        cannot.append("LPIPS comparable with published values: its backbone is random (uncalibrated)")
    out = [f"**`{profile}`** can show:", ""] + [f"- {c}" for c in can] + ["", "It cannot show:", ""]
    out += [f"- {c}" for c in cannot] + [""]
    return "\n".join(out)


BASELINE_WORDS = {
    "persistence": "the past image, unchanged, as the prediction (\"nothing changes\"); every Δ column is measured "
                   "against it",
    "seasonal": "per pixel, the average of the past image and the image of the same month one year before the "
                "target (where that month exists, is not after the past date and is valid; else the past image): "
                "no learning",
}


MODEL_WORDS = {
    "pix2pix": "a conditional GAN (chapter 3): U-Net generator and PatchGAN discriminator, trained on this run's "
               "train split",
    "attention_unet": "the same cGAN with attention gates on the U-Net's skip connections (chapter 4)",
}


def _baseline_words(name: str) -> str | None:
    if name in BASELINE_WORDS:
        return BASELINE_WORDS[name]
    m = re.fullmatch(r"mean_last_(\d+)", name)
    if m:
        k = int(m.group(1))
        return (f"per pixel, the mean of the last {k} months up to the past date (t0, t0 − 1, ..., t0 − {k - 1}; "
                "invalid pixels and missing months left out; the past image where none is valid): no learning")
    return None


def _half_widths(rows, metric: str) -> list[float]:
    out = []
    for r in rows:
        lo, hi = as_number(r.get("ci_lo")), as_number(r.get("ci_hi"))
        if r.get("metric") == metric and lo is not None and hi is not None:
            out.append((hi - lo) / 2)
    return out


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def scale_sentence(profile: str, summary: Mapping) -> str:
    """How large a PSNR difference is in ``profile``'s run: the typical half-width of its paired PSNR intervals and
    the strongest baseline's gain over persistence (from summary.json); "" when it has neither."""
    paired = list(summary.get("paired_vs_persistence") or [])
    vs_bar = list(summary.get("paired_vs_strongest_baseline") or [])
    widths = _half_widths(vs_bar or paired, "psnr")
    bits = []
    if widths:
        spread = (f" (from ±{min(widths):.2f} to ±{max(widths):.2f} dB across the rows)"
                  if max(widths) > 2 * min(widths) else "")
        bits.append(f"the median paired PSNR interval is ±{_median(widths):.2f} dB wide{spread}; a difference "
                    "smaller than its row's interval cannot be told apart from chance")
    bar = (summary.get("strongest_baseline") or {}).get("name")
    gain = next((r for r in paired if r.get("model") == bar and r.get("metric") == "psnr"), None)
    if gain and as_number(gain.get("mean_diff")) is not None:
        bits.append(f"the strongest simple baseline, `{bar}`, is {gain['mean_diff']:+.2f} dB from persistence")
    return f"In `{profile}`, " + "; ".join(bits) + "." if bits else ""


def glossary_section(summaries: Mapping[str, Mapping]) -> str:
    """The landing page's glossary (Markdown): the baselines the runs scored, the metrics, and how large a
    difference matters, with each run's own yardstick (:func:`scale_sentence`)."""
    names = ["persistence"]
    for s in summaries.values():
        names += [b for b in s.get("baselines") or [] if b not in names]
    rows = [(f"`{n}`", w) for n in names if (w := _baseline_words(n))]
    learned = list(dict.fromkeys(m for s in summaries.values() for m in s.get("runs") or {}))
    rows += [(f"`{m}`", MODEL_WORDS[m]) for m in learned if m in MODEL_WORDS]
    db_rmse = 1 - 10 ** (-1 / 20)
    db_mse = 1 - 10 ** (-1 / 10)
    rows += [
        ("PSNR (dB)", "peak signal-to-noise ratio, 10·log10(1 / mean squared error) on images in [0, 1], over the "
                      "valid pixels; higher is better"),
        ("SSIM", "structural similarity (local means, contrasts and correlations), 1 = identical; higher is better"),
        ("L1", "mean absolute pixel error on images in [0, 1]; lower is better"),
        ("LPIPS", "perceptual distance: how far apart a pretrained network's (AlexNet's) features of the two images "
                  "are; lower is better"),
        ("FID", "Fréchet Inception distance between the sets of generated and real future images (Inception "
                "features), not per image; lower is better; biased upwards at small sizes"),
        ("KID", "kernel Inception distance: the same comparison, unbiased, so it can come out slightly below zero "
                "when the two sets cannot be told apart at that size; lower is better"),
        ("Δ and [interval]", "model − baseline on the same pairs with a 95 % interval from resampling whole areas "
                             "(or blocks): better or worse only when the whole interval is on one side of zero"),
    ]
    lines = ["## Glossary", "", "| term | meaning |", "|---|---|"] + [f"| {t} | {m} |" for t, m in rows]
    lines += ["", f"**How large a difference matters.** +1 dB of PSNR means a root-mean-square error "
                  f"{100 * db_rmse:.0f} % lower (mean squared error {100 * db_mse:.0f} % lower); +0.1 dB is "
                  f"{100 * (1 - 10 ** (-0.1 / 20)):.1f} % less error."]
    for prof, s in summaries.items():
        sent = scale_sentence(prof, s)
        if sent:
            lines[-1] += " " + sent
    return "\n".join(lines) + "\n"


def read_fid(results_dir: str | Path) -> dict | None:
    """``fid.json`` of a run's results folder, or None."""
    p = Path(results_dir) / "fid.json"
    try:
        return json.loads(p.read_text()) if p.is_file() else None
    except json.JSONDecodeError:
        return None


def chapter_note(profile: str, dataset_dir: str | Path, params_dir: str | Path = "params") -> str:
    """What the numbers of a training chapter can show on ``profile``, from its files (Markdown, one paragraph):
    synthetic or real data (``params/<profile>/common.yaml``), the split (``dataset.yaml``: whole areas unseen in
    training, or held-out blocks of areas that also trained the model) and whether the guidance has footprints
    (``has_labels``). Chapters print it in place of text written for one profile."""
    import yaml

    from stsynth_lib.book.publish.stamp import PublishError, profile_data_kind

    try:
        kind = profile_data_kind(profile, params_dir)
    except PublishError:
        kind = "unknown"
    meta_path = Path(dataset_dir) / "dataset.yaml"
    meta = yaml.safe_load(meta_path.read_text()) if meta_path.is_file() else {}
    meta = meta if isinstance(meta, dict) else {}
    parts = []
    if kind == "synthetic":
        parts.append(f"`{profile}` runs on **synthetic** data: these numbers show that the pipeline works, not how "
                     "well the model does on real imagery.")
    elif kind == "real":
        parts.append(f"`{profile}` runs on real SpaceNet 7 imagery.")
    n_test = (meta.get("n_aois") or {}).get("test")
    if meta.get("split_by") == "block":
        n_blocks = (meta.get("n_blocks") or {}).get("test")
        parts.append("The test split holds " + (f"{_plural(n_blocks, 'block')} " if n_blocks else "blocks ")
                     + "held out inside areas whose other blocks trained the model: it measures new places in "
                     "known areas, not unseen areas.")
    elif meta:
        parts.append("The test split holds " + (f"{_plural(n_test, 'area')} " if n_test else "areas ")
                     + "unseen in training.")
    if meta and not meta.get("has_labels", False):
        parts.append("The data have no building labels: the guidance is the dates (and the earlier months) alone, "
                     "with no footprints, and no building score can be computed.")
    return " ".join(parts)
