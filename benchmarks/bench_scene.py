"""Seconds per whole SpaceNet 7 scene (1023 x 1024 px) for ``python -m stsynth_lib.predict``, today's loop vs the
fast path, per cGAN family; the fast path's predictions checked against the eager ones.

    python benchmarks/bench_scene.py --out bench_results            # ../shared/data/sn7_real_labelled if present
    python benchmarks/bench_scene.py --data /path/to/SN7_tree --pairs 8

Models: the architecture of each ``params/<profile>/0[34]_train_*.yaml`` (default ``sn7_labelled``: pix2pix and
attention U-Net, ngf 32, batch norm, residual, future + past footprints, 128 px tiles; ``--profile sn7_real_128`` adds
the 6 context frames read from the tree), with seeded random weights and batch-norm statistics (speed does not
depend on training; a non-zero output layer so the outputs are not the past image). Routes, each over the same pairs:

* ``loop_eager`` (the code before the fast path): per pair, read the image, rasterise its footprints, tile, predict
  with the eager generator, stitch, write; ``--baseline-threads`` (default 1 and 2) torch threads;
* ``fast_bf16`` (on a CPU with native bf16): the same with ``--precision bf16`` (opt-in: not fp32's numbers);
* ``fast``: ``stsynth_lib.predict.tree.predict_tree`` as the CLI runs it: the generator prepared by
  ``stsynth_lib.models.inference.prepare_for_inference`` (batch norm folded, phase transposed convolutions,
  ``torch.compile`` where ``resolve_device`` turns it on), images and footprints cached, reads and writes in
  background threads, all cores. Compilation is warmed on one pair first (a one-off per process, reported).

Then ``python -m stsynth_lib.evaluate``'s work on the fast route's folder (``evaluate_folder``: LPIPS (the real
AlexNet weights where ``make weights`` fetched them, else the seeded random backbone: the same work) and the judge,
a building segmenter of chapter 6's shape with seeded random weights), once with the judge prepared and compiled as
``resolve_device`` decides and once eager; seconds per scene, and whether every per-tile score is identical.

Prints and writes ``<out>/scene.json``: seconds per scene per route (median of ``--repeats``), the ratio to
``loop_eager`` at one thread, and the largest difference between fast and eager predictions (grey levels).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stsynth_lib.book.publish.stamp import head_commit  # noqa: E402
from stsynth_lib.cgan.model_io import generator_from_spec  # noqa: E402
from stsynth_lib.conditioning import GuidanceConfig  # noqa: E402
from stsynth_lib.models import init_weights  # noqa: E402
from stsynth_lib.predict import load_predictor  # noqa: E402
from stsynth_lib.predict.files import write_geotiff  # noqa: E402
from stsynth_lib.predict.scene import predict_scene  # noqa: E402
from stsynth_lib.predict.tree import (TreeOptions, pair_inputs, plan_pairs, predict_tree, read_scene,  # noqa: E402
                                      scan_tree, scene_footprints)
from stsynth_lib.training import cpu_has_native_bf16  # noqa: E402

SHARED_LABELLED = ROOT.parent / "shared" / "data" / "sn7_real_labelled"


def profile_params(profile: str, chapter: str) -> dict:
    """common.yaml + the chapter's YAML of ``params/<profile>/`` (later keys win)."""
    out: dict = {}
    for name in ("common.yaml", f"{chapter}.yaml"):
        path = ROOT / "params" / profile / name
        if path.is_file():
            out.update(yaml.safe_load(path.read_text()) or {})
    return out


