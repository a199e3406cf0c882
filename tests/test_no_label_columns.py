"""Figures draw no building-mask column for data without labels (issue 35: the all-black "future mask" columns of the
sn7_real_128 book), and keep it where a shown pair is labelled."""

from __future__ import annotations

import dataclasses

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from stsynth_lib import evaluate as E  # noqa: E402
from stsynth_lib.predict.files import save_predictions  # noqa: E402


def _batch(has_mask, n=2, size=32):
    g = torch.Generator().manual_seed(0)
    return {"past": torch.rand(n, 3, size, size, generator=g) * 2 - 1,
            "future": torch.rand(n, 3, size, size, generator=g) * 2 - 1,
            "future_mask": torch.zeros(n, 1, size, size), "valid": torch.ones(n, 1, size, size),
            "has_mask": torch.tensor(has_mask)}


@pytest.mark.parametrize("has_mask, n_cols", [([False, False], 3), ([False, True], 4)])
def test_cgan_sample_grid_and_its_viewer_agree_on_the_columns(tmp_path, monkeypatch, has_mask, n_cols):
    from stsynth_lib.cgan import plots

    batch = _batch(has_mask)
    grid = plots.sample_grid(batch, torch.zeros(2, 3, 32, 32))
    cols = plots.sample_grid_columns(batch)
    assert grid.shape == (2 * 32, n_cols * 32, 3) and len(cols) == n_cols
    assert ("future mask" in cols) == (n_cols == 4)
    (tmp_path / "samples").mkdir()
    plots.save_grid(grid, tmp_path / "samples" / "step-0000010.png", columns=cols)
    assert Image.open(tmp_path / "samples" / "step-0000010.png").info["columns"] == "|".join(cols)
    fig = plots.show_samples(tmp_path)
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert len(labels) == n_cols and labels[0] == "past" and labels[-1].startswith("truth")
    plt.close(fig)


def test_attention_maps_figure_has_a_mask_column_only_with_labels():
    from stsynth_lib.cgan.plots import plot_attention
    from stsynth_lib.models import build_generator

    torch.manual_seed(0)
    g = build_generator("attention_unet", 4, 3, 32, ngf=4).eval()
    for has_mask, first in (([False, False], "gate 0"), ([True, False], "future mask")):
        batch = _batch(has_mask)
        fig = plot_attention(g, torch.cat([batch["past"], batch["future_mask"]], 1), batch, n=2)
        assert fig.axes[1].get_title().startswith(first)
        plt.close(fig)


def test_pair_examples_and_gallery_drop_the_mask_column_without_labels(tiny_dataset_dir, unlabelled_dataset_dir,
                                                                         tmp_path):
    from stsynth_lib.data.dataset import PairedTileDataset
    from stsynth_lib.data.plots import plot_pair_examples

    for root, n_cols in ((unlabelled_dataset_dir, 2), (tiny_dataset_dir, 3)):
        fig = plot_pair_examples(PairedTileDataset(root, "train"), n=2)
        assert len(fig.axes) == 2 * n_cols
        plt.close(fig)

    data = E.load_split(tiny_dataset_dir, "test")
    save_predictions(tmp_path / "copy", data.past.astype(np.float32) / 127.5 - 1, data.pair_ids,
                     data.pairs["aoi"].to_numpy(), data.transform, list(data.crs))
    res = E.evaluate_models(tiny_dataset_dir, "test", {"copy": tmp_path / "copy"}, compute_lpips=False, n_boot=20,
                            progress=False)
    fig = E.gallery(res, "copy", "psnr")
    assert [a.get_title() for a in fig.axes[:2]] == ["past", "future buildings"]
    plt.close(fig)
    unlabelled = dataclasses.replace(res, data=dataclasses.replace(res.data, has_mask=np.zeros(len(data), bool)))
    fig = E.gallery(unlabelled, "copy", "psnr")
    image_axes = [a for a in fig.axes if a.images]
    assert len(image_axes) == 3 * 4 and [a.get_title() for a in fig.axes[:2]] == ["past", "copy"]
    plt.close(fig)
