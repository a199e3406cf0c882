"""Options of scoring predictions against the truth (chapter 6 and ``python -m stsynth_lib.evaluate``)."""

from stsynth_lib.options.core import Concern, Option

SCORING = Concern("scoring", "Scoring", (
    Option("lpips_net", str, "alex", "LPIPS backbone", choices=("alex", "vgg")),
    Option("allow_uncalibrated_metrics", bool, False, "without the LPIPS / Inception weights, use a seeded random "
           "backbone (its numbers labelled uncalibrated)"),
    Option("n_bootstrap", int, 1000, "bootstrap resamples of the 95% intervals", min=1),
    Option("psnr_cap_db", float, 100.0, "PSNR of an exact match is inf; means use this value (and say so)", min=0,
           min_open=True),
))
