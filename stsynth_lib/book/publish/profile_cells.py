"""Chapter cells that only some runs can fill, dropped from the staged book where the run cannot.

A notebook cell (markdown or code) tagged ``needs-labels``, ``needs-blocks``, ``needs-areas``, ``needs-clouds`` or
``synthetic-only`` shows in the book only when the run has what the tag names (read from the run's files by
:func:`stsynth_lib.book.publish.facts.run_facts`, never assumed from the profile's name). Where cells are dropped,
one line says what was left out and why, once per chapter: a reader of an unlabelled run sees no empty
"new buildings" section and no sentence about footprints it does not have. The executed notebooks keep every cell
(so a local run shows what it computed); only the staged copy drops them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

# tag -> (the fact that keeps the cell, what the run lacks when it does not: the words of the note)
PROFILE_TAGS: dict[str, tuple[str, str]] = {
    "needs-labels": ("labelled", "building labels (footprints, building F1, new buildings)"),
    "needs-blocks": ("blocks", "a split by blocks inside an area (this run is split by whole areas)"),
    "needs-areas": ("areas", "a split by whole areas (this run is split by blocks inside an area)"),
    "needs-clouds": ("clouds", "cloud masks (UDM)"),
    "synthetic-only": ("synthetic", "synthetic data (these are real)"),
}
NOTE_TAG = "profile-note"


def cell_facts(facts: Mapping, data_kind: str | None) -> dict[str, bool]:
    """What a run has, for :data:`PROFILE_TAGS`: building labels (building F1 or new-building pixel scores were
    scored), a block split, an area split, cloud masks (chapter 1 found UDM masks), synthetic data."""
    unit = facts.get("unit") or "area"
    return {"labelled": bool(facts.get("building_f1") or facts.get("new_building_px")),
            "blocks": unit == "block", "areas": unit != "block",
            "clouds": facts.get("clouds") in ("some", "all"),
            "synthetic": data_kind == "synthetic"}


def _tags(cell: Mapping) -> list[str]:
    return list((cell.get("metadata") or {}).get("tags") or [])


def drop_profile_cells(nb: dict, has: Mapping[str, bool]) -> list[str]:
    """Drop from ``nb`` (in place) the cells whose :data:`PROFILE_TAGS` tag names something the run lacks
    (``has``: :func:`cell_facts`), and put one markdown note where the first one was, naming what was left out.
    Returns the tags whose cells were dropped. Unknown tags keep their cells."""
    kept, dropped, at = [], [], None
    for cell in nb.get("cells", []):
        missing = [t for t in _tags(cell) if t in PROFILE_TAGS and not has.get(PROFILE_TAGS[t][0], True)]
        if missing:
            at = len(kept) if at is None else at
            dropped += [t for t in missing if t not in dropped]
        else:
            kept.append(cell)
    if dropped:
        what = "; ".join(PROFILE_TAGS[t][1] for t in dropped)
        kept.insert(at, {"cell_type": "markdown", "metadata": {"tags": [NOTE_TAG]},
                         "source": f"*Left out of this page because this run's data do not have them: the parts "
                                   f"that need {what}.*"})
    nb["cells"] = kept
    return dropped


# what the trainers print when they continue from a saved checkpoint (cgan.train, controlnet.train, stage 1)
_RESUMED = re.compile(r"[Rr]esumed from (\S+) at step (\d+)")


def resumed_trainings(nb: Mapping) -> list[tuple[str, int]]:
    """``[(checkpoint, step)]`` that an executed notebook's outputs say its trainings resumed from: the chapter's wall
    time then counts only the steps after them (a reference run that kept finished trainings resumes at their last
    step and trains nothing)."""
    out = []
    for cell in nb.get("cells", []):
        for o in cell.get("outputs", []) or []:
            text = o.get("text", "")
            text = "".join(text) if isinstance(text, list) else str(text)
            out += [(m.group(1), int(m.group(2))) for m in _RESUMED.finditer(text)]
    return out


def resumed_sentence(chapters: list[str]) -> str:
    """The words the landing page adds to a run's total time when chapters resumed trainings; "" when none did."""
    if not chapters:
        return ""
    from stsynth_lib.verdict import join_words

    names = [Path(c).stem.split("_")[0].lstrip("0") or c for c in chapters]
    listed = join_words(names)
    return (f" Chapter{'s' if len(names) > 1 else ''} {listed} resumed {'their' if len(names) > 1 else 'its'} "
            f"trainings from saved checkpoints, so this time leaves out the training done before them.")