def make_run(run_dir: Path, params: dict, seed: int = 0) -> Path:
    """A run folder (``model.yaml`` + ``best/generator.pt``) with the chapter's architecture and random weights."""
    guidance = GuidanceConfig(use_mask=bool(params.get("use_mask", True)), use_past_mask=bool(params.get("use_past_mask")),
                              context_offsets_months=params.get("context_offsets_months"),
                              residual_base="past" if params.get("residual_base") in (None, "linear") else params["residual_base"])
    channels = guidance.channel_names()
    spec = {"name": params.get("model", "pix2pix"), "in_channels": len(channels), "out_channels": 3,
            "tile_size_px": int(params["tile_size_px"]), "ngf": int(params.get("ngf", 64)),
            "norm": params.get("norm", "batch"), "dropout": float(params.get("dropout", 0.5)),
            "residual": bool(params.get("residual", False)),
            "gap_channel": channels.index("gap_months_scaled") if "gap_months_scaled" in channels else None,
            "guidance": guidance.to_dict(), "channels": channels,
            **({"temporal_fusion": params["temporal_fusion"]} if params.get("temporal_fusion", "concat") != "concat" else {})}
    torch.manual_seed(seed)
    G = init_weights(generator_from_spec(spec))
    with torch.no_grad():
        for m in G.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
            if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)) and not m.weight.abs().sum():
                m.weight.normal_(0, 0.02)  # the residual head starts at zero: give it an output
    (run_dir / "best").mkdir(parents=True, exist_ok=True)
    (run_dir / "model.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    torch.save(G.state_dict(), run_dir / "best" / "generator.pt")
    return run_dir


def loop_eager(run: Path, meta, pairs, out: Path, tile_px: int, options: TreeOptions) -> float:
    """Today's loop (before the fast path): uncached reads and rasterising, eager generator, synchronous writes."""
    predictor = load_predictor(run, compile=False)
    predictor.fast = predictor.G  # the plain eager generator, as before
    t = time.perf_counter()
    for _, pair in pairs.iterrows():
        past_row, future_row = meta.loc[pair["past_index"]], meta.loc[pair["future_index"]]
        past, transform, crs = read_scene(past_row, [1, 2, 3])
        shape = past.shape[1:]
        fm = scene_footprints(future_row, shape, transform, crs) if predictor.uses_mask else None
        pm = scene_footprints(past_row, shape, transform, crs) if predictor.uses_past_mask else None
        context = None
        if predictor.needs_context:
            context = pair_inputs(predictor, meta, pair, tile_px, _NoCache())["context"]
        image = predict_scene(predictor, past, pair["past_date"], pair["future_date"], tile_px, future_mask=fm,
                              past_mask=pm, overlap_px=options.overlap_px, batch_size=options.batch_size,
                              seed=options.seed, aoi=str(pair["aoi"]), context=context)
        write_geotiff(out / f"{pair['pair_id']}.tif", image, transform, crs or None)
    return (time.perf_counter() - t) / len(pairs)


class _NoCache:
    """SceneCache's interface without caching (today's loop read every month again)."""

    def image(self, row):
        return read_scene(row, [1, 2, 3])

    def footprints(self, row, shape, transform, crs):
        return scene_footprints(row, shape, transform, crs)


def fast(run: Path, data: Path, out: Path, tile_px: int, options: TreeOptions, threads: int,
         precision: str = "no", folder: str = "fast") -> tuple[float, float, dict]:
    torch.set_num_threads(threads)
    predictor = load_predictor(run, precision=precision)
    warm = TreeOptions(**{**options.__dict__, "max_pairs": 1})
    t = time.perf_counter()
    predict_tree(predictor, run, data, out / f"warm_{folder}", tile_px, [1, 2, 3], warm, log=lambda *_: None)
    warm_s = time.perf_counter() - t
    predict_tree(predictor, run, data, out / folder, tile_px, [1, 2, 3], options, log=lambda *_: None)
    record = yaml.safe_load((out / folder / "predict.yaml").read_text())
    return float(record["seconds_per_pair"]), warm_s, {"compiled": predictor.setup.compile,
                                                        "channels_last": predictor.setup.channels_last}


def evaluate_seconds(pred_dir: Path, data: Path, out: Path, n_pairs: int, threads: int) -> dict:
    """Seconds per scene of evaluate_folder with LPIPS and the judge, compiled judge vs eager; scores compared."""
    import os

    import pandas as pd

    from stsynth_lib.evaluate.folder import evaluate_folder
    from stsynth_lib.metrics.segmentation import SegUNet, save_segmenter

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    seg = save_segmenter(SegUNet(), out / "segmenter.pt")
    row, tables = {}, {}
    for label, flag in (("eager", "0"), ("fast", "auto")):
        before = os.environ.get("STSYNTH_COMPILE")
        os.environ["STSYNTH_COMPILE"] = flag
        try:
            t = time.perf_counter()
            evaluate_folder(pred_dir, data, out / f"eval_{label}", segmenter_path=seg, allow_uncalibrated=True,
                            progress=False)
            row[f"evaluate_{label}_s_per_scene"] = (time.perf_counter() - t) / n_pairs
        finally:
            if before is None:
                os.environ.pop("STSYNTH_COMPILE")
            else:
                os.environ["STSYNTH_COMPILE"] = before
        tables[label] = pd.read_csv(out / f"eval_{label}" / "per_tile.csv")
    row["evaluate_scores_identical"] = bool(tables["eager"].equals(tables["fast"]))
    return row


def compare(fast_dir: Path, eager_dir: Path, pairs) -> dict:
    import rasterio

    from stsynth_lib.predict.tree import prediction_name

    worst, differing, total = 0, 0, 0
    for _, pair in pairs.iterrows():
        with rasterio.open(fast_dir / prediction_name(pair)) as a, rasterio.open(eager_dir / f"{pair['pair_id']}.tif") as b:
            d = np.abs(a.read().astype(int) - b.read().astype(int))
        worst, differing, total = max(worst, int(d.max())), differing + int((d > 0).sum()), total + d.size
    return {"max_abs_diff_grey_levels": worst, "share_of_values_differing": differing / max(total, 1)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench_results")
    p.add_argument("--data", default=str(SHARED_LABELLED), help="a SpaceNet 7 tree with 1024 px scenes and labels")
    p.add_argument("--profile", default="sn7_labelled", help="params/<profile>/ gives the architectures")
    p.add_argument("--models", default="03_train_cgan,04_train_attention_cgan", help="chapters whose models to time")
    p.add_argument("--pairs", type=int, default=60, help="pairs per route (drawn with --seed); 60 as a whole-area run: "
                                                        "each month then serves several pairs, as in real use")
    p.add_argument("--repeats", type=int, default=1, help="runs of each route; the median is reported")
    p.add_argument("--baseline-threads", default="1,2", help="torch threads of today's loop (comma-separated)")
    p.add_argument("--threads", type=int, default=max(1, torch.get_num_threads()), help="torch threads, fast path")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-evaluate", action="store_true", help="skip timing the evaluation of the predictions")
    args = p.parse_args(argv)
    data = Path(args.data)
    if not (data / "train").is_dir():
        if args.data == str(SHARED_LABELLED):  # make bench on a machine without the developers' shared data
            print(f"bench_scene: skipped: the labelled area is not at {data}; pass --data <a SpaceNet 7 tree with "
                  "1024 px scenes and labels>")
            return {}
        sys.exit(f"{data} is not a SpaceNet 7 tree (no train/ folder): pass --data (a tree with 1024 px scenes)")
    options = TreeOptions(max_pairs=args.pairs, seed=args.seed, batch_size=args.batch_size, progress=False)
    meta = scan_tree(data)
    pairs = plan_pairs(meta, options)
    h, w = read_scene(meta.loc[pairs["past_index"].iloc[0]], [1, 2, 3])[0].shape[1:]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for chapter in args.models.split(","):
            params = profile_params(args.profile, chapter)
            run = make_run(Path(tmp) / chapter / "run", params, args.seed)
            tile_px = int(params["tile_size_px"])
            row = {"model": params.get("model"), "chapter": chapter, "tile_size_px": tile_px, "ngf": params.get("ngf"),
                   "context_frames": len(params.get("context_offsets_months") or [0])}
            for threads in [int(t) for t in args.baseline_threads.split(",")]:
                torch.set_num_threads(threads)
                runs = []
                for _ in range(args.repeats):
                    eager_dir = Path(tmp) / chapter / "eager"
                    shutil.rmtree(eager_dir, ignore_errors=True)
                    eager_dir.mkdir(parents=True)
                    runs.append(loop_eager(run, meta, pairs, eager_dir, tile_px, options))
                row[f"loop_eager_{threads}t_s_per_scene"] = statistics.median(runs)
            runs = []
            for _ in range(args.repeats):
                shutil.rmtree(Path(tmp) / chapter / "fast", ignore_errors=True)
                s, warm_s, setup = fast(run, data, Path(tmp) / chapter, tile_px, options, args.threads)
                runs.append(s)
            row.update({f"fast_{args.threads}t_s_per_scene": statistics.median(runs), "fast_first_pair_s": warm_s,
                        **setup, **compare(Path(tmp) / chapter / "fast", Path(tmp) / chapter / "eager", pairs)})
            if chapter == args.models.split(",")[0] and not args.no_evaluate:
                row.update(evaluate_seconds(Path(tmp) / chapter / "fast", data, Path(tmp) / chapter, len(pairs),
                                            args.threads))
            if cpu_has_native_bf16():  # the opt-in route (--precision bf16)
                shutil.rmtree(Path(tmp) / chapter / "fast_bf16", ignore_errors=True)
                s_bf16, _, _ = fast(run, data, Path(tmp) / chapter, tile_px, options, args.threads, "bf16", "fast_bf16")
                diff = compare(Path(tmp) / chapter / "fast_bf16", Path(tmp) / chapter / "eager", pairs)
                row.update({f"fast_bf16_{args.threads}t_s_per_scene": s_bf16,
                            "bf16_max_abs_diff_grey_levels": diff["max_abs_diff_grey_levels"],
                            "bf16_share_of_values_differing": diff["share_of_values_differing"]})
            base = row.get("loop_eager_1t_s_per_scene")
            row["speedup_vs_loop_eager_1t"] = base / row[f"fast_{args.threads}t_s_per_scene"] if base else None
            rows.append(row)
    report = {"commit": head_commit(ROOT) or "unknown", "benchmark": "scene", "data": str(data),
              "scene_px": [int(h), int(w)], "pairs": len(pairs),
              "overlap": "a quarter tile (the CLI's default)", "batch_size": args.batch_size, "torch": torch.__version__,
              "cpu": platform.processor() or platform.machine(), "cores": torch.get_num_threads(), "results": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scene.json").write_text(json.dumps(report, indent=2))
    print(f"\nseconds per {h} x {w} scene, {len(pairs)} pairs of {data.name}, profile {args.profile}")
    for r in rows:
        eager = ", ".join(f"{k.split('_')[2]}: {v:.2f} s" for k, v in r.items() if k.startswith("loop_eager_"))
        print(f"{r['model']:15s} today's loop ({eager})  fast path ({args.threads} threads{', compiled' if r['compiled'] else ''}): "
              f"{r[f'fast_{args.threads}t_s_per_scene']:.2f} s  ({r['speedup_vs_loop_eager_1t'] or float('nan'):.2f}x vs 1 thread; "
              f"first pair {r['fast_first_pair_s']:.1f} s); max diff {r['max_abs_diff_grey_levels']} grey level(s) on "
              f"{100 * r['share_of_values_differing']:.3f} % of values")
        if "bf16_max_abs_diff_grey_levels" in r:
            print(f"{'':15s} --precision bf16: {r[f'fast_bf16_{args.threads}t_s_per_scene']:.2f} s per scene; max diff "
                  f"{r['bf16_max_abs_diff_grey_levels']} grey level(s) on {100 * r['bf16_share_of_values_differing']:.2f} % "
                  "of values")
        if "evaluate_fast_s_per_scene" in r:
            print(f"{'':15s} evaluate (LPIPS + judge): {r['evaluate_eager_s_per_scene']:.2f} s eager judge, "
                  f"{r['evaluate_fast_s_per_scene']:.2f} s compiled judge per scene; scores identical: "
                  f"{r['evaluate_scores_identical']}")
    print(f"wrote {out / 'scene.json'}")
    return report


if __name__ == "__main__":
    main()
