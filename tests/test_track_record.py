"""The track-record guard (stsynth_lib.evaluate.track_record): per pair, the candidate that scored best on the same
tile's earlier pairs, never using a frame after t0."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from stsynth_lib.evaluate.track_record import guard_models, guarded_rows, month_index, track_record_choice


def _pairs(n_months: int = 8, max_gap: int = 3, tiles=("A", "B")) -> pd.DataFrame:
    rows = []
    for aoi in tiles:
        for t0 in range(n_months):
            for t1 in range(t0 + 1, min(n_months, t0 + max_gap + 1)):
                rows.append({"aoi": aoi, "row_off": 0, "col_off": 0, "past_year": 2018 + t0 // 12,
                             "past_month": t0 % 12 + 1, "future_year": 2018 + t1 // 12, "future_month": t1 % 12 + 1,
                             "t0": t0, "t1": t1, "gap_months": t1 - t0})
    return pd.DataFrame(rows).assign(pair_id=lambda d: np.arange(len(d)))


def _per_tile(pairs: pd.DataFrame, scores: dict[str, np.ndarray]) -> pd.DataFrame:
    parts = [pd.DataFrame({"model": m, "pair_id": pairs["pair_id"], "aoi": pairs["aoi"], "cluster": pairs["aoi"],
                           "gap_months": pairs["gap_months"], "common": True, "psnr": v, "ssim": v / 100,
                           "l1": 1.0 / v}) for m, v in scores.items()]
    return pd.concat(parts, ignore_index=True)


def _brute_force(pairs, per_tile, candidates, metric, min_history, match_gap=False, margin=0.0):
    wide = per_tile.pivot_table(index="pair_id", columns="model", values=metric)[candidates]
    sign = 1 if metric != "l1" else -1
    out = {}
    for _, p in pairs.iterrows():
        hist = pairs[(pairs["aoi"] == p["aoi"]) & (pairs["t1"] <= p["t0"])]
        if match_gap:
            hist = hist[hist["gap_months"] == p["gap_months"]]
        means = sign * wide.loc[hist["pair_id"]].mean().to_numpy()
        best = int(np.argmax(means)) if len(hist) else 0
        use = len(hist) >= min_history and means[best] - means[0] > margin
        out[p["pair_id"]] = candidates[best if use else 0]
    return pd.Series(out)


def test_month_index_counts_months_across_years():
    assert month_index(2019, 1) - month_index(2018, 12) == 1
    assert month_index(2020, 3) - month_index(2018, 3) == 24


@pytest.mark.parametrize("metric", ["psnr", "l1"])
@pytest.mark.parametrize("min_history", [1, 4])
def test_choice_matches_a_brute_force_reading_of_the_rule(metric, min_history):
    pairs = _pairs(tiles=tuple("ABCDEFGH"))
    rng = np.random.default_rng(3)
    per_tile = _per_tile(pairs, {m: 20 + rng.normal(0, 2, len(pairs)) for m in ("model", "persistence", "seasonal")})
    cands = ["model", "persistence", "seasonal"]
    got = track_record_choice(per_tile, pairs, cands, metric, min_history).set_index("pair_id")
    want = _brute_force(pairs, per_tile, cands, metric, min_history)
    assert (got["chosen"] == want.loc[got.index]).all()
    assert got["chosen"].nunique() == 3  # the random scores exercise every candidate


@pytest.mark.parametrize(("match_gap", "margin"), [(True, 0.0), (False, 1.0), (True, 0.5)])
def test_gap_matched_history_and_margin_follow_the_rule(match_gap, margin):
    pairs = _pairs(n_months=14, tiles=tuple("ABCDEF"))
    rng = np.random.default_rng(5)
    per_tile = _per_tile(pairs, {m: 20 + rng.normal(0, 2, len(pairs)) for m in ("model", "persistence")})
    got = track_record_choice(per_tile, pairs, ["model", "persistence"], match_gap=match_gap, margin=margin)
    want = _brute_force(pairs, per_tile, ["model", "persistence"], "psnr", 1, match_gap, margin)
    assert (got.set_index("pair_id")["chosen"] == want.loc[got["pair_id"]].to_numpy()).all()
    plain = track_record_choice(per_tile, pairs, ["model", "persistence"])
    assert (got["chosen"] != plain["chosen"]).any()  # the options change some choices


def test_history_counts_only_pairs_whose_future_is_not_after_t0():
    pairs = _pairs(tiles=("A",))
    per_tile = _per_tile(pairs, {"model": np.full(len(pairs), 20.0), "persistence": np.full(len(pairs), 25.0)})
    got = track_record_choice(per_tile, pairs, ["model", "persistence"]).merge(pairs, on="pair_id")
    # t0 = 2: earlier pairs (0,1), (0,2), (1,2)
    assert set(got.loc[got["t0"] == 2, "n_history"]) == {3}
    assert set(got.loc[got["t0"] == 1, "n_history"]) == {1}  # (0,1)
    assert set(got.loc[got["t0"] == 0, "n_history"]) == {0}
    assert (got.loc[got["n_history"] == 0, "chosen"] == "model").all()  # nothing known yet: keep the model
    assert (got.loc[got["n_history"] > 0, "chosen"] == "persistence").all()


def test_no_future_score_changes_a_choice():
    """Scores of pairs that end after t0 (unknown at prediction time) never change the pair's choice."""
    pairs = _pairs()
    rng = np.random.default_rng(0)
    scores = {m: 20 + rng.normal(0, 2, len(pairs)) for m in ("model", "persistence")}
    before = track_record_choice(_per_tile(pairs, scores), pairs, ["model", "persistence"]).set_index("pair_id")
    for pid in rng.choice(pairs["pair_id"], 10, replace=False):
        t0 = pairs.loc[pid, "t0"]
        future = (pairs["t1"] > t0).to_numpy()
        changed = {m: np.where(future, v + rng.normal(0, 10, len(v)), v) for m, v in scores.items()}
        after = track_record_choice(_per_tile(pairs, changed), pairs, ["model", "persistence"]).set_index("pair_id")
        assert after.loc[pid, "chosen"] == before.loc[pid, "chosen"]


