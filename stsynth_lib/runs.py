"""Run folders, seeds, atomic writes and checkpoint bookkeeping shared by every trainer.

A run lives in ``<runs_dir>/<profile>/<model>/`` and holds:

* ``params.yaml``           the effective options of the run,
* ``log.csv``               one row per logged step (losses, throughput, ...),
* ``checkpoints/checkpoint-<step>/``  resumable state, written atomically,
* ``samples/``              image grids written during training.

Checkpoints are written into ``checkpoint-<step>.tmp`` and renamed when
complete, so a crash mid-write never leaves a half-written checkpoint that
``latest_checkpoint`` would pick up.
"""

from __future__ import annotations

import contextlib
import csv
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import yaml

_CKPT_RE = re.compile(r"^checkpoint-(\d+)$")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) for reproducible runs."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    try:
        import torch

        torch.manual_seed(seed)
        if torch.cuda.is_available():
            torch.cuda.manual_seed_all(seed)
    except ImportError:  # pragma: no cover - torch is a core dependency
        pass


def find_project_root(start: str | os.PathLike | None = None) -> Path:
    """Return the stsynth checkout root (the folder holding ``pyproject.toml`` and ``stsynth_lib``).

    Notebooks call this so that paths in parameter files, which are relative to
    the project root, work whether Jupyter was started in the root or in
    ``notebooks/``. ``STSYNTH_ROOT`` overrides the search.
    """
    env = os.environ.get("STSYNTH_ROOT")
    if env:
        return Path(env).resolve()
    here = Path(start or Path.cwd()).resolve()
    for candidate in [here, *here.parents]:
        if (candidate / "pyproject.toml").is_file() and (candidate / "stsynth_lib").is_dir():
            return candidate
    raise FileNotFoundError(
        f"Could not find the stsynth project root above {here}: no folder holds both "
        "pyproject.toml and stsynth_lib/. Start Jupyter inside the checkout or set STSYNTH_ROOT."
    )


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file and ``os.replace`` (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` that leaves the previous file intact if the process dies mid-write."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def save_yaml(obj: Any, path: str | os.PathLike) -> Path:
    return atomic_write_text(path, yaml.safe_dump(_plain(obj), sort_keys=False))


def _plain(obj: Any) -> Any:
    """Convert paths, numpy scalars and tuples to YAML-friendly builtins."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def prepare_run_dir(runs_dir: str | os.PathLike, profile: str, model_name: str, params: Mapping[str, Any]) -> Path:
    """Create ``<runs_dir>/<profile>/<model_name>/`` and write its effective ``params.yaml``."""
    run_dir = Path(runs_dir) / profile / model_name
    for sub in ("checkpoints", "samples"):
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
    save_yaml(dict(params), run_dir / "params.yaml")
    return run_dir


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete ``checkpoint-<step>`` folders under ``run_dir/checkpoints``, oldest first."""
    ckpt_root = Path(run_dir) / "checkpoints"
    found = []
    if ckpt_root.is_dir():
        for p in ckpt_root.iterdir():
            m = _CKPT_RE.match(p.name)
            if m and p.is_dir():
                found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1][1] if ckpts else None


def resolve_resume(run_dir: str | os.PathLike, resume_from_checkpoint: str | None) -> Path | None:
    """Interpret a ``resume_from_checkpoint`` option: ``None``/``""`` (fresh), ``"latest"``, or a path."""
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint == "latest":
        return latest_checkpoint(run_dir)
    p = Path(resume_from_checkpoint)
    if not p.is_absolute() and not p.exists():
        p = Path(run_dir) / "checkpoints" / resume_from_checkpoint
    if not p.is_dir():
        raise FileNotFoundError(
            f"resume_from_checkpoint={resume_from_checkpoint!r}: no checkpoint folder at {p}. "
            f"Available: {[c.name for _, c in list_checkpoints(run_dir)] or 'none'}; use 'latest' or leave empty."
        )
    return p


@contextlib.contextmanager
def atomic_checkpoint_dir(run_dir: str | os.PathLike, step: int, keep: int | None = None) -> Iterator[Path]:
    """Yield a temporary folder to write a checkpoint into; rename it to ``checkpoint-<step>`` on success.

    On an exception the temporary folder is removed and earlier checkpoints are
    untouched. After a successful rename, checkpoints beyond the newest ``keep``
    are deleted (``keep=None`` or ``0`` keeps all).
    """
    ckpt_root = Path(run_dir) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"checkpoint-{step}"
    tmp = ckpt_root / f"checkpoint-{step}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    if keep:
        prune_checkpoints(run_dir, keep)


def prune_checkpoints(run_dir: str | os.PathLike, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints; return the deleted folders."""
    ckpts = list_checkpoints(run_dir)
    removed = []
    for _, p in ckpts[: max(0, len(ckpts) - keep)]:
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


class CSVLogger:
    """Append-only CSV log, flushed each row. ``truncate_after(step)`` drops rows from a run being resumed."""

    def __init__(self, path: str | os.PathLike, fieldnames: list[str] | None = None):
        self.path = Path(path)
        self.fieldnames = fieldnames

    def truncate_after(self, step: int, step_key: str = "step") -> None:
        if not self.path.exists():
            return
        with open(self.path, newline="") as fh:
            rows = list(csv.DictReader(fh))
            fields = rows[0].keys() if rows else None
        kept = [r for r in rows if float(r[step_key]) <= step]
        if fields is None:
            return
        import io

        out = io.StringIO()
        w = csv.DictWriter(out, fieldnames=list(fields))
        w.writeheader()
        w.writerows(kept)
        atomic_write_text(self.path, out.getvalue())

    def log(self, row: Mapping[str, Any]) -> None:
        new = not self.path.exists() or self.path.stat().st_size == 0
        if self.fieldnames is None:
            if not new:
                with open(self.path, newline="") as fh:
                    self.fieldnames = next(csv.reader(fh))
            else:
                self.fieldnames = list(row.keys())
        with open(self.path, "a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=self.fieldnames, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow({k: _plain(v) for k, v in row.items()})
            fh.flush()


def parse_cli_value(text: str) -> Any:
    """Command-line value parsed as YAML (``1e-4``, ``true``, ``[1, 2]``); ``none``/``null`` give ``None``."""
    v = yaml.safe_load(text)
    if isinstance(v, str):
        if v.lower() in ("none", "null"):
            return None
        try:
            return float(v)  # YAML 1.1 reads "1e-4" as a string
        except ValueError:
            return v
    return v


def sample_grid_path(run_dir: str | os.PathLike, which: str | int = "last") -> Path:
    """The ``samples/step-<step>.png`` grid of a run: ``"last"``, ``"first"`` or a step number."""
    files = sorted((Path(run_dir) / "samples").glob("step-*.png"), key=lambda p: int(p.stem.split("-")[1]))
    if not files:
        raise FileNotFoundError(f"no sample grids in {Path(run_dir) / 'samples'}: train first (with sample images on)")
    if which in ("last", "first"):
        return files[-1] if which == "last" else files[0]
    matches = [p for p in files if int(p.stem.split("-")[1]) == int(which)]
    if not matches:
        raise FileNotFoundError(f"no sample grid for step {which} in {Path(run_dir) / 'samples'}; have {[p.name for p in files]}")
    return matches[0]


# ------------------------------------------------------------------------------------------------ no-mask twins
def check_twin_name(guided_run_dir: str | os.PathLike, twin_name: str) -> None:
    """Refuse a no-mask twin named like the run it twins (it would overwrite it); shared by the cGAN and ControlNet
    twins (:mod:`stsynth_lib.cgan.chapter`, :mod:`stsynth_lib.controlnet.twin`)."""
    name = Path(guided_run_dir).name
    if twin_name == name:
        raise ValueError(f"nomask_twin {twin_name!r} would overwrite the run it twins: name it e.g. {name}_nomask")


def no_twin_note(labelled: bool, reader: str = "the model") -> str:
    """The chapters' line where a profile trains no no-mask twin (``nomask_twin: null``)."""
    return ("> **Note:** no no-mask twin on this profile (`nomask_twin: null`): "
            + ("set `nomask_twin` to measure what the footprints add." if labelled
               else f"its data have no building labels, so {reader} reads no footprints."))
