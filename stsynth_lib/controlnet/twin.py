"""The ControlNet's no-mask twin (issue 32): what the future footprints add to the ControlNet.

The twin is the guided run's options with one factor changed: the footprint channel is off (``use_mask: false``).
Everything else, the seed, the steps, the backbone and the synthetic construction (``erase_building_fraction``,
kept so that both see the same training pairs; the twin is simply not told where an erased building stood), stays.
The twin records whose twin it is (``nomask_twin_of``), which is also what lets it erase buildings without the mask.
It generates the test split with the guided run's generation settings (the strength chosen on validation for the
guided run, the same seeds), so the two folders differ only by what the footprints changed. Chapter 6 (``twins``)
tables the guided run minus its twin on new-building pixels, new buildings drawn and the whole image.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from stsynth_lib.runs import check_twin_name


def nomask_twin_config(config, guided_run_dir: str | Path, twin_name: str):
    """``config`` (the guided run's :class:`~stsynth_lib.controlnet.config.ControlNetTrainConfig`) as its no-mask
    twin named ``twin_name``. Refuses a guided run that reads no footprints (the twin would be the same run) and a
    name that would overwrite the guided run."""
    guided_run_dir = Path(guided_run_dir)
    recorded = yaml.safe_load((guided_run_dir / "params.yaml").read_text()) or {}
    if not recorded.get("use_mask"):  # as the run resolved "auto"
        raise ValueError(f"{guided_run_dir} reads no footprints (use_mask is off in its params.yaml): a no-mask twin "
                         "would be the same run; set nomask_twin: null for this profile")
    check_twin_name(guided_run_dir, twin_name)
    return dataclasses.replace(config, run_name=twin_name, use_mask=False, nomask_twin_of=guided_run_dir.name)


def train_nomask_twin(config, guided_run_dir: str | Path, twin_name: str, generation: dict[str, Any]) -> Path:
    """Train the no-mask twin of ``guided_run_dir`` (:func:`nomask_twin_config`; resumed or kept like any run) and
    generate its test split with ``generation`` (the keyword arguments the guided run's test split was generated
    with, its strength included: :func:`~stsynth_lib.controlnet.generate.generate_split`). Returns the twin's
    predictions folder."""
    from stsynth_lib.controlnet.generate import generate_split
    from stsynth_lib.controlnet.train import train_controlnet

    twin_dir = train_controlnet(nomask_twin_config(config, guided_run_dir, twin_name))
    return generate_split(twin_dir, config.dataset_dir, "test", **generation)


def twin_comparison(dataset_dir: str | Path, guided_pred_dir: str | Path, twin_pred_dir: str | Path,
                    metrics=("psnr", "ssim", "l1"), **evaluate_kw):
    """The guided run minus its twin on the test pairs both generated, whole image, paired, whole areas (blocks)
    resampled: ``(summary table, paired table)`` as chapter 6's tables print them."""
    from stsynth_lib import evaluate as E

    guided, twin = Path(guided_pred_dir), Path(twin_pred_dir)
    names = {guided.parent.parent.name: guided, twin.parent.parent.name: twin}
    res = E.evaluate_models(dataset_dir, "test", names, compute_lpips=False, progress=False, **evaluate_kw)
    scored = res.per_tile[res.per_tile["model"] != "persistence"]
    paired = E.paired_vs_baseline(scored, twin.parent.parent.name, metrics=metrics, cluster="cluster")
    return E.results_table(res.summary, metrics, labels=res.labels), E.paired_table(paired, labels=res.labels)
