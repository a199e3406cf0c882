"""The on-disk tile store and ``PairedTileDataset``, the one dataset every model trains and is scored on.

Tile store layout (written once by :func:`stsynth_lib.data.build.build_dataset`)::

    <dataset_dir>/
        dataset.yaml          tile size, bands, source root, counts
        tiles.parquet         one row per (AOI, month, tile): position, geotransform, CRS, fractions
        tiles_images.npy      uint8   (n_tiles, C, T, T)   image bands (RGB by default)
        tiles_masks.npy       uint8   (n_tiles, T, T)      building footprints, 0/1 (0 where no labels)
        tiles_valid.npy       uint8   (n_tiles, T, T)      1 = usable pixel (not cloud/UDM, not nodata)
        pairs.parquet         one row per (past tile, future tile) pair, with its split
        splits.json           AOIs of each split and the seed that drew them

The arrays are NumPy ``.npy`` files opened as memory maps, so the training loop
does no GeoTIFF decoding and no rasterisation: a sample is three slices.

Sample contract (``PairedTileDataset[i]``), all tensors ``float32`` unless noted:

==================  ==============  ===========================================================
key                 shape           meaning and range
==================  ==============  ===========================================================
``past``            (C, T, T)       past image (date t0), scaled to [-1, 1]
``future``          (C, T, T)       future image (date t1 > t0), scaled to [-1, 1]
``past_mask``       (1, T, T)       building footprints at t0, {0, 1}
``future_mask``     (1, T, T)       building footprints at t1, {0, 1} (the guidance)
``has_mask``        ()  bool        False where the AOI has no labels (masks are then all 0)
``past_valid``      (1, T, T)       1 where the past pixel is usable (not cloud/UDM/nodata)
``future_valid``    (1, T, T)       same for the future image
``valid``           (1, T, T)       ``past_valid * future_valid``: where losses and metrics count
``gap_months``      ()              t1 - t0 in months (>= 1)
``past_month``      ()  int64       month of year of t0, 1..12
``future_month``    ()  int64       month of year of t1, 1..12
``past_year``       ()  int64
``future_year``     ()  int64
``transform``       (6,) float64    affine (a, b, c, d, e, f) of the tile (rasterio order)
``crs``             str             CRS of the tile as WKT/EPSG string ("" if not georeferenced)
``aoi``             str             SpaceNet 7 AOI name
``pair_id``         () int64        row of ``pairs.parquet``
==================  ==============  ===========================================================

With ``context_offsets_months`` (K offsets, see :func:`check_context_offsets`), four more keys:

========================  ===============  =====================================================
``context``               (K, C, T, T)     frame k of the sequence in [-1, 1]; zeros where absent
``context_valid``         (K, 1, T, T)     1 where frame k is present and its pixel usable
``context_present``       (K,) bool        frame k exists in the tile store
``context_age_months``    (K,)             t1 minus the frame's month; 0 where absent
========================  ===============  =====================================================

Offsets are relative to t0: ``0`` is the past frame itself, ``-1`` the month before t0, ...;
``"same_month_last_year"`` is t1 - 12 and ``"same_month_last_year-1"`` / ``"+1"`` (up to +-11) the months around
it, each present only when it is not after t0. A frame is the store's tile of the
same AOI and position in that month; months the series lacks (gaps, the first months) are absent and the pair is
kept. Without ``context_offsets_months`` (``None``) the sample has exactly the keys above.

Images map uint8 ``v`` to ``v / 127.5 - 1``; :func:`to_uint8` inverts it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml
from torch.utils.data import Dataset

from stsynth_lib.book.report_format import plural

SPLITS = ("train", "val", "test")
SAME_MONTH_LAST_YEAR = "same_month_last_year"
# "same_month_last_year-1" / "+1" (up to +-11): the month before / after the same month last year (t1 - 13, t1 - 11)
_LAST_YEAR = re.compile(r"^same_month_last_year(?:([+-])([1-9]|1[01]))?$")


def last_year_shift(offset: Any) -> int | None:
    """Months added to ``t1 - 12`` by a "same month last year" offset (``"same_month_last_year-1"``: -1, i.e.
    ``t1 - 13``); ``None`` for an integer offset relative to t0."""
    m = _LAST_YEAR.match(offset) if isinstance(offset, str) else None
    if m is None:
        return None
    return 0 if m.group(1) is None else int(m.group(2)) * (1 if m.group(1) == "+" else -1)


def to_unit(x_uint8: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return x_uint8.astype(np.float32) / 127.5 - 1.0


def to_uint8(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """[-1, 1] float (tensor or array, any shape) -> uint8 [0, 255], clipped."""
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    return np.clip(np.round((np.asarray(x) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def random_rot_flip(arrays: list[np.ndarray]) -> list[np.ndarray]:
    """The same random 90-degree rotation and horizontal flip of every array (on the last two axes), drawn from the
    numpy global RNG (rotation, then flip)."""
    k = np.random.randint(4)
    flip = np.random.rand() < 0.5
    arrays = [np.rot90(a, k, axes=(-2, -1)) for a in arrays]
    return [a[..., ::-1] for a in arrays] if flip else arrays


def check_context_offsets(offsets: Any) -> tuple[int | str, ...] | None:
    """``None`` or a non-empty list of distinct offsets (integers <= 0, ``"same_month_last_year"`` and
    ``"same_month_last_year-1"`` / ``"+1"`` (up to +-11 months around it)) as a tuple."""
    if offsets is None:
        return None
    if isinstance(offsets, (str, int, float)) or not hasattr(offsets, "__iter__"):
        raise ValueError(f"context_offsets_months must be a list (e.g. [0, -1, {SAME_MONTH_LAST_YEAR}]), got {offsets!r}")
    out: list[int | str] = []
    for o in offsets:
        if last_year_shift(o) is not None:
            out.append(str(o))
        elif isinstance(o, (int, np.integer)) and not isinstance(o, (bool, np.bool_)) and o <= 0:
            out.append(int(o))
        else:
            raise ValueError(f"context_offsets_months: {o!r} is neither an integer <= 0 (months relative to t0; 0 = "
                             f"the past frame) nor {SAME_MONTH_LAST_YEAR!r} (optionally -1 / +1 .. 11 months around it, e.g. "
                             f"'{SAME_MONTH_LAST_YEAR}-1')")
    if not out:
        raise ValueError("context_offsets_months is empty: use null (the past frame only) or e.g. [0, -1]")
    if len(set(out)) != len(out):
        raise ValueError(f"context_offsets_months lists an offset twice: {list(offsets)!r}")
    return tuple(out)


def tile_month_index(tiles: pd.DataFrame) -> dict[tuple[str, int, int, int], int]:
    """``(aoi, row_off, col_off, year * 12 + month) -> tile_id`` of a tile store's ``tiles`` table."""
    keys = zip(tiles["aoi"].astype(str), tiles["row_off"].astype(int), tiles["col_off"].astype(int),
               tiles["year"].astype(int) * 12 + tiles["month"].astype(int))
    return dict(zip(keys, tiles["tile_id"].astype(int)))


