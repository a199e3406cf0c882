"""Issue 13, on VALIDATION (another split only as described below): how far can a blend of the past frames go,
even when told part of the answer?

Each row is a predictor of the future image from the 6 frames of sn7_real_128's profile (t0, t0-1, t0-2 and
t1-13, t1-12, t1-11), scored as PSNR gain over persistence in dB (the mean of the per-area means of per-pair gains,
areas weighted equally; per gap: pairs pooled). The first rows use the past only; the ORACLE rows look at the
future image itself and so bound what a blend of these frames with ONE weight per frame for all bands could
reach (per-band weights, as ``temporal_fusion: tile_reweight`` learns, and the U-Net on top can go past them):

* ``seasonal``, ``linear start`` (``residual_base: linear``: per-gap weights fitted on the train split) and the same
  fitted around the tile's mean colour (``linear_centre: tile_mean``): past only.
* ``oracle: linear start + tile colour``: the linear start shifted, per band, by the true mean change of the tile.
  The part of the error that is one colour per tile (the month's light, haze, season): no past-only model can
  know it, only guess it.
* ``oracle: best frame``: the one frame (or the linear start) closest to the truth, picked per pair.
* ``oracle: tile weights``: per pair, the least-squares weights of the frames on the truth itself (no bias), and
  ``oracle: tile weights + bias`` with a per-tile offset: what ``temporal_fusion: tile_reweight`` tries to guess
  from the past (it has per-band weights, so this is not a strict ceiling for it).

    PYTHONPATH=. OMP_NUM_THREADS=2 .venv/bin/python experiments/temporal_context/ceiling_val.py > bench_results/ceiling_val_sn7_real_128.txt

A second argument scores another split (``data/sn7_real_128/dataset test``). Run it on test only AFTER the models'
test scoring: it chooses nothing, it tells whether a bar set on test is within reach of such blends.

About 30 s on 2 cores. Needs data/sn7_real_128/dataset (chapter 2 of the sn7_real_128 profile).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

import pandas as pd
import torch
from torch.utils.data import DataLoader

from _common import DATASET, GAP_BINS, OFFSETS
from stsynth_lib.baselines import seasonal_blend
from stsynth_lib.conditioning import GuidanceConfig, fit_linear_base, linear_base, usable_frames
from stsynth_lib.data.dataset import PairedTileDataset
from stsynth_lib.metrics import masked_psnr


def tile_fit(frames: torch.Tensor, future: torch.Tensor, valid: torch.Tensor, bias: bool) -> torch.Tensor:
    """Per pair, the frames' least-squares weights on the future's valid pixels (ridge 1e-3), applied to the tile."""
    out = []
    for f, y, v in zip(frames.double(), future.double(), valid[:, 0].bool()):
        x = f[:, :, v].reshape(f.shape[0], -1).T  # (pixels x bands, K)
        if bias:
            x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
        if len(x) == 0:
            out.append(f[0])
            continue
        theta = torch.linalg.solve(x.T @ x + 1e-3 * len(x) * torch.eye(x.shape[1], dtype=x.dtype), x.T @ y[:, v].reshape(-1))
        k = f.shape[0]
        out.append((f * theta[:k, None, None, None]).sum(0) + (theta[k] if bias else 0))
    return torch.stack(out).float().clamp(-1, 1)


def predictors(batch: dict, cfg: GuidanceConfig, centred: GuidanceConfig) -> dict[str, torch.Tensor]:
    y, v = batch["future"], batch["valid"]
    frames, start = usable_frames(batch, cfg), linear_base(batch, cfg)
    shift = ((y - start) * v).sum((2, 3), keepdim=True) / v.sum((2, 3), keepdim=True).clamp_min(1)
    cands = torch.cat([frames, start[:, None]], 1)
    err = (((cands - y[:, None]) ** 2) * v[:, None]).sum((2, 3, 4))
    return {
        "seasonal": torch.from_numpy(seasonal_blend(batch, OFFSETS)).float() / 127.5 - 1,
        "linear start": start,
        "linear start, tile_mean centre": linear_base(batch, centred),
        "oracle: linear start + tile colour": (start + shift).clamp(-1, 1),
        "oracle: best frame": cands[torch.arange(len(y)), err.argmin(1)],
        "oracle: tile weights": tile_fit(frames, y, v, bias=False),
        "oracle: tile weights + bias": tile_fit(frames, y, v, bias=True),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset_dir", nargs="?", default=DATASET, help=f"tile store (default {DATASET})")
    p.add_argument("split", nargs="?", default="val", help="split to score (default val)")
    args = p.parse_args(argv)
    dataset_dir, split = args.dataset_dir, args.split
    train = PairedTileDataset(dataset_dir, "train", context_offsets_months=OFFSETS)
    cfg, centred = (GuidanceConfig(context_offsets_months=OFFSETS, residual_base="linear", linear_centre=c)
                    for c in ("none", "tile_mean"))
    cfg, centred = (replace(g, linear_base=fit_linear_base(train, g)) for g in (cfg, centred))
    val = PairedTileDataset(dataset_dir, split, context_offsets_months=OFFSETS)
    rows = []
    for b in DataLoader(val, batch_size=64):
        psnr = lambda x: masked_psnr(x, b["future"], b["valid"], data_range=2.0)  # noqa: E731  ([-1, 1] images)
        base = psnr(b["past"])
        gains = {name: psnr(pred) - base for name, pred in predictors(b, cfg, centred).items()}
        rows.append(pd.DataFrame({"aoi": list(b["aoi"]), "gap": b["gap_months"].numpy(), "persistence": base, **gains}))
    df = pd.concat(rows, ignore_index=True).dropna()
    cols = [c for c in df.columns if c not in ("aoi", "gap", "persistence")]
    table = df.groupby(pd.cut(df["gap"], GAP_BINS), observed=True)[cols].mean().T
    table.columns = [f"gap {c}" for c in table.columns]
    table.insert(0, "all (areas equal)", df.groupby("aoi")[cols].mean().mean())
    print(f"{dataset_dir}, {split} split, {len(df)} pairs, {df['aoi'].nunique()} areas, frames {OFFSETS}: PSNR gain over "
          "persistence (dB); ORACLE rows look at the future image")
    print(table.round(2).to_string())
    print("per area (the mean over its pairs), and the area's persistence PSNR (dB):")
    per_area = df.groupby("aoi")[["linear start", "linear start, tile_mean centre", "seasonal"]].mean()
    print(per_area.join(df.groupby("aoi")["persistence"].mean()).round(2).to_string())


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main(sys.argv[1:])
