"""Options of every run: which profile and dataset, where runs go, seed and device."""

from stsynth_lib.options.core import Concern, Option, is_device

RUN = Concern("run", "Run", (
    Option("profile", str, "smoke", "profile name: runs go to <runs_dir>/<profile>/", required=True),
    Option("dataset_dir", str, "data/smoke/dataset", "the tile store written by chapter 2", required=True),
    Option("runs_dir", str, "runs", "folder of the run folders"),
    Option("run_name", str, None, "folder under <runs_dir>/<profile>/; null: the model's name", none_ok=True),
    Option("seed", int, 0, "seed of every random draw"),
    Option("device", str, "auto", "auto (CUDA when available) | cpu | cuda | cuda:<n> | mps", test=is_device,
           words="auto, cpu, cuda, cuda:<n> or mps"),
    Option("progress", bool, True, "progress bars"),
))
