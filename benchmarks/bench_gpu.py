"""GPU throughput, FLOP utilisation and peak memory: pix2pix at 256 px and a ControlNet on Stable Diffusion 1.5's
UNet shapes, with the restated pix2pix reference step on the same device for a ratio.

    make bench-gpu                                   # on a GPU machine (under 8 minutes on one H100)
    python benchmarks/bench_gpu.py --quick           # tiny shapes, any device (CI runs this on a CPU)
    python benchmarks/bench_gpu.py --readme          # rewrite README's speed tables from bench_results/*.json

Rows (each after warm-up, timed with the device synchronised; peak memory from ``torch.cuda.max_memory_allocated``):

* ``pix2pix_train`` / ``pix2pix_infer``: the project's ``train_step`` and generator (ngf = ndf = 64, batch norm,
  256 px, batch 32, bf16 autocast, channels-last), eager and ``torch.compile``\\d; FLOPs per image counted once with
  ``torch.utils.flop_counter`` (a multiply-add = 2 FLOPs), so achieved TFLOP/s = FLOPs x images/s, and the share of
  the device's dense bf16 peak (``PEAK_BF16_TFLOPS``; unknown devices: none).
* ``reference_train`` / ``reference_infer``: ``benchmarks/reference_pix2pix.py`` (pix2pix's step restated, fp32 as
  the reference runs, TF32 convolutions as PyTorch allows by default) at the same size and batch: the ratio row.
* ``controlnet_train``: a ControlNet made from a UNet with Stable Diffusion 1.5's shapes (random weights: no hub
  here), 512 px images = 64 x 64 latents, 77 x 768 text states, bf16 autocast, AdamW on the ControlNet only.
* ``controlnet_sample``: 20 UniPC steps of ControlNet + UNet, and the VAE decoder (SD's shapes) to 512 px images.

``--quick`` shrinks every shape (64 px pix2pix, a 2-level UNet, 32 px latents, 2 steps) so the same code runs on a
CPU in a minute; its numbers mean nothing. Without CUDA and without ``--quick`` it says so and exits 0 (``make bench``
runs every ``bench_*.py``). Results: ``<out>/gpu_bench.json`` with device, date and commit.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from reference_pix2pix import ReferencePix2Pix  # noqa: E402

# dense (no sparsity) bf16 tensor-core peak, TFLOP/s, from the vendors' data sheets
PEAK_BF16_TFLOPS = {"H100 SXM": 989.0, "H100 PCIe": 756.0, "H100 NVL": 835.0, "H200": 989.0, "A100": 312.0,
                    "L40S": 362.0, "L4": 121.0, "RTX 4090": 165.0, "B200": 2250.0}
README_START, README_END = "<!-- speed:start -->", "<!-- speed:end -->"


def device_peak(name: str) -> float | None:
    """The dense bf16 peak of a device from its name (``NVIDIA H100 80GB HBM3`` -> H100 SXM); None if unknown."""
    n = name.upper()
    if "H100" in n:
        return PEAK_BF16_TFLOPS["H100 PCIe" if "PCIE" in n else "H100 NVL" if "NVL" in n else "H100 SXM"]
    for key, peak in PEAK_BF16_TFLOPS.items():
        if key.split()[0].upper() in n and key != "H100 SXM":
            return peak
    return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, steps: int, warmup: int = 2) -> tuple[float, float | None]:
    """(seconds per call, peak memory in GiB over the timed calls; None on a CPU) after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    sec = (time.perf_counter() - t) / steps
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return sec, peak


