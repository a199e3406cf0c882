"""Deprecated alias of :mod:`stsynth_lib.cgan` (kept for one release).

``python -m stsynth_lib.train_cgan ...`` still trains, with a deprecation message;
use ``python -m stsynth_lib.cgan.train ...``. The names below are re-exported from
their new homes so that code written against the old module keeps working.
"""

from __future__ import annotations

import sys
import warnings

from stsynth_lib.cgan.augment import augment_batch  # noqa: F401
from stsynth_lib.cgan.calibrate import calibrate_residual_scale  # noqa: F401
from stsynth_lib.cgan.config import CGANTrainConfig  # noqa: F401
from stsynth_lib.cgan.losses import cgan_losses, gan_loss, masked_l1_loss, train_step  # noqa: F401
from stsynth_lib.cgan.model_io import generator_from_spec, load_generator, model_spec  # noqa: F401
from stsynth_lib.cgan.train import main as _main
from stsynth_lib.cgan.train import parse_args, split_dataset, train_cgan  # noqa: F401
from stsynth_lib.evaluate.generator import (  # noqa: F401
    area_comparison,
    comparison_table,
    evaluate_generator,
    evaluate_persistence,
    predict_split,
    summarize,
)
from stsynth_lib.training import collate, spread_indices  # noqa: F401

DEPRECATION = ("stsynth_lib.train_cgan is deprecated and will be removed in the next release: "
               "use `python -m stsynth_lib.cgan.train` (and import from stsynth_lib.cgan.* / stsynth_lib.evaluate)")


def main(argv=None):
    """The old command line: warns, then runs :func:`stsynth_lib.cgan.train.main`."""
    warnings.warn(DEPRECATION, DeprecationWarning, stacklevel=2)
    print(f"DEPRECATED: {DEPRECATION}", file=sys.stderr)
    return _main(argv)


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
