"""Issue 13, round 2, on VALIDATION only: how good is the linear start (``residual_base: linear``) alone, with no
network? For each frame set, fit the per-gap least-squares blend on the train split (``fit_linear_base``, as the
trainer does), apply it to every validation pair and report its PSNR gain over persistence (the mean of the
per-area means of per-pair gains, the areas weighted equally) overall and per gap; the seasonal baseline likewise.

    PYTHONPATH=. OMP_NUM_THREADS=2 .venv/bin/python experiments/temporal_context/score_linear_start_val.py > bench_results/linear_start_val_sn7_real_128.txt

About 1 minute per frame set on 2 cores. Needs data/sn7_real_128/dataset (chapter 2 of the sn7_real_128 profile).
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd
import torch
from torch.utils.data import DataLoader

from _common import DATASET, GAP_BINS, LY
from stsynth_lib.baselines import seasonal_blend
from stsynth_lib.conditioning import GuidanceConfig, fit_linear_base, linear_base
from stsynth_lib.data.dataset import PairedTileDataset
from stsynth_lib.metrics import masked_psnr

FRAME_SETS = {
    "4 frames [0, -1, -2, ly]": [0, -1, -2, LY],
    "6 frames [0, -1, -2, ly-1, ly, ly+1]": [0, -1, -2, f"{LY}-1", LY, f"{LY}+1"],
    "8 frames [0, -1, -2, -3, -5, ly-1, ly, ly+1]": [0, -1, -2, -3, -5, f"{LY}-1", LY, f"{LY}+1"],
}


def gains(dataset_dir: str, offsets: list) -> pd.DataFrame:
    train = PairedTileDataset(dataset_dir, "train", context_offsets_months=offsets)
    cfg = GuidanceConfig(context_offsets_months=offsets, residual_base="linear")
    cfg = GuidanceConfig(context_offsets_months=offsets, residual_base="linear", linear_base=fit_linear_base(train, cfg))
    val = PairedTileDataset(dataset_dir, "val", context_offsets_months=offsets)
    rows = []
    for b in DataLoader(val, batch_size=64):
        psnr = lambda x: masked_psnr(x, b["future"], b["valid"], data_range=2.0)  # noqa: E731  ([-1, 1] images)
        base = psnr(b["past"])
        part = {"aoi": list(b["aoi"]), "gap": b["gap_months"].numpy(), "linear": psnr(linear_base(b, cfg)) - base}
        if LY in offsets:
            part["seasonal"] = psnr(torch.from_numpy(seasonal_blend(b, offsets)).float() / 127.5 - 1) - base
        rows.append(pd.DataFrame(part))
    return pd.concat(rows, ignore_index=True).dropna()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset_dir", nargs="?", default=DATASET, help=f"tile store (default {DATASET})")
    dataset_dir = p.parse_args(argv).dataset_dir
    print(f"{dataset_dir}, val split: PSNR gain over persistence (dB), areas weighted equally; per gap: pairs pooled")
    for name, offsets in FRAME_SETS.items():
        df = gains(dataset_dir, offsets)
        cols = [c for c in ("linear", "seasonal") if c in df]
        overall = df.groupby("aoi")[cols].mean().mean()
        by_gap = df.groupby(pd.cut(df["gap"], GAP_BINS))[cols].mean()
        print(f"\n{name}: {len(df)} pairs, {df['aoi'].nunique()} areas")
        print("  overall: " + ", ".join(f"{c} {overall[c]:+.2f}" for c in cols))
        for gap, r in by_gap.iterrows():
            print(f"  gap {gap}: " + ", ".join(f"{c} {r[c]:+.2f}" for c in cols))


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main(sys.argv[1:])
