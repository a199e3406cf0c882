"""What chapters 3 and 4 (pix2pix and the attention U-Net) share, as library calls: the table of a run's options
(:func:`config_table`), training followed by the test predictions compared with persistence (:func:`train_and_test`)
and persistence's validation scores, the dashed line of the validation figure (:func:`persistence_on_val`).

L1 here is in the [-1, 1] units of the training loss, except in :attr:`CGANChapterRun.paired` ([0, 1], like the
evaluation chapter): see :mod:`stsynth_lib.evaluate.generator`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from stsynth_lib.book.report_format import fmt_value, settings_table
from stsynth_lib.cgan.config import CGANTrainConfig
from stsynth_lib.cgan.train import split_dataset, train_cgan
from stsynth_lib.data.dataset import PairedTileDataset
from stsynth_lib.evaluate.generator import (
    area_comparison,
    comparison_table,
    evaluate_persistence,
    mean_scores,
    predict_split,
)

SETTING_LABELS = {"lambda_l1": "L1 weight (lambda_l1)", "ngf": "generator filters (ngf)",
                  "ndf": "discriminator filters (ndf)", "lr": "learning rate (lr)"}
METRIC_NAMES = {"l1": "L1", "psnr": "PSNR (dB)", "ssim": "SSIM"}


def config_table(config: CGANTrainConfig):
    """The run's options as a table (the folders and the profile left out)."""
    return settings_table(config, exclude=["dataset_dir", "runs_dir", "profile"], labels=SETTING_LABELS)


@dataclass
class CGANChapterRun:
    """A trained cGAN run and its test split against persistence (same pairs, same valid pixels)."""

    run_dir: Path
    test_ds: PairedTileDataset
    per_pair: pd.DataFrame  # :func:`predict_split`: the model's and persistence's scores per test pair
    table: pd.DataFrame  # :func:`comparison_table`: mean L1 / PSNR / SSIM of the model and of persistence
    per_area: pd.DataFrame  # :func:`area_comparison`: mean L1 of both per area
    paired: pd.DataFrame  # :func:`area_comparison`: model minus persistence with a 95 % interval over areas / blocks


def train_and_test(config: CGANTrainConfig, max_test_pairs: int | None = None) -> CGANChapterRun:
    """Train ``config`` (:func:`train_cgan`), then let the best generator predict the test split (``max_test_pairs``:
    None for every pair) into ``<run>/predictions/test/`` (what chapter 6 scores, with ``test_metrics.csv``) and
    compare it with persistence."""
    run_dir = train_cgan(config)
    test_ds = PairedTileDataset(config.dataset_dir, "test", max_pairs=max_test_pairs)
    per_pair = predict_split(run_dir, test_ds, run_dir / "predictions" / "test", which="best",
                             metrics_csv=run_dir / "test_metrics.csv")
    per_area, paired = area_comparison(per_pair, config.model)
    return CGANChapterRun(run_dir=run_dir, test_ds=test_ds, per_pair=per_pair,
                          table=comparison_table(per_pair, config.model), per_area=per_area, paired=paired)


def persistence_on_val(config: CGANTrainConfig) -> dict[str, float]:
    """Mean L1 / PSNR / SSIM of persistence on the validation pairs the trainer scores."""
    return mean_scores(evaluate_persistence(split_dataset(config, "val")))


def scores_text(scores: dict[str, float]) -> str:
    """``"L1 0.12, PSNR (dB) 21.3, SSIM 0.61"``."""
    return ", ".join(f"{METRIC_NAMES.get(k, k)} {fmt_value(v)}" for k, v in scores.items())
