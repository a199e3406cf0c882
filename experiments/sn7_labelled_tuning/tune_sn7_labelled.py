"""Choose the cGAN guidance and loss of the ``sn7_labelled`` profile on the VALIDATION blocks (never test).

Each candidate trains a generator with the profile's parameters plus its overrides, predicts every validation pair
and is scored with chapter 6's code (segmenter trained on the train blocks; new-building F1 and the image metrics on
new-building / changed pixels; paired against persistence, whole blocks resampled). One row per candidate goes to
``bench_results/tune_sn7_labelled.csv``; the chosen keys are written into ``params/sn7_labelled/0[34]_*.yaml`` by
hand, and the row they came from into this folder's README.md.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/sn7_labelled_tuning/tune_sn7_labelled.py --name l1w100_pastmask \
        --set lambda_l1=100 --set use_past_mask=true

Needs ``../shared/data/sn7_real_labelled`` built into ``data/sn7_labelled`` (``make data PROFILE=sn7_labelled``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[2]  # the repository (params/ is read from it)

from stsynth_lib.cgan.config import CGANTrainConfig
from stsynth_lib.cgan.predictor import predict_and_score
from stsynth_lib.cgan.train import train_cgan
from stsynth_lib.data.dataset import PairedTileDataset
from stsynth_lib.evaluate import evaluate_models, paired_vs_baseline, paired_vs_persistence
from stsynth_lib.metrics.segmentation import load_or_train_segmenter
from stsynth_lib.runs import parse_cli_value

KEYS = ("psnr", "l1", "ssim", "l1_new", "psnr_new", "ssim_new", "l1_unchanged", "f1_drawn_micro", "recall_drawn", "f1_new_micro",
        "recall_new", "f1_micro")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", required=True)
    p.add_argument("--notebook", default="03_train_cgan", help="params/sn7_labelled/<notebook>.yaml to start from")
    p.add_argument("--set", action="append", default=[], help="key=value override (YAML value)")
    p.add_argument("--out", default="bench_results")
    p.add_argument("--score-only", action="store_true", help="re-score the run's saved validation predictions")
    p.add_argument("--compare-with", metavar="NAME",
                   help="another candidate (its saved validation predictions, runs/sn7_labelled/tune_<NAME>) scored on "
                        "the same pairs, with this candidate minus it paired (e.g. a guided model against its no-mask "
                        "twin: name the twin with --name and the guided one here; the table reads twin minus guided)")
    p.add_argument("--baselines", nargs="*", default=["seasonal"],
                   help="simple baselines scored beside the model, each with a paired table (default: seasonal, "
                        "the strongest one on sn7_real_128; none: persistence only)")
    args = p.parse_args(argv)
    params = {}
    for f in ("common", args.notebook):
        params.update(yaml.safe_load((ROOT / "params" / "sn7_labelled" / f"{f}.yaml").read_text()) or {})
    overrides = dict(kv.split("=", 1) for kv in args.set)
    overrides = {k: parse_cli_value(v) for k, v in overrides.items()}
    params.update(overrides)
    params["run_name"] = f"tune_{args.name}"
    cfg = CGANTrainConfig.from_params(params, progress=False)
    t0 = time.time()
    run_dir = Path(cfg.runs_dir) / cfg.profile / cfg.run_name
    if not args.score_only:
        run_dir = train_cgan(cfg)
    train_s = time.time() - t0
    val_ds = PairedTileDataset(cfg.dataset_dir, "val")
    index = run_dir / "predictions" / "val" / "index.csv"
    complete = index.is_file() and len(pd.read_csv(index)) == len(val_ds)
    if not (args.score_only and complete):
        predict_and_score(run_dir, val_ds, run_dir / "predictions" / "val", which="best", progress=False)
    seg, _, msg = load_or_train_segmenter(cfg.runs_dir, cfg.profile, cfg.dataset_dir, steps=300, batch_size=16)
    print(msg)
    runs = {args.name: run_dir / "predictions" / "val"}
    if args.compare_with:
        runs[args.compare_with] = run_dir.parent / f"tune_{args.compare_with}" / "predictions" / "val"
    res = evaluate_models(cfg.dataset_dir, "val", runs, segmenter=seg,
                          compute_lpips=False, progress=False, n_boot=1000, baselines=args.baselines)
    row = {"name": args.name, "overrides": json.dumps(overrides), "train_s": round(train_s), "n_val_pairs": len(val_ds)}
    paired = paired_vs_persistence(res.per_tile, metrics=[k for k in KEYS if k in res.per_tile or k.endswith("_micro")],
                                   cluster="cluster", n_boot=1000)
    summ = res.summary.pivot_table(index="model", columns="metric", values="mean")
    for k in KEYS:
        if k in summ.columns:
            row[k] = summ.loc[args.name, k]
            row[f"persistence_{k}"] = summ.loc["persistence", k]
    row["paired"] = paired.to_json(orient="records") if hasattr(paired, "to_json") else str(paired)
    by_baseline = {}
    for b in [*args.baselines, *([args.compare_with] if args.compare_with else [])]:  # every row minus b, paired
        vs = paired_vs_baseline(res.per_tile, b, metrics=["psnr", "l1", "ssim", "l1_new", "psnr_new", "recall_drawn",
                                                          "f1_drawn_micro"], cluster="cluster", n_boot=1000)
        by_baseline[b] = vs
        row[f"paired_vs_{b}"] = vs.to_json(orient="records")
    out = Path(args.out)
    out.mkdir(exist_ok=True)
    csv = out / "tune_sn7_labelled.csv"
    df = pd.DataFrame([row])
    if csv.exists():  # rows of earlier candidates may hold other columns: keep their union
        df = pd.concat([pd.read_csv(csv), df], ignore_index=True)
    tmp = csv.with_suffix(".tmp")
    df.to_csv(tmp, index=False)
    tmp.replace(csv)
    df = df.tail(1)
    with pd.option_context("display.width", 200, "display.max_columns", 50):
        print(df.drop(columns=[c for c in df.columns if c.startswith("paired")]).T)
        print(paired)
        for b, vs in by_baseline.items():
            print(f"minus {b}:")
            print(vs)
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
