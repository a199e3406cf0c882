"""Spatial splits inside an area (split_by="block", issue 12).

No test pixel is seen in training, the draw is seeded, and split_by="aoi" is unchanged.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio

from stsynth_lib.data.blocks import allocate, assign_blocks, block_of, change_summary, stratified_allocate
from stsynth_lib.data.build import build_dataset, tile_grid
from stsynth_lib.data.dataset import PairedTileDataset, TileStore
from stsynth_lib.data.errors import SN7DataError
from stsynth_lib.data.sn7 import scan_sn7


class OneAreaInBlocks(PairedTileDataset):
    """The same pairs, all in one area, in two blocks (alternating): a stand-in for a block-split dataset such as
    sn7_labelled, for code that must resample blocks instead of areas."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        n = len(self.pairs)
        self.pairs = self.pairs.assign(aoi="one_area", block_row=[i % 2 for i in range(n)],
                                       block_col=0).reset_index(drop=True)


def _write_tree(root, aois=("L15-0001E-0001N_0004_0004_13",), h=200, w=190, months=(1, 2, 3)):
    """AOIs of h x w px (not multiples of the tile size), 4-band uint8 with alpha, no labels."""
    from affine import Affine

    rng = np.random.default_rng(0)
    for aoi in aois:
        d = root / "train" / aoi / "images"
        d.mkdir(parents=True)
        for month in months:
            arr = rng.integers(1, 255, (4, h, w)).astype(np.uint8)
            arr[3] = 255
            with rasterio.open(d / f"global_monthly_2018_{month:02d}_mosaic_{aoi}.tif", "w", driver="GTiff",
                               width=w, height=h, count=4, dtype="uint8", crs="EPSG:3857",
                               transform=Affine(4.77, 0, 0, 0, -4.77, 0)) as dst:
                dst.write(arr)
    return scan_sn7(root, progress=False)


@pytest.fixture(scope="module")
def odd_meta(tmp_path_factory):
    root = tmp_path_factory.mktemp("odd") / "sn7"
    return _write_tree(root, aois=("L15-0001E-0001N_0004_0004_13", "L15-0002E-0002N_0008_0008_13"))


@pytest.mark.parametrize("block", [64, 48, 96])
def test_no_pixel_of_a_test_tile_is_in_a_train_or_val_tile(odd_meta, tmp_path, block):
    """Pixel sets per AOI: test, val and train tiles never share a pixel, shifted edge tiles included."""
    s = build_dataset(odd_meta, tmp_path / "ds", tile_size_px=32, split_by="block", block_size_px=block,
                      split_fractions=(0.6, 0.2, 0.2), max_gap_months=2, progress=False)
    store = TileStore(tmp_path / "ds")
    rec = json.loads((tmp_path / "ds" / "splits.json").read_text())
    assert rec["split_by"] == "block" and rec["block_size_px"] == block
    blocks = {(b["aoi"], b["block_row"], b["block_col"]): b for b in rec["blocks"]}
    for aoi in odd_meta["aoi"].unique():
        owner = np.full((200, 190), "", dtype=object)
        for tr in store.tiles[store.tiles["aoi"] == aoi].itertuples():
            b = blocks[(aoi, tr.block_row, tr.block_col)]
            assert b["split"] == tr.split
            assert b["row0"] <= tr.row_off and tr.row_off + 32 <= b["row1"]  # the whole tile inside its block
            assert b["col0"] <= tr.col_off and tr.col_off + 32 <= b["col1"]
            win = owner[tr.row_off : tr.row_off + 32, tr.col_off : tr.col_off + 32]
            assert set(np.unique(win)) <= {"", tr.split}, f"{aoi}: a {tr.split} tile overlaps another split"
            win[:] = tr.split
        assert {"train", "val", "test"} <= set(np.unique(owner))
    # Pairs: both tiles in the same split and block as the pair says.
    by_id = store.tiles.set_index("tile_id")
    for col in ("past_tile_id", "future_tile_id"):
        t = by_id.loc[store.pairs[col]]
        assert (t["split"].to_numpy() == store.pairs["split"].to_numpy()).all()
        assert (t["block_row"].to_numpy() == store.pairs["block_row"].to_numpy()).all()
        assert (t["block_col"].to_numpy() == store.pairs["block_col"].to_numpy()).all()
    # Dropped tiles: exactly the grid's tiles that cross a block border, reported.
    crossing = [p for p in tile_grid(200, 190, 32) if block_of(*p, 32, block) is None]
    assert s["n_tiles_dropped_at_block_borders"] == len(crossing) * 3 * 2  # 3 months, 2 AOIs
    assert len(store.tiles) == (len(tile_grid(200, 190, 32)) - len(crossing)) * 3 * 2
    assert s["n_blocks"] == {k: sum(b["split"] == k for b in rec["blocks"]) for k in ("train", "val", "test")}
    if block == 64:  # a multiple of the tile size: only the shifted tiles crossing into the 8-row last block go
        assert {r for r, _ in crossing} == {168}


