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

Project routes, each timed in the same interleaved rounds against the reference:

* inference in fp32, as ``Predictor`` runs (whatever ``--precision``): ``eager`` (the generator as trained), ``prepared`` (``stsynth_lib.models.inference.prepare_for_inference``:
  batch norm folded, phase transposed convolutions on the small levels) and ``compiled`` (the same + ``torch.compile``
  with frozen weights: what ``Predictor`` runs on a CPU); the largest output difference to ``eager`` is printed; on a
  CPU with native bf16 also ``bf16`` and ``compiled_bf16`` (autocast; informational: predictions stay fp32);
* training ``eager`` (the trainer's step) and ``compiled`` (``torch.compile`` of G and D, then the same step);
  ``--no-compile`` skips the compiled routes.

**How far fp32 can go** (``roofline`` in the results): the generator's floating-point operations per image (PyTorch's
``FlopCounterMode``), the throughput oneDNN reaches on this CPU on one large fp32 (and bf16) convolution (512 -> 512
channels, 3 x 3, 32 px, batch 4: a compute-bound shape, taken as the practical peak), the fraction of that peak the
reference's inference reaches, and ``fp32_ratio_ceiling`` = peak / reference throughput: no fp32 route that keeps
pix2pix's arithmetic can be faster than that ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from reference_pix2pix import ReferencePix2Pix  # noqa: E402

from stsynth_lib.book.publish.stamp import head_commit  # noqa: E402
from stsynth_lib.cgan.losses import train_step  # noqa: E402
from stsynth_lib.conditioning import GuidanceConfig, build_condition  # noqa: E402
from stsynth_lib.models import build_discriminator, build_generator, init_weights  # noqa: E402
from stsynth_lib.models.inference import prepare_for_inference  # noqa: E402
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


def _interleaved(routes: dict, rounds: int, steps: int, batch: int) -> list[dict]:
    """Images/s of every route per round; the order of the routes alternates between rounds."""
    rows = []
    for r in range(rounds):
        order = list(routes.items()) if r % 2 == 0 else list(routes.items())[::-1]
        rows.append({name: batch / _timed(fn, steps) for name, fn in order})
    return rows


