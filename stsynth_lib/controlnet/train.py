"""Train a ControlNet on a frozen Stable Diffusion with diffusers and Accelerate.

The loop follows diffusers' ``examples/controlnet/train_controlnet.py`` (frozen
VAE, text encoder and UNet; ControlNet initialised from the UNet; epsilon or
v-prediction MSE) with what users of that example ask for:

* data from ``PairedTileDataset`` (no column names, no path juggling), the same
  dataset, split and tiles as the cGANs;
* conditioning = past image (+ its past frames, ``context_offsets_months``) + future mask (+ time-gap plane),
  prompts from metadata
  with prompt dropout (50 % by default, as in the ControlNet paper, so the ControlNet
  has to learn from its condition rather than from the text);
* the loss is computed in fp32 and only over latent pixels whose 8x8 footprint is
  valid (clouds / nodata masked); a NaN/Inf loss stops the run with a clear message;
* the VAE stays fp32 under fp16/bf16; no safety checker anywhere;
* two numbers logged at each validation, on fixed noise and timesteps, turn the "flat loss /
  the ControlNet ignores its condition" complaint into measurements:
  ``control_gain = 1 - loss / loss(UNet alone)`` (what the ControlNet adds at all) and
  ``cond_gain = 1 - loss / loss(with another pair's conditioning)`` (what *this* pair's
  past image and mask add). Both are exactly 0 at step 0 (zero convolutions).
  ``zero_conv_lr_mult`` raises the learning rate of the zero convolutions;
* validation with small batches under ``no_grad``, memory freed afterwards;
* checkpoints ``checkpoints/checkpoint-<step>`` written atomically with a kept-count
  limit, ``resume_from_checkpoint: latest`` resumes exactly (model, optimizer, LR
  schedule, RNG states, position in the epoch); a fresh run keeps the previous one
  aside until it succeeds (:func:`stsynth_lib.training.fresh_run`).

The pieces live beside this module: :mod:`.config` (options), :mod:`.losses` (the loss, zero
convolutions), :mod:`.validation` (gains and sample figures); this module holds the loop.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from stsynth_lib.cgan.augment import check_erasable, erase_buildings, erase_generator
from stsynth_lib.controlnet.backbone import TINY_BACKBONE, build_tiny_sd, load_backbone, save_backbone
from stsynth_lib.controlnet.conditioning import apply_prompt_dropout, batch_conditioning, batch_prompts
from stsynth_lib.controlnet.conditioning import conditioning_channels, resize_batch
from stsynth_lib.controlnet.config import LOG_FIELDS, ControlNetTrainConfig
from stsynth_lib.controlnet.generate import GENERATION_FILE, encode_prompts
from stsynth_lib.controlnet.losses import diffusion_loss, reinit_cond_embedding, zero_conv_parameters
from stsynth_lib.controlnet.validation import ControlNetValidator
from stsynth_lib.runs import CSVLogger, atomic_checkpoint_dir, atomic_write_text, prepare_run_dir, resolve_resume
from stsynth_lib.runs import save_yaml, seed_everything
from stsynth_lib.training import train_from_command_line
from stsynth_lib.training import collate, epoch_batches, execute_run, make_accelerator, record_resume, resolve_device
from stsynth_lib.training import to_device

WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _make_optimizer(cfg: ControlNetTrainConfig, controlnet, on_cuda: bool):
    zero, other = zero_conv_parameters(controlnet)
    groups = [{"params": other, "lr": cfg.learning_rate},
              {"params": zero, "lr": cfg.learning_rate * cfg.zero_conv_lr_mult}]
    use_8bit = cfg.use_8bit_adam
    if use_8bit == "auto":
        try:
            import bitsandbytes  # noqa: F401
            use_8bit = on_cuda
        except ImportError:
            use_8bit = False
    kw = dict(betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.adam_weight_decay, eps=cfg.adam_epsilon)
    if use_8bit:
        try:
            import bitsandbytes as bnb
        except ImportError as e:
            raise ImportError("use_8bit_adam=true needs bitsandbytes: pip install bitsandbytes (CUDA only), "
                              "or set use_8bit_adam: auto/false") from e
        return bnb.optim.AdamW8bit(groups, **kw), "AdamW8bit (bitsandbytes)"
    return torch.optim.AdamW(groups, **kw), "AdamW (torch)"


def cond_embedding_channels(backbone) -> tuple[int, ...]:
    """Channels of the ControlNet's conditioning encoder: diffusers' (16, 32, 96, 256) downsamples by 8 (SD's VAE
    factor); a backbone whose VAE downsamples by 4 (the tiny trained one) takes (16, 32, 96), so the encoder's
    output lands on the latent grid."""
    f = backbone.vae_scale_factor
    n = int(round(np.log2(f)))
    if 2 ** n != f or n < 1:
        raise ValueError(f"VAE downsampling factor {f} is not a power of 2")
    base = (16, 32, 96, 256, 256)
    return base[: n + 1] if n < len(base) else base + (256,) * (n + 1 - len(base))


def _set_attention(model, sdpa: bool) -> None:
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    model.set_attn_processor(AttnProcessor2_0() if sdpa else AttnProcessor())


class ControlNetRun:
    """One ControlNet training run, in the order it goes: :meth:`load_data` -> :meth:`build_models` ->
    :meth:`open_run_dir` (and :meth:`restore`) -> :meth:`fit` (:meth:`train_step`, :meth:`after_step`) ->
    :meth:`finish`."""

    def __init__(self, cfg: ControlNetTrainConfig):
        self.cfg = cfg
        # CPU: fp32 unless asked (bf16 autocast of the frozen UNet is not yet measured to help here)
        self.setup = resolve_device(cfg.device, cfg.mixed_precision, channels_last=False, cpu_auto_precision="no")
        self.mp = self.setup.mixed_precision
        self.accelerator = make_accelerator(self.setup, gradient_accumulation_steps=cfg.gradient_accumulation_steps)
        self.device = self.accelerator.device
        self.main = self.accelerator.is_main_process
        self.world, self.rank = self.accelerator.num_processes, self.accelerator.process_index
        self.run_dir = Path(cfg.runs_dir) / cfg.profile / (cfg.run_name or "controlnet")
        self.weight_dtype = WEIGHT_DTYPES[self.mp]
        self.global_step = 0
        seed_everything(cfg.seed)

    def load_data(self) -> None:
        from stsynth_lib.data.dataset import PairedTileDataset

        cfg = self.cfg
        ctx = {"context_offsets_months": cfg.context_offsets_months}  # the past frames of the conditioning, if any
        self.train_ds = PairedTileDataset(cfg.dataset_dir, "train", max_pairs=cfg.max_train_pairs, augment=cfg.augment,
                                          subsample_seed=cfg.seed if cfg.max_train_pairs else None, **ctx)
        self.val_ds = PairedTileDataset(cfg.dataset_dir, "val", max_pairs=cfg.max_val_pairs, subsample_seed=cfg.seed,
                                        **ctx)
        if len(self.train_ds) == 0:
            raise ValueError(f"{cfg.dataset_dir}: the train split has no pairs; rebuild the dataset with more AOIs")
        if len(self.val_ds) == 0:  # validation falls back to (un-augmented) training pairs
            self.val_ds = PairedTileDataset(cfg.dataset_dir, "train", max_pairs=cfg.num_validation_loss_pairs,
                                            subsample_seed=cfg.seed, **ctx)
        if self.train_ds.n_bands != 3:
            raise ValueError(f"{cfg.dataset_dir} has {self.train_ds.n_bands} bands; Stable Diffusion's VAE is RGB: "
                             "build the dataset with bands [1, 2, 3]")
        has_labels = bool(self.train_ds.store.meta.get("has_labels", True))
        self.use_mask = has_labels if cfg.use_mask == "auto" else bool(cfg.use_mask)
        check_erasable(cfg.erase_building_fraction, self.train_ds, cfg.dataset_dir,  # a twin erases without the mask
                       labelled=self.use_mask or bool(cfg.nomask_twin_of))
        self.tile_px = self.train_ds.tile_size_px
        self.res = int(cfg.resolution_px or self.tile_px)
        self.n_cond = conditioning_channels(self.train_ds.n_bands, cfg.use_gap_plane, self.use_mask,
                                            cfg.context_offsets_months)

    def load_backbone(self) -> None:
        from stsynth_lib.controlnet.residual import check_backbone_target

        cfg = self.cfg
        # a stage-1 backbone's UNet learned images or latent changes: the ControlNet must learn the same
        self.backbone_target = (None if cfg.pretrained_model == TINY_BACKBONE
                                else check_backbone_target(cfg.diffusion_target, cfg.pretrained_model))
        if cfg.pretrained_model == TINY_BACKBONE:
            self.backbone = build_tiny_sd(seed=cfg.tiny_seed)
        else:
            self.backbone = load_backbone(cfg.pretrained_model, revision=cfg.revision, variant=cfg.variant)
        self.backbone.freeze()
        bb = self.backbone
        multiple = bb.vae_scale_factor * 2 ** (len(bb.unet.config.block_out_channels) - 1)
        if self.res % multiple:
            raise ValueError(f"resolution {self.res} px is not a multiple of {multiple} (VAE factor x UNet "
                             f"downsamplings) for backbone {bb.name}; set resolution_px to a multiple of {multiple}")
        self.backbone_path = str(self.run_dir / "backbone") if bb.kind == TINY_BACKBONE else str(cfg.pretrained_model)

    def build_models(self) -> None:
        """The ControlNet (from the frozen UNet), attention processors, optimiser and LR schedule."""
        from diffusers import ControlNetModel
        from diffusers.optimization import get_scheduler

        cfg, bb, acc = self.cfg, self.backbone, self.accelerator
        controlnet = ControlNetModel.from_unet(bb.unet, conditioning_channels=self.n_cond,
                                               conditioning_embedding_out_channels=cond_embedding_channels(bb))
        if cfg.cond_embedding_init == "kaiming":
            reinit_cond_embedding(controlnet, cfg.seed)
        elif cfg.cond_embedding_init != "default":
            raise ValueError(f"cond_embedding_init must be 'kaiming' or 'default', got {cfg.cond_embedding_init!r}")
        _set_attention(bb.unet, cfg.sdpa)
        _set_attention(controlnet, cfg.sdpa)
        if cfg.gradient_checkpointing:
            controlnet.enable_gradient_checkpointing()
            bb.unet.enable_gradient_checkpointing()
        bb.to(self.device, self.weight_dtype)  # VAE stays fp32
        controlnet.train()
        optimizer, self.optimizer_name = _make_optimizer(cfg, controlnet, self.setup.on_cuda)
        lr_sched = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.lr_warmup_steps * acc.num_processes,
                                 num_training_steps=cfg.max_train_steps * acc.num_processes)
        self.controlnet, self.optimizer, self.lr_sched = acc.prepare(controlnet, optimizer, lr_sched)

    def effective_params(self) -> dict[str, Any]:
        return {**asdict(self.cfg), "model": "controlnet", "backbone": self.backbone.kind,
                "backbone_name": self.backbone.name, "backbone_description": self.backbone.description,
                "backbone_path": self.backbone_path, "use_mask": self.use_mask,
                "conditioning_channels": self.n_cond, "tile_size_px": self.tile_px, "resolution_px": self.res,
                "mixed_precision_resolved": self.mp, "weight_dtype": str(self.weight_dtype).replace("torch.", ""),
                "optimizer": self.optimizer_name, "n_train_pairs": len(self.train_ds), "n_val_pairs": len(self.val_ds),
                "device_resolved": str(self.device), "compute": self.setup.describe()}

    def open_run_dir(self, resume: Path | None) -> None:
        """``params.yaml`` (with option changes on resume), the tiny backbone's weights, the log."""
        params = self.effective_params()
        step = 0
        if resume is not None:
            step = int(json.loads((resume / "trainer_state.json").read_text())["global_step"])
            self.check_same_conditioning()
            params["resumed"] = record_resume(self.run_dir, step, params, self.cfg, self.cfg.allow_resume_changes)
        if self.main and step < self.cfg.max_train_steps:  # new weights: a strength chosen for the old ones is void
            (self.run_dir / GENERATION_FILE).unlink(missing_ok=True)
        if self.main:
            if self.backbone.kind == TINY_BACKBONE and not (self.run_dir / "backbone" / "stsynth_backbone.json").is_file():
                save_backbone(self.backbone, self.run_dir / "backbone")
            prepare_run_dir(self.cfg.runs_dir, self.cfg.profile, self.run_dir.name, params)
        self.residual_scale = self.residual_scale_for(resume)
        self.logger = CSVLogger(self.run_dir / "log.csv", fieldnames=LOG_FIELDS)
        self.validator = ControlNetValidator(self.cfg, self.backbone, self.val_ds, self.res, self.tile_px, self.use_mask,
                                             self.weight_dtype, self.device, self.setup.on_cuda, self.run_dir,
                                             self.main, residual_scale=self.residual_scale)

    def check_same_conditioning(self) -> None:
        """A resume must build the conditioning the checkpoint's encoder reads (its number of input channels), even
        with ``allow_resume_changes``: other context offsets make another network."""
        import yaml

        path = self.run_dir / "params.yaml"
        saved = (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}
        before, now = saved.get("context_offsets_months"), self.cfg.context_offsets_months
        if "conditioning_channels" in saved and (before != now or int(saved["conditioning_channels"]) != self.n_cond):
            raise ValueError(f"cannot resume {self.run_dir}: it was trained with context_offsets_months={before} "
                             f"({saved['conditioning_channels']} conditioning channels), now {now} ({self.n_cond}); "
                             "resume with the saved offsets or start a fresh run")

    def residual_scale_for(self, resume: Path | None) -> float | None:
        """``diffusion_target: residual``: the residual scale, fitted on seeded training pairs at the start of a fresh
        run and written to ``residual.yaml`` (by the main process; the others read it), read back on resume (never
        refitted: :mod:`stsynth_lib.controlnet.residual`). Beside a stage-1 backbone trained with ``unet_target:
        residual`` the scale is the backbone's (its ``residual.yaml``, copied), not a refit. None for ``image``."""
        from stsynth_lib.controlnet import residual as R
        from stsynth_lib.data.dataset import PairedTileDataset

        cfg = self.cfg
        if not R.is_residual(asdict(cfg)):
            return None
        path = self.run_dir / R.RESIDUAL_FILE
        if self.main and not (resume is not None and path.is_file()):
            if self.backbone_target == "residual":  # the scale the frozen UNet learned with
                save_yaml(R.backbone_residual_record(cfg.pretrained_model), path)
            else:
                ds = PairedTileDataset(cfg.dataset_dir, "train", max_pairs=cfg.max_train_pairs,  # the training pairs,
                                       subsample_seed=cfg.seed if cfg.max_train_pairs else None)  # not augmented
                devices = [torch.cuda.current_device()] if self.setup.on_cuda else []
                with torch.random.fork_rng(devices=devices):  # the training RNG streams stay as they were
                    rms, n = R.latent_change_rms(self.backbone, ds, cfg.residual_scale_pairs, cfg.seed, self.res,
                                                 self.device)
                save_yaml(R.residual_record(rms, n), path)
        self.accelerator.wait_for_everyone()
        return R.read_residual_scale(self.run_dir)

    def restore(self, resume: Path) -> None:
        self.accelerator.load_state(str(resume))
        self.global_step = int(json.loads((resume / "trainer_state.json").read_text())["global_step"])
        self.logger.truncate_after(self.global_step)
        self.accelerator.print(f"Resumed from {resume} at step {self.global_step}")

    def validate(self, step: int) -> dict[str, float]:
        return self.validator(step, self.accelerator.unwrap_model(self.controlnet))

    def save_checkpoint(self, step: int) -> None:
        self.accelerator.wait_for_everyone()
        if self.main:
            with atomic_checkpoint_dir(self.run_dir, step, keep=self.cfg.checkpoints_total_limit) as tmp:
                self.accelerator.save_state(str(tmp))
                atomic_write_text(tmp / "trainer_state.json", json.dumps({"global_step": step}))

    # ---- the loop
    def fit(self) -> None:
        from torch.utils.data import DataLoader
        from tqdm.auto import tqdm

        cfg = self.cfg
        bs, n = cfg.train_batch_size, len(self.train_ds)
        n_batches = len(epoch_batches(n, bs, 0, cfg.seed, self.rank, self.world, drop_last=True))
        spe = max(1, n_batches // cfg.gradient_accumulation_steps)
        first_epoch, skip = self.global_step // spe, (self.global_step % spe) * cfg.gradient_accumulation_steps
        self.imgs_per_step = bs * cfg.gradient_accumulation_steps * self.world
        if self.global_step == 0 and cfg.validate_at_start:
            row = {"step": 0, "epoch": 0, **self.validate(0)}
            if self.main:
                self.logger.log(row)
        self.pbar = tqdm(total=cfg.max_train_steps, initial=self.global_step, desc="ControlNet",
                         disable=not cfg.progress or not self.accelerator.is_local_main_process)
        self.t_start = time.perf_counter()
        self.interval = {"time": 0.0, "images": 0, "loss": 0.0, "n": 0}
        self.prompt_gen = torch.Generator().manual_seed(cfg.seed + 1)
        self.summary: dict[str, Any] = {}
        epoch = first_epoch
        while self.global_step < cfg.max_train_steps:
            batches = epoch_batches(n, bs, epoch, cfg.seed, self.rank, self.world, drop_last=True)
            if epoch == first_epoch and skip:
                batches = batches[skip:]
            # own generator: creating the iterator must not draw from the global torch RNG (exact resume)
            dl = DataLoader(self.train_ds, batch_sampler=batches, collate_fn=collate, num_workers=cfg.num_workers,
                            generator=torch.Generator().manual_seed(cfg.seed + epoch))
            self.train_epoch(dl, epoch)
            epoch += 1
        self.pbar.close()

    def train_epoch(self, loader, epoch: int) -> None:
        t0, micro = time.perf_counter(), 0
        for batch in loader:
            micro += 1
            loss = self.train_step(batch, micro)
            self.interval["loss"] += float(loss.detach())
            self.interval["n"] += 1
            if not self.accelerator.sync_gradients:
                continue
            self.global_step += 1
            self.interval["images"] += self.imgs_per_step
            self.interval["time"] += time.perf_counter() - t0
            self.pbar.update(1)
            self.after_step(epoch)
            t0 = time.perf_counter()
            if self.global_step >= self.cfg.max_train_steps:
                return

    def train_step(self, batch, micro: int) -> torch.Tensor:
        """One (micro-)batch: conditioning, prompts with dropout, loss, backward, optimiser step."""
        cfg, acc = self.cfg, self.accelerator
        batch = to_device(batch, self.device)
        if cfg.erase_building_fraction > 0:  # at the tile size, on the device; a generator seeded from the step (exact
            # resume; with gradient accumulation its seed can equal another micro-batch's prompt-dropout seed: harmless)
            seed = cfg.seed * 7919 + self.global_step * 104729 + micro % cfg.gradient_accumulation_steps
            batch = erase_buildings(batch, erase_generator(seed, self.rank), cfg.erase_building_fraction)
        batch = resize_batch(batch, self.res)
        with acc.accumulate(self.controlnet):
            cond = batch_conditioning(batch, cfg.use_gap_plane, cfg.gap_scale_months, self.use_mask,
                                      cfg.context_offsets_months)
            prompts = batch_prompts(batch, cfg.prompt_template, cfg.empty_prompt)
            # re-seeded from the step count so that resume replays the same prompt-dropout draws
            self.prompt_gen.manual_seed(cfg.seed * 7919 + self.global_step * 131 + micro % cfg.gradient_accumulation_steps)
            prompts = apply_prompt_dropout(prompts, cfg.prompt_dropout, self.prompt_gen)
            emb = encode_prompts(self.backbone, prompts, self.device, self.weight_dtype)
            residual = self.residual_scale is not None  # learn the change from the past image (its latent)
            loss = diffusion_loss(self.backbone, self.controlnet, batch["future"], cond, emb, batch["valid"],
                                  self.weight_dtype, start=batch["past"] if residual else None,
                                  residual_scale=self.residual_scale if residual else 1.0)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"ControlNet loss is {float(loss)} at step {self.global_step + 1} (mixed_precision={self.mp}). "
                    "Try mixed_precision: bf16 (or no), a lower learning_rate, or max_grad_norm: 1.0; "
                    f"the last good checkpoint is {resolve_resume(self.run_dir, 'latest')}.")
            acc.backward(loss)
            if acc.sync_gradients and cfg.max_grad_norm:
                acc.clip_grad_norm_(self.controlnet.parameters(), cfg.max_grad_norm)
            self.optimizer.step()
            self.lr_sched.step()
            self.optimizer.zero_grad(set_to_none=True)
        return loss

    def after_step(self, epoch: int) -> None:
        """Log, validate and checkpoint as due at ``global_step``."""
        cfg, step, iv = self.cfg, self.global_step, self.interval
        last_loss = iv["loss"] / max(iv["n"], 1)
        ips = iv["images"] / max(iv["time"], 1e-9)
        self.pbar.set_postfix(loss=f"{last_loss:.4f}", img_s=f"{ips:.1f}")
        row: dict[str, Any] = {}
        if step % cfg.log_every_steps == 0 or step == cfg.max_train_steps:
            row = {"step": step, "epoch": epoch, "loss": last_loss, "lr": self.lr_sched.get_last_lr()[0],
                   "images_per_s": ips, "elapsed_s": time.perf_counter() - self.t_start}
            self.summary.update(final_loss=last_loss, images_per_s=ips)
            self.interval = {"time": 0.0, "images": 0, "loss": 0.0, "n": 0}
        if cfg.validation_steps and (step % cfg.validation_steps == 0 or step == cfg.max_train_steps):
            v = self.validate(step)
            row = {"step": step, "epoch": epoch, **row, **v}
            self.summary.update(v)
        if row and self.main:
            self.logger.log(row)
        if (cfg.checkpointing_steps and step % cfg.checkpointing_steps == 0) or step == cfg.max_train_steps:
            self.save_checkpoint(step)

    def finish(self) -> None:
        """The trained ControlNet (diffusers folder ``controlnet/``, written atomically) and ``summary.yaml``."""
        self.accelerator.wait_for_everyone()
        if self.main:
            final, tmp = self.run_dir / "controlnet", self.run_dir / "controlnet.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            self.accelerator.unwrap_model(self.controlnet).save_pretrained(tmp)
            shutil.rmtree(final, ignore_errors=True)
            tmp.replace(final)
            self.summary.update(step=self.global_step, backbone=self.backbone.kind,
                                wall_s=time.perf_counter() - self.t_start)
            save_yaml(self.summary, self.run_dir / "summary.yaml")
        self.accelerator.end_training()


