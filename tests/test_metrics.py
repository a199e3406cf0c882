"""Metrics against independent implementations (scikit-image, pytorch-fid) and their edge cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.ndimage import gaussian_filter
from skimage.metrics import peak_signal_noise_ratio as sk_psnr
from skimage.metrics import structural_similarity as sk_ssim

from stsynth_lib import metrics as M
from stsynth_lib.metrics import weights as W
from stsynth_lib.metrics import perceptual as P


def _sk_ssim(a, b, data_range, full=False):
    return sk_ssim(a, b, data_range=data_range, channel_axis=0, gaussian_weights=True, sigma=1.5,
                   use_sample_covariance=False, full=full)


def _images(kind: str, rng: np.random.Generator, shape=(3, 48, 40)):
    """Pairs of [0, 1] images: random, structured (gradient / checkerboard / blobs) and their distortions."""
    c, h, w = shape
    if kind == "random":
        a = rng.random(shape)
        b = np.clip(a + 0.15 * rng.standard_normal(shape), 0, 1)
    elif kind == "gradient":
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        a = np.stack([xx, yy, (xx + yy) / 2])[:c]
        b = np.clip(a * 0.8 + 0.1, 0, 1)
    elif kind == "checker":
        yy, xx = np.mgrid[0:h, 0:w]
        a = np.repeat((((yy // 6) + (xx // 6)) % 2)[None].astype(float), c, 0)
        b = np.roll(a, 2, axis=-1) * 0.9
    else:  # smooth blobs, blurred
        a = np.stack([gaussian_filter(rng.random((h, w)), 3) for _ in range(c)])
        a = (a - a.min()) / (a.max() - a.min())
        b = np.stack([gaussian_filter(x, 1.2) for x in a])
    return a, b


@pytest.mark.parametrize("kind", ["random", "gradient", "checker", "blobs"])
@pytest.mark.parametrize("scale,data_range", [(1.0, 1.0), (255.0, 255.0)])
def test_psnr_ssim_match_skimage(kind, scale, data_range):
    rng = np.random.default_rng(0)
    a, b = _images(kind, rng)
    a, b = a * scale, b * scale
    assert M.masked_psnr(b, a, data_range=data_range)[0] == pytest.approx(sk_psnr(a, b, data_range=data_range), abs=1e-4)
    assert M.masked_ssim(b, a, data_range=data_range)[0] == pytest.approx(_sk_ssim(a, b, data_range), abs=1e-4)


def test_minus_one_one_range_and_wrong_data_range():
    """Images in [-1, 1] need data_range=2; the research code's data_range=1 inflates PSNR by 6.02 dB."""
    rng = np.random.default_rng(1)
    a, b = _images("random", rng)
    a2, b2 = a * 2 - 1, b * 2 - 1
    right = M.masked_psnr(b2, a2, data_range=2.0)[0]
    assert right == pytest.approx(M.masked_psnr(b, a, data_range=1.0)[0], abs=1e-9)
    assert M.masked_ssim(b2, a2, data_range=2.0)[0] == pytest.approx(_sk_ssim(a2, b2, 2.0), abs=1e-4)
    with pytest.raises(ValueError, match="data_range=1"):
        M.check_range(a2, 1.0)
    M.check_range(a2, 2.0)


def test_psnr_refuses_minus_one_one_input_with_data_range_one():
    """The research code's mistake ([-1, 1] images, data_range=1) quietly gave PSNR 6.02 dB too low; now it is refused."""
    rng = np.random.default_rng(1)
    a, b = _images("random", rng)
    with pytest.raises(ValueError, match=r"declares \[0.0, 1.0\]"):
        M.masked_psnr(b * 2 - 1, a * 2 - 1, data_range=1.0)


def test_ssim_refuses_input_outside_data_range():
    rng = np.random.default_rng(1)
    a, b = _images("random", rng)
    with pytest.raises(ValueError, match="SSIM pred"):
        M.masked_ssim(b * 2 - 1, a, data_range=1.0)
    with pytest.raises(ValueError, match="SSIM target"):
        M.masked_ssim(b, a * 255, data_range=1.0)


