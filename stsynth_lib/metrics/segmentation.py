"""A small building-segmentation U-Net: the judge behind the building F1 of generated images.

Trained on *real* images and footprint masks of the training split (both dates of each pair,
labelled AOIs only), then applied to (a) the real future test images -- the upper bound any
generator can reach -- and (b) each model's generated images; both compared with the future mask.

Small on purpose (about 0.5 M parameters at ``base_channels=16``): it trains at 32-128 px on a CPU
in a minute or two for the smoke profile, and is a fixed, documented instrument rather than a
state-of-the-art segmenter. Its own test F1 on real images is reported next to every generated F1.

Options for a stronger judge on 4.77 m imagery, where buildings are a few pixels wide (all off by default, so the
default segmenter is the one above, unchanged): ``upsample`` (the input is resized bilinearly by this factor before
the U-Net and the logits average-pooled back to the input size, as the SpaceNet 7 winners did), deeper / wider
settings (``depth``, ``base_channels``), training on random crops (``crop_px``: an upsampled network costs
``upsample**2`` times more per pixel; crops keep a step's cost), on every labelled tile once per epoch
(``sample_by="tiles"``) and with building boundaries weighted (``edge_weight``). Compared on the validation blocks
of ``sn7_labelled`` in ``experiments/segmenter/`` (README there).
"""

from __future__ import annotations

import math
import time
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from stsynth_lib.runs import atomic_torch_save


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class SegUNet(nn.Module):
    """U-Net with ``depth`` poolings; input (B, C, H, W) in [-1, 1], output logits (B, 1, H, W).

    With ``upsample > 1`` the input is first resized bilinearly by that factor (buildings a few pixels wide get more
    pixels to be seen with) and the logits are average-pooled back to (H, W). ``H * upsample`` and
    ``W * upsample`` must be divisible by ``2**depth`` (:func:`input_multiple`).
    """

    def __init__(self, in_channels: int = 3, base_channels: int = 16, depth: int = 3, upsample: int = 1,
                 decision_threshold: float = 0.5):
        super().__init__()
        if int(upsample) != upsample or upsample < 1:
            raise ValueError(f"upsample must be an integer >= 1, got {upsample!r}")
        if not 0.0 < float(decision_threshold) < 1.0:
            raise ValueError(f"decision_threshold must lie in (0, 1), got {decision_threshold!r}")
        upsample = int(upsample)
        self.config = {"in_channels": in_channels, "base_channels": base_channels, "depth": depth}
        if upsample != 1:  # recorded only when set: a default segmenter's saved config is the one it always was
            self.config["upsample"] = upsample
        self.upsample = upsample
        self.set_decision_threshold(decision_threshold)
        chs = [base_channels * 2**i for i in range(depth + 1)]
        self.downs = nn.ModuleList([_block(in_channels, chs[0])] + [_block(chs[i], chs[i + 1]) for i in range(depth)])
        self.ups = nn.ModuleList([nn.ConvTranspose2d(chs[i + 1], chs[i], 2, stride=2) for i in reversed(range(depth))])
        self.up_blocks = nn.ModuleList([_block(2 * chs[i], chs[i]) for i in reversed(range(depth))])
        self.head = nn.Conv2d(chs[0], 1, 1)
        self.depth = depth

    def set_decision_threshold(self, p: float) -> None:
        """The building probability above which :func:`predict_masks` calls a pixel building (0.5 unless a study
        chose another on validation, e.g. ``experiments/segmenter``); saved with the model, recorded only when set."""
        if not 0.0 < float(p) < 1.0:
            raise ValueError(f"decision_threshold must lie in (0, 1), got {p!r}")
        self.decision_threshold = float(p)
        if self.decision_threshold != 0.5:
            self.config["decision_threshold"] = self.decision_threshold
        else:
            self.config.pop("decision_threshold", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = input_multiple(self)
        if x.shape[-1] % m or x.shape[-2] % m:
            up = f", upsample={self.upsample}" if self.upsample != 1 else ""
            raise ValueError(f"SegUNet(depth={self.depth}{up}) needs H and W divisible by {m}, got {tuple(x.shape[-2:])}")
        if self.upsample != 1:
            x = F.interpolate(x, scale_factor=self.upsample, mode="bilinear", align_corners=False)
        skips = []
        for i, down in enumerate(self.downs):
            x = down(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        skips.pop()
        for up, block in zip(self.ups, self.up_blocks):
            x = block(torch.cat([up(x), skips.pop()], dim=1))
        out = self.head(x)
        return F.avg_pool2d(out, self.upsample) if self.upsample != 1 else out


def input_multiple(model: SegUNet) -> int:
    """The number H and W of a :class:`SegUNet`'s input must be multiples of: ``2**depth`` over what the upsampling
    factor already contributes (``2**depth`` without upsampling)."""
    m = 2**model.depth
    return m // math.gcd(m, int(getattr(model, "upsample", 1)))


def boundary_map(target: torch.Tensor, width: int = 1) -> torch.Tensor:
    """1 on the pixels within ``width`` of a building border (inside or outside), else 0; (B, 1, H, W) float."""
    k = 2 * width + 1
    dil = F.max_pool2d(target, k, stride=1, padding=width)
    ero = -F.max_pool2d(-target, k, stride=1, padding=width)
    return (dil - ero).clamp(0, 1)


def _loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, edge_weight: float = 0.0) -> torch.Tensor:
    """Valid-pixel BCE + soft Dice (buildings are a small fraction of the pixels); with ``edge_weight`` the BCE of
    the pixels on a building border (:func:`boundary_map`) weighs ``1 + edge_weight`` (gaps between close buildings)."""
    if edge_weight:
        bce_w = weight * (1 + edge_weight * boundary_map(target))
        bce = F.binary_cross_entropy_with_logits(logits, target, weight=bce_w, reduction="sum") / bce_w.sum().clamp_min(1)
    else:
        bce = F.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction="sum") / weight.sum().clamp_min(1)
    p = torch.sigmoid(logits) * weight
    t = target * weight
    dice = 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
    return bce + dice


