"""Results tables and figures name the backbone behind the ControlNet's row: from the run's params.yaml, recorded in
summary.json (``model_labels``) by chapter 6, shown by the book's landing page and the README (with a fallback for
summaries written before labels were recorded)."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
import yaml

from stsynth_lib import evaluate as E
from stsynth_lib.book import publish as pub
from stsynth_lib.book.report_format import (
    CONTROLNET_NOT_RECORDED,
    backbone_label,
    controlnet_label,
    SHORT_NAME_MAX,
    model_description,
    model_display_name,
    model_legend_markdown,
    short_model_name,
)
from stsynth_lib.predict.files import save_predictions

TRAINED = {"model": "controlnet", "backbone": "tiny-trained", "backbone_name": "tiny-trained",
           "backbone_description": "tiny, trained from scratch on sn7_real_128 train split"}


@pytest.fixture(autouse=True)
def _offline_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))


def test_backbone_label_prefers_the_description():
    assert controlnet_label({"backbone": "tiny-random", "backbone_name": "tiny-random"}) == \
        "ControlNet [tiny random backbone]"
    assert controlnet_label({"backbone": "pretrained", "backbone_name": "stable-diffusion-v1-5/stable-diffusion-v1-5"}) \
        == "ControlNet [stable-diffusion-v1-5/stable-diffusion-v1-5]"
    assert controlnet_label(TRAINED) == "ControlNet [tiny, trained from scratch on sn7_real_128 train split]"
    assert backbone_label({**TRAINED, "backbone_description": ""}) == "tiny-trained backbone"
    assert backbone_label({"backbone": "tiny-trained", "backbone_name": "runs/p/backbone"}) == \
        "tiny-trained backbone: runs/p/backbone"
    assert backbone_label({}) == "backbone not recorded"
    assert controlnet_label(TRAINED, prompt_only=True).startswith("Backbone alone, prompt only [tiny, trained")
    assert model_description("controlnet") == CONTROLNET_NOT_RECORDED == "ControlNet [backbone not recorded]"
    assert model_display_name("controlnet") == "ControlNet (backbone not recorded)"
    assert model_description("controlnet", {"controlnet": "ControlNet [x]"}) == "ControlNet [x]"
    assert model_display_name("pix2pix", {}) == model_description("pix2pix", {}) == "pix2pix"


def _run(root, name, params, split="test", folder="predictions"):
    run = root / name
    (run / folder / split).mkdir(parents=True)
    if params is not None:
        (run / "params.yaml").write_text(yaml.safe_dump(params))
    return run / folder / split


def test_model_labels_read_each_run_folder(tmp_path):
    runs = {"pix2pix": _run(tmp_path, "pix2pix", {"model": "pix2pix", "lr": 1e-3}),
            "controlnet": _run(tmp_path, "controlnet", TRAINED),
            "controlnet_sd": _run(tmp_path, "sd", {"model": "controlnet", "backbone": "pretrained",
                                                   "backbone_name": "stable-diffusion-v1-5/stable-diffusion-v1-5"}),
            "backbone_alone": _run(tmp_path, "cn2", TRAINED, folder="predictions_prompt_only"),
            "controlnet_old": _run(tmp_path, "old", None), "absent": None}
    assert E.model_labels(runs) == {
        "controlnet": "ControlNet [tiny, trained from scratch on sn7_real_128 train split]",
        "controlnet_sd": "ControlNet [stable-diffusion-v1-5/stable-diffusion-v1-5]",
        "backbone_alone": "Backbone alone, prompt only [tiny, trained from scratch on sn7_real_128 train split]",
        "controlnet_old": "ControlNet [backbone not recorded]",
    }


def test_evaluation_records_and_shows_the_backbone(tiny_dataset_dir, tmp_path):
    data = E.load_split(tiny_dataset_dir, "test")
    rng = np.random.default_rng(0)
    noisy = np.clip(data.past.astype(int) + rng.normal(0, 25, data.past.shape), 0, 255).astype(np.uint8)
    pred = _run(tmp_path / "runs" / "p", "controlnet", TRAINED)
    save_predictions(pred, noisy.astype(np.float32) / 127.5 - 1, data.pair_ids, data.pairs["aoi"].to_numpy(),
                     data.transform, data.crs)
    label = "ControlNet [tiny, trained from scratch on sn7_real_128 train split]"
    short = "ControlNet (tiny, from scratch)"
    res = E.evaluate_models(tiny_dataset_dir, "test", {"controlnet": pred}, out_dir=tmp_path / "eval",
                            compute_lpips=False, n_boot=20, progress=False)
    assert res.labels == {"controlnet": label}
    payload = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert payload["model_labels"] == {"controlnet": label}
    assert payload["model_names"] == {"controlnet": short}  # the short name beside the description, for the pages
    md = (tmp_path / "eval" / "results.md").read_text()
    assert f"| {short} " in md and f"| {short} | {label} |" in md and md.count(label) == 1  # the legend, once
    assert short in E.results_table(res.summary, labels=res.labels).index
    assert "controlnet" in E.results_table(res.summary).index  # without labels: the names, as before
    paired = pd.DataFrame(payload["paired_vs_persistence"])
    assert set(E.paired_table(paired, labels=res.labels)["model"]) == {short}
    assert E.gallery(res, "controlnet", "psnr")._suptitle.get_text().startswith(short)
    ax = E.plot_metric_vs_gap(res, "psnr", n_boot=10)
    assert short in [t.get_text() for t in ax.get_legend().get_texts()]
    from stsynth_lib.evaluate.figures import plot_examples

    fig = plot_examples(res, n=2)
    assert any(a.get_title().replace("\n", " ") == short for a in fig.axes)
    import matplotlib.pyplot as plt

    plt.close("all")


def test_fid_table_names_the_backbone():
    table = pd.DataFrame([{"model": "persistence", "gap_bucket": "all", "n": 4, "fid": 1.0, "kid": 0.1, "kid_std": 0.01},
                          {"model": "controlnet", "gap_bucket": "all", "n": 4, "fid": 2.0, "kid": 0.2, "kid_std": 0.02}])
    table["label"] = [model_display_name(m, {"controlnet": "ControlNet [tiny random backbone]"}) for m in table["model"]]
    wide = E.fid_table(table, True)
    assert [m for m, _ in wide.index] == ["persistence", "ControlNet (tiny, random)"]


def _summary(labels=None) -> dict:
    rows, paired = [], []
    for i, m in enumerate(["persistence", "seasonal", "controlnet"]):
        for k in ("psnr", "ssim", "lpips", "l1"):
            rows.append({"model": m, "metric": k, "mean": 0.5 + i, "ci_lo": 0.4 + i, "ci_hi": 0.6 + i, "n": 10,
                         "calibrated": True})
            if m != "persistence":
                paired.append({"model": m, "metric": k, "mean_diff": 0.1 * i, "ci_lo": -0.1, "ci_hi": 0.2,
                               "better": None, "areas_better": 1, "n_areas": 3, "n_pairs": 10})
    s = {"split": "test", "runs": {"controlnet": "runs/x/controlnet/predictions/test"}, "baselines": ["seasonal"],
         "n_pairs": 10, "calibrated": {"lpips": True}, "summary": rows, "paired_vs_persistence": paired,
         "paired_resamples": "whole areas (AOIs)", "strongest_baseline": {"name": "seasonal"},
         "paired_vs_strongest_baseline": [r for r in paired if r["model"] == "controlnet"]}
    if labels is not None:
        s["model_labels"] = labels
    return s


def test_landing_and_readme_tables_name_the_backbone():
    new = _summary({"controlnet": "ControlNet [tiny random backbone]"})
    for text in (pub.headline_table(new), pub.strongest_baseline_section(new)):
        assert "| ControlNet (tiny, random) |" in text and "| controlnet |" not in text
    assert pub.model_legend(new).splitlines()[2] == "| ControlNet (tiny, random) | ControlNet [tiny random backbone] |"
    old = _summary()  # written before chapter 6 recorded labels
    for text in (pub.headline_table(old), pub.strongest_baseline_section(old)):
        assert "| ControlNet (backbone not recorded) |" in text and "| controlnet |" not in text
    assert "| seasonal |" in pub.headline_table(old)  # other rows keep their names


def test_committed_reference_label_is_the_one_its_params_give():
    """book/reference/sn7_real_128's summary.json names the ControlNet's backbone; where the run folder is here too,
    the label is exactly the one its params.yaml (and its predictions' sampling.yaml) give."""
    from pathlib import Path

    import yaml

    from stsynth_lib.book.report_format import CONTROLNET_NOT_RECORDED

    root = Path(__file__).resolve().parents[1]
    summary = root / "book" / "reference" / "sn7_real_128" / "results" / "summary.json"
    if not summary.is_file():
        pytest.skip("no reference run committed")
    data = json.loads(summary.read_text())
    if "controlnet" not in data.get("runs", {}):
        pytest.skip("the reference run has no ControlNet")
    label = data.get("model_labels", {}).get("controlnet", "")
    assert label.startswith("ControlNet [") and label != CONTROLNET_NOT_RECORDED
    assert "stable diffusion" not in label.lower()  # the CPU reference never uses SD
    pred = root / data["runs"]["controlnet"]
    params = pred / ".." / ".." / "params.yaml"
    if params.is_file():  # the run's params.yaml (backbone) and its predictions' sampling.yaml (img2img strength)
        from stsynth_lib.evaluate.data import model_labels

        assert label == model_labels({"controlnet": pred})["controlnet"]
        assert label.startswith(controlnet_label(yaml.safe_load(params.read_text()))[:-1])


LONG = ("ControlNet [tiny, trained from scratch on the sn7_real_128 train split (data/sn7_real_128/dataset); img2img "
        "from the past image, strength 0.2]")


@pytest.mark.parametrize("label, short", [
    (LONG, "ControlNet (tiny, from scratch)"),
    ("ControlNet [tiny random backbone]", "ControlNet (tiny, random)"),
    ("ControlNet [stable-diffusion-v1-5/stable-diffusion-v1-5]", "ControlNet (Stable Diffusion 1.5)"),
    ("ControlNet [SD 1.5 architecture, random weights (benchmarks only)]", "ControlNet (SD 1.5 architecture, random)"),
    ("Backbone alone, prompt only [tiny, trained from scratch on x; img2img from the past image, strength 0.5]",
     "Backbone alone (tiny, from scratch)"),
    ("ControlNet [tiny-trained backbone: runs/p/backbone]", "ControlNet (tiny, from scratch)"),
    ("ControlNet [tiny, trained from scratch on x; img2img from the past image, strength 0.4; per-pixel mean of 4 "
     "samples]", "ControlNet, mean of 4 (tiny, from scratch)"),
    ("ControlNet [tiny, trained from scratch on x; no footprints: the no-mask twin of controlnet; per-pixel mean of "
     "16 samples]", "ControlNet, no mask, mean of 16 (tiny, from scratch)"),
    ("ControlNet [pretrained backbone: /very/long/local/path/to/some-custom-checkpoint-name-v2]",
     "ControlNet (some-custom-checkpoint-…)"),
])
def test_short_name_of_every_label_kind(label, short):
    assert short_model_name("controlnet", {"controlnet": label}) == short
    assert len(short) <= SHORT_NAME_MAX
    assert model_description("controlnet", {"controlnet": label}) == label


def test_legend_prints_each_long_description_once():
    labels = {"controlnet": LONG, "cn2": LONG}
    legend = model_legend_markdown(["persistence", "pix2pix", "controlnet", "cn2"], labels)
    assert legend.count(LONG) == 1 and "| pix2pix |" not in legend
    assert model_legend_markdown(["persistence", "pix2pix"], {}) == ""


def test_committed_reference_tables_use_the_short_name():
    """The committed summary.json holds the ~140-character label; the landing page and README show the short name in
    every table and sentence and the label once, in the legend."""
    from pathlib import Path

    summary = Path(__file__).resolve().parents[1] / "book" / "reference" / "sn7_real_128" / "results" / "summary.json"
    if not summary.is_file():
        pytest.skip("no reference run committed")
    data = json.loads(summary.read_text())
    label = (data.get("model_labels") or {}).get("controlnet")
    if not label:
        pytest.skip("the reference run has no ControlNet label")
    short = short_model_name("controlnet", data["model_labels"])
    from stsynth_lib.book.publish import pages

    block = "\n".join(pages._verdict_and_tables(data))
    assert block.count(label) == 1 and f"| {short} | {label} |" in block
    assert f"| {short} |" in pub.headline_table(data) and label not in pub.headline_table(data)
    assert short in pub.headline_sentence(data) and label not in pub.headline_sentence(data)
