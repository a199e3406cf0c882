"""``python -m stsynth_lib.predict`` on the real SpaceNet 7 trees in ../shared/data with the model kinds the best
runs are: a context model (earlier months read from the tree) and a footprint model (future and past labels read
from the tree). Each output is checked against ``Predictor.predict`` on the same tile, given the inputs found here
independently (file names -> months, labels -> masks). Skipped where ../shared/data is absent."""

from __future__ import annotations

import re

import numpy as np
import pytest
import rasterio
import torch
import yaml

from conftest import SHARED_DATA
from stsynth_lib.cgan.model_io import generator_from_spec
from stsynth_lib.conditioning import GuidanceConfig
from stsynth_lib.models import init_weights
from stsynth_lib.predict import load_predictor
from stsynth_lib.predict.cli import main

REAL_128 = SHARED_DATA / "sn7_real_128"
REAL_LABELLED = SHARED_DATA / "sn7_real_labelled"
TILE, OVERLAP = 64, 16  # --overlap-px 16: the top-left 48 x 48 px of a scene come from the first tile alone
ALONE = TILE - OVERLAP

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _random_run(run_dir, model: str, guidance: GuidanceConfig):
    """A run folder (model.yaml + best/generator.pt) with seeded random weights: what the CLI reads of a trained run."""
    channels = guidance.channel_names()
    spec = {"name": model, "in_channels": len(channels), "out_channels": 3, "tile_size_px": TILE, "ngf": 8,
            "norm": "batch", "dropout": 0.5, "residual": True, "gap_channel": channels.index("gap_months_scaled"),
            "guidance": guidance.to_dict(), "channels": channels}
    torch.manual_seed(0)
    G = init_weights(generator_from_spec(spec))
    with torch.no_grad():
        for m in G.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)) and not m.weight.abs().sum():
                m.weight.normal_(0, 0.5)  # the residual head starts at zero: make the output depend on the input
    (run_dir / "best").mkdir(parents=True)
    (run_dir / "model.yaml").write_text(yaml.safe_dump(spec))
    torch.save(G.state_dict(), run_dir / "best" / "generator.pt")
    return run_dir


def _month(path) -> tuple[int, int]:
    y, m = re.search(r"global_monthly_(\d{4})_(\d{2})_mosaic", str(path)).groups()
    return int(y), int(m)


def _read(path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read([1, 2, 3])


def _cli(run, data, out, aoi, pairs: int, capsys) -> list[dict]:
    code = main(["--run", str(run), "--data", str(data), "--out", str(out), "--aoi", aoi, "--max-pairs", str(pairs),
                 "--overlap-px", str(OVERLAP), "--no-progress", "--compile", "false"])
    assert code == 0, capsys.readouterr().err
    record = yaml.safe_load((out / "predict.yaml").read_text())
    assert record["seconds_per_pair"] > 0 and record["model_seconds_per_pair"] > 0
    import pandas as pd

    return pd.read_csv(out / "index.csv").to_dict("records")


@pytest.mark.skipif(not REAL_128.is_dir(), reason=f"real SpaceNet 7 128 px tree not at {REAL_128}")
def test_cli_predicts_a_context_model_like_the_predictor(tmp_path, capsys):
    offsets = [0, -1, "same_month_last_year"]
    run = _random_run(tmp_path / "ctx", "attention_unet", GuidanceConfig(use_mask=False, context_offsets_months=offsets))
    aoi = sorted(p.name for p in (REAL_128 / "train").iterdir())[0]
    images = {_month(p): p for p in (REAL_128 / "train" / aoi / "images").glob("*.tif")}
    rows = _cli(run, REAL_128, tmp_path / "out", aoi, 4, capsys)
    predictor = load_predictor(run, compile=False)
    used_context = 0
    for row in rows:
        (y0, m0), (y1, m1) = (int(v) for v in row["past_date"].split("-")), (int(v) for v in row["future_date"].split("-"))
        t0, t1 = y0 * 12 + m0 - 1, y1 * 12 + m1 - 1
        want_months = {-1: t0 - 1, "same_month_last_year": t1 - 12}
        context = {o: _read(images[divmod(t, 12)[0], divmod(t, 12)[1] + 1])[:, :TILE, :TILE]
                   for o, t in want_months.items() if t <= t0 and (divmod(t, 12)[0], divmod(t, 12)[1] + 1) in images}
        used_context += len(context)
        past = _read(row["past_image"])[:, :TILE, :TILE]
        want = predictor.predict(past, row["past_date"], row["future_date"], context=context)
        got = _read(tmp_path / "out" / row["prediction"])
        np.testing.assert_array_equal(got[:, :ALONE, :ALONE], want[:, :ALONE, :ALONE])
        if context:  # the frames matter: without them the model predicts something else
            blind = predictor.predict(past, row["past_date"], row["future_date"], context={})
            assert np.abs(blind.astype(int) - want.astype(int)).max() > 0
    assert used_context > 0


@pytest.mark.skipif(not REAL_LABELLED.is_dir(), reason=f"real labelled SpaceNet 7 area not at {REAL_LABELLED}")
def test_cli_predicts_a_footprint_model_like_the_predictor(tmp_path, capsys):
    from stsynth_lib.data.rasterize import footprint_mask
    from stsynth_lib.data.sn7 import scan_sn7

    run = _random_run(tmp_path / "mask", "pix2pix", GuidanceConfig(use_mask=True, use_past_mask=True))
    aoi = next((REAL_LABELLED / "train").iterdir()).name
    rows = _cli(run, REAL_LABELLED, tmp_path / "out", aoi, 2, capsys)
    meta = scan_sn7(REAL_LABELLED, cloud_stats=False, progress=False).set_index("image_path", drop=False)
    predictor = load_predictor(run, compile=False)
    for row in rows:
        with rasterio.open(row["past_image"]) as src:
            past, transform, crs = src.read([1, 2, 3]), src.transform, src.crs.to_string()
        masks = [footprint_mask(meta.loc[row[k]].to_dict(), past.shape[1:], transform, crs)
                 for k in ("future_image", "past_image")]
        assert masks[0].sum() > 0
        want = predictor.predict(past[:, :TILE, :TILE], row["past_date"], row["future_date"],
                                 future_mask=masks[0][:TILE, :TILE], past_mask=masks[1][:TILE, :TILE])
        got = _read(tmp_path / "out" / row["prediction"])
        assert got.shape == past.shape  # 1023 x 1024 kept
        np.testing.assert_array_equal(got[:, :ALONE, :ALONE], want[:, :ALONE, :ALONE])