def dataset_fingerprint(dataset_dir: str | Path) -> str:
    """Short hash of a tile store's ``dataset.yaml`` + ``splits.json``: a saved segmenter is reused only for the same data."""
    import hashlib

    h = hashlib.sha1()
    for name in ("dataset.yaml", "splits.json"):
        p = Path(dataset_dir) / name
        h.update(p.read_bytes() if p.is_file() else b"")
    return h.hexdigest()[:16]


# the training options added after the first segmenter, with the values that train it as before: a saved file that
# does not record one was trained with its default (load_or_train_segmenter compares them so)
TRAIN_OPTION_DEFAULTS: dict[str, Any] = {"upsample": 1, "crop_px": None, "edge_weight": 0.0, "sample_by": "pairs"}


class _LabelledTiles(torch.utils.data.Dataset):
    """Every labelled tile of a split once (each month of each position): image in [-1, 1], mask, valid; random
    flips/rotations. The keys mimic a pair's future date so that one training loop serves both samplings."""

    def __init__(self, store, tile_ids: np.ndarray, augment: bool = True):
        self.store, self.ids, self.augment = store, np.asarray(tile_ids, np.int64), augment

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        from stsynth_lib.data.dataset import random_rot_flip, to_unit

        t = int(self.ids[i])
        arrays = [to_unit(np.asarray(self.store.images[t])), np.asarray(self.store.masks[t], np.float32)[None],
                  np.asarray(self.store.valid[t], np.float32)[None]]
        if self.augment:
            arrays = random_rot_flip(arrays)
        x, y, v = (torch.from_numpy(np.ascontiguousarray(a)) for a in arrays)
        return {"future": x, "future_mask": y, "future_valid": v}


def labelled_tile_ids(pairs, split: str | None = None) -> np.ndarray:
    """Sorted ids of the tiles (either date) of the labelled pairs of ``split`` (all pairs with ``None``)."""
    p = pairs if split is None else pairs[pairs["split"] == split]
    p = p[p["has_mask"].to_numpy(bool)]
    return np.unique(np.concatenate([p["past_tile_id"].to_numpy(np.int64), p["future_tile_id"].to_numpy(np.int64)]))


