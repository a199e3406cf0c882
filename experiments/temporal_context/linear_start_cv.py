"""Issue 13, round 4, on TRAINING and VALIDATION areas only: which centre should the linear start
(``residual_base: linear``) shrink towards, ``linear_centre: none`` (a global colour: the fitted weights sum to a
little under 1 and a bias pulls every tile towards a dark mean) or ``tile_mean`` (the tile's own mean colour over its
frames, so a bright desert stays bright)?

The val split alone cannot answer: its 7 areas are all darker than the train mean, where the global shrinkage helps,
while 4 of the 34 train areas are bright. So this scores the start with whole areas held out: the train and val
areas together, 5 folds of areas (seeded); per fold the start is fitted with ``fit_linear_base`` (as the trainer
does) on the other folds' pairs and scored on the fold's. Reported per centre: the PSNR gain over persistence in dB
(mean of per-area means of per-pair gains, areas weighted equally), its median and worst area, and the paired
difference tile_mean - none with a 95 % bootstrap interval over areas. The test split is never opened.

    PYTHONPATH=. OMP_NUM_THREADS=2 .venv/bin/python experiments/temporal_context/linear_start_cv.py > bench_results/linear_start_cv_sn7_real_128.txt

About 4 minutes on 2 cores. Needs data/sn7_real_128/dataset (chapter 2 of the sn7_real_128 profile).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from _common import DATASET, OFFSETS
from stsynth_lib.conditioning import GuidanceConfig, fit_linear_base, linear_base
from stsynth_lib.data.dataset import PairedTileDataset
from stsynth_lib.metrics import bootstrap_ci, masked_psnr

CENTRES = ("none", "tile_mean")
N_FOLDS = 5


class AreaPairs(Dataset):
    """The pairs of some areas, drawn from several split datasets: ``.pairs`` and items as ``fit_linear_base``
    and a DataLoader expect."""

    def __init__(self, parts: list[PairedTileDataset], areas: set[str]):
        self.context_offsets_months = parts[0].context_offsets_months
        self.items = [(d, i) for d in parts for i in np.flatnonzero(d.pairs["aoi"].isin(areas).to_numpy())]
        self.pairs = pd.concat([d.pairs.iloc[[i]] for d, i in self.items], ignore_index=True)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        d, j = self.items[i]
        return d[int(j)]


def fold_gains(parts: list[PairedTileDataset], held_out: set[str], areas: list[str]) -> pd.DataFrame:
    """Per held-out pair, each centre's PSNR gain over persistence, the start fitted on the other areas."""
    fit_on, score_on = AreaPairs(parts, set(areas) - held_out), AreaPairs(parts, held_out)
    cfgs = {}
    for c in CENTRES:
        cfg = GuidanceConfig(context_offsets_months=OFFSETS, residual_base="linear", linear_centre=c)
        cfgs[c] = replace(cfg, linear_base=fit_linear_base(fit_on, cfg))
    rows = []
    for b in DataLoader(score_on, batch_size=64):
        psnr = lambda x: masked_psnr(x, b["future"], b["valid"], data_range=2.0)  # noqa: E731  ([-1, 1] images)
        base = psnr(b["past"])
        rows.append(pd.DataFrame({"aoi": list(b["aoi"]), **{c: psnr(linear_base(b, cfg)) - base
                                                             for c, cfg in cfgs.items()}}))
    return pd.concat(rows, ignore_index=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset_dir", nargs="?", default=DATASET, help=f"tile store (default {DATASET})")
    dataset_dir = p.parse_args(argv).dataset_dir
    parts = [PairedTileDataset(dataset_dir, s, context_offsets_months=OFFSETS) for s in ("train", "val")]
    areas = sorted(set().union(*(set(d.pairs["aoi"]) for d in parts)))
    order = np.random.default_rng(0).permutation(areas)
    df = pd.concat([fold_gains(parts, set(order[f::N_FOLDS]), areas) for f in range(N_FOLDS)], ignore_index=True)
    per_area = df.dropna().groupby("aoi")[list(CENTRES)].mean()
    print(f"{dataset_dir}: train + val areas ({len(per_area)}), {N_FOLDS} folds of whole areas, {len(df)} pairs, frames "
          f"{OFFSETS}: PSNR gain of the linear start over persistence (dB), per area then over areas")
    print(per_area.agg(["mean", "median", "min"]).round(3).to_string())
    mean, lo, hi, n = bootstrap_ci((per_area["tile_mean"] - per_area["none"]).to_numpy())
    print(f"tile_mean - none, paired over {n} areas: {mean:+.3f} dB [{lo:+.3f}, {hi:+.3f}]; "
          f"areas where tile_mean is better: {(per_area['tile_mean'] > per_area['none']).sum()}/{n}")
    print("worst 5 areas under none:")
    print(per_area.sort_values("none").head(5).round(2).to_string())


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main(sys.argv[1:])