def context_lookup(pairs: pd.DataFrame, index: dict, offsets) -> tuple[np.ndarray, np.ndarray]:
    """``(N, K)`` tile ids of each pair's context frames (-1 where absent) and ``(N, K)`` float32 ages in months
    (t1 minus the frame's month; 0 where absent). ``index``: :func:`tile_month_index` of the store."""
    offsets = check_context_offsets(offsets)
    n = len(pairs)
    ids = np.full((n, len(offsets)), -1, np.int64)
    ages = np.zeros((n, len(offsets)), np.float32)
    if n == 0:
        return ids, ages
    t0 = pairs["past_year"].to_numpy(int) * 12 + pairs["past_month"].to_numpy(int)
    t1 = pairs["future_year"].to_numpy(int) * 12 + pairs["future_month"].to_numpy(int)
    aoi, r, c = pairs["aoi"].astype(str).to_numpy(), pairs["row_off"].to_numpy(int), pairs["col_off"].to_numpy(int)
    past_ids = pairs["past_tile_id"].to_numpy(int)
    for k, o in enumerate(offsets):
        shift = last_year_shift(o)
        month = t1 - 12 + shift if shift is not None else t0 + o
        for i in range(n):
            if o == 0:
                tid = past_ids[i]
            elif month[i] > t0[i]:
                continue
            else:
                tid = index.get((aoi[i], r[i], c[i], month[i]), -1)
            if tid >= 0:
                ids[i, k], ages[i, k] = tid, t1[i] - month[i]
    return ids, ages


