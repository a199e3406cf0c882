"""Score a generator (or persistence) pair by pair on a ``PairedTileDataset``: the trainer's validation,
the cGAN chapters' test predictions and their comparison with persistence.

Units: ``l1`` here is in the [-1, 1] units of the training loss (``val.csv``, ``test_metrics.csv``, the chapters'
comparison tables), twice the [0, 1] L1 of :mod:`stsynth_lib.evaluate.scoring`; :func:`area_comparison`'s paired
interval table converts to [0, 1]. PSNR and SSIM are on [0, 1] images in both."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from stsynth_lib.cgan.model_io import load_generator
from stsynth_lib.conditioning import GuidanceConfig, build_condition
from stsynth_lib.data.dataset import PairedTileDataset, to_uint8
from stsynth_lib.training import collate, to_device


def _metric_rows(pred01: torch.Tensor, truth01: torch.Tensor, valid: torch.Tensor, prefix: str = "") -> dict[str, np.ndarray]:
    from stsynth_lib.metrics import finite_psnr, masked_l1, masked_psnr, masked_ssim

    return {
        f"{prefix}l1": masked_l1(pred01, truth01, valid) * 2.0,  # reported in [-1, 1] units, like the L1 loss
        f"{prefix}psnr": finite_psnr(masked_psnr(pred01, truth01, valid, data_range=1.0)),
        f"{prefix}ssim": masked_ssim(pred01, truth01, valid, data_range=1.0),
    }


def _unit01(x: torch.Tensor) -> torch.Tensor:
    return ((x.detach().float().cpu().clamp(-1, 1) + 1) / 2).to(torch.float64)


def dataset_for_guidance(dataset, guidance: GuidanceConfig | None):
    """``dataset``, or the same pairs with the context frames ``guidance`` needs (a model trained with
    ``context_offsets_months`` scored on a dataset opened without them, e.g. the chapters' test split)."""
    if guidance is None or not guidance.extra_context:
        return dataset
    if getattr(dataset, "context_offsets_months", None) == guidance.context_offsets_months:
        return dataset
    if not hasattr(dataset, "with_context_offsets"):
        raise ValueError(f"the model needs context frames at offsets {list(guidance.context_offsets_months)}: pass a "
                         "PairedTileDataset opened with context_offsets_months set to them")
    return dataset.with_context_offsets(guidance.context_offsets_months)


@torch.no_grad()
def evaluate_generator(G: nn.Module | None, dataset: PairedTileDataset, guidance: GuidanceConfig | None,
                       batch_size: int = 16, device: str | torch.device = "cpu", progress: bool = False,
                       on_batch=None) -> pd.DataFrame:
    """Per-pair masked L1 / PSNR / SSIM of ``G`` (``None``: the persistence baseline, future = past).

    L1 is in [-1, 1] units (the training loss' scale); PSNR (dB) and SSIM on [0, 1]
    images. Generated images are quantised to uint8 first, like the saved predictions.
    ``on_batch(batch, generated)`` is called for each batch (used to save predictions). A model with context
    guidance gets its context frames looked up for the pairs of ``dataset`` (:func:`dataset_for_guidance`).
    """
    from tqdm.auto import tqdm

    dataset = dataset_for_guidance(dataset, guidance if G is not None else None)
    if G is not None:
        was_training = G.training
        G.eval()
        dtype = next(G.parameters()).dtype
    rows = []
    idx = list(range(len(dataset)))
    for start in tqdm(range(0, len(idx), batch_size), disable=not progress, desc="evaluate", leave=False):
        batch = collate([dataset[i] for i in idx[start : start + batch_size]])
        if G is None:
            gen = batch["past"]
        else:
            b = to_device(batch, device)
            gen = G(build_condition(b, guidance).to(dtype)).float().cpu()
        gen = torch.from_numpy(to_uint8(gen)).float() / 127.5 - 1.0  # what the GeoTIFF will hold
        if on_batch is not None:
            on_batch(batch, gen)
        m = _metric_rows(_unit01(gen), _unit01(batch["future"]), batch["valid"])
        for i in range(gen.shape[0]):
            rows.append({"pair_id": int(batch["pair_id"][i]), "aoi": batch["aoi"][i],
                         "gap_months": float(batch["gap_months"][i]), **{k: float(v[i]) for k, v in m.items()}})
    if G is not None:
        G.train(was_training)
    return pd.DataFrame(rows)


def mean_scores(df: pd.DataFrame) -> dict[str, float]:
    """Mean of each metric over pairs (NaN-aware: pairs without valid pixels are skipped), without intervals
    (:func:`stsynth_lib.evaluate.stats.summarise` gives the evaluation's means with bootstrap intervals)."""
    return {k: float(np.nanmean(df[k].to_numpy())) for k in ("l1", "psnr", "ssim") if k in df}


def evaluate_persistence(dataset: PairedTileDataset, batch_size: int = 32) -> pd.DataFrame:
    """The persistence baseline (generated future = past image) scored like a model."""
    return evaluate_generator(None, dataset, None, batch_size=batch_size)


def predict_split(model: str | Path | nn.Module, dataset: PairedTileDataset, out_dir: str | Path,
                  guidance: GuidanceConfig | None = None, which: str = "best", batch_size: int = 16,
                  device: str = "cpu", progress: bool = True, metrics_csv: str | Path | None = None) -> pd.DataFrame:
    """Generate every pair of ``dataset``, save GeoTIFF + PNG predictions into ``out_dir`` and score them.

    ``model`` is a run folder (loaded with :func:`load_generator`) or a generator
    (then pass its ``guidance``). The folder is cleared first so runs never mix.
    Returns per-pair metrics of the model and of persistence (``persistence_*``
    columns); written to ``metrics_csv`` if given.
    """
    from stsynth_lib.evaluate.scoring import resampling_clusters, resampling_unit
    from stsynth_lib.predict.files import clear_predictions, save_predictions

    if isinstance(model, (str, Path)):
        G, guidance = load_generator(model, which)
    else:
        G = model
        if guidance is None:
            raise ValueError("predict_split(model=<nn.Module>) needs the GuidanceConfig the model was trained with")
    G = G.to(device)
    out_dir = Path(out_dir)
    clear_predictions(out_dir)

    def _save(batch, gen):
        save_predictions(out_dir, gen, batch["pair_id"].tolist(), batch["aoi"], batch["transform"], batch["crs"])

    df = evaluate_generator(G, dataset, guidance, batch_size, device, progress, on_batch=_save)
    pers = evaluate_persistence(dataset, batch_size)
    df = df.merge(pers[["pair_id", "l1", "psnr", "ssim"]].add_prefix("persistence_").rename(
        columns={"persistence_pair_id": "pair_id"}), on="pair_id")
    pairs = getattr(dataset, "pairs", None)
    if pairs is not None and resampling_unit(pairs) == "block":  # what area_comparison's interval resamples
        df["cluster"] = df["pair_id"].map(dict(zip(pairs["pair_id"], resampling_clusters(pairs))))
    if metrics_csv is not None:
        Path(metrics_csv).parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(metrics_csv, index=False)
    return df


def comparison_table(df: pd.DataFrame, model_name: str) -> pd.DataFrame:
    """Two-row table (model vs persistence) of mean L1 / PSNR / SSIM from :func:`predict_split`'s output."""
    rows = [{"method": model_name, **mean_scores(df)},
            {"method": "persistence (future = past)", **mean_scores(df[[c for c in df if c.startswith("persistence_")]]
                                                                .rename(columns=lambda c: c[len("persistence_"):]))}]
    return pd.DataFrame(rows).set_index("method")


def area_comparison(df: pd.DataFrame, model_name: str, n_boot: int = 2000, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Model against persistence area by area, from :func:`predict_split`'s output.

    Returns ``(per_area, paired)``: mean L1 of both per area (AOI) with the pair count and whether the
    model is better there (L1 in the [-1, 1] units of training, like :func:`comparison_table`), and
    :func:`stsynth_lib.evaluate.paired_vs_persistence` (model minus persistence with a 95 % interval
    from resampling whole areas, or whole blocks when ``df`` has :func:`predict_split`'s ``cluster`` column of a
    dataset split by blocks) for L1, PSNR and SSIM, with L1 in [0, 1] units (half the [-1, 1]
    value) like the evaluation chapter.
    """
    from stsynth_lib.evaluate import PERSISTENCE, paired_vs_persistence

    per_area = df.groupby("aoi").agg(pairs=("pair_id", "size"), l1=("l1", "mean"), persistence_l1=("persistence_l1", "mean"))
    per_area["model_better"] = per_area["l1"] < per_area["persistence_l1"]
    keys = ["pair_id", "aoi"] + (["cluster"] if "cluster" in df else [])
    cols = keys + ["l1", "psnr", "ssim"]
    long = pd.concat([df[cols].assign(model=model_name),
                      df[keys + [f"persistence_{c}" for c in ("l1", "psnr", "ssim")]]
                      .rename(columns=lambda c: c.replace("persistence_", "")).assign(model=PERSISTENCE)])
    long["l1"] = long["l1"] / 2  # [-1, 1] -> [0, 1] units, the evaluation's (and the table label's) scale
    return per_area, paired_vs_persistence(long, n_boot=n_boot, seed=seed)

