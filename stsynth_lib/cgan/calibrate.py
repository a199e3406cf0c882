"""How much of its predicted change a residual generator applies, fitted on the validation split."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from stsynth_lib.conditioning import GuidanceConfig, build_condition
from stsynth_lib.data.dataset import to_uint8
from stsynth_lib.evaluate.generator import dataset_for_guidance
from stsynth_lib.training import collate, to_device

RESIDUAL_SCALES = tuple(round(0.05 * i, 2) for i in range(21))  # 0, 0.05, ..., 1
RESIDUAL_FULL_GAPS_MONTHS = tuple(range(1, 13))  # 1 = the same scale at every gap (gaps are >= 1 month)


@torch.no_grad()
def calibrate_residual_scale(G: nn.Module, dataset, guidance: GuidanceConfig, scales: Sequence[float] = RESIDUAL_SCALES,
                             full_gaps_months: Sequence[float] = RESIDUAL_FULL_GAPS_MONTHS, batch_size: int = 32,
                             device: str | torch.device = "cpu", progress: bool = False) -> tuple[dict[str, float], pd.DataFrame]:
    """Choose how much of its predicted change a residual generator applies, on held-out pairs.

    The prediction becomes ``clamp(start + k * change)`` with ``k = scale * min(1, gap / full_gap)``:
    ``scale = 0`` is the generator's start (persistence, the seasonal blend with ``residual_base: seasonal``, the
    fitted linear blend with ``residual_base: linear``, the learnt blend of the past frames with
    ``temporal_fusion: attention``, or the residual base reweighted per tile with ``temporal_fusion: tile_reweight``),
    ``scale = 1, full_gap = 1`` the trained generator, and
    ``full_gap > 1`` applies less change to short gaps (a month ahead little really changes, and a
    generator that learned its training areas' changes applies them too confidently there).
    Every pair of ``dataset`` (the validation split, never the test split) is scored on the
    uint8-quantised output, like the saved predictions, at ``k`` = 0, 0.05, ..., 1 (other ``k``
    are interpolated linearly between those: L1 is smooth in ``k``). The chosen pair
    ``(scale, full_gap)`` minimises the *area-balanced* L1 -- the mean over areas (AOIs) of each
    area's mean L1 over valid pixels -- so that a few volatile areas cannot buy a setting that
    loses in the steady ones. Without a gap plane in the condition only ``full_gap = 1`` is tried.

    Returns ``({"residual_scale": s, "residual_full_gap_months": g}, table)``; ``table`` has one row
    per (``residual_scale``, ``full_gap_months``) with ``val_l1`` (mean over pairs),
    ``val_l1_area_mean`` (the criterion) and ``chosen``.
    """
    from tqdm.auto import tqdm

    from stsynth_lib.metrics import masked_l1

    if not getattr(G, "residual", False):
        raise ValueError("calibrate_residual_scale needs a generator built with residual=True")
    if len(dataset) == 0:
        raise ValueError("calibrate_residual_scale: the calibration split has no pairs")
    dataset = dataset_for_guidance(dataset, guidance)
    if getattr(G, "gap_channel", None) is None:
        full_gaps_months = (1,)
    was_training = G.training
    G.eval()
    dtype = next(G.parameters()).dtype
    grid = np.round(np.arange(0, 1.0 + 1e-9, 0.05), 2)
    per_pair, gaps, areas = [], [], []
    for start in tqdm(range(0, len(dataset), batch_size), disable=not progress, desc="calibrate", leave=False):
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        b = to_device(batch, device)
        cond = build_condition(b, guidance).to(dtype)
        change = G.forward_head(cond).float().cpu()
        # where the change starts: the condition's first image (the past image, or the seasonal blend with
        # residual_base: seasonal), or a temporal-attention / tile-reweight generator's own start
        start = G.residual_start(cond) if hasattr(G, "residual_start") else cond[:, : change.shape[1]]
        start = start.float().cpu()
        future, valid = batch["future"], batch["valid"]
        cols = []
        for k in grid:
            gen = torch.clamp(start + float(k) * change, -1.0, 1.0)
            gen = torch.from_numpy(to_uint8(gen)).float() / 127.5 - 1.0
            cols.append(masked_l1(gen, future, valid))  # NaN for a pair without valid pixels: left out below
        per_pair.append(np.stack(cols, 1))
        gaps += batch["gap_months"].tolist()
        areas += list(batch["aoi"])
    G.train(was_training)
    l1_grid = np.concatenate(per_pair)  # (pairs, len(grid))
    gaps_a, areas_a = np.asarray(gaps, float), np.asarray(areas)
    rows_idx = np.arange(len(l1_grid))
    rows = []
    for full_gap in full_gaps_months:
        ramp = np.minimum(1.0, gaps_a / float(full_gap))
        for scale in scales:
            k = np.clip(float(scale) * ramp, 0, 1) / 0.05
            lo = np.minimum(np.floor(k).astype(int), len(grid) - 2)
            w = k - lo
            l1 = (1 - w) * l1_grid[rows_idx, lo] + w * l1_grid[rows_idx, lo + 1]
            rows.append({"residual_scale": float(scale), "full_gap_months": float(full_gap), "val_l1": float(np.nanmean(l1)),
                         "val_l1_area_mean": float(pd.Series(l1).groupby(areas_a).mean().mean())})
    table = pd.DataFrame(rows)
    best = int(table["val_l1_area_mean"].to_numpy().argmin())
    table["chosen"] = np.arange(len(table)) == best
    chosen = {"residual_scale": float(table.loc[best, "residual_scale"]),
              "residual_full_gap_months": float(table.loc[best, "full_gap_months"])}
    return chosen, table

