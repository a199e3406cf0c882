# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 5. ControlNet on a latent diffusion backbone
#
# ## Overview
# The third model keeps a text-to-image latent-diffusion backbone frozen and trains a **ControlNet** (Zhang et al.
# 2023) beside it: a trainable copy of the UNet's encoder that reads a conditioning image and adds its features to the
# frozen UNet through *zero convolutions* (1x1 convolutions initialised at 0, so at step 0 the ControlNet changes
# nothing and training starts from the unchanged backbone). The backbone is **Stable Diffusion 1.5** where its weights
# can be had (the GPU profiles), else a tiny backbone trained from scratch in stage 1 of this chapter (the CPU
# profiles).
#
# What the ControlNet sees here:
#
# * **conditioning image** = the past image (RGB, [0, 1]) + the future building mask + a constant plane
#   `gap_months / 24` -- the past shapes the future, the mask says where buildings must appear (the mask is dropped
#   automatically on unlabelled data such as the real 128 px profile); with `context_offsets_months` set (the option
#   the cGANs of chapters 3-4 read), the earlier frames of the sequence come after the past image, each as its bands,
#   a validity plane and an age plane, with absent months treated as the cGANs treat them;
# * **text prompt** made from the sample's metadata (date, time gap, number of new buildings), with **prompt
#   dropout** (50 % empty prompts, as in the ControlNet paper) so that the ControlNet must learn from its
#   conditioning image and classifier-free guidance is possible at generation time.
#
# The training loop is diffusers' ControlNet example restated in the library (`stsynth_lib.controlnet.train`),
# driven by Accelerate, on the **same dataset, split and tiles** as the cGANs of chapters 3-4. It adds what users
# of that example keep asking for: the loss over valid latents only (clouds where a UDM marks them, and nodata,
# left out), computed in fp32, a NaN check that stops with a clear message, an fp32 VAE under mixed precision, exact resume, validation with small batches
# under `no_grad`, and two numbers that turn "the loss stays flat / the ControlNet ignores its condition" into
# measurements, on fixed validation noise and timesteps:
#
# * **`control_gain`** = 1 - loss / loss(UNet alone): what the ControlNet adds at all;
# * **`cond_gain`** = 1 - loss / loss(with another pair's conditioning): what *this* pair's past image and mask add.
#
# Both are exactly 0 at step 0 (zero convolutions). A ControlNet that learns a generic correction but ignores its
# condition shows a positive `control_gain` and a `cond_gain` near 0.
#
# **Two stages.** A ControlNet can only steer a backbone that already draws the kind of image it is asked for.
# DiffusionSat (Khanna et al. 2024) therefore first fine-tunes Stable Diffusion on satellite images with metadata
# prompts, and only then adds the conditioning; this chapter does the same:
#
# 1. **Stage 1, the backbone** (`stsynth_lib.controlnet.adapt`, loop of diffusers' `train_text_to_image` example:
#    min-SNR weighting, EMA, prompt dropout). With `pretrained_model` = a Stable Diffusion 1.x (hub id or folder)
#    and `adapt_pretrained = True`, it fine-tunes SD's UNet on the training split's images. Offline there is no SD
#    to adapt, so `pretrained_model = "tiny-from-scratch"` **trains a tiny backbone from scratch** on the training
#    split: first a small VAE (factor 4 by default, 2 in the real-data profiles), then the UNet with a
#    2-layer CLIP text encoder and the real CLIP tokenizer. The result is a normal diffusers folder. With
#    `diffusion_target = "residual"` the ControlNet learns the latent change from the past image, and stage 1
#    teaches the UNet the same thing (its `unet_target` follows `diffusion_target` unless `stage1` sets it): the
#    UNet trains on the training pairs' scaled latent change instead of single images, and the ControlNet takes
#    stage 1's residual scale. A ControlNet whose `diffusion_target` differs from its stage-1 backbone's
#    `unet_target` is refused. The VAE's reconstruction error bounds every image decoded whole; a residual run with
#    `residual_decode = "difference"` instead adds the decoded change to the past image itself, so where the model
#    draws no change the output is the past exactly (`experiments/residual_decode`).
# 2. **Stage 2, the ControlNet**, beside that backbone, frozen.
#
# Every table and figure names the backbone that produced it ("tiny, trained from scratch on ... train split", or
# the hub id); the tiny model is never presented as Stable Diffusion. `pretrained_model = "tiny-random"` skips stage
# 1 and keeps an untrained tiny backbone: it tests the plumbing only, and its images are noise by construction.
#
# ## Prerequisites
# | | |
# |---|---|
# | Inputs | the tile store of chapter 2 (`dataset_dir`); for Stable Diffusion 1.5 (GPU profiles), its weights (downloaded on first use, about 2.5 GB in fp16/safetensors, or a local folder) |
# | Outputs | stage 1: `runs/<profile>/backbone/` (`vae/` and `unet/` logs and checkpoints, `backbone/` the diffusers folder, `summary.yaml`); stage 2: `runs/<profile>/controlnet/`: `params.yaml`, `log.csv`, `samples/step-*.png`, `checkpoints/`, the trained `controlnet/` (diffusers format), `backbone/` (tiny only), `generation.yaml` (the img2img strength chosen on validation), and the test predictions `predictions/test/` (GeoTIFF + PNG, read by chapter 6) |
# | Time | measured in this run — see the run stamp at the top of the page |
# | GPU | not for the tiny backbone. SD 1.5 at 512 px: one GPU with >= 16 GB (bf16, gradient checkpointing; 8-bit Adam when bitsandbytes is installed). Several GPUs: `accelerate launch -m stsynth_lib.controlnet.train --params params/<profile>/common.yaml --params params/<profile>/05_controlnet.yaml` |
# | Offline | a missing backbone stops with the id and the fix: `hf download stable-diffusion-v1-5/stable-diffusion-v1-5 --local-dir /path/to/local/sd15` on a connected machine, then `pretrained_model: /path/to/local/sd15` |

