"""What the temporal-context experiments share (not a script): the sn7_real_128 tile store, the profile's frames,
and the val scoring of named runs against persistence and the simple baselines.

The scripts of this folder import it as ``from _common import ...``: Python puts a script's own folder first on
``sys.path``, so this works from any working directory with no path set by hand.
"""

from __future__ import annotations

DATASET = "data/sn7_real_128/dataset"
LY = "same_month_last_year"
OFFSETS = [0, -1, -2, f"{LY}-1", LY, f"{LY}+1"]  # the sn7_real_128 profile's frames
GAP_BINS = [0, 1, 3, 6, 12]


def score_runs(dataset_dir, names: list[str], predictions: str = "val", baselines=("mean_last_3", "seasonal")):
    """Predict the val split of ``dataset_dir`` with each named run of runs/sn7_real_128/ (into its
    ``predictions/<predictions>`` folder) and score them with persistence and ``baselines`` on the same pairs."""
    from stsynth_lib import evaluate as E
    from stsynth_lib.cgan.predictor import predict_and_score
    from stsynth_lib.data.dataset import PairedTileDataset

    ds = PairedTileDataset(dataset_dir, "val")
    runs = {}
    for name in names:
        out = f"runs/sn7_real_128/{name}/predictions/{predictions}"
        predict_and_score(f"runs/sn7_real_128/{name}", ds, out, progress=False)
        runs[name] = out
    return E.evaluate_models(dataset_dir, "val", runs, compute_lpips=False, n_boot=1000, progress=False,
                             baselines=baselines)


def print_paired(res, names: list[str]) -> None:
    """Every model against persistence and seasonal, and the first named run against each other one, paired,
    whole areas resampled."""
    from stsynth_lib import evaluate as E

    for baseline in ("persistence", "seasonal", *names[1:]):
        table = E.paired_vs_baseline(res.per_tile, baseline, metrics=("psnr", "ssim"), n_boot=1000)
        if baseline in names:
            table = table[table["model"] == names[0]]
        print(E.paired_table(table).to_string())