def conv_peak_gflops(dtype=torch.float32, rounds: int = 5) -> float:
    """GFLOP/s of oneDNN on one compute-bound convolution (512 -> 512 channels, 3 x 3, 32 x 32 px, batch 4), the best
    of ``rounds``: the practical peak of this CPU at ``dtype`` for the convolutions a U-Net is made of."""
    conv = torch.nn.Conv2d(512, 512, 3, padding=1).eval()
    x = torch.randn(4, 512, 32, 32)
    flops = 2 * 4 * 512 * 512 * 9 * 32 * 32
    best = 0.0
    with torch.no_grad(), (torch.autocast("cpu", dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()):
        conv(x)
        for _ in range(rounds):
            t = time.perf_counter()
            conv(x)
            best = max(best, flops / (time.perf_counter() - t) / 1e9)
    return best


def generator_gflop_per_image(G: torch.nn.Module, cond: torch.Tensor) -> float:
    """Floating-point operations of one forward pass per image, in GFLOP (convolutions and matmuls)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        G(cond)
    return counter.get_total_flops() / cond.shape[0] / 1e9


def compare(size: int, batch: int, rounds: int, steps: int, precision: str, with_compile: bool = True) -> dict:
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

    train = {"project": lambda: train_step(G, D, opt_g, opt_d, b, guidance, 100.0, "vanilla", hooks),
             "reference": lambda: ref.optimize_parameters(real_a, real_b)}
    if with_compile:  # a copy of G and D with their own optimisers: the eager route's weights stay its own
        Gc, Dc = torch.compile(copy.deepcopy(G)), torch.compile(copy.deepcopy(D))
        oc_g = torch.optim.Adam(Gc.parameters(), lr=2e-4, betas=(0.5, 0.999))
        oc_d = torch.optim.Adam(Dc.parameters(), lr=2e-4, betas=(0.5, 0.999))
        train["project_compiled"] = lambda: train_step(Gc, Dc, oc_g, oc_d, b, guidance, 100.0, "vanilla", hooks)
    G.train(), D.train(), ref.netG.train(), ref.netD.train()
    compile_s = {}
    for name, fn in train.items():  # warm-up (oneDNN primitive caches; compilation)
        t = time.perf_counter()
        fn()
        compile_s[f"train_{name}"] = time.perf_counter() - t
    rows = {"train": _interleaved(train, rounds, steps, batch)}

    G.eval(), ref.netG.eval()
    with torch.no_grad():
        prepared = prepare_for_inference(G, channels_last=setup.channels_last)
        infer = {"project": lambda: G(cond), "project_prepared": lambda: prepared(cond),
                 "reference": lambda: ref.netG(real_a)}
        if with_compile:
            compiled = prepare_for_inference(G, compile=True, channels_last=setup.channels_last)
            infer["project_compiled"] = lambda: compiled(cond)
        if bf16:  # informational: bf16 autocast (what the trainer's precision would give; not the Predictor's fp32)
            def autocast(fn):
                def run():
                    with hooks.autocast():
                        return fn()
                return run

            infer["project_bf16"] = autocast(infer["project"])
            if with_compile:
                infer["project_compiled_bf16"] = autocast(infer["project_compiled"])
        eager_out = G(cond).float()
        diffs = {}
        for name, fn in infer.items():
            t = time.perf_counter()
            out = fn()
            compile_s[f"inference_{name}"] = time.perf_counter() - t
            if name != "reference":
                diffs[name] = float((out.float() - eager_out).abs().max())
        rows["inference"] = _interleaved(infer, rounds, steps, batch)
        gflop = generator_gflop_per_image(G, cond)
    out = {"size_px": size, "batch": batch, "rounds": rounds, "steps_per_round": steps, "gflop_per_image": gflop,
           "project_compute": setup.describe(), "max_abs_diff_vs_eager": diffs,
           "first_call_s": {k: round(v, 2) for k, v in compile_s.items()}}
    for what, rs in rows.items():
        out[f"{what}_reference_img_s"] = statistics.median(x["reference"] for x in rs)
        for name in rs[0]:
            if name == "reference":
                continue
            key = f"{what}_{name}"
            out[f"{key}_img_s"] = statistics.median(x[name] for x in rs)
            out[f"{key}_ratio"] = statistics.median(x[name] / x["reference"] for x in rs)
    # the keys earlier results files used
    out["train_ratio"], out["inference_ratio"] = out["train_project_ratio"], out["inference_project_ratio"]
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
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile routes")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = [compare(int(s), args.batch, args.rounds, args.steps, args.precision, not args.no_compile)
               for s in args.sizes.split(",")]
    peak = {"fp32": conv_peak_gflops(torch.float32)}
    if cpu_has_native_bf16():
        peak["bf16"] = conv_peak_gflops(torch.bfloat16)
    for r in results:
        ref_gflops = r["inference_reference_img_s"] * r["gflop_per_image"]
        r["roofline"] = {"conv_peak_gflops": peak, "reference_gflops": ref_gflops,
                         "reference_share_of_fp32_peak": ref_gflops / peak["fp32"],
                         "fp32_ratio_ceiling": peak["fp32"] / ref_gflops}
    report = {"commit": head_commit(ROOT) or "unknown", "benchmark": "vs_reference", "torch": torch.__version__,
              "threads": args.threads,
              "cpu": platform.processor() or platform.machine(), "cpu_native_bf16": cpu_has_native_bf16(),
              "results": results}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vs_reference.json").write_text(json.dumps(report, indent=2))
    print(f"\npix2pix, project vs reference (images/s, ratio = project / reference), {args.threads} thread(s), "
          f"CPU native bf16: {cpu_has_native_bf16()}")
    for r in results:
        print(f"{r['size_px']} px, batch {r['batch']}, {r['project_compute']}: reference train {r['train_reference_img_s']:.2f}, "
              f"inference {r['inference_reference_img_s']:.2f} img/s")
        for what in ("train", "inference"):
            for name in ("project", "project_prepared", "project_compiled", "project_bf16", "project_compiled_bf16"):
                if f"{what}_{name}_ratio" in r:
                    diff = r["max_abs_diff_vs_eager"].get(name) if what == "inference" else None
                    print(f"    {what:9s} {name:17s} {r[f'{what}_{name}_img_s']:8.2f} img/s  {r[f'{what}_{name}_ratio']:5.2f}x"
                          + (f"   max |diff| vs eager {diff:.1e}" if diff is not None and name != "project" else ""))
        roof = r["roofline"]
        print(f"    roofline: {r['gflop_per_image']:.2f} GFLOP per image; reference inference at "
              f"{roof['reference_gflops']:.0f} GFLOP/s = {roof['reference_share_of_fp32_peak']:.0%} of this CPU's fp32 "
              f"convolution peak ({peak['fp32']:.0f} GFLOP/s"
              + (f"; bf16 {peak['bf16']:.0f}" if "bf16" in peak else "")
              + f"): no fp32 route can exceed {roof['fp32_ratio_ceiling']:.2f}x")
    print(f"wrote {out / 'vs_reference.json'}")
    return report


if __name__ == "__main__":
    main()
