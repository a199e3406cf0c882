"""Every option of a cGAN run (:class:`CGANTrainConfig`), checked when it is built."""

from __future__ import annotations

from stsynth_lib.conditioning import GuidanceConfig
from stsynth_lib.data.dataset import check_context_offsets
from stsynth_lib.options import CGAN, CGAN_TRAIN
from stsynth_lib.options.core import config_from
from stsynth_lib.training import TrainConfig

GAN_MODES = CGAN["gan_mode"].choices
BEST_METRICS = {"val_l1": "min", "val_psnr": "max", "val_ssim": "max"}  # the keys are best_metric's choices


@config_from(CGAN_TRAIN)
class CGANTrainConfig(TrainConfig):
    """Every option of a cGAN run (recorded in the run's ``params.yaml``): the fields, their defaults and ranges
    are declared in :mod:`stsynth_lib.options` (``CGAN_TRAIN``: run, trainer, guidance and cGAN options) and checked
    when the config is built; :meth:`check` adds the checks that involve several options."""

    def check(self):
        """The checks of several options together (each option's own range is checked from its declaration)."""
        if self.calibrate_residual_scale and not self.residual:
            raise ValueError("calibrate_residual_scale: true needs residual: true (it scales the predicted change)")
        if self.radiometric_jitter > 0 and not self.augment:
            raise ValueError("radiometric_jitter > 0 needs augment: true (it is part of the training augmentation)")
        if self.erase_building_fraction > 0 and not self.augment:
            raise ValueError("erase_building_fraction > 0 needs augment: true (it is part of the training "
                             "augmentation)")
        if self.epochs_constant + self.epochs_decay < 1:
            raise ValueError(f"epochs_constant={self.epochs_constant}, epochs_decay={self.epochs_decay}: their sum "
                             "(the number of epochs) must be >= 1")
        if self.change_pair_fraction > 0:
            k = self.change_pairs_per_batch
            if abs(k / self.batch_size - self.change_pair_fraction) > 0.05:
                raise ValueError(
                    f"change_pair_fraction={self.change_pair_fraction} with batch_size={self.batch_size} would give "
                    f"{k} of {self.batch_size} places per batch ({k / self.batch_size:.3f}): choose a multiple of "
                    f"1/{self.batch_size} (e.g. {max(1, round(self.change_pair_fraction * self.batch_size))}/"
                    f"{self.batch_size}) or a larger batch")
        offsets = check_context_offsets(self.context_offsets_months)
        self.context_offsets_months = None if offsets is None else list(offsets)
        if self.temporal_fusion == "attention" and self.residual_base != "past":
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

