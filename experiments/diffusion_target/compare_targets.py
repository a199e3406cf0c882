"""Issue 33 on VALIDATION: with the f2_l8_long autoencoder, does the diffusion model reach persistence, and which
``diffusion_target`` (image | residual) gets closer?

Each candidate runs chapter 5's two stages with the ``sn7_real_128`` profile's options plus the candidate's:
stage 1 (the tiny backbone: the VAE chosen in ``experiments/autoencoder_ceiling``, then the UNet on the candidate's
``unet_target``), stage 2 (the ControlNet, same target). It then generates a seeded subset of the VALIDATION pairs:
one sample per pair at each img2img strength of the grid, and, at the strength with the best single-sample PSNR,
``--samples`` samples per pair whose per-pixel mean is scored as a model of its own
(:func:`stsynth_lib.predict.split.write_sample_mean`). Everything is scored with chapter 6's code, paired against
persistence on the same pairs with whole areas resampled. The test split is never touched here.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/diffusion_target/compare_targets.py --name residual \
        --vae-from runs/experiments/ae/f2_l8_long/vae/final
    .venv/bin/python experiments/diffusion_target/compare_targets.py --write-readme

``--vae-from`` seeds the stage-1 folder with an autoencoder already trained by the same phase and options
(``compare_autoencoders.py --only f2_l8_long``; 16 min on one core), so that stage 1 goes straight to its UNet;
without it stage 1 trains the VAE first. A finished phase, ControlNet or predictions folder is kept (delete the
candidate's folder under ``runs/sn7_real_128/`` to start again). Results: ``results/targets.json`` (merged per
candidate) and the table of this folder's README (``--write-readme``).

Needs chapter 2's dataset of the profile (``make data PROFILE=sn7_real_128``) and, for LPIPS, the weights of
``make weights`` (or ``--no-lpips``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
HERE = Path(__file__).resolve().parent
PROFILE = "sn7_real_128"
VAE = {"vae_channels": [32, 64], "latent_channels": 8, "vae_steps": 4000}  # autoencoder_ceiling's f2_l8_long
CONTEXT6 = [0, -1, -2, "same_month_last_year-1", "same_month_last_year", "same_month_last_year+1"]
# name -> (ControlNet options, stage-1 options); both stages learn the same target
CANDIDATES: dict[str, tuple[dict, dict]] = {
    "image": ({"diffusion_target": "image"}, {}),
    "residual": ({"diffusion_target": "residual"}, {}),
    "residual_context6": ({"diffusion_target": "residual", "context_offsets_months": CONTEXT6}, {}),
}
METRICS = ("psnr", "ssim", "l1", "lpips")


def profile_params(runs_dir: str | None = None) -> dict:
    params: dict = {}
    for f in ("common", "05_controlnet"):
        params.update(yaml.safe_load((ROOT / "params" / PROFILE / f"{f}.yaml").read_text()) or {})
    if runs_dir:
        params["runs_dir"] = runs_dir
    return params


def train_candidate(name: str, args) -> tuple[Path, float]:
    """Stage 1 then stage 2 of one candidate (each resumed or kept when finished); (ControlNet run, seconds)."""
    from stsynth_lib.controlnet.adapt import BackboneAdaptConfig, adapt_backbone
    from stsynth_lib.controlnet.config import ControlNetTrainConfig
    from stsynth_lib.controlnet.train import train_controlnet

    params = profile_params(args.runs_dir)
    cn_opts, s1_opts = CANDIDATES[name]
    target = cn_opts["diffusion_target"]
    stage1 = {**params["stage1"], **VAE, "unet_steps": args.unet_steps, "unet_target": target, **s1_opts,
              "validation_steps": args.unet_steps, "checkpointing_steps": 200, "max_val_tiles": 16}
    s1_name = f"dt_{target}_backbone"  # the image / residual backbones are shared by the candidates of that target
    s1_dir = Path(params["runs_dir"]) / PROFILE / s1_name
    if args.vae_from and not (s1_dir / "vae" / "final" / "config.json").is_file():
        (s1_dir / "vae").mkdir(parents=True, exist_ok=True)
        shutil.copytree(args.vae_from, s1_dir / "vae" / "final")
    s1_cfg = BackboneAdaptConfig(dataset_dir=params["dataset_dir"], runs_dir=params["runs_dir"], profile=PROFILE,
                                 run_name=s1_name, seed=params["seed"], device="cpu", progress=False, **stage1)
    backbone = adapt_backbone(s1_cfg) / "backbone"
    cn_params = {**params, **cn_opts, "max_train_steps": args.controlnet_steps, "validation_steps": 100,
                 "max_val_pairs": 16, "checkpointing_steps": 100, "run_name": f"dt_{name}", "progress": False,
                 "device": "cpu"}
    run_dir = train_controlnet(ControlNetTrainConfig.from_params(cn_params, pretrained_model=str(backbone)))
    # training time from the logs (the last row's elapsed_s of the stage-1 UNet and of the ControlNet: a kept run is
    # not timed again); the seeded VAE's 16 min (one core) are not in it
    import pandas as pd

    logs = (backbone.parent / "unet" / "log.csv", run_dir / "log.csv")
    return run_dir, float(sum(pd.read_csv(f)["elapsed_s"].dropna().iloc[-1] for f in logs))


def generate(run_dir: Path, args, params: dict) -> tuple[dict, float]:
    """{model name: predictions folder} on the validation subset: one sample per strength, then the samples and
    their mean at the strength of the best single-sample PSNR (chosen here, on validation)."""
    from stsynth_lib.controlnet.generate import generate_split
    from stsynth_lib.evaluate import evaluate_models
    from stsynth_lib.predict.split import split_is_complete, write_sample_mean

    def gen(folder: Path, strength: float, samples: int) -> Path:
        if split_is_complete(folder, args.pairs, samples):
            return folder  # generated by an earlier call
        return generate_split(run_dir, params["dataset_dir"], "val", out_dir=folder, max_pairs=args.pairs,
                              subsample_seed=params["seed"], seed=params["seed"], strength=strength,
                              num_inference_steps=params["num_inference_steps"],
                              guidance_scale=params["guidance_scale"], batch_size=params["generation_batch_size"],
                              num_samples_per_pair=samples, progress=False, write_png=False)

    folders = {f"strength {s:g}": gen(run_dir / "dt_val" / f"strength-{s:g}", s, 1) for s in args.strengths}
    res = evaluate_models(params["dataset_dir"], "val", folders, compute_lpips=False, progress=False, n_boot=200,
                          max_pairs=args.pairs, seed=params["seed"])
    psnr = res.summary[res.summary["metric"] == "psnr"].set_index("model")["mean"]
    best = max(args.strengths, key=lambda s: psnr[f"strength {s:g}"])
    multi = gen(run_dir / "dt_val" / f"strength-{best:g}-x{args.samples}", best, args.samples)
    folders[f"strength {best:g}, sample 0"] = multi
    folders[f"strength {best:g}, mean of {args.samples}"] = write_sample_mean(multi, write_png=False)
    return folders, best


def score(name: str, run_dir: Path, train_s: float, folders: dict, best: float, args, params: dict) -> dict:
    from stsynth_lib.evaluate import evaluate_models, rows_vs_persistence

    res = evaluate_models(params["dataset_dir"], "val", folders, compute_lpips=not args.no_lpips,
                          allow_uncalibrated=False, progress=False, n_boot=1000, max_pairs=args.pairs,
                          seed=params["seed"])
    metrics = [m for m in METRICS if m in res.per_tile.columns]
    rows = rows_vs_persistence(res, folders, metrics)
    means = res.summary.pivot_table(index="model", columns="metric", values="mean")
    persistence = {m: float(means.loc["persistence", m]) for m in metrics}
    import pandas as pd

    log = pd.read_csv(run_dir / "log.csv").dropna(subset=["cond_gain"]).iloc[-1]  # the last validation
    return {"candidate": name, "options": CANDIDATES[name][0], "stage1": CANDIDATES[name][1],
            "unet_steps": args.unet_steps, "controlnet_steps": args.controlnet_steps, "n_val_pairs": args.pairs,
            "n_areas": int(res.per_tile["cluster"].nunique()), "chosen_strength": best,
            "train_min": round(train_s / 60, 1), "persistence": persistence, "rows": rows,
            "last_val_step": int(log["step"]), "cond_gain": float(log["cond_gain"]),
            "control_gain": float(log["control_gain"])}


def write_readme(results: dict) -> None:
    from stsynth_lib.book.report_format import delta_vs_persistence_lines, replace_marked_block

    lines = ["| candidate | diffusion_target | context frames | stage-1 UNet steps | ControlNet steps | train min (UNet + "
             "ControlNet, 1 core) | cond_gain (last validation) | strength chosen (single-sample PSNR) | val pairs "
             "(areas) |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        ctx = r["options"].get("context_offsets_months")
        lines.append(f"| {name} | {r['options']['diffusion_target']} | {len(ctx) if ctx else 1} | {r['unet_steps']} | "
                     f"{r['controlnet_steps']} | {r['train_min']} | {r['cond_gain']:.4f} | {r['chosen_strength']:g} | "
                     f"{r['n_val_pairs']} ({r['n_areas']}) |")
    lines += ["", "| candidate | model | PSNR (dB) | PSNR - persistence | SSIM - persistence | LPIPS - persistence |",
              "|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines += delta_vs_persistence_lines(r["rows"], lead=(name,))
        lines.append(f"| {name} | persistence | {r['persistence']['psnr']:.2f} | | | |")
    replace_marked_block(HERE / "README.md", "\n".join(lines))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", choices=sorted(CANDIDATES), help="the candidate to train, generate and score")
    p.add_argument("--vae-from", help="a trained f2_l8_long VAE folder (vae/final) to seed stage 1 with")
    p.add_argument("--unet-steps", type=int, default=400, help="stage-1 UNet steps (batch 16)")
    p.add_argument("--controlnet-steps", type=int, default=400, help="ControlNet steps (the profile's batch)")
    p.add_argument("--strengths", type=float, nargs="+", default=[0.3, 0.6, 1.0])
    p.add_argument("--samples", type=int, default=4, help="samples per pair at the chosen strength (their mean too)")
    p.add_argument("--pairs", type=int, default=128, help="seeded subset of the validation pairs")
    p.add_argument("--no-lpips", action="store_true")
    p.add_argument("--runs-dir", help="runs folder (default: the profile's)")
    p.add_argument("--out", default=str(HERE / "results" / "targets.json"))
    p.add_argument("--write-readme", action="store_true", help="regenerate the README table from --out")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.name:
        params = profile_params(args.runs_dir)
        run_dir, train_s = train_candidate(args.name, args)
        folders, best = generate(run_dir, args, params)
        row = score(args.name, run_dir, train_s, folders, best, args, params)
        # read just before writing: candidates run side by side each add their own entry
        results = {**(json.loads(out.read_text()) if out.is_file() else {}), args.name: row}
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".{args.name}.tmp")
        tmp.write_text(json.dumps(results, indent=1))
        tmp.replace(out)
        print(json.dumps(row, indent=1))
    if args.write_readme:
        write_readme(json.loads(out.read_text()) if out.is_file() else {})
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
