"""Issue 32: what the footprints add, every block of ``sn7_labelled`` tested once (k-fold over its 16 blocks).

The 16 blocks of 256 px are dealt into 4 folds of 4 (heaviest construction first, snake order, so each fold holds
new buildings). For fold k its 4 blocks are the TEST split; of the other 12, three (every 4th by construction weight,
starting at the 2nd) are the validation split the trainer picks its best checkpoint on, and 9 train. Each fold
trains the profile's guided cGAN (``params/sn7_labelled/03_train_cgan.yaml``, unchanged: chosen on the single split's
validation blocks) and its no-mask twin (the same settings, seed and steps, ``use_mask: false``,
``use_past_mask: false``), predicts the fold's test blocks with both, and scores them with chapter 6's code, the judge
given by ``--judge`` (default: the study judge ``up2_long`` at p > 0.05, ``experiments/segmenter``) and the seasonal
blend. ``pool`` joins the folds' per-pair scores (each block scored by the one fold that held it out) and tables the
paired differences with whole blocks resampled (16 blocks).

    .venv/bin/python experiments/guidance_kfold/kfold_guidance.py prepare
    OMP_NUM_THREADS=1 .venv/bin/python experiments/guidance_kfold/kfold_guidance.py run --folds 0 1 &
    OMP_NUM_THREADS=1 .venv/bin/python experiments/guidance_kfold/kfold_guidance.py run --folds 2 3
    .venv/bin/python experiments/guidance_kfold/kfold_guidance.py pool --write-readme

Needs ``make data PROFILE=sn7_labelled`` (``data/sn7_labelled/dataset``) and the judge file. Fold datasets go to
``data/sn7_labelled_kfold/fold<k>`` (the tile arrays are links to the profile's), runs to
``runs/sn7_labelled/kfold<k>_<model>_<variant>``, per-pair scores to ``runs/sn7_labelled/kfold_scores/``; the pooled
tables to ``experiments/guidance_kfold/results/kfold_sn7_labelled.json`` (committed) and this folder's README.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
SRC = ROOT / "data" / "sn7_labelled" / "dataset"
FOLDS_DIR = ROOT / "data" / "sn7_labelled_kfold"
SCORES = ROOT / "runs" / "sn7_labelled" / "kfold_scores"
RESULTS = HERE / "results" / "kfold_sn7_labelled.json"
DEFAULT_JUDGE = ROOT / "runs" / "sn7_labelled" / "segmenter_candidates" / "up2_long" / "segmenter.pt"
N_FOLDS = 4
TWIN = {"use_mask": False, "use_past_mask": False}
METRICS = ["l1_new", "psnr_new", "object_recall_new", "psnr", "ssim", "l1"]


def block_key(b) -> tuple[int, int]:
    return int(b["block_row"]), int(b["block_col"])


def fold_plan(blocks: list[dict], n_folds: int = N_FOLDS) -> dict[tuple[int, int], dict]:
    """``{(block_row, block_col): {"fold": k, "val_in": [folds whose validation split holds it]}}``.

    Blocks sorted by construction weight (new-building pixels, the split's ``weight``; ties by position) are dealt to
    folds in snake order (0 1 2 3 3 2 1 0 ...). Within fold k, the 12 other blocks in the same order give the
    validation split at positions 1, 5, 9 (one block from each third of the construction range)."""
    order = sorted(blocks, key=lambda b: (-float(b.get("weight", 0.0)), block_key(b)))
    snake = [i % n_folds if (i // n_folds) % 2 == 0 else n_folds - 1 - i % n_folds for i in range(len(order))]
    plan = {block_key(b): {"fold": f, "val_in": []} for b, f in zip(order, snake)}
    for k in range(n_folds):
        rest = [block_key(b) for b in order if plan[block_key(b)]["fold"] != k]
        for i in range(1, len(rest), n_folds):
            plan[rest[i]]["val_in"].append(k)
    return plan


def split_of(plan: dict, key: tuple[int, int], fold: int) -> str:
    p = plan[key]
    return "test" if p["fold"] == fold else "val" if fold in p["val_in"] else "train"


def prepare(folds: list[int]) -> None:
    """Write each fold's dataset: the profile's tables with the split column set by the fold plan; the tile arrays
    are linked, not copied."""
    if not (SRC / "splits.json").is_file():
        raise SystemExit(f"{SRC} has no dataset: run `make data PROFILE=sn7_labelled` first.")
    splits = json.loads((SRC / "splits.json").read_text())
    if splits.get("split_by") != "block":
        raise SystemExit(f"{SRC} is not split by blocks (split_by: {splits.get('split_by')}).")
    if len({b["aoi"] for b in splits["blocks"]}) != 1:
        raise SystemExit(f"{SRC}: the fold plan keys blocks by (row, col) within ONE area; this tree has several")
    plan = fold_plan(splits["blocks"])
    for k in folds:
        out = FOLDS_DIR / f"fold{k}"
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name in ("pairs.parquet", "tiles.parquet"):
            df = pd.read_parquet(SRC / name)
            df["split"] = [split_of(plan, (int(r), int(c)), k) for r, c in zip(df["block_row"], df["block_col"])]
            df.to_parquet(tmp / name)
        for f in SRC.iterdir():
            if f.suffix == ".npy":
                os.symlink(f.resolve(), tmp / f.name)
            elif f.name not in ("pairs.parquet", "tiles.parquet", "splits.json"):
                shutil.copy2(f, tmp / f.name)
        s = dict(splits)
        s["blocks"] = [{**b, "split": split_of(plan, block_key(b), k)} for b in splits["blocks"]]
        s["kfold"] = {"fold": k, "n_folds": N_FOLDS, "source": str(SRC.relative_to(ROOT)),
                      "rule": "experiments/guidance_kfold/kfold_guidance.py fold_plan"}
        (tmp / "splits.json").write_text(json.dumps(s, indent=2))
        shutil.rmtree(out, ignore_errors=True)
        tmp.replace(out)
        n = pd.read_parquet(out / "pairs.parquet")["split"].value_counts().to_dict()
        print(f"fold {k}: {out.relative_to(ROOT)} pairs {n}")


def params_for(fold: int, model: str, variant: str) -> dict:
    params: dict = {}
    for f in ("common", "03_train_cgan"):
        params.update(yaml.safe_load((ROOT / "params" / "sn7_labelled" / f"{f}.yaml").read_text()) or {})
    params["model"] = model
    if variant == "nomask":
        params.update(TWIN)
    params["dataset_dir"] = str((FOLDS_DIR / f"fold{fold}").relative_to(ROOT))
    params["run_name"] = f"kfold{fold}_{model}_{variant}"
    params["resume_from_checkpoint"] = "latest"  # a rerun continues (or keeps) a finished run instead of retraining
    return params


def load_judge(path: Path, threshold: float):
    from stsynth_lib.metrics.segmentation import load_segmenter

    judge, info = load_segmenter(path)
    judge.set_decision_threshold(threshold)
    return judge


def run_fold(fold: int, model: str, judge_path: Path, threshold: float) -> Path:
    """Train (or resume) the guided model and its twin on one fold, predict the fold's test blocks, score them."""
    from stsynth_lib.cgan.config import CGANTrainConfig
    from stsynth_lib.cgan.predictor import predict_and_score
    from stsynth_lib.cgan.train import train_cgan
    from stsynth_lib.data.dataset import PairedTileDataset
    from stsynth_lib.evaluate import evaluate_models

    os.chdir(ROOT)
    runs, seconds = {}, {}
    for variant in ("guided", "nomask"):
        cfg = CGANTrainConfig.from_params(params_for(fold, model, variant), progress=False)
        t0 = time.time()
        run_dir = train_cgan(cfg)
        test_ds = PairedTileDataset(cfg.dataset_dir, "test")
        out = run_dir / "predictions" / "test"
        index = out / "index.csv"
        best = [f for f in (run_dir / "best").rglob("*") if f.is_file()]
        stale = not index.is_file() or any(f.stat().st_mtime > index.stat().st_mtime for f in best)
        if stale or len(pd.read_csv(index)) != len(test_ds):  # predictions of other weights are never scored
            predict_and_score(run_dir, test_ds, out, which="best", progress=False)
        seconds[variant] = round(time.time() - t0)
        runs[variant] = out
        print(f"fold {fold} {model} {variant}: trained and predicted in {seconds[variant]} s", flush=True)
    t0 = time.time()
    res = evaluate_models(FOLDS_DIR / f"fold{fold}", "test", runs, segmenter=load_judge(judge_path, threshold),
                          compute_lpips=False, progress=False, n_boot=200, baselines=["seasonal"])
    SCORES.mkdir(parents=True, exist_ok=True)
    dest = SCORES / f"fold{fold}_{model}.parquet"
    per_tile = res.per_tile.assign(fold=fold)
    tmp = dest.with_suffix(".tmp")
    per_tile.to_parquet(tmp)
    tmp.replace(dest)
    meta = {"fold": fold, "model": model, "seconds": seconds, "score_s": round(time.time() - t0),
            "judge": str(judge_path.relative_to(ROOT)) if judge_path.is_relative_to(ROOT) else str(judge_path),
            "judge_threshold": threshold, "notes": res.notes}
    dest.with_suffix(".json").write_text(json.dumps(meta, indent=2))
    print(f"fold {fold} {model}: scored in {meta['score_s']} s -> {dest.relative_to(ROOT)}", flush=True)
    return dest


def pool(model: str, n_boot: int = 2000) -> dict:
    """The folds' per-pair scores joined; paired differences with the 16 blocks resampled."""
    from stsynth_lib.evaluate import paired_vs_baseline

    files = sorted(SCORES.glob(f"fold*_{model}.parquet"))
    if not files:
        raise SystemExit(f"no scored folds for {model} in {SCORES}: run `kfold_guidance.py run` first")
    per_tile = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    folds = sorted(int(f.stem.split("_")[0][4:]) for f in files)
    tables = {}
    for base in ("nomask", "persistence", "seasonal"):
        t = paired_vs_baseline(per_tile, base, metrics=METRICS, cluster="cluster", n_boot=n_boot)
        tables[base] = t.to_dict(orient="records")
    means = {}
    for name, g in (per_tile[per_tile["common"]] if "common" in per_tile else per_tile).groupby("model"):
        row = {m: float(g[m].mean()) for m in ("psnr", "ssim", "l1", "l1_new", "psnr_new") if m in g}
        if {"new_objects", "new_objects_drawn"} <= set(g.columns):
            row["object_recall_new"] = float(g["new_objects_drawn"].sum() / max(g["new_objects"].sum(), 1))
            row["new_objects"] = int(g["new_objects"].sum())
        means[name] = row
    meta = [json.loads(f.with_suffix(".json").read_text()) for f in files]
    return {"model": model, "folds": folds, "n_pairs": int((per_tile["model"] == "guided").sum()),
            "n_blocks": int(per_tile["cluster"].nunique()), "means": means, "paired": tables, "runs": meta}


README_START, README_END = "<!-- kfold:start -->", "<!-- kfold:end -->"


def _cell(r: dict) -> str:
    lo, hi, d = r.get("ci_lo"), r.get("ci_hi"), r["mean_diff"]
    digits = 2 if "psnr" in r["metric"] else 3 if r["metric"] == "object_recall_new" else 4
    ci = "" if lo is None or hi is None or lo != lo else f" [{lo:+.{digits}f}, {hi:+.{digits}f}]"
    return f"{d:+.{digits}f}{ci}, {int(r['areas_better'])} of {int(r['n_areas'])}"


def readme_lines(results: dict) -> list[str]:
    """The README's results section, generated from the results file (never typed)."""
    from stsynth_lib.evaluate.data import METRICS as METRIC_WORDS

    out = [README_START, "<!-- generated by kfold_guidance.py pool --write-readme from results/kfold_sn7_labelled.json; "
           "do not edit -->", ""]
    for family, res in results.items():
        runs = res.get("runs") or []
        judge = runs[0].get("judge") if runs else "?"
        thr = runs[0].get("judge_threshold") if runs else "?"
        train_s = [v for r in runs for v in (r.get("seconds") or {}).values()]
        out += [f"**{family}**: {len(res['folds'])} of {N_FOLDS} folds (fold {', '.join(map(str, res['folds']))}), "
                f"{res['n_pairs']} test pairs, "
                f"{res['n_blocks']} blocks; judge `{judge}` at p > {thr}; train + predict "
                f"{sum(train_s) / 60:.0f} min on one core for {len(train_s)} runs.", "",
                "Guided model minus each row, paired, whole blocks resampled (95 %); then the blocks where the guided "
                "model is better.", "",
                "| metric | minus its no-mask twin | minus persistence | minus the seasonal blend |",
                "|---|---|---|---|"]
        paired = res["paired"]
        for m in METRICS:
            cells = []
            for base in ("nomask", "persistence", "seasonal"):
                rows = [r for r in paired.get(base, []) if r["model"] == "guided" and r["metric"] == m]
                cells.append(_cell(rows[0]) if rows else "")
            if any(cells):
                higher_is_better, name = METRIC_WORDS[m]  # the evaluation's own names and directions
                out.append(f"| {name} {'↑' if higher_is_better else '↓'} | " + " | ".join(cells) + " |")
        means = res["means"]
        order = [k for k in ("guided", "nomask", "persistence", "seasonal", "real_future") if k in means]
        out += ["", "Means over the pooled test pairs (object recall pooled over the new buildings):", "",
                "| row | PSNR (dB) | SSIM | L1 on new-building px | PSNR on new-building px (dB) | object recall (new "
                "buildings) |", "|---|---:|---:|---:|---:|---:|"]
        for k in order:
            r = means[k]
            f = lambda key, d: "" if r.get(key) is None or r.get(key) != r.get(key) else f"{r[key]:.{d}f}"  # noqa: E731
            out.append(f"| {k} | {f('psnr', 2)} | {f('ssim', 3)} | {f('l1_new', 4)} | {f('psnr_new', 2)} | "
                       f"{f('object_recall_new', 3)} |")
        out.append("")
    out.append(README_END)
    return out


def write_readme(results: dict) -> Path:
    readme = HERE / "README.md"
    text = readme.read_text()
    block = "\n".join(readme_lines(results))
    if README_START in text:
        a, b = text.index(README_START), text.index(README_END) + len(README_END)
        text = text[:a] + block + text[b:]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    readme.write_text(text)
    return readme


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="write the fold datasets")
    p.add_argument("--folds", type=int, nargs="+", default=list(range(N_FOLDS)))
    r = sub.add_parser("run", help="train, predict and score folds (guided model and its no-mask twin)")
    r.add_argument("--folds", type=int, nargs="+", default=list(range(N_FOLDS)))
    r.add_argument("--model", default="pix2pix", choices=["pix2pix", "attention_unet"])
    r.add_argument("--judge", type=Path, default=DEFAULT_JUDGE)
    r.add_argument("--judge-threshold", type=float, default=0.05)
    q = sub.add_parser("pool", help="pool the scored folds into the results file")
    q.add_argument("--models", nargs="+", default=["pix2pix", "attention_unet"])
    q.add_argument("--write-readme", action="store_true")
    args = ap.parse_args(argv)
    if args.cmd == "prepare":
        prepare(args.folds)
    elif args.cmd == "run":
        if not args.judge.is_file():
            raise SystemExit(f"judge {args.judge} not found: train it with experiments/segmenter/compare_judges.py "
                             "--only up2_long, or name another with --judge")
        for k in args.folds:
            if not (FOLDS_DIR / f"fold{k}" / "splits.json").is_file():
                prepare([k])
            run_fold(k, args.model, args.judge, args.judge_threshold)
    else:
        results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
        for m in args.models:
            if sorted(SCORES.glob(f"fold*_{m}.parquet")):
                results[m] = pool(m)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2, default=str))
        print(f"wrote {RESULTS}")
        if args.write_readme:
            print(f"wrote {write_readme(results)}")
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
