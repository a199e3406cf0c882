"""Issue 13, round 5: does the track-record guard (stsynth_lib.evaluate.track_record) cost anything on VALIDATION?
The test split is not opened.

Each named run of runs/sn7_real_128/ predicts the val split and is scored with persistence and the simple baselines
(score_runs of _common.py, as score_context_val.py). Then, per run, guards that choose per pair by mean PSNR over the
tile's earlier pairs (future date not after this pair's past date). Two were fixed before the first run: ``<run>_gp``
chooses between the run and persistence, ``<run>_gps`` between the run, persistence and the seasonal blend (it never chose
seasonal: the two are the same). Both lost on val, intervals below 0. Three were added after that first run (between
the run and persistence): ``_gg`` compares only earlier pairs of the same gap (lost, interval below 0), ``_gm1``
leaves the run only when persistence did better by more than 1 dB, ``_ggm1`` both (0.004-0.02 dB under the run,
intervals reaching 0, better in no area). Each is compared, paired with whole areas resampled, with its run, with persistence and with seasonal; the
share of pairs where the guard left the run is printed per area.

    PYTHONPATH=. OMP_NUM_THREADS=2 .venv/bin/python experiments/temporal_context/track_record_val.py pix2pix attention_unet \\
        > bench_results/track_record_val_sn7_real_128.txt

Needs data/sn7_real_128/dataset and the named runs (about 4 minutes of prediction per run on one core).
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from _common import DATASET, score_runs
from stsynth_lib import evaluate as E
from stsynth_lib.evaluate.track_record import guard_models

GUARDS = {  # suffix: (fallbacks, options of track_record_choice)
    "_gp": (["persistence"], {}),
    "_gps": (["persistence", "seasonal"], {}),
    "_gg": (["persistence"], {"match_gap": True}),
    "_gm1": (["persistence"], {"margin": 1.0}),
    "_ggm1": (["persistence"], {"match_gap": True, "margin": 1.0}),
}


def guarded(per_tile: pd.DataFrame, pairs: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """``per_tile`` with every guard of every named run added."""
    for suffix, (fallbacks, options) in GUARDS.items():
        per_tile = guard_models(per_tile, pairs, names, fallbacks, suffix=suffix, **options)
    return per_tile


def report(per_tile: pd.DataFrame, names: list[str]) -> None:
    """Summary, paired tables and the guards' choices per area."""
    print(E.results_table(E.summarise(per_tile, n_boot=1000), ("psnr", "ssim", "l1")).to_string())
    guards = [n + s for n in names for s in GUARDS]
    for base in ("persistence", "seasonal"):
        t = E.paired_vs_baseline(per_tile[per_tile["model"].isin([*names, *guards, base])], base,
                                 metrics=("psnr", "ssim"), n_boot=1000)
        print(E.paired_table(t).to_string())
    for name in names:
        mine = per_tile[per_tile["model"].isin([name] + [name + s for s in GUARDS])]
        t = E.paired_vs_baseline(mine, name, metrics=("psnr", "ssim"), n_boot=1000)
        print(E.paired_table(t).to_string())
    for g in guards:
        rows = per_tile[per_tile["model"] == g]
        left = (rows["chosen"] != g.rsplit("_", 1)[0]).groupby(rows["aoi"]).mean()
        print(f"{g}: share of pairs not given to the run, per area: "
              + ", ".join(f"{a[:10]} {v:.2f}" for a, v in left.items()))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="*", default=["pix2pix", "attention_unet"],
                   help="run names under runs/sn7_real_128/ (default: pix2pix attention_unet)")
    names = p.parse_args(argv).runs
    res = score_runs(DATASET, names)
    pairs = pd.read_parquet(f"{DATASET}/pairs.parquet")
    report(guarded(res.per_tile, pairs, names), names)


if __name__ == "__main__":
    main(sys.argv[1:])
