"""Every option of a cGAN run (:class:`CGANTrainConfig`), checked when it is built."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stsynth_lib.conditioning import GuidanceConfig
from stsynth_lib.data.dataset import check_context_offsets
from stsynth_lib.training import TrainConfig, check_checkpoint_limit

GAN_MODES = ("vanilla", "lsgan")
BEST_METRICS = {"val_l1": "min", "val_psnr": "max", "val_ssim": "max"}


@dataclass
class CGANTrainConfig(TrainConfig):
    """Every option of a cGAN run (recorded in the run's ``params.yaml``)."""

    dataset_dir: str = "data/smoke/dataset"
    model: str = "pix2pix"  # pix2pix | attention_unet
    runs_dir: str = "runs"
    profile: str = "smoke"
    run_name: str | None = None  # folder under runs/<profile>/; default: the model name
    # guidance (see stsynth_lib.conditioning)
    use_mask: Any = "auto"  # auto | true | false
    use_past_mask: bool = False  # also the past building mask (which future buildings are new); needs labels
    time_encoding: str = "planes"  # planes | none
    gap_scale_months: float = 24.0
    use_month: bool = True
    # past sequence: offsets (months, <= 0, relative to t0) and/or same_month_last_year; null = the past image only
    context_offsets_months: list | None = None
    residual_base: str = "past"  # past | seasonal (needs same_month_last_year) | linear (fitted on train): the start
    linear_centre: str = "none"  # residual_base linear: none | tile_mean (the blend shrinks towards the tile's colour)
    # architecture
    ngf: int = 64
    ndf: int = 64
    norm: str = "instance"  # instance | batch | none
    dropout: float = 0.5
    d_layers: int = 3  # 3 = 70x70 PatchGAN
    residual: bool = False  # generator outputs clamp(past + tanh(.)) (not pix2pix; starts at persistence)
    # context frames: concat (stacked channels) | attention (a learned per-pixel blend of the past frames is the
    # residual's start) | tile_reweight (the residual base with its frame weights changed per tile by a small
    # encoder), stsynth_lib.models.temporal; both need residual and context_offsets_months
    temporal_fusion: str = "concat"
    centre_inputs: bool = False  # temporal generators: see colours relative to the tile's mean (brightness-equivariant)
    # loss
    gan_mode: str = "vanilla"  # vanilla (BCE) | lsgan
    lambda_l1: float = 100.0
    new_building_l1_weight: float = 0.0  # >0: L1 weight 1 + this on new-building pixels (future mask, not past mask)
    # sampling: this share of every training batch comes from pairs with >= min_new_building_px new-building pixels
    # (labelled data; construction is rare, ~10 % of sn7_labelled's train pairs); 0 = plain shuffle (pix2pix)
    change_pair_fraction: float = 0.0
    min_new_building_px: int = 20
    # optimisation
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    batch_size: int = 8
    epochs_constant: int = 1
    epochs_decay: int = 1
    max_steps: int | None = None  # stop early after this many optimiser steps (a checkpoint is written)
    max_train_pairs: int | None = None
    max_val_pairs: int | None = None
    augment: bool = True  # random flips / 90-degree rotations of training pairs
    radiometric_jitter: float = 0.0  # >0: the same random per-band gain 1+-j and offset +-j on past AND future
    # synthetic construction (labelled data): erase each building standing at both dates from the past image (and
    # past mask) with this probability, so the future mask asks for it anew (stsynth_lib.cgan.augment.erase_buildings)
    erase_building_fraction: float = 0.0
    num_workers: int = 0
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    mixed_precision: str = "auto"  # auto (bf16 on CUDA and on CPUs with native bf16, else fp32) | no | bf16 | fp16
    channels_last: Any = "auto"  # auto (on CUDA and with CPU bf16) | true | false
    # bookkeeping
    log_every_steps: int = 10
    sample_every_steps: int = 200
    n_sample_rows: int = 4
    checkpoint_every_steps: int = 0  # 0: at the end of each epoch only
    checkpoints_total_limit: int | None = 2  # keep the newest n checkpoints; null keeps all
    val_every_epochs: int = 1
    val_every_steps: int = 0  # >0: also validate (and update best/) every this many optimiser steps
    best_metric: str = "val_l1"  # val_l1 | val_psnr | val_ssim
    calibrate_residual_scale: bool = False  # residual models: after training, scale the change on the FULL val split
    resume_from_checkpoint: str | None = None  # None/"" fresh (the previous run is kept until this one succeeds) | latest | checkpoint-<step>
    allow_resume_changes: bool = False  # resume even if options differ from the saved run (listed in params.yaml)
    progress: bool = True

    def __post_init__(self):
        from stsynth_lib.models.registry import GENERATORS

        if self.model not in GENERATORS:
            raise ValueError(f"model must be one of {sorted(GENERATORS)}, got {self.model!r}")
        if self.gan_mode not in GAN_MODES:
            raise ValueError(f"gan_mode must be one of {GAN_MODES}, got {self.gan_mode!r}")
        if self.best_metric not in BEST_METRICS:
            raise ValueError(f"best_metric must be one of {sorted(BEST_METRICS)}, got {self.best_metric!r}")
        if self.calibrate_residual_scale and not self.residual:
            raise ValueError("calibrate_residual_scale: true needs residual: true (it scales the predicted change)")
        if not 0 <= self.radiometric_jitter < 1:
            raise ValueError(f"radiometric_jitter must be in [0, 1), got {self.radiometric_jitter}")
        if self.radiometric_jitter > 0 and not self.augment:
            raise ValueError("radiometric_jitter > 0 needs augment: true (it is part of the training augmentation)")
        if isinstance(self.erase_building_fraction, bool) or not 0 <= self.erase_building_fraction <= 1:
            raise ValueError(f"erase_building_fraction must be in [0, 1], got {self.erase_building_fraction!r}")
        if self.erase_building_fraction > 0 and not self.augment:
            raise ValueError("erase_building_fraction > 0 needs augment: true (it is part of the training "
                             "augmentation)")
        if self.epochs_constant < 0 or self.epochs_decay < 0 or self.epochs_constant + self.epochs_decay < 1:
            raise ValueError(
                f"epochs_constant={self.epochs_constant}, epochs_decay={self.epochs_decay}: both must be >= 0 "
                "and their sum (the number of epochs) >= 1"
            )
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        for key in ("lr", "lambda_l1"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ValueError(f"{key} must be a number > 0, got {v!r}" + (
                    " (an L1 weight of 0 leaves only the adversarial loss: pix2pix uses 100)" if key == "lambda_l1" else ""))
        if isinstance(self.new_building_l1_weight, bool) or not self.new_building_l1_weight >= 0:
            raise ValueError(f"new_building_l1_weight must be a number >= 0, got {self.new_building_l1_weight!r}")
        if isinstance(self.change_pair_fraction, bool) or not 0 <= self.change_pair_fraction < 1:
            raise ValueError(f"change_pair_fraction must be in [0, 1), got {self.change_pair_fraction!r}")
        if self.change_pair_fraction > 0:
            k = self.change_pairs_per_batch
            if abs(k / self.batch_size - self.change_pair_fraction) > 0.05:
                raise ValueError(
                    f"change_pair_fraction={self.change_pair_fraction} with batch_size={self.batch_size} would give "
                    f"{k} of {self.batch_size} places per batch ({k / self.batch_size:.3f}): choose a multiple of "
                    f"1/{self.batch_size} (e.g. {max(1, round(self.change_pair_fraction * self.batch_size))}/"
                    f"{self.batch_size}) or a larger batch")
        if isinstance(self.min_new_building_px, bool) or not int(self.min_new_building_px) >= 1:
            raise ValueError(f"min_new_building_px must be an integer >= 1, got {self.min_new_building_px!r}")
        check_checkpoint_limit(self.checkpoints_total_limit)
        offsets = check_context_offsets(self.context_offsets_months)
        self.context_offsets_months = None if offsets is None else list(offsets)
        from stsynth_lib.models.registry import TEMPORAL_FUSIONS

        if self.temporal_fusion not in TEMPORAL_FUSIONS:
            raise ValueError(f"temporal_fusion must be one of {TEMPORAL_FUSIONS}, got {self.temporal_fusion!r}")
        if self.temporal_fusion == "attention":
            if self.residual_base != "past":
                raise ValueError("temporal_fusion: attention learns its own start (a blend of the past frames, the "
                                 "seasonal blend among them): use residual_base: past with it")
        if self.centre_inputs and self.temporal_fusion == "concat":
            raise ValueError("centre_inputs: true centres the inputs of a temporal generator on the tile's past "
                             "frames: set temporal_fusion: tile_reweight or attention")
        if self.temporal_fusion != "concat":
            if not self.residual:
                raise ValueError(f"temporal_fusion: {self.temporal_fusion} changes the residual's start: set "
                                 "residual: true")
            if not [o for o in (offsets or ()) if o != 0]:
                raise ValueError(f"temporal_fusion: {self.temporal_fusion} needs past frames besides the past image: "
                                 "set context_offsets_months, e.g. [0, -1, -2, same_month_last_year]")

    @property
    def change_pairs_per_batch(self) -> int:
        """Places of every training batch filled with pairs that have new buildings (0: plain shuffle)."""
        return max(1, round(self.change_pair_fraction * self.batch_size)) if self.change_pair_fraction > 0 else 0

    @property
    def epochs(self) -> int:
        return self.epochs_constant + self.epochs_decay

    def guidance(self) -> GuidanceConfig:
        return GuidanceConfig(use_mask=self.use_mask, use_past_mask=self.use_past_mask, time_encoding=self.time_encoding,
                              gap_scale_months=self.gap_scale_months, use_month=self.use_month,
                              context_offsets_months=self.context_offsets_months, residual_base=self.residual_base,
                              linear_centre=self.linear_centre)

