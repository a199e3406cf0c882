"""``residual_base: linear`` (a per-gap least-squares blend of the past frames, fitted on train) and the
"same month last year -1 / +1" context offsets."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from stsynth_lib.conditioning import (GuidanceConfig, build_condition, context_tag, fit_linear_base, linear_base,
                                      usable_frames)
from stsynth_lib.data.dataset import PairedTileDataset, check_context_offsets, context_lookup, last_year_shift
from stsynth_lib.training import collate

from test_context import _train_cfg, long_dataset_dir  # noqa: F401  (the 15-month fixture)

LY = "same_month_last_year"
OFFSETS = [0, -1, f"{LY}-1", LY, f"{LY}+1"]


# --------------------------------------------------------------------------- offsets around last year's month
def test_last_year_offsets_are_parsed_and_refused_by_name():
    assert [last_year_shift(o) for o in (LY, f"{LY}-1", f"{LY}+1", f"{LY}+11", -1, 0)] == [0, -1, 1, 11, None, None]
    assert check_context_offsets(OFFSETS) == tuple(OFFSETS)
    for bad in (f"{LY}+12", f"{LY}-0", f"{LY}+", "same_month_next_year"):
        with pytest.raises(ValueError, match="same_month_last_year"):
            check_context_offsets([0, bad])
    assert [context_tag(o) for o in OFFSETS[1:]] == ["ctx_t0-1", "ctx_last_year-1", "ctx_last_year", "ctx_last_year+1"]


def test_last_year_neighbours_are_looked_up_at_t1_minus_13_and_11_and_never_after_t0():
    # one tile position, months 0..29 present (abs month = 2020 * 12 + m)
    base = 2020 * 12
    index = {("a", 0, 0, base + m): 100 + m for m in range(30)}

    def pair(t0, t1):
        return {"aoi": "a", "row_off": 0, "col_off": 0, "past_tile_id": 100 + t0, "past_year": (base + t0) // 12,
                "past_month": (base + t0) % 12, "future_year": (base + t1) // 12, "future_month": (base + t1) % 12}

    pairs = pd.DataFrame([pair(20, 24), pair(20, 30), pair(20, 32)])  # gaps 4, 10, 12
    ids, ages = context_lookup(pairs, index, [0, f"{LY}-1", LY, f"{LY}+1"])
    # gap 4: t1 = 24 -> t1-13 = 11, t1-12 = 12, t1-11 = 13, all before t0 = 20
    assert ids[0].tolist() == [120, 111, 112, 113] and ages[0].tolist() == [4, 13, 12, 11]
    # gap 10: t1 = 30 -> t1-13 = 17, t1-12 = 18, t1-11 = 19 = t0-1 (present, 11 months old)
    assert ids[1].tolist() == [120, 117, 118, 119] and ages[1].tolist() == [10, 13, 12, 11]
    # gap 12: t1-11 = 21 is after t0 = 20: absent; t1-12 = 20 is t0 itself
    assert ids[2].tolist() == [120, 119, 120, -1] and ages[2, 3] == 0


def test_predict_context_fields_ages_and_refusal_for_last_year_neighbours():
    from stsynth_lib.predict import context_fields

    past = np.zeros((1, 3, 8, 8), np.uint8)
    f = context_fields(past, 5, [0, f"{LY}-1", f"{LY}+1"], {f"{LY}-1": past, f"{LY}+1": past})
    assert f["context_age_months"].tolist() == [[5, 13, 11]]
    with pytest.raises(ValueError, match="after past_date"):
        context_fields(past, 12, [0, f"{LY}+1"], {f"{LY}+1": past})  # t1 - 11 is after t0 when the gap is 12


# --------------------------------------------------------------------------- the fitted linear start
class _LinearWorld:
    """A stand-in dataset whose future is a known blend of its frames: ``0.5 f0 + 0.3 f1 + 0.2 f2 - 0.1`` for gap 1
    and ``0.2 f0 + 0.8 f2 + 0.05`` for gap 3; frame 1 is absent in every fifth pair (the past image stands in)."""

    offsets = [0, -1, LY]
    truth = {1: ([0.5, 0.3, 0.2], -0.1), 3: ([0.2, 0.0, 0.8], 0.05)}

    def __init__(self, n=60):
        self.context_offsets_months = self.offsets
        self.pairs = pd.DataFrame({"gap_months": [1 if i % 2 else 3 for i in range(n)]})
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        frames = torch.rand(3, 3, 8, 8, generator=g) * 1.6 - 0.8
        present = torch.tensor([True, i % 5 != 0, True])
        usable = torch.where(present[:, None, None, None], frames, frames[0])
        gap = int(self.pairs["gap_months"].iloc[i])
        w, b = self.truth[gap]
        future = sum(wk * usable[k] for k, wk in enumerate(w)) + b
        return {"past": frames[0], "future": future, "valid": torch.ones(1, 8, 8), "context": frames,
                "context_valid": torch.ones(3, 1, 8, 8), "context_present": present,
                "gap_months": torch.tensor(float(gap)), "future_month": torch.tensor(6),
                "context_age_months": torch.tensor([gap, gap + 1, 12.0])}


def test_fit_recovers_known_weights_per_gap_and_absent_frames_fall_back_to_the_past():
    ds = _LinearWorld()
    cfg = GuidanceConfig(context_offsets_months=_LinearWorld.offsets, residual_base="linear")
    rows = fit_linear_base(ds, cfg, min_pairs_per_gap=5, pixels_per_pair=64)
    assert [g for g, _, _ in rows] == [1, 3]
    for g, w, b in rows:
        want_w, want_b = _LinearWorld.truth[g]
        assert np.allclose(w, want_w, atol=2e-3) and b == pytest.approx(want_b, abs=2e-3)
    again = fit_linear_base(ds, cfg, min_pairs_per_gap=5, pixels_per_pair=64)
    assert again == rows  # seeded and rounded: a resumed run fits the same start
    fitted = GuidanceConfig(context_offsets_months=_LinearWorld.offsets, residual_base="linear", linear_base=rows)
    batch = collate([ds[i] for i in range(10)])
    base = linear_base(batch, fitted)
    assert torch.allclose(base, batch["future"].clamp(-1, 1), atol=1e-2)
    # a gap never fitted (2) takes the nearest fitted one (1, the smaller on a tie); 7 takes 3
    batch["gap_months"] = torch.tensor([2.0, 7.0] * 5)
    w1, w3 = dict((g, (w, b)) for g, w, b in rows)[1], dict((g, (w, b)) for g, w, b in rows)[3]
    frames, shifted = usable_frames(batch, fitted), linear_base(batch, fitted)
    for i, (w, b) in enumerate([w1, w3] * 5):
        want = (sum(wk * frames[i, k] for k, wk in enumerate(w)) + b).clamp(-1, 1)
        assert torch.allclose(shifted[i], want, atol=1e-6)


def test_linear_start_is_refused_without_frames_or_weights_and_round_trips():
    with pytest.raises(ValueError, match="context_offsets_months"):
        GuidanceConfig(residual_base="linear")
    with pytest.raises(ValueError, match="3 weights"):
        GuidanceConfig(context_offsets_months=_LinearWorld.offsets, residual_base="linear",
                       linear_base=((1, (1.0, 0.0), 0.0),))
    unfitted = GuidanceConfig(context_offsets_months=_LinearWorld.offsets, residual_base="linear").resolve(False, 3)
    batch = collate([_LinearWorld()[i] for i in range(2)])
    with pytest.raises(ValueError, match="fit_linear_base"):
        build_condition(batch, unfitted)
    rows = ((1, (1.0, 0.0, 0.0), 0.0), (4, (0.5, 0.25, 0.25), -0.01))
    cfg = GuidanceConfig(context_offsets_months=_LinearWorld.offsets, residual_base="linear",
                         linear_base=rows).resolve(False, 3)
    back = GuidanceConfig.from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict())))
    assert back == cfg and back.channel_names()[:3] == ["linear_b1", "linear_b2", "linear_b3"]
    x = build_condition({**batch, "gap_months": torch.tensor([1.0, 1.0])}, cfg)
    assert torch.allclose(x[:, :3], batch["past"])  # weights (1, 0, 0): the start is the past image


class _CentredWorld(_LinearWorld):
    """As :class:`_LinearWorld`, but each tile has its own brightness and the future is a blend around the tile's mean
    colour m (per band, over the usable frames): ``m + 0.6 (f0 - m) + 0.2 (f1 - m) + 0.02`` for every gap. A blend
    fitted around 0 must shrink towards one global colour instead."""

    truth = {g: ([0.6, 0.2, 0.0], 0.02) for g in (1, 3)}

    def __getitem__(self, i):
        item = super().__getitem__(i)
        shift = 0.9 * torch.rand(1, generator=torch.Generator().manual_seed(1000 + i)) - 0.45
        frames = item["context"] * 0.5 + shift  # tiles from dark to bright
        usable = torch.where(item["context_present"][:, None, None, None], frames, frames[0])
        m = usable.mean((0, 2, 3), keepdim=True)[0]
        future = m + 0.6 * (usable[0] - m) + 0.2 * (usable[1] - m) + 0.02
        return {**item, "past": frames[0], "context": frames, "future": future}


def test_tile_mean_centre_fits_a_blend_around_each_tiles_colour_and_follows_a_brightness_shift():
    ds = _CentredWorld()
    cfg = GuidanceConfig(context_offsets_months=_CentredWorld.offsets, residual_base="linear", linear_centre="tile_mean")
    rows = fit_linear_base(ds, cfg, min_pairs_per_gap=5, pixels_per_pair=64)
    for _, w, b in rows:
        assert np.allclose(w, [0.6, 0.2, 0.0], atol=2e-3) and b == pytest.approx(0.02, abs=2e-3)
    fitted = GuidanceConfig(context_offsets_months=_CentredWorld.offsets, residual_base="linear",
                            linear_centre="tile_mean", linear_base=rows)
    batch = collate([ds[i] for i in range(10)])
    assert torch.allclose(linear_base(batch, fitted), batch["future"], atol=1e-2)
    # the same world fitted around 0 cannot follow each tile's colour: its start is further from the truth
    plain = GuidanceConfig(context_offsets_months=_CentredWorld.offsets, residual_base="linear")
    plain = GuidanceConfig(context_offsets_months=_CentredWorld.offsets, residual_base="linear",
                           linear_base=fit_linear_base(ds, plain, min_pairs_per_gap=5, pixels_per_pair=64))
    err = lambda c: (linear_base(batch, c) - batch["future"]).abs().mean()  # noqa: E731
    assert err(plain) > 5 * err(fitted)
    # a brightness offset on every frame moves the centred start by exactly that offset (rows' weights sum < 1)
    brighter = {**batch, "past": batch["past"] + 0.1, "context": batch["context"] + 0.1}
    assert torch.allclose(linear_base(brighter, fitted), linear_base(batch, fitted) + 0.1, atol=1e-5)
    assert not torch.allclose(linear_base(brighter, plain), linear_base(batch, plain) + 0.1, atol=1e-3)


def test_linear_centre_is_checked_and_round_trips():
    with pytest.raises(ValueError, match="linear_centre must be one of"):
        GuidanceConfig(context_offsets_months=OFFSETS, residual_base="linear", linear_centre="area_mean")
    with pytest.raises(ValueError, match="needs residual_base: linear"):
        GuidanceConfig(context_offsets_months=OFFSETS, residual_base="seasonal", linear_centre="tile_mean")
    cfg = GuidanceConfig(context_offsets_months=OFFSETS, residual_base="linear", linear_centre="tile_mean",
                         linear_base=((1, (0.6, 0.1, 0.1, 0.1, 0.0), 0.0),))
    assert GuidanceConfig.from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict()))) == cfg
    assert "linear_centre" not in GuidanceConfig(context_offsets_months=OFFSETS, residual_base="linear").to_dict()


@pytest.mark.parametrize("adopted", [False, True], ids=["plain", "sn7_real_128_pix2pix"])
def test_linear_start_trains_calibrates_from_its_start_reloads_and_resumes(long_dataset_dir, tmp_path, monkeypatch,
                                                                            adopted):
    """``adopted``: the sn7_real_128 pix2pix's combination (tile_mean start, tile_reweight, centre_inputs)."""
    from stsynth_lib.cgan.calibrate import calibrate_residual_scale
    from stsynth_lib.cgan.model_io import load_generator
    from stsynth_lib.cgan.train import train_cgan
    from stsynth_lib.data.dataset import to_uint8
    from stsynth_lib.metrics import masked_l1

    kw = dict(context_offsets_months=OFFSETS, residual_base="linear", max_train_pairs=None)
    if adopted:
        kw.update(linear_centre="tile_mean", temporal_fusion="tile_reweight", centre_inputs=True)
    run = train_cgan(_train_cfg(long_dataset_dir, tmp_path, **kw))
    spec = yaml.safe_load((run / "model.yaml").read_text())
    rows = spec["guidance"]["linear_base"]
    assert spec["guidance"].get("linear_centre", "none") == ("tile_mean" if adopted else "none")
    assert bool(spec.get("centre_inputs")) == adopted
    assert rows and all(len(r["weights"]) == len(OFFSETS) for r in rows)
    G, cfg = load_generator(run, which="latest")
    assert cfg.linear_base is not None and cfg.channel_names()[0] == "linear_b1"
    ds = PairedTileDataset(long_dataset_dir, "all", context_offsets_months=OFFSETS)
    _, table = calibrate_residual_scale(G, ds, cfg, batch_size=64, device="cpu", progress=False)
    batch = collate([ds[i] for i in range(len(ds))])
    with torch.no_grad():  # scale 0 is the generator's own start: the fitted blend, reweighted per tile if adopted
        start = G.residual_start(build_condition(batch, cfg)) if adopted else linear_base(batch, cfg)
    start = torch.from_numpy(to_uint8(start)).float() / 127.5 - 1.0
    want = np.nanmean(masked_l1(start, batch["future"], batch["valid"]))
    past_l1 = np.nanmean(masked_l1(batch["past"], batch["future"], batch["valid"]))
    assert float(table.loc[table["residual_scale"] == 0, "val_l1"].iloc[0]) == pytest.approx(want, rel=1e-5)
    assert abs(want - past_l1) > 1e-4
    # a resume takes the weights the run was trained with from its model.yaml: it never refits them
    import stsynth_lib.cgan.train as train_module

    def no_refit(*a, **k):
        raise AssertionError("a resumed run refitted its linear start")

    monkeypatch.setattr(train_module, "fit_linear_base", no_refit)
    train_cgan(_train_cfg(long_dataset_dir, tmp_path, **{**kw, "max_steps": 3, "resume_from_checkpoint": "latest"}))
    assert yaml.safe_load((run / "model.yaml").read_text())["guidance"]["linear_base"] == rows
    assert (run / "checkpoints" / "checkpoint-3").is_dir()


def test_sequence_panel_titles_name_last_years_neighbours():
    from stsynth_lib.data.plots import short_offset_label as _short_offset

    assert [_short_offset(o) for o in (0, -2, LY, f"{LY}-1", f"{LY}+1")] == ["t0", "t0-2", "t1-12", "t1-13", "t1-11"]