def _random_crops(tensors: list[torch.Tensor], size: int, g: torch.Generator) -> list[torch.Tensor]:
    """The same random ``size`` x ``size`` window of each sample in every tensor of ``tensors`` (B, C, H, W)."""
    b, h, w = tensors[0].shape[0], tensors[0].shape[-2], tensors[0].shape[-1]
    if size >= h and size >= w:
        return tensors
    r = torch.randint(0, h - size + 1, (b,), generator=g).tolist()
    c = torch.randint(0, w - size + 1, (b,), generator=g).tolist()
    return [torch.stack([t[i, :, r[i]:r[i] + size, c[i]:c[i] + size] for i in range(b)]) for t in tensors]


def _training_loader(ds, labelled: np.ndarray, sample_by: str, batch_size: int, seed: int):
    """(the training images, their seeded shuffling loader): the labelled pairs' two dates, or every labelled tile
    (``sample_by="tiles"``, ``2 * batch_size`` a step)."""
    from torch.utils.data import DataLoader, Subset

    g = torch.Generator().manual_seed(seed)
    if sample_by == "tiles":
        sub, bs = _LabelledTiles(ds.store, labelled_tile_ids(ds.pairs)), 2 * batch_size
    else:
        sub, bs = Subset(ds, labelled.tolist()), batch_size
    return sub, DataLoader(sub, batch_size=min(bs, len(sub)), shuffle=True, drop_last=len(sub) >= bs, generator=g,
                           num_workers=0)


def _schedule(opt, lr: float, steps: int):
    """One-cycle learning rate; a constant rate under 20 steps (OneCycleLR's 10 % warm-up is under 2 steps there,
    and steps=10 divides by zero)."""
    if steps >= 20:
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


