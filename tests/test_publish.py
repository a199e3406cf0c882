"""Reference runs and generated results pages (stsynth_lib.book.publish): stamps, publishing, landing page, README
block."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import pytest

from stsynth_lib.book import publish as pub

ROOT = Path(__file__).resolve().parents[1]


def _params(tmp_path: Path, profile: str, synthetic: bool) -> Path:
    d = tmp_path / "params" / profile
    d.mkdir(parents=True)
    (d / "common.yaml").write_text(f"profile: {profile}\nsynthetic_data: {str(synthetic).lower()}\n")
    return tmp_path / "params"


def _png(w: int, h: int, noisy: bool = False) -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (h, w, 3), dtype=np.uint8) if noisy else np.full((h, w, 3), 120, np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def _notebook(path: Path, profile: str, png: bytes | None = None) -> Path:
    """A tiny executed notebook as papermill leaves it."""
    pm_cell = {"papermill": {"duration": 0.1, "start_time": "2026-01-01T00:00:00", "status": "completed"},
               "execution": {"iopub.status.busy": "2026-01-01T00:00:00Z"}}
    outputs = [{"output_type": "stream", "name": "stderr", "text": ["progress 10%\n"]},
               {"output_type": "stream", "name": "stdout", "text": ["kept\n"]},
               {"output_type": "display_data", "metadata": {},
                "data": {"application/vnd.jupyter.widget-view+json": {"model_id": "x"}, "text/plain": ["bar"]}}]
    if png is not None:
        outputs.append({"output_type": "display_data", "metadata": {},
                        "data": {"image/png": base64.b64encode(png).decode(), "text/plain": ["<Figure>"]}})
    nb = {"nbformat": 4, "nbformat_minor": 5,
          "metadata": {"papermill": {"duration": 12.5, "start_time": "2026-01-01T00:00:00+00:00",
                                     "end_time": "2026-01-01T00:00:12+00:00", "parameters": {"profile": profile},
                                     "input_path": "a", "output_path": "b", "environment_variables": {}},
                       "widgets": {"state": {}}},
          "cells": [
              {"cell_type": "markdown", "id": "t", "metadata": {**pm_cell, "tags": []}, "source": ["# 1. Title\n"]},
              {"cell_type": "code", "id": "p", "metadata": {**pm_cell, "tags": ["parameters"]}, "execution_count": 1,
               "outputs": [], "source": ["profile = 'smoke'\n"]},
              {"cell_type": "code", "id": "i", "metadata": {**pm_cell, "tags": ["injected-parameters"]},
               "execution_count": 2, "outputs": [], "source": [f"profile = '{profile}'\n"]},
              {"cell_type": "code", "id": "o", "metadata": {**pm_cell, "tags": []}, "execution_count": 3,
               "outputs": outputs, "source": ["print('kept')\n"]}]}
    path.parent.mkdir(parents=True, exist_ok=True)
    pub.write_nb(nb, path)
    return path


def _book(tmp_path: Path, intro: str = "# T\n\nWhat.\n\nMore.\n") -> Path:
    """A minimal book source folder (config, static folder, intro) for stage_book."""
    book = tmp_path / "book"
    (book / "_static").mkdir(parents=True)
    (book / "_config.yml").write_text("title: t\n")
    (book / "intro.md").write_text(intro)
    return book


def _summary(n_areas: int = 3) -> dict:
    rows, paired = [], []
    for i, m in enumerate(["persistence", "mean_last_3", "pix2pix", "real_future"]):
        for k, base in (("psnr", 22.0), ("ssim", 0.7), ("lpips", 0.2), ("l1", 0.06)):
            v = base + 0.01234 * i
            rows.append({"model": m, "metric": k, "mean": v, "ci_lo": v - 0.1, "ci_hi": v + 0.1, "n": 100 + i,
                         "calibrated": True})
            if m not in ("persistence", "real_future"):
                lo, hi = (None, None) if n_areas == 1 else (-0.05 * i, 0.07 * i)
                paired.append({"model": m, "metric": k, "mean_diff": 0.01234 * i, "ci_lo": lo, "ci_hi": hi,
                               "better": None, "areas_better": 1, "n_areas": n_areas, "n_pairs": 100})
    rows = [r for r in rows if not (r["model"] == "real_future" and r["metric"] != "l1")]
    return {"split": "test", "runs": {"pix2pix": "runs/x/pix2pix"}, "baselines": ["mean_last_3"], "n_pairs": 100,
            "calibrated": {"lpips": False}, "summary": rows, "paired_vs_persistence": paired,
            "paired_resamples": "whole areas (AOIs)", "verdict": ["pix2pix does NOT beat persistence."]}


def _stamp(path: Path, profile: str, params: Path) -> dict:
    return pub.stamp_notebook(path, profile, params_dir=params, commit="abc123", machine="CPU test, 2 cores")


def test_stamp_is_idempotent_and_states_profile_and_data(tmp_path):
    params = _params(tmp_path, "sn7_real_128", synthetic=False)
    nb_path = _notebook(tmp_path / "ex" / "01_a.ipynb", "sn7_real_128")
    first = _stamp(nb_path, "sn7_real_128", params)
    once = pub.read_nb(nb_path)
    _stamp(nb_path, "sn7_real_128", params)
    twice = pub.read_nb(nb_path)
    assert once == twice
    assert first == {"profile": "sn7_real_128", "data": "real", "commit": "abc123", "date": "2026-01-01 00:00 UTC",
                     "machine": "CPU test, 2 cores", "wall_s": 12.5}
    assert twice["metadata"]["stsynth"]["stamp"] == first
    banner = twice["cells"][0]
    assert banner["metadata"]["tags"] == [pub.STAMP_TAG]
    assert sum(pub.STAMP_TAG in c["metadata"].get("tags", []) for c in twice["cells"]) == 1
    first_line = pub._src(banner).splitlines()[0]
    assert "sn7_real_128" in first_line and "REAL data" in first_line
    assert "12 s" in pub._src(banner) and "abc123" in pub._src(banner)
    for c in twice["cells"][1:]:
        tags = c["metadata"].get("tags", [])
        if "parameters" in tags or "injected-parameters" in tags:
            assert tags.count("hide-cell") == 1
            assert c["metadata"]["mystnb"]["code_prompt_show"].startswith("Parameters")
        else:
            assert "hide-cell" not in tags


def test_stamp_says_synthetic_and_refuses_another_profile(tmp_path):
    params = _params(tmp_path, "smoke", synthetic=True)
    _params(tmp_path / "x", "other", synthetic=False)
    nb_path = _notebook(tmp_path / "ex" / "01_a.ipynb", "smoke")
    _stamp(nb_path, "smoke", params)
    assert "SYNTHETIC data" in pub._src(pub.read_nb(nb_path)["cells"][0]).splitlines()[0]
    with pytest.raises(pub.PublishError, match="ran with profile 'smoke'.*make nb NB=01_a PROFILE=other"):
        pub.stamp_notebook(nb_path, "other", params_dir=tmp_path / "x" / "params")


def test_publish_strips_volatile_metadata_and_shrinks_png(tmp_path):
    params = _params(tmp_path, "p", synthetic=False)
    big = _png(2400, 300, noisy=True)
    nb_path = _notebook(tmp_path / "executed" / "p" / "06_eval.ipynb", "p", png=big)
    _stamp(nb_path, "p", params)
    eval_dir = tmp_path / "runs" / "p" / "eval"
    eval_dir.mkdir(parents=True)
    (eval_dir / "summary.json").write_text(json.dumps(_summary()))
    (eval_dir / "results.md").write_text("# results\n")
    with pytest.warns(UserWarning, match="examples.png not found"):
        dest = pub.publish("p", executed_root=tmp_path / "executed", runs_dir=tmp_path / "runs",
                           reference_root=tmp_path / "reference", log=lambda *a: None)
    nb = pub.read_nb(dest / "06_eval.ipynb")
    text = json.dumps(nb)
    for volatile in ("start_time", "end_time", "\"duration\"", "iopub", "environment_variables", "widget-view",
                     "progress 10%", "\"widgets\""):
        assert volatile not in text, volatile
    assert nb["metadata"]["stsynth"]["stamp"]["profile"] == "p"
    assert nb["metadata"]["papermill"]["parameters"] == {"profile": "p"}
    assert "kept" in text and "hide-cell" in text
    ids = [c["id"] for c in nb["cells"]]
    assert len(set(ids)) == len(ids) and "p" not in ids  # ids from the sources, not jupytext's random ones
    from PIL import Image

    out = nb["cells"][-1]["outputs"][-1]
    png = base64.b64decode(out["data"]["image/png"])
    with Image.open(io.BytesIO(png)) as im:
        assert max(im.size) <= pub.MAX_PNG_PX
    assert len(png) < len(big)
    # the book shows it as wide as it was drawn (MyST-NB reads the width): fewer pixels, the same text size
    assert out["metadata"]["image/png"] == {"width": 2400}
    assert (dest / "results" / "summary.json").is_file() and (dest / "results" / "results.md").is_file()
    # Publishing twice gives the same bytes (reviewable diffs).
    before = (dest / "06_eval.ipynb").read_bytes()
    with pytest.warns(UserWarning):
        pub.publish("p", executed_root=tmp_path / "executed", runs_dir=tmp_path / "runs",
                    reference_root=tmp_path / "reference", log=lambda *a: None)
    assert (dest / "06_eval.ipynb").read_bytes() == before


def test_publish_names_missing_files_and_the_fix(tmp_path):
    kw = dict(executed_root=tmp_path / "executed", runs_dir=tmp_path / "runs", reference_root=tmp_path / "ref",
              log=lambda *a: None)
    with pytest.raises(pub.PublishError, match=r"executed[/\\]p/.*make run-all PROFILE=p"):
        pub.publish("p", **kw)
    params = _params(tmp_path, "p", synthetic=False)
    _stamp(_notebook(tmp_path / "executed" / "p" / "01_a.ipynb", "p"), "p", params)
    with pytest.raises(pub.PublishError, match=r"runs[/\\]p[/\\]eval[/\\]summary.json not found.*make nb NB=06_evaluate PROFILE=p"):
        pub.publish("p", **kw)
    (tmp_path / "runs" / "p" / "eval").mkdir(parents=True)
    (tmp_path / "runs" / "p" / "eval" / "summary.json").write_text(json.dumps(_summary()))
    _notebook(tmp_path / "executed" / "p" / "02_b.ipynb", "p")  # not stamped
    with pytest.raises(pub.PublishError, match="02_b.ipynb.*no run stamp.*make nb"):
        pub.publish("p", **kw)
    with pytest.raises(pub.PublishError, match="No reference notebooks.*make publish PROFILE=sn7_real_128"):
        pub.stage_book("reference", reference_root=tmp_path / "nothing", out=tmp_path / "stage")


_NUM = re.compile(r"[+-]?\d+\.\d+")


@pytest.mark.parametrize("n_areas", [3, 1])
def test_landing_table_numbers_equal_summary_json(tmp_path, n_areas):
    summary = _summary(n_areas)
    scores, deltas = (t.splitlines() for t in pub.headline_table(summary).split("\n\n"))
    header = [h.strip() for h in scores[0].strip("|").split("|")]
    assert "LPIPS (uncalibrated)" in header  # summary says calibrated.lpips = false
    assert len(header) <= 6 and len(deltas[0].strip("|").split("|")) <= 6  # each fits the page's column

    def body(table):
        return {r.strip("|").split("|")[0].strip(): [c.strip() for c in r.strip("|").split("|")] for r in table[2:]}

    assert list(body(scores)) == ["persistence", "mean_last_3", "pix2pix"]  # real_future has no image metrics
    assert list(body(deltas)) == ["mean_last_3", "pix2pix"]  # persistence is the reference
    rows = {(r["model"], r["metric"]): r for r in summary["summary"]}
    paired = {(r["model"], r["metric"]): r for r in summary["paired_vs_persistence"]}
    for m, cells in body(scores).items():
        assert cells[1] == str(rows[(m, "psnr")]["n"])
        for j, (k, _, d, dd) in enumerate(pub.HEADLINE_METRICS):
            got = [float(x) for x in _NUM.findall(cells[2 + j])]
            r = rows[(m, k)]
            assert got == [round(r["mean"], d), round(r["ci_lo"], d), round(r["ci_hi"], d)]
            if m == "persistence":
                continue
            delta = body(deltas)[m][1 + j]
            p = paired[(m, k)]
            want = [round(p["mean_diff"], dd)] + ([] if n_areas == 1 else [round(p["ci_lo"], dd), round(p["ci_hi"], dd)])
            assert [float(x) for x in _NUM.findall(delta)] == want
            if n_areas == 1:
                assert "n/a (1 area)" in delta
    assert "whole areas (AOIs)" in pub.table_caption(summary)


def test_stage_builds_landing_page_toc_and_figure(tmp_path):
    params = _params(tmp_path, "p", synthetic=False)
    ref = tmp_path / "reference" / "p"
    _stamp(_notebook(ref / "01_a.ipynb", "p"), "p", params)
    (ref / "results").mkdir()
    (ref / "results" / "summary.json").write_text(json.dumps(_summary()))
    (ref / "results" / "examples.png").write_bytes(_png(30, 10))
    book = _book(tmp_path, "# The title\n\nWhat it does.\n\nIntro text.\n")
    out = pub.stage_book("reference", out=tmp_path / "stage", book_dir=book, reference_root=tmp_path / "reference",
                         params_dir=params)
    intro = (out / "intro.md").read_text()
    assert intro.startswith("# The title\n")
    # the story in order: what the system does (the intro's first paragraph), each profile's section opening with
    # its examples figure, then the table, the glossary, what the run can and cannot show, the rest of the intro
    order = ["## What the system does", "What it does.", "## Results: `p` · REAL data", "p/results/examples.png",
             "| model |", "## Glossary", "## What each published run can and cannot show", "## About this book",
             "Intro text."]
    assert [intro.index(x) for x in order] == sorted(intro.index(x) for x in order)
    assert pub.headline_table(_summary()) in intro
    assert "p/results/examples.png" in intro and (out / "p" / "results" / "examples.png").is_file()
    assert "file: p/01_a" in (out / "_toc.yml").read_text() and (out / "p" / "01_a.ipynb").is_file()
    # the caption names the columns the figure has: a footprints column only where the run scored building F1
    assert "Test examples of `p`: past | truth |" in intro and "footprints" not in intro.split("## Results")[0]
    labelled = _summary()
    labelled["summary"] = labelled["summary"] + [{"model": "pix2pix", "metric": "f1_micro", "mean": 0.5}]
    (ref / "results" / "summary.json").write_text(json.dumps(labelled))
    out = pub.stage_book("reference", out=tmp_path / "stage", book_dir=book, reference_root=tmp_path / "reference",
                         params_dir=params)
    intro = (out / "intro.md").read_text()
    assert "Test examples of `p`: past | future footprints" in intro
    # a labelled run without new-building scores has no new-building block; with them its section leads with it
    assert "New buildings first" not in intro
    labelled = _with_new_buildings(labelled)
    (ref / "results" / "summary.json").write_text(json.dumps(labelled))
    out = pub.stage_book("reference", out=tmp_path / "stage", book_dir=book, reference_root=tmp_path / "reference",
                         params_dir=params)
    section = (out / "intro.md").read_text().split("## Results: `p`")[1]
    order = ["p/results/examples.png", "**New buildings first", "| model | n pairs |"]
    assert [section.index(x) for x in order] == sorted(section.index(x) for x in order)
    readme = tmp_path / "README.md"
    readme.write_text(f"{pub.README_START}\n{pub.README_END}\n")
    pub.update_readme(readme, tmp_path / "reference")
    block = readme.read_text().split("**`p`**")[1]
    assert block.index(pub.new_building_sentence(labelled)) < block.index("| model | n pairs |")


def _with_new_buildings(summary: dict) -> dict:
    """``summary`` with new-building rows: pix2pix better than persistence on new-building L1 (interval below 0),
    mean_last_3 not clearly different; object recall for persistence, pix2pix and the real future."""
    out = json.loads(json.dumps(summary))
    for m, (lo, hi) in (("pix2pix", (-0.03, -0.01)), ("mean_last_3", (-0.01, 0.02))):
        out["paired_vs_persistence"] += [
            {"model": m, "metric": "l1_new", "mean_diff": (lo + hi) / 2, "ci_lo": lo, "ci_hi": hi, "n_areas": 3},
            {"model": m, "metric": "psnr_new", "mean_diff": -(lo + hi) * 50, "ci_lo": -hi * 100, "ci_hi": -lo * 100,
             "n_areas": 3}]
    out["summary"] += [{"model": m, "metric": "object_recall_new", "mean": v, "ci_lo": v, "ci_hi": v, "n": 100}
                       for m, v in (("persistence", 0.1), ("pix2pix", 0.31), ("real_future", 0.7))]
    return out


def test_new_building_section_states_each_rows_paired_interval_and_the_judges_ceiling():
    s = _with_new_buildings(_summary())
    text = pub.new_building_section(s)
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert "[-0.0300, -0.0100] ✔" in rows["pix2pix"] and rows["pix2pix"].endswith("| 31 % |")
    assert "[-0.0100, +0.0200]" in rows["mean_last_3"] and "✔" not in rows["mean_last_3"]
    assert rows["persistence"].endswith("| 10 % |") and "70 %" in rows["real future (the judge's ceiling)"]
    sentence = pub.new_building_sentence(s)
    assert "pix2pix is better on new-building L1 and new-building PSNR" in sentence
    assert "not clearly different on new-building L1 and new-building PSNR" in sentence
    assert pub.new_building_section(_summary()) == "" and pub.new_building_sentence(_summary()) == ""
    # a no-mask twin's row sits right under its guided model's
    twin = json.loads(json.dumps(s))
    for m in ("attention_unet", "pix2pix_nomask"):  # the twin comes after another model in summary.json
        twin["paired_vs_persistence"] += [dict(r, model=m) for r in s["paired_vs_persistence"] if r["model"] == "pix2pix"]
        twin["summary"] += [dict(r, model=m) for r in s["summary"] if r["model"] == "pix2pix"]
    twin["runs"]["attention_unet"] = "runs/x/attention_unet"
    names = [line.split(" | ")[0].strip("| ") for line in pub.new_building_section(twin).splitlines()
             if line.startswith("| ") and "---" not in line][1:]
    assert names.index("pix2pix_nomask") == names.index("pix2pix") + 1


def test_readme_block_round_trip(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{pub.README_START}\nold hand-typed table\n{pub.README_END}\n\nafter\n")
    assert pub.update_readme(readme, tmp_path / "reference") is False
    assert "No reference run is published yet" in readme.read_text()
    assert pub.update_readme(readme, tmp_path / "reference", check=True) is True
    params = _params(tmp_path, "p", synthetic=False)
    ref = tmp_path / "reference" / "p"
    _stamp(_notebook(ref / "01_a.ipynb", "p"), "p", params)
    (ref / "results").mkdir()
    (ref / "results" / "summary.json").write_text(json.dumps(_summary()))
    assert pub.update_readme(readme, tmp_path / "reference", check=True) is False
    pub.update_readme(readme, tmp_path / "reference")
    text = readme.read_text()
    scores, deltas = pub.headline_table(_summary()).split("\n\n")
    assert scores in text and deltas not in text  # the README's compact form: the book has the differences' table
    assert text.endswith("after\n") and "hand-typed" not in text


def test_repository_readme_matches_committed_results():
    """The README's results block is what `make readme-results` writes from book/reference/*/results/summary.json."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    a, b = text.index(pub.README_START), text.index(pub.README_END) + len(pub.README_END)
    assert text[a:b] == pub.readme_block(ROOT / "book" / "reference"), "README results differ: run make readme-results"