def context_arrays(store: TileStore, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 frames ``(..., K, C, T, T)`` (zeros where absent) and validity ``(..., K, 1, T, T)`` (0 where absent) of
    the tile ids ``ids`` (``(..., K)``, -1 = absent) of :func:`context_lookup`."""
    ids = np.asarray(ids)
    flat = ids.reshape(-1)
    present = flat >= 0
    c, t = store.n_bands, store.tile_size_px
    frames = np.zeros((flat.size, c, t, t), np.uint8)
    valid = np.zeros((flat.size, 1, t, t), np.uint8)
    if present.any():
        take = np.sort(np.unique(flat[present]))
        pos = np.searchsorted(take, flat[present])
        frames[present] = np.asarray(store.images[take])[pos]
        valid[present] = np.asarray(store.valid[take])[pos][:, None]
    return frames.reshape(*ids.shape, c, t, t), valid.reshape(*ids.shape, 1, t, t)


class TileStore:
    """Read-only view of a built dataset folder (memory-mapped arrays + tables)."""

    def __init__(self, dataset_dir: str | Path):
        self.root = Path(dataset_dir)
        meta_path = self.root / "dataset.yaml"
        if not meta_path.is_file():
            raise FileNotFoundError(
                f"{meta_path} not found: {self.root} is not a built stsynth dataset. "
                "Build it first with notebook 02 (make data) or stsynth_lib.data.build.build_dataset()."
            )
        self.meta: dict[str, Any] = yaml.safe_load(meta_path.read_text())
        self.tiles = pd.read_parquet(self.root / "tiles.parquet")
        self.pairs = pd.read_parquet(self.root / "pairs.parquet")
        self.splits: dict[str, list[str]] = json.loads((self.root / "splits.json").read_text())["splits"]
        self.images = np.load(self.root / "tiles_images.npy", mmap_mode="r")
        self.masks = np.load(self.root / "tiles_masks.npy", mmap_mode="r")
        self.valid = np.load(self.root / "tiles_valid.npy", mmap_mode="r")
        if not (len(self.tiles) == self.images.shape[0] == self.masks.shape[0] == self.valid.shape[0]):
            raise ValueError(
                f"{self.root}: tiles.parquet has {len(self.tiles)} rows but the arrays hold "
                f"{self.images.shape[0]}/{self.masks.shape[0]}/{self.valid.shape[0]} tiles; "
                "the build was interrupted or files were mixed. Rebuild the dataset."
            )

    @property
    def tile_size_px(self) -> int:
        return int(self.images.shape[-1])

    @property
    def n_bands(self) -> int:
        return int(self.images.shape[1])


class PairedTileDataset(Dataset):
    """(past image, future mask, future image, validity, time gap) pairs of one split.

    Parameters
    ----------
    dataset_dir:
        Folder written by ``build_dataset``.
    split:
        ``"train"``, ``"val"``, ``"test"`` or ``"all"``.
    max_pairs:
        Keep only the first ``max_pairs`` pairs (after a seeded shuffle when
        ``subsample_seed`` is given) -- handy for smoke runs.
    augment:
        Random flips and 90-degree rotations, applied identically to every
        spatial tensor (training only; the ``transform`` then no longer matches
        the pixels, so never augment data you georeference).
    context_offsets_months:
        ``None`` (default: one past image, the keys of the table above) or a list of offsets (integers <= 0,
        ``"same_month_last_year"``): each sample then also holds the ``context`` keys (see the module docstring),
        looked up once per dataset.
    """

    def __init__(
        self,
        dataset_dir: str | Path,
        split: str = "train",
        max_pairs: int | None = None,
        augment: bool = False,
        subsample_seed: int | None = None,
        context_offsets_months: list | tuple | None = None,
    ):
        self.store = TileStore(dataset_dir)
        if split != "all" and split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS + ('all',)}, got {split!r}")
        pairs = self.store.pairs if split == "all" else self.store.pairs[self.store.pairs["split"] == split]
        if subsample_seed is not None:
            pairs = pairs.sample(frac=1.0, random_state=subsample_seed)
        if max_pairs is not None:
            pairs = pairs.iloc[:max_pairs]
        self.pairs = pairs.reset_index(drop=True)
        self.split = split
        self.augment = augment
        self._tile_rows = self.store.tiles.set_index("tile_id", drop=False)
        self.context_offsets_months = check_context_offsets(context_offsets_months)
        if self.context_offsets_months is not None:
            self._context_ids, self._context_ages = context_lookup(
                self.pairs, tile_month_index(self.store.tiles), self.context_offsets_months)

    def with_context_offsets(self, context_offsets_months: list | tuple | None) -> PairedTileDataset:
        """The same pairs (and augmentation) with other context offsets (the store is shared, not reopened)."""
        import copy

        other = copy.copy(self)
        other.context_offsets_months = check_context_offsets(context_offsets_months)
        if other.context_offsets_months is not None:
            other._context_ids, other._context_ages = context_lookup(
                self.pairs, tile_month_index(self.store.tiles), other.context_offsets_months)
        return other

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def n_bands(self) -> int:
        return self.store.n_bands

    @property
    def tile_size_px(self) -> int:
        return self.store.tile_size_px

    def new_building_pixels(self) -> np.ndarray:
        """Per pair (in ``self.pairs`` order): the number of pixels built at t1 and not at t0 (future mask and not
        past mask); 0 for pairs of AOIs without labels. Read once from the stored masks, in chunks."""
        t0 = self.pairs["past_tile_id"].to_numpy(int)
        t1 = self.pairs["future_tile_id"].to_numpy(int)
        out = np.zeros(len(self.pairs), np.int64)
        for a in range(0, len(out), 512):
            m0 = np.asarray(self.store.masks[t0[a:a + 512]]) > 0
            m1 = np.asarray(self.store.masks[t1[a:a + 512]]) > 0
            out[a:a + 512] = (m1 & ~m0).reshape(len(m0), -1).sum(1)
        if "has_mask" in self.pairs:
            out[~self.pairs["has_mask"].to_numpy(bool)] = 0
        return out

    def __getitem__(self, idx: int) -> dict[str, Any]:
        p = self.pairs.iloc[idx]
        t0, t1 = int(p["past_tile_id"]), int(p["future_tile_id"])
        s = self.store
        past = to_unit(np.asarray(s.images[t0]))
        future = to_unit(np.asarray(s.images[t1]))
        past_mask = np.asarray(s.masks[t0], dtype=np.float32)[None]
        future_mask = np.asarray(s.masks[t1], dtype=np.float32)[None]
        past_valid = np.asarray(s.valid[t0], dtype=np.float32)[None]
        future_valid = np.asarray(s.valid[t1], dtype=np.float32)[None]
        spatial = [past, future, past_mask, future_mask, past_valid, future_valid]
        if self.context_offsets_months is not None:
            frames, frames_valid = context_arrays(s, self._context_ids[idx])
            present = (self._context_ids[idx] >= 0)[:, None, None, None]
            spatial += [np.where(present, to_unit(frames), np.float32(0)), frames_valid.astype(np.float32)]
        if self.augment:
            spatial = random_rot_flip(spatial)
        spatial = [torch.from_numpy(np.ascontiguousarray(a)) for a in spatial]
        past, future, past_mask, future_mask, past_valid, future_valid = spatial[:6]
        row = self._tile_rows.loc[t1]
        sample = {
            "past": past,
            "future": future,
            "past_mask": past_mask,
            "future_mask": future_mask,
            "has_mask": torch.tensor(bool(p["has_mask"])),
            "past_valid": past_valid,
            "future_valid": future_valid,
            "valid": past_valid * future_valid,
            "gap_months": torch.tensor(float(p["gap_months"]), dtype=torch.float32),
            "past_month": torch.tensor(int(p["past_month"])),
            "future_month": torch.tensor(int(p["future_month"])),
            "past_year": torch.tensor(int(p["past_year"])),
            "future_year": torch.tensor(int(p["future_year"])),
            "transform": torch.tensor([row[f"transform_{c}"] for c in "abcdef"], dtype=torch.float64),
            "crs": str(row["crs"]),
            "aoi": str(p["aoi"]),
            "pair_id": torch.tensor(int(p["pair_id"])),
        }
        if self.context_offsets_months is not None:
            ids = self._context_ids[idx]
            sample.update({"context": spatial[6], "context_valid": spatial[7],
                           "context_present": torch.from_numpy(ids >= 0),
                           "context_age_months": torch.from_numpy(self._context_ages[idx].copy())})
        return sample

    def plot(self, sample: dict[str, Any], suptitle: str | None = None, prediction: torch.Tensor | None = None):
        """Figure of one sample: past | future mask | future (| prediction), invalid pixels hatched."""
        return plot_sample(sample, suptitle=suptitle, prediction=prediction)


def _rgb(x: torch.Tensor) -> np.ndarray:
    img = to_uint8(x[:3]).transpose(1, 2, 0)
    return img


def plot_sample(sample: dict[str, Any], suptitle: str | None = None, prediction: torch.Tensor | None = None):
    """Return a matplotlib Figure showing a ``PairedTileDataset`` sample (torchgeo-style ``plot``)."""
    import matplotlib.pyplot as plt

    panels = [
        (_rgb(sample["past"]), f"past {int(sample['past_year'])}-{int(sample['past_month']):02d}"),
        (sample["future_mask"][0].numpy(), "future\nbuildings" if bool(sample["has_mask"]) else "no labels"),
        (_rgb(sample["future"]), f"future {int(sample['future_year'])}-{int(sample['future_month']):02d}"),
    ]
    if prediction is not None:
        panels.append((_rgb(prediction), "generated"))
    from stsynth_lib.figure_check import BOOK_WIDTH_IN, checked

    side = min(3.0, BOOK_WIDTH_IN / len(panels))
    fig, axes = plt.subplots(1, len(panels), figsize=(side * len(panels), side + 0.9))
    invalid = 1 - sample["valid"][0].numpy()
    for ax, (img, title) in zip(axes, panels):
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1 if img.ndim == 2 else None)
        if invalid.any():
            ax.contourf(invalid, levels=[0.5, 1.5], colors="none", hatches=["///"])
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.suptitle(suptitle or f"{sample['aoi']}  gap {plural(round(float(sample['gap_months'])), 'month')}", fontsize=10)
    fig.tight_layout()
    return checked(fig)


def measure_loader_throughput(dataset: Dataset, batch_size: int = 32, num_workers: int = 0, max_batches: int = 50,
                              shuffle: bool = True, seed: int = 0) -> dict[str, float]:
    """Time a shuffled ``DataLoader`` pass over ``dataset``: pairs/s and tiles/s (two tiles per pair)."""
    import time

    from torch.utils.data import DataLoader

    g = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers, generator=g)
    n = 0
    start = time.perf_counter()
    for b, batch in enumerate(loader):
        n += batch["past"].shape[0]
        if b + 1 >= max_batches:
            break
    dt = time.perf_counter() - start
    return {"pairs": n, "seconds": dt, "pairs_per_s": n / dt, "tiles_per_s": 2 * n / dt,
            "batch_size": batch_size, "num_workers": num_workers}