def _images_of(batch: dict, sample_by: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images, masks, validity) a step trains on: tiles as they are, or both dates of each pair."""
    if sample_by == "tiles":
        return batch["future"], batch["future_mask"], batch["future_valid"]
    return (torch.cat([batch["past"], batch["future"]]), torch.cat([batch["past_mask"], batch["future_mask"]]),
            torch.cat([batch["past_valid"], batch["future_valid"]]))


def train_segmenter(
    dataset_dir: str | Path,
    steps: int = 300,
    batch_size: int = 16,
    lr: float = 1e-3,
    base_channels: int = 16,
    depth: int = 3,
    device: str = "cpu",
    seed: int = 0,
    progress: bool = True,
    upsample: int = 1,
    crop_px: int | None = None,
    edge_weight: float = 0.0,
    sample_by: str = "pairs",
) -> tuple[SegUNet, dict[str, Any]]:
    """Train :class:`SegUNet` on the training split's real images and masks (labelled AOIs only).

    Both dates of each training pair are used (past image + past mask, future image + future mask),
    with random flips/rotations. Returns (model in eval mode, info dict with losses and timing).
    Raises ValueError when the training split has no labelled pair (e.g. sn7_real_128).

    Options (defaults: the segmenter as it always was): ``upsample`` (see :class:`SegUNet`); ``crop_px``, train on a
    random window of this size of each image (a multiple of :func:`input_multiple`); ``edge_weight``, the extra BCE
    weight of building borders (:func:`_loss`); ``sample_by="tiles"``, every labelled tile of the training split
    once per epoch, ``2 * batch_size`` tiles a step (the images a step of pairs sees), instead of the pairs' two dates.
    """
    from tqdm import tqdm

    from stsynth_lib.data.dataset import PairedTileDataset
    from stsynth_lib.runs import seed_everything

    if sample_by not in ("pairs", "tiles"):
        raise ValueError(f"sample_by must be 'pairs' or 'tiles', got {sample_by!r}")
    seed_everything(seed)
    ds = PairedTileDataset(dataset_dir, "train", augment=True)
    labelled = np.flatnonzero(ds.pairs["has_mask"].to_numpy(bool))
    if len(labelled) == 0:
        raise ValueError(
            f"{dataset_dir}: the training split has no pair with building labels (has_mask is False everywhere), "
            "so no building segmenter can be trained and building F1 cannot be measured on this dataset."
        )
    sub, loader = _training_loader(ds, labelled, sample_by, batch_size, seed)
    model = SegUNet(ds.n_bands, base_channels, depth, upsample=upsample).to(device)
    if crop_px is not None and crop_px % input_multiple(model):
        raise ValueError(f"crop_px={crop_px} must be a multiple of {input_multiple(model)} (depth {depth}, upsample {upsample})")
    crop_g = torch.Generator().manual_seed(seed + 1) if crop_px is not None else None
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = _schedule(opt, lr, steps)
    model.train()
    losses: list[float] = []
    step = 0
    t0 = time.perf_counter()
    bar = tqdm(total=steps, desc="building segmenter", disable=not progress, mininterval=5)
    while step < steps:
        for batch in loader:
            x, y, w = _images_of(batch, sample_by)
            if crop_g is not None:
                x, y, w = _random_crops([x, y, w], crop_px, crop_g)
            x, y, w = x.to(device), y.to(device), w.to(device)
            loss = _loss(model(x), y, w, edge_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
            if step >= steps:
                break
    bar.close()
    model.eval()
    info = {"steps": steps, "batch_size": batch_size, "lr": lr, "base_channels": base_channels, "depth": depth,
            "seed": seed, "train_pairs": len(labelled), "dataset_fingerprint": dataset_fingerprint(dataset_dir), "final_loss": float(np.mean(losses[-10:])),
            "losses": losses, "seconds": time.perf_counter() - t0, "n_params": sum(p.numel() for p in model.parameters())}
    options = {"upsample": upsample, "crop_px": crop_px, "edge_weight": edge_weight, "sample_by": sample_by}
    info.update({k: v for k, v in options.items() if v != TRAIN_OPTION_DEFAULTS[k]})  # a default run's info as before
    if sample_by == "tiles":
        info["train_tiles"] = len(sub)
    return model, info


_PREPARED: "weakref.WeakKeyDictionary[SegUNet, tuple[tuple, nn.Module]]" = weakref.WeakKeyDictionary()


def _inference_copy(model: SegUNet, compile: bool) -> nn.Module:
    """``model`` prepared for inference (batch norm folded; compiled when asked), made again when its weights
    changed since (their version counters)."""
    from stsynth_lib.models.inference import prepare_for_inference

    key = (compile, *(t._version for t in (*model.parameters(), *model.buffers())))
    hit = _PREPARED.get(model)
    if hit is None or hit[0] != key:
        hit = _PREPARED[model] = (key, prepare_for_inference(model, compile=compile))
    return hit[1]


@torch.no_grad()
def predict_masks(model: SegUNet, images, batch_size: int = 64, threshold: float | None = None,
                  device: str | None = None, compile: bool = False) -> np.ndarray:
    """Binary building masks (N, 1, H, W) uint8 for images (N, C, H, W) in [-1, 1] (or uint8): probability above
    ``threshold`` (default: the model's ``decision_threshold``, 0.5 unless set).

    The segmenter runs with its batch norm folded (:func:`stsynth_lib.models.inference.prepare_for_inference`) and,
    with ``compile``, compiled (every batch padded to ``batch_size``: one graph); the masks equal the plain model's
    except where a probability lies within float rounding (~1e-7) of ``threshold``."""
    if threshold is None:
        threshold = getattr(model, "decision_threshold", 0.5)
    x = images
    if isinstance(x, np.ndarray) and x.dtype == np.uint8 or isinstance(x, torch.Tensor) and x.dtype == torch.uint8:
        x = torch.as_tensor(np.asarray(x), dtype=torch.float32) / 127.5 - 1.0
    x = torch.as_tensor(x, dtype=torch.float32)
    device = device or next(model.parameters()).device
    h, w = x.shape[-2:]
    m = input_multiple(model)  # 2**depth without upsampling
    ph, pw = (-h) % m, (-w) % m  # reflect-pad to a multiple of 2**depth (over the upsampling), crop back
    out = []
    model.eval()
    fast = _inference_copy(model, compile)
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb = x[i : i + batch_size].to(device)
            n = len(xb)
            if ph or pw:
                xb = F.pad(xb, (0, pw, 0, ph), mode="reflect")
            if compile and n < batch_size and len(x) > batch_size:  # the last batch: the compiled graph's size
                xb = torch.cat([xb, xb[-1:].expand(batch_size - n, *xb.shape[1:])])
            prob = torch.sigmoid(fast(xb)[:n])[..., :h, :w]
            out.append((prob > threshold).to(torch.uint8).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 1, h, w), np.uint8)


def save_segmenter(model: SegUNet, path: str | Path, info: dict[str, Any] | None = None) -> Path:
    """Save config + weights (+ training info) atomically to ``path`` (a ``.pt`` file)."""
    info = dict(info or {})  # the loss curve too (a few hundred floats): a reused segmenter can still show it
    return atomic_torch_save({"config": model.config, "state_dict": model.state_dict(), "info": info}, path)


def load_segmenter(path: str | Path, device: str = "cpu") -> tuple[SegUNet, dict[str, Any]]:
    """Load a segmenter written by :func:`save_segmenter`; returns (model in eval mode, info)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: train the building segmenter first (notebook 06, train_segmenter).")
    obj = torch.load(path, map_location=device, weights_only=False)
    model = SegUNet(**obj["config"]).to(device)
    model.load_state_dict(obj["state_dict"])
    return model.eval(), obj.get("info", {})



def load_or_train_segmenter(runs_dir: str | Path, profile: str, dataset_dir: str | Path, retrain: bool = False,
                            device: str = "cpu", seed: int = 0, decision_threshold: float = 0.5,
                            **train_kwargs: Any) -> tuple[SegUNet, dict[str, Any], str]:
    """Reuse ``<runs_dir>/<profile>/segmenter/segmenter.pt`` if it was trained on this build of the dataset with the
    same settings (each of ``train_kwargs`` and ``seed`` that the saved file records), else train. Chapter 5 (choosing
    the img2img strength by new-building F1) and chapter 6 share it this way. ``decision_threshold`` (the probability
    above which a pixel is building; ``experiments/segmenter`` chooses it on validation) is set on the returned model
    whether loaded or trained: it changes no weight, so it never causes a retraining.

    Returns ``(model, info, message)``; ``info["trained_now"]`` says which happened. Raises ``ValueError`` (from
    :func:`train_segmenter`) when the dataset has no labelled pairs to train on.
    """
    from stsynth_lib.runs import prepare_run_dir

    seg_path = Path(runs_dir) / profile / "segmenter" / "segmenter.pt"
    if seg_path.is_file() and not retrain:
        model, info = load_segmenter(seg_path, device=device)
        asked = {"seed": seed, **train_kwargs}
        recorded = {**TRAIN_OPTION_DEFAULTS, **info}  # an option a file does not record was at its default
        other = {k: (recorded[k], v) for k, v in asked.items() if k in recorded and recorded[k] != v}
        if info.get("dataset_fingerprint") == dataset_fingerprint(dataset_dir) and not other:
            info["trained_now"] = False
            model.set_decision_threshold(decision_threshold)
            return model, info, (f"Loaded {seg_path} ({info.get('steps')} steps, trained on this dataset)"
                                 + _threshold_words(decision_threshold))
        stale = (f"{seg_path} was trained with other settings ("
                 + ", ".join(f"{k} {a!r}, now {b!r}" for k, (a, b) in other.items()) + "): retrained. " if other else
                 f"{seg_path} was trained on another build of the dataset: retrained. ")
    else:
        stale = ""
    model, info = train_segmenter(dataset_dir, device=device, seed=seed, **train_kwargs)
    prepare_run_dir(runs_dir, profile, "segmenter", {"dataset_dir": dataset_dir, "seed": seed, **train_kwargs})
    save_segmenter(model, seg_path, info)
    info["trained_now"] = True
    model.set_decision_threshold(decision_threshold)
    return model, info, (f"{stale}Trained in {info['seconds']:.0f} s on {info['train_pairs']} labelled pairs "
                         f"({info['n_params'] / 1e6:.2f} M parameters); saved to {seg_path}"
                         + _threshold_words(decision_threshold))


def _threshold_words(p: float) -> str:
    return "" if float(p) == 0.5 else f"; a pixel is building where its probability is above {float(p):g}"
