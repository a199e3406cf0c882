"""Options of chapter 4's run: the twin of chapter 3's run with another generator (issue 31)."""

from __future__ import annotations

from typing import Any

from stsynth_lib.options.core import Concern, Option, mapping_problems

# what chapter 4 states itself: its run options and the generator (the twin copies everything else)
TWIN_OWN = ("profile", "runs_dir", "run_name", "device", "progress", "model")


def twin_change_problems(changes: Any) -> list[str]:
    """Why ``changes`` (option -> value) cannot be a twin's changes: an option that is not a cGAN-run option, one of
    :data:`TWIN_OWN`, or a value its declaration refuses; [] when it can."""
    if not isinstance(changes, dict):
        return [f"expected a mapping of options to values, got {changes!r}"]
    if not changes:  # (also the default's check, while stsynth_lib.options is still being imported)
        return []
    from stsynth_lib.options import CGAN_TRAIN

    declared = {o.name: o for o in CGAN_TRAIN if o.name not in TWIN_OWN}
    return mapping_problems(changes, declared, "not a cGAN option a twin may change (model, run_name and the run "
                                               "options are chapter 4's own parameters; docs/OPTIONS.md)")


TWIN = Concern("twin", "The twin of chapter 3's run", (
    Option("twin_of_run", str, "pix2pix", "chapter 3's run folder (under <runs_dir>/<profile>/) whose recorded options "
           "this run copies; only model, run_name and twin_changes differ"),
    Option("twin_changes", dict, {}, "options that differ from that run's besides model, each chosen on validation, "
           "e.g. {linear_centre: none}", test=lambda d: not twin_change_problems(d),
           words="a mapping of cGAN-run options (not model, run_name or the run options) to values they accept"),
))
