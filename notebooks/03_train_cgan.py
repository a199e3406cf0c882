# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: stsynth
#     language: python
#     name: stsynth
# ---

# %% [markdown]
# # 3. Training the pix2pix cGAN
#
# ## Overview
# The first model is pix2pix (Isola et al. 2017): a U-Net generator maps the **condition** -- the past image, the
# future building mask and the time gap -- to the future image, and a 70x70 **PatchGAN** discriminator judges,
# patch by patch, whether an image is a plausible future *for that condition*. The generator minimises
#
# **L_G = GAN(D(c, G(c)), real) + λ_L1 · ‖y − G(c)‖₁**,
#
# where λ_L1 is the **L1 weight**, 100 in pix2pix: the L1 term gets the colours and layout right, the adversarial term keeps the
# result sharp. Both terms count **valid pixels only**: clouds, UDM and nodata of either date are zeroed in every
# discriminator input and left out of the L1, so the model is never asked to paint a cloud.
#
# The guidance channels are explicit (`stsynth_lib.conditioning`): past RGB, the future mask (dropped automatically
# when the dataset has no labels, as in the real 128 px profile), the gap in months / 24 and the future month of
# year as sin/cos planes. The U-Net's depth follows the tile size (64 px: 6 levels, 256 px: 8 as in pix2pix's
# `unet_256`).
#
# `residual = True` (off in pix2pix, on in the `sn7_real_128` profile) makes the generator output the past image
# plus a tanh-bounded change from a zero-initialised last layer, clipped to [-1, 1]: the untrained model *is*
# persistence and training only learns the change. Persistence is a hard baseline on real mosaics: month-to-month
# change is mostly unpredictable radiometry (haze, sun angle, mosaicking), and an adversarial term that invents
# texture costs L1. The `sn7_real_128` parameters were therefore all chosen on the **validation** split (their
# YAML file lists the candidates and their scores): an L1 weight of 10,000 (100 and 1,000 validated worse), which leaves the
# adversarial term under 1% of the generator loss -- in effect an L1 regression with a PatchGAN attached -- batch
# norm with a radiometric jitter of the training pairs, every training pair, the best generator by validation L1,
# and a **calibration** of how much of its predicted change the generator applies (section below). Persistence is
# hard to beat on unseen areas whose light and land cover the 34 training areas do not cover; the test section at
# the end compares the two area by area and says how sure the comparison is.
#
# The trainer (`stsynth_lib.cgan.train`) is shared with chapter 4. Everything a run writes lives in
# `runs/<profile>/pix2pix/`: `params.yaml`, `log.csv`, `val.csv`, resumable `checkpoints/`, the best generator
# in `best/`, sample grids in `samples/`, and at the end the test predictions in `predictions/test/`.
#
# ## Prerequisites
# | | |
# |---|---|
# | Inputs | the tile store of chapter 2 (`dataset_dir`) |
# | Outputs | the run folder `runs/<profile>/pix2pix/` with test-split predictions in `predictions/test/` (read by chapter 6) |
# | Time | measured in this run — see the run stamp at the top of the page |
# | GPU | optional; used with bf16 autocast when present. Several GPUs: `accelerate launch -m stsynth_lib.cgan.train --params params/<profile>/common.yaml --params params/<profile>/03_train_cgan.yaml` |

