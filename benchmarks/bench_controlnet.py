"""ControlNet speed: training images/s and generation images/s (per denoising step count).

    python benchmarks/bench_controlnet.py --out bench_results [--threads 1] [--quick]

CPU: the tiny random Stable Diffusion at 64 px. GPU (when present): Stable Diffusion 1.5's architecture with random
weights at 512 px (same FLOPs and memory as the real model; no download), in bf16 and fp16.

Training is measured three ways on the same models and batch size:

* ``stsynth loop``: ``train_controlnet`` end to end (data loading from the tile store, prompts from metadata,
  conditioning, masked fp32 loss, optimizer), its own images/s over the run (CPU only: needs the smoke dataset);
* ``stsynth step``: one training step of that loop on a batch already in memory;
* ``diffusers example step``: the step of diffusers' ``examples/controlnet/train_controlnet.py`` (v0.3x), restated
  line by line on the same tensors. The example script is not shipped in the diffusers wheel and needs its own
  dataset format, so it is not run as is; its step is what decides its speed.

Writes ``<out>/controlnet.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stsynth_lib.controlnet.backbone import build_random_sd15, build_tiny_sd  # noqa: E402
from stsynth_lib.controlnet.conditioning import apply_prompt_dropout  # noqa: E402
from stsynth_lib.controlnet.generate import encode_prompts, make_scheduler, sample_images  # noqa: E402
from stsynth_lib.controlnet.losses import diffusion_loss  # noqa: E402


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timeit(fn, n_warmup: int, n_iter: int, device) -> float:
    """Median seconds per call."""
    for _ in range(n_warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(n_iter):
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]


def fake_batch(b: int, size: int, n_cond: int, device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return {
        "pixels": (torch.rand(b, 3, size, size, generator=g) * 2 - 1).to(device),
        "cond": torch.rand(b, n_cond, size, size, generator=g).to(device),
        "valid": torch.ones(b, 1, size, size).to(device),
        "prompts": ["satellite image, July 2018, 3 months later, 12 new buildings"] * b,
    }


def make_models(backbone, n_cond: int, device, weight_dtype, gradient_checkpointing: bool):
    from accelerate import Accelerator
    from diffusers import ControlNetModel

    backbone.freeze()
    cn = ControlNetModel.from_unet(backbone.unet, conditioning_channels=n_cond)
    if gradient_checkpointing:
        cn.enable_gradient_checkpointing()
        backbone.unet.enable_gradient_checkpointing()
    from accelerate.state import AcceleratorState

    mp = {torch.float32: "no", torch.float16: "fp16", torch.bfloat16: "bf16"}[weight_dtype]
    AcceleratorState._reset_state(reset_partial_state=True)  # one process: switch device / precision between rows
    acc = Accelerator(mixed_precision=mp, cpu=device.type == "cpu")
    backbone.to(device, weight_dtype)
    cn.train()
    opt = torch.optim.AdamW(cn.parameters(), lr=1e-5)
    cn, opt = acc.prepare(cn, opt)
    return acc, cn, opt


def stsynth_step(acc, backbone, cn, opt, batch, weight_dtype):
    prompts = apply_prompt_dropout(batch["prompts"], 0.5, torch.Generator().manual_seed(0))
    emb = encode_prompts(backbone, prompts, acc.device, weight_dtype)
    loss = diffusion_loss(backbone, cn, batch["pixels"], batch["cond"], emb, batch["valid"], weight_dtype)
    if not torch.isfinite(loss):
        raise FloatingPointError("NaN loss in benchmark")
    acc.backward(loss)
    acc.clip_grad_norm_(cn.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)


def example_step(acc, backbone, cn, opt, batch, weight_dtype, input_ids):
    """diffusers examples/controlnet/train_controlnet.py, the body of its training loop (epsilon prediction)."""
    vae, unet, text_encoder, noise_scheduler = backbone.vae, backbone.unet, backbone.text_encoder, backbone.noise_scheduler
    # the example casts the VAE to the weight dtype; here both steps share the fp32 VAE so the rest is compared
    latents = vae.encode(batch["pixels"].to(dtype=vae.dtype)).latent_dist.sample()
    latents = latents * vae.config.scaling_factor
    noise = torch.randn_like(latents)
    bsz = latents.shape[0]
    timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (bsz,), device=latents.device).long()
    noisy_latents = noise_scheduler.add_noise(latents.float(), noise.float(), timesteps).to(dtype=weight_dtype)
    encoder_hidden_states = text_encoder(input_ids, return_dict=False)[0]
    controlnet_image = batch["cond"].to(dtype=weight_dtype)
    down_block_res_samples, mid_block_res_sample = cn(
        noisy_latents, timesteps, encoder_hidden_states=encoder_hidden_states, controlnet_cond=controlnet_image,
        return_dict=False)
    model_pred = unet(noisy_latents, timesteps, encoder_hidden_states=encoder_hidden_states,
                      down_block_additional_residuals=[s.to(dtype=weight_dtype) for s in down_block_res_samples],
                      mid_block_additional_residual=mid_block_res_sample.to(dtype=weight_dtype), return_dict=False)[0]
    loss = F.mse_loss(model_pred.float(), noise.float(), reduction="mean")
    acc.backward(loss)
    acc.clip_grad_norm_(cn.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)


def bench_training(backbone, label, size, batch_size, device, weight_dtype, n_iter, gradient_checkpointing=False):
    n_cond = 5
    acc, cn, opt = make_models(backbone, n_cond, device, weight_dtype, gradient_checkpointing)
    batch = fake_batch(batch_size, size, n_cond, device)
    ids = backbone.tokenizer(batch["prompts"], padding="max_length", max_length=77, truncation=True,
                             return_tensors="pt").input_ids.to(device)
    rows = []
    for impl, fn in (("stsynth step", lambda: stsynth_step(acc, backbone, cn, opt, batch, weight_dtype)),
                     ("diffusers example step", lambda: example_step(acc, backbone, cn, opt, batch, weight_dtype, ids))):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        s = _timeit(fn, 2, n_iter, device)
        row = {"what": "train", "impl": impl, "backbone": label, "resolution_px": size, "batch": batch_size,
               "dtype": str(weight_dtype).replace("torch.", ""), "gradient_checkpointing": gradient_checkpointing,
               "s_per_step": s, "images_per_s": batch_size / s}
        if device.type == "cuda":
            row["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
        rows.append(row)
    del acc, cn, opt
    return rows


def bench_generation(backbone, label, size, batch_size, device, weight_dtype, steps_list, guidance_list, n_iter):
    from diffusers import ControlNetModel

    cn = ControlNetModel.from_unet(backbone.unet, conditioning_channels=5).eval()
    backbone.freeze().to(device, weight_dtype)
    cn.to(device) if weight_dtype == torch.float32 else cn.to(device, weight_dtype)
    batch = fake_batch(batch_size, size, 5, device)
    rows = []
    for gs in guidance_list:
        for steps in steps_list:
            sched = make_scheduler("unipc", backbone.noise_scheduler.config)
            fn = lambda: sample_images(backbone, cn, batch["cond"], batch["prompts"], sched, steps, gs,  # noqa: E731
                                       seeds=list(range(batch_size)), weight_dtype=weight_dtype)
            s = _timeit(fn, 1, n_iter, device)
            rows.append({"what": "generate", "impl": "stsynth sample_images (UniPC)", "backbone": label,
                         "resolution_px": size, "batch": batch_size, "dtype": str(weight_dtype).replace("torch.", ""),
                         "steps": steps, "guidance_scale": gs, "s_per_batch": s, "images_per_s": batch_size / s})
    return rows


def bench_loop(dataset_dir: Path, out: Path, steps: int, batch_size: int) -> list[dict]:
    """train_controlnet end to end on the smoke dataset (CPU), its own measured images/s."""
    import tempfile

    import yaml

    from stsynth_lib.controlnet.train import ControlNetTrainConfig, train_controlnet

    if not (dataset_dir / "dataset.yaml").is_file():
        return [{"what": "train", "impl": "stsynth loop", "skipped": f"no dataset at {dataset_dir} (make data)"}]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = ControlNetTrainConfig(dataset_dir=str(dataset_dir), runs_dir=tmp, profile="bench", max_train_steps=steps,
                                    train_batch_size=batch_size, validation_steps=0, validate_at_start=False,
                                    checkpointing_steps=0, log_every_steps=steps, progress=False, device="cpu")
        t = time.perf_counter()
        run = train_controlnet(cfg)
        wall = time.perf_counter() - t
        summ = yaml.safe_load((run / "summary.yaml").read_text())
        size = yaml.safe_load((run / "params.yaml").read_text())["tile_size_px"]
    return [{"what": "train", "impl": "stsynth loop (train_controlnet, data + prompts)", "backbone": "tiny-random",
             "resolution_px": size, "batch": batch_size, "dtype": "float32", "steps": steps,
             "images_per_s": summ["images_per_s"], "wall_s_incl_setup": wall}]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="bench_results")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--quick", action="store_true", help="fewer iterations (CI)")
    ap.add_argument("--dataset-dir", default=str(ROOT / "data" / "smoke" / "dataset"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    n_iter = 3 if args.quick else 10
    import diffusers

    res = {"torch": torch.__version__, "diffusers": diffusers.__version__, "python": platform.python_version(),
           "cpu_threads": torch.get_num_threads(), "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
           "rows": []}
    cpu = torch.device("cpu")
    tiny = build_tiny_sd()
    res["rows"] += bench_training(tiny, "tiny-random", 64, 8, cpu, torch.float32, n_iter)
    res["rows"] += bench_loop(Path(args.dataset_dir), Path(args.out), 20 if args.quick else 60, 8)
    res["rows"] += bench_generation(build_tiny_sd(), "tiny-random", 64, 8, cpu, torch.float32,
                                    [10, 20] if args.quick else [10, 20, 50], [1.0, 3.0], max(2, n_iter // 3))
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        dtypes = [torch.bfloat16, torch.float16] if torch.cuda.is_bf16_supported() else [torch.float16]
        label = "sd15-architecture-random"
        for dt in dtypes:
            for gc_on in (False, True):
                try:
                    sd = build_random_sd15()
                    res["rows"] += bench_training(sd, label, 512, 4, gpu, dt, n_iter, gc_on)
                except Exception as e:  # e.g. OOM or fp16 overflow of random weights: record, go on
                    res["rows"].append({"what": "train", "impl": f"stsynth/example step gc={gc_on}", "backbone": label,
                                        "dtype": str(dt), "skipped": f"{type(e).__name__}: {str(e)[:200]}"})
                sd = None
                torch.cuda.empty_cache()
            try:
                sd = build_random_sd15()
                res["rows"] += bench_generation(sd, label, 512, 4, gpu, dt, [20, 50], [1.0, 7.5], 2)
            except Exception as e:
                res["rows"].append({"what": "generate", "impl": "stsynth sample_images", "backbone": label,
                                    "dtype": str(dt), "skipped": f"{type(e).__name__}: {str(e)[:200]}"})
            sd = None
            torch.cuda.empty_cache()
    else:
        res["gpu_note"] = "no CUDA device: the 512 px SD 1.5 rows were not measured"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "controlnet.json").write_text(json.dumps(res, indent=2))
    print(f"ControlNet benchmark (torch {res['torch']}, diffusers {res['diffusers']}, {res['cpu_threads']} CPU threads"
          f"{', ' + res['cuda'] if res['cuda'] else ''})")
    print(f"{'what':9s} {'impl':48s} {'backbone':26s} {'px':>4s} {'B':>3s} {'dtype':8s} {'steps':>5s} {'cfg':>4s} {'img/s':>8s}")
    for r in res["rows"]:
        if "skipped" in r:
            print(f"{r['what']:9s} {r['impl']:48s} skipped: {r['skipped']}")
            continue
        steps = str(r.get("steps", "")) if r["what"] == "generate" else ""
        cfg = f"{r['guidance_scale']:.1f}" if "guidance_scale" in r else ""
        impl = r["impl"] + (" +gc" if r.get("gradient_checkpointing") else "")
        print(f"{r['what']:9s} {impl:48s} {r['backbone']:26s} {r['resolution_px']:4d} {r['batch']:3d} {r['dtype']:8s} "
              f"{steps:>5s} {cfg:>4s} {r['images_per_s']:8.2f}")
    if "gpu_note" in res:
        print(res["gpu_note"])
    print(f"-> {out / 'controlnet.json'}")
    return res


if __name__ == "__main__":
    main()