def test_block_assignment_is_deterministic_from_the_seed():
    grid = tile_grid(1023, 1024, 128)
    a = assign_blocks("A", 1023, 1024, grid, 128, 256, (0.6, 0.2, 0.2), seed=0)
    b = assign_blocks("A", 1023, 1024, grid, 128, 256, (0.6, 0.2, 0.2), seed=0)
    assert a == b
    splits = [b["split"] for b in a[0]]
    assert len(splits) == 16 and (splits.count("train"), splits.count("val"), splits.count("test")) == (10, 3, 3)
    assert not a[2]  # 256 px blocks of a 1023 x 1024 image: no tile of the shifted 128 px grid crosses a border
    other = [[b["split"] for b in assign_blocks("A", 1023, 1024, grid, 128, 256, (0.6, 0.2, 0.2), s)[0]]
             for s in (1, 2, 3)]
    assert any(o != splits for o in other)
    assert [b["split"] for b in assign_blocks("B", 1023, 1024, grid, 128, 256, (0.6, 0.2, 0.2), 0)[0]] != splits


def test_stratified_draw_gives_every_split_some_of_the_heavy_blocks():
    """Construction is clustered: a plain draw of 16 blocks can leave the test split without new buildings
    (sn7_labelled, seed 0: all five building blocks in train)."""
    names = [(r, c) for r in range(4) for c in range(4)]
    weights = [0] * 16
    for i, w in zip((3, 6, 7, 11, 12), (347, 721, 1283, 512, 550)):  # sn7_labelled's five building blocks
        weights[i] = w
    heavy = {names[i] for i in (3, 6, 7, 11, 12)}
    plain = allocate([names[i] for i in np.random.default_rng(0).permutation(16)], (0.6, 0.2, 0.2))
    assert [len(plain[k]) for k in ("train", "val", "test")] == [10, 3, 3]
    for seed in range(20):
        a = stratified_allocate(names, weights, (0.6, 0.2, 0.2), np.random.default_rng(seed))
        assert [len(a[k]) for k in ("train", "val", "test")] == [10, 3, 3]
        assert sorted(a["train"] + a["val"] + a["test"]) == names
        assert all(set(a[k]) & heavy for k in ("train", "val", "test"))
        share = {k: sum(weights[names.index(n)] for n in a[k]) / sum(weights) for k in a}
        assert share["train"] > 0.5 and share["val"] > 0.1 and share["test"] > 0.1  # ~ 0.6 / 0.2 / 0.2
        assert a == stratified_allocate(names, weights, (0.6, 0.2, 0.2), np.random.default_rng(seed))


def test_stratified_block_build_records_new_building_weights(tiny_sn7_root, tmp_path):
    meta = scan_sn7(tiny_sn7_root, progress=False)
    s = build_dataset(meta, tmp_path / "ds", tile_size_px=32, max_gap_months=2, split_fractions=(0.5, 0.25, 0.25),
                      split_by="block", block_size_px=32, block_stratify="new_buildings", progress=False)
    assert s["block_stratify"] == "new_buildings"
    store = TileStore(tmp_path / "ds")
    rec = json.loads((tmp_path / "ds" / "splits.json").read_text())
    t = store.tiles
    for b in rec["blocks"]:  # one 32 px tile per 32 px block: the weight is its tile's new-building pixels
        g = t[(t["aoi"] == b["aoi"]) & (t["block_row"] == b["block_row"]) & (t["block_col"] == b["block_col"])]
        first, last = g.loc[g["month_index"].idxmin(), "tile_id"], g.loc[g["month_index"].idxmax(), "tile_id"]
        assert b["weight"] == int(((store.masks[last] == 1) & (store.masks[first] == 0)).sum())
    assert any(b["weight"] > 0 for b in rec["blocks"])
    with pytest.raises(ValueError, match="block_stratify must be one of none, new_buildings"):
        build_dataset(meta, tmp_path / "ds", tile_size_px=32, split_by="block", block_size_px=32,
                      block_stratify="buildings", progress=False)


def test_too_few_blocks_is_a_clear_error(odd_meta, tmp_path):
    # 192 px blocks of a 200 x 190 image: one block holds tiles, the 8-row strip below it holds none
    with pytest.raises(SN7DataError, match="has 1 blocks of 192 px .* fewer than the 3 splits.*Reduce block_size_px"):
        build_dataset(odd_meta, tmp_path / "ds", tile_size_px=32, split_by="block", block_size_px=192,
                      progress=False)
    with pytest.raises(SN7DataError, match="smaller than tile_size_px"):
        build_dataset(odd_meta, tmp_path / "ds", tile_size_px=32, split_by="block", block_size_px=16, progress=False)
    with pytest.raises(ValueError, match="split_by must be one of aoi, block"):
        build_dataset(odd_meta, tmp_path / "ds", tile_size_px=32, split_by="blocks", progress=False)
    assert not (tmp_path / "ds").exists() and not (tmp_path / "ds.partial").exists()
    # two splits only: 128 px blocks (2 x 2 holding tiles per AOI) are enough
    s = build_dataset(odd_meta, tmp_path / "ds", tile_size_px=32, split_by="block", block_size_px=128,
                      split_fractions=(0.5, 0.5, 0), progress=False)
    assert s["n_blocks"] == {"train": 4, "val": 4, "test": 0} and s["n_pairs"]["test"] == 0


