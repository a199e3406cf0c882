"""Score split predictions pair by pair (:class:`PairScores`, the ``on_batch`` of
:func:`stsynth_lib.predict.split.predict_split`): the cGAN trainer's validation and the cGAN chapters' test predictions
(both run by :mod:`stsynth_lib.cgan.predictor`), persistence (:func:`evaluate_persistence`) and the chapters'
comparison of the two (:func:`comparison_table`, :func:`area_comparison`).

Units: ``l1`` here is in the [-1, 1] units of the training loss (``val.csv``, ``test_metrics.csv``, the chapters'
comparison tables), twice the [0, 1] L1 of :mod:`stsynth_lib.evaluate.scoring`; :func:`area_comparison`'s paired
interval table converts to [0, 1]. PSNR and SSIM are on [0, 1] images in both."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from stsynth_lib.conditioning import GuidanceConfig
from stsynth_lib.data.dataset import PairedTileDataset
from stsynth_lib.predict.base import Predictor
from stsynth_lib.predict.split import predict_split


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


class PairScores:
    """The scores of a split prediction, pair by pair: ``on_batch`` of :func:`stsynth_lib.predict.split.predict_split`
    (sample 0 of each pair). Masked L1 in [-1, 1] units (the training loss' scale), PSNR (dB) and SSIM on [0, 1]
    images, computed on the images as the uint8 GeoTIFFs hold them; :meth:`frame` gives one row per pair
    (``pair_id, aoi, gap_months, l1, psnr, ssim``)."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def __call__(self, batch: dict, generated: torch.Tensor, k: int = 0) -> None:
        if k:
            return
        m = _metric_rows(_unit01(generated), _unit01(batch["future"]), batch["valid"])
        for i in range(generated.shape[0]):
            self.rows.append({"pair_id": int(batch["pair_id"][i]), "aoi": batch["aoi"][i],
                              "gap_months": float(batch["gap_months"][i]), **{k: float(v[i]) for k, v in m.items()}})

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)


def mean_scores(df: pd.DataFrame) -> dict[str, float]:
    """Mean of each metric over pairs (NaN-aware: pairs without valid pixels are skipped), without intervals
    (:func:`stsynth_lib.evaluate.stats.summarise` gives the evaluation's means with bootstrap intervals)."""
    return {k: float(np.nanmean(df[k].to_numpy())) for k in ("l1", "psnr", "ssim") if k in df}


class _Persistence(Predictor):
    """The persistence baseline as a predictor: the future is the past image."""

    family = "persistence"

    def generate(self, batch: dict, seed=0) -> torch.Tensor:
        return batch["past"]


def evaluate_persistence(dataset: PairedTileDataset, batch_size: int = 32) -> pd.DataFrame:
    """The persistence baseline (generated future = past image) scored like a model (:class:`PairScores`)."""
    scores = PairScores()
    predict_split(_Persistence(), dataset, None, batch_size=batch_size, progress=False, on_batch=scores)
    return scores.frame()


def comparison_table(df: pd.DataFrame, model_name: str) -> pd.DataFrame:
    """Two-row table (model vs persistence) of mean L1 / PSNR / SSIM from
    :func:`~stsynth_lib.cgan.predictor.predict_and_score`'s output."""
    rows = [{"method": model_name, **mean_scores(df)},
            {"method": "persistence (future = past)", **mean_scores(df[[c for c in df if c.startswith("persistence_")]]
                                                                .rename(columns=lambda c: c[len("persistence_"):]))}]
    return pd.DataFrame(rows).set_index("method")


def area_comparison(df: pd.DataFrame, model_name: str, n_boot: int = 2000, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Model against persistence area by area, from :func:`~stsynth_lib.cgan.predictor.predict_and_score`'s output.

    Returns ``(per_area, paired)``: mean L1 of both per area (AOI) with the pair count and whether the
    model is better there (L1 in the [-1, 1] units of training, like :func:`comparison_table`), and
    :func:`stsynth_lib.evaluate.paired_vs_persistence` (model minus persistence with a 95 % interval
    from resampling whole areas, or whole blocks when ``df`` has the ``cluster`` column of a dataset split by
    blocks) for L1, PSNR and SSIM, with L1 in [0, 1] units (half the [-1, 1] value) like the evaluation chapter.
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

