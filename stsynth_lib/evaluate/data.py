"""The ground truth of a split, the metric names and the time-gap buckets every evaluation table uses."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

PERSISTENCE = "persistence"
UPPER_BOUND = "real_future"  # the real future images through the segmenter: building-score upper bound

# metric -> (higher is better, human name)
METRICS: dict[str, tuple[bool, str]] = {
    "psnr": (True, "PSNR (dB)"),
    "ssim": (True, "SSIM"),
    "l1": (False, "L1 ([0,1] units)"),
    "lpips": (False, "LPIPS"),
    "psnr_changed": (True, "PSNR changed px (dB)"),
    "psnr_unchanged": (True, "PSNR unchanged px (dB)"),
    "ssim_changed": (True, "SSIM changed px"),
    "ssim_unchanged": (True, "SSIM unchanged px"),
    "lpips_changed": (False, "LPIPS changed px"),
    "lpips_unchanged": (False, "LPIPS unchanged px"),
    "f1": (True, "building F1"),
    "f1_micro": (True, "building F1 (all pixels pooled)"),
    "iou": (True, "building IoU"),
    "precision": (True, "building precision"),
    "recall": (True, "building recall"),
    "f1_new_micro": (True, "new-building F1 (pooled)"),
    "recall_new": (True, "new-building recall"),
    "f1_drawn_micro": (True, "F1 of buildings drawn anew (pooled)"),
    "recall_drawn": (True, "recall of buildings drawn anew"),
    "object_recall_new": (True, "new buildings the judge sees (objects, pooled)"),
    "unrequested_share": (False, "judged building where no footprint asks (pooled share)"),
    # pixel scores on L1 over changed / unchanged pixels and over NEW-building pixels (future footprint, not past)
    "l1_changed": (False, "L1 changed px"),
    "l1_unchanged": (False, "L1 unchanged px"),
    "psnr_new": (True, "PSNR new-building px (dB)"),
    "ssim_new": (True, "SSIM new-building px"),
    "l1_new": (False, "L1 new-building px"),
    "lpips_new": (False, "LPIPS new-building px"),
}
LPIPS_METRICS = ("lpips", "lpips_changed", "lpips_unchanged", "lpips_new")
# the change-aware pixel scores (NaN on pairs without building labels), in the order of the book's table
CHANGE_METRICS = ("psnr_new", "ssim_new", "l1_new", "lpips_new", "psnr_changed", "ssim_changed", "l1_changed",
                  "lpips_changed", "psnr_unchanged", "ssim_unchanged", "l1_unchanged", "lpips_unchanged")
DEFAULT_GAP_EDGES = (1, 2, 4, 7, 13, 10_000)  # buckets [1], [2-3], [4-6], [7-12], [13+]


MODEL_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")  # one per model in the figures' line and dot plots
# one colour per model NAME, the same in every figure of chapters 6 and 7 (a model's colour once changed from one
# figure to the next); names not listed get one from a hash of the name, so they are stable too
MODEL_COLOURS = {PERSISTENCE: "k", "seasonal": "0.45", "mean_last_3": "0.65", "pix2pix": "C0", "attention_unet": "C1",
                 "controlnet": "C2", "controlnet_sample_mean": "C4", "pix2pix_nomask": "C6",
                 "attention_unet_nomask": "C8", "controlnet_nomask": "C9"}


def model_style(model: str) -> dict:
    """``{"color", "marker"}`` of ``model`` in every figure: :data:`MODEL_COLOURS` (else a stable hash of the name)
    and a marker from the same name."""
    import zlib

    h = zlib.crc32(str(model).encode())
    colour = MODEL_COLOURS.get(model, f"C{(3, 5, 7)[h % 3]}")
    return {"color": colour, "marker": MODEL_MARKERS[h % len(MODEL_MARKERS)]}


# --------------------------------------------------------------------------- data


@dataclass
class SplitData:
    """The ground truth of one split as arrays aligned with ``pairs`` (uint8 images, {0,1} masks)."""

    pairs: pd.DataFrame
    past: np.ndarray  # (N, C, H, W) uint8
    future: np.ndarray  # (N, C, H, W) uint8
    past_mask: np.ndarray  # (N, 1, H, W) uint8
    future_mask: np.ndarray
    valid: np.ndarray  # (N, 1, H, W) uint8, past_valid * future_valid
    has_mask: np.ndarray  # (N,) bool
    transform: np.ndarray  # (N, 6)
    crs: list[str]
    # the past sequence (load_split(context_offsets_months=...)): tile ids (N, K), -1 = absent; read on demand
    context_offsets: tuple | None = None
    context_tile_ids: np.ndarray | None = None
    context_age_months: np.ndarray | None = None  # (N, K), 0 where absent
    store: Any = field(default=None, repr=False)  # the TileStore the frames are read from

    @property
    def pair_ids(self) -> np.ndarray:
        return self.pairs["pair_id"].to_numpy()

    def context_fields(self, rows: slice | np.ndarray = slice(None)) -> dict[str, np.ndarray]:
        """The context of pairs ``rows`` as in a collated batch, uint8: ``context`` (n, K, C, H, W), ``context_valid``
        (n, K, 1, H, W), ``context_present`` (n, K) and ``context_age_months`` (n, K)."""
        from stsynth_lib.data.dataset import context_arrays

        if self.context_tile_ids is None or self.store is None:
            raise ValueError("this SplitData has no context frames: load it with load_split(..., "
                             "context_offsets_months=[0, -1, ...])")
        ids = self.context_tile_ids[rows]
        frames, valid = context_arrays(self.store, ids)
        return {"context": frames, "context_valid": valid, "context_present": ids >= 0,
                "context_age_months": self.context_age_months[rows]}

    def __len__(self) -> int:
        return len(self.pairs)


def seasonal_coverage_note(data: SplitData, split: str = "test") -> str | None:
    """One sentence: for how many pairs of ``data`` the seasonal blend had the same month of last year (not after
    t0); for the others it is the past image, so it scores as persistence there (a tree shorter than 13 months makes
    the two baselines identical). None when ``data`` has no such frame column."""
    from stsynth_lib.book.report_format import plural
    from stsynth_lib.data.dataset import SAME_MONTH_LAST_YEAR

    offsets = list(data.context_offsets or ())
    if data.context_tile_ids is None or SAME_MONTH_LAST_YEAR not in offsets:
        return None
    present = int((data.context_tile_ids[:, offsets.index(SAME_MONTH_LAST_YEAR)] >= 0).sum())
    n = len(data)
    if present == n:
        return f"The seasonal blend had last year's frame for every {split} pair ({n})."
    return (f"The seasonal blend had last year's frame for {present} of {plural(n, f'{split} pair')}; for the other "
            f"{n - present} it is the past image itself, so it scores as persistence there"
            + (" (every pair here: the series is too short for last year's month)" if present == 0 else "") + ".")


def load_split(dataset_dir: str | Path, split: str = "test", max_pairs: int | None = None, seed: int = 0,
               context_offsets_months: Iterable | None = None) -> SplitData:
    """Read one split's pairs from the tile store; ``max_pairs`` keeps a seeded random subset (same for every model).

    ``context_offsets_months`` (see :class:`~stsynth_lib.data.dataset.PairedTileDataset`) also looks up each pair's
    past sequence (:meth:`SplitData.context_fields` reads the frames on demand), e.g. for the simple baselines.
    """
    from stsynth_lib.data.dataset import PairedTileDataset, check_context_offsets, context_lookup, tile_month_index

    ds = PairedTileDataset(dataset_dir, split)
    pairs = ds.pairs
    if len(pairs) == 0:
        raise ValueError(f"{dataset_dir}: split {split!r} has no pairs; rebuild the dataset with more AOIs or other split fractions.")
    if max_pairs is not None and len(pairs) > max_pairs:
        pairs = pairs.sample(n=max_pairs, random_state=seed).sort_values("pair_id")
    pairs = pairs.reset_index(drop=True)
    s = ds.store
    t0 = pairs["past_tile_id"].to_numpy(int)
    t1 = pairs["future_tile_id"].to_numpy(int)
    tiles = s.tiles.set_index("tile_id", drop=False).loc[t1]
    offsets = check_context_offsets(context_offsets_months)
    ids, ages = context_lookup(pairs, tile_month_index(s.tiles), offsets) if offsets is not None else (None, None)
    return SplitData(
        pairs=pairs,
        past=np.asarray(s.images[t0]),
        future=np.asarray(s.images[t1]),
        past_mask=np.asarray(s.masks[t0])[:, None],
        future_mask=np.asarray(s.masks[t1])[:, None],
        valid=(np.asarray(s.valid[t0]) * np.asarray(s.valid[t1]))[:, None].astype(np.uint8),
        has_mask=pairs["has_mask"].to_numpy(bool),
        transform=tiles[[f"transform_{c}" for c in "abcdef"]].to_numpy(np.float64),
        crs=[str(c) for c in tiles["crs"]],
        context_offsets=offsets, context_tile_ids=ids, context_age_months=ages,
        store=s if offsets is not None else None,
    )


def gap_bucket(gap_months, edges: Iterable[int] = DEFAULT_GAP_EDGES) -> np.ndarray:
    """Label each gap (months) with its bucket, e.g. '1', '2-3', '13+'."""
    edges = list(edges)
    labels = []
    for lo, hi in itertools.pairwise(edges):
        labels.append(str(lo) if hi - lo == 1 else (f"{lo}+" if hi >= 10_000 else f"{lo}-{hi - 1}"))
    g = np.asarray(gap_months, dtype=float)
    idx = np.clip(np.searchsorted(edges, g, side="right") - 1, 0, len(labels) - 1)
    return np.array([labels[i] for i in idx])


def gap_bucket_order(edges: Iterable[int] = DEFAULT_GAP_EDGES) -> list[str]:
    edges = list(edges)
    return list(gap_bucket([e for e in edges[:-1]], edges))


@dataclass
class EvalResult:
    per_tile: pd.DataFrame
    summary: pd.DataFrame
    notes: list[str]
    calibrated: dict[str, bool]
    data: SplitData
    predictions: dict[str, np.ndarray] = field(repr=False)  # name -> (N, C, H, W) uint8 aligned with data (NaN rows absent)
    available: dict[str, np.ndarray] = field(repr=False)  # name -> (N,) bool, tile predicted by the model
    seg_masks: dict[str, np.ndarray] = field(repr=False, default_factory=dict)
    out_dir: Path | None = None
    lpips_weights: str | None = None  # the LPIPS weights' description (None: LPIPS not computed)
    labels: dict[str, str] = field(default_factory=dict)  # model -> the name tables show (ControlNet: its backbone)


def _align_predictions(preds: dict[int, np.ndarray], data: SplitData) -> tuple[np.ndarray, np.ndarray]:
    arr = np.zeros_like(data.future)
    have = np.zeros(len(data), bool)
    for i, pid in enumerate(data.pair_ids):
        img = preds.get(int(pid))
        if img is None:
            continue
        if img.dtype != np.uint8:
            raise ValueError(f"prediction for pair {pid} is {img.dtype}; expected uint8 in [0, 255] (no silent cast: "
                             "see stsynth_lib.predict.files.read_prediction_tif).")
        if img.shape != data.future.shape[1:]:
            raise ValueError(
                f"prediction for pair {pid} has shape {img.shape}, the dataset's tiles are {data.future.shape[1:]}: "
                "the predictions were made on another dataset or tile size."
            )
        arr[i] = img
        have[i] = True
    return arr, have


def _same_persistence(folder: str | Path, data: SplitData) -> bool:
    """True if ``folder`` already holds the persistence images of exactly these pairs (then it is not rewritten).

    Checks the pair ids of ``index.csv`` and the pixels of the first and last image.
    """
    import rasterio

    index = Path(folder) / "index.csv"
    if not index.is_file():
        return False
    try:
        idx = pd.read_csv(index)
        ids = idx["pair_id"].to_numpy()
        if len(ids) != len(data) or set(ids.tolist()) != {int(p) for p in data.pair_ids}:
            return False
        where = {int(p): i for i, p in enumerate(data.pair_ids)}
        for _, row in idx.iloc[[0, -1]].iterrows():
            with rasterio.open(Path(folder) / row["tif"]) as src:
                if not np.array_equal(src.read(), data.past[where[int(row["pair_id"])]]):
                    return False
    except (ValueError, KeyError, OSError, pd.errors.EmptyDataError, rasterio.errors.RasterioIOError):
        return False
    return True


def _load_model_predictions(runs, data, split: str, notes: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{model: (images aligned with data, which pairs it predicted)}``; a missing or empty folder becomes a note.

    Listed prediction files that do not exist leave their pairs out, with a note naming them; a malformed
    index.csv or a prediction that is not uint8 raises :class:`stsynth_lib.predict.files.PredictionFileError`.
    """
    from stsynth_lib.predict.files import load_predictions

    out = {}
    for name, folder in (runs or {}).items():
        if folder is None or not (Path(folder) / "index.csv").is_file():
            notes.append(f"{name}: no predictions at {folder} (index.csv missing) -- run its notebook first; left out of the tables.")
            continue
        missing: list[str] = []
        arr, ok = _align_predictions(load_predictions(folder, on_missing="skip", missing=missing), data)
        if missing:
            notes.append(f"{name}: {len(missing)} prediction files listed in {Path(folder) / 'index.csv'} are missing "
                         f"(e.g. {missing[0]}); those pairs are left out for {name}.")
        if not ok.any():
            notes.append(f"{name}: {folder} holds no prediction for the {len(data)} {split} pairs scored here; left out.")
            continue
        out[name] = (arr, ok)
    return out


