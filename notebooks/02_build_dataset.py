# %% [markdown]
# # 2. Building the paired dataset
#
# ## Overview
# Every model in this book learns the same task: from the image of an AOI at month t0 and guidance about month
# t1 > t0 (the building footprints of t1, the dates, the time gap), produce the image at t1. This chapter builds the
# one dataset they all train and are scored on:
#
# * **pairs** (t0, t1) within an AOI with `min_gap_months <= t1 - t0 <= max_gap_months` (never a gap of 0);
# * **splits** drawn from a seed, by AOI (`split_by = "aoi"`: no AOI appears in two splits, so test scores measure
#   unseen places) or, when there are too few AOIs, by **block** inside each AOI (`split_by = "block"`: square blocks
#   of `block_size_px` go to train/val/test and tiles that cross a block border are dropped, so no pixel of a test
#   tile is ever seen in training);
# * **tiles** of `tile_size_px`, each with its own geotransform, written once into memory-mapped arrays, so the
#   training loop does no GeoTIFF decoding and no rasterisation. Every pixel is covered: where an image is not a
#   multiple of the tile size (real SpaceNet 7 images can have 1023 rows), the last row/column of tiles shifts inward
#   and overlaps its neighbour, all its pixels real;
# * a **validity mask** per tile (UDM clouds, alpha, nodata) that losses and metrics respect.
#
# ## Prerequisites
# | | |
# |---|---|
# | Inputs | the metadata table of chapter 1 (`metadata_path`) |
# | Outputs | the tile store in `dataset_dir` (`dataset.yaml`, `tiles.parquet`, `pairs.parquet`, `splits.json`, three `.npy` arrays) |
# | Time | measured in this run — see the run stamp at the top of the page |
# | GPU | not needed |

# %% tags=["parameters"]
profile = "smoke"
metadata_path = "data/smoke/metadata.parquet"
dataset_dir = "data/smoke/dataset"
tile_size_px = 64
bands = [1, 2, 3]              # 1-based band numbers; SpaceNet 7's band 4 is alpha and feeds the validity mask
resize_to_px = None            # resample each mosaic to this size first (None: native resolution)
min_gap_months = 1
max_gap_months = 6
split_fractions = [0.6, 0.2, 0.2]  # train, val, test (of the AOIs, or of each AOI's blocks)
split_by = "aoi"               # aoi | block: whole AOIs per split, or square blocks inside each AOI
block_size_px = 256            # split_by = "block": block side in pixels (a multiple of tile_size_px drops no tile)
block_stratify = "none"        # none | new_buildings: spread the blocks with most construction over the splits
min_valid_fraction = 0.5       # drop pairs whose past or future tile has fewer usable pixels
mask_source = "auto"           # auto | pix | match | geo: which label file to rasterise
build_on_error = "raise"       # raise | skip
loader_batch_size = 32
seed = 0

# %%
import os

from stsynth_lib.runs import find_project_root

os.chdir(find_project_root())

import matplotlib.pyplot as plt
from IPython.display import display

from stsynth_lib.data.blocks import change_summary
from stsynth_lib.data.build import build_dataset
from stsynth_lib.data.dataset import PairedTileDataset, TileStore, measure_loader_throughput
from stsynth_lib.data.plots import plot_block_split, plot_dataset_summary, plot_pair_examples
from stsynth_lib.data.sn7 import load_metadata
from stsynth_lib.report_format import plural, settings_table

# %% [markdown]
# ## Build the tile store

# %%
meta = load_metadata(metadata_path)
summary = build_dataset(
    meta, dataset_dir, tile_size_px=tile_size_px, bands=bands, min_gap_months=min_gap_months,
    max_gap_months=max_gap_months, split_fractions=split_fractions, min_valid_fraction=min_valid_fraction,
    resize_to_px=resize_to_px, mask_source=mask_source, seed=seed, on_error=build_on_error, split_by=split_by,
    block_size_px=block_size_px, block_stratify=block_stratify,
)
settings_table(summary)

# %% [markdown]
# ## Pairs, splits and tiles

# %%
store = TileStore(dataset_dir)
for split, aois in store.splits.items():
    n_tiles = int((store.tiles["split"] == split).sum())
    blocks = f", {plural(summary['n_blocks'][split], 'block')}" if split_by == "block" else ""
    print(f"{split:5s}: {plural(len(aois), 'AOI')}{blocks}, {plural(n_tiles, 'tile')}, "
          f"{plural(int((store.pairs['split'] == split).sum()), 'pair')}")
if split_by == "block":
    print(f"{plural(summary['n_tiles_dropped_at_block_borders'], 'tile')} dropped because they cross a block border")
if not summary["has_labels"]:
    print("No building labels in this tree: future masks are empty and the guidance is the dates alone.")
fig = plot_dataset_summary(store)
plt.show()

# %% [markdown]
# ## New buildings per split
# How much construction each split holds: pairs whose future mask has buildings the past mask lacks, those
# new-building pixels summed over the pairs, and new-building regions (connected groups of pixels built between the
# AOI's first and last month; adjacent buildings merge, so it undercounts footprints). The test split's numbers bound
# how precisely a new-building score can be measured.

# %%
if summary["has_labels"]:
    changes = change_summary(store)
    display(changes)
else:
    print("No labels: no new buildings to count.")

# %% [markdown]
# ## The split over the image
# With `split_by = "block"`: each AOI's blocks filled with the colour of their split over its last month, the kept
# tiles dashed, buildings that appear between the first and the last month outlined in red. Black areas are tiles
# dropped at a block border. Construction is clustered: a plain seeded draw can give the test split almost none of
# it, which is what `block_stratify = "new_buildings"` prevents (the splits keep their block counts but share the
# new-building pixels in proportion to the split fractions; the draw uses labels, never a model).

# %%
if split_by == "block":
    for aoi in store.tiles["aoi"].unique()[:3]:
        fig = plot_block_split(store, aoi=aoi)
        plt.show()
else:
    print("split_by = 'aoi': whole AOIs per split (listed in splits.json).")

# %% [markdown]
# ## Example pairs
# Past image, the building footprints of the future month (the guidance), and the future image the model must
# produce; unusable pixels of either date are outlined in cyan.

# %%
train = PairedTileDataset(dataset_dir, "train")
fig = plot_pair_examples(train, n=4, seed=seed)
plt.show()

# %% [markdown]
# ## Loader throughput
# A shuffled pass of a `DataLoader` over the training pairs (single process): the arrays are memory-mapped, so a
# sample is a few slices and a rescale.

# %%
tp = measure_loader_throughput(train, batch_size=loader_batch_size, max_batches=50, seed=seed)
print(f"{tp['tiles_per_s']:.0f} tiles/s ({tp['pairs_per_s']:.0f} pairs/s) over {tp['pairs']} pairs, "
      f"batch {tp['batch_size']}, {tp['num_workers']} workers")

# %% [markdown]
# ## Summary
# The tile store holds every tile once; pairs reference tiles, so a tile shared by many pairs costs no extra disk.
# Splits are by AOI, or by block inside each AOI, and saved in `splits.json` with their seed (and the blocks, with
# their pixel bounds and split).
#
# ## What's next
# Chapters [3](03_train_cgan) and [4](04_train_attention_cgan) train the pix2pix and attention-U-Net cGANs on these
# pairs; chapter [5](05_controlnet) trains a ControlNet on the same tiles.
