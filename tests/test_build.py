"""Pairs, splits, tiling geotransforms, the tile store and PairedTileDataset."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import rasterio
import torch
from conftest import REAL_128, needs_real_128

from stsynth_lib.data.build import (
    build_dataset,
    build_pairs,
    split_aois,
    tile_grid,
    tile_transform,
)
from stsynth_lib.data.dataset import (
    PairedTileDataset,
    TileStore,
    measure_loader_throughput,
    to_uint8,
)
from stsynth_lib.data.io import read_raster
from stsynth_lib.data.sn7 import SN7DataError, scan_sn7


def _meta(months: dict[str, list[int]]) -> pd.DataFrame:
    rows = [{"aoi": a, "month_index": m} for a, ms in months.items() for m in ms]
    return pd.DataFrame(rows)


def test_pairs_respect_gap_bounds_and_never_cross_aois():
    meta = _meta({"A": [0, 1, 2, 5, 9], "B": [0, 3, 4]})
    pairs = build_pairs(meta, min_gap_months=1, max_gap_months=4)
    assert (pairs["gap_months"] >= 1).all() and (pairs["gap_months"] <= 4).all()
    past = meta.loc[pairs["past_index"]]
    fut = meta.loc[pairs["future_index"]]
    assert (past["aoi"].to_numpy() == fut["aoi"].to_numpy()).all()
    assert (fut["month_index"].to_numpy() - past["month_index"].to_numpy() == pairs["gap_months"]).all()
    # A: (0,1)(0,2)(1,2)(1,5)(2,5)(5,9)  B: (0,3)(0,4)(3,4)
    assert len(pairs) == 9


def test_pairs_reject_gap_zero_and_inverted_bounds():
    with pytest.raises(ValueError, match="t1 > t0"):
        build_pairs(_meta({"A": [0, 1]}), min_gap_months=0)
    with pytest.raises(ValueError, match="max_gap_months"):
        build_pairs(_meta({"A": [0, 1]}), min_gap_months=3, max_gap_months=2)


def test_splits_are_disjoint_complete_deterministic_and_order_free():
    aois = [f"aoi{i}" for i in range(20)]
    s1 = split_aois(aois, (0.7, 0.15, 0.15), seed=4)
    s2 = split_aois(list(reversed(aois)), (0.7, 0.15, 0.15), seed=4)
    assert s1 == s2
    allocated = s1["train"] + s1["val"] + s1["test"]
    assert sorted(allocated) == sorted(aois) and len(set(allocated)) == 20
    assert split_aois(aois, seed=5) != s1
    small = split_aois(["a", "b", "c"], (0.8, 0.1, 0.1))
    assert all(len(v) == 1 for v in small.values())


def _apply(t, col, row):
    return (t.c + t.a * col + t.b * row, t.f + t.d * col + t.e * row)


def test_tile_grid_and_transform_map_back_to_the_right_coordinates():
    from affine import Affine

    # 100 x 70 px: the last row and column of tiles shift inward (68 = 100 - 32, 38 = 70 - 32)
    assert tile_grid(100, 70, 32) == [(r, c) for r in (0, 32, 64, 68) for c in (0, 32, 38)]
    with pytest.raises(SN7DataError, match="tile_size_px"):
        tile_grid(64, 64, 128)
    t = Affine(4.77, 0, 1000.0, 0, -4.77, 5000.0)
    tt = tile_transform(t, row_off=32, col_off=64)
    # The tile's (0, 0) corner is the mosaic's pixel (row 32, col 64).
    assert _apply(tt, 0, 0) == pytest.approx(_apply(t, 64, 32))
    assert _apply(tt, 5, 7) == pytest.approx(_apply(t, 64 + 5, 32 + 7))


@pytest.mark.parametrize("h, w, t", [(1023, 1024, 128), (1023, 1024, 256), (1030, 999, 64), (100, 70, 32),
                                     (32, 33, 32)])
def test_tile_grid_covers_every_pixel_with_whole_tiles(h, w, t):
    """A 1023-row SpaceNet 7 image used to lose its last row of tiles (127 rows at 128 px)."""
    grid = tile_grid(h, w, t)
    cover = np.zeros((h, w), np.int32)
    for r, c in grid:
        assert 0 <= r <= h - t and 0 <= c <= w - t  # whole tiles, all pixels real: no padding
        cover[r : r + t, c : c + t] += 1
    assert (cover >= 1).all()
    assert len(grid) == len(set(grid)) == -(-h // t) * -(-w // t)  # one extra tile per partial row/column, no more


@pytest.mark.parametrize("h, w, t", [(128, 128, 64), (64, 64, 32), (1024, 1024, 256), (128, 128, 128), (512, 256, 32)])
def test_tile_grid_is_unchanged_for_multiples_of_the_tile_size(h, w, t):
    """The smoke, sn7_real_128 and 1024 px grids are the plain non-overlapping ones they always were."""
    old = [(r, c) for r in range(0, h - t + 1, t) for c in range(0, w - t + 1, t)]
    assert tile_grid(h, w, t) == old


def test_1023_row_images_are_tiled_to_their_last_row(tmp_path):
    """A real-sized case end to end: the bottom row of pixels reaches the store, with its own georeference."""
    from affine import Affine

    aoi = "L15-0001E-0001N_0004_0004_13"
    d = tmp_path / "sn7" / "train" / aoi / "images"
    d.mkdir(parents=True)
    arr = np.random.default_rng(0).integers(1, 255, (4, 95, 64)).astype(np.uint8)
    arr[3] = 255
    for month in (1, 2):
        with rasterio.open(d / f"global_monthly_2018_{month:02d}_mosaic_{aoi}.tif", "w", driver="GTiff", width=64,
                           height=95, count=4, dtype="uint8", crs="EPSG:3857",
                           transform=Affine(4.77, 0, 0, 0, -4.77, 0)) as dst:
            dst.write(arr)
    meta = scan_sn7(tmp_path / "sn7", progress=False)
    build_dataset(meta, tmp_path / "ds", tile_size_px=32, split_fractions=(1, 0, 0), progress=False)
    store = TileStore(tmp_path / "ds")
    t0 = store.tiles[store.tiles["meta_index"] == 0]
    assert sorted(set(t0["row_off"])) == [0, 32, 63] and len(t0) == 6
    seen = np.zeros((3, 95, 64), np.uint8)
    for tr in t0.itertuples():
        seen[:, tr.row_off : tr.row_off + 32, tr.col_off : tr.col_off + 32] = store.images[tr.tile_id]
    assert np.array_equal(seen, arr[:3])
    assert len(store.pairs) == 6


def test_store_tiles_match_the_source_pixels_and_georeference(tiny_sn7_root, tiny_dataset_dir):
    store = TileStore(tiny_dataset_dir)
    assert store.tile_size_px == 32 and store.n_bands == 3
    row = store.tiles.iloc[7]
    meta = pd.read_parquet(tiny_dataset_dir / "metadata.parquet")
    src = meta.loc[row["meta_index"]]
    full, prof = read_raster(src["image_path"], with_profile=True)
    r, c = int(row["row_off"]), int(row["col_off"])
    assert np.array_equal(store.images[row["tile_id"]], full[:3, r : r + 32, c : c + 32])
    from affine import Affine

    tt = Affine(*[row[f"transform_{k}"] for k in "abcdef"])
    assert _apply(tt, 0, 0) == pytest.approx(_apply(prof["transform"], c, r))
    assert row["crs"] == "EPSG:3857"


def test_store_pairs_follow_the_rules(tiny_dataset_dir):
    store = TileStore(tiny_dataset_dir)
    p = store.pairs
    assert len(p) > 0 and (p["gap_months"] >= 1).all() and (p["gap_months"] <= 4).all()
    tiles = store.tiles.set_index("tile_id")
    past, fut = tiles.loc[p["past_tile_id"]], tiles.loc[p["future_tile_id"]]
    assert (past["aoi"].to_numpy() == fut["aoi"].to_numpy()).all()
    assert (past["row_off"].to_numpy() == fut["row_off"].to_numpy()).all()
    assert (fut["month_index"].to_numpy() - past["month_index"].to_numpy() == p["gap_months"].to_numpy()).all()
    assert (past["valid_fraction"] >= 0.5).all() and (fut["valid_fraction"] >= 0.5).all()
    # No AOI leaks across splits, and every split has pairs.
    per_aoi = p.groupby("aoi")["split"].nunique()
    assert (per_aoi == 1).all()
    splits = json.loads((tiny_dataset_dir / "splits.json").read_text())["splits"]
    for name, aois in splits.items():
        assert set(p.loc[p["split"] == name, "aoi"]) <= set(aois)
        assert (p["split"] == name).sum() > 0
    assert not set(splits["train"]) & set(splits["test"])


def test_dataset_sample_shapes_ranges_and_consistency(tiny_dataset_dir):
    ds = PairedTileDataset(tiny_dataset_dir, "train")
    s = ds[3]
    assert s["past"].shape == s["future"].shape == (3, 32, 32)
    assert s["past"].dtype == torch.float32
    assert -1.0 <= float(s["past"].min()) and float(s["future"].max()) <= 1.0
    for k in ("past_mask", "future_mask", "past_valid", "future_valid", "valid"):
        assert s[k].shape == (1, 32, 32)
        assert set(torch.unique(s[k]).tolist()) <= {0.0, 1.0}
    assert torch.equal(s["valid"], s["past_valid"] * s["future_valid"])
    assert float(s["gap_months"]) >= 1
    assert bool(s["has_mask"])
    assert s["transform"].shape == (6,) and s["crs"] == "EPSG:3857"
    # The future mask of the sample is the store's mask of the future tile.
    pair = ds.store.pairs.set_index("pair_id").loc[int(s["pair_id"])]
    assert np.array_equal(s["future_mask"][0].numpy(), ds.store.masks[pair["future_tile_id"]])
    assert np.array_equal(to_uint8(s["future"]), ds.store.images[pair["future_tile_id"]])
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["past"].shape == (4, 3, 32, 32) and len(batch["aoi"]) == 4


def test_buildings_grow_in_pairs(tiny_dataset_dir):
    """Synthetic construction only adds buildings: the future mask covers the past mask."""
    ds = PairedTileDataset(tiny_dataset_dir, "all")
    for i in range(0, len(ds), max(1, len(ds) // 20)):
        s = ds[i]
        assert (s["future_mask"] >= s["past_mask"]).all()


def test_augmentation_moves_every_spatial_tensor_together(tiny_dataset_dir):
    np.random.seed(1)
    ds = PairedTileDataset(tiny_dataset_dir, "train", augment=True)
    plain = PairedTileDataset(tiny_dataset_dir, "train")
    for i in range(6):
        a, p = ds[i], plain[i]
        variants = [torch.rot90(p["future"], k, (-2, -1)) for k in range(4)]
        variants += [v.flip(-1) for v in variants]
        j = next(j for j, v in enumerate(variants) if torch.equal(v, a["future"]))
        k, flip = j % 4, j >= 4

        def same(x):
            x = torch.rot90(x, k, (-2, -1))
            return x.flip(-1) if flip else x

        assert torch.equal(same(p["future_mask"]), a["future_mask"]) and torch.equal(same(p["past"]), a["past"])


def test_missing_or_mixed_store_fails_clearly(tmp_path, tiny_dataset_dir):
    with pytest.raises(FileNotFoundError, match="not a built stsynth dataset"):
        PairedTileDataset(tmp_path)
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_dataset_dir, broken)
    np.save(broken / "tiles_masks.npy", np.zeros((3, 32, 32), np.uint8))
    with pytest.raises(ValueError, match="Rebuild the dataset"):
        TileStore(broken)


def test_build_is_atomic_on_failure(tiny_sn7_root, tmp_path):
    meta = scan_sn7(tiny_sn7_root, progress=False)
    out = tmp_path / "ds"
    build_dataset(meta, out, tile_size_px=32, progress=False)
    before = (out / "pairs.parquet").read_bytes()
    bad = meta.copy()
    bad.loc[5, "image_path"] = str(tmp_path / "gone.tif")
    with pytest.raises(SN7DataError, match="gone.tif"):
        build_dataset(bad, out, tile_size_px=32, progress=False)
    assert (out / "pairs.parquet").read_bytes() == before  # the previous store is intact
    with pytest.warns(UserWarning, match="gone.tif"):
        summary = build_dataset(bad, tmp_path / "ds2", tile_size_px=32, on_error="skip", progress=False)
    assert summary["n_images"] == len(meta) - 1
    store = TileStore(tmp_path / "ds2")
    assert store.images.shape[0] == len(store.tiles) == (len(meta) - 1) * 4


def test_build_without_labels_and_with_resampling(tiny_sn7_root, tmp_path):
    meta = scan_sn7(tiny_sn7_root, progress=False)
    meta["has_labels"] = False
    summary = build_dataset(meta, tmp_path / "ds", tile_size_px=16, resize_to_px=32, progress=False,
                            allow_any_tile_size=True)
    assert not summary["has_labels"]
    ds = PairedTileDataset(tmp_path / "ds", "all")
    s = ds[0]
    assert not bool(s["has_mask"]) and float(s["future_mask"].sum()) == 0
    # 64 px at 4.777 m resampled to 32 px: tiles have 9.55 m pixels.
    assert float(s["transform"][0]) == pytest.approx(2 * 4.777314, rel=1e-5)


def test_loader_throughput_is_measured(tiny_dataset_dir):
    tp = measure_loader_throughput(PairedTileDataset(tiny_dataset_dir, "train"), batch_size=8, max_batches=3)
    assert tp["pairs"] == 24 and tp["tiles_per_s"] > 0


@needs_real_128
def test_build_real_128_subset(tmp_path):
    meta = scan_sn7(REAL_128, progress=False)
    meta = meta[meta["aoi"].isin(sorted(meta["aoi"].unique())[:4])]
    summary = build_dataset(meta, tmp_path / "real", tile_size_px=128, max_gap_months=3, progress=False)
    assert not summary["has_labels"] and summary["n_tiles"] == len(meta)
    ds = PairedTileDataset(tmp_path / "real", "all")
    s = ds[0]
    assert s["past"].shape == (3, 128, 128) and s["crs"] == ""
    assert float(s["valid"].mean()) > 0.9


def test_plot_sample_returns_a_figure(tiny_dataset_dir):
    import matplotlib

    matplotlib.use("Agg")
    ds = PairedTileDataset(tiny_dataset_dir, "val")
    fig = ds.plot(ds[0], prediction=ds[0]["past"])
    assert len(fig.axes) == 4 and fig.axes[1].get_title() == "future\nbuildings"


def test_downsample_writes_the_128px_layout(tiny_sn7_root, tmp_path):
    from stsynth_lib.data.downsample import main

    assert main([str(tiny_sn7_root), str(tmp_path / "small"), "--size-px", "16", "--with-labels"]) == 0
    meta = scan_sn7(tmp_path / "small", progress=False)
    assert len(meta) == 30 and (meta["width"] == 16).all() and (meta["bands"] == 3).all()
    src = scan_sn7(tiny_sn7_root, progress=False)
    with rasterio.open(meta.loc[0, "image_path"]) as small, rasterio.open(src.loc[0, "image_path"]) as big:
        assert small.transform.a == pytest.approx(big.transform.a * 4)
        assert small.transform.c == pytest.approx(big.transform.c)
    report = meta.attrs["scan_report"]
    assert "labels_match_pix" in report.missing_folders and "labels" not in report.missing_folders
    # labels in map coordinates still land on the buildings at the new resolution
    s = build_dataset(meta, tmp_path / "ds16", tile_size_px=16, progress=False, allow_any_tile_size=True)
    assert s["has_labels"] and TileStore(tmp_path / "ds16").tiles["building_fraction"].max() > 0
    # resumable: a second run writes nothing new
    from stsynth_lib.data.downsample import downsample_sn7

    assert downsample_sn7(tiny_sn7_root, tmp_path / "small", 16, progress=False) == 0


# --------------------------------------------------------------------------- bad inputs (issue 10)


def _write_tree_16bit(root, nodata=None):
    """One AOI, two months of 64 px 16-bit RGB: a dark (but valid) field, a bright field, a strip of nodata."""
    from affine import Affine

    aoi = "L15-0001E-0001N_0004_0004_13"
    d = root / "train" / aoi / "images"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for month in (1, 2):
        arr = rng.integers(2000, 4000, (3, 64, 64)).astype(np.uint16)
        arr[:, :20] = rng.integers(40, 60, (3, 20, 64))  # dark, below the 2 % percentile
        arr[:, :, :4] = 0 if nodata is None else nodata  # nodata strip
        kw = {} if nodata is None else {"nodata": nodata}
        with rasterio.open(d / f"global_monthly_2018_{month:02d}_mosaic_{aoi}.tif", "w", driver="GTiff", width=64,
                           height=64, count=3, dtype="uint16", crs="EPSG:3857",
                           transform=Affine(4.77, 0, 0, 0, -4.77, 0), **kw) as dst:
            dst.write(arr)
    return root


@pytest.mark.parametrize("nodata", [None, 65535])
def test_16bit_dark_pixels_stay_valid_nodata_comes_from_the_file(tmp_path, nodata):
    """The 2-98 % stretch maps dark pixels to (0, 0, 0); they used to count as nodata."""
    meta = scan_sn7(_write_tree_16bit(tmp_path / "sn7", nodata), progress=False)
    build_dataset(meta, tmp_path / "ds", tile_size_px=32, min_valid_fraction=0, split_fractions=(1, 0, 0),
                  progress=False)
    store = TileStore(tmp_path / "ds")
    valid = np.zeros((64, 64), np.uint8)
    for tr in store.tiles[store.tiles["meta_index"] == 0].itertuples():
        valid[tr.row_off:tr.row_off + 32, tr.col_off:tr.col_off + 32] = store.valid[tr.tile_id]
    assert (valid[:, :4] == 0).all()  # the file's nodata (0 when it declares none)
    assert (valid[:, 4:] == 1).all()  # dark field included
    images = np.asarray(store.images)
    assert images.max() == 255 and images.dtype == np.uint8


def test_udm_of_another_size_names_the_files(tiny_sn7_root, tmp_path):
    import shutil

    root = tmp_path / "udm"
    shutil.copytree(tiny_sn7_root, root)
    victim = sorted(root.rglob("UDM_masks/*.tif"))[2]
    with rasterio.open(victim, "w", driver="GTiff", width=32, height=32, count=1, dtype="uint8") as dst:
        dst.write(np.zeros((1, 32, 32), np.uint8))
    meta = scan_sn7(root, progress=False)
    with pytest.raises(SN7DataError, match=f"UDM mask of .*{victim.name}.* is 32x32 px, the image is 64x64"):
        build_dataset(meta, tmp_path / "ds", tile_size_px=32, progress=False)
    with pytest.warns(UserWarning, match=victim.name):
        s = build_dataset(meta, tmp_path / "ds", tile_size_px=32, on_error="skip", progress=False)
    assert s["n_images"] == len(meta) - 1


@pytest.mark.parametrize("size", [16, 48])
def test_tile_sizes_the_models_cannot_take_are_refused_at_build(tiny_sn7_root, tmp_path, size):
    """16 px (instance-norm error in training) and 48 px (U-Net) used to be built and fail only at training."""
    meta = scan_sn7(tiny_sn7_root, progress=False)
    with pytest.raises(SN7DataError, match=f"tile_size_px={size}: the models need a power of two of at least 32"):
        build_dataset(meta, tmp_path / "ds", tile_size_px=size, progress=False)
    assert not (tmp_path / "ds").exists() and not (tmp_path / "ds.partial").exists()


def test_failed_build_leaves_no_partial_folder(tiny_sn7_root, tmp_path):
    meta = scan_sn7(tiny_sn7_root, progress=False)
    meta.loc[7, "image_path"] = str(tmp_path / "gone.tif")
    with pytest.raises(SN7DataError, match="gone.tif"):
        build_dataset(meta, tmp_path / "ds", tile_size_px=32, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_unet_tile_size_error_points_at_tile_size_px_not_a_depth_parameter():
    """The message used to advise depth=..., which no notebook or parameter file has."""
    from stsynth_lib.models.unet import depth_for_size

    with pytest.raises(ValueError) as err:
        depth_for_size(48)
    assert "tile_size_px" in str(err.value) and "common.yaml" in str(err.value) and "depth=" not in str(err.value)
