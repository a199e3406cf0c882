"""Issue 13 status on VALIDATION (the test split is not touched): the context pix2pix (K = 4 frames) and the
single-image pix2pix of sn7_real_128 against persistence and the simple baselines, paired, whole areas resampled.

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python benchmarks/score_context_val.py > bench_results/context_val_sn7_real_128.txt
    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python benchmarks/score_context_val.py ctx4s_pix2pix ctx4_pix2pix

The first named run is also compared with each other named run, paired, areas resampled.

Needs the named runs in runs/sn7_real_128/ (default ctx4_pix2pix and pix2pix; about 4 minutes per run on one core).
"""

import sys

from stsynth_lib import evaluate as E
from stsynth_lib.data.dataset import PairedTileDataset
from stsynth_lib.evaluate.generator import predict_split

DATASET = "data/sn7_real_128/dataset"


def score_runs(dataset_dir, names: list[str], predictions: str = "val", baselines=("mean_last_3", "seasonal")):
    """Predict the val split of ``dataset_dir`` with each named run of runs/sn7_real_128/ (into its
    ``predictions/<predictions>`` folder) and score them with persistence and ``baselines`` on the same pairs."""
    ds = PairedTileDataset(dataset_dir, "val")
    runs = {}
    for name in names:
        out = f"runs/sn7_real_128/{name}/predictions/{predictions}"
        predict_split(f"runs/sn7_real_128/{name}", ds, out, progress=False)
        runs[name] = out
    return E.evaluate_models(dataset_dir, "val", runs, compute_lpips=False, n_boot=1000, progress=False,
                             baselines=baselines)


def print_paired(res, names: list[str]) -> None:
    """Every model against persistence and seasonal, and the first named run against each other one, paired,
    whole areas resampled."""
    for baseline in ("persistence", "seasonal", *names[1:]):
        table = E.paired_vs_baseline(res.per_tile, baseline, metrics=("psnr", "ssim"), n_boot=1000)
        if baseline in names:
            table = table[table["model"] == names[0]]
        print(E.paired_table(table).to_string())


def main() -> None:
    names = sys.argv[1:] or ["ctx4_pix2pix", "pix2pix"]
    res = score_runs(DATASET, names)
    print(E.results_table(res.summary, ("psnr", "ssim", "l1")).to_string())
    print_paired(res, names)


if __name__ == "__main__":
    main()
