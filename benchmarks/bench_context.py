"""Benchmark the cost of past-sequence context per cGAN training step: K = 1 (the past image) vs K = 4 frames.

    OMP_NUM_THREADS=1 python benchmarks/bench_context.py --out bench_results    # CPU, and the GPU too when CUDA is available

The sn7_real_128 training setting (``params/sn7_real_128/common.yaml`` + ``03_train_cgan.yaml`` /
``04_train_attention_cgan.yaml``: 128 px tiles, ngf = ndf = 32, batch norm, residual, batch 8), both generators,
K = 1 (``context_offsets_months: null``, today's model) against K = 4
(``context_offsets_months: [0, -1, -2, same_month_last_year]``, with the profile's ``residual_base``: since issue 13's
second round that is the linear start, so K4 rows are not comparable with results files written before it, which
used the seasonal start). Everything is built by the trainer itself
(``CGANRun.build``: datasets, guidance resolved from the dataset, generator, discriminator, optimisers), so the
condition channels are the trainer's. Per training step:

* data: fetch 8 training pairs from ``PairedTileDataset`` (the real store ``data/sn7_real_128/dataset``, or a small
  synthetic 128 px store built with the project's generator when it is missing or with ``--synthetic``), ``collate`` them and apply the
  trainer's batch augmentation (flips/rotations + ``radiometric_jitter``) and ``to_device``;
* compute: one ``train_step`` (D step + G step) on such a batch (fp32 on CPU; on CUDA the trainer's own precision
  and memory format);
* total = data + compute, and the ratio K4 / K1 per generator (the issue's bar: <= 1.5);
* K4a: K = 4 with ``temporal_fusion: attention`` (the learned per-pixel blend of the frames starts the residual,
  :mod:`stsynth_lib.models.temporal`), its ratio to K1 too;
* Kp: the profile's own default (its ``context_offsets_months``, ``residual_base`` and ``temporal_fusion``: K = 6 with
  the linear start since issue 13's second round, reweighted per tile, ``tile_reweight``, since its third, and for
  pix2pix the centred start and inputs, ``linear_centre`` and ``centre_inputs``, since its fourth), its ratio to K1 too.

K1, K4, K4a and Kp are measured in interleaved rounds (the order rotates each round) after a warm-up, and each step is
timed on its own; the table gives medians, so machine noise hits both equally. Writes ``<out>/context.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stsynth_lib.cgan.augment import augment_batch  # noqa: E402
from stsynth_lib.cgan.config import CGANTrainConfig  # noqa: E402
from stsynth_lib.cgan.losses import train_step  # noqa: E402
from stsynth_lib.cgan.train import CGANRun  # noqa: E402
from stsynth_lib.training import collate, epoch_batches, to_device  # noqa: E402

CONTEXT_K4 = [0, -1, -2, "same_month_last_year"]
PARAMS = {"pix2pix": "03_train_cgan.yaml", "attention_unet": "04_train_attention_cgan.yaml"}
REAL_STORE = ROOT / "data" / "sn7_real_128" / "dataset"


def synthetic_store(tmp: Path) -> Path:
    """A small 128 px tile store from the project's synthetic SpaceNet 7 generator (14 months: last year exists)."""
    from stsynth_lib.data.build import build_dataset
    from stsynth_lib.data.sn7 import scan_sn7
    from stsynth_lib.data.synthetic import generate_synthetic_sn7

    root = generate_synthetic_sn7(tmp / "sn7", n_aois=4, n_months=14, size_px=128, cloud_probability=0.3, seed=1,
                                  progress=False)
    out = tmp / "dataset"
    build_dataset(scan_sn7(root, progress=False), out, tile_size_px=128, max_gap_months=12,
                  split_fractions=(0.5, 0.25, 0.25), seed=0, progress=False)
    return out


