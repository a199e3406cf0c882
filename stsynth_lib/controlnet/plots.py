"""Figures of the ControlNet chapter (return matplotlib Figures; the notebook shows them) and the training log's
table."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from stsynth_lib.figure_check import BOOK_WIDTH_IN, checked, show_mask

# log.csv's columns the chapter's log table shows, with the names it shows them under (images_per_s, the throughput,
# is the progress bar's: it would only widen the table past the book's column)
LOG_TABLE_COLUMNS = {"loss": "train loss", "val_loss": "val loss", "val_loss_nocontrol": "val loss, UNet alone",
                     "control_gain": "control_gain", "cond_gain": "cond_gain"}


def _title_suffix(run_dir: Path) -> str:
    import yaml

    from stsynth_lib.book.report_format import backbone_label, short_backbone

    p = yaml.safe_load((run_dir / "params.yaml").read_text())
    # the short backbone name, as the tables show it; the long description is printed once, in the legend tables
    return " (tiny random backbone: not meaningful)" if p.get("backbone") == "tiny-random" else \
        f" ({short_backbone(backbone_label(p))})"


def legend_above(ax, handles=None, labels=None, ncol: int = 2, title: str | None = None) -> None:
    """``ax``'s legend (or ``handles`` / ``labels``) in a frameless strip just above the axes, off the data (a legend
    inside covers the curves it names); ``title``: a heading over the entries (the panel's name: an axes title
    would sit under the strip)."""
    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles, labels, fontsize=9, loc="lower left", bbox_to_anchor=(0.0, 1.01), ncol=ncol, frameon=False,
              borderaxespad=0.0, title=title, title_fontsize=10, alignment="left")


def plot_training(run_dir: str | os.PathLike):
    """Training loss (per logged step) and, at each validation, the loss with and without control,
    ``control_gain`` (share of the UNet-alone loss the ControlNet removes) and ``cond_gain`` (share of the
    loss with another pair's conditioning that the right conditioning removes). Each panel's legend sits above it."""
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    log = pd.read_csv(run_dir / "log.csv")
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(BOOK_WIDTH_IN, 7.0), sharex=True)
    tr = log.dropna(subset=["loss"])
    a1.plot(tr["step"], tr["loss"], label="train loss (masked MSE)")
    va = log.dropna(subset=["val_loss"])
    a1.plot(va["step"], va["val_loss"], "o-", label="val loss, with control")
    a1.plot(va["step"], va["val_loss_nocontrol"], "s--", label="val loss, UNet alone")
    a1.set_ylabel("loss")
    legend_above(a1)
    a2.plot(va["step"], va["control_gain"], "o-", color="C3", label="control_gain: 1 - loss / loss(UNet alone)")
    if "cond_gain" in va:
        a2.plot(va["step"], va["cond_gain"], "s-", color="C4",
                label="cond_gain: 1 - loss / loss(another pair's condition)")
    a2.axhline(0, color="grey", lw=0.8)
    a2.set_xlabel("step")
    a2.set_ylabel("share of the val loss\nremoved")
    legend_above(a2, ncol=1)
    # the backbone's label is long: wrapped, or the title alone widens the saved figure past the book's column
    fig.suptitle(textwrap.fill("ControlNet training" + _title_suffix(run_dir), 90), fontsize=10)
    fig.tight_layout()
    return checked(fig)


def training_log_table(run_dir: str | os.PathLike, decimals: int = 4) -> pd.DataFrame:
    """The validation rows of ``<run_dir>/log.csv`` as the chapter shows them: one row per validation step (the
    index, named in the header's corner), the train loss and the validation losses and gains under short names
    (:data:`LOG_TABLE_COLUMNS`), as text to ``decimals`` decimals; a value the log lacks (the train loss at step 0,
    before any training step) reads "n/a"."""
    log = pd.read_csv(Path(run_dir) / "log.csv").dropna(subset=["control_gain"])
    cols = [c for c in LOG_TABLE_COLUMNS if c in log.columns]
    table = log.set_index("step")[cols].rename(columns=LOG_TABLE_COLUMNS)
    table = table.apply(lambda col: col.map(lambda v: "n/a" if pd.isna(v) else f"{float(v):.{decimals}f}"))
    table.index = [int(s) for s in table.index]
    table.columns.name = "step"  # shown in the corner over the step numbers: one header row
    return table


def plot_conditioning(cond, prompt: str, use_mask: bool = True, use_gap_plane: bool = True, n_bands: int = 3,
                      context_offsets_months=None):
    """The channels the ControlNet sees for one sample (``(C, H, W)`` in [0, 1]), and its prompt. Only channels that
    carry information are drawn: the past image, each past frame the series holds (``context_offsets_months``, in
    the offsets' order; its unusable pixels tinted red, its validity and age in the title) and a future mask that
    varies. What is constant is said in the notes under the panels instead: the absent months (one line) and a plane
    with one value everywhere (the gap plane; an empty mask)."""
    from stsynth_lib.conditioning import context_tag
    from stsynth_lib.controlnet.conditioning import conditioning_channels, extra_offsets

    c = cond.numpy() if hasattr(cond, "numpy") else np.asarray(cond)
    extra = extra_offsets(context_offsets_months)
    names = (["future mask"] if use_mask else []) + (["gap plane"] if use_gap_plane else [])
    want = conditioning_channels(n_bands, use_gap_plane, use_mask, context_offsets_months)
    if c.shape[0] != want:
        frames = f" + {len(extra)} past frames x ({n_bands} bands, validity, age)" if extra else ""
        raise ValueError(f"conditioning has {c.shape[0]} channels, expected {want}: {n_bands} bands{frames} + {names}")
    panels, absent, notes = [("past", 0, "past image")], [], []
    ch = n_bands
    for _, o in extra:
        tag = context_tag(o).removeprefix("ctx_")
        (panels if np.any(c[ch + n_bands]) else absent).append(("frame", ch, tag))
        ch += n_bands + 2
    for name in names:
        plane = c[ch]
        if float(plane.min()) == float(plane.max()):  # one value everywhere: said, not drawn as a flat square
            notes.append(f"channel {ch}: {name} = {float(plane.mean()):.2f}"
                         + (" (no building)" if name == "future mask" and not np.any(plane) else ""))
        else:
            panels.append(("plane", ch, name))
        ch += 1
    if absent:
        notes.insert(0, _absent_note(absent, n_bands))
    return _draw_conditioning(c, panels, notes, prompt, n_bands)


def _absent_note(absent, n_bands: int) -> str:
    """One line for the past frames the series lacks: their names and channels, and the values they hold."""
    from stsynth_lib.book.report_format import plural

    spans = _channel_spans([(ch, ch + n_bands + 1) for _, ch, _ in absent])
    return (f"{plural(len(absent), 'absent month')} ({', '.join(t for _, _, t in absent)}; channels {spans}): "
            f"bands 0.5, validity 0, age 0")


def _channel_spans(ranges) -> str:
    """``[(3, 7), (8, 12), (18, 22)]`` -> ``"3-12, 18-22"`` (touching ranges merged)."""
    merged: list[list[int]] = []
    for a, b in ranges:
        if merged and a == merged[-1][1] + 1:
            merged[-1][1] = b
        else:
            merged.append([a, b])
    return ", ".join(f"{a}-{b}" for a, b in merged)


def _draw_conditioning(c, panels, notes, prompt: str, n_bands: int):
    """The panels of :func:`plot_conditioning` (at most three a row), the prompt over them and the notes (9 pt,
    wrapped to the figure's width) under them."""
    import matplotlib.pyplot as plt

    ncols = min(len(panels), 3)
    nrows = -(-len(panels) // ncols)
    width = BOOK_WIDTH_IN if notes else min(2.6 * ncols, BOOK_WIDTH_IN)
    chars = int(width * 72 / 5.4)  # about 5.4 pt a character at 9 pt
    note = "\n".join(["Not drawn (one value everywhere):"]
                     + [textwrap.fill(n, chars, initial_indent="• ", subsequent_indent="   ") for n in notes])
    note_in = 0.18 * (note.count("\n") + 1) + 0.15 if notes else 0.0
    row_in = min(2.6, 0.9 * width / ncols) + 0.65  # the image and its title (up to three lines)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, row_in * nrows + 0.5 + note_in), squeeze=False)
    axes = axes.reshape(-1)
    for ax, (kind, ch, name) in zip(axes, panels):
        if kind == "past":
            ax.imshow(np.clip(c[:3].transpose(1, 2, 0), 0, 1))
            ax.set_title(f"channels 0-{n_bands - 1}:\npast image", fontsize=9)
        elif kind == "frame":
            _show_context_frame(ax, c[ch:ch + n_bands], c[ch + n_bands], c[ch + n_bands + 1], ch, name)
        else:
            if name == "future mask":
                show_mask(ax, c[ch])
            else:
                ax.imshow(c[ch], cmap="gray", vmin=0, vmax=1)
            ax.set_title(f"channel {ch}:\n{name}", fontsize=9)
    for ax in axes:
        ax.axis("off")
    title = textwrap.fill(f"prompt: \"{prompt}\"", 80)
    fig.suptitle(title, fontsize=10)
    h = fig.get_figheight()
    fig.tight_layout(rect=(0, note_in / h, 1, 1 - (0.2 * (title.count("\n") + 1) + 0.1) / h))
    if notes:
        fig.text(0.02, 0.1 / fig.get_figheight(), note, fontsize=9, ha="left", va="bottom")
    return checked(fig)


def _show_context_frame(ax, bands, valid, age, first: int, tag: str) -> None:
    """One past frame of the conditioning the series holds: its bands (first three as RGB), unusable pixels tinted
    red, the share of valid pixels and the mean age in the title."""
    n = bands.shape[0]
    where = f"channels {first}-{first + n + 1}:\nframe {tag}"
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