# %% tags=["parameters"]
profile = "smoke"
dataset_dir = "data/smoke/dataset"
runs_dir = "runs"
seed = 0
device = "auto"              # auto | cpu | cuda
model = "pix2pix"            # pix2pix | attention_unet
# guidance
use_mask = "auto"            # auto: use the future mask only if the dataset has labels
use_past_mask = False        # also the past mask (which future buildings are new); labelled data only
time_encoding = "planes"     # planes (gap and month as constant channels) | none
gap_scale_months = 24.0      # the gap plane is gap_months / gap_scale_months
use_month = True             # add sin/cos of the future month of year
context_offsets_months = None  # e.g. [0, -1, -2, "same_month_last_year"]: earlier frames as extra channels
# architecture
ngf = 32                     # generator filters at the first level (pix2pix: 64)
ndf = 32                     # discriminator filters (pix2pix: 64)
norm = "instance"            # instance | batch | none
dropout = 0.5
d_layers = 3                 # 3: the 70x70 PatchGAN
residual = False             # not pix2pix: output past image + a tanh change, so training starts at persistence
# loss and optimisation
gan_mode = "vanilla"         # vanilla (BCE) | lsgan
lambda_l1 = 100.0
new_building_l1_weight = 0.0  # >0: L1 weight 1 + this on new-building pixels (labelled data)
lr = 0.0002
batch_size = 16
epochs_constant = 2          # epochs at the full learning rate
epochs_decay = 2             # then linear decay to 0 over these epochs
max_steps = None             # stop earlier (a checkpoint is written)
max_train_pairs = 320        # None: every training pair
max_val_pairs = 64
augment = True               # random flips / 90-degree rotations
radiometric_jitter = 0.0     # >0: the same random per-band gain/offset on past and future (training only)
num_workers = 0
# bookkeeping
log_every_steps = 5
sample_every_steps = 20
checkpoint_every_steps = 0   # 0: at the end of each epoch
checkpoints_total_limit = 2
best_metric = "val_l1"       # val_l1 | val_psnr | val_ssim
calibrate_residual_scale = False  # residual models: after training, fit how much change to apply on the full val split
val_every_steps = 0          # >0: also validate (and update best/) every this many steps, not only each epoch
resume_from_checkpoint = None  # None: fresh run (the previous one is kept until it succeeds) | "latest" | "checkpoint-<step>"
max_test_pairs = None        # None: predict the whole test split

# %%
import os

from stsynth_lib.runs import find_project_root

os.chdir(find_project_root())

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import display

from stsynth_lib.cgan.plots import plot_losses, plot_residual_calibration, plot_validation, show_samples
from stsynth_lib.data.dataset import PairedTileDataset
from stsynth_lib.predict import inputs_from_sample, load_predictor
from stsynth_lib.predictions import load_predictions
from stsynth_lib.evaluate import paired_table
from stsynth_lib.report_format import fmt_value, round_floats, settings_table
from stsynth_lib.cgan.config import CGANTrainConfig
from stsynth_lib.cgan.train import split_dataset, train_cgan
from stsynth_lib.evaluate.generator import (
    area_comparison,
    comparison_table,
    evaluate_persistence,
    predict_split,
    summarize,
)

# every parameter above whose name is a CGANTrainConfig field (the rest belong to this notebook), as a table
SETTING_LABELS = {"lambda_l1": "L1 weight (lambda_l1)", "ngf": "generator filters (ngf)",
                  "ndf": "discriminator filters (ndf)", "lr": "learning rate (lr)"}
METRIC_NAMES = {"l1": "L1", "psnr": "PSNR (dB)", "ssim": "SSIM"}
config = CGANTrainConfig.from_params(globals())
settings_table(config, exclude=["dataset_dir", "runs_dir", "profile"], labels=SETTING_LABELS)

# %% [markdown]
# ## Train
# A progress bar shows the losses and the throughput (images/s). Re-running with
# `resume_from_checkpoint="latest"` continues an interrupted run exactly where its last checkpoint left it.

# %%
run_dir = train_cgan(config)
print(f"run folder: {run_dir}")
display(settings_table(run_dir / "model.yaml"))

# %% [markdown]
# ## Loss curves
# The discriminator should neither win (its losses near 0, the generator's adversarial loss climbing) nor give
# up (all three near log 2 = 0.69 for the BCE loss); the L1 term should fall steadily.

# %%
fig = plot_losses(run_dir)
plt.show()

# %% [markdown]
# ## Validation
# Each epoch, and every `val_every_steps` steps when set, the generator (eval mode: no dropout) is scored on the
# validation pairs over valid pixels: L1 (in the [-1, 1] units of the loss), PSNR and SSIM (on [0, 1] images). The
# best validation point by `best_metric` is kept in `best/`, and the test predictions below come from it.
# The dashed line is the **persistence baseline** (future = past image) on the same pairs: a model that cannot beat
# it has learnt nothing about change.

# %%
persistence_val = summarize(evaluate_persistence(split_dataset(config, "val")))
print("persistence on the same validation pairs: "
      + ", ".join(f"{METRIC_NAMES.get(k, k)} {fmt_value(v)}" for k, v in persistence_val.items()))
fig = plot_validation(run_dir, persistence_val)
plt.show()
round_floats(pd.read_csv(run_dir / "val.csv"), 4)

