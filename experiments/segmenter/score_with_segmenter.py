"""Score saved predictions of one split with a GIVEN building segmenter: a second judge for new-building F1.

Chapter 6 scores building F1 and new-building F1 with the profile's segmenter (``runs/<profile>/segmenter``). A
verdict that rests on one small segmenter could be that segmenter's quirk; this script scores the same prediction
folders with another one (for example trained with another seed, into another runs folder, by
``metrics.segmentation.load_or_train_segmenter``) and writes each model minus persistence, paired, with whole areas (or
blocks) resampled, to a CSV:

    .venv/bin/python experiments/segmenter/score_with_segmenter.py --dataset data/sn7_labelled/dataset --split test \\
        --segmenter /tmp/seg2runs/sn7_labelled/segmenter/segmenter.pt \\
        --pred controlnet=runs/sn7_labelled/controlnet/predictions/test \\
        --out bench_results/sn7_labelled_test_second_segmenter.csv

Only scores what exists; nothing is chosen from it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from stsynth_lib.evaluate import evaluate_models, paired_vs_persistence
from stsynth_lib.metrics.segmentation import load_segmenter

METRICS = ("f1_new_micro", "f1_drawn_micro", "recall_new", "f1_micro", "psnr")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True, help="a tile store (data/<profile>/dataset)")
    p.add_argument("--split", default="test")
    p.add_argument("--segmenter", required=True, help="a segmenter.pt written by segmentation.save_segmenter")
    p.add_argument("--pred", action="append", required=True, help="name=folder of saved predictions (index.csv)")
    p.add_argument("--out", required=True, help="CSV to write (overwritten)")
    p.add_argument("--n-boot", type=int, default=1000)
    args = p.parse_args(argv)
    folders = dict(kv.split("=", 1) for kv in args.pred)
    seg, info = load_segmenter(args.segmenter)
    res = evaluate_models(args.dataset, args.split, folders, segmenter=seg, compute_lpips=False, progress=False)
    paired = paired_vs_persistence(res.per_tile, metrics=METRICS, cluster="cluster", n_boot=args.n_boot)
    means = res.summary.pivot_table(index="model", columns="metric", values="mean")
    out = paired.merge(means.stack().rename("model_mean").reset_index(), on=["model", "metric"], how="left")
    out["persistence_mean"] = [means.loc["persistence", m] if m in means else np.nan for m in out["metric"]]
    out["segmenter"] = args.segmenter
    out["segmenter_seed"] = info.get("seed")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(args.out).with_suffix(".tmp")
    out.to_csv(tmp, index=False)
    tmp.replace(args.out)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(out.drop(columns=["segmenter"]))
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
