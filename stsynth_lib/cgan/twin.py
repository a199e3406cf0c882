"""Train the twin of a finished cGAN run: its recorded options with the changes named here and nothing else, then
its test predictions and the paired comparison with the original (issues 31 and 32).

    python -m stsynth_lib.cgan.twin --run runs/sn7_labelled/pix2pix --run-name pix2pix_nomask \\
        --set use_mask=false --set use_past_mask=false

is the no-mask twin of a guided model: same data, seed, losses and schedule, the footprint channels removed, so that
chapter 6 (``models: [..., pix2pix_nomask]``) or ``python -m stsynth_lib.evaluate`` can state what the mask itself
adds (model minus twin, pairs matched, areas or blocks resampled). Chapter 4's attention U-Net is the twin of chapter
3's pix2pix built the same way (:func:`stsynth_lib.cgan.chapter.twin_config`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml


def _change(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (a YAML value), got {text!r}")
    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m stsynth_lib.cgan.twin", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="the finished cGAN run folder to twin (<runs_dir>/<profile>/<name>)")
    p.add_argument("--run-name", required=True, help="the twin's folder name beside it, e.g. pix2pix_nomask")
    p.add_argument("--set", dest="changes", action="append", type=_change, default=[], metavar="KEY=VALUE",
                   help="an option that differs from the run's (repeatable; values as in YAML: false, 0.5, none)")
    p.add_argument("--model", help="another generator (default: the run's)")
    p.add_argument("--max-test-pairs", type=int, help="a seeded subset of the test pairs (default: every pair)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Train the twin, predict its test split, print the paired comparison; a bad run or option returns 2."""
    from stsynth_lib.cgan.chapter import paired_with_twin, train_and_test, twin_config
    from stsynth_lib.evaluate import paired_table

    args = parse_args(argv)
    run = Path(args.run)
    if run.name == args.run_name:
        print(f"error: --run-name {args.run_name!r} would overwrite the run it twins", file=sys.stderr)
        return 2
    try:
        config = twin_config(run.parent.parent, run.parent.name, run.name, model=args.model, run_name=args.run_name,
                             changes=dict(args.changes), device=args.device, progress=not args.no_progress)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    twin = train_and_test(config, args.max_test_pairs)
    print(f"twin: {twin.run_dir} (of {run}; changed: "
          + ", ".join(f"{k} = {v!r}" for k, v in args.changes) + (f", model = {args.model!r}" if args.model else "")
          + ")")
    print(paired_table(paired_with_twin(twin, run)).to_string(index=False))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
