"""Synthetic construction (``erase_building_fraction``): standing buildings erased from the past image become new
buildings for the generator to draw. Whole footprints go or stay, only the past side changes, unlabelled pairs and
absent context frames pass untouched, and a training run uses it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

import stsynth_lib.cgan.train as cgan_train
from stsynth_lib.cgan.augment import background_fill, building_components, erase_buildings
from stsynth_lib.cgan.config import CGANTrainConfig
from stsynth_lib.cgan.train import train_cgan


def _square(m, y, x, s):
    m[..., y:y + s, x:x + s] = 1


def _labelled_batch(b=3, size=32, seed=0):
    """Buildings standing at both dates (A, B), one demolished (only past), one new (only future); textured ground."""
    g = torch.Generator().manual_seed(seed)
    past_mask = torch.zeros(b, 1, size, size)
    future_mask = torch.zeros(b, 1, size, size)
    for m in (past_mask, future_mask):
        _square(m, 4, 4, 4)      # A: standing
        _square(m, 20, 20, 5)    # B: standing
    _square(past_mask, 4, 22, 3)      # demolished before t1
    _square(future_mask, 22, 4, 3)    # new at t1
    ground = (torch.rand(b, 3, size, size, generator=g) * 0.2 - 0.6)
    past = torch.where(past_mask > 0.5, torch.full_like(ground, 0.9), ground)
    future = torch.where(future_mask > 0.5, torch.full_like(ground, 0.9), ground)
    ones = torch.ones(b, 1, size, size)
    return {"past": past, "future": future, "past_mask": past_mask, "future_mask": future_mask,
            "past_valid": ones.clone(), "future_valid": ones.clone(), "valid": ones.clone(),
            "has_mask": torch.ones(b, dtype=torch.bool)}


def test_components_match_scipy_with_8_neighbours():
    ndimage = pytest.importorskip("scipy.ndimage")
    g = torch.Generator().manual_seed(3)
    mask = (torch.rand(4, 1, 40, 40, generator=g) > 0.72).float()
    lab = building_components(mask)
    for i in range(4):
        want, n = ndimage.label(mask[i, 0].numpy(), structure=np.ones((3, 3)))
        got = lab[i, 0].numpy()
        assert ((got > 0) == (want > 0)).all()
        assert len(np.unique(got[got > 0])) == n
        for k in range(1, n + 1):  # each scipy component is exactly one of ours
            assert len(np.unique(got[want == k])) == 1


def test_fraction_one_erases_every_standing_building_from_the_past_only():
    batch = _labelled_batch()
    out = erase_buildings(batch, torch.Generator().manual_seed(0), 1.0)
    standing = (batch["past_mask"] > 0.5) & (batch["future_mask"] > 0.5)
    demolished = (batch["past_mask"] > 0.5) & ~(batch["future_mask"] > 0.5)
    assert not (out["past_mask"][standing] > 0).any()            # standing buildings cleared from the past mask
    assert (out["past_mask"][demolished] == 1).all()              # a demolished one is not a building to draw
    for key in ("future", "future_mask", "valid"):
        assert torch.equal(out[key], batch[key])
    # the erased footprints now look like the ground around them, not like the bright roofs
    assert out["past"][standing.expand_as(out["past"])].max() < 0.0
    assert batch["past"][standing.expand_as(batch["past"])].min() > 0.8
    # far from any building nothing changed
    near = torch.nn.functional.max_pool2d((batch["past_mask"] + batch["future_mask"]).clamp(max=1), 5, 1, 2) > 0
    assert torch.equal(out["past"][~near.expand_as(out["past"])], batch["past"][~near.expand_as(batch["past"])])
    # and the input batch is left as it was
    assert (batch["past_mask"][standing] == 1).all()


def test_partial_fraction_takes_whole_footprints_reproducibly():
    batch = _labelled_batch(b=16, seed=1)
    a = erase_buildings(batch, torch.Generator().manual_seed(5), 0.5)
    b = erase_buildings(batch, torch.Generator().manual_seed(5), 0.5)
    assert torch.equal(a["past"], b["past"]) and torch.equal(a["past_mask"], b["past_mask"])
    kept = [(a["past_mask"][i, 0, 4:8, 4:8].sum().item(), a["past_mask"][i, 0, 20:25, 20:25].sum().item())
            for i in range(16)]
    for ka, kb in kept:  # a footprint is either whole or gone
        assert ka in (0, 16) and kb in (0, 25)
    n_gone = sum((ka == 0) + (kb == 0) for ka, kb in kept)
    assert 4 <= n_gone <= 28  # about half of 32 footprints
    assert erase_buildings(batch, torch.Generator().manual_seed(5), 0.0) is batch


def test_unlabelled_pairs_pass_and_absent_context_frames_stay_empty():
    batch = _labelled_batch(b=2)
    batch["has_mask"] = torch.tensor([True, False])
    k = 2
    batch["context"] = torch.stack([batch["past"], torch.zeros_like(batch["past"])], dim=1)  # frame 2 absent
    batch["context_valid"] = torch.stack([batch["past_valid"], torch.zeros_like(batch["past_valid"])], dim=1)
    batch["context_present"] = torch.tensor([[True, False], [True, False]])
    out = erase_buildings(batch, torch.Generator().manual_seed(0), 1.0)
    assert torch.equal(out["past"][1], batch["past"][1]) and torch.equal(out["past_mask"][1], batch["past_mask"][1])
    assert not torch.equal(out["past"][0], batch["past"][0])
    assert out["context"].shape == batch["context"].shape and out["context"].shape[1] == k
    assert torch.allclose(out["context"][0, 0], out["past"][0])   # the t0 frame is erased like the past image
    assert torch.equal(out["context"][:, 1], torch.zeros_like(out["context"][:, 1]))


def test_background_fill_ignores_the_masked_pixels():
    img = torch.full((1, 1, 16, 16), -0.5)
    img[..., 6:10, 6:10] = 1.0
    keep = torch.ones(1, 1, 16, 16, dtype=torch.bool)
    keep[..., 5:11, 5:11] = False
    fill = background_fill(img, keep, sigma_px=2.0)
    assert torch.allclose(fill[..., 6:10, 6:10], torch.full((1, 1, 4, 4), -0.5), atol=1e-5)
    none_kept = background_fill(img, torch.zeros_like(keep), 2.0)  # no ground at all: no NaN
    assert torch.isfinite(none_kept).all()


def test_config_refuses_bad_fractions_and_training_applies_it(tiny_dataset_dir, tmp_path, monkeypatch):
    base = dict(dataset_dir=str(tiny_dataset_dir), runs_dir=str(tmp_path), profile="test", model="pix2pix", ngf=8,
                ndf=8, batch_size=4, max_steps=2, max_train_pairs=8, max_val_pairs=4, log_every_steps=1,
                progress=False, device="cpu", use_past_mask=True)
    with pytest.raises(ValueError, match="erase_building_fraction"):
        CGANTrainConfig(**base, erase_building_fraction=1.5)
    with pytest.raises(ValueError, match="augment"):
        CGANTrainConfig(**base, erase_building_fraction=0.3, augment=False)
    calls = []
    real = cgan_train.erase_buildings

    def spy(batch, generator, fraction):
        out = real(batch, generator, fraction)
        calls.append((fraction, float(batch["past_mask"].sum() - out["past_mask"].sum())))
        return out

    monkeypatch.setattr(cgan_train, "erase_buildings", spy)
    run = train_cgan(CGANTrainConfig(**base, erase_building_fraction=0.5))
    assert [c[0] for c in calls] == [0.5, 0.5]  # once per training step
    assert sum(c[1] for c in calls) > 0  # the tiny labelled areas have standing buildings: some were erased
    assert yaml.safe_load((run / "params.yaml").read_text())["erase_building_fraction"] == 0.5
    calls.clear()
    train_cgan(CGANTrainConfig(**{**base, "runs_dir": str(tmp_path / "off")}))
    assert calls == []  # the default leaves training as it was


def test_chapter_figure_shows_past_erased_and_future(tiny_dataset_dir):
    import matplotlib

    matplotlib.use("Agg")
    from stsynth_lib.cgan.plots import plot_erased_buildings
    from stsynth_lib.data.dataset import PairedTileDataset

    ds = PairedTileDataset(tiny_dataset_dir, "train")
    fig = plot_erased_buildings(ds, 1.0, n=2)
    axes = fig.axes
    assert len(axes) == 6 and "erased" in axes[1].get_title()
    assert len(axes[1].collections) >= 1  # the erased footprints are outlined
    ds.pairs["has_mask"] = False
    with pytest.raises(ValueError, match="labelled"):
        plot_erased_buildings(ds, 0.5)


def test_a_winding_building_is_one_component():
    m = torch.zeros(1, 1, 64, 64)
    for r in range(1, 63, 4):  # a serpentine: rows joined at alternating ends, a path of ~1,000 pixels
        m[0, 0, r, 1:63] = 1
        end = 62 if (r // 4) % 2 == 0 else 1
        m[0, 0, r:r + 5, end] = 1
    lab = building_components(m)
    assert len(torch.unique(lab[lab > 0])) == 1


def test_unusable_past_pixels_do_not_colour_the_fill():
    batch = _labelled_batch(b=1)
    batch["past"][..., :, 10:] = 0.95               # bright cloud over the right part...
    batch["past_valid"][..., :, 10:] = 0             # ...marked unusable
    out = erase_buildings(batch, torch.Generator().manual_seed(0), 1.0)
    a = out["past"][0, :, 4:8, 4:8]                  # building A sits left of the cloud
    assert a.max() < -0.3                            # filled from the usable ground only (in [-0.6, -0.4])


def test_training_refuses_erasing_without_labels(unlabelled_dataset_dir, tmp_path):
    cfg = CGANTrainConfig(dataset_dir=str(unlabelled_dataset_dir), runs_dir=str(tmp_path / "runs"), profile="test",
                          ngf=8, ndf=8, batch_size=4, max_steps=1, progress=False, device="cpu",
                          erase_building_fraction=0.3)
    with pytest.raises(ValueError, match="no building to erase"):
        train_cgan(cfg)
