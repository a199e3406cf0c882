"""Every option of a ControlNet run (:class:`ControlNetTrainConfig`), checked when it is built."""

from __future__ import annotations

from stsynth_lib.data.dataset import check_context_offsets
from stsynth_lib.options import CONTROLNET_TRAIN
from stsynth_lib.options.core import config_from
from stsynth_lib.training import TrainConfig

LOG_FIELDS = [
    "step", "epoch", "loss", "lr", "images_per_s", "elapsed_s",
    "val_loss", "val_loss_nocontrol", "control_gain", "val_loss_shuffled_cond", "cond_gain",
]


@config_from(CONTROLNET_TRAIN)
class ControlNetTrainConfig(TrainConfig):
    """Every option of a ControlNet run (recorded in the run's ``params.yaml``): the fields, their defaults and ranges
    are declared in :mod:`stsynth_lib.options` (``CONTROLNET_TRAIN``) and checked when the config is built."""

    def check(self):
        """The checks of several options together."""
        if self.erase_building_fraction > 0 and self.use_mask is False and not self.nomask_twin_of:
            raise ValueError("erase_building_fraction > 0 needs the future mask in the conditioning (use_mask: auto or "
                             "true): without it nothing tells the ControlNet where an erased building stood (only a "
                             "no-mask twin, nomask_twin_of, trains so, on purpose)")
        if self.nomask_twin_of and self.use_mask is not False:
            raise ValueError(f"nomask_twin_of={self.nomask_twin_of!r}: a no-mask twin needs use_mask: false")
        offsets = check_context_offsets(self.context_offsets_months)  # as the cGANs check them
        self.context_offsets_months = None if offsets is None else list(offsets)
