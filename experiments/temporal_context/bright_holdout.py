"""Issue 13, round 4: do the sn7_real_128 cGANs carry over to bright areas they were not trained on? Chosen without
the test split.

The val split's 7 areas are all darker than the train mean; 4 of the 34 train areas are bright (desert; the mean of
all the area's images > 0.1 in [-1, 1]). ``make`` builds a derived tile store in which those 4 train areas join the 7
val areas as "val" (the images are symlinks to the real store; test stays test and is never opened); cGANs are
then trained on the other 30 train areas and ``score`` compares them there, per area and paired, whole areas
resampled. Those 11 areas are the derived store's val split, so the trainer also picks its best checkpoint and
calibrates its change scale on them (both variants alike): they are not trained on, but not unseen.

    PYTHONPATH=. .venv/bin/python experiments/temporal_context/bright_holdout.py make
    for v in none centred; do X="--centre-inputs false"; [ $v = centred ] && X="--centre-inputs true"
      OMP_NUM_THREADS=1 .venv/bin/python -m stsynth_lib.cgan.train --params params/sn7_real_128/common.yaml \\
        --params params/sn7_real_128/03_train_cgan.yaml --dataset-dir data/sn7_real_128_brightval/dataset $X \\
        --run-name bv_$v & done; wait   # about 15 minutes, one core each
    PYTHONPATH=. OMP_NUM_THREADS=2 .venv/bin/python experiments/temporal_context/bright_holdout.py score bv_centred bv_none \\
        > bench_results/bright_holdout_sn7_real_128.txt

The first named run is compared with each other one. Needs data/sn7_real_128/dataset (chapter 2 of the
sn7_real_128 profile).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

SOURCE = Path("data/sn7_real_128/dataset")
DERIVED = Path("data/sn7_real_128_brightval/dataset")
BRIGHT = 0.1  # an area is bright when its images' mean exceeds this, in [-1, 1]


def area_brightness(store: Path) -> pd.Series:
    """Mean of each area's images in [-1, 1], indexed by (split, aoi)."""
    images = np.load(store / "tiles_images.npy", mmap_mode="r")
    tiles = pd.read_parquet(store / "tiles.parquet")
    tiles["mean"] = [float(images[i].mean()) / 127.5 - 1 for i in tiles["tile_id"]]
    return tiles.groupby(["split", "aoi"])["mean"].mean()


def make() -> list[str]:
    """Write the derived store (idempotent); returns the bright train areas moved to val."""
    brightness = area_brightness(SOURCE)["train"]
    bright = sorted(brightness[brightness > BRIGHT].index)
    DERIVED.mkdir(parents=True, exist_ok=True)
    for f in SOURCE.iterdir():
        if (f.suffix == ".npy" or f.name == "dataset.yaml") and not (DERIVED / f.name).exists():
            os.symlink(f.resolve(), DERIVED / f.name)
    splits = json.loads((SOURCE / "splits.json").read_text())
    splits["splits"]["train"] = [a for a in splits["splits"]["train"] if a not in bright]
    splits["splits"]["val"] = sorted(splits["splits"]["val"] + bright)
    (DERIVED / "splits.json").write_text(json.dumps(splits, indent=2))
    for name in ("pairs.parquet", "tiles.parquet", "metadata.parquet"):
        table = pd.read_parquet(SOURCE / name)
        if "split" in table:
            table.loc[table["aoi"].isin(bright), "split"] = "val"
        table.to_parquet(DERIVED / name)
    return bright


def score(names: list[str]) -> None:
    from _common import print_paired, score_runs
    from stsynth_lib import evaluate as E

    bright = make()
    res = score_runs(DERIVED, names, predictions="val_brightval", baselines=("seasonal",))
    by_area = E.paired_gain_by_area(res.per_tile, ["persistence"], "psnr", models=[*names, "seasonal"])
    gains = by_area.pivot_table(index="aoi", columns="model", values="mean_diff")
    gains.insert(0, "bright", gains.index.isin(bright))
    print(f"{DERIVED} val: the 7 val areas and the {len(bright)} bright train areas (not trained on here; checkpoint "
          "choice and calibration use them); "
          "PSNR gain over persistence (dB), per area (mean over its pairs):")
    print(gains.round(2).to_string())
    print("mean over areas:", gains.drop(columns="bright").groupby(gains["bright"]).mean().round(3)
          .rename(index={True: "bright", False: "dark (val)"}).to_string(), sep="\n")
    print_paired(res, names)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("make", help=f"write the derived tile store {DERIVED} (idempotent)")
    s = sub.add_parser("score", help="score named runs on the derived store's val split (the first against the others)")
    s.add_argument("runs", nargs="+", help="run names under runs/sn7_real_128/, e.g. bv_centred bv_none")
    args = p.parse_args(argv)
    if args.cmd == "make":
        print("bright train areas moved to val:", make())
    else:
        score(args.runs)


if __name__ == "__main__":
    main(sys.argv[1:])
