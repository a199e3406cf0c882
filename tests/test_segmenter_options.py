"""The building segmenter's options for a stronger judge (issue 32): input upsampling, crops, tile sampling, boundary
weights. The defaults build and train the segmenter exactly as before; the options are recorded and rebuilt."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stsynth_lib.metrics.segmentation import (
    TRAIN_OPTION_DEFAULTS,
    SegUNet,
    _loss,
    boundary_map,
    input_multiple,
    load_or_train_segmenter,
    load_segmenter,
    predict_masks,
    save_segmenter,
    train_segmenter,
)


def test_default_segunet_is_unchanged():
    """No new parameter, no new config key, the same forward as a plain U-Net (same seed -> same weights)."""
    torch.manual_seed(0)
    a = SegUNet(3, 8, 2)
    torch.manual_seed(0)
    b = SegUNet(3, 8, 2, upsample=1)
    assert a.config == {"in_channels": 3, "base_channels": 8, "depth": 2} == b.config
    assert input_multiple(a) == 4
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(a.eval()(x), b.eval()(x), rtol=0, atol=0)
    assert [k for k, _ in a.named_parameters()] == [k for k, _ in b.named_parameters()]


@pytest.mark.parametrize("upsample", [2, 3])
def test_upsampled_segunet_shapes(upsample):
    m = SegUNet(3, 4, 3, upsample=upsample).eval()
    assert m.config["upsample"] == upsample
    assert input_multiple(m) == (4 if upsample == 2 else 8)
    h = 8 * 3
    out = m(torch.zeros(2, 3, h, h))
    assert out.shape == (2, 1, h, h)  # logits back at the input's size
    if upsample == 2:
        assert m(torch.zeros(1, 3, 12, 20)).shape == (1, 1, 12, 20)  # 12 * 2 is a multiple of 8
        with pytest.raises(ValueError, match="upsample=2"):
            m(torch.zeros(1, 3, 10, 12))
    with pytest.raises(ValueError, match="integer >= 1"):
        SegUNet(upsample=0)


def test_upsampled_segmenter_predicts_saves_and_rebuilds(tmp_path):
    m = SegUNet(3, 4, 2, upsample=2).eval()
    x = torch.rand(3, 3, 30, 30) * 2 - 1  # 30: padded to 32 inside predict_masks, cropped back
    masks = predict_masks(m, x)
    assert masks.shape == (3, 1, 30, 30)
    p = save_segmenter(m, tmp_path / "seg.pt", {"steps": 0, "upsample": 2})
    loaded, info = load_segmenter(p)
    assert loaded.upsample == 2 and loaded.config == m.config and info["upsample"] == 2
    np.testing.assert_array_equal(predict_masks(loaded, x), masks)


def test_boundary_loss():
    y = torch.zeros(1, 1, 8, 8)
    y[..., 2:6, 2:6] = 1
    b = boundary_map(y)
    assert b[0, 0, 4, 4] == 0 and b[0, 0, 2, 2] == 1 and b[0, 0, 1, 1] == 1 and b[0, 0, 0, 0] == 0
    logits, w = torch.randn(1, 1, 8, 8), torch.ones(1, 1, 8, 8)
    assert _loss(logits, y, w, 0.0) == _loss(logits, y, w)
    assert _loss(logits, y, w, 4.0) != _loss(logits, y, w)


def test_train_defaults_unchanged_and_options_recorded(tiny_dataset_dir, tmp_path):
    kw = dict(steps=2, batch_size=4, base_channels=4, depth=2, progress=False)
    m0, i0 = train_segmenter(tiny_dataset_dir, **kw)
    m1, i1 = train_segmenter(tiny_dataset_dir, **kw, **TRAIN_OPTION_DEFAULTS)  # the defaults, stated: the same run
    assert i0["losses"] == i1["losses"]
    assert not set(TRAIN_OPTION_DEFAULTS) & set(i0)  # a default run's info has no new key
    for a, b in zip(m0.state_dict().values(), m1.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)

    opts = dict(upsample=2, crop_px=16, edge_weight=2.0, sample_by="tiles")
    m2, i2 = train_segmenter(tiny_dataset_dir, **kw, **opts)
    assert {k: i2[k] for k in opts} == opts and i2["train_tiles"] > 0 and np.isfinite(i2["losses"]).all()
    assert m2.upsample == 2
    with pytest.raises(ValueError, match="crop_px"):
        train_segmenter(tiny_dataset_dir, **kw, upsample=1, crop_px=10)
    with pytest.raises(ValueError, match="sample_by"):
        train_segmenter(tiny_dataset_dir, **kw, sample_by="months")

    # load_or_train: a file trained with the defaults is not reused for an upsampled judge, and vice versa
    _, info, _ = load_or_train_segmenter(tmp_path / "runs", "t", tiny_dataset_dir, **kw)
    assert info["trained_now"]
    _, info, msg = load_or_train_segmenter(tmp_path / "runs", "t", tiny_dataset_dir, **kw, upsample=2)
    assert info["trained_now"] and "upsample 1, now 2" in msg
    model, info, _ = load_or_train_segmenter(tmp_path / "runs", "t", tiny_dataset_dir, **kw, upsample=2)
    assert not info["trained_now"] and model.upsample == 2


def test_decision_threshold_is_the_judges_own_and_never_retrains(tmp_path, tiny_dataset_dir):
    """A judge's decision threshold (chosen on validation, experiments/segmenter) is what predict_masks applies by
    default, survives save/load, and changing it reuses the saved weights instead of retraining."""
    torch.manual_seed(0)
    model = SegUNet(3, 4, 2).eval()
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        prob = torch.sigmoid(model(x)).numpy()
    low = float(np.quantile(prob, 0.3))  # another threshold than 0.5, whichever side the random judge lies on
    assert (predict_masks(model, x) == (prob > 0.5)).all()
    model.set_decision_threshold(low)
    assert model.config["decision_threshold"] == low
    got = predict_masks(model, x)
    assert (got == (prob > low)).all() and got.astype(int).sum() != (prob > 0.5).sum()
    assert (predict_masks(model, x, threshold=0.5) == (prob > 0.5)).all()  # an explicit threshold still wins
    path = save_segmenter(model, tmp_path / "judge.pt")
    loaded, _ = load_segmenter(path)
    assert loaded.decision_threshold == low and (predict_masks(loaded, x) == got).all()
    model.set_decision_threshold(0.5)
    assert "decision_threshold" not in model.config  # the default is not recorded: old files read the same
    with pytest.raises(ValueError, match="decision_threshold"):
        SegUNet(3, 4, 2, decision_threshold=1.0)

    kw = dict(steps=2, batch_size=2, base_channels=4, depth=2, progress=False)
    m0, info, _ = load_or_train_segmenter(tmp_path / "runs", "t", tiny_dataset_dir, **kw)
    assert info["trained_now"] and m0.decision_threshold == 0.5
    m1, info, msg = load_or_train_segmenter(tmp_path / "runs", "t", tiny_dataset_dir, decision_threshold=0.2, **kw)
    assert not info["trained_now"] and m1.decision_threshold == 0.2 and "above 0.2" in msg
    for a, b in zip(m0.state_dict().values(), m1.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
