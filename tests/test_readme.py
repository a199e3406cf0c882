"""The README stays a front door (short; the details in docs/), and no relative link of the README, docs/ or the
experiments' READMEs is dead: each names a file that exists, and each ``#anchor`` a heading of that file (GitHub's
slugs). The parameter files' pointers to the studies (``experiments/<study>/README.md#section``) are checked too."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_README_LINES = 160
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "experiments").rglob("*.md")])
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def _prose(text: str) -> str:
    """``text`` without fenced code blocks and inline code (links there are not links)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (not ``-`` or ``_``), spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a markdown file (a repeated heading gets -1, -2, ... as on GitHub)."""
    seen: dict[str, int] = {}
    out = set()
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.S | re.M)
    for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, flags=re.M):
        s = slug(m.group(1))
        n = seen.get(s, 0)
        out.add(s if n == 0 else f"{s}-{n}")
        seen[s] = n + 1
    return out


def _check(target: str, source: Path) -> str | None:
    """None when ``target`` (a link written in ``source``) resolves, else what is wrong."""
    path, _, anchor = target.partition("#")
    dest = (source.parent / path).resolve() if path else source
    if not dest.exists():
        return f"{target}: no such file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}"
    if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
        return f"{target}: no heading #{anchor} in {dest.relative_to(ROOT)}"
    return None


def test_slug_is_githubs():
    assert slug("Round 4, second step: centre_inputs") == "round-4-second-step-centre_inputs"
    assert slug("Evaluation (chapters 6 and 7)") == "evaluation-chapters-6-and-7"
    assert (slug("Whole-tree prediction (`python -m stsynth_lib.predict`)")
            == "whole-tree-prediction-python--m-stsynth_libpredict")


def test_readme_is_short():
    n = len((ROOT / "README.md").read_text(encoding="utf-8").splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines (at most {MAX_README_LINES}): move details into docs/"


def test_readme_links_every_docs_page():
    linked = {m.group(1).partition("#")[0] for m in LINK.finditer(_prose((ROOT / "README.md").read_text()))}
    missing = [f"docs/{p.name}" for p in sorted((ROOT / "docs").glob("*.md")) if f"docs/{p.name}" not in linked]
    assert not missing, f"docs pages the README does not link: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc):
    bad = []
    for m in LINK.finditer(_prose(doc.read_text(encoding="utf-8"))):
        target = m.group(1)
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
            continue
        if (err := _check(target, doc)) is not None:
            bad.append(err)
    assert not bad, f"dead links in {doc.relative_to(ROOT)}:\n" + "\n".join(bad)


def test_parameter_files_point_to_existing_study_sections():
    bad = []
    for f in sorted((ROOT / "params").glob("*/*.yaml")):
        for target in re.findall(r"(experiments/[\w/.-]+\.md(?:#[\w-]+)?)", f.read_text(encoding="utf-8")):
            if (err := _check("../../" + target, f)) is not None:
                bad.append(f"{f.relative_to(ROOT)}: {err}")
    assert not bad, "\n".join(bad)
