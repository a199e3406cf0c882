"""The project's pix2pix training step and inference against the reference implementation's, side by side.

    python benchmarks/bench_vs_reference.py --out bench_results

Same process, same inputs, interleaved rounds (project, reference, reference, project, ...), each ratio the median
over rounds of project images/s / reference images/s, so machine load hits both sides alike. The reference is
``benchmarks/reference_pix2pix.py`` (pix2pix's ``optimize_parameters`` restated: unet_256/128 + basic PatchGAN, batch
norm, fp32). The project side is the trainer's own ``train_step`` with the same widths (ngf = ndf = 64, batch norm,
dropout 0.5) and the precision and memory format that ``stsynth_lib.training.resolve_device`` picks on this machine
(``--precision`` overrides: bf16 autocast + channels-last is about 1.5x faster on CPUs with native bf16, and ~20x
slower on CPUs without it, where ``auto`` keeps fp32). One thread by default (``--threads``), like a per-process
training run on a small CPU. Writes ``<out>/vs_reference.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from reference_pix2pix import ReferencePix2Pix  # noqa: E402

from stsynth_lib.cgan.losses import train_step  # noqa: E402
from stsynth_lib.conditioning import GuidanceConfig, build_condition  # noqa: E402
from stsynth_lib.models import build_discriminator, build_generator, init_weights  # noqa: E402
from stsynth_lib.training import cpu_has_native_bf16, resolve_device  # noqa: E402


class _Hooks:
    """The three Accelerator hooks ``train_step`` uses, for a plain process."""

    def __init__(self, bf16: bool):
        self.bf16 = bf16

    def autocast(self):
        return torch.autocast("cpu", dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()

    def backward(self, loss):
        loss.backward()

    def unwrap_model(self, m):
        return m


def _inputs(size: int, batch: int, fmt):
    g = torch.Generator().manual_seed(0)
    b = {"past": torch.rand(batch, 3, size, size, generator=g) * 2 - 1,
         "future": torch.rand(batch, 3, size, size, generator=g) * 2 - 1,
         "future_mask": (torch.rand(batch, 1, size, size, generator=g) > 0.8).float(),
         "valid": torch.ones(batch, 1, size, size), "gap_months": torch.full((batch,), 6.0),
         "future_month": torch.full((batch,), 4)}
    return {k: (v.contiguous(memory_format=fmt) if v.ndim == 4 else v) for k, v in b.items()}


def _timed(fn, n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n


def compare(size: int, batch: int, rounds: int, steps: int, precision: str) -> dict:
    """Train and inference images/s of both sides at ``size`` px, interleaved; ratios = median over rounds."""
    setup = resolve_device("cpu", precision, "auto")
    bf16, fmt = setup.mixed_precision == "bf16", (torch.channels_last if setup.channels_last else torch.contiguous_format)
    guidance = GuidanceConfig().resolve(dataset_has_mask=True, n_bands=3)
    torch.manual_seed(0)
    G = init_weights(build_generator("pix2pix", guidance.n_channels, 3, size, ngf=64, norm="batch", dropout=0.5))
    D = init_weights(build_discriminator(guidance.n_channels, 3, ndf=64, n_layers=3, norm="batch"))
    G, D = G.to(memory_format=fmt), D.to(memory_format=fmt)
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    b, hooks = _inputs(size, batch, fmt), _Hooks(bf16)
    ref = ReferencePix2Pix(guidance.n_channels, 3, size)
    real_a = build_condition(_inputs(size, batch, torch.contiguous_format), guidance)
    real_b = _inputs(size, batch, torch.contiguous_format)["future"]
    cond = build_condition(b, guidance).contiguous(memory_format=fmt)

    def project_train():
        train_step(G, D, opt_g, opt_d, b, guidance, 100.0, "vanilla", hooks)

    def project_infer():
        with torch.no_grad(), hooks.autocast():
            G(cond)

    def reference_train():
        ref.optimize_parameters(real_a, real_b)

    def reference_infer():
        with torch.no_grad():
            ref.netG(real_a)

    G.train(), D.train(), ref.netG.train(), ref.netD.train()
    project_train(), reference_train()  # warm-up (oneDNN primitive caches)
    rows = {"train": [], "inference": []}
    for r in range(rounds):
        order = [("project", project_train), ("reference", reference_train)]
        t = {name: _timed(fn, steps) for name, fn in (order if r % 2 == 0 else order[::-1])}
        rows["train"].append({k: batch / v for k, v in t.items()})
    G.eval(), ref.netG.eval()
    project_infer(), reference_infer()
    for r in range(rounds):
        order = [("project", project_infer), ("reference", reference_infer)]
        t = {name: _timed(fn, steps) for name, fn in (order if r % 2 == 0 else order[::-1])}
        rows["inference"].append({k: batch / v for k, v in t.items()})
    out = {"size_px": size, "batch": batch, "rounds": rounds, "steps_per_round": steps, "project_compute": setup.describe()}
    for what, rs in rows.items():
        out[f"{what}_project_img_s"] = statistics.median(x["project"] for x in rs)
        out[f"{what}_reference_img_s"] = statistics.median(x["reference"] for x in rs)
        out[f"{what}_ratio"] = statistics.median(x["project"] / x["reference"] for x in rs)
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench_results")
    p.add_argument("--sizes", default="128,256", help="tile sizes in px, comma-separated")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=2, help="steps per side per round")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--precision", default="auto", choices=["auto", "no", "bf16"], help="the project side's precision")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = [compare(int(s), args.batch, args.rounds, args.steps, args.precision) for s in args.sizes.split(",")]
    report = {"benchmark": "vs_reference", "torch": torch.__version__, "threads": args.threads,
              "cpu": platform.processor() or platform.machine(), "cpu_native_bf16": cpu_has_native_bf16(),
              "results": results}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vs_reference.json").write_text(json.dumps(report, indent=2))
    print(f"\npix2pix step, project vs reference, {args.threads} thread(s), CPU native bf16: {cpu_has_native_bf16()}")
    head = f"{'size':>5s} {'project compute':28s} {'train img/s proj/ref':>22s} {'ratio':>6s} {'infer img/s proj/ref':>22s} {'ratio':>6s}"
    print(head)
    print("-" * len(head))
    for r in results:
        print(f"{r['size_px']:5d} {r['project_compute']:28s} "
              f"{r['train_project_img_s']:10.2f}/{r['train_reference_img_s']:<10.2f}  {r['train_ratio']:5.2f}x "
              f"{r['inference_project_img_s']:10.2f}/{r['inference_reference_img_s']:<10.2f}  {r['inference_ratio']:5.2f}x")
    print(f"wrote {out / 'vs_reference.json'}")
    return report


if __name__ == "__main__":
    main()
