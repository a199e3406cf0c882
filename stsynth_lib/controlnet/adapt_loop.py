"""The training loop both phases of stage 1 share (:mod:`stsynth_lib.controlnet.adapt`): deterministic batches per
step (exact resume without saving data-loader state), logging, validation, atomic checkpoints with a kept count,
resume from the newest checkpoint; and the zero-init of residual blocks that lets the tiny VAE learn detail sooner.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from stsynth_lib.controlnet.adapt_parts import EMA, collate_tiles
from stsynth_lib.runs import CSVLogger, atomic_checkpoint_dir, resolve_resume
from stsynth_lib.training import epoch_batches


def step_batch(ds, step: int, batch_size: int, seed: int, collate_fn=collate_tiles) -> dict[str, Any]:
    """The batch of optimiser step ``step`` (1-based): deterministic in (seed, step), so resume replays it
    (``collate_fn``: :func:`~stsynth_lib.training.collate` for a dataset of pairs)."""
    spe = max(1, len(ds) // batch_size)
    epoch, pos = divmod(step - 1, spe)
    idx = epoch_batches(len(ds), batch_size, epoch, seed, drop_last=True)[pos]
    np.random.seed((seed * 1_000_003 + step) % 2**32)  # crops and flips of this batch
    return collate_fn([ds[i] for i in idx])


class Phase:
    """One training phase: a module (and optimiser) trained for ``steps`` with log, checkpoints and resume."""

    def __init__(self, name: str, run_dir: Path, cfg, modules: dict[str, torch.nn.Module],
                 optimizer, lr_lambda, steps: int, ema: EMA | None = None, val_fields: Sequence[str] = ()):
        self.fields = ["step", "loss", "lr", "elapsed_s", *val_fields]
        self.name, self.dir, self.cfg, self.modules = name, Path(run_dir) / name, cfg, modules
        self.optimizer, self.steps, self.ema = optimizer, int(steps), ema
        self.sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
        self.step = 0

    def open(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        ckpt = resolve_resume(self.dir, "latest") if self.cfg.resume_from_checkpoint else None
        if ckpt is not None:
            state = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=False)
            for k, m in self.modules.items():
                m.load_state_dict(state["modules"][k])
            self.optimizer.load_state_dict(state["optimizer"])
            self.sched.load_state_dict(state["sched"])
            if self.ema is not None:
                self.ema.load_state_dict(state["ema"])
            self.step = int(state["step"])
            print(f"{self.name}: resumed from {ckpt} at step {self.step}")
        self.logger = CSVLogger(self.dir / "log.csv", fieldnames=self.fields)
        self.logger.truncate_after(self.step)

    def checkpoint(self) -> None:
        with atomic_checkpoint_dir(self.dir, self.step, keep=self.cfg.checkpoints_total_limit) as tmp:
            torch.save({"modules": {k: m.state_dict() for k, m in self.modules.items()},
                        "optimizer": self.optimizer.state_dict(), "sched": self.sched.state_dict(),
                        "ema": self.ema.state_dict() if self.ema is not None else None, "step": self.step},
                       tmp / "state.pt")

    def run(self, loss_fn, validate) -> dict[str, float]:
        """``loss_fn(step) -> loss``; ``validate(step) -> dict`` every ``validation_steps`` and at the end."""
        from tqdm.auto import tqdm

        cfg, last = self.cfg, {}
        params = [p for m in self.modules.values() for p in m.parameters() if p.requires_grad]
        pbar = tqdm(total=self.steps, initial=self.step, desc=f"stage 1: {self.name}", disable=not cfg.progress)
        t0, acc, n = time.perf_counter(), 0.0, 0
        while self.step < self.steps:
            self.step += 1
            loss = loss_fn(self.step)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"stage 1 ({self.name}): loss is {float(loss)} at step {self.step}; "
                                         f"lower the learning rate (last checkpoint: {resolve_resume(self.dir, 'latest')})")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            self.optimizer.step()
            self.sched.step()
            self.optimizer.zero_grad(set_to_none=True)
            if self.ema is not None:
                self.ema.update(self.modules["unet"])
            acc, n = acc + float(loss.detach()), n + 1
            pbar.update(1)
            row: dict[str, Any] = {}
            if self.step % cfg.log_every_steps == 0 or self.step == self.steps:
                row = {"step": self.step, "loss": acc / n, "lr": self.sched.get_last_lr()[0],
                       "elapsed_s": time.perf_counter() - t0}
                pbar.set_postfix(loss=f"{acc / n:.4f}")
                acc, n = 0.0, 0
            if (cfg.validation_steps and self.step % cfg.validation_steps == 0) or self.step == self.steps:
                last = validate(self.step)
                row = {"step": self.step, **row, **last}
            if row:
                self.logger.log(row)
            if (cfg.checkpointing_steps and self.step % cfg.checkpointing_steps == 0) or self.step == self.steps:
                self.checkpoint()
        pbar.close()
        return last


def warmup(steps: int):
    return lambda s: min(1.0, (s + 1) / max(1, steps))


def zero_init_residuals(model: torch.nn.Module) -> int:
    """Set the second convolution of every diffusers ``ResnetBlock2D`` to 0 (the block starts as its shortcut);
    returns how many blocks were changed."""
    from diffusers.models.resnet import ResnetBlock2D

    n = 0
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, ResnetBlock2D):
                m.conv2.weight.zero_()
                m.conv2.bias.zero_()
                n += 1
    return n
