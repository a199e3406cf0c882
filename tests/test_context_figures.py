"""What chapters 2-4 and 6 show of the past sequence: the context strip, the per-gap gain over each baseline, and the
past-sequence | truth | models rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

OFFSETS = [0, -1, -2, "same_month_last_year"]


def test_context_strip_shows_each_frame_with_its_date(tiny_dataset_dir):
    from stsynth_lib.data.dataset import PairedTileDataset
    from stsynth_lib.data.plots import plot_context_strip

    ds = PairedTileDataset(tiny_dataset_dir, "train", context_offsets_months=OFFSETS)
    fig = plot_context_strip(ds, 0)
    assert len(fig.axes) == len(OFFSETS) + 1
    s = ds[0]
    titles = [ax.get_title() for ax in fig.axes]
    t1 = int(s["future_year"]) * 12 + int(s["future_month"])
    for k, title in enumerate(titles[:-1]):
        if bool(s["context_present"][k]):
            m = t1 - int(s["context_age_months"][k])
            assert f"{(m - 1) // 12}-{(m - 1) % 12 + 1:02d}" in title
        else:
            assert title.endswith("-")
    assert titles[0].startswith("t0\n") and f"{int(s['past_year'])}-{int(s['past_month']):02d}" in titles[0]
    assert titles[-1].startswith("t1 (+") and f"+{int(s['gap_months'])} mo" in titles[-1]
    # an absent frame is drawn as a labelled grey panel
    absent = [k for k in range(len(OFFSETS)) if not bool(s["context_present"][k])]
    for k in absent:
        assert "absent" in [t.get_text() for t in fig.axes[k].texts]


def test_context_strip_needs_context(tiny_dataset_dir):
    from stsynth_lib.data.dataset import PairedTileDataset
    from stsynth_lib.data.plots import plot_context_strip

    with pytest.raises(ValueError, match="context_offsets_months"):
        plot_context_strip(PairedTileDataset(tiny_dataset_dir, "train"))


def _per_tile():
    """Two areas x two gap buckets; model 'm' = seasonal + 1 dB in bucket '1', + 3 dB in '4-6' (and seasonal =
    persistence + 0.5 dB everywhere)."""
    rows = []
    pid = 0
    for aoi in ("a", "b"):
        for bucket, gain in (("1", 1.0), ("4-6", 3.0)):
            for j in range(3):
                base = 20.0 + j + (aoi == "b")
                for model, v in (("persistence", base), ("seasonal", base + 0.5), ("m", base + 0.5 + gain)):
                    rows.append({"model": model, "pair_id": pid, "aoi": aoi, "gap_bucket": bucket, "psnr": v,
                                 "common": True})
                pid += 1
    return pd.DataFrame(rows)


def test_gain_by_gap_is_the_paired_difference_per_bucket():
    from stsynth_lib.evaluate import paired_gain_by_gap, plot_gain_by_gap

    t = paired_gain_by_gap(_per_tile(), ["persistence", "seasonal"], "psnr", models=["m"], n_boot=200)
    got = t.set_index(["baseline", "gap_bucket"])["mean_diff"]
    assert got[("seasonal", "1")] == pytest.approx(1.0) and got[("seasonal", "4-6")] == pytest.approx(3.0)
    assert got[("persistence", "1")] == pytest.approx(1.5) and got[("persistence", "4-6")] == pytest.approx(3.5)
    assert list(t[t.baseline == "seasonal"]["gap_bucket"]) == ["1", "4-6"]  # time order
    assert set(t["model"]) == {"m"} and (t["n_pairs"] == 6).all()
    assert bool(t["better"].all())  # constant gains: every interval is above zero
    # models=None: every row that is not one of the baselines
    assert set(paired_gain_by_gap(_per_tile(), ["persistence"], n_boot=50)["model"]) == {"m", "seasonal"}
    fig = plot_gain_by_gap(t)
    assert len(fig.axes) == 2 and fig.axes[1].get_title() == "model - seasonal"
    assert plot_gain_by_gap(t.iloc[0:0]) is None


def test_gain_by_area_is_the_paired_difference_per_area_with_its_persistence_level():
    from stsynth_lib.evaluate import paired_gain_by_area, plot_gain_by_area

    per_tile = _per_tile()
    loses = (per_tile["aoi"] == "b") & (per_tile["model"] == "m") & (per_tile["gap_bucket"] == "4-6")
    per_tile.loc[loses, "psnr"] -= 10.0  # area b loses 10 dB more on its long gaps
    t = paired_gain_by_area(per_tile, ["persistence", "seasonal"], "psnr", models=["m"])
    got = t.set_index(["baseline", "aoi"])
    # area a: (1 + 3) / 2 over seasonal, 0.5 more over persistence; area b: (1 + 3 - 10) / 2
    assert got.loc[("seasonal", "a"), "mean_diff"] == pytest.approx(2.0)
    assert got.loc[("seasonal", "b"), "mean_diff"] == pytest.approx(-3.0)
    assert got.loc[("persistence", "b"), "mean_diff"] == pytest.approx(-2.5)
    assert got.loc[("persistence", "a"), "persistence"] == pytest.approx(21.0)  # its pairs' persistence mean
    assert got.loc[("persistence", "b"), "persistence"] == pytest.approx(22.0)
    assert (t["n_pairs"] == 6).all() and set(t["model"]) == {"m"}
    assert set(paired_gain_by_area(per_tile, ["persistence"])["model"]) == {"m", "seasonal"}
    fig = plot_gain_by_area(t)
    assert len(fig.axes) == 2 and fig.axes[0].get_title() == "model - persistence"
    ys = sorted(fig.axes[1].lines[0].get_xdata())
    assert ys == pytest.approx([-3.0, 2.0])
    assert plot_gain_by_area(t.iloc[0:0]) is None


def test_sequence_examples_show_the_frames_the_baselines_read(tiny_dataset_dir):
    from stsynth_lib import evaluate as E

    res = E.evaluate_models(tiny_dataset_dir, "test", {}, compute_lpips=False, progress=False, n_boot=10,
                            baselines=("mean_last_3", "seasonal"))
    fig = E.plot_sequence_examples(res, n=2)
    k = len(res.data.context_offsets)
    n_models = len([m for m in res.predictions if m not in ("persistence", "real_future")])
    assert len([ax for ax in fig.axes if ax.images]) == 2 * (k + 1 + n_models)  # wrapped lines: unused cells hidden
    titles = [ax.get_title().replace("\n", " ") for ax in fig.axes[: k + 1 + n_models]]
    assert titles[0].startswith("t0 ") and titles[k].startswith("truth ")
    assert any("seasonal" in t for t in titles[k + 1:])
    plain = E.evaluate_models(tiny_dataset_dir, "test", {}, compute_lpips=False, progress=False, n_boot=10)
    with pytest.raises(ValueError, match="baselines"):
        E.plot_sequence_examples(plain)
    assert np.all(res.data.context_tile_ids[:, 0] >= 0)  # t0 is always present


def test_seasonal_coverage_note_counts_the_pairs_with_last_years_frame():
    """On a tree shorter than 13 months the seasonal blend is persistence everywhere: chapter 6 says so (issue 35)."""
    import numpy as np
    import pandas as pd

    from stsynth_lib.data.dataset import SAME_MONTH_LAST_YEAR
    from stsynth_lib.evaluate.data import SplitData, seasonal_coverage_note

    def data(ids):
        n = len(ids)
        z = np.zeros((n, 1, 1, 1), np.uint8)
        return SplitData(pairs=pd.DataFrame({"pair_id": range(n)}), past=z, future=z, past_mask=z, future_mask=z,
                         valid=z, has_mask=np.zeros(n, bool), transform=np.zeros((n, 6)), crs=[""] * n,
                         context_offsets=(0, -1, SAME_MONTH_LAST_YEAR), context_tile_ids=np.array(ids))

    some = seasonal_coverage_note(data([[1, 2, 3], [4, -1, -1], [5, 6, -1]]))
    assert "for 1 of 3 test pairs" in some and "other 2 it is the past image" in some
    assert "too short" in seasonal_coverage_note(data([[1, 2, -1], [4, -1, -1]]), "val")
    assert seasonal_coverage_note(data([[1, 2, 3]])) == "The seasonal blend had last year's frame for every test pair (1)."
    assert seasonal_coverage_note(SplitData(**{**data([[1, 2, 3]]).__dict__, "context_offsets": (0, -1)})) is None