def test_masked_l1_refuses_mismatched_batch_sizes():
    rng = np.random.default_rng(2)
    one = rng.random((1, 3, 16, 16))
    four = rng.random((4, 3, 16, 16))
    with pytest.raises(ValueError, match="differ in shape"):
        M.masked_l1(one, four)


def test_nan_under_invalid_mask_does_not_poison_the_image_score():
    rng = np.random.default_rng(3)
    a, b = _images("blobs", rng, (3, 32, 32))
    valid = np.ones((32, 32))
    valid[:4, :4] = 0
    clean_psnr = M.masked_psnr(b, a, valid, 1.0)[0]
    clean_l1 = M.masked_l1(b, a, valid)[0]
    dirty_pred, dirty_target = b.copy(), a.copy()
    dirty_pred[:, 1, 1] = np.nan
    dirty_target[0, 2, 3] = np.inf
    assert M.masked_psnr(dirty_pred, dirty_target, valid, 1.0)[0] == pytest.approx(clean_psnr, abs=1e-12)
    assert M.masked_l1(dirty_pred, dirty_target, valid)[0] == pytest.approx(clean_l1, abs=1e-12)
    assert np.isfinite(M.masked_ssim(dirty_pred, dirty_target, valid, 1.0)[0])


def test_nan_at_a_valid_pixel_is_refused_naming_the_image():
    rng = np.random.default_rng(4)
    a = rng.random((3, 3, 16, 16))
    b = a.copy()
    b[2, 0, 8, 8] = np.nan
    for fn in (lambda: M.masked_psnr(b, a, None, 1.0), lambda: M.masked_l1(b, a), lambda: M.masked_ssim(b, a, None, 1.0)):
        with pytest.raises(ValueError, match=r"NaN/inf value\(s\) at valid pixels \(images \[2\]\)"):
            fn()


def test_batch_is_per_image_mean_not_pooled():
    rng = np.random.default_rng(2)
    pairs = [_images(k, rng) for k in ("random", "gradient", "checker")]
    a = np.stack([p[0] for p in pairs])
    b = np.stack([p[1] for p in pairs])
    per = M.masked_psnr(b, a, data_range=1.0)
    expect = [sk_psnr(x, y, data_range=1.0) for x, y in zip(a, b)]
    np.testing.assert_allclose(per, expect, atol=1e-6)
    pooled = sk_psnr(a, b, data_range=1.0)
    assert abs(per.mean() - pooled) > 0.1  # the two aggregations really differ here


def test_masked_metrics_ignore_invalid_pixels():
    rng = np.random.default_rng(3)
    a, b = _images("blobs", rng, (3, 40, 40))
    valid = np.ones((40, 40))
    valid[:, 25:] = 0
    valid[5:9, 3:30] = 0
    garbage = b.copy()
    garbage[:, valid == 0] = rng.random((3, int((valid == 0).sum())))
    # PSNR / L1: exactly the valid-pixel values, whatever the invalid pixels hold
    sel = valid.astype(bool)
    mse = ((garbage - a)[:, sel] ** 2).mean()
    assert M.masked_psnr(garbage, a, valid, 1.0)[0] == pytest.approx(10 * np.log10(1 / mse), abs=1e-9)
    assert M.masked_psnr(garbage, a, valid, 1.0)[0] == pytest.approx(M.masked_psnr(b, a, valid, 1.0)[0], abs=1e-9)
    assert M.masked_l1(garbage, a, valid)[0] == pytest.approx(np.abs(b - a)[:, sel].mean(), abs=1e-12)
    assert M.masked_psnr(garbage, a, None, 1.0)[0] != pytest.approx(M.masked_psnr(b, a, None, 1.0)[0], abs=1e-3)
    # SSIM: skimage's full map averaged over the valid pixels of its (cropped) interior
    _, smap = _sk_ssim(a, garbage, 1.0, full=True)
    r = 5
    inner = sel[r:-r, r:-r]
    expect = smap[:, r:-r, r:-r].mean(0)[inner].mean()
    assert M.masked_ssim(garbage, a, valid, 1.0)[0] == pytest.approx(expect, abs=1e-4)
    # all-invalid -> NaN, not a number that would bias a mean
    assert np.isnan(M.masked_psnr(b, a, np.zeros((40, 40)), 1.0)[0])
    assert np.isnan(M.masked_ssim(b, a, np.zeros((40, 40)), 1.0)[0])