def test_repository_reference_stays_small_and_stamped():
    ref = ROOT / "book" / "reference"
    if not ref.is_dir():
        return
    assert pub._dir_mb(ref) <= pub.MAX_TOTAL_MB
    for nb in ref.glob("*/*.ipynb"):
        stamp = pub.read_stamp(nb)
        assert stamp and stamp["profile"] == nb.parent.name, nb


def test_strongest_baseline_section_numbers_and_marks_equal_summary_json():
    summary = _summary(3)
    assert pub.strongest_baseline_section(summary) == ""  # chapter 6 recorded no comparison: nothing to show
    rows = [
        {"model": "pix2pix", "metric": "psnr", "mean_diff": 0.61234, "ci_lo": 0.5012, "ci_hi": 0.7433, "better": True,
         "areas_better": 6, "n_areas": 7, "unit": "area"},
        {"model": "pix2pix", "metric": "ssim", "mean_diff": -0.01234, "ci_lo": -0.02, "ci_hi": -0.004, "better": False,
         "areas_better": 1, "n_areas": 7, "unit": "area"},
        {"model": "pix2pix", "metric": "l1", "mean_diff": -0.0012, "ci_lo": -0.003, "ci_hi": 0.001, "better": None,
         "areas_better": 4, "n_areas": 7, "unit": "area"},
    ]
    summary["strongest_baseline"] = {"name": "seasonal", "chosen_on": "val", "chosen_by": "psnr"}
    summary["paired_vs_strongest_baseline"] = rows
    text = pub.strongest_baseline_section(summary)
    assert "`seasonal`" in text and "`val` split" in text
    line = next(l for l in text.splitlines() if l.startswith("| pix2pix"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert [float(x) for x in _NUM.findall(cells[1])] == [0.61, 0.50, 0.74] and cells[1].endswith("✔")
    assert [float(x) for x in _NUM.findall(cells[2])] == [-0.0123, -0.02, -0.004] and cells[2].endswith("✘")
    assert not cells[3].endswith(("✔", "✘"))  # interval contains zero: no verdict
    assert cells[4] == "6 of 7"
    # the landing section and the README block carry it too
    assert text in pub.headline_section("p", summary, stamp=None, figure=None, reference=True, data_kind="real")


def test_record_strongest_baseline_writes_into_summary_json(tmp_path):
    import pandas as pd

    from stsynth_lib.evaluate import record_strongest_baseline

    (tmp_path / "summary.json").write_text(json.dumps(_summary(3)))
    rows = pd.DataFrame([{"model": "pix2pix", "metric": "psnr", "mean_diff": 0.5, "ci_lo": float("nan"),
                          "ci_hi": 0.7, "better": None, "areas_better": 1, "n_areas": 1}])
    record_strongest_baseline(tmp_path, "seasonal", rows)
    back = json.loads((tmp_path / "summary.json").read_text())
    assert back["strongest_baseline"] == {"name": "seasonal", "chosen_on": "val", "chosen_by": "psnr"}
    assert back["paired_vs_strongest_baseline"][0]["mean_diff"] == 0.5
    assert back["paired_vs_strongest_baseline"][0]["ci_lo"] is None  # NaN -> null, readable JSON
    assert back["summary"] == _summary(3)["summary"]  # the rest is untouched
    with pytest.raises(ValueError, match="validation"):
        record_strongest_baseline(tmp_path, "seasonal", rows, chosen_on="test")  # never chosen on the scored split
    with pytest.raises(FileNotFoundError, match="evaluate_models"):
        record_strongest_baseline(tmp_path / "nowhere", "seasonal", rows)


def test_tables_read_blocks_nan_and_old_files():
    summary = _summary(1)
    for r in summary["paired_vs_persistence"]:
        r["unit"] = "block"
    summary["paired_vs_persistence"][0]["ci_lo"] = float("nan")  # json.dumps writes NaN for rows not via pandas
    table = pub.headline_table(summary)
    assert "nan" not in table.lower().replace("n/a", "") and "n/a (1 block)" in table
    assert "n/a (1 block)" in pub.table_caption(summary) and "test pairs" in pub.table_caption(summary)
    summary["split"] = "val"
    assert "100 val pairs" in pub.table_caption(summary)
    summary["calibrated"] = True  # an older summary.json: one flag, not a dict
    assert "uncalibrated" not in pub.headline_table(summary)
    summary["strongest_baseline"] = {"name": "seasonal", "chosen_on": "val", "chosen_by": "psnr"}
    summary["paired_vs_strongest_baseline"] = [{"model": "pix2pix", "metric": "psnr", "mean_diff": 0.1, "ci_lo": 0.0,
                                                "ci_hi": 0.2, "better": None, "areas_better": 2, "n_areas": 3,
                                                "unit": "block"}]
    assert "blocks better (PSNR)" in pub.strongest_baseline_section(summary)


def test_stamp_cli_records_the_commit_the_run_started_at(tmp_path, monkeypatch, capsys):
    nb = _notebook(tmp_path / "executed" / "p" / "03_a.ipynb", "p")
    monkeypatch.chdir(tmp_path)
    _params(tmp_path, "p", synthetic=False)
    assert pub.main(["stamp", str(nb), "--profile", "p", "--commit", "0123abcd"]) == 0
    assert pub.read_stamp(nb)["commit"] == "0123abcd"  # not the checkout's commit at stamp time
    assert pub.main(["commit"]) == 0 and capsys.readouterr().out.strip()


def test_commit_is_dirty_for_run_inputs_only(tmp_path):
    import subprocess

    def git(*a):
        subprocess.run(["git", "-C", str(tmp_path), *a], check=True, capture_output=True)

    git("init", "-q")
    git("config", "user.email", "t@t")
    git("config", "user.name", "t")
    (tmp_path / "params").mkdir()
    (tmp_path / "params" / "a.yaml").write_text("x: 1\n")
    (tmp_path / "README.md").write_text("r\n")
    git("add", "-A")
    git("commit", "-q", "-m", "c")
    clean = pub.git_commit(tmp_path)
    assert len(clean) == 12 and not clean.endswith("-dirty")
    (tmp_path / "README.md").write_text("published results block\n")  # an output of publishing: still clean
    assert pub.git_commit(tmp_path) == clean
    (tmp_path / "params" / "a.yaml").write_text("x: 2\n")  # a run input: dirty
    assert pub.git_commit(tmp_path) == clean + "-dirty"
    full = pub.head_commit(tmp_path, short=False)  # the full hash (what whole-tree prediction records)
    assert len(full) == 40 and full.startswith(clean) and pub.head_commit(tmp_path) == clean
    assert pub.head_commit(tmp_path / "params" / "missing") is None  # no such folder: no commit


def test_shrink_png_fits_a_heavy_figure_under_the_byte_cap():
    from PIL import Image

    heavy = _png(1500, 1500, noisy=True)  # noise: a palette alone cannot bring it under the cap
    out = pub.shrink_png(heavy, max_px=1600, max_bytes=600_000)  # 2.3 MB as a 1500 px palette PNG
    assert len(out) <= 600_000
    with Image.open(io.BytesIO(out)) as im:
        assert max(im.size) >= pub.MIN_PNG_PX  # smaller, but never below the readable floor
    flat = _png(800, 600)
    assert pub.shrink_png(flat) == flat  # light and small: untouched


def test_publish_shrinks_figures_further_until_a_notebook_fits(tmp_path, monkeypatch):
    from stsynth_lib.book.publish import reference

    params = _params(tmp_path, "p", synthetic=False)
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:1200, 0:1200]  # a smooth figure with grain: smaller figures compress much better
    img = np.stack([(x / 5) % 256, (y / 5) % 256, ((x + y) / 9) % 256], -1)
    img = img + np.random.default_rng(0).integers(-6, 7, (1200, 1200, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, format="PNG")
    nb_path = _notebook(tmp_path / "executed" / "p" / "06_eval.ipynb", "p", png=buf.getvalue())
    _stamp(nb_path, "p", params)
    (tmp_path / "runs" / "p" / "eval").mkdir(parents=True)
    (tmp_path / "runs" / "p" / "eval" / "summary.json").write_text(json.dumps(_summary()))
    monkeypatch.setattr(reference, "MAX_NOTEBOOK_BYTES", 300_000)  # over it with the first figure cap (a 390 KB PNG)
    with pytest.warns(UserWarning):
        dest = pub.publish("p", executed_root=tmp_path / "executed", runs_dir=tmp_path / "runs",
                           reference_root=tmp_path / "reference", log=lambda *a: None)
    assert (dest / "06_eval.ipynb").stat().st_size <= 300_000


def test_publish_takes_noise_like_figures_below_the_usual_floor_when_it_must(tmp_path, monkeypatch):
    """Diffusion samples of an untrained backbone are noise: at the 640 px floor one figure alone overfills the
    notebook cap, so publishing goes down to LAST_RESORT_PNG_PX rather than committing a heavy notebook."""
    import base64

    from PIL import Image

    from stsynth_lib.book.publish import reference

    params = _params(tmp_path, "p", synthetic=False)
    nb_path = _notebook(tmp_path / "executed" / "p" / "05_cn.ipynb", "p", png=_png(1500, 1500, noisy=True))
    _stamp(nb_path, "p", params)
    (tmp_path / "runs" / "p" / "eval").mkdir(parents=True)
    (tmp_path / "runs" / "p" / "eval" / "summary.json").write_text(json.dumps(_summary()))
    monkeypatch.setattr(reference, "MAX_NOTEBOOK_BYTES", 400_000)
    with pytest.warns(UserWarning):  # the run has no results.md/examples.png (as in the test above)
        dest = pub.publish("p", executed_root=tmp_path / "executed", runs_dir=tmp_path / "runs",
                           reference_root=tmp_path / "reference", log=lambda *a: None)
    assert (dest / "05_cn.ipynb").stat().st_size <= 400_000
    nb = json.loads((dest / "05_cn.ipynb").read_text())
    pngs = [o["data"]["image/png"] for c in nb["cells"] for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    with Image.open(io.BytesIO(base64.b64decode(pngs[0]))) as im:
        assert reference.LAST_RESORT_PNG_PX <= max(im.size) < reference.MIN_PNG_PX


def test_a_chapter_that_resumed_its_training_says_so_in_its_stamp_and_on_the_landing_page(tmp_path):
    """A reference run that kept finished trainings resumes them at their last step: its wall time is not a training
    time, and the staged pages say so (from the trainers' own "Resumed from ... at step N" lines)."""
    params = _params(tmp_path, "p", synthetic=False)
    ref = tmp_path / "reference" / "p"
    for stem, line in (("01_a", "scanned\n"), ("03_c", "Resumed from runs/p/pix2pix/checkpoints/checkpoint-1706 "
                                                         "at step 1706\n")):
        path = _notebook(ref / f"{stem}.ipynb", "p")
        nb = pub.read_nb(path)
        nb["cells"][-1]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": [line]}]
        pub.write_nb(nb, path)
        _stamp(path, "p", params)
    (ref / "results").mkdir()
    (ref / "results" / "summary.json").write_text(json.dumps(_summary()))
    assert pub.profile_stamp(ref)["resumed"] == ["03_c"]
    out = pub.stage_book("reference", out=tmp_path / "stage", book_dir=_book(tmp_path),
                         reference_root=tmp_path / "reference", params_dir=params)
    assert "Chapter 3 resumed its trainings from saved checkpoints" in (out / "intro.md").read_text()
    banner = lambda stem: pub._src(next(c for c in pub.read_nb(out / "p" / f"{stem}.ipynb")["cells"]  # noqa: E731
                                        if pub.STAMP_TAG in c["metadata"].get("tags", [])))
    assert "Trainings resumed from saved checkpoints** (`pix2pix` at step 1706)" in banner("03_c")
    assert "resumed" not in banner("01_a")
