"""Figures of the ControlNet chapter (return matplotlib Figures; the notebook shows them)."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from stsynth_lib.figure_check import BOOK_WIDTH_IN, checked, show_mask


def _title_suffix(run_dir: Path) -> str:
    import yaml

    from stsynth_lib.book.report_format import backbone_label, short_backbone

    p = yaml.safe_load((run_dir / "params.yaml").read_text())
    # the short backbone name, as the tables show it; the long description is printed once, in the legend tables
    return " (tiny random backbone: not meaningful)" if p.get("backbone") == "tiny-random" else \
        f" ({short_backbone(backbone_label(p))})"


def plot_training(run_dir: str | os.PathLike):
    """Training loss (per logged step) and, at each validation, the loss with and without control,
    ``control_gain`` (share of the UNet-alone loss the ControlNet removes) and ``cond_gain`` (share of the
    loss with another pair's conditioning that the right conditioning removes)."""
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    log = pd.read_csv(run_dir / "log.csv")
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(BOOK_WIDTH_IN, 6.4), sharex=True)
    tr = log.dropna(subset=["loss"])
    a1.plot(tr["step"], tr["loss"], label="train loss (masked MSE)")
    va = log.dropna(subset=["val_loss"])
    a1.plot(va["step"], va["val_loss"], "o-", label="val loss, with control")
    a1.plot(va["step"], va["val_loss_nocontrol"], "s--", label="val loss, UNet alone")
    a1.set_ylabel("loss")
    a1.legend(fontsize=9)
    a2.plot(va["step"], va["control_gain"], "o-", color="C3", label="control_gain: 1 - loss / loss(UNet alone)")
    if "cond_gain" in va:
        a2.plot(va["step"], va["cond_gain"], "s-", color="C4",
                label="cond_gain: 1 - loss / loss(another pair's condition)")
    a2.axhline(0, color="grey", lw=0.8)
    a2.set_xlabel("step")
    a2.set_ylabel("share of the val loss\nremoved")
    a2.legend(fontsize=9)
    # the backbone's label is long: wrapped, or the title alone widens the saved figure past the book's column
    fig.suptitle(textwrap.fill("ControlNet training" + _title_suffix(run_dir), 90), fontsize=10)
    fig.tight_layout()
    return checked(fig)