def test_aoi_mode_is_unchanged(tiny_dataset_dir):
    """The default: whole AOIs per split, the store's files exactly as before block splits existed."""
    rec = json.loads((tiny_dataset_dir / "splits.json").read_text())
    assert set(rec) == {"seed", "fractions", "splits"}
    assert rec["splits"] == {
        "train": ["L15-0959E-1244N_3839_3216_13", "L15-1382E-1090N_5531_3830_13", "L15-1484E-1091N_5937_3828_13"],
        "val": ["L15-0302E-1372N_1209_2701_13"], "test": ["L15-0623E-1314N_2495_2936_13"]}
    store = TileStore(tiny_dataset_dir)
    assert "block_row" not in store.tiles and "block_row" not in store.pairs and "split_by" not in store.meta
    assert store.meta["n_pairs"] == {"train": 143, "val": 51, "test": 56} and store.meta["n_tiles"] == 120


@pytest.fixture(scope="module")
def tiny_block_dir(tiny_sn7_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("blocks") / "ds"
    meta = scan_sn7(tiny_sn7_root, progress=False)
    build_dataset(meta, out, tile_size_px=32, max_gap_months=4, split_fractions=(0.5, 0.25, 0.25), split_by="block",
                  block_size_px=32, seed=0, progress=False)
    return out


def test_change_summary_counts_new_building_pixels(tiny_block_dir):
    store = TileStore(tiny_block_dir)
    summary = change_summary(store)
    assert list(summary.index) == ["train", "val", "test"]
    assert summary["pairs"].sum() == len(store.pairs)
    test_pairs = store.pairs[store.pairs["split"] == "test"]
    px = sum(int(((store.masks[f] == 1) & (store.masks[p] == 0)).sum())
             for p, f in zip(test_pairs["past_tile_id"], test_pairs["future_tile_id"]))
    assert summary.loc["test", "new_building_pixels_over_pairs"] == px > 0
    assert summary.loc["test", "new_building_regions"] > 0
    assert summary.loc["test", "tile_positions"] == 5  # 5 AOIs x 4 blocks of one tile, 1/4 of them test
    ds = PairedTileDataset(tiny_block_dir, "test")
    assert len(ds) == summary.loc["test", "pairs"]


def test_plot_block_split_draws_blocks_and_tiles(tiny_block_dir):
    import matplotlib

    matplotlib.use("Agg")
    from stsynth_lib.data.plots import plot_block_split

    store = TileStore(tiny_block_dir)
    aoi = store.tiles["aoi"].iloc[0]
    fig = plot_block_split(store, aoi=aoi)
    ax = fig.axes[0]
    assert aoi in ax.get_title()
    n_blocks = sum(b["aoi"] == aoi for b in json.loads((tiny_block_dir / "splits.json").read_text())["blocks"])
    n_tiles = len(store.tiles.loc[store.tiles["aoi"] == aoi, ["row_off", "col_off"]].drop_duplicates())
    assert len(ax.patches) == n_blocks + n_tiles
    assert {t.get_text().split(":")[0] for t in ax.get_legend().get_texts()} == {"train", "val", "test"}


def test_real_labelled_aoi_is_covered_to_its_last_row_with_block_splits(shared_data, tmp_path):
    """sn7_real_labelled: 1023 x 1024 px; 128 px tiles give 8 x 8 positions, 256 px blocks drop none."""
    root = shared_data / "sn7_real_labelled"
    if not root.is_dir():
        pytest.skip(f"{root} absent")
    meta = scan_sn7(root, progress=False).sort_values("month_index").head(3)
    s = build_dataset(meta, tmp_path / "ds", tile_size_px=128, split_by="block", block_size_px=256,
                      split_fractions=(0.6, 0.2, 0.2), max_gap_months=2, progress=False)
    store = TileStore(tmp_path / "ds")
    assert s["n_tiles"] == 64 * 3 and s["n_tiles_dropped_at_block_borders"] == 0
    assert s["n_blocks"] == {"train": 10, "val": 3, "test": 3}
    assert sorted(set(store.tiles["row_off"])) == [0, 128, 256, 384, 512, 640, 768, 895]
    assert store.tiles["has_labels"].all() and store.tiles["building_fraction"].max() > 0
