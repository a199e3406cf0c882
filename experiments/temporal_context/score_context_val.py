"""Issue 13 status on VALIDATION (the test split is not touched): the context pix2pix (K = 4 frames) and the
single-image pix2pix of sn7_real_128 against persistence and the simple baselines, paired, whole areas resampled.

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python experiments/temporal_context/score_context_val.py > bench_results/context_val_sn7_real_128.txt
    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python experiments/temporal_context/score_context_val.py ctx4s_pix2pix ctx4_pix2pix

The first named run is also compared with each other named run, paired, areas resampled.

Needs the named runs in runs/sn7_real_128/ (default ctx4_pix2pix and pix2pix; about 4 minutes per run on one core).
"""

from __future__ import annotations

import argparse
import sys

from _common import DATASET, print_paired, score_runs


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="*", default=["ctx4_pix2pix", "pix2pix"],
                   help="run names under runs/sn7_real_128/ (default: ctx4_pix2pix pix2pix)")
    names = p.parse_args(argv).runs
    from stsynth_lib import evaluate as E

    res = score_runs(DATASET, names)
    print(E.results_table(res.summary, ("psnr", "ssim", "l1")).to_string())
    print_paired(res, names)


if __name__ == "__main__":
    main(sys.argv[1:])
