"""Stage 1 of chapter 5: adapt the diffusion backbone to satellite imagery, before the ControlNet.

A ControlNet can only steer a backbone that already draws the images it is asked for. DiffusionSat (Khanna et al.
2024) first fine-tunes Stable Diffusion on satellite images with metadata prompts, then adds the conditioning; this
module is that first stage, with the loop of diffusers' ``examples/text_to_image/train_text_to_image.py``
(epsilon MSE, optional ``noise_offset`` and min-SNR weighting, EMA of the UNet, prompt dropout for
classifier-free guidance).

* ``pretrained_model: tiny-from-scratch`` (CPU profiles): there is no backbone to adapt offline, so it is **trained
  from scratch** on the training split's tile images: phase ``vae`` (a small VAE, L1 + a small KL term, on random
  crops; its reconstruction PSNR on validation is logged: it bounds every later number), then phase ``unet`` (the
  UNet and, if ``train_text_encoder``, the 2-layer CLIP text encoder, with the real CLIP tokenizer).
* ``pretrained_model: <SD 1.x hub id or folder>`` (GPU profiles): phase ``unet`` only, fine-tuning SD's UNet with
  the VAE and text encoder frozen.

What phase ``unet`` denoises is ``unet_target``:

* ``image`` (the default): the latents of single tile images, as diffusers' example (the backbone learns what one
  image of the area looks like);
* ``residual``: the scaled latent change of the training split's pairs, ``(z_future - z_past) * residual_scale``
  (``z_future`` a posterior sample, ``z_past`` the posterior mean), the target of a ControlNet with
  ``diffusion_target: residual``, so the frozen UNet's prior is the distribution the ControlNet steers (as residual
  diffusion, e.g. CorrDiff, trains its whole denoiser on residuals). The scale is fitted once by
  :func:`~stsynth_lib.controlnet.residual.latent_change_rms` on ``residual_scale_pairs`` un-augmented training pairs
  (the ControlNet's function), written to ``<run_dir>/residual.yaml`` (read back on resume, never refitted) and
  copied to ``<run_dir>/backbone/residual.yaml``; the ControlNet then uses it instead of fitting its own, and refuses
  a ``diffusion_target`` other than the backbone's ``unet_target``. The pairs are augmented like the tiles (the same
  flip and rotation for past and future); a pair's prompt is the ControlNet's
  (:func:`~stsynth_lib.controlnet.conditioning.batch_prompts`) with stage 1's ``prompt_template``: with the default
  template, the stage-1 prompt of the future tile's date. ``max_train_tiles`` / ``max_val_tiles`` cap the pairs.

The result is ``<run_dir>/backbone/``, a diffusers folder that :func:`~stsynth_lib.controlnet.backbone.load_backbone`
accepts as ``pretrained_model`` (stage 2 does not change). Its ``stsynth_backbone.json`` records the kind
(``tiny-trained`` or ``pretrained-adapted``) and a description that every table prints (never "Stable Diffusion"
for the tiny model).

Each phase writes ``<run_dir>/<phase>/log.csv`` and ``checkpoints/checkpoint-<step>/`` (atomic, newest
``checkpoints_total_limit`` kept); ``resume_from_checkpoint: latest`` resumes a phase exactly: batches, crops,
noise and timesteps are drawn from generators seeded by the step, so a resumed run replays an uninterrupted one.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import yaml

from stsynth_lib.controlnet import residual as R
from stsynth_lib.controlnet.adapt_loop import Phase, step_batch, warmup, zero_init_residuals
from stsynth_lib.controlnet.adapt_residual import _pair_latents, stage1_pairs, stage1_residual_scale  # noqa: F401
from stsynth_lib.controlnet.adapt_parts import (
    EMA,
    STAGE1_PROMPT_TEMPLATE,
    TileImageDataset,
    backbone_description,
    collate_tiles,
    latent_scaling_factor,
    min_snr_weights,
    tiny_trainable_configs,
    vae_reconstruction_scores,
)
from stsynth_lib.controlnet.backbone import SD15_SCHEDULER, Backbone, load_backbone, save_backbone
from stsynth_lib.controlnet.generate import image_latents, text_embeddings
from stsynth_lib.controlnet.losses import latent_valid_weight, masked_mse
from stsynth_lib.runs import prepare_run_dir, save_yaml, seed_everything
from stsynth_lib.training import TrainConfig, check_checkpoint_limit, resolve_device, train_from_command_line

TINY_FROM_SCRATCH = "tiny-from-scratch"
TINY_TRAINED = "tiny-trained"
ADAPTED = "pretrained-adapted"


@dataclass
class BackboneAdaptConfig(TrainConfig):
    """Every option of a stage-1 run (recorded in ``params.yaml``)."""

    dataset_dir: str = "data/smoke/dataset"
    runs_dir: str = "runs"
    profile: str = "smoke"
    run_name: str = "backbone"
    pretrained_model: str = TINY_FROM_SCRATCH  # tiny-from-scratch | SD 1.x hub id | local diffusers folder
    # architecture of the tiny backbone
    vae_channels: list = field(default_factory=lambda: [16, 32, 64])  # factor 2 ** (levels - 1) = 4
    unet_channels: list = field(default_factory=lambda: [32, 64, 64])
    text_hidden_size: int = 64
    latent_channels: int = 16  # SD: 4 at factor 8; on sn7_real_128 (val, 300 steps) 16 at factor 4 beat 4
    train_text_encoder: bool = True  # tiny: train the text encoder with the UNet (false: keep it random, frozen)
    # phase vae
    vae_steps: int = 1500
    vae_batch_size: int = 16
    vae_crop_px: int | None = 32  # random crops (the VAE is fully convolutional): 4x cheaper steps than 64 px, same
    #                               validation PSNR per step on sn7_real_128; None: whole tiles
    vae_learning_rate: float = 2e-3
    vae_kl_weight: float = 1e-6
    vae_loss: str = "mse"  # mse | l1 (the reconstruction term; mse is what PSNR measures)
    vae_zero_init_residuals: bool = True  # resnet blocks start as identities (their second conv at 0): the VAE starts
    #                                       shallow and learns fine detail sooner
    vae_init_logvar: float = -10.0  # start the posterior nearly deterministic (std e^-5): with a KL weight this small
    #                                 a unit-variance start buries the latent in noise for hundreds of steps
    # phase unet
    unet_steps: int = 800
    unet_batch_size: int = 16
    unet_learning_rate: float = 5e-4
    lr_warmup_steps: int = 50
    noise_offset: float = 0.0
    snr_gamma: float | None = 5.0  # min-SNR weighting; None: plain MSE
    ema_decay: float = 0.999
    prompt_template: str = STAGE1_PROMPT_TEMPLATE
    prompt_dropout: float = 0.1  # share of empty prompts (classifier-free guidance)
    unet_target: str = "image"  # image: tile images | residual: the scaled latent change (z_future - z_past) * scale
    #                             of training pairs (a ControlNet with diffusion_target: residual needs this backbone)
    residual_scale_pairs: int = 64  # unet_target residual: training pairs whose latent change fits scale = 1 / RMS
    max_grad_norm: float = 1.0
    resolution_px: int | None = None  # phase unet: resize the tiles (e.g. 512 for SD 1.5, as the ControlNet's)
    mixed_precision: str = "auto"  # phase unet: auto (bf16 autocast on a GPU that has it) | no | bf16
    gradient_checkpointing: bool = False  # phase unet (SD 1.5 on a 16-24 GB GPU)
    # data, bookkeeping
    max_train_tiles: int | None = None
    max_val_tiles: int | None = 64
    augment: bool = True
    seed: int = 0
    device: str = "auto"
    log_every_steps: int = 10
    validation_steps: int = 200
    checkpointing_steps: int = 200
    checkpoints_total_limit: int | None = 2
    resume_from_checkpoint: str | None = None  # None: fresh | latest (per phase; a finished phase is kept)
    progress: bool = True

    def __post_init__(self):
        for k in ("vae_steps", "unet_steps", "vae_batch_size", "unet_batch_size"):
            if int(getattr(self, k)) < 1:
                raise ValueError(f"{k} must be >= 1, got {getattr(self, k)}")
        if not 0.0 <= float(self.prompt_dropout) <= 1.0:
            raise ValueError(f"prompt_dropout must be in [0, 1], got {self.prompt_dropout}")
        if not 0.0 < float(self.ema_decay) < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {self.ema_decay}")
        if self.vae_loss not in ("l1", "mse"):
            raise ValueError(f"vae_loss must be l1 or mse, got {self.vae_loss!r}")
        R.check_target("unet_target", self.unet_target)
        if int(self.residual_scale_pairs) < 1:
            raise ValueError(f"residual_scale_pairs must be >= 1, got {self.residual_scale_pairs}")
        if self.mixed_precision not in ("auto", "no", "bf16"):
            raise ValueError(f"mixed_precision must be auto, no or bf16 (fp16 training of the UNet is not supported "
                             f"here), got {self.mixed_precision!r}")
        check_checkpoint_limit(self.checkpoints_total_limit)

    @property
    def from_scratch(self) -> bool:
        return str(self.pretrained_model) == TINY_FROM_SCRATCH

    @property
    def residual(self) -> bool:
        """Phase ``unet`` learns the scaled latent change of training pairs (``unet_target: residual``)."""
        return self.unet_target == "residual"


def train_vae(cfg: BackboneAdaptConfig, run_dir: Path, device: torch.device):
    """Phase ``vae``: L1 + ``vae_kl_weight`` x KL on random crops; validation PSNR on whole val tiles."""
    from diffusers import AutoencoderKL

    final = run_dir / "vae" / "final"
    if (final / "config.json").is_file() and cfg.resume_from_checkpoint:
        return AutoencoderKL.from_pretrained(final).to(device)
    torch.manual_seed(cfg.seed)
    vae = AutoencoderKL(**tiny_trainable_configs(cfg.vae_channels, cfg.unet_channels, cfg.text_hidden_size, cfg.latent_channels)["vae"])
    with torch.no_grad():  # quant_conv outputs (mean, logvar): start the log-variance low
        vae.quant_conv.bias[cfg.latent_channels:].fill_(cfg.vae_init_logvar)
        if cfg.vae_zero_init_residuals:
            zero_init_residuals(vae)
    vae = vae.to(device)
    ds = TileImageDataset(cfg.dataset_dir, "train", augment=cfg.augment, crop_px=cfg.vae_crop_px,
                          max_tiles=cfg.max_train_tiles, seed=cfg.seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_learning_rate, weight_decay=0.0)
    phase = Phase("vae", run_dir, cfg, {"vae": vae}, opt, warmup(cfg.lr_warmup_steps), cfg.vae_steps,
                   val_fields=("val_psnr_db", "val_ssim"))
    phase.open()

    def loss_fn(step: int) -> torch.Tensor:
        b = step_batch(ds, step, cfg.vae_batch_size, cfg.seed)
        x, valid = b["image"].to(device), b["valid"].to(device)
        g = torch.Generator(device="cpu").manual_seed(cfg.seed * 31 + step)
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g).to(device)
        rec = vae.decode(z).sample
        err = (rec - x).abs() if cfg.vae_loss == "l1" else (rec - x) ** 2
        rec_loss = (err * valid).sum() / (valid.sum() * x.shape[1]).clamp_min(1)
        return rec_loss + cfg.vae_kl_weight * post.kl().mean()

    def validate(step: int) -> dict[str, float]:
        vae.eval()
        s = vae_reconstruction_scores(vae, cfg.dataset_dir, "val", max_tiles=cfg.max_val_tiles, device=device)
        vae.train()
        return {"val_psnr_db": s["psnr_db"], "val_ssim": s["ssim"]}

    vae.train()
    phase.run(loss_fn, validate)
    vae.eval()
    vae.register_to_config(scaling_factor=latent_scaling_factor(vae, cfg.dataset_dir, "train", seed=cfg.seed, device=device))
    tmp = final.with_name("final.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    vae.save_pretrained(tmp)
    shutil.rmtree(final, ignore_errors=True)
    tmp.replace(final)
    return vae


def build_stage1_backbone(cfg: BackboneAdaptConfig, vae) -> Backbone:
    """The backbone whose UNet phase ``unet`` trains: tiny (new UNet and text encoder around ``vae``) or SD."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from stsynth_lib.controlnet.tokenizer import build_clip_tokenizer

    if not cfg.from_scratch:
        bb = load_backbone(cfg.pretrained_model)
        bb.kind, bb.name = ADAPTED, str(cfg.pretrained_model)
        return bb
    cf = tiny_trainable_configs(cfg.vae_channels, cfg.unet_channels, cfg.text_hidden_size, cfg.latent_channels)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(cfg.seed + 1)
        text_encoder = CLIPTextModel(CLIPTextConfig(**cf["text_encoder"]))
        unet = UNet2DConditionModel(**cf["unet"])
    finally:
        torch.random.set_rng_state(state)
    return Backbone(build_clip_tokenizer(), text_encoder, vae, unet, DDPMScheduler(**SD15_SCHEDULER),
                    name=TINY_TRAINED, kind=TINY_TRAINED)