def train_controlnet(config: ControlNetTrainConfig) -> Path:
    """Train a ControlNet on ``config.dataset_dir``'s train split; return the run folder.

    The run folder (``<runs_dir>/<profile>/<run_name or controlnet>``) holds ``params.yaml`` (with
    ``backbone: tiny-random`` or ``pretrained``), ``log.csv``, ``samples/step-<step>.png`` (past | mask |
    generated | truth), ``checkpoints/checkpoint-<step>/``, the final ``controlnet/`` (diffusers format), for
    the tiny backbone ``backbone/`` (so generation reloads the same random weights) and, with ``diffusion_target:
    residual``, ``residual.yaml`` (the residual scale, :mod:`stsynth_lib.controlnet.residual`).
    """
    run = ControlNetRun(config)
    resume = resolve_resume(run.run_dir, config.resume_from_checkpoint) if run.run_dir.exists() else None
    if config.resume_from_checkpoint and config.resume_from_checkpoint != "latest" and resume is None:
        raise FileNotFoundError(f"resume_from_checkpoint={config.resume_from_checkpoint!r} but {run.run_dir} "
                                "does not exist")
    run.load_data()
    run.load_backbone()
    run.build_models()
    return execute_run(run, resume)


# --------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str] | None = None) -> ControlNetTrainConfig:
    """``--dataset_dir D --pretrained_model /path/to/local/sd15 --max_train_steps 1000 ...`` (every field of
    :class:`ControlNetTrainConfig`, with ``_`` or ``-``); ``--params FILE.yaml`` (repeatable) loads keys first."""
    return ControlNetTrainConfig.from_command_line(
        argv, "python -m stsynth_lib.controlnet.train", "Train a ControlNet on a stsynth tile store (diffusers + Accelerate).",
        str_keys=("dataset_dir", "runs_dir", "profile", "run_name", "pretrained_model", "prompt_template"))


def main(argv: Sequence[str] | None = None) -> Path:
    return train_from_command_line(parse_args, train_controlnet, argv)


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
