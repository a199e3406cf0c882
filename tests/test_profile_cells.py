"""The staged book drops the cells a run cannot fill (stsynth_lib.book.publish.profile_cells), with one note."""

from __future__ import annotations

import json
from pathlib import Path

from stsynth_lib.book.publish import profile_cells as pc
from stsynth_lib.book.publish.pages import stage_book
from stsynth_lib.book.publish.stamp import read_nb, write_nb


def _cell(text: str, *tags: str, kind: str = "markdown") -> dict:
    cell = {"cell_type": kind, "metadata": {"tags": list(tags)}, "source": text}
    if kind == "code":
        cell.update(outputs=[], execution_count=None)
    return cell


def _nb() -> dict:
    return {"nbformat": 4, "nbformat_minor": 5, "metadata": {},
            "cells": [_cell("# 2. Title"), _cell("Overview for every run."),
                      _cell("The footprints of the future date guide the model.", "needs-labels"),
                      _cell("plot_new_buildings(res)", "needs-labels", kind="code"),
                      _cell("Split by blocks inside the area.", "needs-blocks"),
                      _cell("A tag the staging does not know.", "hide-input"), _cell("Summary.")]}


def test_an_unlabelled_area_split_run_drops_label_and_block_cells_with_one_note():
    nb = _nb()
    has = pc.cell_facts({"building_f1": False, "new_building_px": False, "unit": "area", "clouds": "none"}, "real")
    assert has == {"labelled": False, "blocks": False, "areas": True, "clouds": False, "synthetic": False}
    assert pc.drop_profile_cells(nb, has) == ["needs-labels", "needs-blocks"]
    texts = [c["source"] for c in nb["cells"]]
    assert texts[:2] == ["# 2. Title", "Overview for every run."]
    assert "footprints of the future" not in " ".join(texts) and "Split by blocks" not in " ".join(texts)
    notes = [c for c in nb["cells"] if pc.NOTE_TAG in c["metadata"]["tags"]]
    assert len(notes) == 1 and nb["cells"].index(notes[0]) == 2  # where the first dropped cell was
    assert "building labels" in notes[0]["source"] and "blocks inside an area" in notes[0]["source"]
    assert texts[-2:] == ["A tag the staging does not know.", "Summary."]


def test_a_labelled_block_split_run_keeps_every_cell():
    nb = _nb()
    has = pc.cell_facts({"building_f1": True, "unit": "block", "clouds": "some"}, "real")
    assert pc.drop_profile_cells(nb, has) == [] and nb["cells"] == _nb()["cells"]
    # labels without a segmenter (pixel scores on new buildings only) still count as labels
    assert pc.cell_facts({"building_f1": False, "new_building_px": True}, "real")["labelled"] is True


def test_stage_book_drops_the_cells_of_what_the_run_lacks(tmp_path):
    ref = tmp_path / "reference" / "p"
    (ref / "results").mkdir(parents=True)
    write_nb(_nb(), ref / "02_b.ipynb")
    summary = {"split": "test", "summary": [{"model": "persistence", "metric": "psnr", "mean": 20.0, "n": 5}],
               "paired_vs_persistence": [], "paired_resamples": "whole areas (AOIs)"}
    (ref / "results" / "summary.json").write_text(json.dumps(summary))
    book = tmp_path / "book"
    book.mkdir()
    (book / "_config.yml").write_text("title: t\n")
    (book / "intro.md").write_text("# T\n\nWhat.\n\nMore.\n")
    params = tmp_path / "params" / "p"
    params.mkdir(parents=True)
    (params / "common.yaml").write_text("profile: p\nsynthetic_data: false\n")
    out = stage_book("reference", out=tmp_path / "stage", book_dir=book, reference_root=tmp_path / "reference",
                     params_dir=tmp_path / "params")
    staged = json.dumps(read_nb(out / "p" / "02_b.ipynb"))
    assert "footprints of the future" not in staged and "plot_new_buildings" not in staged
    assert "Left out of this page" in staged
    assert "footprints of the future" in json.dumps(read_nb(ref / "02_b.ipynb"))  # the executed copy keeps it
    # a labelled run keeps the cells
    summary["summary"].append({"model": "pix2pix", "metric": "f1_micro", "mean": 0.4, "n": 5})
    (ref / "results" / "summary.json").write_text(json.dumps(summary))
    out = stage_book("reference", out=tmp_path / "stage", book_dir=book, reference_root=tmp_path / "reference",
                     params_dir=tmp_path / "params")
    assert "footprints of the future" in json.dumps(read_nb(out / "p" / "02_b.ipynb"))


def test_long_printed_sentences_are_wrapped_and_aligned_text_is_not():
    from stsynth_lib.book.publish.reference import OUTPUT_LINE_CHARS, wrap_prose_lines

    sentence = "No model has a lower KID than the persistence baseline over all gaps " * 3
    table = "model            psnr    ssim  " + "x" * 120
    wrapped = wrap_prose_lines(f"{sentence.strip()}\n{table}\nshort")
    lines = wrapped.split("\n")
    assert all(len(x) <= OUTPUT_LINE_CHARS for x in lines[:-2]) and len(lines) > 3
    assert " ".join(x.strip() for x in lines[:-2]) == sentence.strip()  # every word kept, in order
    assert lines[-2:] == [table, "short"]