# %% tags=["colab-setup", "hide-cell"]
# Google Colab setup (elsewhere this cell does nothing): install stsynth from the repository, whose clone also holds
# params/, keep data/ and runs/ on Google Drive in MyDrive/stsynth/, and report the GPU.
# Generated by `make notebooks-sync` from stsynth_lib/book/notebook_sync.py: edit the template there, not here.
import sys

IN_COLAB = "google.colab" in sys.modules
if IN_COLAB:
    import os
    import subprocess

    from google.colab import drive

    REPO_URL = "https://github.com/stsynth/stsynth"
    ROOT, DRIVE = "/content/stsynth", "/content/drive/MyDrive/stsynth"
    if not os.path.isdir(ROOT):
        subprocess.run(["git", "clone", "--depth", "1", REPO_URL, ROOT], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", ROOT + "[diffusion,metrics]"], check=True)
    drive.mount("/content/drive")
    for name in ("data", "runs"):  # the parameters' relative paths data/... and runs/... then land on Drive
        os.makedirs(f"{DRIVE}/{name}", exist_ok=True)
        if not os.path.lexists(f"{ROOT}/{name}"):
            os.symlink(f"{DRIVE}/{name}", f"{ROOT}/{name}")
    os.environ["STSYNTH_ROOT"] = ROOT
    os.chdir(ROOT)
    import torch

    print("GPU:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (Runtime > Change runtime type)")

# %% tags=["parameters"]
# Generated by `make notebooks-sync` from stsynth_lib/options (docs/OPTIONS.md); a profile's YAML sets them.
# ControlNet
pretrained_model = "tiny-random"  # the backbone: tiny-random | tiny-from-scratch (stage 1 trains it; chapter 5 only) |
                                  # a hub id (stable-diffusion-v1-5/stable-diffusion-v1-5) | a local folder
revision = None                   # hub revision of the backbone
variant = None                    # weights file variant on the hub, e.g. fp16
tiny_seed = 0                     # weights of the tiny-random backbone
resolution_px = None              # null: the tile size; 512 for SD 1.5 on smaller tiles (resized, outputs resized back)
use_gap_plane = True              # add gap_months / gap_scale_months as a constant channel
# the prompt built from each pair's metadata
prompt_template = "satellite image, {month_name} {year}, {gap_months} months later, {n_new_buildings} new buildings"
empty_prompt = False              # train and generate with "" (image conditioning only)
prompt_dropout = 0.5              # share of training prompts replaced by "" (ControlNet paper: 0.5)
diffusion_target = "image"        # image: the whole future latent | residual: the latent change from the past image's
                                  # latent, times residual_scale (generation adds it back to the past's latent, so a
                                  # residual of 0 is the past through the VAE, or the past itself with residual_decode:
                                  # difference); beside a stage-1 backbone it must be stage 1's unet_target
residual_scale_pairs = 64         # residual only: seeded training pairs whose latent change fits residual_scale = 1 /
                                  # RMS (recorded in the run folder's residual.yaml, kept on resume; beside a stage-1
                                  # backbone trained with unet_target: residual, the backbone's scale is taken instead)
nomask_twin_of = None             # set by chapter 5's nomask_twin on the twin it trains: the guided run this one is the
                                  # no-mask control of (use_mask false; erase_building_fraction kept, so both see the
                                  # same training pairs)
max_train_steps = 200             # optimiser steps
train_batch_size = 4              # pairs per step
gradient_accumulation_steps = 1   # batches per optimiser step
learning_rate = 1e-05             # diffusers' example: 1e-5 for SD 1.5; the tiny backbones take more
zero_conv_lr_mult = 1.0           # learning-rate multiplier of the zero convolutions (diffusers: 1)
cond_embedding_init = "default"   # default (diffusers) | kaiming: He init of the conditioning encoder
lr_scheduler = "constant"         # any diffusers.optimization scheduler name
lr_warmup_steps = 0               # learning-rate warm-up steps
adam_beta1 = 0.9                  # Adam beta1
adam_beta2 = 0.999                # Adam beta2
adam_weight_decay = 0.01          # Adam weight decay
adam_epsilon = 1e-08              # Adam epsilon
max_grad_norm = 1.0               # gradient clipping norm
use_8bit_adam = "auto"            # auto (when bitsandbytes is installed and a GPU is used) | true | false
gradient_checkpointing = False    # recompute activations in the backward pass (less memory)
sdpa = True                       # torch scaled_dot_product_attention processors
checkpointing_steps = 100         # a checkpoint every this many steps; 0: at the end only
validation_steps = 100            # validate every this many steps; 0: never
validate_at_start = True          # also validate before the first step
num_validation_images = 4         # pairs drawn in the validation grids
num_validation_loss_pairs = 16    # pairs of the validation losses / control_gain / cond_gain
validation_batch_size = 2         # pairs per validation batch
validation_scheduler = "unipc"    # sampler of the validation grids
validation_inference_steps = 20   # sampling steps of the validation grids
validation_guidance_scale = 1.0   # classifier-free guidance of the validation grids
cond_gain_pairs = 256             # validation pairs of the end-of-training cond_gain / control_gain estimate
# Diffusion stage 1
adapt_pretrained = False          # with a pretrained Stable Diffusion: stage 1 fine-tunes its UNet on the training
                                  # images first
stage1 = {}                       # stage-1 options (BackboneAdaptConfig fields: vae_steps, unet_steps, ...;
                                  # unet_target: image | residual, what the UNet denoises: tile images or the scaled
                                  # latent change of training pairs; it must match diffusion_target, which it follows
                                  # unless set)
# Sampling
scheduler = "unipc"               # the sampler
num_inference_steps = 20          # sampling steps
guidance_scale = 1.0              # > 1: classifier-free guidance against the empty prompt
controlnet_conditioning_scale = 1.0  # weight of the ControlNet's residuals
residual_decode = "latent"        # a residual run's image: latent (decode the past's latent plus the sampled change) or
                                  # difference (the past image plus the decoded change: no change is the past exactly)
generation_batch_size = 16        # pairs per generation batch
img2img_strengths = None          # null: pure noise (strength 1); a grid, e.g. [0.2, 0.4, 0.6, 0.8, 1.0]: choose the
                                  # img2img strength (start from the noised past image) on validation pairs
strength_sweep_pairs = 256        # validation pairs of that sweep (a seeded shuffle of the val split)
strength_criterion = "psnr"       # the validation score that picks the strength; f1_new (labelled data): the building
                                  # segmenter's F1 on new buildings
strength_psnr_floor_db = None     # only strengths whose validation PSNR is at least persistence's plus this many dB
                                  # compete (0: never trade the whole image's PSNR against persistence for the
                                  # criterion); null: every strength
compare_prompt_only = True        # also draw the test pairs from the prompt alone (backbone without ControlNet)
num_samples_per_pair = 4          # samples drawn for the spread figure (and, with test_sample_mean, for every test
                                  # pair)
test_sample_mean = False          # draw num_samples_per_pair samples of every test pair and write their per-pixel mean
                                  # (<run>/predictions/test_sample_mean; chapter 6 scores it as the model <run
                                  # name>_sample_mean)
n_spread_pairs = 4                # test pairs of the spread figure
# Run
profile = "smoke"                 # profile name: runs go to <runs_dir>/<profile>/
dataset_dir = "data/smoke/dataset"  # the tile store written by chapter 2
runs_dir = "runs"                 # folder of the run folders
run_name = None                   # folder under <runs_dir>/<profile>/; null: the model's name
seed = 0                          # seed of every random draw
device = "auto"                   # auto (CUDA when available) | cpu | cuda | cuda:<n> | mps
progress = True                   # progress bars
# Guidance
use_mask = "auto"                 # the future building mask as input: auto (when the dataset has labels) | true | false
gap_scale_months = 24.0           # the gap plane is gap_months / gap_scale_months
context_offsets_months = None     # earlier frames as extra channels, e.g. [0, -1, -2, same_month_last_year] (months <=
                                  # 0 from the past image); null: the past image only
# Training (both trainers): any of num_workers, max_train_pairs, max_val_pairs, augment, erase_building_fraction,
# mixed_precision, log_every_steps, checkpoints_total_limit, resume_from_checkpoint, allow_resume_changes (defaults and
# help: docs/OPTIONS.md), e.g. {"resume_from_checkpoint": "latest"}
training = {}
# Scoring
allow_uncalibrated_metrics = False  # without the LPIPS / Inception weights, use a seeded random backbone (its numbers
                                    # labelled uncalibrated)
# Evaluation
max_test_pairs = None             # a seeded subset of the test pairs predicted; null: the whole split
nomask_twin = None                # the run name of this run's no-mask control, trained after it with the same options
                                  # but use_mask and use_past_mask false (what the footprints add: chapter 6, twins);
                                  # null: none
segmenter_steps = 300             # building-segmenter training steps
segmenter_batch_size = 16         # segmenter pairs per step (both dates used: 2x images)
segmenter_base_channels = 16      # segmenter width
segmenter_depth = 3               # segmenter levels
segmenter_lr = 0.001              # segmenter learning rate
segmenter_upsample = 1            # segmenter input upsampling (buildings a few pixels wide get more pixels)
segmenter_crop_px = None          # segmenter training crops (px); null: whole tiles
segmenter_sample_by = "pairs"     # segmenter training images: both dates of each pair, or every labelled tile once per
                                  # epoch
segmenter_decision_threshold = 0.5  # building probability above which the judge calls a pixel building (chosen on
                                    # validation: experiments/segmenter)

# %% tags=["options"]
# Generated by `make notebooks-sync`: the parameters above that are ControlNetTrainConfig fields, by name.
from stsynth_lib.controlnet.config import ControlNetTrainConfig
from stsynth_lib.options.notebooks import unpack

controlnet_config = ControlNetTrainConfig(
    profile=profile, dataset_dir=dataset_dir, runs_dir=runs_dir, run_name=run_name, seed=seed, device=device,
    progress=progress, **unpack("training", training), use_mask=use_mask, gap_scale_months=gap_scale_months,
    context_offsets_months=context_offsets_months, pretrained_model=pretrained_model, revision=revision,
    variant=variant, tiny_seed=tiny_seed, resolution_px=resolution_px, use_gap_plane=use_gap_plane,
    prompt_template=prompt_template, empty_prompt=empty_prompt, prompt_dropout=prompt_dropout,
    diffusion_target=diffusion_target, residual_scale_pairs=residual_scale_pairs, nomask_twin_of=nomask_twin_of,
    max_train_steps=max_train_steps, train_batch_size=train_batch_size,
    gradient_accumulation_steps=gradient_accumulation_steps, learning_rate=learning_rate,
    zero_conv_lr_mult=zero_conv_lr_mult, cond_embedding_init=cond_embedding_init, lr_scheduler=lr_scheduler,
    lr_warmup_steps=lr_warmup_steps, adam_beta1=adam_beta1, adam_beta2=adam_beta2, adam_weight_decay=adam_weight_decay,
    adam_epsilon=adam_epsilon, max_grad_norm=max_grad_norm, use_8bit_adam=use_8bit_adam,
    gradient_checkpointing=gradient_checkpointing, sdpa=sdpa, checkpointing_steps=checkpointing_steps,
    validation_steps=validation_steps, validate_at_start=validate_at_start, num_validation_images=num_validation_images,
    num_validation_loss_pairs=num_validation_loss_pairs, validation_batch_size=validation_batch_size,
    validation_scheduler=validation_scheduler, validation_inference_steps=validation_inference_steps,
    validation_guidance_scale=validation_guidance_scale
)

# %%
import dataclasses
import os

from stsynth_lib.runs import find_project_root

os.chdir(find_project_root())

import matplotlib.pyplot as plt
import pandas as pd
import yaml

from stsynth_lib.controlnet.conditioning import build_prompt, conditioning_channels, make_conditioning
from stsynth_lib.controlnet.generate import generate_split
from stsynth_lib.controlnet.validation import condition_gain_estimate
from stsynth_lib.controlnet.strength import clear_chosen_strength, plot_strength_sweep, sweep_strength, sweep_table
from stsynth_lib.controlnet.plots import plot_conditioning, plot_training, show_predictions, show_sample_spread
from stsynth_lib.controlnet.plots import show_validation, training_log_table
from stsynth_lib.controlnet.twin import train_nomask_twin, twin_comparison
from stsynth_lib.runs import no_twin_note
from stsynth_lib.predict.split import write_sample_mean
from stsynth_lib import evaluate as E
from stsynth_lib.book.report_format import controlnet_label, short_backbone, short_model_name
from stsynth_lib.controlnet.adapt import TINY_FROM_SCRATCH, BackboneAdaptConfig, adapt_backbone
from stsynth_lib.controlnet.adapt_parts import plot_reconstructions, vae_reconstruction_scores
from stsynth_lib.controlnet.ceiling import ceiling_vs_persistence
from stsynth_lib.controlnet.adapt_plots import plot_prompt_samples, plot_stage1_training
from stsynth_lib.controlnet.adapt_plots import ceiling_table, stage1_summary_table, vae_scores_table
from stsynth_lib.controlnet.backbone import load_backbone
from stsynth_lib.controlnet.residual import target_mismatch
from stsynth_lib.controlnet.train import train_controlnet
from stsynth_lib.data.dataset import PairedTileDataset
from stsynth_lib.book.report_format import plural, round_floats, settings_table
from stsynth_lib.metrics.segmentation import load_or_train_segmenter
from IPython.display import Markdown, display

run_stage1 = pretrained_model == TINY_FROM_SCRATCH or bool(adapt_pretrained)
# the UNet learns what the ControlNet will learn (images or latent changes) unless stage1 says otherwise
stage1_config = BackboneAdaptConfig(dataset_dir=dataset_dir, runs_dir=runs_dir, profile=profile, seed=seed,
                                    device=device, pretrained_model=pretrained_model,
                                    **{"unet_target": diffusion_target, **stage1}) if run_stage1 else None
if stage1_config is not None:
    if stage1_config.unet_target != diffusion_target:  # refused now, not after stage 1 has trained
        raise ValueError(target_mismatch(diffusion_target, stage1_config.unet_target, "stage 1 of this chapter"))

# %% tags=["hide-output"]
# stage 1's settings (folded in the book: "Show code cell output" opens them)
if stage1_config is not None:
    display(settings_table(stage1_config, exclude=["dataset_dir", "runs_dir", "profile"]))

# %% [markdown]
# ## Stage 1: the backbone
# Skipped when `pretrained_model` is `tiny-random`, or a pretrained SD without `adapt_pretrained`. The run folder
# keeps each phase's log and checkpoints: re-running with `stage1 = {"resume_from_checkpoint": "latest"}` resumes
# where it stopped (a finished VAE is kept).

# %%
if run_stage1:
    stage1_dir = adapt_backbone(stage1_config)
    backbone_for_controlnet = str(stage1_dir / "backbone")
    display(stage1_summary_table(stage1_dir))
    fig = plot_stage1_training(stage1_dir)
    plt.show()
else:
    stage1_dir, backbone_for_controlnet = None, pretrained_model
    print(f"no stage 1: the ControlNet trains beside {pretrained_model}")

# %% [markdown]
# ### The VAE: reconstructions and their ceiling
# An image decoded whole goes through the VAE's decoder, so the VAE's reconstruction PSNR / SSIM of the real images
# is a ceiling for it (with `residual_decode = "difference"` only the drawn change passes through the decoder, added
# to the past image: the ceiling then bounds what the change can add, not the image). The first table scores the
# reconstruction of every validation tile (stage 1's summary above counts only the `max_val_tiles` tiles it validated
# on during training) and of every test tile (reported, never used to choose anything). The second puts the
# ceiling on the test pairs next to persistence on the same pairs and pixels
# (`stsynth_lib.controlnet.ceiling.ceiling_vs_persistence`): where the ceiling is not above persistence, the diffusion
# model cannot beat persistence whatever it learns. With a pretrained Stable Diffusion, the table shows SD's own VAE.

# %%
bb = load_backbone(backbone_for_controlnet)
if run_stage1:
    display(vae_scores_table([vae_reconstruction_scores(bb.vae, dataset_dir, s) for s in ("val", "test")]))
    fig = plot_reconstructions(bb.vae, dataset_dir, "val", n=3,
                               title=f"VAE reconstructions, validation tiles ({short_backbone(bb.description)})")
    plt.show()
display(ceiling_table(ceiling_vs_persistence(bb.vae, dataset_dir, "test", max_pairs=max_test_pairs,
                                             label=f"VAE ceiling ({short_backbone(bb.description)})")))

# %% [markdown]
# ### What the backbone draws from a prompt alone
# One column per month in the prompt, one row per seed (the same starting noise along a row): what stage 1 learned
# of these areas and their seasons, before any conditioning image. A backbone trained with `unet_target: residual`
# draws latent changes, not images: it has no such figure.

# %%
if run_stage1 and stage1_config.residual:
    print("stage 1 trained the UNet on latent changes (unet_target: residual): a prompt alone draws a change from no "
          "image, not a picture, so no prompt-only samples are drawn")
elif run_stage1:
    tiles = PairedTileDataset(dataset_dir, "train").store
    year = int(tiles.tiles["year"].median())
    months = ["January", "April", "July", "October"]
    fig = plot_prompt_samples(bb, [f"satellite image, {m} {year}" for m in months], seeds=(0, 1, 2),
                              size_px=int(resolution_px or tiles.tile_size_px),
                              num_inference_steps=num_inference_steps, scheduler=scheduler,
                              title=f"Stage-1 samples from the prompt alone ({short_backbone(bb.description)})")
    plt.show()

# %% [markdown]
# ## Stage 2: the ControlNet
# The ControlNet's options (built in the cell after the parameters), with the backbone of stage 1 (folded).

# %% tags=["hide-output"]
# folded in the book: "Show code cell output" opens the table
config = dataclasses.replace(controlnet_config, pretrained_model=backbone_for_controlnet)
settings_table(config, exclude=["dataset_dir", "runs_dir", "profile"])

# %% [markdown]
# ### What the ControlNet sees
# One training pair: the conditioning channels and the prompt built from its metadata. For an unlabelled AOI the
# prompt's building count is unknown and that part of the template is left out. With `context_offsets_months`, one
# panel per earlier frame the series holds (its unusable pixels tinted red). What holds one value everywhere is listed
# under the panels rather than drawn: the months the series lacks, and the gap plane.

# %%
train_ds = PairedTileDataset(dataset_dir, "train", context_offsets_months=context_offsets_months)
has_labels = bool(train_ds.store.meta.get("has_labels", True))
mask_on = has_labels if use_mask == "auto" else bool(use_mask)
sample = train_ds[0]
cond = make_conditioning(sample["past"], sample["future_mask"], sample["gap_months"], use_gap_plane, gap_scale_months,
                         use_mask=mask_on, context_offsets_months=context_offsets_months, context=sample)
prompt = build_prompt(sample, prompt_template, empty_prompt)
n_cond = conditioning_channels(train_ds.n_bands, use_gap_plane, mask_on, context_offsets_months)
print(f"{plural(len(train_ds), 'training pair')}, {train_ds.tile_size_px} px tiles, "
      f"{plural(n_cond, 'conditioning channel')}")
fig = plot_conditioning(cond, prompt, use_mask=mask_on, use_gap_plane=use_gap_plane, n_bands=train_ds.n_bands,
                        context_offsets_months=context_offsets_months)
plt.show()

# %% [markdown]
# ### Train
# The progress bar shows the loss and the throughput (images/s). Validation images (past | future mask, where the
# run has labels | generated | truth) are written to `samples/` every `validation_steps`; checkpoints every
# `checkpointing_steps`, keeping the newest `checkpoints_total_limit`. Re-running with `training = {"resume_from_checkpoint": "latest"}` continues an interrupted run
# exactly (same weights as an uninterrupted run: the tests check it).

# %%
run_dir = train_controlnet(config)
params = yaml.safe_load((run_dir / "params.yaml").read_text())
print(f"run folder: {run_dir}\nbackbone: {params['backbone_description']}, "
      f"conditioning channels: {params['conditioning_channels']}, optimizer: {params['optimizer']}, "
      f"precision: {params['mixed_precision_resolved']}")
display(settings_table(run_dir / "summary.yaml"))

# %% [markdown]
# ### Loss curve, control gain and condition gain
# Diffusion losses are noisy (each step draws new timesteps and noise), so the validation losses use the same
# noise and timesteps every time. Top: training loss, and validation loss with the ControlNet and with the UNet
# alone. Bottom: `control_gain` and `cond_gain`, the evidence that the condition is used.
#
# A ControlNet that learns a generic correction but ignores its condition shows `control_gain` above 0 and
# `cond_gain` near 0 (the "ControlNet ignores its condition for thousands of steps" complaint about diffusers'
# example; the ControlNet paper calls its end "sudden convergence"). With the untrained `tiny-random` backbone this
# is what happens; `cond_embedding_init: kaiming` keeps the conditioning encoder's output dependent on its input
# (`tests/test_controlnet.py` measures it). The table under the figure holds this run's values.

# %%
fig = plot_training(run_dir)
plt.show()
training_log_table(run_dir)

# %% [markdown]
# The training log measures the gains on a handful of validation pairs (`num_validation_loss_pairs`), which makes
# them noisy from one validation to the next. At the end of training the same measurement (same 5 timesteps, fixed
# noise, another pair's conditioning) runs on `cond_gain_pairs` validation pairs, with a 95 % interval that
# resamples whole areas (whole blocks on a profile split by blocks, as chapter 6's intervals).

# %%
gains = condition_gain_estimate(run_dir, n_pairs=cond_gain_pairs, seed=seed, device=device)
display(round_floats(pd.DataFrame([
    {"gain": k, "value": gains[k], f"95% interval ({gains['unit']}s resampled)": (
        f"[{gains[k + '_ci'][0]:.4f}, {gains[k + '_ci'][1]:.4f}]" if gains[k + "_ci"] else f"n/a (1 {gains['unit']})"),
     "pairs": gains["n_pairs"], f"{gains['unit']}s": gains["n_units"]} for k in ("cond_gain", "control_gain")]), 4))

# %% [markdown]
# ### Validation images
# The same validation pairs at the first and the last validation step.

# %%
fig = show_validation(run_dir, "first")
plt.show()
fig = show_validation(run_dir, "last")
plt.show()

# %% [markdown]
# ## Where denoising starts: the img2img strength, chosen on validation
# Denoising can start from pure noise (strength 1: the ControlNet must draw the whole future from its condition) or
# from the past image's latent noised part of the way (SDEdit, as diffusers' `StableDiffusionControlNetImg2ImgPipeline`
# does): only the last `strength` share of the `num_inference_steps` steps then runs. Low strengths keep more of the
# past image (at the limit, persistence through the VAE); high ones leave more to the model. With `img2img_strengths`
# set, a seeded subset of **validation** pairs is drawn at each strength, by the ControlNet and, from the same
# noised past, by the backbone alone (prompt only); the strength with the best ControlNet `strength_criterion` is
# recorded in the run folder (`generation.yaml`) and used for the test split below and by
# `python -m stsynth_lib.predict`. Persistence on the same tiles is the dashed line: what copying the past gives.

# %% [markdown] tags=["needs-labels"]
# With `strength_criterion = "f1_new"` (labelled data) chapter 6's building segmenter also scores every strength, and
# the strength whose images show the most of the *new* buildings the future mask asks for wins: PSNR rewards copying
# the past, so it can never prefer a strength at which the guidance is drawn.

# %%
gen_kw = dict(scheduler=scheduler, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, seed=seed,
              batch_size=generation_batch_size, controlnet_conditioning_scale=controlnet_conditioning_scale,
              device=device, residual_decode=residual_decode)
if img2img_strengths:
    segmenter = None
    if strength_criterion == "f1_new":
        seg_device = E.scoring_device(device)
        segmenter, _, message = load_or_train_segmenter(runs_dir, profile, dataset_dir, device=seg_device, seed=seed,
                                                        steps=segmenter_steps, batch_size=segmenter_batch_size,
                                                        lr=segmenter_lr, base_channels=segmenter_base_channels,
                                                        depth=segmenter_depth, upsample=segmenter_upsample,
                                                        crop_px=segmenter_crop_px, sample_by=segmenter_sample_by,
                                                        decision_threshold=segmenter_decision_threshold)
        print(message)
    sweep = sweep_strength(run_dir, dataset_dir, img2img_strengths, split="val", max_pairs=strength_sweep_pairs,
                           criterion=strength_criterion, allow_uncalibrated=allow_uncalibrated_metrics, segmenter=segmenter,
                           psnr_floor_db=strength_psnr_floor_db, eval_device=E.scoring_device(device),
                           progress=False, **gen_kw)
    strength = sweep.chosen
    fig = plot_strength_sweep(sweep)
    plt.show()
    display(sweep_table(sweep))
    if sweep.at_grid_edge and strength_criterion != "f1_new":
        display(Markdown(f"> **Note:** the lowest strength of the grid ({strength:g}) won: the images are then the "
                         "past image with little redrawn, the closest to persistence; the criterion rewards "
                         "copying the past, so read the test scores next to persistence's."))
else:
    strength = clear_chosen_strength(run_dir)  # pure noise; a strength recorded earlier no longer applies
print(f"img2img strength for generation: {strength:g}" + (" (pure noise)" if strength == 1 else
                                                            f" (chosen on validation by {strength_criterion})"))

# %% [markdown]
# ## Generate the test split
# Every test pair (areas, or blocks on a profile split by blocks, never seen in training) is generated with the
# `scheduler` (UniPC by default) in `num_inference_steps` steps (at the strength above); pair `i` uses the seed
# `seed + pair_id`, so results do not depend on the batch size. The images are saved with
# `stsynth_lib.predict.files.save_predictions`: a GeoTIFF with the input tile's CRS and geotransform where the tile
# store records them (then it drops onto the source mosaic in QGIS) and a PNG, indexed in `index.csv` -- what
# chapter 6 scores.

# %%
gen_kw.update(max_pairs=max_test_pairs, strength=strength, subsample_seed=seed if max_test_pairs else None)
pred_dir = generate_split(run_dir, dataset_dir, "test", **gen_kw,
                          num_samples_per_pair=num_samples_per_pair if test_sample_mean else 1)
index = pd.read_csv(pred_dir / "index.csv")
print(f"{plural(len(index), 'test image')} in {pred_dir}")
if test_sample_mean:  # chapter 6 scores the mean as the model "<run name>_sample_mean"
    mean_dir = write_sample_mean(pred_dir)
    print(f"the per-pixel mean of {plural(num_samples_per_pair, 'sample')} per pair in {mean_dir}")
label = controlnet_label(params, strength=strength)
short_label = short_model_name("controlnet", {"controlnet": label})  # figure titles show the short name
print(f"{short_label} = {label}")
fig = show_predictions(pred_dir, dataset_dir, "test", n=4, title=f"{short_label}: test predictions")
plt.show()

# %% [markdown]
# ### What the ControlNet adds: against the backbone alone
# The same test pairs, prompts, seeds, scheduler and starting latents, drawn by the backbone **without** the
# ControlNet (the prompt alone). At strength 1 both start from pure noise, so this asks whether the past image
# matters at all; at a lower strength both start from the same noised past image, so it asks what the ControlNet's
# condition adds beyond that start (the sweep above shows both at every strength on validation). If the ControlNet uses its condition, its images are closer to the true future: the table gives the
# ControlNet minus prompt-only per metric, paired by pair, with a 95 % interval that resamples whole areas (whole
# blocks on a profile split by blocks). Nothing is chosen from this table (the test split is only reported).

# %%
if compare_prompt_only:
    prompt_dir = generate_split(run_dir, dataset_dir, "test", prompt_only=True, **gen_kw)
    cmp = E.evaluate_models(dataset_dir, "test", {"controlnet": pred_dir, "prompt_only": prompt_dir},
                            device=E.scoring_device(device),
                            allow_uncalibrated=allow_uncalibrated_metrics, max_pairs=max_test_pairs, seed=seed,
                            progress=False)
    display(E.results_table(cmp.summary, ("psnr", "ssim", "lpips"), labels=cmp.labels))
    vs_prompt = E.paired_vs_baseline(cmp.per_tile[cmp.per_tile["model"] != "persistence"], "prompt_only",
                                     metrics=("psnr", "ssim", "lpips"))
    display(E.paired_table(vs_prompt, labels=cmp.labels))

# %% [markdown] tags=["needs-labels"]
# ### What do the footprints add? The no-mask twin
# With `nomask_twin` set (labelled profiles), this run's options are trained again under that name with the
# footprint channel off (`stsynth_lib.controlnet.twin`): the same seed, steps, backbone and synthetic construction,
# and its test split is generated at this run's strength with the same seeds. The table is this run minus its twin
# on the same test pairs (whole image, areas or blocks resampled); chapter 6 scores both on new-building pixels and
# new buildings drawn (`twins`).

# %% tags=["needs-labels"]
if nomask_twin:
    twin_pred_dir = train_nomask_twin(config, run_dir, nomask_twin, gen_kw)
    twin_scores, twin_gain = twin_comparison(dataset_dir, pred_dir, twin_pred_dir, device=E.scoring_device(device),
                                             max_pairs=max_test_pairs, seed=seed)
    display(twin_scores)
    display(twin_gain)
else:
    display(Markdown(no_twin_note(mask_on, "the ControlNet")))

# %% [markdown]
# ### The spread of futures
# A diffusion model proposes a distribution of futures, not one. For a few test pairs, `num_samples_per_pair`
# samples (different seeds) and their per-pixel standard deviation: where the samples agree, the condition (and, at
# strength < 1, the noised past image they all start from) pins the image down; where they differ, the model is
# unsure. With `test_sample_mean`, every test pair already has its samples (and chapter 6 scores their mean: it
# averages the model's uncertainty away, which PSNR rewards and sharpness metrics do not).

# %%
if num_samples_per_pair > 1:
    spread_dir = pred_dir if test_sample_mean else generate_split(
        run_dir, dataset_dir, "test", out_dir=run_dir / "predictions" / "test_spread",
        num_samples_per_pair=num_samples_per_pair, **{**gen_kw, "max_pairs": n_spread_pairs})
    fig = show_sample_spread(spread_dir, dataset_dir, "test", n_pairs=n_spread_pairs,
                             title=f"{short_label}: samples per pair")
    plt.show()

# %% [markdown]
# ## Summary
# * Stage 1 adapted the backbone to these images (or, offline, trained a tiny one from scratch: VAE, then UNet and
#   text encoder), saved as a diffusers folder; its VAE ceiling and curves are above, and, for a backbone that draws
#   images (not latent changes: `unet_target: image`), its samples from a prompt alone.
# * A ControlNet conditioned on the past image, the future building mask (where there are labels) and the time gap,
#   with metadata prompts, was trained beside it on the same tiles as the cGANs; the run folder holds parameters,
#   logs, validation grids, resumable checkpoints and the trained ControlNet.
# * `control_gain` and `cond_gain` show whether the ControlNet does anything, and whether it uses *its* condition
#   (both 0 at step 0 by construction); the prompt-only comparison shows whether that reaches the images.
# * Where denoising starts (the img2img strength) was chosen on validation pairs and recorded in the run folder; the
#   sweep figure shows what each strength gives against the backbone alone and persistence.
# * The test split was generated and saved as GeoTIFFs (georeferenced where the tiles are) + PNGs for chapter 6.
#
# ## What's next
# Chapter 6 scores the models of chapters 3-5 and the simple baselines on the same test tiles (PSNR, SSIM, LPIPS,
# L1, and building F1 where the run has labels), chapter 7 adds FID/KID.