# %% [markdown]
# ## Calibration: how much change to apply
# With `calibrate_residual_scale` (residual generators only), the best generator's predicted change is scaled by
# `k = scale x min(1, gap / full_gap)` with `scale` and `full_gap` chosen on the **whole validation split** (never the
# test split), minimising the L1 averaged area by area. `k = 0` is persistence, `k = 1` the trained generator. A
# generator that learned its training areas' changes applies them too confidently to new areas, most of all one or
# two months ahead, when little really changes. The curve shows the validation L1 for each scale; the chosen point
# is stored with the generator (`best/`) and used for every prediction below.

# %%
fig = plot_residual_calibration(run_dir)
if fig is None:
    print("not calibrated (calibrate_residual_scale is off): predictions apply the full predicted change")
else:
    plt.show()
    display(settings_table(run_dir / "best" / "best.yaml"))

# %% [markdown]
# ## Samples
# Validation pairs at the last step: past | future mask | generated | truth (invalid truth pixels in magenta).

# %%
fig = show_samples(run_dir, "last")
plt.show()

# %% [markdown]
# ## Test predictions
# The best generator predicts every test pair (AOIs never seen in training); the GeoTIFFs carry the tiles'
# georeferencing and are what chapter 6 evaluates. The table compares the model with persistence on the same
# pairs and the same valid pixels.

# %%
test_ds = PairedTileDataset(dataset_dir, "test", max_pairs=max_test_pairs)
per_pair = predict_split(run_dir, test_ds, run_dir / "predictions" / "test", which="best",
                         metrics_csv=run_dir / "test_metrics.csv")
table = comparison_table(per_pair, model)
table.round(4)

# %% [markdown]
# Test tiles of one area share its light, season and land cover, so the pairs are not independent evidence. Below,
# area by area, and the difference to persistence with a 95 % interval from resampling whole areas: the model beats
# persistence on a metric when that interval excludes zero (with few test areas, as on `sn7_real_128`, the
# interval is wide). The per-area table keeps the [-1, 1] units of training; the interval table gives L1 in [0, 1]
# units (half as large), like chapter 6.

# %%
per_area, paired = area_comparison(per_pair, model)
display(per_area.round(4))
display(paired_table(paired))

# %%
better = (per_pair["l1"] < per_pair["persistence_l1"]).mean()
print(f"{len(per_pair)} test pairs; the model's L1 beats persistence on {better:.0%} of them.")
by_gap = per_pair.groupby("gap_months")[["l1", "persistence_l1"]].mean()
ax = by_gap.plot(marker="o", figsize=(6, 3), title="test L1 by time gap")
ax.set_xlabel("gap (months)")
plt.show()

# %% [markdown]
# ## Applying the model to your own images
# `stsynth_lib.predict.load_predictor` loads any trained run folder (this one, chapter 4's, chapter 5's) and predicts
# the future from plain arrays: the past image as uint8 `(bands, H, W)`, as `rasterio.open(tif).read()` gives it, the
# two dates, and the future footprints when the model was trained with them. No tile store, no dataset. One test pair
# goes through it here; the result is the saved test prediction, pixel for pixel.

# %%
predictor = load_predictor(run_dir)
sample = test_ds[0]
inputs = inputs_from_sample(sample, predictor)
display(settings_table({k: (f"{v.dtype} {tuple(v.shape)}" if hasattr(v, "shape") else v) for k, v in inputs.items()}))
future = predictor.predict(**inputs)
saved = load_predictions(run_dir / "predictions" / "test")[int(sample["pair_id"])]
print(f"{predictor.family}: identical to the saved test prediction: {bool((future == saved).all())}")

# %% [markdown]
# ## Summary
# * pix2pix trains on the condition (past image, future mask when labelled, time planes) with an adversarial loss
#   plus an L1 loss, both restricted to valid pixels; the L1 weight is 100 in pix2pix and 10,000 for `sn7_real_128`
#   (chosen on validation); the run folder holds the parameters, logs, checkpoints and samples.
# * A residual generator can be calibrated on the validation split: how much of its predicted change to apply,
#   less for short gaps. It is the generator's own output, scaled; the test split plays no part in it.
# * The table above is the honest check: the generator against "nothing changes" on unseen AOIs. On the smoke
#   profile the numbers only show that the pipeline works; the real 128 px profile is the meaningful one.
# * The test predictions are saved as GeoTIFFs for the evaluation chapter.
#
# ## What's next
# Chapter 4 trains the same generator with attention gates on its skip connections and shows where it looks;
# chapter 6 scores every model (LPIPS, FID/KID, building F1) from the saved predictions.