def _generation_strength(folder: Path) -> float | None:
    """The img2img strength a ControlNet predictions folder was generated at (its ``sampling.yaml``), or None."""
    return _sampling_number(folder, "strength")


def _sampling_number(folder: Path, key: str) -> float | None:
    """``key`` of a predictions folder's ``sampling.yaml`` as a number, or None."""
    import yaml

    path = folder / "sampling.yaml"
    try:
        return float(yaml.safe_load(path.read_text())[key]) if path.is_file() else None
    except (yaml.YAMLError, KeyError, TypeError, ValueError):
        return None


def model_labels(runs) -> dict[str, str]:
    """``{model: label}`` for every ControlNet of ``runs`` ({name: predictions folder}): which backbone produced its
    images, read from the run folder's ``params.yaml`` (``<run>/predictions/<split>`` -> ``<run>/params.yaml``;
    :func:`stsynth_lib.book.report_format.controlnet_label`). Images sampled with ``prompt_only`` (folder
    ``predictions_prompt_only``) are labelled as the backbone alone; images started from the noised past image (the
    folder's ``sampling.yaml`` has ``strength`` < 1) say so, and so do the per-pixel mean of several samples
    (``sample_mean_of``, :func:`stsynth_lib.predict.split.write_sample_mean`) and residual diffusion; a
    ControlNet-named model without a readable params.yaml gets "ControlNet [backbone not recorded]". Other models get
    no label (tables show their name)."""
    import yaml

    from stsynth_lib.book.report_format import CONTROLNET_NOT_RECORDED, controlnet_label, is_controlnet

    out: dict[str, str] = {}
    for name, folder in (runs or {}).items():
        params = None
        if folder is not None and (Path(folder).parent.parent / "params.yaml").is_file():
            try:
                params = yaml.safe_load((Path(folder).parent.parent / "params.yaml").read_text())
            except yaml.YAMLError:
                params = None
        if isinstance(params, dict) and (params.get("model") == "controlnet" or "backbone_name" in params):
            mean_of = _sampling_number(Path(folder), "sample_mean_of")  # a write_sample_mean folder
            out[name] = controlnet_label(params, prompt_only=Path(folder).parent.name == "predictions_prompt_only",
                                         strength=_generation_strength(Path(folder)),
                                         sample_mean_of=int(mean_of) if mean_of else None)
        elif is_controlnet(name):
            out[name] = CONTROLNET_NOT_RECORDED
    return out
