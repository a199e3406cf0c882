"""Train a ControlNet on a frozen Stable Diffusion with diffusers and Accelerate.

The loop follows diffusers' ``examples/controlnet/train_controlnet.py`` (frozen
VAE, text encoder and UNet; ControlNet initialised from the UNet; epsilon or
v-prediction MSE) with what users of that example ask for:

* data from ``PairedTileDataset`` (no column names, no path juggling), the same
  dataset, split and tiles as the cGANs;
* conditioning = past image + future mask (+ time-gap plane), prompts from metadata
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
  schedule, RNG states, position in the epoch).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from stsynth_lib.controlnet.backbone import (
    TINY_BACKBONE,
    Backbone,
    build_tiny_sd,
    load_backbone,
    save_backbone,
)
from stsynth_lib.controlnet.conditioning import (
    DEFAULT_PROMPT_TEMPLATE,
    apply_prompt_dropout,
    batch_conditioning,
    batch_prompts,
    conditioning_channels,
    resize_batch,
)
from stsynth_lib.runs import (
    CSVLogger,
    atomic_checkpoint_dir,
    atomic_write_text,
    merge_params,
    parse_cli_value,
    prepare_run_dir,
    resolve_resume,
    save_yaml,
    seed_everything,
)

LOG_FIELDS = [
    "step", "epoch", "loss", "lr", "images_per_s", "elapsed_s",
    "val_loss", "val_loss_nocontrol", "control_gain", "val_loss_shuffled_cond", "cond_gain",
]


@dataclass
class ControlNetTrainConfig:
    """Every option of a ControlNet run (recorded in the run's ``params.yaml``)."""

    dataset_dir: str = "data/smoke/dataset"
    runs_dir: str = "runs"
    profile: str = "smoke"
    run_name: str | None = None  # folder under runs/<profile>/; default "controlnet"
    # backbone
    pretrained_model: str = TINY_BACKBONE  # hub id (stable-diffusion-v1-5/stable-diffusion-v1-5), local folder, or tiny-random
    revision: str | None = None
    variant: str | None = None  # e.g. fp16 (weights file variant on the hub)
    tiny_seed: int = 0  # weights of the tiny-random backbone
    resolution_px: int | None = None  # None: the tile size; e.g. 512 for SD 1.5 on 256 px tiles
    # conditioning and prompts
    use_mask: Any = "auto"  # auto (when the dataset has labels) | true | false
    use_gap_plane: bool = True
    gap_scale_months: float = 24.0
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    empty_prompt: bool = False  # train (and generate) with "" everywhere
    prompt_dropout: float = 0.5  # share of prompts replaced by "" (classifier-free guidance)
    # optimisation
    max_train_steps: int = 200
    train_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-5
    zero_conv_lr_mult: float = 1.0  # LR multiplier of the zero convolutions
    cond_embedding_init: str = "default"  # default (diffusers) | kaiming (He init, keeps the input signal): reinit_cond_embedding
    lr_scheduler: str = "constant"  # any diffusers.optimization scheduler name
    lr_warmup_steps: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    use_8bit_adam: Any = "auto"  # auto (bitsandbytes present and CUDA) | true | false
    mixed_precision: str = "auto"  # auto (bf16 on CUDA when supported, else fp16; no on CPU) | no | fp16 | bf16
    gradient_checkpointing: bool = False
    sdpa: bool = True  # torch scaled_dot_product_attention processors
    max_train_pairs: int | None = None
    max_val_pairs: int | None = None
    augment: bool = True
    num_workers: int = 0
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    # bookkeeping
    log_every_steps: int = 10
    checkpointing_steps: int = 100
    checkpoints_total_limit: int = 2
    resume_from_checkpoint: str | None = None  # None/"" fresh (clears the run) | latest | checkpoint-<step>
    validation_steps: int = 100
    validate_at_start: bool = True
    num_validation_images: int = 4  # pairs drawn in the validation grids
    num_validation_loss_pairs: int = 16  # pairs of the validation losses / control_gain / cond_gain
    validation_batch_size: int = 2
    validation_scheduler: str = "unipc"
    validation_inference_steps: int = 20
    validation_guidance_scale: float = 1.0
    progress: bool = True

    def __post_init__(self):
        if self.use_mask not in (True, False, "auto"):
            raise ValueError(f"use_mask must be true, false or 'auto', got {self.use_mask!r}")
        if self.mixed_precision not in ("auto", "no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision must be auto, no, fp16 or bf16, got {self.mixed_precision!r}")
        if self.use_8bit_adam not in (True, False, "auto"):
            raise ValueError(f"use_8bit_adam must be true, false or 'auto', got {self.use_8bit_adam!r}")
        for k in ("max_train_steps", "train_batch_size", "gradient_accumulation_steps", "validation_batch_size"):
            if int(getattr(self, k)) < 1:
                raise ValueError(f"{k} must be >= 1, got {getattr(self, k)}")
        if not 0.0 <= float(self.prompt_dropout) <= 1.0:
            raise ValueError(f"prompt_dropout must be in [0, 1], got {self.prompt_dropout}")

    @classmethod
    def from_params(cls, params: Mapping[str, Any], **overrides: Any) -> "ControlNetTrainConfig":
        """Build from a parameter dict (e.g. a notebook's), keeping only the keys that are fields."""
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in params.items() if k in names}
        kw.update(overrides)
        return cls(**kw)