def trainer_run(model: str, dataset_dir: Path, context, device: str, temporal_fusion: str = "concat") -> CGANRun:
    """The trainer's run for ``model`` with the sn7_real_128 options and ``context_offsets_months=context``
    (``"profile"``: the profile's own offsets, start and ``temporal_fusion``)."""
    params: dict = {}
    for name in ("common.yaml", PARAMS[model]):
        params.update(yaml.safe_load((ROOT / "params" / "sn7_real_128" / name).read_text()))
    cpu = device == "cpu"
    if context == "profile":
        context = params.get("context_offsets_months")
        temporal_fusion = params.get("temporal_fusion", "concat")
    else:  # the K1 / K4 / K4a variants: plain channel stacking or attention, no centre_inputs (K4 keeps the start)
        params["centre_inputs"] = False
    base = params.get("residual_base", "past")
    if (temporal_fusion == "attention" or len(context or ()) < 2
            or (base == "seasonal" and "same_month_last_year" not in context)):
        params["residual_base"] = "past"  # the profile's start needs those frames; attention learns its own
        params["linear_centre"] = "none"
    cfg = CGANTrainConfig.from_params(params, dataset_dir=str(dataset_dir), context_offsets_months=context,
                                      device=device, mixed_precision="no" if cpu else "auto",
                                      channels_last=False if cpu else "auto", progress=False, num_workers=0,
                                      temporal_fusion=temporal_fusion)
    run = CGANRun(cfg)
    run.build()
    run.G.train()
    run.D.train()
    return run


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class Bench:
    """One (model, K) pair: a trainer run and its batch stream, with data and compute timed per step."""

    def __init__(self, run: CGANRun, seed: int = 0):
        self.run, self.cfg = run, run.cfg
        self.batches = [b for e in range(3) for b in epoch_batches(len(run.train_ds), self.cfg.batch_size, e, seed)
                        if len(b) == self.cfg.batch_size]
        self.i = 0

    def data(self) -> tuple[dict, float]:
        """One batch as the trainer gets it, and the seconds it took."""
        run, cfg = self.run, self.cfg
        idx = self.batches[self.i % len(self.batches)]
        t = time.perf_counter()
        batch = collate([run.train_ds[j] for j in idx])
        if cfg.augment:
            seed = cfg.seed * 7919 + self.i * 104729
            batch = augment_batch(batch, torch.Generator().manual_seed(seed), cfg.radiometric_jitter)
        batch = to_device(batch, run.device, run.setup.channels_last)
        _sync(run.device)
        self.i += 1
        return batch, time.perf_counter() - t

    def compute(self, batch: dict) -> float:
        run, cfg = self.run, self.cfg
        _sync(run.device)
        t = time.perf_counter()
        train_step(run.G, run.D, run.opt_g, run.opt_d, batch, run.guidance, cfg.lambda_l1, cfg.gan_mode,
                   run.accelerator, cfg.new_building_l1_weight)
        _sync(run.device)
        return time.perf_counter() - t


