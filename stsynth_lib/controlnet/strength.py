"""Choose the img2img strength of ControlNet generation on the validation split (never on test).

``strength`` (see :func:`stsynth_lib.controlnet.generate.sample_images`) sets where denoising starts: 1.0 is pure
noise (the ControlNet must draw the whole future from its condition), smaller values start from the past image's
VAE latent noised part of the way, so only the last ``strength`` share of the schedule runs. Low strengths keep
more of the past image (towards persistence through the VAE); high ones leave more to the model. A
``diffusion_target: residual`` run starts from a change of 0 instead of the past's latent: the same scale (low
strengths stay near the past through the VAE), so the sweep is the same.

:func:`sweep_strength` generates a seeded subset of validation pairs at every strength of a grid, with the
ControlNet and, on the same pairs, seeds and starting latents, with the backbone alone (prompt only), scores both
with the chapter-6 metrics against the truth (persistence on the same tiles for reference), picks the strength by
one criterion fixed in advance (default: the ControlNet's mean PSNR; on labelled data ``f1_new``, the building
segmenter's F1 on the pixels of buildings that are new at the future date, asks that the guidance be drawn) and records it in the run folder
(``generation.yaml``), which :func:`~stsynth_lib.controlnet.generate.generate_split` and the predictor then use.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from stsynth_lib.controlnet.generate import GENERATION_FILE, generate_split
from stsynth_lib.figure_check import BOOK_WIDTH_IN, checked
from stsynth_lib.runs import save_yaml

STRENGTH_GRID = (0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)
CRITERIA = {"psnr": "max", "ssim": "max", "lpips": "min", "f1_new": "max"}  # metric -> the better direction
SCORES = ("psnr", "ssim", "lpips", "f1_new")  # f1_new: the segmenter's new-building F1 (pooled pixels), labelled data
_SUMMARY_NAME = {"f1_new": "f1_new_micro"}  # the evaluation's name of a score
CONTROLNET, PROMPT_ONLY = "controlnet", "prompt_only"
SAMPLING_KEYS = ("scheduler", "num_inference_steps", "guidance_scale", "controlnet_conditioning_scale", "residual_decode")


@dataclass
class StrengthSweep:
    """One validation sweep: ``table`` has a row per (strength, model in {controlnet, prompt_only}) with the mean
    ``psnr``, ``ssim``, ``lpips`` and the new-building F1 ``f1_new`` (NaN when not computed) and ``n`` tiles;
    ``persistence`` the same means for the past image on the same tiles; ``chosen`` the strength the criterion
    picked."""

    table: pd.DataFrame
    persistence: dict[str, float]
    chosen: float
    criterion: str
    split: str
    n_pairs: int
    lpips_calibrated: bool
    sampling: dict[str, Any]  # the sampling settings the strengths were drawn with (scheduler, steps, guidance...)
    psnr_floor_db: float | None = None  # only strengths with PSNR >= persistence's + this competed (None: all)

    @property
    def at_grid_edge(self) -> bool:
        """The lowest strength of the grid won: the images are then closest to the past image through the VAE (with
        psnr/ssim/lpips the criterion favours copying the past), and a lower strength might score higher still."""
        return self.chosen == float(self.table["strength"].min())

    def record(self) -> dict[str, Any]:
        """What ``generation.yaml`` holds (plain types)."""
        rows = {}
        for s, g in self.table.groupby("strength"):
            rows[float(s)] = {m: {k: _plain(r[k]) for k in SCORES} for m, r in
                              g.set_index("model").iterrows()}
        return {"img2img_strength": float(self.chosen), **self.sampling, "chosen_on": self.split,
                "criterion": self.criterion, "n_pairs": int(self.n_pairs),
                **({"psnr_floor_db": float(self.psnr_floor_db)} if self.psnr_floor_db is not None else {}),
                "lpips_calibrated": bool(self.lpips_calibrated),
                "persistence": {k: _plain(v) for k, v in self.persistence.items()}, "scores": rows}


def _plain(v: Any) -> float | None:
    v = float(v)
    return None if v != v else round(v, 5)


def choose_strength(table: pd.DataFrame, criterion: str = "psnr", psnr_floor_db: float | None = None,
                    persistence_psnr: float | None = None) -> float:
    """The strength whose ControlNet row is best on ``criterion`` (psnr/ssim/f1_new: highest, lpips: lowest); ties
    go to the higher strength (more of the image left to the model). With ``psnr_floor_db`` only the strengths whose
    mean PSNR is at least ``persistence_psnr + psnr_floor_db`` compete (0: draw the new buildings, but never at the
    cost of the whole image's PSNR against persistence); when none reaches the floor, the highest PSNR wins."""
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {sorted(CRITERIA)}, got {criterion!r}")
    rows = table[table["model"] == CONTROLNET].dropna(subset=[criterion]).sort_values("strength", ascending=False)
    if rows.empty:
        raise ValueError(f"no ControlNet row has a {criterion} score: nothing to choose from")
    if psnr_floor_db is not None:
        if persistence_psnr is None or persistence_psnr != persistence_psnr:
            raise ValueError("psnr_floor_db needs persistence's PSNR on the same pairs (persistence_psnr)")
        above = rows[rows["psnr"] >= persistence_psnr + float(psnr_floor_db)]
        if above.empty:  # nothing clears the floor: the strength that comes closest
            return float(rows.loc[rows["psnr"].idxmax(), "strength"])
        rows = above
    best = rows[criterion].idxmax() if CRITERIA[criterion] == "max" else rows[criterion].idxmin()
    return float(rows.loc[best, "strength"])


def _check_criterion(criterion: str, compute_lpips: bool, segmenter: Any, dataset_dir, split: str) -> None:
    """Refuse, before anything is generated, a criterion the sweep could not score."""
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {sorted(CRITERIA)}, got {criterion!r}")
    if criterion == "lpips" and not compute_lpips:
        raise ValueError("criterion 'lpips' needs compute_lpips=True")
    if criterion == "f1_new" and segmenter is None:
        raise ValueError("criterion 'f1_new' needs the building segmenter (segmenter=..., see "
                         "stsynth_lib.metrics.segmentation.load_or_train_segmenter) and a dataset with labels")
    if criterion == "f1_new":
        from stsynth_lib.data.dataset import PairedTileDataset

        if not PairedTileDataset(dataset_dir, split).pairs["has_mask"].to_numpy(bool).any():
            raise ValueError(f"criterion 'f1_new': no {split} pair of {dataset_dir} has building labels, so there is no "
                             "new building to score; use criterion psnr, ssim or lpips on this dataset")


def _score_table(summary: pd.DataFrame, folders: dict[str, Path]) -> tuple[pd.DataFrame, dict[str, float]]:
    """One row per (strength, model) with the mean of each score (NaN when not computed), and persistence's means."""
    means = summary.pivot_table(index="model", columns="metric", values="mean")
    means = means.rename(columns={v: k for k, v in _SUMMARY_NAME.items()})
    for m in SCORES:
        if m not in means.columns:
            means[m] = float("nan")
    n = summary[summary["metric"] == "psnr"].set_index("model")["n"]
    rows = []
    for name in folders:
        kind, s = name.split("@")
        rows.append({"strength": float(s), "model": kind, **{m: float(means.loc[name, m]) for m in SCORES},
                     "n": int(n.get(name, 0))})
    table = pd.DataFrame(rows).sort_values(["model", "strength"]).reset_index(drop=True)
    return table, {m: float(means.loc["persistence", m]) for m in SCORES}


def sweep_strength(
    run_dir: str | os.PathLike,
    dataset_dir: str | os.PathLike,
    strengths: Sequence[float] = STRENGTH_GRID,
    split: str = "val",
    max_pairs: int | None = 256,
    criterion: str = "psnr",
    seed: int = 0,
    out_dir: str | os.PathLike | None = None,
    with_prompt_only: bool = True,
    compute_lpips: bool = True,
    allow_uncalibrated: bool = False,
    eval_device: str = "cpu",
    record: bool = True,
    keep_images: bool = False,
    progress: bool = True,
    segmenter: Any = None,
    psnr_floor_db: float | None = None,
    **gen_kw: Any,
) -> StrengthSweep:
    """Generate ``max_pairs`` pairs of the validation split (a seeded shuffle of all its pairs) at each strength,
    score them and choose the strength by ``criterion`` on the ControlNet's rows. ``gen_kw`` go to
    ``generate_split`` (scheduler, num_inference_steps, guidance_scale, controlnet_conditioning_scale, batch_size,
    device, ...; ``seed`` is shared). With ``record`` the choice and those sampling settings are written to
    ``<run_dir>/generation.yaml`` (the predictor's defaults). Images go to ``out_dir`` (default
    ``<run_dir>/strength_sweep_<split>``), deleted afterwards unless ``keep_images``. Only ``split="val"`` is
    accepted: settings are chosen on validation, never on test (nor on ``"all"``, which holds the test pairs).
    ``segmenter`` (chapter 6's, :func:`~stsynth_lib.metrics.segmentation.load_or_train_segmenter`) adds the
    new-building F1 on labelled pairs; criterion ``f1_new`` needs it. ``psnr_floor_db``: only strengths whose
    validation PSNR is at least persistence's plus this many dB compete (:func:`choose_strength`)."""
    from stsynth_lib import evaluate as E

    if split != "val":
        raise ValueError(f"the img2img strength is a setting: choose it on the validation split (got {split!r}), "
                         "never on test")
    _check_criterion(criterion, compute_lpips, segmenter, dataset_dir, split)
    grid = sorted({float(s) for s in strengths})
    if not grid or not all(0.0 < s <= 1.0 for s in grid):
        raise ValueError(f"strengths must be a non-empty list of values in (0, 1], got {list(strengths)}")
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir else run_dir / f"strength_sweep_{split}"
    folders: dict[str, Path] = {}
    for s in grid:
        kinds = (CONTROLNET, PROMPT_ONLY) if with_prompt_only else (CONTROLNET,)
        for kind in kinds:
            folders[f"{kind}@{s:g}"] = generate_split(
                run_dir, dataset_dir, split, out_dir=out / f"strength-{s:g}" / kind, max_pairs=max_pairs,
                subsample_seed=seed if max_pairs is not None else None, seed=seed, strength=s,
                prompt_only=kind == PROMPT_ONLY, progress=progress, **gen_kw)
    res = E.evaluate_models(dataset_dir, split, folders, compute_lpips=compute_lpips, max_pairs=max_pairs, segmenter=segmenter,
                            allow_uncalibrated=allow_uncalibrated, device=eval_device, seed=seed, progress=progress)
    short = [n for n in res.notes if "predictions for" in n]
    if short:  # the scored subset must be the generated one (same seeded shuffle)
        raise RuntimeError(f"the sweep's images and the scored pairs differ: {short[0]}")
    if criterion == "f1_new":  # pooled F1 is 1 when there is nothing to find: no new building, no choice
        pers = res.per_tile[res.per_tile["model"] == "persistence"]
        if "tp_new" not in pers or float(pers["tp_new"].sum() + pers["fn_new"].sum()) == 0:
            raise ValueError(f"criterion 'f1_new': the {len(pers)} scored {split} pairs hold no new-building pixel, so "
                             "every strength would tie; score more pairs (max_pairs) or use criterion psnr")
    table, persistence = _score_table(res.summary, folders)
    sampling = {k: gen_kw[k] for k in SAMPLING_KEYS if k in gen_kw}
    chosen = choose_strength(table, criterion, psnr_floor_db, persistence.get("psnr"))
    sweep = StrengthSweep(table, persistence, chosen, criterion, split, int(table["n"].max()),
                          bool(res.calibrated.get("lpips", False)), sampling, psnr_floor_db)
    if record:
        save_yaml(sweep.record(), run_dir / GENERATION_FILE)
    if not keep_images:
        shutil.rmtree(out, ignore_errors=True)
    return sweep


def clear_chosen_strength(run_dir: str | os.PathLike) -> float:
    """Forget a strength recorded for ``run_dir`` (generation then starts from pure noise); returns 1.0."""
    (Path(run_dir) / GENERATION_FILE).unlink(missing_ok=True)
    return 1.0


SWEEP_TABLE_UNITS = {"psnr": "PSNR (dB)", "ssim": "SSIM", "lpips": "LPIPS", "f1_new": "new-building F1"}


def sweep_table(sweep: StrengthSweep, decimals: int = 4) -> pd.DataFrame:
    """The sweep as the chapter shows it, long rather than wide (so it fits the book's column): one row per
    (strength, model), the ControlNet's row of the chosen strength marked "(chosen)", then persistence on the same
    tiles; one column per score computed (PSNR to 2 decimals, the others to ``decimals``), as text, "n/a" where a
    model has no score. The index is blank (the strength column names the rows)."""
    names = {CONTROLNET: "ControlNet", PROMPT_ONLY: "backbone alone"}
    metrics = [m for m in SWEEP_TABLE_UNITS if sweep.table[m].notna().any()]

    def cells(scores) -> dict[str, str]:
        values = {m: scores.get(m) for m in metrics}
        return {SWEEP_TABLE_UNITS[m]: "n/a" if v is None or v != v else f"{float(v):.{2 if m == 'psnr' else decimals}f}"
                for m, v in values.items()}

    rows = []
    for _, r in sweep.table.sort_values(["strength", "model"]).iterrows():
        chosen = r["model"] == CONTROLNET and float(r["strength"]) == sweep.chosen
        rows.append({"strength": f"{float(r['strength']):g}" + (" (chosen)" if chosen else ""),
                     "model": names.get(r["model"], r["model"]), **cells(r)})
    rows.append({"strength": "persistence (same tiles)", "model": "", **cells(sweep.persistence)})
    return pd.DataFrame(rows, index=[""] * len(rows))


def plot_strength_sweep(sweep: StrengthSweep, title: str | None = None):
    """PSNR, SSIM, LPIPS (and the new-building F1 when scored) against the strength: the ControlNet, the backbone alone (prompt only) from the same
    starting latents, persistence on the same tiles (dashed) and the chosen strength (dotted)."""
    import matplotlib.pyplot as plt

    metrics = [m for m in SCORES if sweep.table[m].notna().any()]
    cols = min(len(metrics), 2)
    rows = -(-len(metrics) // cols)
    fig, grid = plt.subplots(rows, cols, figsize=(BOOK_WIDTH_IN, 3.0 * rows + 1.4), squeeze=False)
    axes = grid.ravel()
    for ax in axes[len(metrics):]:
        ax.remove()
    for ax, m in zip(axes, metrics):
        for kind, style, label in ((CONTROLNET, "o-", "ControlNet"), (PROMPT_ONLY, "s--", "backbone alone (prompt)")):
            g = sweep.table[sweep.table["model"] == kind]
            if len(g):
                ax.plot(g["strength"], g[m], style, label=label)
        if sweep.persistence.get(m) == sweep.persistence.get(m):
            ax.axhline(sweep.persistence[m], color="grey", ls="--", lw=1, label="persistence")
        ax.axvline(sweep.chosen, color="k", ls=":", lw=1, label=f"chosen ({sweep.chosen:g})")
        ax.margins(x=0.08)  # a chosen strength at the end of the grid stays off the axis spine
        unit = " (dB)" if m == "psnr" else (" (uncalibrated)" if m == "lpips" and not sweep.lpips_calibrated else "")
        ax.set_xlabel("img2img strength (1: pure noise)")
        label = "new-building F1" if m == "f1_new" else m.upper()
        ax.set_ylabel(label + unit + ("\n(lower is better)" if m == "lpips" else ""))
        ax.grid(alpha=0.3)
    handles, names = axes[0].get_legend_handles_labels()
    fig.suptitle(title or f"img2img strength on {sweep.split} ({sweep.n_pairs} pairs):\nchosen by {sweep.criterion}",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.7 / fig.get_figheight(), 1, 1))
    fig.legend(handles, names, fontsize=9, loc="lower center", ncol=2, frameon=False)
    return checked(fig)