def unet_loss(bb: Backbone, cfg: BackboneAdaptConfig, batch: dict[str, Any], step: int, device,
              residual_scale: float | None = None) -> torch.Tensor:
    """Text-to-image denoising loss of one batch (epsilon / v target, min-SNR weights, valid latents only).

    ``unet_target: residual``: ``batch`` is a collated batch of pairs and the latents noised are
    ``(z_future - z_past) * residual_scale`` (``z_future`` a posterior sample, ``z_past`` the posterior mean)."""
    g = torch.Generator(device="cpu").manual_seed(cfg.seed * 7919 + step)
    if cfg.residual:
        lat, valid, prompts = _pair_latents(bb, cfg, batch, residual_scale, device, g)
    else:
        lat, valid, prompts = *_image_latents(bb, cfg, batch, device, g), batch["prompt"]
    noise = torch.randn(lat.shape, generator=g).to(device)
    if cfg.noise_offset:
        noise = noise + cfg.noise_offset * torch.randn((lat.shape[0], lat.shape[1], 1, 1), generator=g).to(device)
    t = torch.randint(0, bb.noise_scheduler.config.num_train_timesteps, (lat.shape[0],), generator=g).to(device)
    drop = torch.rand(len(prompts), generator=g) < cfg.prompt_dropout
    prompts = ["" if d else p for d, p in zip(drop.tolist(), prompts)]
    with torch.set_grad_enabled(bool(cfg.train_text_encoder and cfg.from_scratch)):
        emb = text_embeddings(bb, prompts, device)
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=_use_bf16(cfg, device)):
        pred = bb.unet(bb.noise_scheduler.add_noise(lat, noise, t), t, encoder_hidden_states=emb).sample.float()
    target = noise if bb.noise_scheduler.config.prediction_type == "epsilon" else bb.noise_scheduler.get_velocity(lat, noise, t)
    w = latent_valid_weight(valid, bb.vae_scale_factor).expand_as(pred)
    per = ((pred - target) ** 2 * w).sum(dim=(1, 2, 3)) / w.sum(dim=(1, 2, 3)).clamp_min(1)
    if cfg.snr_gamma:
        per = per * min_snr_weights(bb.noise_scheduler, t, cfg.snr_gamma)
    return per.mean()


