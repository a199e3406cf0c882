"""The landing page tells the story from the run's own files (issue 35): the glossary, and what each published run
can and cannot show (labels -> building F1, UDM -> clouds, the diffusion row's backbone, FID), with short model names
in the tables and the long description once, in a legend."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stsynth_lib.book.publish import facts as F
from stsynth_lib.book.publish import pages
from stsynth_lib.book.publish.stamp import write_nb

ROOT = Path(__file__).resolve().parents[1]
LONG = ("ControlNet [tiny, trained from scratch on the p train split (data/p/dataset); img2img from the past image, "
        "strength 0.2]")


def _summary(f1: bool = False, label: str | None = LONG, unit: str = "area") -> dict:
    rows, paired = [], []
    metrics = ["psnr", "ssim", "lpips", "l1"] + (["f1_micro"] if f1 else [])
    for i, m in enumerate(["persistence", "seasonal", "pix2pix", "controlnet"]):
        for k in metrics:
            rows.append({"model": m, "metric": k, "mean": 0.5 + i, "ci_lo": 0.4 + i, "ci_hi": 0.6 + i, "n": 10})
            if m != "persistence":
                paired.append({"model": m, "metric": k, "mean_diff": 0.1 * i, "ci_lo": -0.5, "ci_hi": 0.7,
                               "better": None, "areas_better": 1, "n_areas": 5, "n_pairs": 10, "unit": unit})
    s = {"split": "test", "runs": {"pix2pix": "x", "controlnet": "y"}, "baselines": ["mean_last_3", "seasonal"],
         "n_pairs": 10, "summary": rows, "paired_vs_persistence": paired, "paired_resamples": "whole areas (AOIs)",
         "strongest_baseline": {"name": "seasonal", "chosen_on": "val"},
         "paired_vs_strongest_baseline": [dict(r, baseline="seasonal") for r in paired if r["model"] != "seasonal"],
         "notes": [] if f1 else ["Building F1 skipped: no building segmenter (no labels)."]}
    if label:
        s["model_labels"] = {"controlnet": label}
    return s


def _chapter1(d: Path, scan: str) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    nb = {"cells": [{"cell_type": "code", "source": "print(report)", "metadata": {}, "execution_count": 1,
                     "outputs": [{"output_type": "stream", "name": "stdout", "text": scan}]}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    write_nb(nb, d / "01_explore_data.ipynb")
    return d


def test_unlabelled_run_says_it_has_no_building_f1_and_no_cloud_masks(tmp_path):
    nb_dir = _chapter1(tmp_path / "p", "SpaceNet 7 tree at x: 4 AOIs\n  missing UDM_masks/ in all AOIs\n")
    facts = F.run_facts(_summary(), nb_dir)
    assert not facts["building_f1"] and facts["clouds"] == "none" and facts["n_units"] == 5
    text = F.capabilities_section("p", facts, "real")
    can, cannot = text.split("It cannot show:")
    assert "building F1" in cannot and "building F1" not in can
    assert "no UDM (cloud) masks" in cannot and "missing UDM_masks/ in all AOIs" in cannot
    assert "cloud-free" not in can  # said only when true
    assert "5 areas unseen in training" in can
    assert "`ControlNet (tiny, from scratch)` uses no pretrained weights" in cannot
    assert LONG not in text  # the long description lives in the legend under the table
    assert "footprint guidance" in cannot and "synthetic" not in text


def test_labelled_run_with_cloud_masks_says_what_it_can(tmp_path):
    nb_dir = _chapter1(tmp_path / "p", "SpaceNet 7 tree at x: 4 AOIs\n  missing labels_match/ in 1 of 4 AOIs\n")
    facts = F.run_facts(_summary(f1=True, unit="block"), nb_dir, {"rows": [{"model": "pix2pix", "n": 64}]})
    text = F.capabilities_section("p", facts, "synthetic")
    can, cannot = text.split("It cannot show:")
    assert "building F1" in can and "new-building F1" in cannot
    assert "cloud-free pixels" in can and "held-out blocks (5 blocks)" in can
    assert "FID and KID on 64 test pairs" in can and "**synthetic**" in cannot
    some = F.cloud_masks(_chapter1(tmp_path / "q", "SpaceNet 7 tree at x: 4 AOIs\n  missing UDM_masks/ in 3 of 4 AOIs\n"))
    assert some[0] == "some"
    assert F.cloud_masks(tmp_path / "empty")[0] == "unknown"
    unknown = F.capabilities_section("p", F.run_facts(_summary(label=None), None), "real")
    assert "whether clouds were masked: not recorded" in unknown
    assert "`ControlNet (backbone not recorded)`" in unknown and "FID or KID: no `fid.json`" in unknown


def test_glossary_names_the_scored_baselines_metrics_and_the_yardstick():
    s = _summary()
    text = F.glossary_section({"p": s})
    for term in ("`persistence`", "`seasonal`", "`mean_last_3`", "`pix2pix`", "| PSNR (dB) |", "| SSIM |",
                 "| LPIPS |", "| FID |", "| KID |", "| L1 |"):
        assert term in text, term
    assert "the last 3 months" in text  # mean_last_<k> worded from its k
    assert "+1 dB of PSNR means a root-mean-square error 11 % lower (mean squared error 21 % lower)" in text
    # this run's own yardstick: the median half-width of its paired PSNR intervals vs the bar, and the bar's gain
    assert "In `p`, the median paired PSNR interval is ±0.60 dB wide;" in text and "across the rows" not in text
    wide = json.loads(json.dumps(s))
    row = next(r for r in wide["paired_vs_strongest_baseline"] if r["metric"] == "psnr")
    row["ci_lo"], row["ci_hi"] = -2.0, 2.0  # one row's interval much wider than the others: the range is said
    assert "(from ±0.60 to ±2.00 dB across the rows)" in F.glossary_section({"p": wide})
    assert "`seasonal`, is +0.10 dB from persistence" in text
    assert "`mean_last_5`" in F.glossary_section({"p": dict(s, baselines=["mean_last_5"])})


def test_tables_use_short_names_and_the_legend_prints_the_description_once():
    s = _summary()
    block = "\n".join(pages._verdict_and_tables(s))
    assert block.count(LONG) == 1 and f"| ControlNet (tiny, from scratch) | {LONG} |" in block
    assert "| ControlNet (tiny, from scratch) |" in pages.headline_table(s)
    assert pages.model_legend(_summary(label=None)) == "| model (as in the tables) | what it is |\n|---|---|\n" \
        "| ControlNet (backbone not recorded) | ControlNet [backbone not recorded] |"
    recorded = dict(s, model_names={"controlnet": "ControlNet (tiny)"})  # a newer summary.json records the name
    assert "| ControlNet (tiny) |" in pages.headline_table(recorded)


@pytest.mark.skipif(not (ROOT / "book" / "reference" / "sn7_real_128" / "results" / "summary.json").is_file(),
                    reason="no committed reference run")
def test_committed_reference_landing_page_tells_what_it_cannot_show(tmp_path):
    """sn7_real_128 has no labels and no UDM: its landing page must say so, never promise cloud-free scores, and
    name the ControlNet by its short name with the long label once."""
    out = pages.stage_book("reference", "sn7_real_128", out=tmp_path / "stage", book_dir=ROOT / "book",
                           reference_root=ROOT / "book" / "reference", params_dir=ROOT / "params")
    intro = (out / "intro.md").read_text()
    summary = json.loads((ROOT / "book" / "reference" / "sn7_real_128" / "results" / "summary.json").read_text())
    label = summary["model_labels"]["controlnet"]
    assert intro.count(label) == 1
    cannot = intro[intro.index("It cannot show:"):intro.index("## About this book")]
    assert "building F1" in cannot and "no UDM (cloud) masks" in cannot
    assert "cloud-free" not in intro.replace("scores on cloud-free pixels: the tree has no UDM", "")
    assert "## Glossary" in intro and "`mean_last_3`" in intro


def test_chapter_note_follows_the_profile_files(tmp_path):
    params = tmp_path / "params"
    for prof, synth in (("syn", "true"), ("real", "false")):
        (params / prof).mkdir(parents=True)
        (params / prof / "common.yaml").write_text(f"profile: {prof}\nsynthetic_data: {synth}\n")
    aoi = tmp_path / "aoi"
    aoi.mkdir()
    (aoi / "dataset.yaml").write_text("has_labels: false\nn_aois: {train: 5, val: 1, test: 7}\n")
    block = tmp_path / "block"
    block.mkdir()
    (block / "dataset.yaml").write_text("has_labels: true\nsplit_by: block\nn_blocks: {test: 3}\n")
    real = F.chapter_note("real", aoi, params)
    assert "real SpaceNet 7" in real and "7 areas unseen in training" in real and "no building labels" in real
    assert "smoke" not in real and "synthetic" not in real and "block" not in real
    syn = F.chapter_note("syn", block, params)
    assert "**synthetic**" in syn and "3 blocks held out" in syn and "unseen areas" in syn and "labels" not in syn