# --------------------------------------------------------------------------- pieces


def masked_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Mean squared error in fp32 over the latent pixels where ``weight`` (B, 1, h, w) is 1."""
    err = (pred.float() - target.float()) ** 2
    if weight is None:
        return err.mean()
    w = weight.float().expand_as(err)
    return (err * w).sum() / w.sum().clamp_min(1.0)


def latent_valid_weight(valid: torch.Tensor, factor: int) -> torch.Tensor:
    """(B, 1, H, W) pixel validity -> (B, 1, H/f, W/f): 1 where the whole f x f footprint is valid."""
    return (F.avg_pool2d(valid.float(), factor) > 0.999).float()


def zero_conv_parameters(controlnet) -> tuple[list, list]:
    """(zero-convolution parameters, the others) of a diffusers ControlNetModel."""
    zero, other = [], []
    for name, p in controlnet.named_parameters():
        is_zero = name.startswith(("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding.conv_out"))
        (zero if is_zero else other).append(p)
    return zero, other


def diffusion_loss(
    backbone: Backbone,
    controlnet,
    pixels: torch.Tensor,
    cond: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    valid: torch.Tensor | None,
    weight_dtype: torch.dtype,
    noise: torch.Tensor | None = None,
    timesteps: torch.Tensor | None = None,
    use_control: bool = True,
) -> torch.Tensor:
    """One ControlNet training loss (diffusers example), fp32, masked to valid latents.

    ``pixels`` are the target images in [-1, 1]; ``use_control=False`` runs the
    bare UNet (to measure what the control adds).
    """
    vae, unet, sched = backbone.vae, backbone.unet, backbone.noise_scheduler
    with torch.no_grad(), torch.autocast(device_type=pixels.device.type, enabled=False):  # VAE in its dtype (fp32)
        latents = vae.encode(pixels.to(vae.dtype)).latent_dist.sample() * vae.config.scaling_factor
    latents = latents.float()
    if noise is None:
        noise = torch.randn_like(latents)
    if timesteps is None:
        timesteps = torch.randint(0, sched.config.num_train_timesteps, (latents.shape[0],), device=latents.device)
    timesteps = timesteps.long().to(latents.device)
    noisy = sched.add_noise(latents, noise, timesteps)
    x = noisy.to(weight_dtype)
    if use_control:
        down, mid = controlnet(x, timesteps, encoder_hidden_states=encoder_hidden_states,
                               controlnet_cond=cond.to(weight_dtype), return_dict=False)
        pred = unet(x, timesteps, encoder_hidden_states=encoder_hidden_states,
                    down_block_additional_residuals=[d.to(weight_dtype) for d in down],
                    mid_block_additional_residual=mid.to(weight_dtype), return_dict=False)[0]
    else:
        pred = unet(x, timesteps, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]
    if sched.config.prediction_type == "epsilon":
        target = noise
    elif sched.config.prediction_type == "v_prediction":
        target = sched.get_velocity(latents, noise, timesteps)
    else:
        raise ValueError(f"unsupported prediction_type {sched.config.prediction_type!r}")
    w = latent_valid_weight(valid, backbone.vae_scale_factor) if valid is not None else None
    return masked_mse(pred, target, w)


def epoch_batches(n: int, batch_size: int, epoch: int, seed: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """The batches of one epoch: a seeded permutation (so resume replays the same order), last partial batch dropped
    when there is at least one full batch, sharded by rank."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch)).tolist()
    full = [perm[i: i + batch_size] for i in range(0, n - batch_size + 1, batch_size)] or [perm]
    return full[rank::world]


