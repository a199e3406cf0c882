"""Every option of a ControlNet run (:class:`ControlNetTrainConfig`), checked when it is built."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stsynth_lib.controlnet.backbone import TINY_BACKBONE
from stsynth_lib.controlnet.conditioning import DEFAULT_PROMPT_TEMPLATE
from stsynth_lib.training import TrainConfig, check_checkpoint_limit

LOG_FIELDS = [
    "step", "epoch", "loss", "lr", "images_per_s", "elapsed_s",
    "val_loss", "val_loss_nocontrol", "control_gain", "val_loss_shuffled_cond", "cond_gain",
]


@dataclass
class ControlNetTrainConfig(TrainConfig):
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
    mixed_precision: str = "auto"  # auto (bf16 on CUDA when supported, else fp16; fp32 on CPU) | no | fp16 | bf16
    gradient_checkpointing: bool = False
    sdpa: bool = True  # torch scaled_dot_product_attention processors
    max_train_pairs: int | None = None
    max_val_pairs: int | None = None
    augment: bool = True
    # synthetic construction (labelled data, needs use_mask): erase each building standing at both dates from the
    # conditioning past image with this probability, so the future mask asks for it anew (cgan.augment.erase_buildings);
    # independent of ``augment`` (the dataset's flips), unlike the cGAN trainer, where it is part of augment_batch's step
    erase_building_fraction: float = 0.0
    num_workers: int = 0
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    # bookkeeping
    log_every_steps: int = 10
    checkpointing_steps: int = 100
    checkpoints_total_limit: int | None = 2  # keep the newest n checkpoints; null keeps all
    resume_from_checkpoint: str | None = None  # None/"" fresh (the previous run is kept until this one succeeds) | latest | checkpoint-<step>
    allow_resume_changes: bool = False  # resume even if options differ from the saved run (listed in params.yaml)
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
        if isinstance(self.learning_rate, bool) or not isinstance(self.learning_rate, (int, float)) or self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be a number > 0 (e.g. 1e-5), got {self.learning_rate!r}")
        if isinstance(self.erase_building_fraction, bool) or not 0 <= self.erase_building_fraction <= 1:
            raise ValueError(f"erase_building_fraction must be in [0, 1], got {self.erase_building_fraction!r}")
        if self.erase_building_fraction > 0 and self.use_mask is False:
            raise ValueError("erase_building_fraction > 0 needs the future mask in the conditioning (use_mask: auto or "
                             "true): without it nothing tells the ControlNet where an erased building stood")
        check_checkpoint_limit(self.checkpoints_total_limit)
