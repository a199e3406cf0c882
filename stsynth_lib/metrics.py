"""Image-quality, distribution and building metrics, with validity masks and an honest offline-weights rule.

Conventions
-----------
* Images are ``(B, C, H, W)`` (or ``(C, H, W)``) arrays/tensors in a **declared range**; every
  pixel-wise metric takes the matching ``data_range`` (``1.0`` for [0, 1], ``2.0`` for [-1, 1],
  ``255`` for uint8). The evaluation uses [0, 1] floats made from the saved uint8 tiles
  (``data_range=1.0``). Passing [-1, 1] images with ``data_range=1`` -- the bug of the original
  research code -- inflates PSNR by 20*log10(2) = 6.02 dB; :func:`check_range` catches it.
* ``valid`` masks are ``(B, 1, H, W)`` / ``(B, H, W)`` in {0, 1}: 1 = the pixel counts (not cloud,
  UDM or nodata). Metrics are computed **per image over its valid pixels**, then averaged over
  images by the caller (never a mean of running means). An image with no valid pixel gives NaN.
* PSNR of an exact match is ``inf`` (mse = 0); :func:`finite_psnr` caps it for averages.
* SSIM: the map is computed on the whole image with skimage's settings (gaussian window sigma 1.5,
  truncate 3.5 -> 11 x 11, ``use_sample_covariance=False``, K1 0.01, K2 0.03), cropped by the
  5 px border exactly as ``skimage.metrics.structural_similarity`` does, and averaged over the
  valid pixels of that interior (and over channels). With every pixel valid it equals skimage's value.
* LPIPS (``lpips`` package, AlexNet by default) and FID/KID (``pytorch-fid``'s Inception) need
  ImageNet weights in the torch hub cache. :func:`require_weights` checks the file exists *before*
  anything could try to download it. Offline without the file the run fails with a message naming
  the file and its folder, unless ``allow_uncalibrated=True`` (smoke / no-internet profiles): then
  the same network is built with seeded random weights, ``.calibrated`` is False and every number
  must be labelled "uncalibrated" (:func:`label`).
* Building scores are pixel-level (precision, recall, F1, IoU), from TP/FP/FN counts so they can
  be micro-averaged over tiles.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

# --------------------------------------------------------------------------- helpers

UNCALIBRATED = "uncalibrated"

# Weight files (torch hub cache, ``<torch.hub.get_dir()>/checkpoints/``) and where they come from.
WEIGHT_FILES = {
    "alex": ("alexnet-owt-7be5be79.pth", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"),
    "vgg": ("vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth"),
    "inception": (
        "pt_inception-2015-12-05-6726825d.pth",
        "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
    ),
}


class MissingWeightsError(FileNotFoundError):
    """Raised when a metric's pretrained weights are not in the torch cache and uncalibrated metrics are not allowed."""


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

    A ``data_range`` of 2 means [-1, 1]; any other value means [0, data_range].
    """
    t = _as_tensor(x)
    lo, hi = (-1.0, 1.0) if data_range == 2.0 else (0.0, float(data_range))
    tol = 1e-6 * max(1.0, abs(hi))
    mn, mx = float(t.min()), float(t.max())
    if mn < lo - tol or mx > hi + tol:
        raise ValueError(
            f"{name} has values in [{mn:.4g}, {mx:.4g}] but data_range={data_range} declares [{lo}, {hi}]. "
            "Rescale the images (uint8 -> /255 for [0, 1]) or pass the matching data_range."
        )


# --------------------------------------------------------------------------- PSNR / SSIM / L1


def masked_psnr(pred, target, valid=None, data_range: float = 1.0) -> np.ndarray:
    """Per-image PSNR (dB) over valid pixels: ``10 log10(data_range^2 / mse)``; shape (B,).

    ``inf`` where the valid pixels match exactly, NaN where an image has no valid pixel.
    """
    p, t = _bchw(_as_tensor(pred)), _bchw(_as_tensor(target))
    if p.shape != t.shape:
        raise ValueError(f"pred {tuple(p.shape)} and target {tuple(t.shape)} differ in shape")
    m = _mask_b1hw(valid, p)
    se = ((p - t) ** 2 * m).sum(dim=(1, 2, 3))
    n = m.sum(dim=(1, 2, 3)) * p.shape[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        mse = (se / n).numpy()
        out = 10.0 * np.log10(float(data_range) ** 2 / mse)
    out[n.numpy() == 0] = np.nan
    return out


def masked_l1(pred, target, valid=None) -> np.ndarray:
    """Per-image mean absolute error over valid pixels (in the images' own units); shape (B,)."""
    p, t = _bchw(_as_tensor(pred)), _bchw(_as_tensor(target))
    m = _mask_b1hw(valid, p)
    n = m.sum(dim=(1, 2, 3)) * p.shape[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        out = ((p - t).abs() * m).sum(dim=(1, 2, 3)).numpy() / n.numpy()
    return out


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
    """:func:`masked_ssim` for several masks (e.g. valid, changed, unchanged) from one SSIM map."""
    p = _bchw(_as_tensor(pred))
    s = ssim_map(pred, target, data_range=data_range, sigma=sigma).mean(dim=1, keepdim=True)
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


# --------------------------------------------------------------------------- weights rule


def weights_path(kind: str) -> Path:
    """Where the torch hub cache expects the weights of ``kind`` ('alex', 'vgg', 'inception')."""
    fname, _ = WEIGHT_FILES[kind]
    return Path(torch.hub.get_dir()) / "checkpoints" / fname


def require_weights(kind: str, allow_uncalibrated: bool, metric: str) -> bool:
    """Return True if the pretrained weights of ``kind`` are cached, False if uncalibrated use is allowed.

    Raises :class:`MissingWeightsError` naming the file, its folder and its URL otherwise. Checked
    before building any network, so nothing ever tries to download on an offline machine.
    """
    path = weights_path(kind)
    if path.is_file():
        return True
    if allow_uncalibrated:
        return False
    fname, url = WEIGHT_FILES[kind]
    raise MissingWeightsError(
        f"{metric} needs the pretrained weights file {fname}, not found at {path}. "
        f"On a machine with internet it is downloaded automatically; offline, download {url} "
        f"and put it in {path.parent}/ (the torch hub cache; set TORCH_HOME to move it). "
        "For smoke runs only, allow_uncalibrated_metrics: true uses a random backbone and labels every "
        f"{metric} number '{UNCALIBRATED}'."
    )


def label(name: str, calibrated: bool) -> str:
    """Column/figure label: ``'LPIPS'`` or ``'LPIPS (uncalibrated)'``."""
    return name if calibrated else f"{name} ({UNCALIBRATED})"


@contextmanager
def _seeded(seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _random_init(module: torch.nn.Module) -> None:
    """He-normal convolutions so that a random deep backbone neither explodes nor vanishes."""
    for m in module.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                torch.nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------- LPIPS


class LPIPSMetric:
    """LPIPS (Zhang et al. 2018) from the ``lpips`` package, per image and optionally over valid pixels.

    ``net``: 'alex' (default, as the LPIPS authors recommend for evaluation) or 'vgg'. The linear
    layers come from the lpips wheel; the backbone from torchvision's ImageNet weights in the torch
    hub cache (see :func:`require_weights`). With ``allow_uncalibrated`` and no cached file, the
    backbone is random (seeded): ``calibrated`` is then False.
    """

    def __init__(self, net: str = "alex", allow_uncalibrated: bool = False, device: str | torch.device = "cpu", seed: int = 0):
        import warnings

        import lpips

        if net not in ("alex", "vgg"):
            raise ValueError(f"LPIPS net must be 'alex' or 'vgg', got {net!r}")
        self.net_name = net
        self.calibrated = require_weights(net, allow_uncalibrated, f"LPIPS ({net})")
        self.device = torch.device(device)
        with _seeded(seed), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torchvision's 'pretrained' deprecation
            model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=not self.calibrated, spatial=True, verbose=False)
            if not self.calibrated:
                _random_init(model.net)
        self.model = model.eval().to(self.device)

    @property
    def name(self) -> str:
        return label("LPIPS", self.calibrated)

    @torch.no_grad()
    def spatial(self, pred, target) -> torch.Tensor:
        """LPIPS map (B, 1, H, W) for images in [-1, 1] (the lpips convention)."""
        p = _bchw(_as_tensor(pred, torch.float32)).to(self.device)
        t = _bchw(_as_tensor(target, torch.float32)).to(self.device)
        if p.shape != t.shape:
            raise ValueError(f"pred {tuple(p.shape)} and target {tuple(t.shape)} differ in shape")
        check_range(p, 2.0, "LPIPS input (pred)")
        check_range(t, 2.0, "LPIPS input (target)")
        if p.shape[1] == 1:
            p, t = p.repeat(1, 3, 1, 1), t.repeat(1, 3, 1, 1)
        return self.model(p[:, :3], t[:, :3]).double().cpu()

    def __call__(self, pred, target, valid=None, batch_size: int = 32) -> np.ndarray:
        """Per-image LPIPS averaged over valid pixels of the spatial map; inputs in [-1, 1]; shape (B,)."""
        return self.masked_many(pred, target, [valid], batch_size)[0]

    def masked_many(self, pred, target, valids: Sequence, batch_size: int = 32) -> list[np.ndarray]:
        """LPIPS averaged over several masks (e.g. valid, changed, unchanged) from one forward pass."""
        p, t = _bchw(_as_tensor(pred, torch.float32)), _bchw(_as_tensor(target, torch.float32))
        maps = torch.cat([self.spatial(p[i : i + batch_size], t[i : i + batch_size]) for i in range(0, len(p), batch_size)])
        return _masked_map_means(maps, p, valids)


# --------------------------------------------------------------------------- FID / KID


def _random_fid_inception():
    """pytorch-fid's FID Inception architecture without loading its weights (random init)."""
    from pytorch_fid import inception as inc

    net = inc._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    net.Mixed_5b = inc.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = inc.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = inc.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = inc.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = inc.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = inc.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = inc.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = inc.FIDInceptionE_1(1280)
    net.Mixed_7c = inc.FIDInceptionE_2(2048)
    _random_init(net)
    return net


class InceptionFeatures:
    """2048-d pool features of pytorch-fid's Inception v3 (inputs resized to 299 px, bilinear).

    Weights: ``pt_inception-2015-12-05-6726825d.pth`` in the torch hub cache (see
    :func:`require_weights`). With ``allow_uncalibrated`` and no file: same architecture, random
    seeded weights, ``calibrated = False``.
    """

    def __init__(self, allow_uncalibrated: bool = False, device: str | torch.device = "cpu", seed: int = 0):
        from pytorch_fid import inception as inc

        self.calibrated = require_weights("inception", allow_uncalibrated, "FID/KID (Inception)")
        self.device = torch.device(device)
        with _seeded(seed):
            if self.calibrated:
                model = inc.InceptionV3([inc.InceptionV3.BLOCK_INDEX_BY_DIM[2048]])
            else:
                orig = inc.fid_inception_v3
                inc.fid_inception_v3 = _random_fid_inception
                try:
                    model = inc.InceptionV3([inc.InceptionV3.BLOCK_INDEX_BY_DIM[2048]])
                finally:
                    inc.fid_inception_v3 = orig
        self.model = model.eval().to(self.device)

    @torch.no_grad()
    def __call__(self, images, batch_size: int = 32, progress: bool = False) -> np.ndarray:
        """Features (N, 2048) of images in [0, 1] (float) or uint8 [0, 255], ``(N, C, H, W)``."""
        from tqdm import tqdm

        x = images
        if isinstance(x, np.ndarray) and x.dtype == np.uint8 or isinstance(x, torch.Tensor) and x.dtype == torch.uint8:
            x = _as_tensor(x, torch.float32) / 255.0
        x = _bchw(_as_tensor(x, torch.float32))
        check_range(x, 1.0, "Inception input")
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        feats = []
        for i in tqdm(range(0, len(x), batch_size), desc="Inception features", disable=not progress, mininterval=5):
            f = self.model(x[i : i + batch_size, :3].to(self.device))[0]
            feats.append(f.squeeze(-1).squeeze(-1).double().cpu())
        return torch.cat(feats).numpy() if feats else np.zeros((0, 2048))


def fid_from_features(f1: np.ndarray, f2: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (same value as pytorch-fid).

    Uses ``tr sqrt(S1 S2) = ||A B^T||_*`` with ``S1 = A^T A``, ``S2 = B^T B`` (A, B the centred
    features scaled by 1/sqrt(n-1)): exact, and cheap and stable when n < 2048 (covariances singular).
    """
    f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    if len(f1) < 2 or len(f2) < 2:
        raise ValueError(f"FID needs at least 2 images per set, got {len(f1)} and {len(f2)}")
    mu1, mu2 = f1.mean(0), f2.mean(0)
    a = (f1 - mu1) / math.sqrt(len(f1) - 1)
    b = (f2 - mu2) / math.sqrt(len(f2) - 1)
    tr1, tr2 = float((a * a).sum()), float((b * b).sum())
    nuc = float(np.linalg.svd(a @ b.T, compute_uv=False).sum())
    return max(0.0, float(((mu1 - mu2) ** 2).sum()) + tr1 + tr2 - 2.0 * nuc)


def kid_from_features(f1: np.ndarray, f2: np.ndarray, subset_size: int = 1000, n_subsets: int = 100, seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance (Binkowski et al. 2018): unbiased MMD^2, cubic polynomial kernel.

    Averaged over ``n_subsets`` random subsets of ``min(subset_size, n1, n2)`` images; returns
    (mean, std over subsets). When a set is not larger than ``subset_size``, subsets of half the
    smaller set are drawn so that the std still measures something (the mean stays unbiased: the
    unbiased MMD^2 has the same expectation at every subset size). Unbiased, so it can be slightly
    negative for identical distributions.
    """
    f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    m = min(subset_size, len(f1), len(f2))
    if m < 2:
        raise ValueError(f"KID needs at least 2 images per set, got {len(f1)} and {len(f2)}")
    if m == min(len(f1), len(f2)) and n_subsets > 1 and m >= 4:
        m = m // 2
    d = f1.shape[1]
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_subsets):
        x = f1[rng.choice(len(f1), m, replace=False)]
        y = f2[rng.choice(len(f2), m, replace=False)]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        mmd = (kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean()
        vals.append(mmd)
    return float(np.mean(vals)), float(np.std(vals))


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


def default_device(device: str = "auto") -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


__all__ = [
    "UNCALIBRATED", "MissingWeightsError", "check_range", "masked_psnr", "masked_l1", "finite_psnr", "ssim_map",
    "masked_ssim", "masked_ssim_many", "weights_path", "require_weights", "label", "LPIPSMetric", "InceptionFeatures",
    "fid_from_features", "kid_from_features", "confusion_counts", "scores_from_counts", "building_scores",
    "new_building_region", "new_building_scores", "change_masks", "bootstrap_ci", "micro_f1", "default_device",
]