def _resolve_mixed_precision(mp: str, on_cuda: bool) -> str:
    if mp == "auto":
        if not on_cuda:
            return "no"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if mp == "fp16" and not on_cuda:
        raise ValueError("mixed_precision='fp16' needs a CUDA GPU; use 'no', 'auto' or 'bf16' (CPU autocast) on CPU")
    return mp


def reinit_cond_embedding(controlnet, generator_seed: int = 0) -> None:
    """Re-initialise the ControlNet's conditioning encoder (the small conv stack before the zero ``conv_out``)
    with He-normal weights and zero biases.

    With PyTorch's default init, 7 conv+SiLU layers shrink the input-dependent part of the signal by orders of
    magnitude: the encoder's output is almost a constant (its biases) whatever the conditioning image, so the
    ControlNet can only learn a generic correction and ignores its condition for a long time (measured by
    ``cond_gain``). He init keeps the signal's scale through the stack. ``conv_out`` stays zero (zero conv).
    """
    emb = controlnet.controlnet_cond_embedding
    g = torch.Generator().manual_seed(generator_seed)
    with torch.no_grad():
        for conv in [emb.conv_in, *emb.blocks]:
            fan_in = conv.weight[0].numel()
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            if conv.bias is not None:
                conv.bias.zero_()


def _allow_new_precision(mp: str) -> None:
    """Accelerate keeps one global state per process: a second run in the same notebook kernel with another
    ``mixed_precision`` would fail ("AcceleratorState has already been initialized"). In a single process
    (notebook, tests) the state is reset; under ``accelerate launch`` it is left alone."""
    from accelerate.state import AcceleratorState, PartialState

    shared = AcceleratorState._shared_state
    if not shared or str(shared.get("_mixed_precision", mp)) == mp:
        return
    if PartialState._shared_state and PartialState().num_processes > 1:
        return  # distributed: Accelerator() will explain the conflict itself
    AcceleratorState._reset_state()


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


def _set_attention(model, sdpa: bool) -> None:
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    model.set_attn_processor(AttnProcessor2_0() if sdpa else AttnProcessor())


def _clear_run(run_dir: Path) -> None:
    for name in ("checkpoints", "samples", "controlnet", "backbone", "predictions"):
        shutil.rmtree(run_dir / name, ignore_errors=True)
    for name in ("log.csv", "summary.yaml"):
        (run_dir / name).unlink(missing_ok=True)


def _collate(samples):
    from torch.utils.data import default_collate

    return default_collate(samples)