def _image_latents(bb: Backbone, cfg: BackboneAdaptConfig, batch: dict[str, Any], device, g: torch.Generator):
    """(scaled posterior-sample latents, pixel validity) of a batch of tile images."""
    x, valid = batch["image"].to(device), batch["valid"].to(device)
    if cfg.resolution_px and int(cfg.resolution_px) != x.shape[-1]:
        from stsynth_lib.controlnet.conditioning import resize_spatial

        x = resize_spatial(x, int(cfg.resolution_px)).clamp(-1, 1)
        valid = (torch.nn.functional.interpolate(valid, size=x.shape[-2:], mode="nearest") > 0.5).float()
    with torch.no_grad():
        lat = bb.vae.encode(x.to(bb.vae.dtype)).latent_dist
        lat = (lat.mean + lat.std * torch.randn(lat.mean.shape, generator=g).to(device)) * bb.vae.config.scaling_factor
    return lat.float(), valid


def _use_bf16(cfg: BackboneAdaptConfig, device: torch.device) -> bool:
    if cfg.mixed_precision == "no" or device.type != "cuda":
        return False
    return cfg.mixed_precision == "bf16" or torch.cuda.is_bf16_supported()


@torch.no_grad()
def unet_val_loss(bb: Backbone, cfg: BackboneAdaptConfig, val_ds, device, n: int = 16,
                  residual_scale: float | None = None) -> float:
    """Unweighted denoising MSE on fixed val tiles, noise and timesteps (5 levels), full prompts (``unet_target:
    residual``: on fixed val pairs, their scaled latent change from posterior means)."""
    idx = np.linspace(0, len(val_ds) - 1, min(n, len(val_ds))).round().astype(int)
    if cfg.residual:
        from stsynth_lib.training import collate

        lat, valid, prompts = _pair_latents(bb, cfg, collate([val_ds[int(i)] for i in idx]), residual_scale, device,
                                            None)
    else:
        b = collate_tiles([val_ds[int(i)] for i in idx])
        x, valid, prompts = b["image"].to(device), b["valid"].to(device), b["prompt"]
        lat = bb.vae.encode(x.to(bb.vae.dtype)).latent_dist.mean.float() * bb.vae.config.scaling_factor
    emb, g, total = text_embeddings(bb, prompts, device), torch.Generator().manual_seed(cfg.seed + 999), 0.0
    levels = torch.linspace(50, bb.noise_scheduler.config.num_train_timesteps - 50, 5).long()
    for t in levels:
        noise = torch.randn(lat.shape, generator=g).to(device)
        tt = t.repeat(len(lat)).to(device)
        pred = bb.unet(bb.noise_scheduler.add_noise(lat, noise, tt), tt, encoder_hidden_states=emb).sample.float()
        total += float(masked_mse(pred, noise, latent_valid_weight(valid, bb.vae_scale_factor)))
    return total / len(levels)


