"""Paired notebooks (notebooks/*.py <-> *.ipynb) and the Colab setup cell: CI fails when they drift."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from stsynth_lib.book import notebook_sync as ns

ROOT = Path(__file__).resolve().parents[1]
IPYNB = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))

pytest.importorskip("jupytext")


def first_code_cell(ipynb: Path) -> dict:
    return next(c for c in json.loads(ipynb.read_text())["cells"] if c["cell_type"] == "code")


def test_notebook_pairs_in_sync():
    """Every .py has its .ipynb, jupytext --sync would change nothing, the Colab cells and the book URL match."""
    assert len(IPYNB) == len(ns.notebooks()) >= 7
    problems = ns.check()
    assert not problems, "\n".join(problems) + f"\nFix: {ns.FIX}"


def test_committed_ipynb_have_no_outputs_and_python3_kernel():
    for ipynb in IPYNB:
        nb = json.loads(ipynb.read_text())
        assert nb["metadata"]["kernelspec"]["name"] == "python3", ipynb.name
        assert set(nb["metadata"]) == {"jupytext", "kernelspec"}, ipynb.name
        for cell in nb["cells"]:
            assert not cell.get("outputs") and cell.get("execution_count") is None, ipynb.name


@pytest.fixture
def tree(tmp_path):
    """A copy of the files the sync reads, with two notebooks."""
    for f in ["pyproject.toml", "jupytext.toml", "book/_config.yml", "docs/OPTIONS.md"]:
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / f, tmp_path / f)
    (tmp_path / "notebooks").mkdir()
    for stem in ["01_explore_data", "05_controlnet"]:
        for ext in (".py", ".ipynb"):
            shutil.copy(ROOT / "notebooks" / (stem + ext), tmp_path / "notebooks" / (stem + ext))
    assert ns.check(tmp_path) == []
    return tmp_path


def test_check_names_each_drift_and_write_fixes_it(tree):
    py = tree / "notebooks" / "01_explore_data.py"
    py.write_text(py.read_text().replace("os.chdir(find_project_root())", "os.chdir(find_project_root())  # here", 1))
    ipynb = tree / "notebooks" / "05_controlnet.ipynb"
    nb = json.loads(ipynb.read_text())
    code = next(c for c in nb["cells"] if c["cell_type"] == "code" and "parameters" not in c["metadata"].get("tags", []))
    code["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["hi\n"]}]
    ipynb.write_text(json.dumps(nb, indent=1) + "\n")
    problems = ns.check(tree)
    assert any("01_explore_data.ipynb: out of sync" in p for p in problems), problems
    assert any("05_controlnet.ipynb: out of sync" in p for p in problems), problems

    ns.write(tree)
    assert ns.check(tree) == []
    assert "os.chdir(find_project_root())  # here" in (tree / "notebooks" / "01_explore_data.ipynb").read_text()
    assert all(not c.get("outputs") for c in json.loads(ipynb.read_text())["cells"])


def test_a_default_edited_in_the_notebook_is_drift_and_write_restores_the_schemas(tree):
    """The parameters cell is generated from stsynth_lib/options: a default changed there is reported and undone."""
    py = tree / "notebooks" / "01_explore_data.py"
    py.write_text(py.read_text().replace("seed = 0 ", "seed = 1 ", 1))
    assert any("01_explore_data.py: the parameters or options cell differs" in p for p in ns.check(tree))
    ns.write(tree)
    assert ns.check(tree) == [] and "\nseed = 0 " in py.read_text()


def test_the_url_lives_in_pyproject_only(tree):
    pyproject = tree / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace(ns.repository_url(tree), "https://example.org/me/stsynth"))
    problems = ns.check(tree)
    assert any("01_explore_data.py: the Colab setup cell" in p for p in problems), problems
    assert any("book/_config.yml: repository.url" in p for p in problems), problems
    ns.write(tree)
    assert ns.check(tree) == []
    assert 'REPO_URL = "https://example.org/me/stsynth"' in (tree / "notebooks" / "05_controlnet.py").read_text()
    assert "url: https://example.org/me/stsynth" in (tree / "book" / "_config.yml").read_text()


def test_colab_cell_is_first_code_cell_before_parameters():
    for ipynb in IPYNB:
        code = [c for c in json.loads(ipynb.read_text())["cells"] if c["cell_type"] == "code"]
        assert code[0]["metadata"]["tags"] == ns.COLAB_TAGS, ipynb.name
        assert "parameters" in code[1]["metadata"].get("tags", []), ipynb.name
        assert "".join(code[0]["source"]) == ns.colab_cell_source(ipynb.stem, ns.repository_url()), ipynb.name


# Run outside Colab: anything that would install, clone, mount or move would raise.
_GUARD = """
import os, subprocess, sys
def _refuse(*a, **k):
    raise AssertionError(f"the Colab cell acted outside Colab: {a}")
