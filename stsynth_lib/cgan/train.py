"""One trainer for both cGAN generators (pix2pix U-Net and attention U-Net) with a PatchGAN.

Objective (Isola et al. 2017), computed on valid pixels only::

    L_D = 0.5 * [ GAN(D(c, y), real) + GAN(D(c, G(c)), fake) ]
    L_G = GAN(D(c, G(c)), real) + lambda_L1 * |y - G(c)|_1

``c`` is the condition built by :func:`stsynth_lib.conditioning.build_condition`
(past image, future mask, time planes), ``y`` the future image. ``GAN`` is
binary cross-entropy on logits (``gan_mode="vanilla"``) or least squares
(``"lsgan"``). Invalid pixels (cloud/UDM, nodata: ``valid == 0``) are zeroed in
every discriminator input, each patch logit is weighted by the valid fraction
under it, and the L1 term averages over valid pixels only, so a change in an
invalid pixel of the target changes no loss and no gradient.

Optimisation as pix2pix: Adam (lr 2e-4, betas 0.5/0.999), the learning rate
constant for ``epochs_constant`` epochs then decaying linearly to 0 over
``epochs_decay`` epochs. Accelerate places models and batches (``accelerate
launch -m stsynth_lib.cgan.train ...`` runs data-parallel on several GPUs);
precision and memory format come from :func:`stsynth_lib.training.resolve_device`
(bf16 autocast and channels-last on CUDA and on CPUs with native bf16).

Run folder ``<runs_dir>/<profile>/<run_name or model>/`` (see :mod:`stsynth_lib.runs`; a fresh run
keeps the previous one aside until it succeeds, :func:`stsynth_lib.training.fresh_run`)::

    params.yaml   model.yaml   log.csv (train losses, images/s)   val.csv (per-epoch validation)
    checkpoints/checkpoint-<step>/state.pt     everything needed to resume
    best/generator.pt + best.yaml              the best generator by ``best_metric``
    best/residual_scale.csv                    val L1 per residual scale (``calibrate_residual_scale``)
    samples/step-<step>.png                    past | mask | generated | truth grids

Resuming (``resume_from_checkpoint="latest"``) restores models, optimisers,
schedulers, RNG states and the position inside the epoch: on CPU a resumed run
ends with bit-identical weights to an uninterrupted one (on CUDA up to
non-deterministic kernels).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from stsynth_lib.book.report_format import plural
from stsynth_lib.cgan.augment import augment_batch, check_erasable, erase_buildings, erase_generator
from stsynth_lib.cgan.calibrate import calibrate_residual_scale
from stsynth_lib.cgan.config import BEST_METRICS, CGANTrainConfig
from stsynth_lib.cgan.losses import train_step
from stsynth_lib.cgan.model_io import generator_from_spec, model_spec
from stsynth_lib.cgan.plots import sample_grid, sample_grid_columns, save_grid
from stsynth_lib.cgan.predictor import score_generator
from stsynth_lib.conditioning import GuidanceConfig, build_condition, dataset_has_mask, fit_linear_base
from stsynth_lib.data.dataset import PairedTileDataset
from stsynth_lib.evaluate.generator import mean_scores
from stsynth_lib.models.registry import build_discriminator, init_weights
from stsynth_lib.runs import (
    CSVLogger,
    atomic_checkpoint_dir,
    atomic_torch_save,
    atomic_write_text,
    prepare_run_dir,
    resolve_resume,
    save_yaml,
    seed_everything,
)
from stsynth_lib.training import (
    collate,
    epoch_batches,
    oversampled_epoch_batches,
    execute_run,
    lr_factor,
    make_accelerator,
    record_resume,
    resolve_device,
    spread_indices,
    steps_per_epoch,
    to_device,
    train_from_command_line,
)


def split_dataset(cfg: CGANTrainConfig, split: str) -> PairedTileDataset:
    """The pairs of ``split`` a run uses (``max_train_pairs`` / ``max_val_pairs``: a seeded subset)."""
    limit = {"train": cfg.max_train_pairs, "val": cfg.max_val_pairs}.get(split)
    return PairedTileDataset(cfg.dataset_dir, split, max_pairs=limit, subsample_seed=cfg.seed if limit is not None else None,
                             context_offsets_months=cfg.context_offsets_months)


class CGANRun:
    """One cGAN training run: models, optimisers, data, run folder and the loop, in small steps.

    :func:`train_cgan` is the entry point; the methods follow the order a run goes through:
    :meth:`build` -> :meth:`open_run_dir` (fresh, or :meth:`restore` a checkpoint) -> :meth:`fit`
    (:meth:`train_epoch`, with :meth:`validate`, :meth:`write_samples`, :meth:`save_checkpoint`) ->
    :meth:`finish` (last samples, residual calibration).
    """

    def __init__(self, cfg: CGANTrainConfig):
        self.cfg = cfg
        self.setup = resolve_device(cfg.device, cfg.mixed_precision, cfg.channels_last)
        self.accelerator = make_accelerator(self.setup)
        self.device = self.accelerator.device
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        self.main = self.accelerator.is_main_process
        self.run_dir = Path(cfg.runs_dir) / cfg.profile / (cfg.run_name or cfg.model)
        self.step, self.best = 0, None

    # ---- setup
    def build(self) -> None:
        """Datasets, guidance, generator, discriminator, optimisers and LR schedules (seeded: same every run)."""
        cfg, acc = self.cfg, self.accelerator
        seed_everything(cfg.seed + self.rank)
        self.train_ds, self.val_ds = split_dataset(cfg, "train"), split_dataset(cfg, "val")
        if len(self.train_ds) == 0:
            raise ValueError(f"{cfg.dataset_dir}: the train split has no pairs; rebuild the dataset with more AOIs/months")
        n_bands, size = self.train_ds.n_bands, self.train_ds.tile_size_px
        self.guidance = cfg.guidance().resolve(dataset_has_mask(self.train_ds), n_bands)
        if self.guidance.residual_base == "linear" and self.guidance.linear_base is None:
            self.guidance = replace(self.guidance, linear_base=self.saved_linear_base() or fit_linear_base(
                self.train_ds, self.guidance, seed=cfg.seed))
        self.spec = model_spec(cfg, self.guidance, n_bands, size)
        G = init_weights(generator_from_spec(self.spec))
        D = init_weights(build_discriminator(self.guidance.n_channels, n_bands, ndf=cfg.ndf, n_layers=cfg.d_layers,
                                             norm=cfg.norm))
        if self.setup.channels_last:
            G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
        opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
        opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
        self.spe = steps_per_epoch(len(self.train_ds), cfg.batch_size, self.world)
        self.change_pairs = None
        if cfg.change_pair_fraction > 0:
            new_px = self.train_ds.new_building_pixels()
            self.change_pairs = np.flatnonzero(new_px >= cfg.min_new_building_px)
            if len(self.change_pairs) == 0:
                raise ValueError(
                    f"change_pair_fraction={cfg.change_pair_fraction}: none of the {len(self.train_ds)} training pairs "
                    f"of {cfg.dataset_dir} has >= {cfg.min_new_building_px} new-building pixels (no labels, or no "
                    "construction): set change_pair_fraction: 0 or lower min_new_building_px")
        check_erasable(cfg.erase_building_fraction, self.train_ds, cfg.dataset_dir)
        self.total_steps = self.spe * cfg.epochs
        if cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        sched = lambda s: lr_factor(s, self.spe, cfg.epochs_constant, cfg.epochs_decay)
        self.sched_g = torch.optim.lr_scheduler.LambdaLR(opt_g, sched)
        self.sched_d = torch.optim.lr_scheduler.LambdaLR(opt_d, sched)
        self.G, self.D, self.opt_g, self.opt_d = acc.prepare(G, D, opt_g, opt_d)
        self.G_raw, self.D_raw = acc.unwrap_model(self.G), acc.unwrap_model(self.D)

    def saved_linear_base(self) -> tuple | None:
        """On resume, the linear start's weights the run was trained with (its ``model.yaml``), so a resumed run never
        depends on refitting them bit for bit; ``None`` for a fresh run or another guidance."""
        path = self.run_dir / "model.yaml"
        if (self.cfg.resume_from_checkpoint is None or not path.is_file()
                or resolve_resume(self.run_dir, self.cfg.resume_from_checkpoint) is None):
            return None
        saved = (yaml.safe_load(path.read_text()) or {}).get("guidance") or {}
        if (saved.get("linear_base") is None or saved.get("linear_centre", "none") != self.guidance.linear_centre
                or saved.get("context_offsets_months") != list(self.guidance.context_offsets_months)):
            return None
        return GuidanceConfig.from_dict(saved).linear_base

    def effective_params(self) -> dict[str, Any]:
        """What ``params.yaml`` records: every option plus what was resolved from them."""
        s = self.setup
        return {**asdict(self.cfg), "resolved_guidance": self.guidance.to_dict(), "steps_per_epoch": self.spe,
                "total_steps": self.total_steps, "n_train_pairs": len(self.train_ds), "n_val_pairs": len(self.val_ds),
                "n_train_change_pairs": None if self.change_pairs is None else int(len(self.change_pairs)),
                "change_pairs_per_batch": self.cfg.change_pairs_per_batch,
                "world_size": self.world, "mixed_precision_effective": s.mixed_precision,
                "channels_last_effective": s.channels_last, "device_effective": str(self.device),
                "compute": s.describe(), "torch": str(torch.__version__)}

    def open_run_dir(self, ckpt: Path | None) -> None:
        """Write ``params.yaml`` / ``model.yaml`` (recording option changes on resume) and open the logs."""
        params = self.effective_params()
        if ckpt is not None:
            step = int(self.checkpoint_state(ckpt)["step"])
            params["resumed"] = record_resume(self.run_dir, step, params, self.cfg, self.cfg.allow_resume_changes)
        if self.main:
            prepare_run_dir(self.cfg.runs_dir, self.cfg.profile, self.run_dir.name, params)
            save_yaml(self.spec, self.run_dir / "model.yaml")
        self.accelerator.wait_for_everyone()
        self.log = CSVLogger(self.run_dir / "log.csv")
        self.val_log = CSVLogger(self.run_dir / "val.csv")
        grid_ds = self.val_ds if len(self.val_ds) else self.train_ds
        self.grid_batch = collate([grid_ds[i] for i in spread_indices(len(grid_ds), self.cfg.n_sample_rows)])

    def checkpoint_state(self, ckpt: Path) -> dict:
        """The checkpoint's ``state.pt``, read once (both the resume record and :meth:`restore` need it)."""
        if getattr(self, "_state_of", None) != ckpt:
            self._state = torch.load(Path(ckpt) / "state.pt", map_location="cpu", weights_only=True)
            self._state_of = ckpt
        return self._state

    def restore(self, ckpt: Path) -> None:
        """Load models, optimisers, schedules, RNG state and the step from a checkpoint."""
        state = self.checkpoint_state(ckpt)
        saved_spec = state.get("model_spec")
        if saved_spec is not None and saved_spec != self.spec:
            diff = {k: (saved_spec.get(k), self.spec.get(k)) for k in sorted(set(saved_spec) | set(self.spec))
                    if saved_spec.get(k) != self.spec.get(k)}
            raise ValueError(
                f"cannot resume from {ckpt}: it was trained with a different model/guidance {diff} "
                "(checkpoint value, current value). Use the same parameters, another run_name, or "
                "resume_from_checkpoint=None to start fresh (the old run is kept until the new one succeeds)."
            )
        self.G_raw.load_state_dict(state["generator"])
        self.D_raw.load_state_dict(state["discriminator"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.sched_g.load_state_dict(state["sched_g"])
        self.sched_d.load_state_dict(state["sched_d"])
        torch.set_rng_state(state["rng_cpu"])
        if self.setup.on_cuda and state.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(state["rng_cuda"])
        self.step, self.best = int(state["step"]), state.get("best")
        if self.main:
            self.log.truncate_after(self.step)
            self.val_log.truncate_after(self.step)
            print(f"Resumed from {ckpt} at step {self.step}")

    # ---- periodic work
    def save_checkpoint(self, at_step: int) -> None:
        if not self.main:
            return
        state = {
            "generator": self.G_raw.state_dict(), "discriminator": self.D_raw.state_dict(),
            "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
            "sched_g": self.sched_g.state_dict(), "sched_d": self.sched_d.state_dict(),
            "rng_cpu": torch.get_rng_state(), "rng_cuda": torch.cuda.get_rng_state() if self.setup.on_cuda else None,
            "step": at_step, "best": self.best, "model_spec": self.spec,
        }
        with atomic_checkpoint_dir(self.run_dir, at_step, keep=self.cfg.checkpoints_total_limit) as tmp:
            atomic_torch_save(state, tmp / "state.pt")

    def write_samples(self, at_step: int) -> None:
        """``samples/step-<step>.png``: past | future mask | generated | truth on fixed validation pairs."""
        if not self.main:
            return
        self.G_raw.eval()
        with torch.no_grad(), self.accelerator.autocast():
            b = to_device(self.grid_batch, self.device, self.setup.channels_last)
            gen = self.G_raw(build_condition(b, self.guidance)).float().cpu()
        self.G_raw.train()
        save_grid(sample_grid(self.grid_batch, gen, self.cfg.n_sample_rows),
                  self.run_dir / "samples" / f"step-{at_step:07d}.png",
                  columns=sample_grid_columns(self.grid_batch, self.cfg.n_sample_rows))

    def validate(self, epoch: int, at_step: int) -> dict[str, Any] | None:
        """Score the validation pairs, log ``val.csv`` and keep the best generator in ``best/``."""
        cfg = self.cfg
        if not self.main or len(self.val_ds) == 0:
            return None
        with self.accelerator.autocast():
            df = score_generator(self.G_raw, self.val_ds, self.guidance, batch_size=max(cfg.batch_size, 16),
                                 device=self.device)
        s = mean_scores(df)
        row = {"step": at_step, "epoch": epoch + 1, "val_l1": s["l1"], "val_psnr": s["psnr"], "val_ssim": s["ssim"]}
        value = row[cfg.best_metric]
        better = self.best is None or (value < self.best["value"] if BEST_METRICS[cfg.best_metric] == "min"
                                       else value > self.best["value"])
        row["best"] = int(better)
        if better:
            self.best = {"metric": cfg.best_metric, "value": float(value), "step": at_step, "epoch": epoch + 1}
            atomic_torch_save(self.G_raw.state_dict(), self.run_dir / "best" / "generator.pt")
            save_yaml({**self.best, **{k: float(v) for k, v in row.items() if k.startswith("val_")}},
                      self.run_dir / "best" / "best.yaml")
        self.val_log.log(row)
        return row

    # ---- the loop
    def fit(self) -> None:
        """Train from ``self.step`` to ``total_steps``, epoch by epoch."""
        from tqdm.auto import tqdm

        cfg = self.cfg
        self.loader_gen = torch.Generator()  # keeps DataLoader from drawing on the global RNG (exact resume)
        self.pbar = tqdm(total=self.total_steps, initial=self.step, desc=f"train {cfg.model}", unit="step",
                         disable=not (cfg.progress and self.accelerator.is_local_main_process), dynamic_ncols=True)
        self.G.train()
        self.D.train()
        self.t_last, self.n_img, self.ema_ips = time.perf_counter(), 0, None
        for epoch in range(self.step // self.spe, cfg.epochs):
            if self.step >= self.total_steps:
                break
            self.train_epoch(epoch)
        self.pbar.close()

    def train_epoch(self, epoch: int) -> None:
        cfg = self.cfg
        if self.change_pairs is not None:
            batches = oversampled_epoch_batches(len(self.train_ds), self.change_pairs, cfg.change_pair_fraction,
                                                cfg.batch_size, epoch, cfg.seed, self.rank, self.world)
        else:
            batches = epoch_batches(len(self.train_ds), cfg.batch_size, epoch, cfg.seed, self.rank, self.world)
        skip = self.step - epoch * self.spe
        loader = torch.utils.data.DataLoader(self.train_ds, batch_sampler=batches[skip:], num_workers=cfg.num_workers,
                                             collate_fn=collate, generator=self.loader_gen,
                                             pin_memory=self.setup.on_cuda, persistent_workers=False)
        for batch in loader:
            seed = cfg.seed * 7919 + self.step * 104729 + self.rank
            if cfg.augment:
                batch = augment_batch(batch, torch.Generator().manual_seed(seed), cfg.radiometric_jitter)
            batch = to_device(batch, self.device, self.setup.channels_last)
            if cfg.augment and cfg.erase_building_fraction > 0:
                # on the device (the component labelling and blur are the costly part); its own CPU stream, so the
                # flips and jitter stay as without it, and one no other rank's augmentation uses
                batch = erase_buildings(batch, erase_generator(seed, self.rank), cfg.erase_building_fraction)
            losses = train_step(self.G, self.D, self.opt_g, self.opt_d, batch, self.guidance, cfg.lambda_l1,
                                cfg.gan_mode, self.accelerator, cfg.new_building_l1_weight)
            self.sched_g.step()
            self.sched_d.step()
            self.step += 1
            self.n_img += batch["past"].shape[0] * self.world
            self.pbar.update(1)
            self.after_step(epoch, losses)
            if self.step >= self.total_steps:
                break

    def after_step(self, epoch: int, losses: dict[str, float]) -> None:
        """Logging, samples, validation and checkpoints due at ``self.step``."""
        cfg, step = self.cfg, self.step
        if step % cfg.log_every_steps == 0 or step == self.total_steps:
            now = time.perf_counter()
            ips = self.n_img / max(now - self.t_last, 1e-9)
            self.ema_ips = ips if self.ema_ips is None else 0.7 * self.ema_ips + 0.3 * ips
            self.t_last, self.n_img = now, 0
            row = {"step": step, "epoch": epoch + 1, "lr": self.opt_g.param_groups[0]["lr"], **losses,
                   "images_per_s": ips}
            if self.main:
                self.log.log(row)
            self.pbar.set_postfix(G=f"{row['loss_g']:.3f}", L1=f"{row['loss_g_l1']:.4f}", D=f"{row['loss_d']:.3f}",
                                  img_s=f"{self.ema_ips:.1f}")
        if cfg.sample_every_steps and step % cfg.sample_every_steps == 0:
            self.write_samples(step)
        end_of_epoch = step == (epoch + 1) * self.spe
        if ((end_of_epoch and (epoch + 1) % cfg.val_every_epochs == 0)
                or (cfg.val_every_steps and step % cfg.val_every_steps == 0)):
            v = self.validate(epoch, step)
            if v:
                self.pbar.write(f"epoch {epoch + 1} step {step}: val L1 {v['val_l1']:.4f}  PSNR {v['val_psnr']:.2f} dB  "
                                f"SSIM {v['val_ssim']:.3f}" + ("  (best)" if v["best"] else ""))
            self.t_last = time.perf_counter()  # throughput excludes validation
        if end_of_epoch or step == self.total_steps or (cfg.checkpoint_every_steps
                                                        and step % cfg.checkpoint_every_steps == 0):
            self.save_checkpoint(step)
            self.t_last = time.perf_counter()

    # ---- the end
    def finish(self) -> None:
        """Last samples, a validation if there was none, and the residual calibration."""
        if not self.main:
            return
        self.write_samples(self.step)
        if self.best is None and len(self.val_ds):
            self.validate(max(0, (self.step - 1) // self.spe), self.step)
        if self.cfg.calibrate_residual_scale and (self.run_dir / "best" / "generator.pt").is_file():
            self.calibrate()

    def calibrate(self) -> None:
        """Fit the residual change scale of ``best/`` on the whole validation split (never the test split)."""
        cfg, best_dir = self.cfg, self.run_dir / "best"
        G_best = generator_from_spec(self.spec)
        G_best.load_state_dict(torch.load(best_dir / "generator.pt", map_location="cpu", weights_only=True))
        G_best.to(self.device)
        cal_ds = PairedTileDataset(cfg.dataset_dir, "val", context_offsets_months=cfg.context_offsets_months)
        chosen, table = calibrate_residual_scale(G_best, cal_ds, self.guidance, batch_size=max(cfg.batch_size, 16),
                                                 device=self.device, progress=cfg.progress)
        G_best.residual_scale.fill_(chosen["residual_scale"])
        G_best.residual_full_gap_months.fill_(chosen["residual_full_gap_months"])
        atomic_torch_save({k: v.cpu() for k, v in G_best.state_dict().items()}, best_dir / "generator.pt")
        atomic_write_text(best_dir / "residual_scale.csv", table.to_csv(index=False))
        best_yaml = yaml.safe_load((best_dir / "best.yaml").read_text())
        save_yaml({**best_yaml, **chosen, "calibration_pairs": len(cal_ds)}, best_dir / "best.yaml")
        row = table[table["chosen"]].iloc[0]
        plain = table[(table["residual_scale"] == 1) & (table["full_gap_months"] == 1)]["val_l1_area_mean"].iloc[0]
        pers = table[table["residual_scale"] == 0]["val_l1_area_mean"].iloc[0]
        self.pbar.write(f"change scale {chosen['residual_scale']:.2f} x min(1, gap / "
                        f"{plural(round(float(chosen['residual_full_gap_months'])), 'month')}) chosen on {plural(len(cal_ds), 'val pair')}: "
                        f"area-balanced val L1 {row['val_l1_area_mean']:.4f} (uncalibrated: {plain:.4f}, "
                        f"the start, scale 0: {pers:.4f})")


def train_cgan(config: CGANTrainConfig) -> Path:
    """Train ``config.model`` with a PatchGAN on ``config.dataset_dir``; return the run folder."""
    run = CGANRun(config)
    run.build()
    ckpt = resolve_resume(run.run_dir, config.resume_from_checkpoint) if run.run_dir.exists() else None
    if config.resume_from_checkpoint and ckpt is None and run.main:
        print(f"resume_from_checkpoint={config.resume_from_checkpoint!r}: no checkpoint in {run.run_dir}, starting fresh")
    execute_run(run, ckpt)
    run.accelerator.wait_for_everyone()
    return run.run_dir


# --------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str] | None = None) -> CGANTrainConfig:
    """``--dataset-dir D --model pix2pix --epochs-constant 5 ...`` (every field of :class:`CGANTrainConfig`);
    ``--params FILE.yaml`` (repeatable) loads keys first, flags override."""
    return CGANTrainConfig.from_command_line(
        argv, "python -m stsynth_lib.cgan.train", "Train a pix2pix or attention-U-Net cGAN on a stsynth tile store.",
        str_keys=("dataset_dir", "runs_dir", "profile", "run_name", "model"))


def main(argv: Sequence[str] | None = None) -> Path:
    return train_from_command_line(parse_args, train_cgan, argv)


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