def plot_conditioning(cond, prompt: str, use_mask: bool = True, use_gap_plane: bool = True, n_bands: int = 3,
                      context_offsets_months=None):
    """The channels the ControlNet sees for one sample (``(C, H, W)`` in [0, 1]), and its prompt. With
    ``context_offsets_months``, one panel per past frame (after the past image, in the offsets' order): the frame,
    its unusable pixels tinted red, its validity and age planes in the title; an absent month says so."""
    import matplotlib.pyplot as plt

    from stsynth_lib.conditioning import context_tag
    from stsynth_lib.controlnet.conditioning import conditioning_channels, extra_offsets

    c = cond.numpy() if hasattr(cond, "numpy") else np.asarray(cond)
    extra = extra_offsets(context_offsets_months)
    names = (["future mask"] if use_mask else []) + (["gap plane"] if use_gap_plane else [])
    want = conditioning_channels(n_bands, use_gap_plane, use_mask, context_offsets_months)
    if c.shape[0] != want:
        frames = f" + {len(extra)} past frames x ({n_bands} bands, validity, age)" if extra else ""
        raise ValueError(f"conditioning has {c.shape[0]} channels, expected {want}: {n_bands} bands{frames} + {names}")
    n_panels = 1 + len(extra) + len(names)
    ncols = min(n_panels, 3)
    nrows = -(-n_panels // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(min(2.6 * ncols, BOOK_WIDTH_IN), 2.9 * nrows + 0.5), squeeze=False)
    axes = axes.reshape(-1)
    axes[0].imshow(np.clip(c[:3].transpose(1, 2, 0), 0, 1))
    axes[0].set_title(f"channels 0-{n_bands - 1}:\npast image", fontsize=9)
    ch = n_bands
    for ax, (_, o) in zip(axes[1:], extra):
        _show_context_frame(ax, c[ch:ch + n_bands], c[ch + n_bands], c[ch + n_bands + 1], ch, context_tag(o))
        ch += n_bands + 2
    for i, (ax, name) in enumerate(zip(axes[1 + len(extra):], names)):
        plane = c[ch + i]
        if name == "future mask":
            show_mask(ax, plane)
        elif name == "gap plane":  # one value everywhere: say it rather than draw a near-black square
            show_mask(ax, np.zeros_like(plane), f"constant {float(plane.mean()):.2f}")
        else:
            ax.imshow(plane, cmap="gray", vmin=0, vmax=1)
        label = f"{name} = {plane.mean():.2f}" if name == "gap plane" else name
        ax.set_title(f"channel {ch + i}:\n{label}", fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(textwrap.fill(f"prompt: \"{prompt}\"", 80), fontsize=10)
    fig.tight_layout()
    return checked(fig)


def _show_context_frame(ax, bands, valid, age, first: int, tag: str) -> None:
    """One past frame of the conditioning: its bands (first three as RGB), unusable pixels tinted red; a month the
    series lacks (validity 0 everywhere) is a light grey panel that says so."""
    n = bands.shape[0]
    where = f"channels {first}-{first + n + 1}:\nframe {tag.removeprefix('ctx_')}"
    if not np.any(valid):
        show_mask(ax, valid, empty_text="absent month\n(bands 0.5, validity 0, age 0)")
        ax.set_title(where, fontsize=9)
        return
    rgb = np.clip(bands[:3].transpose(1, 2, 0), 0, 1).copy()
    bad = valid < 0.5
    rgb[bad] = 0.5 * rgb[bad] + 0.5 * np.array([1.0, 0.0, 0.0])
    ax.imshow(rgb)
    ax.set_title(f"{where}\nvalid {100 * float(valid.mean()):.0f} %, age {float(age.mean()):.2f}", fontsize=9)


def show_validation(run_dir: str | os.PathLike, which: str = "last"):
    """The validation grid of ``which`` (``"first"``, ``"last"`` or a step number) as a Figure."""
    import matplotlib.pyplot as plt
    from PIL import Image

    from stsynth_lib.runs import sample_grid_path

    f = sample_grid_path(run_dir, which)
    img = Image.open(f)
    fig = plt.figure(figsize=(img.width / 100, img.height / 100))  # one image pixel per screen pixel at 100 dpi
    ax = fig.add_axes([0, 0, 1, 1])
    ax.imshow(img)
    ax.axis("off")
    return fig


def show_predictions(pred_dir: str | os.PathLike, dataset_dir: str | os.PathLike, split: str = "test", n: int = 4,
                     title: str = ""):
    """Generated test images next to past, mask (on labelled data) and truth, read back from the saved GeoTIFFs."""
    import matplotlib.pyplot as plt

    from stsynth_lib.data.dataset import PairedTileDataset, to_uint8
    from stsynth_lib.predict.files import load_predictions

    preds = load_predictions(pred_dir)
    ds = PairedTileDataset(dataset_dir, split)
    rows = ds.pairs.reset_index().set_index("pair_id")["index"]
    ids = sorted(preds)[:: max(1, len(preds) // n)][:n]
    samples = [ds[int(rows[pid])] for pid in ids]
    with_mask = any(bool(s["has_mask"]) for s in samples)  # no all-black "no labels" column on unlabelled data
    side = (BOOK_WIDTH_IN - 1.1) / (3 + with_mask)  # 1.1 in: the row labels
    fig, axes = plt.subplots(len(ids), 3 + with_mask, figsize=(BOOK_WIDTH_IN, (side + 0.3) * len(ids) + 0.5),
                             squeeze=False)
    for r, (pid, s) in enumerate(zip(ids, samples)):
        panels = [(to_uint8(s["past"][:3]).transpose(1, 2, 0), "past"),
                  (s["future_mask"][0].numpy(), "future mask" if bool(s["has_mask"]) else "no labels"),
                  (preds[pid][:3].transpose(1, 2, 0), "generated\n(GeoTIFF)"),
                  (to_uint8(s["future"][:3]).transpose(1, 2, 0), "truth")]
        if not with_mask:
            del panels[1]
        for ax, (img, t) in zip(axes[r], panels):
            if img.ndim == 2:
                show_mask(ax, img)
            else:
                ax.imshow(img)
            ax.set_title(t if r == 0 else "", fontsize=9)
            ax.axis("off")
        axes[r][0].text(-2, 0, f"{s['aoi'][:14]}\n+{int(s['gap_months'])} mo", fontsize=9, ha="right", va="top")
    fig.suptitle(textwrap.fill(title, 70), fontsize=10)
    fig.tight_layout()
    return checked(fig)


def show_sample_spread(pred_dir: str | os.PathLike, dataset_dir: str | os.PathLike, split: str = "test",
                       n_pairs: int = 3, title: str = ""):
    """Several samples of the same pairs (``generate_split(..., num_samples_per_pair=K)``), one row per pair:
    past | truth | sample 0 .. K-1 | per-pixel standard deviation over the K samples (mean over the bands, in
    grey levels 0-255; where the samples agree, the model is sure). Pairs every sample holds, evenly spread."""
    import matplotlib.pyplot as plt

    from stsynth_lib.predict.split import sample_dirs
    from stsynth_lib.data.dataset import PairedTileDataset, to_uint8
    from stsynth_lib.predict.files import load_predictions

    samples = [load_predictions(d) for d in sample_dirs(pred_dir)]
    common = sorted(set.intersection(*(set(s) for s in samples)))
    if not common:
        raise ValueError(f"{pred_dir}: no pair is in every sample folder")
    ids = common[:: max(1, len(common) // n_pairs)][:n_pairs]
    ds = PairedTileDataset(dataset_dir, split)
    rows = ds.pairs.reset_index().set_index("pair_id")["index"]
    k = len(samples)
    side = (BOOK_WIDTH_IN - 2.0) / (k + 3)  # 2 in: the row labels and the colour bar
    fig, axes = plt.subplots(len(ids), k + 3, figsize=(BOOK_WIDTH_IN, (side + 0.45) * len(ids) + 0.9), squeeze=False)
    stds = [np.stack([s[pid].astype(np.float64) for s in samples]).std(0).mean(0) for pid in ids]
    vmax = max(1.0, max(float(sd.max()) for sd in stds))
    for r, pid in enumerate(ids):
        s = ds[int(rows[pid])]
        panels = [(to_uint8(s["past"][:3]).transpose(1, 2, 0), "past"),
                  (to_uint8(s["future"][:3]).transpose(1, 2, 0), "truth")]
        panels += [(smp[pid][:3].transpose(1, 2, 0), f"sample\n{j}") for j, smp in enumerate(samples)]
        for ax, (img, t) in zip(axes[r], panels):
            ax.imshow(img)
            ax.set_title(t if r == 0 else "", fontsize=9)
            ax.axis("off")
        im = axes[r][-1].imshow(stds[r], cmap="viridis", vmin=0, vmax=vmax)
        axes[r][-1].set_title(f"std over\n{k} samples" if r == 0 else "", fontsize=9)
        axes[r][-1].axis("off")
        axes[r][0].text(-2, 0, f"pair {pid}\n{s['aoi'][:12]}\n+{int(s['gap_months'])} mo", fontsize=9, ha="right",
                        va="top")
    # a long title (a run's full label) is wrapped, or it alone widens the saved figure past the book's column
    title = textwrap.fill(title, 90) if title else f"{k} samples per pair ({Path(pred_dir).name}):\npast | truth | samples | spread"
    top_in = 0.2 + 0.18 * (title.count("\n") + 1)
    fig.set_figheight(fig.get_figheight() + top_in - 0.5)
    fig.tight_layout(rect=(0, 0, 0.88, 1 - top_in / fig.get_figheight()))
    cax = fig.add_axes([0.9, 0.15, 0.02, 0.7])
    fig.colorbar(im, cax=cax, label="per-pixel std (grey levels)")
    fig.suptitle(title, fontsize=10)
    return checked(fig)
