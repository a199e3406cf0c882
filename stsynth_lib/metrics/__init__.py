"""Image-quality, distribution and building metrics, with validity masks and an honest offline-weights rule.

Conventions
-----------
* Images are ``(B, C, H, W)`` (or ``(C, H, W)``) arrays/tensors in a **declared range**; every
  pixel-wise metric takes the matching ``data_range`` (``1.0`` for [0, 1], ``2.0`` for [-1, 1],
  ``255`` for uint8). The evaluation uses [0, 1] floats made from the saved uint8 tiles
  (``data_range=1.0``). Passing [-1, 1] images with ``data_range=1`` -- the bug of the original
  research code -- lowers PSNR by 20*log10(2) = 6.02 dB; :func:`check_range` refuses it in every metric.
* ``valid`` masks are ``(B, 1, H, W)`` / ``(B, H, W)`` in {0, 1}: 1 = the pixel counts (not cloud,
  UDM or nodata). Metrics are computed **per image over its valid pixels**, then averaged over
  images by the caller (never a mean of running means). An image with no valid pixel gives NaN.
* PSNR of an exact match is ``inf`` (mse = 0); :func:`finite_psnr` caps it for averages.
* SSIM: the map is computed on the whole image with skimage's settings (gaussian window sigma 1.5,
  truncate 3.5 -> 11 x 11, ``use_sample_covariance=False``, K1 0.01, K2 0.03), cropped by the
  5 px border exactly as ``skimage.metrics.structural_similarity`` does, and averaged over the
  valid pixels of that interior (and over channels). With every pixel valid it equals skimage's value.
* Every pixel metric checks its input: values outside the declared range, mismatched shapes or batch sizes,
  and NaN / inf at valid pixels raise ``ValueError``; NaN / inf at *invalid* pixels (``valid == 0``) are
  ignored (replaced by 0 before the computation; for SSIM that value enters the windows of neighbouring
  valid pixels like any invalid pixel's value does).
* LPIPS, FID and KID need pretrained networks: they live in the submodule :mod:`stsynth_lib.metrics.perceptual`
  (``LPIPSMetric``, ``InceptionFeatures``, ``fid_from_features``, ``kid_from_features``, ``label``, ``UNCALIBRATED``,
  ``MissingWeightsError``; weights from :mod:`stsynth_lib.metrics.weights`, converted by
  :mod:`stsynth_lib.metrics.backbones`). The building judge is :mod:`stsynth_lib.metrics.segmentation`. This module
  imports none of them (they import it).
* Building scores are pixel-level (precision, recall, F1, IoU), from TP/FP/FN counts so they can
  be micro-averaged over tiles.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

# --------------------------------------------------------------------------- helpers


def _as_tensor(x, dtype=torch.float64) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", dtype)
    return torch.as_tensor(np.asarray(x), dtype=dtype)


def _bchw(x: torch.Tensor) -> torch.Tensor:
    if x.ndim == 2:
        return x[None, None]
    if x.ndim == 3:
        return x[None]
    if x.ndim != 4:
        raise ValueError(f"expected an image (C, H, W) or a batch (B, C, H, W), got shape {tuple(x.shape)}")
    return x


def _mask_b1hw(valid, like: torch.Tensor) -> torch.Tensor:
    """Validity mask as float64 (B, 1, H, W); ``None`` = every pixel valid."""
    if valid is None:
        return torch.ones((like.shape[0], 1, *like.shape[-2:]), dtype=torch.float64)
    m = _as_tensor(valid)
    if m.ndim == 2:
        m = m[None, None]
    elif m.ndim == 3:
        # (B, H, W) or (1, H, W)
        m = m[:, None]
    if m.shape[0] == 1 and like.shape[0] > 1:
        m = m.expand(like.shape[0], *m.shape[1:])
    if m.shape[1] != 1 or m.shape[-2:] != like.shape[-2:] or m.shape[0] != like.shape[0]:
        raise ValueError(f"valid mask of shape {tuple(m.shape)} does not match images of shape {tuple(like.shape)}")
    return (m > 0.5).to(torch.float64)


def check_range(x, data_range: float, name: str = "image") -> None:
    """Raise if ``x`` holds values outside the declared ``[0, data_range]`` / ``[-1, 1]`` range.

    A ``data_range`` of 2 means [-1, 1]; any other value means [0, data_range]. Only finite values are checked
    (NaN / inf are the business of :func:`clean_invalid`).
    """
    t = x.detach().cpu() if isinstance(x, torch.Tensor) else _as_tensor(x)  # min/max need no float64 copy
    finite = torch.isfinite(t)
    if not bool(finite.all()):  # the common case (all finite) needs no masked copy
        t = t[finite]
    if t.numel() == 0:
        return
    lo, hi = (-1.0, 1.0) if data_range == 2.0 else (0.0, float(data_range))
    tol = 1e-6 * max(1.0, abs(hi))
    mn, mx = (float(v) for v in torch.aminmax(t))
    if mn < lo - tol or mx > hi + tol:
        raise ValueError(
            f"{name} has values in [{mn:.4g}, {mx:.4g}] but data_range={data_range} declares [{lo}, {hi}]. "
            "Rescale the images (uint8 -> /255 for [0, 1]) or pass the matching data_range."
        )


def clean_invalid(p: torch.Tensor, t: torch.Tensor, m: torch.Tensor | None, name: str = "image", fill: float = 0.0):
    """``p``, ``t`` with non-finite values at invalid pixels (``m == 0``) replaced by ``fill``; raises where ``m == 1``.

    One NaN under a cloud must not turn the whole image's score into NaN; a NaN at a valid pixel is a bug upstream and
    is reported, not averaged away. ``m`` is (B, 1, H, W) or None (every pixel valid).
    """
    bad_p, bad_t = ~torch.isfinite(p), ~torch.isfinite(t)
    if not (bad_p.any() or bad_t.any()):
        return p, t
    valid = torch.ones_like(p[:, :1], dtype=torch.bool) if m is None else m.to(p.device) > 0.5
    for bad, who in ((bad_p, "pred"), (bad_t, "target")):
        at_valid = bad & valid
        if at_valid.any():
            imgs = sorted({int(i) for i in at_valid.nonzero()[:, 0]})
            raise ValueError(f"{name}: {who} holds {int(at_valid.sum())} NaN/inf value(s) at valid pixels "
                             f"(images {imgs[:10]}{' ...' if len(imgs) > 10 else ''}); mask them out or fix the input")
    return torch.where(bad_p, torch.as_tensor(fill, dtype=p.dtype), p), torch.where(bad_t, torch.as_tensor(fill, dtype=t.dtype), t)


def _checked_pair(pred, target, valid, data_range: float | None, name: str):
    """(pred, target, mask) as float64 (B, C, H, W) / (B, 1, H, W): same shape, finite where valid, in range."""
    p, t = _bchw(_as_tensor(pred)), _bchw(_as_tensor(target))
    if p.shape != t.shape:
        raise ValueError(f"{name}: pred {tuple(p.shape)} and target {tuple(t.shape)} differ in shape (batch sizes included)")
    m = _mask_b1hw(valid, p)
    p, t = clean_invalid(p, t, m, name)
    if data_range is not None:
        check_range(p, data_range, f"{name} pred")
        check_range(t, data_range, f"{name} target")
    return p, t, m


# --------------------------------------------------------------------------- PSNR / SSIM / L1


def masked_psnr(pred, target, valid=None, data_range: float = 1.0) -> np.ndarray:
    """Per-image PSNR (dB) over valid pixels: ``10 log10(data_range^2 / mse)``; shape (B,).

    ``inf`` where the valid pixels match exactly, NaN where an image has no valid pixel. Refuses input outside
    [0, data_range] ([-1, 1] for data_range=2) and NaN at valid pixels.
    """
    return masked_psnr_many(pred, target, [valid], data_range)[0]


def masked_psnr_many(pred, target, valids: Sequence, data_range: float = 1.0) -> list[np.ndarray]:
    """:func:`masked_psnr` for several masks (e.g. valid, changed, unchanged, new) from one squared-error map: the
    same numbers as one call per mask, the input converted and checked once (against the first mask)."""
    p, t, _ = _checked_pair(pred, target, valids[0] if len(valids) else None, data_range, "PSNR")
    d2 = (p - t) ** 2
    outs = []
    for valid in valids:
        m = _mask_b1hw(valid, p)
        se = (d2 * m).sum(dim=(1, 2, 3))
        n = m.sum(dim=(1, 2, 3)) * p.shape[1]
        with np.errstate(divide="ignore", invalid="ignore"):
            out = 10.0 * np.log10(float(data_range) ** 2 / (se / n).numpy())
        out[n.numpy() == 0] = np.nan
        outs.append(out)
    return outs


def masked_l1_many(pred, target, valids: Sequence) -> list[np.ndarray]:
    """:func:`masked_l1` for several masks from one absolute-error map (same numbers as one call per mask)."""
    p, t, _ = _checked_pair(pred, target, valids[0] if len(valids) else None, None, "L1")
    ad = (p - t).abs()
    outs = []
    for valid in valids:
        m = _mask_b1hw(valid, p)
        n = m.sum(dim=(1, 2, 3)) * p.shape[1]
        with np.errstate(divide="ignore", invalid="ignore"):
            outs.append((ad * m).sum(dim=(1, 2, 3)).numpy() / n.numpy())
    return outs


def masked_l1(pred, target, valid=None) -> np.ndarray:
    """Per-image mean absolute error over valid pixels (in the images' own units); shape (B,).

    Refuses pred and target of different shapes (no broadcasting of one image against a batch) and NaN at valid pixels.
    """
    return masked_l1_many(pred, target, [valid])[0]


def finite_psnr(values, cap_db: float = 100.0) -> np.ndarray:
    """PSNR values with ``inf`` (exact matches) replaced by ``cap_db`` so that means stay finite."""
    v = np.asarray(values, dtype=np.float64).copy()
    v[np.isposinf(v)] = cap_db
    return v


def _gaussian_kernel_1d(sigma: float = 1.5, truncate: float = 3.5) -> torch.Tensor:
    radius = int(truncate * sigma + 0.5)  # scipy.ndimage.gaussian_filter's radius
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _valid_filter_matrix(n: int, k: torch.Tensor) -> torch.Tensor:
    """(n, n - 2r) banded matrix M with ``(x @ M)[j] = sum_i k[i] x[j + i]``: 'valid' 1-D correlation as a matmul."""
    win = k.numel()
    m = torch.zeros(n, n - win + 1, dtype=k.dtype)
    cols = torch.arange(n - win + 1)
    for i in range(win):
        m[cols + i, cols] = k[i]
    return m


def ssim_map(pred, target, data_range: float, sigma: float = 1.5, truncate: float = 3.5,
             k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """SSIM map (B, C, H - 2r, W - 2r) with skimage's gaussian settings; r = 5 for sigma 1.5.

    The map covers the interior whose windows lie inside the image -- exactly the part that
    ``skimage.metrics.structural_similarity`` averages after its border crop. The separable
    gaussian is applied as two banded matrix products (float64), much faster on a CPU than a
    grouped float64 convolution.
    """
    p, t = _bchw(_as_tensor(pred)), _bchw(_as_tensor(target))
    if p.shape != t.shape:
        raise ValueError(f"pred {tuple(p.shape)} and target {tuple(t.shape)} differ in shape")
    k = _gaussian_kernel_1d(sigma, truncate)
    win = k.numel()
    if min(p.shape[-2:]) < win:
        raise ValueError(f"SSIM needs images of at least {win} x {win} px (gaussian window), got {tuple(p.shape[-2:])}")
    mh = _valid_filter_matrix(p.shape[-2], k)
    mw = _valid_filter_matrix(p.shape[-1], k)
    stack = torch.stack([p, t, p * p, t * t, p * t])  # (5, B, C, H, W)
    ux, uy, uxx, uyy, uxy = mh.T @ stack @ mw
    vx, vy, vxy = uxx - ux * ux, uyy - uy * uy, uxy - ux * uy
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    num = (2 * ux * uy + c1) * (2 * vxy + c2)
    den = (ux**2 + uy**2 + c1) * (vx + vy + c2)
    return num / den


def masked_ssim_many(pred, target, valids: Sequence, data_range: float = 1.0, sigma: float = 1.5) -> list[np.ndarray]:
    """:func:`masked_ssim` for several masks (e.g. valid, changed, unchanged) from one SSIM map.

    Input is checked against the first mask (NaN allowed only where it is 0) and against [0, data_range].
    """
    p, t, _ = _checked_pair(pred, target, valids[0] if len(valids) else None, data_range, "SSIM")
    s = ssim_map(p, t, data_range=data_range, sigma=sigma).mean(dim=1, keepdim=True)
    r = (p.shape[-1] - s.shape[-1]) // 2
    return _masked_map_means(s, p, valids, crop=r)


def _masked_map_means(maps: torch.Tensor, ref: torch.Tensor, valids: Sequence, crop: int = 0) -> list[np.ndarray]:
    """Per-image mean of a (B, 1, h, w) metric map over each mask's valid pixels (NaN where a mask is empty).

    ``ref`` is the full-size image batch the masks belong to; ``crop`` pixels are cut from each border of the masks
    to match a map computed without padding (SSIM's window).
    """
    outs = []
    for valid in valids:
        m = _mask_b1hw(valid, ref)
        if crop:
            m = m[..., crop : ref.shape[-2] - crop, crop : ref.shape[-1] - crop]
        n = m.sum(dim=(1, 2, 3))
        with np.errstate(divide="ignore", invalid="ignore"):
            out = ((maps * m).sum(dim=(1, 2, 3)) / n).numpy()
        out[n.numpy() == 0] = np.nan
        outs.append(out)
    return outs


def masked_ssim(pred, target, valid=None, data_range: float = 1.0, sigma: float = 1.5) -> np.ndarray:
    """Per-image SSIM averaged over the valid pixels of the interior (and channels); shape (B,).

    NaN where an image has no valid pixel in its interior.
    """
    return masked_ssim_many(pred, target, [valid], data_range=data_range, sigma=sigma)[0]


# --------------------------------------------------------------------------- building scores


def confusion_counts(pred_mask, true_mask, valid=None) -> dict[str, np.ndarray]:
    """Per-image pixel TP, FP, FN, TN over valid pixels for binary masks (B, [1,] H, W)."""
    p = _bchw(_as_tensor(pred_mask)) > 0.5
    t = _bchw(_as_tensor(true_mask)) > 0.5
    if p.shape != t.shape:
        raise ValueError(f"predicted mask {tuple(p.shape)} and true mask {tuple(t.shape)} differ in shape")
    m = _mask_b1hw(valid, p.double()) > 0.5
    dims = (1, 2, 3)
    return {
        "tp": (p & t & m).sum(dim=dims).numpy(),
        "fp": (p & ~t & m).sum(dim=dims).numpy(),
        "fn": (~p & t & m).sum(dim=dims).numpy(),
        "tn": (~p & ~t & m).sum(dim=dims).numpy(),
    }


def scores_from_counts(tp, fp, fn) -> dict[str, np.ndarray]:
    """Precision, recall, F1, IoU from counts (arrays or scalars).

    F1 and IoU are 1 when there is nothing to find and nothing was found (tp = fp = fn = 0); precision
    is NaN without positive predictions, recall NaN without true positives.
    """
    tp, fp, fn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, fn))
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), np.nan)
        recall = np.where(tp + fn > 0, tp / (tp + fn), np.nan)
        denom = 2 * tp + fp + fn
        f1 = np.where(denom > 0, 2 * tp / denom, 1.0)
        iou = np.where(tp + fp + fn > 0, tp / (tp + fp + fn), 1.0)
    return {"precision": precision, "recall": recall, "f1": f1, "iou": iou}


def building_scores(pred_mask, true_mask, valid=None) -> dict[str, np.ndarray]:
    """Per-image pixel precision/recall/F1/IoU (+ counts) of predicted vs true building masks."""
    c = confusion_counts(pred_mask, true_mask, valid)
    return {**c, **scores_from_counts(c["tp"], c["fp"], c["fn"])}


def new_building_region(past_mask, valid=None) -> torch.Tensor:
    """Pixels that were *not* building at t0 (and are valid): where new buildings can appear."""
    pm = _bchw(_as_tensor(past_mask))
    m = _mask_b1hw(valid, pm)
    return ((pm < 0.5).double() * m)


def new_building_scores(pred_mask, future_mask, past_mask, valid=None) -> dict[str, np.ndarray]:
    """Building scores restricted to pixels unbuilt at t0: does the model draw the buildings it was asked to add?

    Truth inside that region = the buildings new between t0 and t1; a generated image that simply
    copies the past scores recall 0 here.
    """
    return building_scores(pred_mask, future_mask, new_building_region(past_mask, valid))


def drawn_new_building_scores(pred_mask, past_pred_mask, future_mask, past_mask, valid=None) -> dict[str, np.ndarray]:
    """Scores of the buildings a generated image ADDS, judged by the same segmenter on both dates.

    Predicted new = segmented on the generated image and not on the past image; true new = footprint at t1 and
    not at t0. Unlike :func:`new_building_scores`, the segmenter's ordinary false positives on the background cancel
    out (they appear on both images), so persistence scores exactly zero recall and zero F1 wherever buildings
    were added, and the real future image gives the ceiling.
    """
    pred, past_pred = _bchw(_as_tensor(pred_mask)) > 0.5, _bchw(_as_tensor(past_pred_mask)) > 0.5
    fut, past = _bchw(_as_tensor(future_mask)) > 0.5, _bchw(_as_tensor(past_mask)) > 0.5
    return building_scores((pred & ~past_pred).double(), (fut & ~past).double(), valid)


def new_building_objects(pred_mask, future_mask, past_mask, valid=None, min_share: float = 0.5) -> dict[str, np.ndarray]:
    """Object-level new-building scores per image: does the judge see each requested new building?

    New buildings are the connected components (4-connected) of the valid pixels that are footprint at t1 and not at
    t0; one counts as **drawn** when the judge's mask ``pred_mask`` calls at least ``min_share`` of its pixels
    building. A building cut by an image border counts once per image it lies in. Also the judge's building pixels
    that no footprint asks for (valid, footprint at neither date): ``unrequested_px`` of ``unbuilt_px``.

    Returns per image: ``new_objects``, ``new_objects_drawn``, ``unrequested_px``, ``unbuilt_px`` (float arrays;
    pool them over images: recall = sum drawn / sum objects).
    """
    from scipy import ndimage

    pred, fut = _bchw(_as_tensor(pred_mask)) > 0.5, _bchw(_as_tensor(future_mask)) > 0.5
    past = _bchw(_as_tensor(past_mask)) > 0.5
    m = _mask_b1hw(valid, fut) > 0.5
    new = (fut & ~past & m)[:, 0].numpy()
    drawn_px = pred[:, 0].numpy()
    n_obj, n_drawn = np.zeros(len(new)), np.zeros(len(new))
    for i, region in enumerate(new):
        labels, n = ndimage.label(region)
        if n:
            size = np.bincount(labels.ravel(), minlength=n + 1)[1:]
            hit = np.bincount(labels.ravel(), weights=drawn_px[i].ravel().astype(float), minlength=n + 1)[1:]
            n_obj[i], n_drawn[i] = n, float((hit >= min_share * size).sum())
    unbuilt = (~fut & ~past & m)[:, 0]
    return {"new_objects": n_obj, "new_objects_drawn": n_drawn,
            "unrequested_px": (pred[:, 0] & unbuilt).sum(dim=(1, 2)).double().numpy(),
            "unbuilt_px": unbuilt.sum(dim=(1, 2)).double().numpy()}


def change_masks(past_mask, future_mask, valid=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(changed, unchanged) pixel masks (B, 1, H, W): footprint differs between t0 and t1, or not; valid only."""
    pm, fm = _bchw(_as_tensor(past_mask)), _bchw(_as_tensor(future_mask))
    m = _mask_b1hw(valid, pm)
    changed = ((pm > 0.5) != (fm > 0.5)).double() * m
    return changed, (1 - changed) * m


# --------------------------------------------------------------------------- aggregation


def bootstrap_ci(values, n_boot: int = 1000, ci: float = 0.95, seed: int = 0,
                 statistic: Callable[[np.ndarray], float] | None = None) -> tuple[float, float, float, int]:
    """Mean (or ``statistic``) over tiles with a percentile bootstrap interval: (value, lo, hi, n).

    NaNs are dropped first (tiles where the metric is undefined). ``values`` may be 2-D (tiles x
    columns) when ``statistic`` needs several columns, e.g. micro-averaged F1 from TP/FP/FN.
    """
    v = np.asarray(values, dtype=np.float64)
    stat = statistic or (lambda a: float(np.mean(a)))
    keep = ~np.isnan(v) if v.ndim == 1 else ~np.isnan(v).any(axis=1)
    v = v[keep]
    n = len(v)
    if n == 0:
        return float("nan"), float("nan"), float("nan"), 0
    est = stat(v)
    if n == 1:
        return est, float("nan"), float("nan"), 1
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    boots = np.array([stat(v[i]) for i in idx])
    alpha = (1 - ci) / 2
    lo, hi = np.nanquantile(boots, [alpha, 1 - alpha])
    return float(est), float(lo), float(hi), n


def micro_f1(counts: np.ndarray) -> float:
    """F1 from summed (tp, fp, fn) columns of a (tiles x 3) array."""
    tp, fp, fn = counts.sum(axis=0)
    return float(scores_from_counts(tp, fp, fn)["f1"])


__all__ = [
    "check_range", "clean_invalid", "masked_psnr", "masked_l1", "finite_psnr", "ssim_map", "masked_ssim",
    "masked_ssim_many", "confusion_counts", "scores_from_counts", "building_scores",
    "new_building_region", "new_building_scores", "drawn_new_building_scores", "change_masks", "bootstrap_ci",
    "micro_f1",
]

