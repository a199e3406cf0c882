"""Data-layer benchmark: tile-store loader vs decoding GeoTIFFs and rasterising labels per sample.

    python benchmarks/bench_data.py --out bench_results

Builds a synthetic SpaceNet 7 tree (1024 px mosaics, like the real ones) into a 256 px tile store, then times:

* ``PairedTileDataset`` through a shuffled DataLoader (the training path), in tiles/s;
* the naive path many research codes use: open both GeoTIFFs, read the window, rasterise the GeoJSON, per sample;
* the one-off build (images/s);
* the loader against the model: tiles/s that ``PairedTileDataset`` + collate + the trainer's augmentation deliver
  at each profile's tile size and batch, against the tiles/s the cGAN trainer consumes there (its own
  ``train_step`` at the profile's widths, one thread) -- the loader must never be the bottleneck.

Ratios are measured in one run on the same machine. Writes ``<out>/data.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def naive_sample(meta, pair, tile):
    """Read one pair the slow way: decode both windows from GeoTIFF, rasterise the future labels."""
    import rasterio
    from rasterio.windows import Window

    from stsynth_lib.data.rasterize import footprint_mask

    win = Window(int(pair.col_off), int(pair.row_off), tile, tile)
    out = []
    for tid in (pair.past_meta, pair.future_meta):
        with rasterio.open(meta.loc[tid, "image_path"]) as src:
            out.append(src.read([1, 2, 3], window=win))
            transform, crs = src.transform, src.crs.to_string()
    row = meta.loc[pair.future_meta].to_dict()
    mask = footprint_mask(row, (1024, 1024), transform, crs)[win.row_off : win.row_off + tile, win.col_off : win.col_off + tile]
    return out, mask


# profile -> (tile px, batch, ngf, norm), as in params/<profile>/03_train_cgan.yaml (gpu/sn7 train on a GPU)
PROFILES = {"smoke": (64, 16, 32, "instance"), "sn7_real_128": (128, 8, 32, "batch"), "gpu / sn7": (256, 4, 64, "instance")}


def loader_vs_model(root: Path, tmp: Path, batches: int = 8) -> list[dict]:
    """Per profile: tiles/s delivered by the training data path and tiles/s consumed by a cGAN training step."""
    import torch

    from stsynth_lib.cgan.augment import augment_batch
    from stsynth_lib.cgan.losses import train_step
    from stsynth_lib.conditioning import GuidanceConfig
    from stsynth_lib.data.build import build_dataset
    from stsynth_lib.data.dataset import PairedTileDataset
    from stsynth_lib.data.sn7 import scan_sn7
    from stsynth_lib.models import build_discriminator, build_generator, init_weights
    from stsynth_lib.training import collate, epoch_batches, to_device

    meta, rows = scan_sn7(root, progress=False), []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    for profile, (tile, batch, ngf, norm) in PROFILES.items():
        build_dataset(meta, tmp / f"ds{tile}", tile_size_px=tile, max_gap_months=3, progress=False)
        ds = PairedTileDataset(tmp / f"ds{tile}", "all")
        order = epoch_batches(len(ds), batch, 0, 0)[:batches]
        t0 = time.perf_counter()
        for i, idx in enumerate(order):
            b = augment_batch(collate([ds[j] for j in idx]), torch.Generator().manual_seed(i), 0.2)
        loader = 2 * sum(map(len, order)) / (time.perf_counter() - t0)
        g = GuidanceConfig().resolve(True, 3)
        G = init_weights(build_generator("pix2pix", g.n_channels, 3, tile, ngf=ngf, norm=norm))
        D = init_weights(build_discriminator(g.n_channels, 3, ndf=ngf, norm=norm))
        og, od = (torch.optim.Adam(m.parameters(), 2e-4, betas=(0.5, 0.999)) for m in (G, D))
        b = to_device(b, "cpu")
        train_step(G, D, og, od, b, g, 100.0, "vanilla")
        t0, n = time.perf_counter(), 3
        for _ in range(n):
            train_step(G, D, og, od, b, g, 100.0, "vanilla")
        model = 2 * len(idx) * n / (time.perf_counter() - t0)
        rows.append({"profile": profile, "tile_size_px": tile, "batch": batch, "ngf": ngf,
                     "loader_tiles_per_s": loader, "model_tiles_per_s": model, "loader_headroom": loader / model})
    torch.set_num_threads(threads)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench_results")
    ap.add_argument("--n-aois", type=int, default=3)
    ap.add_argument("--n-months", type=int, default=6)
    ap.add_argument("--size-px", type=int, default=1024)
    ap.add_argument("--tile-size-px", type=int, default=256)
    ap.add_argument("--samples", type=int, default=256)
    args = ap.parse_args(argv)

    from stsynth_lib.data.build import build_dataset
    from stsynth_lib.data.dataset import PairedTileDataset, measure_loader_throughput
    from stsynth_lib.data.sn7 import scan_sn7
    from stsynth_lib.data.synthetic import generate_synthetic_sn7

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        generate_synthetic_sn7(tmp / "sn7", n_aois=args.n_aois, n_months=args.n_months, size_px=args.size_px, progress=False)
        results["synthetic_images_per_s"] = args.n_aois * args.n_months / (time.perf_counter() - t0)
        meta = scan_sn7(tmp / "sn7", progress=False)
        t0 = time.perf_counter()
        build_dataset(meta, tmp / "ds", tile_size_px=args.tile_size_px, max_gap_months=3, progress=False)
        results["build_images_per_s"] = len(meta) / (time.perf_counter() - t0)
        ds = PairedTileDataset(tmp / "ds", "all")
        n_batches = max(1, args.samples // 32)
        for workers in (0, 2):
            tp = measure_loader_throughput(ds, batch_size=32, num_workers=workers, max_batches=n_batches)
            results[f"store_tiles_per_s_workers{workers}"] = tp["tiles_per_s"]
        tiles = ds.store.tiles.set_index("tile_id")
        pairs = ds.pairs.sample(n=min(args.samples // 4, len(ds.pairs)), random_state=0).copy()
        pairs["past_meta"] = tiles.loc[pairs["past_tile_id"], "meta_index"].to_numpy()
        pairs["future_meta"] = tiles.loc[pairs["future_tile_id"], "meta_index"].to_numpy()
        t0 = time.perf_counter()
        for p in pairs.itertuples():
            naive_sample(meta, p, args.tile_size_px)
        results["naive_tiles_per_s"] = 2 * len(pairs) / (time.perf_counter() - t0)
        headroom = loader_vs_model(tmp / "sn7", tmp)
    results["speedup_store_vs_naive"] = results["store_tiles_per_s_workers0"] / results["naive_tiles_per_s"]
    results["loader_vs_model"] = headroom
    results["config"] = vars(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "data.json").write_text(json.dumps(results, indent=2))
    print(f"{'measure':40s} {'value':>12s}")
    for k, v in results.items():
        if k not in ("config", "loader_vs_model"):
            print(f"{k:40s} {v:12.1f}")
    print(f"\n{'profile':14s} {'tile px':>7s} {'batch':>5s} {'loader tiles/s':>15s} {'cGAN step tiles/s':>18s} {'headroom':>9s}")
    for r in headroom:
        print(f"{r['profile']:14s} {r['tile_size_px']:7d} {r['batch']:5d} {r['loader_tiles_per_s']:15.1f} "
              f"{r['model_tiles_per_s']:18.2f} {r['loader_headroom']:8.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
