"""A past-only guard for any model: in each tile, use the candidate that predicted the tile's own past best.

When a pair t0 -> t1 is predicted, every frame up to t0 is known. So every earlier pair of the same tile whose
future date is not after t0 could have been predicted and scored by then: that is the tile's *track record*.
:func:`track_record_choice` picks, for each pair, the candidate (a model, persistence or a simple baseline) with the
best mean score over the tile's track record; with fewer than ``min_history_pairs`` earlier pairs it keeps the first
candidate (the model). No frame after t0 enters a choice: the rule is as causal as the predictions it chooses from.

It works on scores, not images: :func:`guarded_rows` copies each pair's row of the chosen candidate (every metric,
LPIPS and building F1 included), so the guarded model is scored exactly like the others. To use it on new imagery,
score the model and the candidates on the tile's earlier pairs first (``evaluate_models`` on those pairs), then call
:func:`track_record_choice`.

Why it was built: a model trained on one set of areas can lose to persistence in an area unlike any it was trained
on (on the ``sn7_real_128`` test split, a bright, very stable desert; see chapter 6), and the area's own history
might show that loss before the pair is predicted. On the validation split it did not pay: every guard tried scored
0.004-0.36 dB under the unguarded cGANs and gained in no area (``experiments/temporal_context/track_record_val.py``),
so no chapter uses it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from stsynth_lib.evaluate.data import METRICS

TILE_COLUMNS = ("aoi", "row_off", "col_off")


def month_index(year, month):
    """Months since year 0, so that differences are gaps in months."""
    return np.asarray(year, dtype=np.int64) * 12 + np.asarray(month, dtype=np.int64) - 1


def _scores(per_tile: pd.DataFrame, candidates: Sequence[str], metric: str, psnr_cap_db: float) -> pd.DataFrame:
    """(pairs the first candidate scored) x candidates of ``metric``, NaN where a candidate has no score."""
    df = per_tile[per_tile["common"]] if "common" in per_tile else per_tile
    missing = [c for c in candidates if c not in set(df["model"])]
    if missing:
        raise ValueError(f"track record: {missing} have no rows in per_tile (models: {sorted(set(df['model']))}); "
                         "score them first, e.g. evaluate_models(..., baselines=(...))")
    if metric not in df.columns:
        raise ValueError(f"track record: metric {metric!r} is not a column of per_tile")
    wide = df[df["model"].isin(candidates)].pivot(index="pair_id", columns="model", values=metric)[list(candidates)]
    empty = [c for c in candidates if wide[c].isna().all()]
    if empty:
        raise ValueError(f"track record: {empty} have no {metric} score on any pair")
    wide = wide[wide[candidates[0]].notna()]
    return wide.clip(upper=psnr_cap_db) if metric.startswith("psnr") else wide


def track_record_choice(per_tile: pd.DataFrame, pairs: pd.DataFrame, candidates: Sequence[str], metric: str = "psnr",
                        min_history_pairs: int = 1, psnr_cap_db: float = 100.0, match_gap: bool = False,
                        margin: float = 0.0) -> pd.DataFrame:
    """For each pair scored by every candidate: the candidate with the best mean ``metric`` over the same tile's
    earlier pairs (future date not after this pair's past date; with ``match_gap``, only those of the same time
    gap), ties to the earlier candidate. The first candidate is kept while fewer than ``min_history_pairs`` such
    pairs exist, and while no other one beats it there by more than ``margin`` (in the metric's units).

    ``pairs`` holds ``pair_id``, the tile columns (``aoi``, ``row_off``, ``col_off``; missing ones are ignored) and
    ``past_year, past_month, future_year, future_month``. Returns ``pair_id, chosen, n_history`` (the number of
    earlier pairs the choice rests on) for every pair the first candidate scored; a pair some other candidate did
    not score keeps the first one and does not enter any record."""
    candidates = list(dict.fromkeys(candidates))
    if len(candidates) < 2:
        raise ValueError(f"track record: give at least two candidates (the model first), got {candidates}")
    if metric not in METRICS:
        raise ValueError(f"track record: unknown metric {metric!r}; one of {sorted(METRICS)}")
    if int(min_history_pairs) < 1:
        raise ValueError(f"track record: min_history_pairs must be at least 1, got {min_history_pairs}")
    wide = _scores(per_tile, candidates, metric, psnr_cap_db)
    sign = 1.0 if METRICS[metric][0] else -1.0  # larger is better after the sign
    tile_cols = [c for c in TILE_COLUMNS if c in pairs.columns]
    p = pairs.set_index("pair_id").loc[wide.index.intersection(pairs["pair_id"])]
    t0 = pd.Series(month_index(p["past_year"], p["past_month"]), index=p.index)
    t1 = pd.Series(month_index(p["future_year"], p["future_month"]), index=p.index)
    groups = p[tile_cols].assign(gap=(t1 - t0) if match_gap else 0).groupby(tile_cols + ["gap"]).groups
    out = []
    complete = wide.notna().all(axis=1)
    for ids in groups.values():
        ids = np.asarray(ids)
        ok = complete.loc[ids].to_numpy()
        known = ids[ok]  # pairs every candidate scored: the only ones a record counts
        order = np.argsort(t1.loc[known].to_numpy(), kind="stable")
        ends = t1.loc[known].to_numpy()[order]
        sums = np.vstack([np.zeros(len(candidates)), np.cumsum(sign * wide.loc[known[order]].to_numpy(), axis=0)])
        n = np.searchsorted(ends, t0.loc[ids].to_numpy(), side="right")  # earlier pairs: future <= this past
        means = sums[n] / np.maximum(n, 1)[:, None]
        best = np.argmax(means, axis=1)
        clear = means[np.arange(len(best)), best] - means[:, 0] > float(margin)
        pick = np.where((n >= int(min_history_pairs)) & clear & ok, best, 0)
        out.append(pd.DataFrame({"pair_id": ids, "chosen": np.asarray(candidates)[pick], "n_history": n}))
    if not out:
        return pd.DataFrame(columns=["pair_id", "chosen", "n_history"])
    return pd.concat(out, ignore_index=True).sort_values("pair_id", ignore_index=True)


def guarded_rows(per_tile: pd.DataFrame, choice: pd.DataFrame, name: str) -> pd.DataFrame:
    """Rows of a new model ``name``: for each pair of ``choice``, the row of the chosen candidate, renamed, with the
    choice in column ``chosen``. Append them to ``per_tile`` to score the guarded model like any other."""
    df = per_tile[per_tile["common"]] if "common" in per_tile else per_tile
    keyed = df.set_index(["model", "pair_id"])
    index = pd.MultiIndex.from_arrays([choice["chosen"], choice["pair_id"]], names=["model", "pair_id"])
    rows = keyed.loc[index].reset_index()
    return rows.assign(model=name, chosen=choice["chosen"].to_numpy())


def guard_models(per_tile: pd.DataFrame, pairs: pd.DataFrame, models: Sequence[str], fallbacks: Sequence[str],
                 metric: str = "psnr", min_history_pairs: int = 1, suffix: str = "_guarded", match_gap: bool = False,
                 margin: float = 0.0) -> pd.DataFrame:
    """``per_tile`` with a guarded row set for every model of ``models`` that has rows: each chooses, per pair,
    between itself and ``fallbacks`` by :func:`track_record_choice`; named ``<model><suffix>``."""
    present = set(per_tile["model"])
    extra = []
    for m in (m for m in models if m in present):
        choice = track_record_choice(per_tile, pairs, [m, *fallbacks], metric, min_history_pairs,
                                     match_gap=match_gap, margin=margin)
        extra.append(guarded_rows(per_tile, choice, m + suffix))
    return pd.concat([per_tile, *extra], ignore_index=True) if extra else per_tile