def _to_device(batch: Mapping[str, Any], device) -> dict[str, Any]:
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def validation_figure(batch: Mapping[str, Any], generated: torch.Tensor, title: str):
    """Rows of past | future mask | generated | truth (a matplotlib Figure, not shown)."""
    from matplotlib.figure import Figure

    from stsynth_lib.data.dataset import to_uint8

    n = generated.shape[0]
    fig = Figure(figsize=(8, 2.1 * n + 0.4))
    axes = fig.subplots(n, 4, squeeze=False)
    for i in range(n):
        panels = [
            (to_uint8(batch["past"][i][:3]).transpose(1, 2, 0), "past"),
            (batch["future_mask"][i][0].cpu().numpy(), "future mask" if bool(batch["has_mask"][i]) else "no labels"),
            (to_uint8(generated[i][:3]).transpose(1, 2, 0), "generated"),
            (to_uint8(batch["future"][i][:3]).transpose(1, 2, 0), "truth"),
        ]
        for ax, (img, t) in zip(axes[i], panels):
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1 if img.ndim == 2 else None)
            ax.set_title(f"{t}" if i == 0 else "", fontsize=9)
            ax.axis("off")
        axes[i][0].set_ylabel(str(batch["aoi"][i])[:18], fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- training


def train_controlnet(config: ControlNetTrainConfig) -> Path:
    """Train a ControlNet on ``config.dataset_dir``'s train split; return the run folder.

    The run folder (``<runs_dir>/<profile>/<run_name or controlnet>``) holds
    ``params.yaml`` (with ``backbone: tiny-random`` or ``pretrained``),
    ``log.csv``, ``samples/step-<step>.png`` (past | mask | generated | truth),
    ``checkpoints/checkpoint-<step>/``, the final ``controlnet/`` (diffusers
    format) and, for the tiny backbone, ``backbone/`` (so generation reloads
    the same random weights).
    """
    from accelerate import Accelerator
    from diffusers import ControlNetModel
    from diffusers.optimization import get_scheduler
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from stsynth_lib.controlnet.generate import (
        encode_prompts,
        make_scheduler,
        sample_images,
    )
    from stsynth_lib.data.dataset import PairedTileDataset

    cfg = config
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {cfg.device!r}")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' but torch.cuda.is_available() is False; use device='auto' or 'cpu'")
    on_cuda = cfg.device != "cpu" and torch.cuda.is_available()
    mp = _resolve_mixed_precision(cfg.mixed_precision, on_cuda)
    _allow_new_precision(mp)
    accelerator = Accelerator(gradient_accumulation_steps=cfg.gradient_accumulation_steps, mixed_precision=mp,
                              cpu=not on_cuda)
    device = accelerator.device
    seed_everything(cfg.seed)

    run_dir = Path(cfg.runs_dir) / cfg.profile / (cfg.run_name or "controlnet")
    resume = resolve_resume(run_dir, cfg.resume_from_checkpoint) if run_dir.exists() else None
    if cfg.resume_from_checkpoint and cfg.resume_from_checkpoint != "latest" and resume is None:
        raise FileNotFoundError(f"resume_from_checkpoint={cfg.resume_from_checkpoint!r} but {run_dir} does not exist")
    if resume is None and accelerator.is_main_process:
        _clear_run(run_dir)

    # ---- data
    train_ds = PairedTileDataset(cfg.dataset_dir, "train", max_pairs=cfg.max_train_pairs, augment=cfg.augment,
                                 subsample_seed=cfg.seed if cfg.max_train_pairs else None)
    val_ds = PairedTileDataset(cfg.dataset_dir, "val", max_pairs=cfg.max_val_pairs, subsample_seed=cfg.seed)
    if len(train_ds) == 0:
        raise ValueError(f"{cfg.dataset_dir}: the train split has no pairs; rebuild the dataset with more AOIs")
    if len(val_ds) == 0:  # validation falls back to (un-augmented) training pairs
        val_ds = PairedTileDataset(cfg.dataset_dir, "train", max_pairs=cfg.num_validation_loss_pairs,
                                   subsample_seed=cfg.seed)
    if train_ds.n_bands != 3:
        raise ValueError(f"{cfg.dataset_dir} has {train_ds.n_bands} bands; Stable Diffusion's VAE is RGB: build the "
                         "dataset with bands [1, 2, 3]")
    has_labels = bool(train_ds.store.meta.get("has_labels", True))
    use_mask = has_labels if cfg.use_mask == "auto" else bool(cfg.use_mask)
    tile_px = train_ds.tile_size_px
    res = int(cfg.resolution_px or tile_px)
    n_cond = conditioning_channels(train_ds.n_bands, cfg.use_gap_plane, use_mask)

    # ---- backbone
    if cfg.pretrained_model == TINY_BACKBONE:
        backbone = build_tiny_sd(seed=cfg.tiny_seed)
    else:
        backbone = load_backbone(cfg.pretrained_model, revision=cfg.revision, variant=cfg.variant)
    backbone.freeze()
    multiple = backbone.vae_scale_factor * 2 ** (len(backbone.unet.config.block_out_channels) - 1)
    if res % multiple:
        raise ValueError(f"resolution {res} px is not a multiple of {multiple} (VAE factor x UNet downsamplings) "
                         f"for backbone {backbone.name}; set resolution_px to a multiple of {multiple}")
    if backbone.kind == TINY_BACKBONE:
        backbone_path = str(run_dir / "backbone")
        if accelerator.is_main_process and not (run_dir / "backbone" / "stsynth_backbone.json").is_file():
            save_backbone(backbone, run_dir / "backbone")
    else:
        backbone_path = str(cfg.pretrained_model)

    controlnet = ControlNetModel.from_unet(backbone.unet, conditioning_channels=n_cond)
    if cfg.cond_embedding_init == "kaiming":
        reinit_cond_embedding(controlnet, cfg.seed)
    elif cfg.cond_embedding_init != "default":
        raise ValueError(f"cond_embedding_init must be 'kaiming' or 'default', got {cfg.cond_embedding_init!r}")
    if cfg.sdpa:
        _set_attention(backbone.unet, True)
        _set_attention(controlnet, True)
    else:
        _set_attention(backbone.unet, False)
        _set_attention(controlnet, False)
    if cfg.gradient_checkpointing:
        controlnet.enable_gradient_checkpointing()
        backbone.unet.enable_gradient_checkpointing()
    weight_dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[mp]
    backbone.to(device, weight_dtype)  # VAE stays fp32
    controlnet.train()
    optimizer, optimizer_name = _make_optimizer(cfg, controlnet, on_cuda)
    lr_sched = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.lr_warmup_steps * accelerator.num_processes,
                             num_training_steps=cfg.max_train_steps * accelerator.num_processes)
    controlnet, optimizer, lr_sched = accelerator.prepare(controlnet, optimizer, lr_sched)

    params = {
        **asdict(cfg),
        "model": "controlnet",
        "backbone": backbone.kind,
        "backbone_name": backbone.name,
        "backbone_path": backbone_path,
        "use_mask": use_mask,
        "conditioning_channels": n_cond,
        "tile_size_px": tile_px,
        "resolution_px": res,
        "mixed_precision_resolved": mp,
        "weight_dtype": str(weight_dtype).replace("torch.", ""),
        "optimizer": optimizer_name,
        "n_train_pairs": len(train_ds),
        "n_val_pairs": len(val_ds),
        "device_resolved": str(device),
    }
    if accelerator.is_main_process:
        prepare_run_dir(cfg.runs_dir, cfg.profile, cfg.run_name or "controlnet", params)
    logger = CSVLogger(run_dir / "log.csv", fieldnames=LOG_FIELDS)

    global_step = 0
    if resume is not None:
        accelerator.load_state(str(resume))
        global_step = int(json.loads((resume / "trainer_state.json").read_text())["global_step"])
        logger.truncate_after(global_step)
        accelerator.print(f"Resumed from {resume} at step {global_step}")

    tiny_note = " -- tiny-random backbone: images are not meaningful" if backbone.kind == TINY_BACKBONE else ""
    # fixed validation batch
    # fixed validation pairs, spread over the (seeded, shuffled) validation split: consecutive pairs often share
    # their past tile, and cond_gain compares each pair's conditioning with another pair's
    n_loss = max(1, min(max(cfg.num_validation_loss_pairs, cfg.num_validation_images), len(val_ds)))
    val_idx = np.unique(np.linspace(0, len(val_ds) - 1, n_loss).round().astype(int)).tolist()
    n_loss = len(val_idx)
    n_val = min(cfg.num_validation_images, n_loss)
    loss_batch_r = resize_batch(_collate([val_ds[i] for i in val_idx]), res)
    val_batch = _collate([val_ds[i] for i in val_idx[:n_val]])
    val_batch_r = resize_batch(val_batch, res)
    val_t = torch.linspace(50, backbone.noise_scheduler.config.num_train_timesteps - 50, 5).long()

    def validate(step: int) -> dict[str, float]:
        # validation must not perturb the training RNG streams (resume would otherwise diverge)
        with torch.random.fork_rng(devices=[torch.cuda.current_device()] if on_cuda else []):
            return _validate(step)

    def _validate(step: int) -> dict[str, float]:
        # under mixed precision the unwrapped ControlNet keeps Accelerate's autocast wrapper (fp32 weights, autocast
        # compute, fp32 outputs that the UNet call casts back to the weight dtype)
        cn = accelerator.unwrap_model(controlnet)
        cn.eval()
        out: dict[str, float] = {}
        try:
            with torch.no_grad():
                cond = batch_conditioning(loss_batch_r, cfg.use_gap_plane, cfg.gap_scale_months, use_mask)
                prompts = batch_prompts(loss_batch_r, cfg.prompt_template, cfg.empty_prompt)
                # loss with and without control on fixed noise / timesteps
                # another pair's conditioning (rolled by one; zeros if a single pair): does the condition matter?
                cond_other = cond.roll(1, dims=0) if n_loss > 1 else torch.zeros_like(cond)
                sums = {"val_loss": 0.0, "val_loss_nocontrol": 0.0, "val_loss_shuffled_cond": 0.0}
                g = torch.Generator().manual_seed(cfg.seed + 999)
                bs = cfg.validation_batch_size
                n_terms = 0
                for t in val_t:
                    for i in range(0, n_loss, bs):
                        sl = slice(i, i + bs)
                        px = loss_batch_r["future"][sl].to(device)
                        emb = encode_prompts(backbone, prompts[sl], device, weight_dtype)
                        f = backbone.vae_scale_factor
                        noise = torch.randn((px.shape[0], backbone.unet.config.in_channels, res // f, res // f),
                                            generator=g).to(device)
                        tt = t.repeat(px.shape[0]).to(device)
                        valid = loss_batch_r["valid"][sl].to(device)
                        torch.manual_seed(cfg.seed + 7)  # same VAE posterior sample for both losses
                        lc = diffusion_loss(backbone, cn, px, cond[sl].to(device), emb, valid, weight_dtype, noise, tt)
                        torch.manual_seed(cfg.seed + 7)
                        ln = diffusion_loss(backbone, cn, px, cond[sl].to(device), emb, valid, weight_dtype, noise, tt,
                                            use_control=False)
                        torch.manual_seed(cfg.seed + 7)
                        ls = diffusion_loss(backbone, cn, px, cond_other[sl].to(device), emb, valid, weight_dtype,
                                            noise, tt)
                        sums["val_loss"] += float(lc) * px.shape[0]
                        sums["val_loss_nocontrol"] += float(ln) * px.shape[0]
                        sums["val_loss_shuffled_cond"] += float(ls) * px.shape[0]
                        n_terms += px.shape[0]
                out = {k: v / max(n_terms, 1) for k, v in sums.items()}
                out["control_gain"] = 1.0 - out["val_loss"] / max(out["val_loss_nocontrol"], 1e-12)
                out["cond_gain"] = 1.0 - out["val_loss"] / max(out["val_loss_shuffled_cond"], 1e-12)
                # images
                sched = make_scheduler(cfg.validation_scheduler, backbone.noise_scheduler.config)
                imgs = []
                for i in range(0, n_val, bs):
                    sl = slice(i, i + bs)
                    imgs.append(sample_images(backbone, cn, cond[sl].to(device), prompts[sl], sched,
                                              cfg.validation_inference_steps, cfg.validation_guidance_scale,
                                              seeds=[cfg.seed + i + j for j in range(len(prompts[sl]))],
                                              weight_dtype=weight_dtype))
                gen = torch.cat(imgs)
                from stsynth_lib.controlnet.generate import resize_spatial

                gen = resize_spatial(gen, tile_px)
            if accelerator.is_main_process:
                fig = validation_figure(val_batch, gen, f"ControlNet step {step}, control_gain "
                                        f"{out['control_gain']:+.3f}, cond_gain {out['cond_gain']:+.3f}{tiny_note}")
                path = run_dir / "samples" / f"step-{step:06d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.tmp.png")
                fig.savefig(tmp, dpi=80)
                tmp.replace(path)
        finally:
            cn.train()
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        return out

    def save_checkpoint(step: int) -> None:
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            with atomic_checkpoint_dir(run_dir, step, keep=cfg.checkpoints_total_limit) as tmp:
                accelerator.save_state(str(tmp))
                atomic_write_text(tmp / "trainer_state.json", json.dumps({"global_step": step}))

    world, rank = accelerator.num_processes, accelerator.process_index
    n_batches = len(epoch_batches(len(train_ds), cfg.train_batch_size, 0, cfg.seed, rank, world))
    steps_per_epoch = max(1, n_batches // cfg.gradient_accumulation_steps)
    first_epoch = global_step // steps_per_epoch
    skip = (global_step % steps_per_epoch) * cfg.gradient_accumulation_steps
    imgs_per_step = cfg.train_batch_size * cfg.gradient_accumulation_steps * world

    if global_step == 0 and cfg.validate_at_start:
        row = {"step": 0, "epoch": 0, **validate(0)}
        if accelerator.is_main_process:
            logger.log(row)

    pbar = tqdm(total=cfg.max_train_steps, initial=global_step, desc="ControlNet", disable=not cfg.progress
                or not accelerator.is_local_main_process)
    t_start = time.perf_counter()
    train_time, interval_images, interval_loss, interval_n = 0.0, 0, 0.0, 0
    prompt_gen = torch.Generator().manual_seed(cfg.seed + 1)
    epoch = first_epoch
    done = global_step >= cfg.max_train_steps
    summary: dict[str, Any] = {}
    while not done:
        batches = epoch_batches(len(train_ds), cfg.train_batch_size, epoch, cfg.seed, rank, world)
        if epoch == first_epoch and skip:
            batches = batches[skip:]
        # the prompt-dropout generator is re-seeded from the step count so that resume replays the same draws
        # own generator: creating the iterator must not draw from the global torch RNG (exact resume)
        dl = DataLoader(train_ds, batch_sampler=batches, collate_fn=_collate, num_workers=cfg.num_workers,
                        generator=torch.Generator().manual_seed(cfg.seed + epoch))
        t0 = time.perf_counter()
        micro = 0
        for batch in dl:
            micro += 1
            batch = _to_device(resize_batch(batch, res), device)
            with accelerator.accumulate(controlnet):
                cond = batch_conditioning(batch, cfg.use_gap_plane, cfg.gap_scale_months, use_mask)
                prompts = batch_prompts(batch, cfg.prompt_template, cfg.empty_prompt)
                prompt_gen.manual_seed(cfg.seed * 7919 + global_step * 131 + micro % cfg.gradient_accumulation_steps)
                prompts = apply_prompt_dropout(prompts, cfg.prompt_dropout, prompt_gen)
                emb = encode_prompts(backbone, prompts, device, weight_dtype)
                loss = diffusion_loss(backbone, controlnet, batch["future"], cond, emb, batch["valid"], weight_dtype)
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"ControlNet loss is {float(loss)} at step {global_step + 1} (mixed_precision={mp}). "
                        "Try mixed_precision: bf16 (or no), a lower learning_rate, or max_grad_norm: 1.0; "
                        f"the last good checkpoint is {resolve_resume(run_dir, 'latest')}."
                    )
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.max_grad_norm:
                    accelerator.clip_grad_norm_(controlnet.parameters(), cfg.max_grad_norm)
                optimizer.step()
                lr_sched.step()
                optimizer.zero_grad(set_to_none=True)
            interval_loss += float(loss.detach())
            interval_n += 1
            if not accelerator.sync_gradients:
                continue
            global_step += 1
            interval_images += imgs_per_step
            t1 = time.perf_counter()
            train_time += t1 - t0
            pbar.update(1)
            last_loss = interval_loss / max(interval_n, 1)
            ips = interval_images / max(train_time, 1e-9)
            pbar.set_postfix(loss=f"{last_loss:.4f}", img_s=f"{ips:.1f}")
            row: dict[str, Any] = {}
            if global_step % cfg.log_every_steps == 0 or global_step == cfg.max_train_steps:
                row = {"step": global_step, "epoch": epoch, "loss": last_loss, "lr": lr_sched.get_last_lr()[0],
                       "images_per_s": ips, "elapsed_s": time.perf_counter() - t_start}
                summary.update(final_loss=last_loss, images_per_s=ips)
                interval_loss, interval_n, interval_images, train_time = 0.0, 0, 0, 0.0
            if cfg.validation_steps and (global_step % cfg.validation_steps == 0 or global_step == cfg.max_train_steps):
                v = validate(global_step)
                row = {"step": global_step, "epoch": epoch, **row, **v}
                summary.update(v)
            if row and accelerator.is_main_process:
                logger.log(row)
            if (cfg.checkpointing_steps and global_step % cfg.checkpointing_steps == 0) or global_step == cfg.max_train_steps:
                save_checkpoint(global_step)
            t0 = time.perf_counter()
            if global_step >= cfg.max_train_steps:
                done = True
                break
        epoch += 1
    pbar.close()

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        final = run_dir / "controlnet"
        tmp = run_dir / "controlnet.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        accelerator.unwrap_model(controlnet).save_pretrained(tmp)
        shutil.rmtree(final, ignore_errors=True)
        tmp.replace(final)
        summary.update(step=global_step, backbone=backbone.kind, wall_s=time.perf_counter() - t_start)
        save_yaml(summary, run_dir / "summary.yaml")
    accelerator.end_training()
    return run_dir


