"""``python -m stsynth_lib.evaluate --pred <folder> --data <SpaceNet 7 tree>``: score whole-image predictions.

The folder is what ``python -m stsynth_lib.predict --out <folder>`` writes (GeoTIFFs + ``index.csv``); the scores
are chapter 6's (PSNR, SSIM, L1, LPIPS over valid, new-building, changed and unchanged pixels; building F1 with
``--segmenter``), for persistence and the model, on tiles cut from the whole images
(:mod:`stsynth_lib.evaluate.folder`). Bad input prints one message naming the file and the fix, and exits 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from stsynth_lib.options import RUN, SCORING, pick
from stsynth_lib.options.cli import add_options


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m stsynth_lib.evaluate",
        description="Score a folder of whole-image predictions (python -m stsynth_lib.predict --out) and the "
        "persistence baseline against a SpaceNet 7 tree: per_tile.csv, summary.csv, summary.json, results.md.",
    )
    p.add_argument("--pred", required=True, type=Path, help="predictions folder holding index.csv")
    p.add_argument(
        "--data", required=True, type=Path, help="SpaceNet 7 tree (the folder that holds train/<AOI>/images/)"
    )
    p.add_argument("--out", type=Path, default=None, help="results folder (default <pred>/eval)")
    p.add_argument("--name", default=None, help="model name in the tables (default: index.csv's model column)")
    p.add_argument("--tile-size-px", type=int, default=128, help="tiles cut from the whole images (default 128)")
    p.add_argument(
        "--block-size-px",
        type=int,
        default=256,
        help="blocks resampled by the paired interval when the folder covers one area (default 256)",
    )
    p.add_argument("--bands", default="1,2,3", help="1-based image bands compared with the prediction (default 1,2,3)")
    p.add_argument(
        "--segmenter",
        type=Path,
        default=None,
        help="runs/<profile>/segmenter/segmenter.pt: building F1 and new-building F1 on labelled trees",
    )
    p.add_argument("--lpips", action=argparse.BooleanOptionalAction, default=True, help="compute LPIPS (default on)")
    add_options(p, (*SCORING.options, *pick(RUN, "device", "seed")))  # declared in stsynth_lib.options
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the evaluation; returns 0, or 2 after printing the message of a bad input (no traceback)."""
    from stsynth_lib.evaluate.folder import evaluate_folder
    from stsynth_lib.evaluate.scoring import scoring_device

    args = parse_args(argv)
    try:
        bands = tuple(int(b) for b in args.bands.split(",") if b.strip())
    except ValueError:
        print(
            f"error: --bands {args.bands!r} is not a comma-separated list of band numbers, e.g. 1,2,3", file=sys.stderr
        )
        return 2
    try:
        res = evaluate_folder(
            args.pred,
            args.data,
            out_dir=args.out,
            name=args.name,
            tile_size_px=args.tile_size_px,
            block_size_px=args.block_size_px,
            bands=bands,
            segmenter_path=args.segmenter,
            compute_lpips=args.lpips,
            lpips_net=args.lpips_net,
            allow_uncalibrated=args.allow_uncalibrated_metrics,
            device=scoring_device(args.device),
            n_boot=args.n_bootstrap,
            psnr_cap_db=args.psnr_cap_db,
            seed=args.seed,
            progress=not args.no_progress,
        )
    except (ValueError, FileNotFoundError) as err:  # SN7DataError, PredictionFileError, EvalInputError, missing weights
        print(f"error: {err}", file=sys.stderr)
        return 2
    written = ", ".join(sorted(p.name for p in res.out_dir.iterdir()))
    print(f"Scored {res.per_tile['pair_id'].nunique()} tiles; wrote {written} to {res.out_dir}")
    print((res.out_dir / "results.md").read_text())
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