def train_unet(cfg: BackboneAdaptConfig, run_dir: Path, bb: Backbone, device) -> Backbone:
    """Phase ``unet``: the UNet (and the tiny text encoder when ``train_text_encoder``), EMA weights kept."""
    bb.vae.requires_grad_(False).eval()
    train_te = bool(cfg.train_text_encoder and cfg.from_scratch)
    bb.text_encoder.requires_grad_(train_te).train(train_te)
    bb.unet.train()
    if cfg.gradient_checkpointing:
        bb.unet.enable_gradient_checkpointing()
    for m in (bb.text_encoder, bb.unet, bb.vae):
        m.to(device)
    scale = stage1_residual_scale(cfg, run_dir, bb, device)
    if cfg.residual:  # pairs: past and future flipped and rotated alike
        from stsynth_lib.training import collate

        ds, val = stage1_pairs(cfg, "train", augment=cfg.augment), stage1_pairs(cfg, "val")
        val, collate_fn = val if len(val) else stage1_pairs(cfg, "train", max_pairs=cfg.max_val_tiles), collate
    else:
        ds = TileImageDataset(cfg.dataset_dir, "train", cfg.prompt_template, augment=cfg.augment,
                              max_tiles=cfg.max_train_tiles, seed=cfg.seed)
        val = TileImageDataset(cfg.dataset_dir, "val", cfg.prompt_template, max_tiles=cfg.max_val_tiles, seed=cfg.seed)
        val, collate_fn = val if len(val) else ds, collate_tiles
    modules = {"unet": bb.unet, **({"text_encoder": bb.text_encoder} if train_te else {})}
    params = [p for m in modules.values() for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.unet_learning_rate, weight_decay=1e-2)
    ema = EMA(bb.unet, cfg.ema_decay)
    phase = Phase("unet", run_dir, cfg, modules, opt, warmup(cfg.lr_warmup_steps), cfg.unet_steps, ema,
                   val_fields=("val_loss_ema",))
    phase.open()

    def validate(step: int) -> dict[str, float]:
        live = [p.detach().clone() for p in bb.unet.parameters()]
        bb.unet.eval()
        ema.copy_to(bb.unet)
        out = {"val_loss_ema": unet_val_loss(bb, cfg, val, device, residual_scale=scale)}
        with torch.no_grad():
            for p, v in zip(bb.unet.parameters(), live):
                p.copy_(v)
        bb.unet.train()
        return out

    phase.run(lambda step: unet_loss(bb, cfg, step_batch(ds, step, cfg.unet_batch_size, cfg.seed, collate_fn), step,
                                     device, residual_scale=scale), validate)
    ema.copy_to(bb.unet)
    bb.unet.eval()
    bb.text_encoder.eval()
    return bb


