"""``python -m stsynth_lib.predict``: every (past, future) month pair of a SpaceNet 7 tree predicted with a trained run,
whole images of any size (:mod:`stsynth_lib.predict.tree` does the work; the predictor comes from
:func:`stsynth_lib.predict.load_predictor`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch

from stsynth_lib.predict import INFERENCE_PRECISIONS, load_predictor


def _overlap(text: str) -> int | None:
    if text == "auto":
        return None
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected 'auto' or a whole number of pixels >= 0, got {text!r}")
    return int(text)


def _strength(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not 0.0 < v <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}")
    return v


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The options of ``python -m stsynth_lib.predict`` (``--help`` lists them)."""
    from stsynth_lib.options import DATA, RUN, pick
    from stsynth_lib.options.cli import add_options

    p = argparse.ArgumentParser(prog="python -m stsynth_lib.predict",
                                description="Predict the future image of every (past, future) month pair of a "
                                            "SpaceNet 7 tree with a trained run; whole images, any size.")
    p.add_argument("--run", required=True, help="trained run folder, e.g. runs/sn7/pix2pix")
    p.add_argument("--data", required=True, help="SpaceNet 7 tree: the folder that holds train/<AOI>/images/")
    p.add_argument("--out", required=True, help="output folder (<aoi>/pred_*.tif, index.csv, predict.yaml)")
    # declared once in stsynth_lib.options (min_gap_months, device, seed); the longest gap stays this CLI's own:
    # a user predicting a tree wants every gap the models were trained on (12), the dataset builder's default is 6
    add_options(p, pick(DATA, "min_gap_months") + pick(RUN, "device", "seed"))
    p.add_argument("--max-gap-months", type=_positive, default=12, help="longest past-to-future gap of a pair")
    p.add_argument("--aoi", nargs="+", metavar="AOI", help="only these areas (folder names under train/)")
    p.add_argument("--max-pairs", type=_positive, help="a random subset of this many pairs (drawn with --seed)")
    p.add_argument("--which", default="best", help="cGAN weights: best, latest or checkpoint-<step>")
    p.add_argument("--batch-size", type=_positive, default=16, help="tiles per forward pass")
    p.add_argument("--compile", default="auto", choices=("auto", "true", "false"),
                   help="cGANs: torch.compile the prepared generator (auto: on a CPU with a C++ compiler; "
                        "stsynth_lib.models.inference)")
    p.add_argument("--precision", default="no", choices=INFERENCE_PRECISIONS,
                   help="cGANs: no = fp32 (the chapters' predictions); bf16 = autocast, about 2x faster on a CPU with "
                        "native bf16, within 2 grey levels of fp32; auto = bf16 where the hardware has it, else fp32")
    p.add_argument("--threads", type=_positive, help="torch threads for the model (default: torch's, one per core)")
    p.add_argument("--overlap-px", type=_overlap, default=None, metavar="{auto,N}",
                   help="overlap of neighbouring tiles, blended; auto = a quarter tile")
    p.add_argument("--num-inference-steps", type=_positive, help="ControlNet sampling steps (default: those the "
                                                                   "strength was chosen with in chapter 5, else 20)")
    p.add_argument("--strength", type=_strength, help="ControlNet img2img strength in (0, 1], 1 = pure noise "
                                                      "(default: the run's value chosen on validation, else 1)")
    p.add_argument("--overwrite", action="store_true", help="predict again pairs whose GeoTIFF exists")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; a bad tree, run or option prints its message (no traceback) and returns 2."""
    from stsynth_lib.predict.tree import TreeOptions, predict_tree, run_bands

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from stsynth_lib.training import resolve_device

    try:
        device = "cuda" if resolve_device(args.device, "no", False).on_cuda else "cpu"
    except (RuntimeError, ValueError) as exc:  # --device cuda without a GPU, or a device this CLI does not drive
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sampling = {"num_inference_steps": args.num_inference_steps} if args.num_inference_steps else {}
    if args.strength is not None:
        sampling["strength"] = args.strength
    options = TreeOptions(min_gap_months=args.min_gap_months, max_gap_months=args.max_gap_months, aois=args.aoi,
                          max_pairs=args.max_pairs, seed=args.seed, batch_size=args.batch_size,
                          overlap_px=args.overlap_px, overwrite=args.overwrite, progress=not args.no_progress)
    try:
        compile_ = {"auto": "auto", "true": True, "false": False}[args.compile]
        predictor = load_predictor(args.run, args.which, device, compile=compile_, precision=args.precision,
                                   **sampling)  # sampling: ControlNet only
        predict_tree(predictor, args.run, args.data, args.out, predictor.trained_tile_size_px,
                     run_bands(args.run, predictor.n_bands), options,
                     {"which": args.which, "device": device,
                      "compiled": bool(getattr(getattr(predictor, "setup", None), "compile", False)),
                      "precision": getattr(getattr(predictor, "setup", None), "mixed_precision", "no"),
                      "num_inference_steps": getattr(predictor, "steps", args.num_inference_steps),
                      "strength": getattr(predictor, "strength", None)})
    except (ValueError, FileNotFoundError) as exc:  # SN7DataError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
