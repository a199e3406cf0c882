"""The one loop that predicts a split of a tile store, for every model family: :func:`predict_split`.

It iterates a ``PairedTileDataset`` (or any dataset with its sample dict) in batches of ``batch_size`` consecutive
pairs, asks a :class:`~stsynth_lib.predict.base.Predictor` for the images (the family's own work -- conditioning,
context frames, sampling, resizing -- stays in the predictor), quantises them to uint8 as the GeoTIFFs hold them and
writes the predictions folder with :func:`~stsynth_lib.predict.files.save_predictions`; the caller scores through
``on_batch``. The chapters' cGAN test predictions (:func:`stsynth_lib.cgan.predictor.predict_and_score`), the
cGAN trainer's validation (:func:`stsynth_lib.cgan.predictor.score_generator`), persistence's scores
(:func:`stsynth_lib.evaluate.generator.evaluate_persistence`) and the ControlNet's generation
(:func:`stsynth_lib.controlnet.generate.generate_split`) all run through it.

``<out_dir>/``::

    index.csv, <pair_id:06d>.tif/.png      sample 0 of every pair (the one that is scored)
    samples/sample-<k>/                    sample k >= 1 of every pair, same format (num_samples > 1)
    sampling.yaml                          how the images were drawn, when the caller gives a record

:func:`write_sample_mean` writes the per-pixel mean of every sample of each pair as a predictions folder of the same
format beside it (``<out_dir>_sample_mean/``, with ``std.npz``: the per-pixel standard deviation), so that the
evaluation scores the sample mean as a model of its own.

Sample ``k`` of pair ``p`` gets the noise seed :func:`sample_seed` ``(seed, p, k)``: per pair, so the images do not
depend on the batch size or on which pairs are predicted (deterministic models ignore seeds). This module sits in
the training core layer, with :mod:`~stsynth_lib.predict.files` (``docs/ARCHITECTURE.md``): the trainers and the
evaluation predict through it.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stsynth_lib.data.dataset import to_uint8
from stsynth_lib.predict.files import clear_predictions, read_prediction_index, read_prediction_tif, save_predictions
from stsynth_lib.runs import save_yaml
from stsynth_lib.training import collate

SAMPLING_FILE = "sampling.yaml"  # predictions folder: how its images were drawn (strength, scheduler, steps, ...)
SAMPLE_SEED_STRIDE = 1_000_003  # a prime larger than any pair id: sample k of one pair never reuses another's seed
SAMPLE_MEAN_SUFFIX = "_sample_mean"  # <predictions folder>_sample_mean: the per-pixel mean of its samples
SAMPLE_STD_FILE = "std.npz"  # in the sample-mean folder: {"<pair_id:06d>": (C, H, W) float32 std, grey levels}


def sample_seed(seed: int, pair_id: int, k: int = 0) -> int:
    """The noise seed of sample ``k`` of pair ``pair_id``: ``seed + pair_id + k * 1_000_003`` (sample 0:
    ``seed + pair_id``, the seed generation always used)."""
    return int(seed) + int(pair_id) + int(k) * SAMPLE_SEED_STRIDE


def sample_dir(out_dir: str | os.PathLike, k: int) -> Path:
    """Where sample ``k`` of every pair is written: the predictions folder itself for sample 0,
    ``<out_dir>/samples/sample-<k>/`` for the others."""
    return Path(out_dir) if k == 0 else Path(out_dir) / "samples" / f"sample-{k}"


def sample_dirs(pred_dir: str | os.PathLike) -> list[Path]:
    """The folders of every sample of a predictions folder, sample 0 first: ``[pred_dir, samples/sample-1, ...]``
    (those with an index.csv, in the order of k)."""
    pred_dir = Path(pred_dir)
    extra = [d for d in (pred_dir / "samples").glob("sample-*") if (d / "index.csv").is_file()
             and d.name.split("-", 1)[1].isdigit()]
    return [pred_dir] + sorted(extra, key=lambda d: int(d.name.split("-", 1)[1]))


def split_is_complete(pred_dir: str | os.PathLike, n_pairs: int, num_samples: int = 1) -> bool:
    """A predictions folder already holds ``n_pairs`` pairs in sample 0 and exactly ``num_samples`` samples (an
    experiment can then keep it instead of generating it again)."""
    index = Path(pred_dir) / "index.csv"
    if not index.is_file():
        return False
    with index.open() as f:
        rows = sum(1 for line in f if line.strip()) - 1  # minus the header
    return rows == int(n_pairs) and len(sample_dirs(pred_dir)) == int(num_samples)


def clear_split(out: str | os.PathLike) -> None:
    """Clear a predictions folder, its sampling record and the folders of its extra samples (so no old sample or
    record outlives a new run, not even an interrupted one)."""
    out = Path(out)
    clear_predictions(out)
    (out / SAMPLING_FILE).unlink(missing_ok=True)  # an interrupted run must not keep the old settings' record
    for d in sorted((out / "samples").glob("sample-*")) if (out / "samples").is_dir() else []:
        clear_predictions(d)
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()
    _clear_sample_mean(sample_mean_dir(out))  # the mean of the old samples must not outlive them


def sample_mean_dir(pred_dir: str | os.PathLike) -> Path:
    """Where :func:`write_sample_mean` writes by default: ``<pred_dir>_sample_mean`` beside the predictions folder
    (e.g. ``<run>/predictions/test_sample_mean``: the run's ``params.yaml`` stays two levels up, as the evaluation's
    labels expect)."""
    p = Path(pred_dir)
    return p.with_name(p.name + SAMPLE_MEAN_SUFFIX)


def _clear_sample_mean(d: Path) -> None:
    clear_predictions(d)
    for name in (SAMPLE_STD_FILE, SAMPLING_FILE):
        (d / name).unlink(missing_ok=True)


def _index_rows(pred_dir: Path) -> dict[int, str]:
    with open(pred_dir / "index.csv", newline="") as fh:
        return {int(r["pair_id"]): r.get("aoi", "") for r in csv.DictReader(fh)}


def _georeference(tif: Path) -> tuple[list[float], str]:
    import warnings

    import rasterio

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(tif) as src:
            return list(src.transform)[:6], (src.crs.to_string() if src.crs else "")


def write_sample_mean(pred_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                      write_png: bool = True) -> Path:
    """The per-pixel mean of every sample of each pair of a predictions folder (sample 0 in ``pred_dir`` itself and
    ``samples/sample-<k>/``, :func:`sample_dirs`), written as a predictions folder of the same format (GeoTIFF with
    sample 0's CRS and geotransform, PNG, ``index.csv``) so that the evaluation scores it as a model of its own
    (e.g. ``runs={"ControlNet (sample mean)": folder}``). The mean is taken in grey levels and rounded to uint8;
    ``std.npz`` holds the per-pixel standard deviation over the samples (``{"<pair_id:06d>": (C, H, W) float32}``,
    grey levels; :func:`~stsynth_lib.controlnet.plots.show_sample_spread` draws it) and ``sampling.yaml`` the source's
    record plus ``sample_mean_of`` (the number of samples). Only pairs every sample holds are written. ``out_dir``
    (default :func:`sample_mean_dir`) is cleared first. Returns it."""
    import yaml

    from stsynth_lib.runs import save_yaml

    pred_dir = Path(pred_dir)
    dirs = sample_dirs(pred_dir)
    indexes = [dict(read_prediction_index(d)) for d in dirs]
    common = sorted(set.intersection(*(set(ix) for ix in indexes)))
    if not common:
        raise ValueError(f"{pred_dir}: no pair is in every sample folder ({len(dirs)} folders)")
    out = Path(out_dir) if out_dir is not None else sample_mean_dir(pred_dir)
    if out.resolve() in {d.resolve() for d in dirs}:
        raise ValueError(f"{out} is one of the sample folders: write the mean elsewhere")
    _clear_sample_mean(out)
    aois = _index_rows(pred_dir)
    stds = {}
    for pid in common:
        stack = np.stack([read_prediction_tif(ix[pid]) for ix in indexes]).astype(np.float64)  # (K, C, H, W)
        mean = np.round(stack.mean(0))  # grey levels, rounded as the GeoTIFF holds them
        stds[f"{pid:06d}"] = stack.std(0).astype(np.float32)
        transform, crs = _georeference(indexes[0][pid])
        save_predictions(out, torch.from_numpy(mean[None] / 127.5 - 1.0), [pid], [aois.get(pid, "")],
                         np.asarray([transform]), [crs], write_png)
    np.savez_compressed(out / SAMPLE_STD_FILE, **stds)
    source = pred_dir / SAMPLING_FILE
    record = (yaml.safe_load(source.read_text()) or {}) if source.is_file() else {}
    save_yaml({**record, "sample_mean_of": len(dirs), "source": str(pred_dir)}, out / SAMPLING_FILE)
    return out


def load_sample_std(mean_dir: str | os.PathLike) -> dict[int, np.ndarray]:
    """``{pair_id: (C, H, W) float32}``: the per-pixel standard deviation over the samples (grey levels) that
    :func:`write_sample_mean` recorded beside the mean."""
    with np.load(Path(mean_dir) / SAMPLE_STD_FILE) as z:
        return {int(k): z[k] for k in z.files}


def quantised(images: torch.Tensor) -> torch.Tensor:
    """``images`` in [-1, 1] rounded to what the uint8 GeoTIFF holds, back in [-1, 1] (float32, CPU)."""
    return torch.from_numpy(to_uint8(images)).float() / 127.5 - 1.0


OnBatch = Callable[[dict[str, Any], torch.Tensor, int], None]


@torch.no_grad()
def predict_split(predictor, dataset, out_dir: str | os.PathLike | None, *, seed: int = 0, num_samples: int = 1,
                  batch_size: int = 16, progress: bool = True, write_png: bool = True, on_batch: OnBatch | None = None,
                  record: dict[str, Any] | None = None, desc: str = "predict") -> Path | None:
    """Predict every pair of ``dataset`` with ``predictor``, ``num_samples`` samples per pair, into ``out_dir``.

    ``predictor``: anything with :meth:`~stsynth_lib.predict.base.Predictor.generate` ``(batch, seeds)`` and
    :meth:`~stsynth_lib.predict.base.Predictor.prepare_dataset`. Pairs go in batches of ``batch_size`` consecutive
    pairs (collated with :func:`stsynth_lib.training.collate`); sample ``k`` of each batch is drawn with the seeds
    :func:`sample_seed` ``(seed, pair_id, k)`` and quantised to uint8 (:func:`quantised`), then written to
    :func:`sample_dir` ``(out_dir, k)`` and handed to ``on_batch(batch, images, k)`` (the collated CPU batch and the
    images as the GeoTIFFs hold them, in [-1, 1]) for scoring. ``out_dir`` is cleared first (:func:`clear_split`);
    ``None`` writes nothing (scores only). ``record`` is written to ``<out_dir>/sampling.yaml`` at the end.
    Returns ``out_dir`` as a path (None when it was None).
    """
    from tqdm.auto import tqdm

    if int(num_samples) < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    dataset = predictor.prepare_dataset(dataset)
    out = None if out_dir is None else Path(out_dir)
    if out is not None:
        clear_split(out)
    n = len(dataset)
    for start in tqdm(range(0, n, batch_size), disable=not progress, desc=desc, leave=False):
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, n))])
        pair_ids = batch["pair_id"].tolist()
        for k in range(int(num_samples)):
            images = quantised(predictor.generate(batch, [sample_seed(seed, p, k) for p in pair_ids]))
            if out is not None:
                save_predictions(sample_dir(out, k), images, pair_ids, batch["aoi"], batch["transform"], batch["crs"],
                                 write_png)
            if on_batch is not None:
                on_batch(batch, images, k)
    if out is not None and record is not None:
        save_yaml(record, out / SAMPLING_FILE)
    return out


__all__ = ["SAMPLE_MEAN_SUFFIX", "SAMPLE_SEED_STRIDE", "SAMPLE_STD_FILE", "SAMPLING_FILE", "clear_split",
           "load_sample_std", "predict_split", "quantised", "sample_dir", "sample_dirs", "sample_mean_dir",
           "sample_seed", "write_sample_mean"]
