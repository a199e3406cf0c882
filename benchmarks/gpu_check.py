"""The pipeline's CUDA paths, end to end, on the smoke dataset: does every stage run on a GPU, in mixed precision,
with finite losses, and how fast is it next to this machine's CPU?

Stages (each timed; a failure is recorded with its traceback and the next stage still runs):

1. ``cgan_pix2pix`` / ``cgan_attention``: training with ``device: auto`` (CUDA, channels-last, bf16 autocast where
   the trainer enables it), then predicting the test split on the GPU;
2. ``stage1``: the tiny backbone from scratch (VAE, then UNet), bf16 on CUDA;
3. ``controlnet_bf16``: the ControlNet beside it with synthetic construction (``erase_building_fraction``) and
   ``mixed_precision: bf16``; ``controlnet_fp16``: the same for a few steps in fp16 (the "fp16 NaN" complaint
   about diffusers' example: the loss must stay finite);
4. ``generate``: the segmenter trained on CUDA, the img2img strength chosen by new-building F1 on validation
   (``criterion="f1_new"``), generation of the test split on CUDA, a few samples per pair;
5. ``evaluate``: every model scored with LPIPS and the segmenter on CUDA;
6. ``cpu_reference``: the same cGAN and ControlNet steps on the CPU of the same machine (threads as given), so the
   speed ratio is measured in one run.

    PYTHONUNBUFFERED=1 python benchmarks/gpu_check.py --out $OUT        # on the GPU machine (about 3-5 min)

Writes ``<out>/gpu_check.json`` (one record per stage: ok, seconds, device, dtype, losses, images/s, peak GPU memory;
and ``speed_ratio``: GPU over CPU images/s of the cGAN and ControlNet training steps, one run) and prints each record.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _params(*names: str) -> dict:
    out: dict = {}
    for n in names:
        out.update(yaml.safe_load((ROOT / "params" / "smoke" / f"{n}.yaml").read_text()) or {})
    return out


def _log_tail(run_dir: Path) -> dict:
    import pandas as pd

    p = run_dir / "log.csv"
    if not p.is_file():
        return {}
    df = pd.read_csv(p)
    out = {"log_rows": len(df)}
    for k in ("loss", "loss_G_L1", "loss_G", "loss_D", "images_per_s", "cond_gain", "control_gain", "val_l1"):
        if k in df and df[k].notna().any():
            v = df[k].dropna()
            out[k] = float(v.iloc[-1])
            out[f"{k}_all_finite"] = bool(v.map(math.isfinite).all())
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="gpu_check_out")
    p.add_argument("--runs", default="/tmp/gpu_check_runs")
    p.add_argument("--cgan-steps-epochs", type=int, default=2, help="epochs_constant = epochs_decay")
    p.add_argument("--cpu-threads", type=int, default=2, help="threads of the CPU reference (2 = the dev machine)")
    p.add_argument("--quick", action="store_true", help="a few steps of each stage, no CPU reference: checks the "
                   "script itself (on a machine without a GPU everything then runs on the CPU)")
    p.add_argument("--only", help="comma-separated stage names (the others are skipped)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import torch

    records: list[dict] = []
    env = {"torch": torch.__version__, "cuda": torch.cuda.is_available(),
           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    print(env, flush=True)

    def stage(name, fn):
        t0 = time.perf_counter()
        rec = {"stage": name}
        try:
            rec.update(fn() or {})
            rec["ok"] = True
        except Exception as e:  # record and go on: one report of every stage
            rec.update(ok=False, error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-3000:])
        rec["seconds"] = round(time.perf_counter() - t0, 2)
        if torch.cuda.is_available():
            rec["max_gpu_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
            torch.cuda.reset_peak_memory_stats()
        records.append(rec)
        print(json.dumps({k: v for k, v in rec.items() if k != "traceback"}), flush=True)
        if not rec["ok"]:
            print(rec["traceback"], flush=True)
        (out / "gpu_check.json").write_text(json.dumps({"env": env, "stages": records}, indent=1))
        return rec

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    common = _params("common")
    dataset = common["dataset_dir"]
    if not (ROOT / dataset / "dataset.yaml").is_file() and not Path(dataset, "dataset.yaml").is_file():
        print(f"{dataset} has no tile store: build the smoke data first (make data PROFILE=smoke)", file=sys.stderr)
        return 2
    runs = args.runs

    def cgan(model: str, device: str = "auto", name: str | None = None, epochs: int | None = None):
        from stsynth_lib.cgan.config import CGANTrainConfig
        from stsynth_lib.cgan.train import train_cgan

        prm = {**_params("common", "03_train_cgan"), "model": model, "runs_dir": runs, "device": device,
               "run_name": name or model, "resume_from_checkpoint": None, "progress": False}
        e = 1 if args.quick else (epochs or args.cgan_steps_epochs)
        prm.update(epochs_constant=e, epochs_decay=e)
        run_dir = train_cgan(CGANTrainConfig.from_params(prm))
        rec = {"run": str(run_dir), **_log_tail(run_dir)}
        eff = yaml.safe_load((run_dir / "params.yaml").read_text())
        rec.update({k: eff.get(k) for k in ("device_effective", "mixed_precision_resolved", "compute") if k in eff})
        return rec, run_dir

    def cgan_stage(model):
        def fn():
            from stsynth_lib.cgan.predictor import predict_and_score
            from stsynth_lib.data.dataset import PairedTileDataset

            rec, run_dir = cgan(model)
            ds = PairedTileDataset(dataset, "test")
            df = predict_and_score(run_dir, ds, Path(runs) / "preds" / model, device=dev, progress=False)
            rec.update(test_pairs=len(df), test_psnr=float(df["psnr"].mean()) if "psnr" in df else None)
            return rec
        return fn

    only = set(args.only.split(",")) if args.only else None

    def stage(name, fn, _stage=stage):
        return _stage(name, fn) if only is None or name in only else None

    stage("cgan_pix2pix", cgan_stage("pix2pix"))
    stage("cgan_attention", cgan_stage("attention_unet"))

    cn = _params("common", "05_controlnet")
    quick_stage1 = {"vae_steps": 4, "unet_steps": 4} if args.quick else {}
    if args.quick:
        cn.update(max_train_steps=6, validation_steps=3, checkpointing_steps=3, strength_sweep_pairs=16,
                  num_inference_steps=5)
    state: dict = {}

    def stage1():
        from stsynth_lib.controlnet.adapt import BackboneAdaptConfig, adapt_backbone

        cfg = BackboneAdaptConfig(dataset_dir=dataset, runs_dir=runs, profile="smoke", seed=0, device="auto",
                                  pretrained_model=cn["pretrained_model"],
                                  **{**cn["stage1"], "progress": False, **quick_stage1})
        d = adapt_backbone(cfg)
        state["backbone"] = str(d / "backbone")
        summ = yaml.safe_load((d / "summary.yaml").read_text())
        return {"summary": {k: v for k, v in summ.items() if isinstance(v, (int, float, str))}}

    stage("stage1", stage1)

    def controlnet(precision: str, steps: int, name: str, device: str = "auto"):
        from stsynth_lib.controlnet.config import ControlNetTrainConfig
        from stsynth_lib.controlnet.train import train_controlnet

        prm = {**cn, "runs_dir": runs, "run_name": name, "mixed_precision": precision, "max_train_steps": steps,
               "erase_building_fraction": 0.3, "resume_from_checkpoint": None, "progress": False, "device": device}
        cfg = ControlNetTrainConfig.from_params(prm, pretrained_model=state.get("backbone", "tiny-random"))
        run_dir = train_controlnet(cfg)
        eff = yaml.safe_load((run_dir / "params.yaml").read_text())
        return {"run": str(run_dir), **_log_tail(run_dir),
                **{k: eff.get(k) for k in ("device_resolved", "mixed_precision_resolved", "weight_dtype", "optimizer")}}

    def cn_bf16():
        rec = controlnet("bf16", cn["max_train_steps"], "controlnet")
        state["cn_run"] = rec["run"]
        return rec

    stage("controlnet_bf16", cn_bf16)
    if torch.cuda.is_available():  # fp16 needs CUDA
        stage("controlnet_fp16", lambda: controlnet("fp16", 50, "controlnet_fp16"))

    def generate():
        from stsynth_lib.controlnet.generate import generate_split
        from stsynth_lib.controlnet.strength import sweep_strength

        from stsynth_lib.metrics.segmentation import load_or_train_segmenter

        seg, _, _ = load_or_train_segmenter(runs, "smoke", dataset, device=dev, steps=10 if args.quick else 150,
                                            batch_size=16)
        sw = sweep_strength(state["cn_run"], dataset, cn["img2img_strengths"], split="val", criterion="f1_new",
                            segmenter=seg, max_pairs=cn["strength_sweep_pairs"], allow_uncalibrated=True, eval_device=dev,
                            progress=False, num_inference_steps=cn["num_inference_steps"], device=dev)
        d = generate_split(state["cn_run"], dataset, "test", num_inference_steps=cn["num_inference_steps"],
                           strength=sw.chosen, device=dev, num_samples_per_pair=3, progress=False, batch_size=32)
        import pandas as pd

        return {"chosen_strength": sw.chosen, "test_images": len(pd.read_csv(d / "index.csv")),
                "sweep": sw.table.round(4).to_dict(orient="records")}

    stage("generate", generate)

    def evaluate():
        from stsynth_lib.evaluate import evaluate_models
        from stsynth_lib.metrics.segmentation import load_or_train_segmenter

        seg, _, msg = load_or_train_segmenter(runs, "smoke", dataset, device=dev, steps=10 if args.quick else 150,
                                              batch_size=16)
        folders = {"pix2pix": Path(runs) / "preds" / "pix2pix", "attention_unet": Path(runs) / "preds" / "attention_unet",
                   "controlnet": Path(state["cn_run"]) / "predictions" / "test"}
        res = evaluate_models(dataset, "test", folders, segmenter=seg, device=dev, allow_uncalibrated=True,
                              progress=False)
        summ = res.summary.pivot_table(index="model", columns="metric", values="mean")
        cols = [c for c in ("psnr", "ssim", "lpips", "f1_micro") if c in summ.columns]
        return {"segmenter": msg, "calibrated": {k: bool(v) for k, v in res.calibrated.items()},
                "table": summ[cols].round(4).reset_index().to_dict(orient="records")}

    stage("evaluate", evaluate)

    def cpu_reference():
        torch.set_num_threads(args.cpu_threads)
        rec_g, _ = cgan("pix2pix", device="cpu", name="pix2pix_cpu", epochs=1)
        rec_c = controlnet("no", 40, "controlnet_cpu", device="cpu")
        return {"cgan_cpu": rec_g, "controlnet_cpu": rec_c, "cpu_threads": args.cpu_threads}

    if not args.quick:
        stage("cpu_reference", cpu_reference)
    by = {r["stage"]: r for r in records}
    ref = by.get("cpu_reference", {})
    ratio = {}
    for gpu_stage, cpu_key in (("cgan_pix2pix", "cgan_cpu"), ("controlnet_bf16", "controlnet_cpu")):
        g, c = by.get(gpu_stage, {}).get("images_per_s"), ref.get(cpu_key, {}).get("images_per_s")
        if g and c:
            ratio[gpu_stage] = round(g / c, 2)
    if ratio:
        print("GPU / CPU images per second (same machine, one run):", ratio, flush=True)
        (out / "gpu_check.json").write_text(json.dumps({"env": env, "stages": records, "speed_ratio": ratio}, indent=1))
    ok = all(r["ok"] for r in records)
    print("ALL STAGES OK" if ok else "SOME STAGES FAILED", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