subprocess.run = subprocess.call = subprocess.check_call = subprocess.Popen = _refuse
os.system = os.symlink = os.chdir = os.makedirs = _refuse
"""


@pytest.mark.parametrize("ipynb", IPYNB, ids=lambda p: p.stem)
def test_first_cell_runs_outside_colab_and_does_nothing(ipynb, tmp_path):
    src = "".join(first_code_cell(ipynb)["source"])
    check = "\nassert IN_COLAB is False\nassert 'google.colab' not in sys.modules and 'torch' not in sys.modules\n"
    r = subprocess.run([sys.executable, "-c", _GUARD + src + check], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "" and list(tmp_path.iterdir()) == []


# Colab, faked: /content is a temporary folder, google.colab.drive and torch are stubs, subprocess.run records.
_FAKE_COLAB = """
import json, os, subprocess, sys, types
calls = []
def _run(cmd, check=False):
    calls.append(cmd)
    if cmd[:2] == ["git", "clone"]:
        os.makedirs(cmd[-1])
subprocess.run = _run
colab = types.ModuleType("google.colab")
colab.drive = types.SimpleNamespace(mount=lambda p: os.makedirs(p + "/MyDrive"))
sys.modules["google"] = types.ModuleType("google")
sys.modules["google.colab"] = colab
sys.modules["torch"] = types.SimpleNamespace(cuda=types.SimpleNamespace(is_available=lambda: False))
"""


@pytest.mark.parametrize("stem", ["01_explore_data", "05_controlnet"])
def test_colab_branch_installs_clones_and_links_drive(stem, tmp_path):
    src = ns.colab_cell_source(stem, ns.repository_url()).replace('"/content', f'"{tmp_path}')
    report = "\nprint(json.dumps({'calls': calls, 'root': os.environ['STSYNTH_ROOT'], 'cwd': os.getcwd()}))\n"
    r = subprocess.run([sys.executable, "-c", _FAKE_COLAB + src + report], cwd=tmp_path, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    gpu, out = r.stdout.strip().splitlines()
    assert gpu.startswith("GPU: none")
    out = json.loads(out)
    root = tmp_path / "stsynth"
    assert out["root"] == out["cwd"] == str(root)
    assert out["calls"][0] == ["git", "clone", "--depth", "1", ns.repository_url(), str(root)]
    extras = ",".join(ns.EXTRAS.get(stem, ns.EXTRAS_DEFAULT))
    assert out["calls"][1][1:] == ["-m", "pip", "install", "-q", f"{root}[{extras}]"]
    for name in ("data", "runs"):
        assert (root / name).resolve() == (tmp_path / "drive" / "MyDrive" / "stsynth" / name).resolve()


def test_colab_cell_template_is_short_and_plain_python():
    src = ns.colab_cell_source("01_explore_data", "https://x/y")
    assert len(src.splitlines()) <= 30
    assert "!" not in textwrap.dedent(src).replace("!=", "")  # no shell magics: the .py stays plain Python
