"""What both trainers (cGAN and ControlNet) share: epoch batching, schedules, device and precision, batches,
run folders that are never lost, and the record of what changed on resume.

Nothing here knows a model family; :mod:`stsynth_lib.cgan.train` and :mod:`stsynth_lib.controlnet.train`
build on it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch

# --------------------------------------------------------------------------- batching and schedules


def epoch_batches(n: int, batch_size: int, epoch: int, seed: int, rank: int = 0, world: int = 1,
                  drop_last: bool = False) -> list[list[int]]:
    """Shuffled index batches of one epoch, the same on every process for a given (seed, epoch), sharded by rank.

    ``drop_last`` drops a last partial batch when there is at least one full one (the ControlNet trainer, as
    diffusers' example); the cGAN trainer keeps it (pix2pix). The permutation depends only on (seed, epoch), so a
    resumed run replays the same order.
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g).tolist()
    local = perm[rank::world]
    batches = [local[i: i + batch_size] for i in range(0, len(local), batch_size)]
    if drop_last and len(batches) > 1 and len(batches[-1]) < batch_size:
        batches = batches[:-1]
    return batches


def oversampled_epoch_batches(n: int, favoured: np.ndarray | list[int], fraction: float, batch_size: int, epoch: int,
                              seed: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """Like :func:`epoch_batches` (same number of batches, same determinism in (seed, epoch), so a resumed run
    replays them), but ``round(fraction * batch_size)`` places of every batch (at least 1 when ``fraction`` > 0) go
    to indices from ``favoured`` (e.g. the training pairs with new buildings), drawn without replacement in a
    shuffled cycle, so each favoured pair is seen about equally often; the other places take the plain shuffle.
    A favoured index can then appear twice in a batch only when ``favoured`` is shorter than a batch."""
    favoured = np.asarray(favoured, dtype=np.int64)
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    if len(favoured) == 0:
        raise ValueError("no favoured index to oversample")
    plain = epoch_batches(n, batch_size, epoch, seed, rank, world)
    k = max(1, round(fraction * batch_size))
    g = np.random.default_rng([seed, epoch, rank, 7])
    need = sum(min(k, len(b)) for b in plain)
    cycle = np.concatenate([g.permutation(favoured) for _ in range(need // len(favoured) + 1)])[:need]
    out, at = [], 0
    for b in plain:
        kk = min(k, len(b))
        out.append(cycle[at: at + kk].tolist() + b[: len(b) - kk])
        at += kk
    return out


def steps_per_epoch(n: int, batch_size: int, world: int = 1, drop_last: bool = False) -> int:
    """Optimiser steps in one epoch of :func:`epoch_batches` (at least 1)."""
    local = math.ceil(n / world)
    if drop_last and local >= batch_size:
        return max(1, local // batch_size)
    return max(1, math.ceil(local / batch_size))


def lr_factor(step: int, steps_per_epoch: int, epochs_constant: int, epochs_decay: int) -> float:
    """pix2pix schedule per step: 1 for ``epochs_constant`` epochs, then linear to 0 over ``epochs_decay``."""
    const = epochs_constant * steps_per_epoch
    decay = epochs_decay * steps_per_epoch
    if step < const or decay == 0:
        return 1.0
    return max(0.0, 1.0 - (step - const + 1) / (decay + 1))


def spread_indices(n: int, k: int) -> list[int]:
    """``k`` indices spread evenly over ``range(n)`` (pairs of one tile are adjacent: this shows different places)."""
    return sorted(set(np.linspace(0, n - 1, min(k, n)).round().astype(int).tolist())) if n else []


# --------------------------------------------------------------------------- batches


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack a list of ``PairedTileDataset`` samples (tensors stacked, strings kept as lists)."""
    out: dict[str, Any] = {}
    for k in samples[0]:
        vals = [s[k] for s in samples]
        out[k] = torch.stack(vals) if isinstance(vals[0], torch.Tensor) else vals
    return out


def to_device(batch: Mapping[str, Any], device, channels_last: bool = False) -> dict[str, Any]:
    """Move every tensor of a batch to ``device`` (4-D float tensors channels-last when asked)."""
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device, non_blocking=True)
            if channels_last and v.ndim == 4 and v.dtype.is_floating_point:
                v = v.contiguous(memory_format=torch.channels_last)
        out[k] = v
    return out


# --------------------------------------------------------------------------- configs and command lines


class TrainConfig:
    """Base of the trainers' config dataclasses: built from a parameter dict or from a command line."""

    @classmethod
    def from_params(cls, params: Mapping[str, Any], **overrides: Any):
        """Build from a parameter dict (e.g. a notebook's globals), keeping only the keys that are fields."""
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in params.items() if k in names}
        kw.update(overrides)
        return cls(**kw)

    @classmethod
    def from_command_line(cls, argv: Sequence[str] | None, prog: str, description: str, str_keys: Sequence[str] = ()):
        """``--<field> VALUE`` for every field (``_`` or ``-`` in the name); ``--params FILE.yaml`` (repeatable)
        loads keys first, flags override. Values are parsed as YAML scalars, except ``str_keys`` (kept as text)."""
        from stsynth_lib.runs import parse_cli_value

        p = argparse.ArgumentParser(prog=prog, description=description)
        p.add_argument("--params", action="append", default=[], help="YAML file(s) of options (e.g. params/smoke/common.yaml)")
        for f in dataclasses.fields(cls):
            flags = ["--" + f.name] + (["--" + f.name.replace("_", "-")] if "_" in f.name else [])
            p.add_argument(*flags, dest=f.name, type=parse_cli_value, default=argparse.SUPPRESS, help=f"default: {f.default!r}")
        ns = vars(p.parse_args(argv))
        files = ns.pop("params")
        merged = {**check_param_files(cls, files, set_by_flags=ns), **ns}  # checked file values, then flags
        for key in str_keys:
            if merged.get(key) is not None:
                merged[key] = str(merged[key])
        return cls.from_params(merged)


def check_param_files(config_cls, files: Sequence[str], set_by_flags: Iterable[str] = ()) -> dict[str, Any]:
    """The options that ``--params`` files set (later files win), checked by :mod:`stsynth_lib.params`: an unknown
    key (closest key suggested), a wrong type or value is refused, naming the file; ``"1e-4"`` becomes a number.
    Keys of a shared ``common.yaml`` that any concern of the option schema declares are allowed (and dropped here)."""
    from stsynth_lib.params import validate_config_files

    if not files:
        return {}
    return validate_config_files(config_cls, files, set_elsewhere=set_by_flags).params


def train_from_command_line(parse_args, train, argv: Sequence[str] | None = None) -> Path:
    """The trainers' ``main``: parse the command line into a config, train, print and return the run folder."""
    run_dir = train(parse_args(argv))
    print(f"Run folder: {run_dir}")
    return run_dir


# --------------------------------------------------------------------------- device and precision

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "no", "bf16", "fp16")


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bf16 in hardware (AVX512-BF16 or AMX-BF16 on x86, BF16 on Arm).

    Under ``torch.autocast("cpu", dtype=torch.bfloat16)`` oneDNN then runs convolutions in bf16 about 1.5x
    faster than fp32; on CPUs without it bf16 is emulated and slower, so ``auto`` keeps fp32 there.
    """
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


@dataclass(frozen=True)
class DeviceSetup:
    """Where and how a run computes, resolved once from the ``device`` / ``mixed_precision`` /
    ``channels_last`` parameters (and recorded in the run's ``params.yaml``)."""

    on_cuda: bool
    mixed_precision: str  # no | bf16 | fp16 (Accelerate's names)
    channels_last: bool
    compile: bool = False  # torch.compile (inductor) the model (stsynth_lib.models.inference for predictors)

    @property
    def cpu(self) -> bool:
        return not self.on_cuda

    def describe(self) -> str:
        where = "CUDA" if self.on_cuda else "CPU"
        prec = {"no": "fp32", "bf16": "bf16 autocast", "fp16": "fp16 autocast"}[self.mixed_precision]
        return f"{where}, {prec}" + (", channels-last" if self.channels_last else "") + (", compiled" if self.compile else "")


def resolve_device(device: str = "auto", mixed_precision: str = "auto", channels_last: Any = "auto",
                   cpu_auto_precision: str = "bf16", cpu_bf16: bool | None = None, compile: Any = False,
                   for_inference: bool = False) -> DeviceSetup:
    """The one place that decides device, precision, memory format and compilation for training and generation.

    * ``device``: ``auto`` (CUDA when available), ``cpu`` or ``cuda`` (an error without a GPU).
    * ``mixed_precision``: ``auto`` = bf16 on a CUDA GPU that supports it (fp16 otherwise); on a CPU,
      ``cpu_auto_precision`` (``bf16`` for the cGANs) when the CPU has native bf16, else fp32 (``no``).
      ``no`` / ``bf16`` / ``fp16`` force a choice (fp16 needs CUDA).
    * ``channels_last``: ``auto`` = on for CUDA and for CPU bf16 (both measured faster), ``true`` / ``false``
      (compiled fp32 CPU inference: within noise either way, so ``auto`` keeps it off).
    * ``compile``: ``auto`` = ``torch.compile`` for inference on a CPU with a C++ compiler (1.3-1.8x over eager,
      ``benchmarks/bench_vs_reference.py``); never for training on a CPU (the compiled step measured 0.9x) nor on
      CUDA until ``make bench-gpu`` has shown it pays there; ``true`` / ``false`` force it. ``for_inference``:
      whether the setup is for a predictor (``auto`` decides differently for training). The environment variable
      ``STSYNTH_COMPILE=0`` / ``1`` overrides ``auto`` (the test suite sets 0).
    """
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if mixed_precision not in PRECISIONS:
        raise ValueError(f"mixed_precision must be one of {PRECISIONS}, got {mixed_precision!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' but torch.cuda.is_available() is False; use device='auto' or 'cpu'")
    on_cuda = device != "cpu" and torch.cuda.is_available()
    mp = mixed_precision
    if mp == "auto":
        if on_cuda:
            mp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            native = cpu_has_native_bf16() if cpu_bf16 is None else cpu_bf16
            mp = cpu_auto_precision if native else "no"
    if mp == "fp16" and not on_cuda:
        raise ValueError("mixed_precision='fp16' needs a CUDA GPU; use 'no', 'auto' or 'bf16' (CPU autocast) on CPU")
    if channels_last == "auto":
        cl = on_cuda or mp == "bf16"
    elif channels_last in (True, False):
        cl = bool(channels_last)
    else:
        raise ValueError(f"channels_last must be true, false or 'auto', got {channels_last!r}")
    if compile == "auto" and os.environ.get("STSYNTH_COMPILE", "auto") in ("0", "1"):
        compile = os.environ["STSYNTH_COMPILE"] == "1"  # the test suite sets 0: seconds of compiling per model
    if compile == "auto":
        from stsynth_lib.models.inference import has_cpp_compiler

        comp = bool(for_inference and not on_cuda and has_cpp_compiler())
    elif compile in (True, False):
        comp = bool(compile)
    else:
        raise ValueError(f"compile must be true, false or 'auto', got {compile!r}")
    return DeviceSetup(on_cuda=on_cuda, mixed_precision=mp, channels_last=cl, compile=comp)


def make_accelerator(setup: DeviceSetup, **kwargs):
    """An ``accelerate.Accelerator`` for ``setup``. In a single process (notebook, tests) a previous run's
    different precision or device is forgotten first: Accelerate keeps one global state per process, and would
    refuse another precision and silently keep the previous run's device (a ``device: cpu`` run after a CUDA run
    in the same process ran on the GPU, seen on an H100). Under ``accelerate launch`` the state is left alone."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    shared, partial = AcceleratorState._shared_state, PartialState._shared_state
    other_precision = bool(shared) and str(shared.get("_mixed_precision", setup.mixed_precision)) != setup.mixed_precision
    dev = partial.get("device") if partial else None
    other_device = dev is not None and (torch.device(dev).type == "cpu") != setup.cpu
    if (other_precision or other_device) and not (partial and PartialState().num_processes > 1):
        AcceleratorState._reset_state(reset_partial_state=other_device)
    return Accelerator(cpu=setup.cpu, mixed_precision=setup.mixed_precision, **kwargs)


# --------------------------------------------------------------------------- run folders


def check_checkpoint_limit(limit: int | None) -> None:
    """``checkpoints_total_limit``: ``None`` keeps every checkpoint, n >= 1 keeps the newest n."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"checkpoints_total_limit must be an integer >= 1 (keep that many) or null (keep all), "
                         f"got {limit!r}: 0 or a negative value would delete every checkpoint as it is written")


def _has_results(run_dir: Path) -> bool:
    return run_dir.is_dir() and any((run_dir / n).exists() for n in ("checkpoints", "best", "controlnet", "predictions", "backbone"))


@contextlib.contextmanager
def fresh_run(run_dir: str | Path, enabled: bool = True) -> Iterator[Path]:
    """Start a fresh run in ``run_dir`` without losing the previous one if the new one fails.

    An existing run with results is moved aside to ``<run_dir>.previous`` (an older one there is replaced);
    if the body raises (a bad parameter, Ctrl-C, out of memory) the partial new folder is removed and the old
    run is put back, exactly as it was. When the body completes, the previous run is deleted. A run folder
    with no results at all (say, from a run that crashed at once) is simply cleared. ``enabled=False`` (a
    resumed run, or a process other than the main one) does nothing.
    """
    run_dir = Path(run_dir)
    aside = run_dir.with_name(run_dir.name + ".previous")
    if not enabled:
        yield run_dir
        return
    moved = False
    if _has_results(run_dir):
        shutil.rmtree(aside, ignore_errors=True)
        run_dir.replace(aside)
        moved = True
    elif run_dir.exists():
        shutil.rmtree(run_dir)
    try:
        yield run_dir
    except BaseException:
        if moved:
            shutil.rmtree(run_dir, ignore_errors=True)
            aside.replace(run_dir)
            print(f"The new run failed: the previous run in {run_dir} was restored unchanged.", file=sys.stderr)
        raise
    if moved:
        shutil.rmtree(aside, ignore_errors=True)


def execute_run(run, checkpoint: Path | None) -> Path:
    """The part of a run both trainers share: a fresh run inside :func:`fresh_run` (the previous one is kept until
    this one completes), or a resume from ``checkpoint``; then the loop and the run's last steps.

    ``run`` has ``run_dir``, ``main`` (the main process) and the methods ``open_run_dir(checkpoint)``,
    ``restore(checkpoint)``, ``fit()`` and ``finish()``.
    """
    with fresh_run(run.run_dir, enabled=checkpoint is None and run.main):
        run.open_run_dir(checkpoint)
        if checkpoint is not None:
            run.restore(checkpoint)
        run.fit()
        run.finish()
    return run.run_dir


# keys whose change on resume does not matter (bookkeeping) or is what resuming is for
RESUME_FREE_KEYS = frozenset({"resume_from_checkpoint", "progress", "max_steps", "max_train_steps", "num_workers",
                              "log_every_steps", "sample_every_steps", "validation_steps", "checkpointing_steps",
                              "checkpoint_every_steps", "checkpoints_total_limit", "val_every_steps",
                              "val_every_epochs", "n_sample_rows", "validate_at_start", "num_validation_images",
                              "allow_resume_changes"})


def config_defaults(config_class: type) -> dict[str, Any]:
    """The default of every field of a config dataclass: what a run saved before a field existed ran with."""
    import dataclasses

    out = {}
    for f in dataclasses.fields(config_class):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def resume_changes(saved: Mapping[str, Any], current: Mapping[str, Any],
                   defaults: Mapping[str, Any] | None = None) -> dict[str, tuple[Any, Any]]:
    """Options that differ between a run's saved ``params.yaml`` and the resuming config: ``{key: (before, now)}``.

    Bookkeeping keys (:data:`RESUME_FREE_KEYS`) are left out. A key the saved file lacks (a run saved before the
    option existed) counts as its value in ``defaults`` (:func:`config_defaults`), so that turning a new option on
    when resuming an old run is refused like any other change; without a default the key is left out.
    """
    def norm(v: Any) -> Any:  # as YAML stores it: tuples are lists
        return json.loads(json.dumps(v, default=str))

    saved = {**(defaults or {}), **saved}
    return {k: (saved[k], current[k]) for k in current
            if k in saved and k not in RESUME_FREE_KEYS and norm(saved[k]) != norm(current[k])}


def record_resume(run_dir: Path, step: int, params: Mapping[str, Any], config: Any,
                  allow_changes: bool) -> list[dict[str, Any]]:
    """Refuse (``allow_changes=False``) or list a resume whose options differ from the run's saved ``params.yaml``;
    returns the history to record.

    ``params`` are the resuming run's effective parameters (options as resolved, like the saved file) and
    ``config`` the run's config dataclass: its fields are the options compared, its defaults stand in for options the
    saved file predates. The history (``resumed: [{step, changed: {key: [before, now]}}]``) goes into
    the new ``params.yaml``, so that the file never claims a learning rate that was not used for the whole run.
    """
    import yaml

    path = Path(run_dir) / "params.yaml"
    previous_params = (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}
    option_names = [f.name for f in dataclasses.fields(config)]
    changes = resume_changes(previous_params, {k: params[k] for k in option_names}, config_defaults(type(config)))
    history = list(previous_params.get("resumed", []) or [])
    if changes:
        listing = ", ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in ((k, *v) for k, v in changes.items()))
        if not allow_changes:
            raise ValueError(f"cannot resume {run_dir} at step {step} with changed options ({listing}). Resume with "
                             "the saved options, set allow_resume_changes: true to continue anyway (the changes are "
                             "recorded in params.yaml), or start a fresh run.")
        print(f"Resuming {run_dir} at step {step} with changed options: {listing} (recorded in params.yaml)",
              file=sys.stderr)
    history.append({"step": int(step), "changed": {k: [a, b] for k, (a, b) in changes.items()}})
    return history