# --------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str] | None = None) -> ControlNetTrainConfig:
    """``--dataset_dir D --pretrained_model /path/to/local/sd15 --max_train_steps 1000 ...`` (every field of
    :class:`ControlNetTrainConfig`, with ``_`` or ``-``); ``--params FILE.yaml`` (repeatable) loads keys first."""
    p = argparse.ArgumentParser(prog="python -m stsynth_lib.controlnet.train",
                                description="Train a ControlNet on a stsynth tile store (diffusers + Accelerate).")
    p.add_argument("--params", action="append", default=[], help="YAML file(s) of options (e.g. params/smoke/common.yaml)")
    for f in dataclasses.fields(ControlNetTrainConfig):
        flags = ["--" + f.name] + (["--" + f.name.replace("_", "-")] if "_" in f.name else [])
        p.add_argument(*flags, dest=f.name, type=parse_cli_value, default=argparse.SUPPRESS, help=f"default: {f.default!r}")
    ns = vars(p.parse_args(argv))
    params = ns.pop("params")
    return ControlNetTrainConfig.from_params(merge_params(params, ns, str_keys=("dataset_dir", "runs_dir", "profile", "run_name", "pretrained_model", "prompt_template")))


def main(argv: Sequence[str] | None = None) -> Path:
    cfg = parse_args(argv)
    run_dir = train_controlnet(cfg)
    print(f"Run folder: {run_dir}")
    return run_dir


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
