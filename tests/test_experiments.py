"""experiments/ and benchmarks/ kept apart: every experiment script answers ``--help`` from the repository root
(so its imports work from where it lives), ``benchmarks/`` holds benchmarks only, every study has a README, and
neither folder is imported by the library."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
BENCHMARKS = ROOT / "benchmarks"
# a script: any .py under experiments/ but the shared modules (named _*.py, e.g. a study's _common.py)
SCRIPTS = sorted(p for p in EXPERIMENTS.rglob("*.py") if not p.name.startswith("_"))


def test_there_are_experiment_scripts():
    assert len(SCRIPTS) >= 9, SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(EXPERIMENTS)))
def test_experiment_script_answers_help(script):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # as a user runs it: no path set by hand
    r = subprocess.run([sys.executable, str(script.relative_to(ROOT)), "--help"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{script.relative_to(ROOT)} --help exited {r.returncode}:\n{r.stderr[-3000:]}"
    assert re.search(rf"usage: {re.escape(script.name)}\b", r.stdout), r.stdout[:500]


def test_benchmarks_holds_benchmarks_only():
    allowed = {"reference_pix2pix.py", "gpu_check.py", "__init__.py", "README.md"}
    others = sorted(p.name for p in BENCHMARKS.iterdir()
                    if p.name != "__pycache__" and not re.fullmatch(r"bench_\w+\.py", p.name) and p.name not in allowed)
    assert not others, f"benchmarks/ holds benchmarks only; move these into experiments/<study>/: {others}"


def test_every_study_has_a_readme():
    studies = sorted(p for p in EXPERIMENTS.iterdir() if p.is_dir() and p.name != "__pycache__")
    assert studies
    missing = [p.name for p in studies if not (p / "README.md").is_file()]
    assert not missing, f"studies without a README.md (question, commands, tables, decision): {missing}"
    index = (EXPERIMENTS / "README.md").read_text(encoding="utf-8")
    unlisted = [p.name for p in studies if f"({p.name}/README.md)" not in index]
    assert not unlisted, f"studies not linked from experiments/README.md: {unlisted}"


def test_study_readmes_name_their_scripts():
    for script in SCRIPTS:
        readme = (script.parent / "README.md").read_text(encoding="utf-8")
        assert script.name in readme, f"{script.parent.name}/README.md does not name {script.name}"


def test_library_does_not_import_experiments_or_benchmarks():
    pattern = re.compile(r"^\s*(from|import)\s+(experiments|benchmarks)\b", re.M)
    bad = [str(p.relative_to(ROOT)) for p in (ROOT / "stsynth_lib").rglob("*.py") if pattern.search(p.read_text())]
    assert not bad, bad
