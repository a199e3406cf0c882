"""Several ControlNet samples per pair, and the backbone alone from the prompt (``prompt_only``): seeds, folders,
identities. CPU, 32 px (the ``tiny_dataset_dir`` fixture), a one-step tiny run."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("open_clip")

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py

GEN = dict(num_inference_steps=2, batch_size=4, max_pairs=3, progress=False)


@pytest.fixture(scope="module")
def run(one_step_controlnet_run):
    return one_step_controlnet_run


@pytest.fixture(scope="module")
def zero_run(run, tmp_path_factory):
    """The same run with its zero convolutions set back to zero: the ControlNet adds nothing."""
    from diffusers import ControlNetModel

    from stsynth_lib.controlnet.losses import zero_conv_parameters

    out = tmp_path_factory.mktemp("zero") / "controlnet"
    shutil.copytree(run, out)
    cn = ControlNetModel.from_pretrained(out / "controlnet")
    with torch.no_grad():
        for p in zero_conv_parameters(cn)[0]:
            p.zero_()
    cn.save_pretrained(out / "controlnet")
    return out


def _imgs(folder) -> dict[int, np.ndarray]:
    from stsynth_lib.predict.files import load_predictions

    return load_predictions(folder)


def test_sample_seeds_are_documented_and_distinct():
    from stsynth_lib.predict.split import SAMPLE_SEED_STRIDE, sample_dir, sample_seed

    assert sample_seed(7, 12) == 19 and sample_seed(7, 12, 0) == 19  # sample 0: seed + pair_id, as always
    assert sample_seed(7, 12, 2) == 19 + 2 * 1_000_003 == 19 + 2 * SAMPLE_SEED_STRIDE
    seeds = {sample_seed(0, p, k) for p in range(1000) for k in range(4)}
    assert len(seeds) == 4000
    assert sample_dir("x/test", 0).as_posix() == "x/test"
    assert sample_dir("x/test", 3).as_posix() == "x/test/samples/sample-3"


def test_several_samples_per_pair(run, tiny_dataset_dir, tmp_path):
    from stsynth_lib.controlnet.generate import generate_split
    from stsynth_lib.predict.split import sample_dirs
    from stsynth_lib.predict.files import read_prediction_index

    one = generate_split(run, tiny_dataset_dir, "test", out_dir=tmp_path / "one", **GEN)
    three = generate_split(run, tiny_dataset_dir, "test", out_dir=tmp_path / "three", num_samples_per_pair=3, **GEN)
    assert not (one / "samples").exists()
    assert sample_dirs(three) == [three, three / "samples" / "sample-1", three / "samples" / "sample-2"]
    a, s = _imgs(one), [_imgs(d) for d in sample_dirs(three)]
    assert sorted(a) == sorted(s[0]) == sorted(s[1]) == sorted(s[2]) and len(a) == 3
    for pid in a:  # sample 0 is exactly what a one-sample run writes (chapter 6 scores it unchanged)
        np.testing.assert_array_equal(a[pid], s[0][pid])
        assert not np.array_equal(s[0][pid], s[1][pid]) and not np.array_equal(s[1][pid], s[2][pid])
    assert [p.name for _, p in read_prediction_index(three / "samples" / "sample-2")] == \
        [p.name for _, p in read_prediction_index(three)]
    # a new run clears the old samples: none outlives it
    again = generate_split(run, tiny_dataset_dir, "test", out_dir=three, **GEN)
    assert sample_dirs(again) == [again] and not list((again / "samples").glob("sample-*"))
    with pytest.raises(ValueError, match="num_samples_per_pair"):
        generate_split(run, tiny_dataset_dir, "test", out_dir=tmp_path / "bad", num_samples_per_pair=0, **GEN)


def test_prompt_only_equals_controlnet_with_zero_convolutions(zero_run, tiny_dataset_dir, tmp_path):
    from stsynth_lib.controlnet.generate import generate_split

    cn = generate_split(zero_run, tiny_dataset_dir, "test", out_dir=tmp_path / "cn", num_samples_per_pair=2, **GEN)
    po = generate_split(zero_run, tiny_dataset_dir, "test", num_samples_per_pair=2, prompt_only=True, **GEN)
    assert po == zero_run / "predictions_prompt_only" / "test"  # never over the ControlNet's predictions
    for a, b in ((cn, po), (cn / "samples" / "sample-1", po / "samples" / "sample-1")):
        pa, pb = _imgs(a), _imgs(b)
        assert sorted(pa) == sorted(pb)
        for pid in pa:
            np.testing.assert_array_equal(pa[pid], pb[pid])


def test_prompt_only_differs_from_a_trained_controlnet(run, tiny_dataset_dir, tmp_path):
    from stsynth_lib.controlnet.generate import generate_split

    cn = _imgs(generate_split(run, tiny_dataset_dir, "test", out_dir=tmp_path / "cn", **GEN))
    po = _imgs(generate_split(run, tiny_dataset_dir, "test", out_dir=tmp_path / "po", prompt_only=True, **GEN))
    assert sorted(cn) == sorted(po)
    assert max(np.abs(cn[p].astype(int) - po[p].astype(int)).max() for p in cn) > 0


def test_sampler_without_controlnet_is_the_zero_control(tmp_path):
    """``sample_images(controlnet=None)`` is bit-identical to a ControlNet whose zero convolutions are zero, and
    differs once they are not."""
    from diffusers import ControlNetModel

    from stsynth_lib.controlnet.backbone import build_tiny_sd
    from stsynth_lib.controlnet.generate import make_scheduler, sample_images

    tiny = build_tiny_sd(seed=0, tokenizer_cache_dir=tmp_path).freeze()
    torch.manual_seed(0)
    cn = ControlNetModel.from_unet(tiny.unet, conditioning_channels=5).eval()
    cond = torch.rand(2, 5, 32, 32, generator=torch.Generator().manual_seed(0))
    prompts = ["satellite image, July 2018", "satellite image, May 2019"]

    def run(controlnet, gs):
        return sample_images(tiny, controlnet, cond, prompts, make_scheduler("unipc", tiny.noise_scheduler.config),
                             3, gs, seeds=[5, 9])

    for gs in (1.0, 3.0):
        assert torch.equal(run(cn, gs), run(None, gs))
    with torch.no_grad():
        for n, p in cn.named_parameters():
            if n.startswith(("controlnet_down_blocks", "controlnet_mid_block")):
                p.normal_(0, 0.05)
    assert (run(cn, 1.0) - run(None, 1.0)).abs().max() > 1e-3


def test_show_sample_spread(run, tiny_dataset_dir, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from stsynth_lib.controlnet.generate import generate_split
    from stsynth_lib.controlnet.plots import show_sample_spread

    out = generate_split(run, tiny_dataset_dir, "test", out_dir=tmp_path / "s", num_samples_per_pair=3, **GEN)
    fig = show_sample_spread(out, tiny_dataset_dir, "test", n_pairs=2)
    image_axes = [a for a in fig.axes if a.images]
    assert len(image_axes) == 2 * (3 + 3) and len(fig.axes) == 2 * 6 + 1  # 2 rows of 6 panels + the colourbar
    titles = [a.get_title().replace("\n", " ") for a in fig.axes[:6]]
    assert titles == ["past", "truth", "sample 0", "sample 1", "sample 2", "std over 3 samples"]
    assert fig._suptitle is not None and "3 samples per pair" in fig._suptitle.get_text()
    spread = fig.axes[5].images[0].get_array()
    assert float(np.asarray(spread).max()) > 0  # the samples differ
    plt.close(fig)
    # chapter 5 titles it with the run's full label (~170 characters): unwrapped, that line alone made the saved
    # figure 1,471 px wide, shown at 46 % in the book (its text too small: a SmallTextWarning, an error in the tests)
    long = "ControlNet [tiny, trained from scratch on the sn7_real_128 train split (data/sn7_real_128/dataset); " \
           "residual diffusion (the change from the past); img2img from the past image, strength 0.1]: samples"
    fig = show_sample_spread(out, tiny_dataset_dir, "test", n_pairs=2, title=long)
    assert fig._suptitle.get_text().replace("\n", " ") == long and fig._suptitle.get_text().count("\n") >= 1
    plt.close(fig)


@pytest.mark.parametrize("has_mask, n_cols", [([False, False], 3), ([False, True], 4)])
def test_sample_grids_drop_the_mask_column_only_on_unlabelled_data(has_mask, n_cols):
    from stsynth_lib.controlnet.validation import validation_figure

    g = torch.Generator().manual_seed(0)
    batch = {"past": torch.rand(2, 3, 16, 16, generator=g) * 2 - 1, "future": torch.rand(2, 3, 16, 16, generator=g) * 2 - 1,
             "future_mask": torch.zeros(2, 1, 16, 16), "has_mask": torch.tensor(has_mask), "aoi": ["a", "b"]}
    fig = validation_figure(batch, torch.zeros(2, 3, 16, 16), "t")
    assert len(fig.axes) == 2 * n_cols
    titles = [ax.get_title() for ax in fig.axes[:n_cols]]
    assert (titles[1] in ("future mask", "no labels")) == (n_cols == 4)  # a mask column only beside labelled rows


def test_prediction_grid_shows_the_mask_of_labelled_data(run, tiny_dataset_dir, tmp_path):
    from stsynth_lib.controlnet.generate import generate_split
    from stsynth_lib.controlnet.plots import show_predictions

    pred = generate_split(run, tiny_dataset_dir, "test", out_dir=tmp_path / "p", **GEN)
    fig = show_predictions(pred, tiny_dataset_dir, "test", n=2)
    assert [ax.get_title().replace("\n", " ") for ax in fig.axes[:4]] == ["past", "future mask", "generated (GeoTIFF)", "truth"]


def test_condition_gain_estimate_on_more_pairs(run):
    from stsynth_lib.controlnet.validation import condition_gain_estimate

    est = condition_gain_estimate(run, n_pairs=6, n_boot=50, device="cpu")
    assert est["n_pairs"] == 6 and est["n_areas"] >= 1 and est["unit"] == "area" and est["n_units"] == est["n_areas"]
    assert est["cond_gain"] == pytest.approx(1 - est["val_loss"] / est["val_loss_shuffled_cond"])
    assert est["control_gain"] == pytest.approx(1 - est["val_loss"] / est["val_loss_nocontrol"])
    assert est["val_loss"] != est["val_loss_nocontrol"]  # the one-step ControlNet changes the loss
    if est["n_areas"] > 1:
        lo, hi = est["cond_gain_ci"]
        assert lo <= hi
    else:
        assert est["cond_gain_ci"] is None  # one area: no interval


def test_condition_gain_estimate_resamples_blocks_on_a_block_split(run, tmp_path, monkeypatch):
    """On a dataset split by blocks the interval resamples blocks (one area still gets an interval)."""
    import pandas as pd

    from stsynth_lib.controlnet import validation
    from test_blocks import OneAreaInBlocks

    monkeypatch.setattr("stsynth_lib.data.dataset.PairedTileDataset", OneAreaInBlocks)
    est = validation.condition_gain_estimate(run, n_pairs=6, n_boot=50, device="cpu")
    assert est["unit"] == "block" and est["n_areas"] == 1 and est["n_units"] == 2
    lo, hi = est["cond_gain_ci"]
    assert lo <= hi and not pd.isna(lo)  # one area, two blocks: an interval exists