def test_tiles_do_not_share_a_track_record():
    pairs = _pairs()
    a = (pairs["aoi"] == "A").to_numpy()
    per_tile = _per_tile(pairs, {"model": np.where(a, 30.0, 20.0), "persistence": np.full(len(pairs), 25.0)})
    got = track_record_choice(per_tile, pairs, ["model", "persistence"]).merge(pairs, on="pair_id")
    assert (got.loc[got["aoi"] == "A", "chosen"] == "model").all()
    assert (got.loc[(got["aoi"] == "B") & (got["n_history"] > 0), "chosen"] == "persistence").all()


def test_guarded_rows_copy_every_metric_of_the_chosen_candidate():
    pairs = _pairs()
    rng = np.random.default_rng(1)
    a = (pairs["aoi"] == "A").to_numpy()
    per_tile = _per_tile(pairs, {"model": np.where(a, 25.0, 20.0) + rng.normal(0, 1, len(pairs)),
                                 "persistence": 22.5 + rng.normal(0, 1, len(pairs))})
    out = guard_models(per_tile, pairs, ["model", "absent"], ["persistence"])
    g = out[out["model"] == "model_guarded"].set_index("pair_id")
    assert set(out["model"]) == {"model", "persistence", "model_guarded"}
    assert len(g) == len(pairs) and g["chosen"].nunique() == 2  # both the model's and the fallback's rows
    src = per_tile.set_index(["model", "pair_id"])
    for pid, row in g.iterrows():
        for metric in ("psnr", "ssim", "l1"):
            assert row[metric] == src.loc[(row["chosen"], pid), metric]
    choice = track_record_choice(per_tile, pairs, ["model", "persistence"])
    assert (guarded_rows(per_tile, choice, "x")["chosen"].to_numpy() == choice["chosen"].to_numpy()).all()


def test_a_pair_a_fallback_did_not_score_keeps_the_model_and_enters_no_record():
    pairs = _pairs(tiles=("A",))
    per_tile = _per_tile(pairs, {"model": np.full(len(pairs), 20.0), "persistence": np.full(len(pairs), 25.0)})
    first = pairs.loc[(pairs["t0"] == 0) & (pairs["t1"] == 1), "pair_id"].item()
    per_tile.loc[(per_tile["model"] == "persistence") & (per_tile["pair_id"] == first), "psnr"] = np.nan
    got = track_record_choice(per_tile, pairs, ["model", "persistence"]).merge(pairs, on="pair_id")
    assert len(got) == len(pairs)  # every pair the model scored
    assert got.loc[got["pair_id"] == first, "chosen"].item() == "model"
    assert set(got.loc[got["t0"] == 1, "n_history"]) == {0}  # (0,1) was not scored by persistence: no record yet
    assert set(got.loc[got["t0"] == 2, "n_history"]) == {2}  # (0,2), (1,2)
    assert (got.loc[got["n_history"] > 0, "chosen"] == "persistence").all()
    one = _per_tile(pairs.iloc[:1], {"model": np.array([20.0]), "persistence": np.array([25.0])})
    assert track_record_choice(one, pairs, ["model", "persistence"])["chosen"].tolist() == ["model"]  # one pair


def test_bad_arguments_are_refused_by_name():
    pairs = _pairs(tiles=("A",))
    per_tile = _per_tile(pairs, {"model": np.full(len(pairs), 20.0), "persistence": np.full(len(pairs), 25.0)})
    with pytest.raises(ValueError, match="seasonal"):
        track_record_choice(per_tile, pairs, ["model", "seasonal"])
    with pytest.raises(ValueError, match="at least two"):
        track_record_choice(per_tile, pairs, ["model"])
    with pytest.raises(ValueError, match="min_history_pairs"):
        track_record_choice(per_tile, pairs, ["model", "persistence"], min_history_pairs=0)
    blank = per_tile.assign(psnr=np.where(per_tile["model"] == "persistence", np.nan, per_tile["psnr"]))
    with pytest.raises(ValueError, match="no psnr score"):
        track_record_choice(blank, pairs, ["model", "persistence"])
    with pytest.raises(ValueError, match="unknown metric"):
        track_record_choice(per_tile, pairs, ["model", "persistence"], metric="psnr_db")