def adapt_backbone(cfg: BackboneAdaptConfig) -> Path:
    """Run stage 1; return ``<runs_dir>/<profile>/<run_name>`` whose ``backbone/`` is the adapted backbone.

    A fresh run keeps the previous one aside until it succeeds (:func:`~stsynth_lib.training.fresh_run`);
    ``resume_from_checkpoint: latest`` continues each unfinished phase from its newest checkpoint.
    """
    from stsynth_lib.training import fresh_run

    run_dir = Path(cfg.runs_dir) / cfg.profile / cfg.run_name
    with fresh_run(run_dir, enabled=not cfg.resume_from_checkpoint):
        return _adapt(cfg, run_dir)


STAGE1_FREE_KEYS = frozenset({"vae_steps", "unet_steps", "device", "max_val_tiles"})  # may change on resume


def _check_resume(cfg: BackboneAdaptConfig, run_dir: Path) -> None:
    """A resumed stage 1 must continue the same run: options that change what is trained are refused by name."""
    import yaml

    from stsynth_lib.training import config_defaults, resume_changes

    saved_path = run_dir / "params.yaml"
    if not cfg.resume_from_checkpoint or not saved_path.is_file():
        return
    saved = yaml.safe_load(saved_path.read_text()) or {}
    changes = resume_changes(saved, asdict(cfg), config_defaults(type(cfg)))
    changed = {k: v for k, v in changes.items() if k not in STAGE1_FREE_KEYS}
    if changed:
        raise ValueError(f"stage 1: resume_from_checkpoint={cfg.resume_from_checkpoint!r} but these options differ "
                         f"from {saved_path}: " + ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
                         + ". Resume with the same options, or start a fresh run (resume_from_checkpoint: null).")