def test_identical_images_edge_cases():
    rng = np.random.default_rng(4)
    a = rng.random((2, 3, 32, 32))
    psnr = M.masked_psnr(a, a, data_range=1.0)
    assert np.isposinf(psnr).all()
    assert M.finite_psnr(psnr, cap_db=100.0).tolist() == [100.0, 100.0]
    np.testing.assert_allclose(M.masked_ssim(a, a, data_range=1.0), 1.0, atol=1e-12)
    with pytest.raises(ValueError, match="at least 11"):
        M.masked_ssim(a[..., :8, :8], a[..., :8, :8], data_range=1.0)


@pytest.fixture()
def empty_torch_home(tmp_path, monkeypatch):
    """A torch cache and a project cache without any weights, and no network fetch: what an offline machine has."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("STSYNTH_WEIGHTS_DIR", str(tmp_path / "stsynth-weights"))
    monkeypatch.setenv("STSYNTH_WEIGHTS_FETCH", "0")
    return tmp_path / "torch"


def test_missing_weights_fail_with_clear_message(empty_torch_home):
    with pytest.raises(P.MissingWeightsError) as e:
        P.LPIPSMetric("alex", allow_uncalibrated=False)
    msg = str(e.value)
    assert "alexnet-owt-7be5be79.pth" in msg and str(empty_torch_home / "hub" / "checkpoints") in msg
    assert "allow_uncalibrated_metrics" in msg and "make weights" in msg
    with pytest.raises(P.MissingWeightsError, match="vgg16-397923af.pth"):
        P.LPIPSMetric("vgg", allow_uncalibrated=False)
    with pytest.raises(P.MissingWeightsError, match="pt_inception-2015-12-05-6726825d.pth"):
        P.InceptionFeatures(allow_uncalibrated=False)
    assert not any(empty_torch_home.rglob("*.pth"))  # nothing was downloaded or created
    assert not any((empty_torch_home.parent / "stsynth-weights").rglob("*"))


def test_uncalibrated_lpips_is_labelled_and_behaves(empty_torch_home):
    lp = P.LPIPSMetric("alex", allow_uncalibrated=True, seed=0)
    assert lp.calibrated is False and "uncalibrated" in lp.name
    rng = np.random.default_rng(5)
    a = rng.random((4, 3, 32, 32)) * 2 - 1
    b = np.clip(a + 0.3 * rng.standard_normal(a.shape), -1, 1)
    np.testing.assert_allclose(lp(a, a), 0.0, atol=1e-7)
    d = lp(b, a)
    assert (d > 0).all()
    # seeded: a second random backbone gives the same numbers
    np.testing.assert_allclose(P.LPIPSMetric("alex", allow_uncalibrated=True, seed=0)(b, a), d, rtol=1e-6)
    # masked LPIPS with every pixel valid is the mean of the spatial map, close to lpips' scalar form
    import lpips as lpips_pkg

    scalar = lpips_pkg.LPIPS(net="alex", pretrained=True, pnet_rand=True, spatial=False, verbose=False)
    scalar.load_state_dict(lp.model.state_dict())
    with torch.no_grad():
        ref = scalar(torch.tensor(b, dtype=torch.float32), torch.tensor(a, dtype=torch.float32)).flatten().numpy()
    np.testing.assert_allclose(d, ref, rtol=0.1)
    # half the pixels masked: a corruption there no longer counts
    valid = np.zeros((4, 1, 32, 32))
    valid[..., :16] = 1
    c = a.copy()
    c[..., 24:] = -1
    assert lp(c, a, valid).mean() < lp(c, a).mean()
    assert P.label("LPIPS", False) == "LPIPS (uncalibrated)" and P.label("LPIPS", True) == "LPIPS"
    assert lp.description == "LPIPS-alex, random torchvision AlexNet (uncalibrated)"
    with pytest.raises(ValueError, match="declares"):
        lp((a + 1) * 127.5, a)


def test_lpips_refuses_zero_one_input_declared_as_minus_one_one(empty_torch_home):
    lp = P.LPIPSMetric("alex", allow_uncalibrated=True, seed=0)
    rng = np.random.default_rng(5)
    a01 = rng.random((2, 3, 32, 32))
    b01 = np.clip(a01 + 0.1 * rng.standard_normal(a01.shape), 0, 1)
    with pytest.raises(ValueError, match=r"looks like \[0, 1\] images"):
        lp(b01, a01)
    # declared explicitly, the same images give exactly the [-1, 1] result
    np.testing.assert_allclose(lp(b01, a01, input_range=(0, 1)), lp(b01 * 2 - 1, a01 * 2 - 1), rtol=1e-6)
    with pytest.raises(ValueError, match="declares"):
        lp(b01 * 2 - 1, a01 * 2 - 1, input_range=(0, 1))


def test_lpips_nan_under_invalid_mask_is_ignored_and_at_valid_pixels_refused(empty_torch_home):
    lp = P.LPIPSMetric("alex", allow_uncalibrated=True, seed=0)
    rng = np.random.default_rng(6)
    a = rng.random((2, 3, 32, 32)) * 2 - 1
    b = np.clip(a + 0.2 * rng.standard_normal(a.shape), -1, 1)
    valid = np.ones((2, 1, 32, 32))
    valid[..., :3, :3] = 0
    b_nan = b.copy()
    b_nan[1, :, 1, 1] = np.nan
    assert np.isfinite(lp(b_nan, a, valid)).all()
    with pytest.raises(ValueError, match="at valid pixels"):
        lp(b_nan, a)


def test_cached_weights_are_loaded_as_calibrated(empty_torch_home):
    """With the weights file in the cache, the real loading code is used (no download)."""
    import torchvision

    sd = torchvision.models.alexnet().state_dict()
    path = W.hub_path("alex")
    path.parent.mkdir(parents=True)
    torch.save(sd, path)
    lp = P.LPIPSMetric("alex", allow_uncalibrated=False)
    assert lp.calibrated and lp.name == "LPIPS"
    assert torch.equal(lp.model.net.slice1[0].weight.cpu(), sd["features.0.weight"])


def _fid_reference(f1, f2):
    """The project's former hand-written FID: tr sqrt(S1 S2) as the nuclear norm of A B^T (exact for n < d)."""
    mu1, mu2 = f1.mean(0), f2.mean(0)
    a = (f1 - mu1) / np.sqrt(len(f1) - 1)
    b = (f2 - mu2) / np.sqrt(len(f2) - 1)
    nuc = np.linalg.svd(a @ b.T, compute_uv=False).sum()
    return float(((mu1 - mu2) ** 2).sum() + (a * a).sum() + (b * b).sum() - 2 * nuc)


