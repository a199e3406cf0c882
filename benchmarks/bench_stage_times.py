"""Chapter 5's two training stages on a profile: seconds per step now, and the profile's stage times projected.

    OMP_NUM_THREADS=2 python benchmarks/bench_stage_times.py --profile sn7_real_128 --steps 40 --out bench_results

Runs ``--steps`` steps of each training phase with the profile's own settings (``params/<profile>/common.yaml`` +
``05_controlnet.yaml``), in a temporary runs folder (the profile's runs are never touched): the stage-1 VAE, the
stage-1 UNet (+ text encoder), then the ControlNet beside that backbone. Validation and checkpoints are pushed past
the end, so what is timed is the training step (data, forward, backward, optimizer). Seconds per step are the
median of the log's consecutive rows (robust to one slow row), per phase.

If the profile's reference run exists (``runs/<profile>/backbone/{vae,unet}/log.csv`` and
``runs/<profile>/controlnet/log.csv``), the same statistic is read from its logs, and each phase's recorded elapsed
time is scaled by the ratio (here / there): the projected time of that run on this machine as it is now (including
its validations, scaled the same way). Run it on an otherwise idle machine to project an idle machine's time; the
reference runs' times were taken on whatever the machine did then.

Writes ``<out>/stage_times_<profile>.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stsynth_lib.controlnet.adapt import BackboneAdaptConfig, adapt_backbone  # noqa: E402
from stsynth_lib.controlnet.train import ControlNetTrainConfig, train_controlnet  # noqa: E402


def seconds_per_step(log_csv: Path) -> tuple[float, float, int]:
    """``(median s/step over consecutive log rows, total elapsed s, last step)`` of a training log. A resumed run
    restarts its clock, so the total adds up the segments."""
    log = pd.read_csv(log_csv).dropna(subset=["elapsed_s"])
    log = log[log["step"] > 0]
    step, el = log["step"].to_numpy(float), log["elapsed_s"].to_numpy(float)
    d_step, d_el = np.diff(step), np.diff(el)
    keep = (d_step > 0) & (d_el > 0)  # a resumed run restarts its clock: drop that row
    if not keep.any():
        raise ValueError(f"{log_csv}: fewer than two timed rows")
    total = float(el[-1] + el[:-1][d_el < 0].sum())
    return float(np.median(d_el[keep] / d_step[keep])), total, int(step[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", default="sn7_real_128")
    p.add_argument("--steps", type=int, default=40, help="steps timed per phase (>= 20)")
    p.add_argument("--out", default="bench_results")
    args = p.parse_args(argv)
    if args.steps < 20:
        p.error("--steps must be >= 20 (seconds per step come from consecutive log rows, every 5 steps)")
    params: dict = {}
    for f in ("common", "05_controlnet"):
        params.update(yaml.safe_load((ROOT / "params" / args.profile / f"{f}.yaml").read_text()) or {})
    params["dataset_dir"] = str(ROOT / params["dataset_dir"])
    if not Path(params["dataset_dir"]).is_dir():
        print(f"skipped: {params['dataset_dir']} has no dataset; build it first: make data PROFILE={args.profile}")
        return 0
    n, far = int(args.steps), 10**9
    stage1 = dict(params.get("stage1") or {})
    stage1.update(vae_steps=n, unet_steps=n, validation_steps=far, checkpointing_steps=far, log_every_steps=5,
                  resume_from_checkpoint=None)
    rows = []
    with tempfile.TemporaryDirectory(prefix="stage_times_") as tmp:
        t0 = time.perf_counter()
        s1 = adapt_backbone(BackboneAdaptConfig(
            dataset_dir=params["dataset_dir"], runs_dir=tmp, profile=args.profile, seed=int(params.get("seed", 0)),
            device="cpu", pretrained_model=params["pretrained_model"], **stage1))
        stage1_wall = time.perf_counter() - t0
        cn = {**params, "runs_dir": tmp, "device": "cpu", "max_train_steps": n, "validation_steps": far,
              "checkpointing_steps": far, "log_every_steps": 5, "resume_from_checkpoint": None,
              "num_samples_per_pair": 1}
        t0 = time.perf_counter()
        run = train_controlnet(ControlNetTrainConfig.from_params(cn, pretrained_model=str(s1 / "backbone")))
        cn_wall = time.perf_counter() - t0
        logs = {"stage-1 VAE": s1 / "vae" / "log.csv", "stage-1 UNet": s1 / "unet" / "log.csv",
                "ControlNet": run / "log.csv"}
        ref_dir = ROOT / params["runs_dir"] / args.profile
        ref_logs = {"stage-1 VAE": ref_dir / "backbone" / "vae" / "log.csv",
                    "stage-1 UNet": ref_dir / "backbone" / "unet" / "log.csv",
                    "ControlNet": ref_dir / "controlnet" / "log.csv"}
        own = params.get("stage1") or {}
        steps_of = {"stage-1 VAE": own.get("vae_steps"), "stage-1 UNet": own.get("unet_steps"),
                    "ControlNet": params.get("max_train_steps")}
        for phase, log in logs.items():
            s_now, _, _ = seconds_per_step(log)
            row = {"phase": phase, "s_per_step_now": s_now, "profile_steps": steps_of[phase]}
            if ref_logs[phase].is_file():
                s_ref, el_ref, step_ref = seconds_per_step(ref_logs[phase])
                row.update(s_per_step_reference_log=s_ref, reference_steps=step_ref,
                           reference_elapsed_min=el_ref / 60, ratio_now_over_reference=s_now / s_ref,
                           projected_min=el_ref / 60 * s_now / s_ref)
            rows.append(row)
    table = pd.DataFrame(rows)
    total = table["projected_min"].sum() if "projected_min" in table else None
    out = {"profile": args.profile, "steps_timed": n, "threads": torch.get_num_threads(),
           "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "machine": platform.processor() or platform.machine(),
           "cpu_count": os.cpu_count(), "stage1_wall_s": stage1_wall, "controlnet_wall_s": cn_wall,
           "phases": rows, "projected_total_min": total,
           "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    path = Path(args.out) / f"stage_times_{args.profile}.json"
    path.write_text(json.dumps(out, indent=2))
    print(table.round(3).to_string(index=False))
    if total is not None:
        print(f"projected training time of both stages at the profile's steps: {total:.1f} min")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