def _adapt(cfg: BackboneAdaptConfig, run_dir: Path) -> Path:
    _check_resume(cfg, run_dir)
    seed_everything(cfg.seed)
    setup = resolve_device(cfg.device, "no", channels_last=False, cpu_auto_precision="no")
    device = torch.device("cuda" if setup.on_cuda else "cpu")
    desc = backbone_description(TINY_TRAINED if cfg.from_scratch else ADAPTED, cfg.dataset_dir, cfg.profile,
                                None if cfg.from_scratch else str(cfg.pretrained_model))
    prepare_run_dir(cfg.runs_dir, cfg.profile, cfg.run_name, {**asdict(cfg), "backbone_description": desc,
                                                               "device_resolved": str(device)})
    t0 = time.perf_counter()
    # a finished stage 1 called again (chapter 5 re-run) keeps its recorded time: this call's is added to it
    before = yaml.safe_load((run_dir / "summary.yaml").read_text()) if (run_dir / "summary.yaml").is_file() else {}
    vae = train_vae(cfg, run_dir, device) if cfg.from_scratch else None
    bb = train_unet(cfg, run_dir, build_stage1_backbone(cfg, vae), device)
    bb.to("cpu")
    out, tmp = run_dir / "backbone", run_dir / f"backbone.tmp-{os.getpid()}"  # two processes on one run: no clash
    shutil.rmtree(tmp, ignore_errors=True)
    save_backbone(bb, tmp, description=desc, unet_target=cfg.unet_target)
    if cfg.residual:  # the backbone folder carries its scale: the ControlNet reads it there
        shutil.copy2(run_dir / R.RESIDUAL_FILE, tmp / R.RESIDUAL_FILE)
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)
    wall_s = float((before or {}).get("wall_s", 0.0)) + time.perf_counter() - t0
    summary = {"backbone": bb.kind, "backbone_description": desc, "wall_s": wall_s,
               "vae_factor": bb.vae_scale_factor, "vae_scaling_factor": float(bb.vae.config.scaling_factor),
               "unet_params_M": sum(p.numel() for p in bb.unet.parameters()) / 1e6,
               "vae_params_M": sum(p.numel() for p in bb.vae.parameters()) / 1e6}
    if cfg.residual:
        summary.update(unet_target=cfg.unet_target, residual_scale=R.read_residual_scale(out))
    if cfg.from_scratch:
        summary["vae_val"] = vae_reconstruction_scores(bb.vae, cfg.dataset_dir, "val", max_tiles=cfg.max_val_tiles)
    save_yaml(summary, run_dir / "summary.yaml")
    return run_dir


def parse_args(argv: Sequence[str] | None = None) -> BackboneAdaptConfig:
    return BackboneAdaptConfig.from_command_line(
        argv, "python -m stsynth_lib.controlnet.adapt", "Stage 1: adapt (or, tiny, train from scratch) the diffusion "
        "backbone on a stsynth tile store's training images.", str_keys=("dataset_dir", "runs_dir", "profile",
                                                                           "run_name", "pretrained_model", "prompt_template"))


def main(argv: Sequence[str] | None = None) -> Path:
    return train_from_command_line(parse_args, adapt_backbone, argv)


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