def _kid_reference(x, y):
    """Unbiased MMD^2 with the cubic polynomial kernel (Binkowski et al. 2018) on whole sets."""
    d, m = x.shape[1], len(x)
    kxx, kyy, kxy = ((x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3)
    return (kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean()


def test_fid_by_torchmetrics_matches_pytorch_fid_and_the_former_formula():
    from pytorch_fid.fid_score import calculate_frechet_distance
    from torchmetrics.image.fid import FrechetInceptionDistance

    rng = np.random.default_rng(6)
    f1 = rng.standard_normal((300, 24))
    f2 = rng.standard_normal((250, 24)) * 1.3 + 0.4
    ref = calculate_frechet_distance(f1.mean(0), np.cov(f1, rowvar=False), f2.mean(0), np.cov(f2, rowvar=False))
    assert P.fid_from_features(f1, f2) == pytest.approx(ref, rel=1e-6)
    assert P.fid_from_features(f1, f2) == pytest.approx(_fid_reference(f1, f2), rel=1e-6)
    # torchmetrics on the raw features, no change of basis: the same number
    raw = FrechetInceptionDistance(feature=P.PrecomputedFeatures(24))
    raw.update(torch.from_numpy(f2), real=True)
    raw.update(torch.from_numpy(f1), real=False)
    assert P.fid_from_features(f1, f2) == pytest.approx(float(raw.compute()), rel=1e-6)
    # fewer samples than dimensions (singular covariances), Inception-like non-negative features
    g = rng.standard_normal((40, 2048)) ** 2
    h = rng.standard_normal((30, 2048)) ** 2 * 1.2
    assert P.fid_from_features(g, h) == pytest.approx(_fid_reference(g, h), rel=1e-6)
    assert P.fid_from_features(g, g) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        P.fid_from_features(g[:1], g)


def test_kid_by_torchmetrics_matches_the_unbiased_mmd():
    rng = np.random.default_rng(7)
    f1 = rng.standard_normal((60, 32))
    f2 = rng.standard_normal((60, 32)) * 1.2 + 0.3
    # one subset holding every image: no sampling, exactly the unbiased MMD^2 of the sets
    mean, std = P.kid_from_features(f1, f2, subset_size=60, n_subsets=1)
    assert mean == pytest.approx(_kid_reference(f1, f2), rel=1e-9) and std == 0.0
    kid_same, _ = P.kid_from_features(f1[:30], f1[30:], subset_size=100, n_subsets=20)
    kid_diff, kid_std = P.kid_from_features(f1, f2, subset_size=100, n_subsets=20)
    assert abs(kid_same) < 0.05 < kid_diff and kid_std > 0
    assert P.kid_from_features(f1, f2, subset_size=100, n_subsets=20) == (kid_diff, kid_std)  # seeded
    assert P.kid_subset_size(60, 80, 1000, 20) == 30 and P.kid_subset_size(5000, 4000, 1000, 20) == 1000


@pytest.mark.slow
def test_torchmetrics_fid_with_the_inception_module_equals_the_evaluation_path(empty_torch_home):
    """A reader's torchmetrics, given our Inception as ``feature``, gives the FID that fid_report computes."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    feat = P.InceptionFeatures(allow_uncalibrated=True, seed=0)
    rng = np.random.default_rng(8)
    real = rng.integers(0, 256, (6, 3, 40, 40), dtype=np.uint8)
    fake = np.clip(real.astype(int) // 2 + 60 + rng.integers(0, 40, real.shape), 0, 255).astype(np.uint8)
    tm = FrechetInceptionDistance(feature=feat.as_feature_module())
    tm.update(torch.from_numpy(real), real=True)
    tm.update(torch.from_numpy(fake), real=False)
    ours = P.fid_from_features(feat(fake), feat(real))
    assert ours == pytest.approx(float(tm.compute()), rel=1e-4)


def test_uncalibrated_inception_fid_about_zero_for_identical_sets(empty_torch_home):
    feat = P.InceptionFeatures(allow_uncalibrated=True, seed=0)
    assert feat.calibrated is False
    rng = np.random.default_rng(7)
    x = rng.integers(0, 256, (6, 3, 32, 32), dtype=np.uint8)
    f = feat(x, batch_size=6)
    assert f.shape == (6, 2048) and np.isfinite(f).all() and f.std() > 0
    assert P.fid_from_features(f, f) == pytest.approx(0.0, abs=1e-6)
    y = np.clip(x.astype(int) // 3 + 150, 0, 255).astype(np.uint8)
    assert P.fid_from_features(feat(y, batch_size=6), f) > 1e-3


def test_building_scores():
    rng = np.random.default_rng(8)
    truth = (rng.random((3, 1, 16, 16)) < 0.2).astype(np.uint8)
    perfect = M.building_scores(truth, truth)
    np.testing.assert_array_equal(perfect["f1"], 1.0)
    np.testing.assert_array_equal(perfect["iou"], 1.0)
    empty = M.building_scores(np.zeros_like(truth), truth)
    np.testing.assert_array_equal(empty["f1"], 0.0)
    np.testing.assert_array_equal(empty["recall"], 0.0)
    assert np.isnan(empty["precision"]).all()
    # hand-made counts: 2 TP, 1 FP, 1 FN -> P = R = 2/3, F1 = 2/3, IoU = 1/2
    t = np.zeros((1, 4, 4))
    p = np.zeros((1, 4, 4))
    t[0, 0, :3] = 1
    p[0, 0, 1:4] = 1
    s = M.building_scores(p, t)
    assert (s["tp"][0], s["fp"][0], s["fn"][0]) == (2, 1, 1)
    assert s["f1"][0] == pytest.approx(2 / 3) and s["iou"][0] == pytest.approx(0.5)
    # invalid pixels do not count: hide the FP
    v = np.ones((1, 4, 4))
    v[0, 0, 3] = 0
    assert M.building_scores(p, t, v)["fp"][0] == 0
    assert M.micro_f1(np.array([[2, 1, 1], [0, 0, 0]])) == pytest.approx(2 / 3)


def test_new_building_scores_and_change_masks():
    past = np.zeros((1, 1, 8, 8))
    past[..., :2, :2] = 1
    future = past.copy()
    future[..., 5:7, 5:7] = 1  # a new building
    copy_past = M.new_building_scores(past, future, past)
    assert copy_past["recall"][0] == 0 and copy_past["f1"][0] == 0
    drawn = M.new_building_scores(future, future, past)
    assert drawn["f1"][0] == 1 and drawn["tp"][0] == 4
    changed, unchanged = M.change_masks(past, future)
    assert changed.sum() == 4 and unchanged.sum() == 60
    v = np.ones((8, 8))
    v[5, 5] = 0
    changed, unchanged = M.change_masks(past, future, v)
    assert changed.sum() == 3 and unchanged.sum() == 60


def test_bootstrap_ci():
    rng = np.random.default_rng(9)
    x = rng.normal(5, 1, 400)
    est, lo, hi, n = M.bootstrap_ci(np.r_[x, np.nan], n_boot=500, seed=0)
    assert n == 400 and est == pytest.approx(x.mean()) and lo < est < hi
    assert hi - lo == pytest.approx(2 * 1.96 / np.sqrt(400), rel=0.2)
    assert M.bootstrap_ci(np.r_[x, np.nan], n_boot=500, seed=0) == (est, lo, hi, n)
    assert M.bootstrap_ci([np.nan])[3] == 0


def test_drawn_new_buildings_cancel_the_segmenters_background_false_alarms():
    from stsynth_lib import metrics as M

    past_mask, future_mask = np.zeros((1, 1, 8, 8)), np.zeros((1, 1, 8, 8))
    future_mask[..., 0:2, 0:2] = 1  # one new building of 4 px
    seg_past = np.zeros((1, 1, 8, 8))
    seg_past[..., 6:8, :] = 1  # the segmenter's false alarm on the background, on every date
    seg_copy = seg_past.copy()  # persistence: the past image segments the same
    seg_drawn = seg_past.copy()
    seg_drawn[..., 0:2, 0:1] = 1  # a model that drew half of the new building
    assert M.drawn_new_building_scores(seg_copy, seg_past, future_mask, past_mask)["f1"][0] == 0
    d = M.drawn_new_building_scores(seg_drawn, seg_past, future_mask, past_mask)
    assert d["tp"][0] == 2 and d["fp"][0] == 0 and d["fn"][0] == 2 and d["f1"][0] == pytest.approx(2 / 3)
    # the region-only score counts the 16 background false alarms against the model and persistence alike
    n = M.new_building_scores(seg_drawn, future_mask, past_mask)
    assert n["fp"][0] == 16 and n["f1"][0] == pytest.approx(4 / (4 + 16 + 2))


def test_many_mask_psnr_and_l1_equal_one_call_per_mask():
    """The evaluation scores every region from one error map: the numbers are those of one call per mask, exactly."""
    rng = np.random.default_rng(3)
    p, t = rng.random((4, 3, 24, 24)), rng.random((4, 3, 24, 24))
    valid = (rng.random((4, 1, 24, 24)) > 0.1).astype(np.float32)
    masks = [valid, valid * (rng.random((4, 1, 24, 24)) > 0.5), np.zeros_like(valid)]
    psnr, l1 = M.masked_psnr_many(p, t, masks, data_range=1.0), M.masked_l1_many(p, t, masks)
    for k, m in enumerate(masks):
        np.testing.assert_array_equal(psnr[k], M.masked_psnr(p, t, m, data_range=1.0))
        np.testing.assert_array_equal(l1[k], M.masked_l1(p, t, m))
    assert np.isnan(psnr[2]).all() and np.isnan(l1[2]).all()  # an empty mask: NaN, as one call gives
    with pytest.raises(ValueError, match="data_range"):
        M.masked_psnr_many(p * 2, t, masks, data_range=1.0)


def test_check_range_ignores_non_finite_values_and_refuses_out_of_range_ones():
    x = np.array([0.0, 0.5, np.nan, np.inf, 1.0])
    M.check_range(x, 1.0)  # NaN / inf are clean_invalid's business
    with pytest.raises(ValueError, match=r"values in \[-0.5, 1\]"):
        M.check_range(np.array([-0.5, np.nan, 1.0]), 1.0)
    M.check_range(torch.tensor([-1.0, 1.0], dtype=torch.float32), 2.0)  # tensors checked in their own dtype


def test_new_building_objects_count_what_the_judge_sees():
    """Two new buildings (and one standing since t0): the judge covers one fully and 40 % of the other -> 1 of 2
    drawn at min_share 0.5, 2 of 2 at 0.4; its pixels where neither date has a footprint are counted apart."""
    past = np.zeros((1, 12, 12))
    past[0, 0:3, 0:3] = 1  # stood at t0: not new
    fut = past.copy()
    fut[0, 5:7, 5:10] = 1  # new, 10 px
    fut[0, 9:11, 0:2] = 1  # new, 4 px
    judge = np.zeros((1, 12, 12))
    judge[0, 5:7, 5:7] = 1  # 4 of the first new building's 10 px: 40 %
    judge[0, 9:11, 0:2] = 1  # all of the second
    judge[0, 0:3, 0:3] = 1  # the old one
    judge[0, 11, 11] = 1  # a building nobody asked for
    out = M.new_building_objects(judge, fut, past)
    assert out["new_objects"].tolist() == [2] and out["new_objects_drawn"].tolist() == [1]
    assert M.new_building_objects(judge, fut, past, min_share=0.4)["new_objects_drawn"].tolist() == [2]
    assert out["unrequested_px"].tolist() == [1] and out["unbuilt_px"].tolist() == [144 - 9 - 14]
    valid = np.ones((1, 12, 12))
    valid[0, 9:11, 0:2] = 0  # a cloud over the second: it is not scored
    assert M.new_building_objects(judge, fut, past, valid)["new_objects"].tolist() == [1]


def test_pooled_ratio_summary_and_paired_difference():
    from stsynth_lib.evaluate.stats import paired_vs_baseline, summarise

    rows = []
    for model, drawn in (("persistence", (0, 0, 0, 0)), ("m", (1, 2, 0, 3))):
        for k, d in enumerate(drawn):
            rows.append({"model": model, "pair_id": k, "aoi": "a" if k < 2 else "b", "cluster": "a" if k < 2 else "b",
                         "common": True, "new_objects": 4.0, "new_objects_drawn": float(d), "unrequested_px": 1.0,
                         "unbuilt_px": 10.0, "psnr": 20.0, "gap_months": 1, "gap_bucket": "1"})
    per_tile = pd.DataFrame(rows)
    s = summarise(per_tile, n_boot=50).set_index(["model", "metric"])
    assert s.loc[("m", "object_recall_new"), "mean"] == pytest.approx(6 / 16)
    assert s.loc[("m", "unrequested_share"), "mean"] == pytest.approx(0.1)
    table = paired_vs_baseline(per_tile, "persistence", metrics=("object_recall_new",), n_boot=200)
    row = table.set_index("metric").loc["object_recall_new"]
    assert row["mean_diff"] == pytest.approx(6 / 16)
