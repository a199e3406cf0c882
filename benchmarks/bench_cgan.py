"""Benchmark the cGAN generators at 256 px: training images/s and generator inference images/s.

    python benchmarks/bench_cgan.py --out bench_results            # CPU, and the GPU too when CUDA is available

Both generators (pix2pix U-Net, attention U-Net) at pix2pix's widths (ngf = ndf = 64), a 7-channel condition
(RGB + mask + gap + month sin/cos), synthetic batches (the data loader is benchmarked by the data chapter).
A training step is the trainer's own ``train_step`` (D step + G step). On CUDA: bf16 autocast and channels-last,
as the trainer uses them, and the utilisation estimate = achieved FLOP/s (counted with
``torch.utils.flop_counter``) / the GPU's dense bf16 peak. Writes ``<out>/cgan.json`` and prints a table;
compare numbers within one run (one machine, one load), e.g. the attention/pix2pix ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stsynth_lib.conditioning import GuidanceConfig  # noqa: E402
from stsynth_lib.models import build_discriminator, build_generator, init_weights  # noqa: E402
from stsynth_lib.cgan.losses import train_step  # noqa: E402

# dense (no sparsity) bf16 tensor-core peaks, FLOP/s
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12, "L40": 181e12,
             "V100": 125e12, "T4": 65e12, "RTX 4090": 165e12}


def peak_flops(name: str) -> float | None:
    for key, v in PEAK_BF16.items():
        if key in name:
            return v
    return None


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _seconds_per_call(fn, warmup: int, steps: int, device) -> float:
    """Mean wall time of ``fn()`` over ``steps`` calls after ``warmup`` untimed ones (device synchronised)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    return (time.perf_counter() - t) / steps


def count_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return int(fc.get_total_flops())


def bench_one(name: str, device: torch.device, size: int, batch: int, steps: int, warmup: int, ngf: int) -> dict:
    guidance = GuidanceConfig().resolve(dataset_has_mask=True, n_bands=3)
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    G = init_weights(build_generator(name, guidance.n_channels, 3, size, ngf=ngf)).to(device)
    D = init_weights(build_discriminator(guidance.n_channels, 3, ndf=ngf)).to(device)
    fmt = torch.channels_last if cuda else torch.contiguous_format
    G, D = G.to(memory_format=fmt), D.to(memory_format=fmt)
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    b = {
        "past": (torch.rand(batch, 3, size, size, device=device) * 2 - 1).contiguous(memory_format=fmt),
        "future": (torch.rand(batch, 3, size, size, device=device) * 2 - 1).contiguous(memory_format=fmt),
        "future_mask": (torch.rand(batch, 1, size, size, device=device) > 0.8).float(),
        "valid": torch.ones(batch, 1, size, size, device=device),
        "gap_months": torch.full((batch,), 6.0, device=device),
        "future_month": torch.full((batch,), 4, device=device),
    }
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else contextlib.nullcontext

    class _Acc:  # the two hooks train_step needs from an Accelerator
        def autocast(self):
            return autocast()

        def backward(self, loss):
            loss.backward()

        def unwrap_model(self, m):
            return m

    acc = _Acc()
    step = lambda: train_step(G, D, opt_g, opt_d, b, guidance, 100.0, "vanilla", acc)  # noqa: E731
    train_s = _seconds_per_call(step, warmup, steps, device)
    train_flops = count_flops(step)

    from stsynth_lib.conditioning import build_condition

    cond = build_condition(b, guidance).contiguous(memory_format=fmt)
    G.eval()

    def infer():
        with torch.no_grad(), autocast():
            return G(cond)

    infer_s = _seconds_per_call(infer, warmup, steps, device)
    infer_flops = count_flops(infer)
    out = {
        "model": name, "device": device.type, "tile_size_px": size, "batch_size": batch, "ngf": ngf,
        "generator_params_M": sum(p.numel() for p in G.parameters()) / 1e6,
        "train_images_per_s": batch / train_s, "inference_images_per_s": batch / infer_s,
        "train_step_GFLOP": train_flops / 1e9, "inference_GFLOP_per_batch": infer_flops / 1e9,
        "train_achieved_TFLOPs": train_flops / train_s / 1e12, "inference_achieved_TFLOPs": infer_flops / infer_s / 1e12,
        "precision": "bf16 autocast" if cuda else "fp32",
    }
    if cuda:
        name_gpu = torch.cuda.get_device_name(device)
        peak = peak_flops(name_gpu)
        out.update({"gpu": name_gpu, "peak_bf16_TFLOPs": peak / 1e12 if peak else None,
                    "train_utilisation": train_flops / train_s / peak if peak else None,
                    "inference_utilisation": infer_flops / infer_s / peak if peak else None,
                    "max_memory_GiB": torch.cuda.max_memory_allocated(device) / 2**30})
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench_results", help="folder for cgan.json")
    p.add_argument("--size", type=int, default=256, help="tile size in px")
    p.add_argument("--ngf", type=int, default=64)
    p.add_argument("--cpu-batch", type=int, default=2)
    p.add_argument("--cpu-steps", type=int, default=3)
    p.add_argument("--gpu-batch", type=int, default=32)
    p.add_argument("--gpu-steps", type=int, default=20)
    p.add_argument("--no-cpu", action="store_true", help="skip the CPU measurement")
    args = p.parse_args(argv)

    results = []
    devices = [] if args.no_cpu else [(torch.device("cpu"), args.cpu_batch, args.cpu_steps, 1)]
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
        devices.append((torch.device("cuda"), args.gpu_batch, args.gpu_steps, 3))
    for device, batch, steps, warmup in devices:
        for name in ("pix2pix", "attention_unet"):
            r = bench_one(name, device, args.size, batch, steps, warmup, args.ngf)
            results.append(r)
            print(f"  {name:15s} {device.type}: train {r['train_images_per_s']:.2f} img/s, "
                  f"inference {r['inference_images_per_s']:.2f} img/s", flush=True)
    ratios = {}
    for dev in {r["device"] for r in results}:
        rs = {r["model"]: r for r in results if r["device"] == dev}
        ratios[dev] = {k: rs["attention_unet"][k] / rs["pix2pix"][k] for k in ("train_images_per_s", "inference_images_per_s")}
    report = {"benchmark": "cgan", "torch": torch.__version__, "threads": torch.get_num_threads(),
              "cpu": platform.processor() or platform.machine(), "results": results,
              "attention_over_pix2pix_speed": ratios}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cgan.json").write_text(json.dumps(report, indent=2))

    head = f"{'model':15s} {'device':6s} {'batch':>5s} {'train img/s':>12s} {'infer img/s':>12s} {'train TFLOP/s':>14s} {'util':>6s}"
    print(f"\ncGAN generators at {args.size} px (ngf {args.ngf}), torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print(head)
    print("-" * len(head))
    for r in results:
        util = r.get("train_utilisation")
        print(f"{r['model']:15s} {r['device']:6s} {r['batch_size']:5d} {r['train_images_per_s']:12.2f} "
              f"{r['inference_images_per_s']:12.2f} {r['train_achieved_TFLOPs']:14.3f} "
              f"{(f'{util:.0%}' if util is not None else 'n/a'):>6s}")
    for dev, rr in ratios.items():
        print(f"attention / pix2pix speed on {dev}: train {rr['train_images_per_s']:.2f}x, inference {rr['inference_images_per_s']:.2f}x")
    print(f"wrote {out / 'cgan.json'}")
    return report


if __name__ == "__main__":
    main()
