"""`make book` needs only the standard library, PyYAML and jupyter-book (the light .venv-book of a fresh clone and of
the Pages workflow): the staging step, the README results block and the book check run in an interpreter where
importing numpy, pandas or torch fails."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "book" / "reference"
HEAVY = ("numpy", "pandas", "torch")

# Run before the command: any import of a heavy package (even a lazy one, even where it is installed) fails.
PRELUDE = f"""
import runpy, sys
class _NoHeavy:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {HEAVY!r}:
            raise ImportError(f"{{name}} is not in the light book environment")
        return None
sys.meta_path.insert(0, _NoHeavy())
for _m in [m for m in sys.modules if m.split(".")[0] in {HEAVY!r}]:
    del sys.modules[_m]
module, sys.argv = sys.argv[1], [sys.argv[1]] + sys.argv[2:]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def _light(module: str, *args: str) -> subprocess.CompletedProcess:
    """``python -m module args`` from the repository root with numpy, pandas and torch unimportable."""
    return subprocess.run([sys.executable, "-c", PRELUDE, module, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_the_prelude_blocks_the_heavy_packages():
    r = subprocess.run([sys.executable, "-c", PRELUDE, "json.tool", "--help"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for pkg in HEAVY:
        code = PRELUDE.split("module, sys.argv")[0] + f"import {pkg}\n"
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert r.returncode != 0 and "light book environment" in r.stderr, pkg


@pytest.mark.skipif(not any(REFERENCE.glob("*/*.ipynb")), reason="no committed reference run")
def test_stage_and_readme_run_without_numpy_pandas_torch(tmp_path):
    out = tmp_path / "stage"
    r = _light("stsynth_lib.book.publish", "stage", "--source", "reference", "--out", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    intro = (out / "intro.md").read_text()
    assert "## Results: `" in intro and "| model |" in intro and (out / "_toc.yml").is_file()
    assert "No `summary.json`" not in intro
    readme = tmp_path / "README.md"
    shutil.copy2(ROOT / "README.md", readme)
    r = _light("stsynth_lib.book.publish", "readme", "--readme", str(readme))
    assert r.returncode == 0, r.stdout + r.stderr
    assert readme.read_text(encoding="utf-8") == (ROOT / "README.md").read_text(encoding="utf-8"), \
        "the light environment wrote another README block than the committed one: run make readme-results"
    r = _light("stsynth_lib.book.publish", "readme", "--check")  # what `make readme-results` compares, in place
    assert r.returncode == 0, r.stdout + r.stderr


def test_book_check_runs_without_numpy_pandas_torch(tmp_path):
    html = tmp_path / "html"
    html.mkdir()
    (html / "index.html").write_text("<html><body><p>offline</p></body></html>")
    r = _light("stsynth_lib.book.check", str(html))
    assert r.returncode == 0 and "nothing loaded from the network" in r.stdout, r.stdout + r.stderr


def test_make_book_and_the_pages_workflow_use_only_these_commands():
    """The Pages workflow runs `make book` on a fresh checkout (no .venv: the light .venv-book), and `make book`
    runs only the commands tested above besides jupyter-book."""
    workflow = (ROOT / ".github" / "workflows" / "book.yml").read_text()
    assert re.search(r"^\s*run: make book\s*$", workflow, re.M)
    make = (ROOT / "Makefile").read_text()
    recipe = make.split("\nbook: ", 1)[1].split("\n\n", 1)[0]
    modules = set(re.findall(r"python -m ([\w.]+)", recipe))
    assert modules == {"stsynth_lib.book.publish", "stsynth_lib.book.check"}, modules
    env = make.split("$(BOOK_VENV)/.installed:", 1)[1].split("\n\n", 1)[0]
    assert "jupyter-book" in env and "pandas" not in env and "torch" not in env


def test_book_screens_runs_without_numpy_pandas_torch(tmp_path):
    """make book-check's static pass (PNG panels decoded with zlib, links, verdicts) in the light environment."""
    import base64

    html = tmp_path / "html"
    html.mkdir()
    png = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")
    (html / "a.png").write_bytes(png)
    (html / "index.html").write_text('<html><body><img src="a.png"><a href="b.html">b</a></body></html>')
    r = _light("stsynth_lib.book.screens", str(html), "--out", str(tmp_path / "out"), "--no-browser")
    assert r.returncode == 1, r.stdout + r.stderr  # a 1 px image is one colour; b.html is missing
    assert "constant image" in r.stdout and "missing file" in r.stdout, r.stdout + r.stderr
