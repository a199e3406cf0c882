"""What chapters 3 and 4 (pix2pix and the attention U-Net) share, as library calls: the table of a run's options
(:func:`config_table`), training followed by the test predictions compared with persistence (:func:`train_and_test`)
and persistence's validation scores, the dashed line of the validation figure (:func:`persistence_on_val`); and what
makes chapter 4 a controlled comparison: its run is the twin of chapter 3's (:func:`twin_config`: the options chapter 3
recorded, another generator) and is compared with it pair by pair (:func:`paired_with_twin`).

L1 here is in the [-1, 1] units of the training loss, except in :attr:`CGANChapterRun.paired` ([0, 1], like the
evaluation chapter): see :mod:`stsynth_lib.evaluate.generator`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from stsynth_lib.book.report_format import fmt_value, settings_table
from stsynth_lib.cgan.config import CGANTrainConfig
from stsynth_lib.cgan.predictor import predict_and_score
from stsynth_lib.cgan.train import split_dataset, train_cgan
from stsynth_lib.data.dataset import PairedTileDataset
from stsynth_lib.evaluate.generator import area_comparison, comparison_table, evaluate_persistence, mean_scores
from stsynth_lib.options.twin import twin_change_problems
from stsynth_lib.runs import check_twin_name, no_twin_note

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
    per_pair: pd.DataFrame  # :func:`predict_and_score`: the model's and persistence's scores per test pair
    table: pd.DataFrame  # :func:`comparison_table`: mean L1 / PSNR / SSIM of the model and of persistence
    per_area: pd.DataFrame  # :func:`area_comparison`: mean L1 of both per area
    paired: pd.DataFrame  # :func:`area_comparison`: model minus persistence with a 95 % interval over areas / blocks

    def most_changed(self, n: int = 3) -> list[int]:
        """Positions in :attr:`test_ds` of the ``n`` test pairs whose past and future differ most (largest L1 of
        persistence), in the dataset's order."""
        changed = set(self.per_pair.nlargest(n, "persistence_l1")["pair_id"].astype(int))
        return [i for i, pid in enumerate(self.test_ds.pairs["pair_id"].astype(int)) if pid in changed]


def train_and_test(config: CGANTrainConfig, max_test_pairs: int | None = None) -> CGANChapterRun:
    """Train ``config`` (:func:`train_cgan`), then let the best generator predict the test split (``max_test_pairs``:
    None for every pair) into ``<run>/predictions/test/`` (what chapter 6 scores, with ``test_metrics.csv``) and
    compare it with persistence."""
    run_dir = train_cgan(config)
    test_ds = PairedTileDataset(config.dataset_dir, "test", max_pairs=max_test_pairs)
    per_pair = predict_and_score(run_dir, test_ds, run_dir / "predictions" / "test", which="best",
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


def twin_config(runs_dir: str | Path, profile: str, twin_of_run: str, model: str | None = None,
                run_name: str | None = None, changes: dict | None = None, device: str = "auto",
                progress: bool = True) -> CGANTrainConfig:
    """The options of ``<runs_dir>/<profile>/<twin_of_run>`` (its ``params.yaml``: what chapter 3's trainer ran with)
    with another generator ``model`` (None: the same) and the ``changes`` (each chosen on validation, or the one
    factor a control removes, e.g. ``{"use_mask": False, "use_past_mask": False}``), so that the two runs differ by
    the generator and by the changes alone: same data, seed, losses, schedule and guidance."""
    path = Path(runs_dir) / profile / twin_of_run / "params.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: this run is the twin of chapter 3's run {twin_of_run!r}; run "
                                f"chapter 3 first (make nb NB=03_train_cgan PROFILE={profile}) or set twin_of_run to "
                                "a finished cGAN run of this profile")
    fields = {f.name for f in dataclasses.fields(CGANTrainConfig)}
    changes = dict(changes or {})
    problems = twin_change_problems(changes)
    if problems:
        raise ValueError("twin_changes:\n  - " + "\n  - ".join(problems))
    saved = yaml.safe_load(path.read_text()) or {}
    options = {k: v for k, v in saved.items() if k in fields}
    options.update(changes)
    options.update(profile=profile, runs_dir=str(runs_dir), run_name=run_name, device=device, progress=progress,
                   model=model or saved.get("model", "pix2pix"))
    return CGANTrainConfig(**options)


