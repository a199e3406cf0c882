"""Options of chapter 4's run: the twin of chapter 3's run with another generator (issue 31)."""

from stsynth_lib.options.core import Concern, Option

TWIN = Concern("twin", "The twin of chapter 3's run", (
    Option("twin_of_run", str, "pix2pix", "chapter 3's run folder (under <runs_dir>/<profile>/) whose recorded options "
           "this run copies; only model, run_name and twin_changes differ"),
    Option("twin_changes", dict, {}, "options that differ from that run's besides model, each chosen on validation, "
           "e.g. {linear_centre: none}"),
))
