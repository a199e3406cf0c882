"""Run stamps: read and write notebooks, and record in each executed notebook the profile, the kind of data, the
commit, the date, the machine and papermill's wall time, with a banner cell first (``python -m stsynth_lib.book.publish
stamp``). Standard library and PyYAML only."""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import shutil
import subprocess
from pathlib import Path

STAMP_TAG = "stsynth-stamp"
HIDE_TAGS = ("parameters", "injected-parameters")
REFERENCE_ROOT = Path("book/reference")
EXECUTED_ROOT = Path("book/executed")


class PublishError(RuntimeError):
    """A missing input, named with the command that makes it."""


# --------------------------------------------------------------------------------------------------- notebooks io
def read_nb(path: str | Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_nb(nb: dict, path: str | Path) -> None:
    """Write like nbformat does (sorted keys, indent 1), so diffs stay small and stable."""
    Path(path).write_text(json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def _src(cell: dict) -> str:
    s = cell.get("source", "")
    return "".join(s) if isinstance(s, list) else s


def _tags(cell: dict) -> list:
    return cell.setdefault("metadata", {}).setdefault("tags", [])


# --------------------------------------------------------------------------------------------------------- stamp
def profile_data_kind(profile: str, params_dir: str | Path = "params") -> str:
    """"synthetic" or "real", from ``synthetic_data`` in ``params/<profile>/common.yaml``."""
    import yaml

    path = Path(params_dir) / profile / "common.yaml"
    if not path.is_file():
        raise PublishError(f"{path} not found: is '{profile}' a profile? (ls {params_dir}/)")
    common = yaml.safe_load(path.read_text()) or {}
    return "synthetic" if common.get("synthetic_data", False) else "real"


# What a run executes: a change here makes a stamp "-dirty". Published results (book/reference/, the README block)
# are outputs of runs, not inputs: publishing one profile must not mark the next run of another as dirty.
RUN_INPUTS = ("stsynth_lib", "notebooks", "params", "benchmarks", "Makefile", "pyproject.toml", "environment.yml")


def head_commit(repo: str | Path = ".", short: bool = True) -> str | None:
    """The commit HEAD of the git checkout that holds ``repo`` (12 hex digits when ``short``, else the full hash);
    None outside a git checkout or without git. The one place that asks git for a commit (``git_commit`` adds the
    ``-dirty`` mark; whole-tree prediction records the full hash of the library's checkout)."""
    cmd = ["git", "-C", str(repo), "rev-parse", *(["--short=12"] if short else []), "HEAD"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def git_commit(repo: str | Path = ".") -> str:
    """Short commit of ``repo``, with ``-dirty`` when a tracked file a run executes (``RUN_INPUTS``) differs from it;
    "unknown" outside git."""
    head = head_commit(repo)
    if head is None:
        return "unknown"
    try:
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no", "--", *RUN_INPUTS],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def machine_description() -> str:
    """CPU model and core count, plus the GPU names nvidia-smi reports (no torch import)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"CPU {cpu}, {os.cpu_count()} cores"
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=20).stdout.split("\n")
            gpus = [g.strip() for g in out if g.strip()]
            if gpus:
                text = f"GPU {', '.join(gpus)}; " + text
        except (OSError, subprocess.SubprocessError):
            pass
    return text


def format_duration(seconds: float | None) -> str:
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "not measured"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def banner_text(stamp: dict) -> str:
    kind = "REAL" if stamp["data"] == "real" else "SYNTHETIC"
    what = ("real SpaceNet 7 imagery" if stamp["data"] == "real"
            else "synthetic SpaceNet 7 imagery: these numbers show the pipeline works, not how well the models do")
    return (f"**Profile `{stamp['profile']}` · {kind} data** ({what}).\n\n"
            f"*Run stamp:* commit `{stamp['commit']}` · {stamp['date']} · {stamp['machine']} · "
            f"this notebook ran in **{format_duration(stamp.get('wall_s'))}** (measured by papermill). "
            f"Every time estimate in this book is read from such a stamp. The parameters of the run are in the "
            f"collapsed *Parameters* cells below.")


def stamp_notebook(path: str | Path, profile: str, *, params_dir: str | Path = "params", repo: str | Path = ".",
                   wall_s: float | None = None, date: str | None = None, machine: str | None = None,
                   commit: str | None = None) -> dict:
    """Record the run stamp in ``metadata.stsynth.stamp``, hide the parameter cells, put a banner cell first.

    Idempotent: a second call replaces the banner and the stamp and adds no tag twice. The wall time is papermill's
    own measurement (``metadata.papermill.duration``) unless ``wall_s`` is given."""
    nb = read_nb(path)
    pm = nb.get("metadata", {}).get("papermill", {})
    ran_with = (pm.get("parameters") or {}).get("profile")
    if ran_with and ran_with != profile:
        raise PublishError(f"{path} ran with profile '{ran_with}' (papermill parameters), not '{profile}': "
                           f"rerun it with `make nb NB={Path(path).stem} PROFILE={profile}`")
    if wall_s is None and pm.get("duration") is not None:
        wall_s = float(pm["duration"])
    if date is None:
        end = pm.get("end_time")
        when = (_dt.datetime.fromisoformat(end) if end else _dt.datetime.now(_dt.timezone.utc))
        date = when.astimezone(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    stamp = {"profile": profile, "data": profile_data_kind(profile, params_dir),
             "commit": commit or git_commit(repo), "date": date, "machine": machine or machine_description(),
             "wall_s": None if wall_s is None else round(float(wall_s), 1)}
    nb.setdefault("metadata", {}).setdefault("stsynth", {})["stamp"] = stamp
    cells = [c for c in nb.get("cells", []) if STAMP_TAG not in c.get("metadata", {}).get("tags", [])]
    for c in cells:
        tags = _tags(c)
        if any(t in tags for t in HIDE_TAGS):
            if "hide-cell" not in tags:
                tags.append("hide-cell")
            which = (f"this run's values ({profile})" if "injected-parameters" in tags
                     else "the notebook's defaults")
            c["metadata"]["mystnb"] = {**c["metadata"].get("mystnb", {}),
                                       "code_prompt_show": f"Parameters: {which}", "code_prompt_hide": "Hide parameters"}
    banner = {"cell_type": "markdown", "id": "stsynth-stamp", "metadata": {"tags": [STAMP_TAG]},
              "source": banner_text(stamp)}
    nb["cells"] = [banner] + cells
    write_nb(nb, path)
    return stamp


def read_stamp(nb_or_path) -> dict | None:
    nb = read_nb(nb_or_path) if isinstance(nb_or_path, (str, Path)) else nb_or_path
    return nb.get("metadata", {}).get("stsynth", {}).get("stamp")