def bench_model(model: str, dataset_dir: Path, device: str, rounds: int, steps: int, warmup: int) -> dict:
    benches = {"K1": Bench(trainer_run(model, dataset_dir, None, device)),
               "K4": Bench(trainer_run(model, dataset_dir, CONTEXT_K4, device)),
               "K4a": Bench(trainer_run(model, dataset_dir, CONTEXT_K4, device, temporal_fusion="attention")),
               "Kp": Bench(trainer_run(model, dataset_dir, "profile", device))}
    times = {k: {"data": [], "compute": [], "total": []} for k in benches}
    for k, b in benches.items():  # warm-up (first touches of the store, allocator, kernels): untimed
        for _ in range(warmup):
            b.compute(b.data()[0])
    for r in range(rounds):
        names = list(benches)
        order = names[r % len(names):] + names[: r % len(names)]
        for k in order:
            b = benches[k]
            for _ in range(steps):
                batch, td = b.data()
                tc = b.compute(batch)
                times[k]["data"].append(td)
                times[k]["compute"].append(tc)
                times[k]["total"].append(td + tc)
    out = {"model": model, "device": benches["K1"].run.device.type, "rounds": rounds, "steps_per_round": steps,
           "warmup_steps": warmup, "batch_size": benches["K1"].cfg.batch_size,
           "tile_size_px": benches["K1"].run.train_ds.tile_size_px, "ngf": benches["K1"].cfg.ngf,
           "ndf": benches["K1"].cfg.ndf, "norm": benches["K1"].cfg.norm, "residual": benches["K1"].cfg.residual,
           "precision": benches["K1"].run.setup.mixed_precision}
    for k, b in benches.items():
        med = {f"{part}_s": statistics.median(v) for part, v in times[k].items()}
        out[k] = {"context_offsets_months": b.cfg.context_offsets_months, "temporal_fusion": b.cfg.temporal_fusion,
                  "residual_base": b.run.guidance.residual_base,
                  "condition_channels": b.run.guidance.n_channels,
                  "generator_params_M": sum(p.numel() for p in b.run.G_raw.parameters()) / 1e6,
                  **med, "per_step_s": times[k]}
    for part in ("data", "compute", "total"):
        out[f"ratio_{part}"] = out["K4"][f"{part}_s"] / out["K1"][f"{part}_s"]
        out[f"ratio_{part}_attention"] = out["K4a"][f"{part}_s"] / out["K1"][f"{part}_s"]
        out[f"ratio_{part}_profile"] = out["Kp"][f"{part}_s"] / out["K1"][f"{part}_s"]
    for suffix in ("", "_attention", "_profile"):
        out["within_1_5x" + suffix] = out["ratio_total" + suffix] <= 1.5
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench_results", help="folder for context.json")
    p.add_argument("--dataset-dir", default=None, help=f"tile store (default {REAL_STORE.relative_to(ROOT)}, "
                   "else a synthetic 128 px one)")
    p.add_argument("--synthetic", action="store_true", help="use a synthetic 128 px store even if the real one exists")
    p.add_argument("--rounds", type=int, default=3, help="interleaved K1/K4/K4a rounds")
    p.add_argument("--cpu-steps", type=int, default=12, help="steps per K per round on the CPU")
    p.add_argument("--gpu-steps", type=int, default=20, help="steps per K per round on the GPU")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--no-cpu", action="store_true", help="skip the CPU measurement")
    args = p.parse_args(argv)

    tmp = None
    if args.dataset_dir:
        dataset_dir, source = Path(args.dataset_dir), "given"
    elif (REAL_STORE / "dataset.yaml").is_file() and not args.synthetic:
        dataset_dir, source = REAL_STORE, "sn7_real_128"
    else:
        tmp = tempfile.TemporaryDirectory(prefix="bench_context_")
        dataset_dir, source = synthetic_store(Path(tmp.name)), "synthetic 128 px" + ("" if args.synthetic else " (sn7_real_128 store not found)")
    print(f"tile store: {dataset_dir} ({source})", flush=True)

    devices = [] if args.no_cpu else [("cpu", args.cpu_steps)]
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
        devices.append(("cuda", args.gpu_steps))
    results = []
    for device, steps in devices:
        for model in PARAMS:
            t0 = time.perf_counter()
            r = bench_model(model, dataset_dir, device, args.rounds, steps, args.warmup)
            results.append(r)
            print(f"  {model:15s} {device}: total K4/K1 {r['ratio_total']:.2f}x, "
                  f"K4 attention/K1 {r['ratio_total_attention']:.2f}x, profile default/K1 "
                  f"{r['ratio_total_profile']:.2f}x "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    report = {"benchmark": "context", "torch": torch.__version__, "threads": torch.get_num_threads(),
              "cpu": platform.processor() or platform.machine(), "dataset_dir": str(dataset_dir),
              "dataset_source": source, "context_offsets_months_K4": CONTEXT_K4, "bar_ratio_total": 1.5,
              "results": results}
    if torch.cuda.is_available():
        report["gpu"] = torch.cuda.get_device_name(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "context.json").write_text(json.dumps(report, indent=2))
    if tmp is not None:
        tmp.cleanup()

    print(f"\nPer training step, K=1 vs K=4 {CONTEXT_K4} (4a: temporal_fusion attention; p: the profile's default), "
          f"medians over {args.rounds} interleaved rounds "
          f"(torch {torch.__version__}, {torch.get_num_threads()} CPU threads)")
    head = (f"{'model':15s} {'device':6s} {'K':>2s} {'ch':>3s} {'data ms':>8s} {'compute ms':>11s} {'total ms':>9s}"
            f" {'K4/K1':>6s} {'<=1.5x':>6s}")
    print(head)
    print("-" * len(head))
    for r in results:
        for k, suffix in (("K1", None), ("K4", ""), ("K4a", "_attention"), ("Kp", "_profile")):
            x = r[k]
            ratio = "" if suffix is None else f"{r['ratio_total' + suffix]:.2f}"
            ok = "" if suffix is None else ("yes" if r["within_1_5x" + suffix] else "NO")
            print(f"{r['model']:15s} {r['device']:6s} {k[1:]:>2s} {x['condition_channels']:3d} {x['data_s'] * 1e3:8.1f} "
                  f"{x['compute_s'] * 1e3:11.1f} {x['total_s'] * 1e3:9.1f} {ratio:>6s} {ok:>6s}")
        print(f"{'':15s} {'':6s} K4/K1: data {r['ratio_data']:.2f}x, compute {r['ratio_compute']:.2f}x, "
              f"total {r['ratio_total']:.2f}x; K4a (attention over time)/K1: total {r['ratio_total_attention']:.2f}x; "
              f"Kp ({len(r['Kp']['context_offsets_months'] or [0])} frames, {r['Kp']['residual_base']} start, {r['Kp']['temporal_fusion']})/K1: total "
              f"{r['ratio_total_profile']:.2f}x")
    print(f"wrote {out / 'context.json'}")
    return report


if __name__ == "__main__":
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 1))  # one core unless told more
    main()