def count_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def pix2pix_rows(device, size: int, batch: int, steps: int, compile_too: bool) -> list[dict]:
    from bench_vs_reference import _Hooks, _inputs

    from stsynth_lib.cgan.losses import train_step
    from stsynth_lib.conditioning import GuidanceConfig, build_condition
    from stsynth_lib.models import build_discriminator, build_generator, init_weights

    bf16 = device.type == "cuda"
    hooks = _Hooks(False)
    if device.type == "cuda":
        hooks.autocast = lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    fmt = torch.channels_last
    guidance = GuidanceConfig().resolve(dataset_has_mask=True, n_bands=3)
    b = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in _inputs(size, batch, fmt).items()}
    rows = []
    for compiled in ([False, True] if compile_too else [False]):
        torch.manual_seed(0)
        G = init_weights(build_generator("pix2pix", guidance.n_channels, 3, size, ngf=64, norm="batch", dropout=0.5))
        D = init_weights(build_discriminator(guidance.n_channels, 3, ndf=64, n_layers=3, norm="batch"))
        G, D = G.to(device, memory_format=fmt), D.to(device, memory_format=fmt)
        opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
        opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
        Gr, Dr = (torch.compile(G), torch.compile(D)) if compiled else (G, D)
        step = lambda: train_step(Gr, Dr, opt_g, opt_d, b, guidance, 100.0, "vanilla", hooks)  # noqa: E731
        flops = count_flops(lambda: train_step(G, D, opt_g, opt_d, b, guidance, 100.0, "vanilla", hooks)) / batch
        sec, peak = timed(step, device, steps)
        rows.append(_row("pix2pix_train", compiled, batch / sec, flops, peak, size, batch, "bf16" if bf16 else "fp32"))
        G.eval()
        cond = build_condition(b, guidance).contiguous(memory_format=fmt)

        def infer(net=Gr):
            with torch.no_grad(), hooks.autocast():
                return net(cond)

        flops = count_flops(lambda: infer(G)) / batch
        sec, peak = timed(infer, device, steps)
        rows.append(_row("pix2pix_infer", compiled, batch / sec, flops, peak, size, batch, "bf16" if bf16 else "fp32"))
    # the reference step, fp32 as it runs
    torch.manual_seed(0)
    ref = ReferencePix2Pix(guidance.n_channels, 3, size)
    ref.netG.to(device), ref.netD.to(device)
    ref.optimizer_G = torch.optim.Adam(ref.netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
    ref.optimizer_D = torch.optim.Adam(ref.netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
    real_a = build_condition(b, guidance).contiguous()
    real_b = b["future"].contiguous()
    flops = count_flops(lambda: ref.optimize_parameters(real_a, real_b)) / batch
    sec, peak = timed(lambda: ref.optimize_parameters(real_a, real_b), device, steps)
    rows.append(_row("reference_train", False, batch / sec, flops, peak, size, batch, "fp32"))
    ref.netG.eval()

    def ref_infer():
        with torch.no_grad():
            return ref.netG(real_a)

    flops = count_flops(ref_infer) / batch
    sec, peak = timed(ref_infer, device, steps)
    rows.append(_row("reference_infer", False, batch / sec, flops, peak, size, batch, "fp32"))
    return rows


def _row(name, compiled, img_s, flops_per_img, peak_gib, size, batch, precision) -> dict:
    return {"row": name, "compiled": compiled, "images_per_s": img_s, "gflop_per_image": flops_per_img / 1e9,
            "tflop_s": img_s * flops_per_img / 1e12, "peak_memory_gib": peak_gib, "size_px": size, "batch": batch,
            "precision": precision}


def sd15_unet_config(quick: bool) -> dict:
    """Stable Diffusion 1.5's UNet (``runwayml/stable-diffusion-v1-5`` unet/config.json), or a 2-level toy."""
    if quick:
        return dict(sample_size=32, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
                    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, attention_head_dim=8,
                    norm_num_groups=32)
    return dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                block_out_channels=(320, 640, 1280, 1280),
                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                cross_attention_dim=768, attention_head_dim=8)


def controlnet_rows(device, quick: bool, batch: int, steps: int, sample_steps: int) -> list[dict]:
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel, UniPCMultistepScheduler

    cfg = sd15_unet_config(quick)
    latent = cfg["sample_size"]
    image_px = latent * 8
    text_dim, text_len = cfg["cross_attention_dim"], 77
    amp = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else contextlib.nullcontext
    with torch.device(device):
        unet = UNet2DConditionModel(**cfg)
        controlnet = ControlNetModel.from_unet(unet, conditioning_channels=3)
    unet.requires_grad_(False)
    opt = torch.optim.AdamW(controlnet.parameters(), lr=1e-5)
    g = torch.Generator(device="cpu").manual_seed(0)
    lat = torch.randn(batch, 4, latent, latent, generator=g).to(device)
    text = torch.randn(batch, text_len, text_dim, generator=g).to(device)
    cond = torch.rand(batch, 3, image_px, image_px, generator=g).to(device)
    t = torch.randint(0, 1000, (batch,), generator=g).to(device)

    def train():
        opt.zero_grad(set_to_none=True)
        with amp():
            down, mid = controlnet(lat, t, encoder_hidden_states=text, controlnet_cond=cond, return_dict=False)
            pred = unet(lat, t, encoder_hidden_states=text, down_block_additional_residuals=down,
                        mid_block_additional_residual=mid).sample
            loss = torch.nn.functional.mse_loss(pred.float(), lat.float())
        loss.backward()
        opt.step()

    flops = count_flops(train) / batch
    sec, peak = timed(train, device, steps, warmup=1)
    rows = [_row("controlnet_train", False, batch / sec, flops, peak, image_px, batch,
                 "bf16" if device.type == "cuda" else "fp32")]
    vae_cfg = dict(block_out_channels=(32, 64), norm_num_groups=32, latent_channels=4,
                   down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2) if quick else dict(
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    with torch.device(device):
        vae = AutoencoderKL(**vae_cfg)
    scheduler = UniPCMultistepScheduler(num_train_timesteps=1000)

    @torch.no_grad()
    def sample():
        scheduler.set_timesteps(sample_steps, device=device)
        x = torch.randn(batch, 4, latent, latent, generator=g).to(device)
        with amp():
            for step_t in scheduler.timesteps:
                down, mid = controlnet(x, step_t, encoder_hidden_states=text, controlnet_cond=cond, return_dict=False)
                eps = unet(x, step_t, encoder_hidden_states=text, down_block_additional_residuals=down,
                           mid_block_additional_residual=mid).sample
                x = scheduler.step(eps.float(), step_t, x).prev_sample
            return vae.decode(x / 0.18215).sample

    flops = count_flops(sample) / batch
    sec, peak = timed(sample, device, max(1, steps // 2), warmup=1)
    rows.append(_row("controlnet_sample", False, batch / sec, flops, peak, image_px, batch,
                     ("bf16" if device.type == "cuda" else "fp32") + f", {sample_steps} steps"))
    return rows


def gpu_lines(report: dict) -> list[str]:
    """The GPU table: device, date, commit and one line per row of a gpu_bench.json."""
    if not report:
        return ["**GPU**: no GPU benchmark recorded yet (no GPU was lent while this was built); `make bench-gpu` on a GPU "
                "writes `bench_results/gpu_bench.json`."]
    peak = report.get("peak_bf16_tflops")
    lines = [f"**GPU** · {report['device']} · {report['date']} · commit `{report['commit']}` · torch {report['torch']}"
             + (" · quick (toy shapes, numbers mean nothing)" if report.get("quick") else ""), "",
             "| row | compiled | precision | size px | batch | images/s | TFLOP/s | % of bf16 peak | peak GiB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        share = f"{100 * r['tflop_s'] / peak:.1f}" if peak else "n/a"
        lines.append(f"| {r['row']} | {'yes' if r['compiled'] else 'no'} | {r['precision']} | {r['size_px']} | "
                     f"{r['batch']} | {r['images_per_s']:.1f} | {r['tflop_s']:.1f} | {share} | "
                     + (f"{r['peak_memory_gib']:.1f} |" if r["peak_memory_gib"] is not None else "n/a |"))
    lines += [""] + [f"{k}: **{v:.2f}x**  " for k, v in report.get("ratios", {}).items()]
    return lines


def cpu_lines(vs_reference: dict, scene: dict) -> list[str]:
    """The CPU tables from bench_vs_reference.py's and bench_scene.py's results files."""
    lines = []
    if vs_reference:
        bf16 = "native bf16" if vs_reference.get("cpu_native_bf16") else "no native bf16"
        lines += [f"**CPU, pix2pix vs the reference** · {vs_reference.get('cpu', '')} ({bf16}) · "
                  f"{vs_reference.get('threads')} thread(s) · commit `{vs_reference.get('commit', 'unknown')}` · ratio = project / reference images/s, "
                  "median of interleaved rounds", "",
                  "| size px | train (eager) | train (compiled) | inference (eager, fp32) | inference (prepared + "
                  "compiled, fp32: what `Predictor` runs) | inference (the same, `--precision bf16`) |",
                  "|---|---|---|---|---|---|"]
        for r in vs_reference["results"]:
            f = lambda k: f"{r[k]:.2f}x" if k in r else "n/a"  # noqa: E731
            lines.append(f"| {r['size_px']} | {f('train_project_ratio')} | {f('train_project_compiled_ratio')} | "
                         f"{f('inference_project_ratio')} | {f('inference_project_compiled_ratio')} | "
                         f"{f('inference_project_compiled_bf16_ratio')} |")
        lines.append(f"\nTraining runs in the trainer's precision ({vs_reference['results'][0]['project_compute']}).")
        for r in vs_reference["results"]:
            roof = r.get("roofline")
            if roof:  # how far an fp32 route could go at all (bench_vs_reference.py's roofline)
                lines.append(f"At {r['size_px']} px the reference's fp32 inference already runs at "
                             f"{roof['reference_share_of_fp32_peak']:.0%} of this CPU's fp32 convolution throughput "
                             f"({roof['conv_peak_gflops']['fp32']:.0f} GFLOP/s, {r['gflop_per_image']:.1f} GFLOP per "
                             f"image): no fp32 route that keeps pix2pix's arithmetic can exceed "
                             f"{roof['fp32_ratio_ceiling']:.2f}x.")
        lines.append("")
    if scene:
        h, w = scene["scene_px"]
        lines += [f"**CPU, whole scenes** (`python -m stsynth_lib.predict`) · {h} x {w} px · {scene['pairs']} pairs of "
                  f"`{Path(scene['data']).name}` · commit `{scene.get('commit', 'unknown')}` · seconds per scene", "",
                  "| model | today's loop, 1 thread | today's loop, all cores | fast path (fp32), all cores | "
                  "max difference | fast path, `--precision bf16` | its max difference |", "|---|---|---|---|---|---|---|"]
        for r in scene["results"]:
            fast_key = next(k for k in r if k.startswith("fast_") and k[5].isdigit() and k.endswith("_s_per_scene"))
            bf16_key = next((k for k in r if k.startswith("fast_bf16_") and k.endswith("_s_per_scene")), None)
            eager = [r.get(f"loop_eager_{t}t_s_per_scene") for t in (1, scene["cores"])]
            bf16 = (f"{r[bf16_key]:.2f} | {r['bf16_max_abs_diff_grey_levels']} grey level(s)" if bf16_key
                    else "n/a (no native bf16) | n/a")
            lines.append(f"| {r['model']} | {eager[0]:.2f} | {eager[1]:.2f} | {r[fast_key]:.2f} | "
                         f"{r['max_abs_diff_grey_levels']} grey level(s) | {bf16} |")
        lines.append("")
        for r in scene["results"]:
            if "evaluate_fast_s_per_scene" in r:
                lines += [f"`python -m stsynth_lib.evaluate` on the {r['model']} folder with LPIPS and the judge: "
                          f"{r['evaluate_fast_s_per_scene']:.2f} s per scene (judge compiled; "
                          f"{r['evaluate_eager_s_per_scene']:.2f} s eager), per-tile scores "
                          f"{'identical' if r['evaluate_scores_identical'] else 'NOT identical'}.", ""]
    return lines


def speed_block(results: Path) -> str:
    """README's speed block from the committed results files in ``results`` (any that exist)."""
    load = lambda name: json.loads((results / name).read_text()) if (results / name).is_file() else {}  # noqa: E731
    lines = [README_START, "<!-- Generated by `python benchmarks/bench_gpu.py --readme` from bench_results/"
             "{vs_reference,scene,gpu_bench}.json; do not edit by hand. -->", ""]
    lines += cpu_lines(load("vs_reference.json"), load("scene.json")) + gpu_lines(load("gpu_bench.json"))
    return "\n".join(lines + ["", README_END])


def write_readme(results: Path, readme: Path) -> None:
    text = readme.read_text()
    if README_START not in text:
        raise SystemExit(f"{readme} has no {README_START} ... {README_END} block")
    head, rest = text.split(README_START, 1)
    tail = rest.split(README_END, 1)[1]
    readme.write_text(head + speed_block(results) + tail)
    print(f"rewrote the speed tables of {readme} from {results}")


def main(argv=None) -> dict | None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench_results")
    p.add_argument("--quick", action="store_true", help="tiny shapes on any device (a test of the code path)")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--steps", type=int, default=10, help="timed steps per row")
    p.add_argument("--readme", action="store_true", help="only rewrite README.md's speed tables from the results "
                                                         "files in --out (vs_reference, scene, gpu_bench .json)")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.readme:
        write_readme(out, ROOT / "README.md")
        return None
    cuda = torch.cuda.is_available()
    if not cuda and not args.quick:
        print("bench_gpu: no CUDA device here; skipped (make bench-gpu on a GPU machine; --quick runs toy shapes)")
        return None
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if cuda else (platform.processor() or platform.machine())
    steps = 2 if args.quick else args.steps
    t0 = time.perf_counter()
    rows = pix2pix_rows(device, 64 if args.quick else 256, 2 if args.quick else 32, steps,
                        compile_too=not args.no_compile and (cuda or not args.quick))
    rows += controlnet_rows(device, args.quick, 1 if args.quick else 8, steps, 2 if args.quick else 20)
    by = {(r["row"], r["compiled"]): r for r in rows}
    best_train = max(r["images_per_s"] for r in rows if r["row"] == "pix2pix_train")
    best_infer = max(r["images_per_s"] for r in rows if r["row"] == "pix2pix_infer")
    from stsynth_lib.book.publish.stamp import head_commit

    report = {"benchmark": "gpu", "device": name, "peak_bf16_tflops": device_peak(name) if cuda else None,
              "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "commit": head_commit(ROOT) or "unknown", "torch": torch.__version__, "quick": args.quick,
              "seconds": round(time.perf_counter() - t0, 1), "rows": rows,
              "ratios": {"pix2pix train, project (best) / reference": best_train / by[("reference_train", False)]["images_per_s"],
                         "pix2pix inference, project (best) / reference": best_infer / by[("reference_infer", False)]["images_per_s"]}}
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_bench.json").write_text(json.dumps(report, indent=2))
    print("\n".join(gpu_lines(report)))
    print(f"wrote {out / 'gpu_bench.json'} in {report['seconds']} s")
    return report


if __name__ == "__main__":
    main()