def paired_with_twin(run: CGANChapterRun, twin_run_dir: str | Path, n_boot: int = 2000,
                     seed: int = 0) -> pd.DataFrame:
    """This run minus its twin (chapter 3's run) on the test pairs both predicted, L1 / PSNR / SSIM, with a 95 %
    interval from resampling whole areas (blocks on block-split data), L1 in [0, 1] units: the one controlled
    comparison of the two generators (:func:`stsynth_lib.evaluate.stats.paired_vs_baseline`)."""
    from stsynth_lib.evaluate.stats import paired_vs_baseline

    twin_dir = Path(twin_run_dir)
    csv = twin_dir / "test_metrics.csv"
    if not csv.is_file():
        raise FileNotFoundError(f"{csv} not found: the twin run has no test predictions (chapter 3 writes them)")
    twin = pd.read_csv(csv)
    mine = run.per_pair
    keys = ["pair_id", "aoi"] + (["cluster"] if "cluster" in mine and "cluster" in twin else [])
    shared = mine[keys].merge(twin[["pair_id"]], on="pair_id")
    if shared.empty:
        raise ValueError(f"{csv} shares no test pair with {run.run_dir}: were both run with the same dataset_dir?")
    names = (run.run_dir.name, twin_dir.name)
    long = pd.concat([shared.merge(df[["pair_id", "l1", "psnr", "ssim"]], on="pair_id").assign(model=name)
                      for df, name in ((mine, names[0]), (twin, names[1]))])
    long["l1"] = long["l1"] / 2  # [-1, 1] -> [0, 1] units, as in area_comparison
    return paired_vs_baseline(long, baseline=names[1], n_boot=n_boot, seed=seed)


NOMASK = {"use_mask": False, "use_past_mask": False}  # what a no-mask twin changes: the footprint channels, removed


def train_nomask_twin(run: CGANChapterRun, run_name: str, max_test_pairs: int | None = None, device: str = "auto",
                      progress: bool = True) -> tuple[CGANChapterRun, pd.DataFrame]:
    """The no-mask control of ``run`` (issue 32): its recorded options with the footprint channels removed
    (:data:`NOMASK`), trained and tested like it under ``run_name`` beside it; returns (the twin, ``run`` minus the
    twin on the test pairs, :func:`paired_with_twin`). Chapter 6 (``twins``) tables what the footprints add on
    new-building pixels. Refuses a run that reads no footprints (nothing to remove)."""
    recorded = yaml.safe_load((run.run_dir / "params.yaml").read_text()) or {}
    reads = {**recorded, **(recorded.get("resolved_guidance") or {})}  # use_mask "auto" as the run resolved it
    if not reads.get("use_mask") and not reads.get("use_past_mask"):
        raise ValueError(f"{run.run_dir} reads no footprints (use_mask and use_past_mask are off in its params.yaml): "
                         "a no-mask twin would be the same run; set nomask_twin: null for this profile")
    check_twin_name(run.run_dir, run_name)
    # one factor: the footprint channels (synthetic construction, erase_building_fraction, stays as recorded: the
    # twin sees the same training pairs, without the footprints that say where a building was erased)
    changes = {k: v for k, v in NOMASK.items() if reads.get(k)}
    config = twin_config(run.run_dir.parent.parent, run.run_dir.parent.name, run.run_dir.name, run_name=run_name,
                         changes=changes, device=device, progress=progress)
    twin = train_and_test(config, max_test_pairs)
    return twin, paired_with_twin(run, twin.run_dir)


def nomask_twin_report(run: CGANChapterRun, nomask_twin: str | None, max_test_pairs: int | None = None,
                       device: str = "auto", progress: bool = True) -> tuple[str, pd.DataFrame | None]:
    """Chapters 3-4's no-mask twin section: ``(a line of Markdown, run minus twin or None)``. With ``nomask_twin``
    set, :func:`train_nomask_twin` trains and tests the twin; without it, a note says why there is none."""
    if nomask_twin:
        twin, gain = train_nomask_twin(run, nomask_twin, max_test_pairs, device=device, progress=progress)
        return f"No-mask twin: `{twin.run_dir}`; this run minus the twin on the same test pairs:", gain
    labelled = bool(run.test_ds.pairs["has_mask"].any()) if "has_mask" in run.test_ds.pairs else False
    return no_twin_note(labelled), None
