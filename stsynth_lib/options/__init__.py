"""Every option of the project, declared once (issue 31): the schema.

One module per concern declares its options (:class:`~stsynth_lib.options.core.Option`: name with its unit, type,
default, accepted values, one-line help): :mod:`~.run`, :mod:`~.data`, :mod:`~.guidance`, :mod:`~.trainer` (both
trainers), :mod:`~.cgan`, :mod:`~.twin` (chapter 4), :mod:`~.stage1` (diffusion stage 1), :mod:`~.controlnet`,
:mod:`~.sampling`, :mod:`~.scoring` and :mod:`~.evaluation`. From these declarations come

* the config dataclasses' fields and range checks (:data:`CGAN_TRAIN` -> ``CGANTrainConfig``,
  :data:`CONTROLNET_TRAIN` -> ``ControlNetTrainConfig``; their cross-field checks stay code in their ``check``),
* each notebook's parameters cell and the cell after it that builds its config (:mod:`~.notebooks`, written by
  ``make notebooks-sync``),
* ``python -m stsynth_lib.params check/merge`` (keys, types, values of the parameter files),
* the flags of ``python -m stsynth_lib.evaluate`` (:mod:`~.cli`) and ``docs/OPTIONS.md`` (:mod:`~.docs`).

An option's name is one key everywhere (a profile's ``common.yaml`` may set it for every notebook that takes it),
so it is declared in one concern only; :func:`all_options` refuses a name declared twice.
"""

from __future__ import annotations

from stsynth_lib.options.cgan import CGAN
from stsynth_lib.options.controlnet import CONTROLNET
from stsynth_lib.options.core import Concern, Option
from stsynth_lib.options.data import DATA
from stsynth_lib.options.evaluation import EVALUATION
from stsynth_lib.options.guidance import GUIDANCE
from stsynth_lib.options.run import RUN
from stsynth_lib.options.sampling import SAMPLING
from stsynth_lib.options.scoring import SCORING
from stsynth_lib.options.stage1 import STAGE1
from stsynth_lib.options.trainer import TRAINER
from stsynth_lib.options.twin import TWIN

CONCERNS: tuple[Concern, ...] = (RUN, DATA, GUIDANCE, TRAINER, CGAN, TWIN, STAGE1, CONTROLNET, SAMPLING,
                                 SCORING, EVALUATION)


def pick(concern: Concern, *names: str) -> tuple[Option, ...]:
    """The options ``names`` of ``concern`` (in the concern's order)."""
    missing = set(names) - set(concern.names())
    if missing:
        raise KeyError(f"{sorted(missing)} are not options of {concern.name}")
    return tuple(o for o in concern.options if o.name in names)


def omit(concern: Concern, *names: str) -> tuple[Option, ...]:
    """The options of ``concern`` but ``names``."""
    return tuple(o for o in concern.options if o.name not in names)


# The options of the trainers' config dataclasses (their fields, in this order).
CGAN_TRAIN: tuple[Option, ...] = (*RUN.options, *TRAINER.options, *GUIDANCE.options, *CGAN.options)
CONTROLNET_TRAIN: tuple[Option, ...] = (*RUN.options, *TRAINER.options,
                                        *pick(GUIDANCE, "use_mask", "gap_scale_months", "context_offsets_months"),
                                        *omit(CONTROLNET, "cond_gain_pairs"))


def all_options() -> dict[str, Option]:
    """Every option by name (read at call time, so an option added to a concern is found)."""
    out: dict[str, Option] = {}
    for concern in CONCERNS:
        for o in concern.options:
            if o.name in out:
                raise ValueError(f"option {o.name} is declared twice (in {concern.name} and another concern)")
            out[o.name] = o
    return out


def concern_of(name: str) -> Concern:
    return next(c for c in CONCERNS if name in c.names())
