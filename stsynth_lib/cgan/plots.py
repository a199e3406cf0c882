"""Figures for the cGAN chapters: loss curves, validation curves, sample grids, attention maps."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from stsynth_lib.book.report_format import plural
from stsynth_lib.data.dataset import to_uint8
from stsynth_lib.figure_check import BOOK_WIDTH_IN, checked, colorbar_below, headed_rows, legend_below, show_mask


def plot_losses(run_dir: str | Path, smooth: int = 5):
    """Generator/discriminator losses, the L1 term and throughput from ``log.csv`` (rolling mean over ``smooth`` rows)."""
    import matplotlib.pyplot as plt

    log = pd.read_csv(Path(run_dir) / "log.csv")
    r = lambda s: s.rolling(smooth, min_periods=1).mean()  # noqa: E731
    fig, ax = plt.subplots(2, 2, figsize=(BOOK_WIDTH_IN, 5.8))
    ax = ax.ravel()
    ax[0].plot(log["step"], r(log["loss_g_gan"]), label="G adversarial")
    ax[0].plot(log["step"], r(log["loss_d_real"]), label="D on real")
    ax[0].plot(log["step"], r(log["loss_d_fake"]), label="D on generated")
    ax[1].plot(log["step"], r(log["loss_g_l1"]), color="C3")
    ax[2].plot(log["step"], log["lr"], color="C4")
    ax[3].plot(log["step"], r(log["images_per_s"]), color="C2")
    for a, title in zip(ax, ("adversarial losses", "L1 on valid pixels (train)", "learning rate", "throughput (images/s)")):
        a.set_title(title, fontsize=11)
        a.set_xlabel("step")
        a.grid(alpha=0.3)
    legend_below(fig, *ax[0].get_legend_handles_labels())  # under the panels: over none of the curves
    return checked(fig)


def plot_validation(run_dir: str | Path, persistence: Mapping[str, float] | None = None):
    """Validation L1 / PSNR / SSIM from ``val.csv`` against the training step (validation runs every
    ``val_every_steps`` steps and at each epoch's end, so an epoch axis would stack the points); dashed line: the
    persistence baseline; dotted verticals: the ends of epochs."""
    import matplotlib.pyplot as plt

    val = pd.read_csv(Path(run_dir) / "val.csv")
    x = "step" if "step" in val else "epoch"  # val.csv files before steps were logged
    ends = val.groupby("epoch")["step"].max().to_numpy()[:-1] if x == "step" and "epoch" in val else []
    fig, ax = plt.subplots(1, 3, figsize=(BOOK_WIDTH_IN, 3.4))
    for a, key, title in zip(ax, ("val_l1", "val_psnr", "val_ssim"), ("L1 (lower: better)", "PSNR (dB)", "SSIM")):
        a.plot(val[x], val[key], "o-", label="model")
        best = val[val["best"] == 1]
        a.plot(best[x], best[key], "*", ms=12, color="gold", label="new best")
        if persistence and key[4:] in persistence:
            a.axhline(persistence[key[4:]], ls="--", color="gray", label="persistence")
        for e in ends:
            a.axvline(e, ls=":", lw=0.8, color="k", alpha=0.4)
        a.set_title(f"validation {title}", fontsize=10)
        a.tick_params(axis="x", labelrotation=30)
        a.grid(alpha=0.3)
        a.margins(x=0.08)  # the last validation's star is not cut by the panel's edge
    fig.supxlabel("training step" + (" (dotted: end of an epoch)" if len(ends) else "") if x == "step" else "epoch",
                  fontsize=10)
    legend_below(fig, *ax[0].get_legend_handles_labels())  # under the step label: over no curve or dashed line
    return checked(fig)


# the discriminator's BCE / least-squares loss when it cannot tell real from generated (D outputs 0.5 everywhere)
BALANCED_LOSS = {"vanilla": float(np.log(2)), "lsgan": 0.25}


def _ends(series: pd.Series) -> tuple[float, float]:
    """Mean of the first and of the last tenth of a logged loss (at least one row each): start and end values
    that one noisy step does not decide."""
    s = series.dropna()
    k = max(1, len(s) // 10)
    return float(s.iloc[:k].mean()), float(s.iloc[-k:].mean())


def _moved(a: float, b: float) -> str:
    if f"{a:.2f}" == f"{b:.2f}":
        return f"stayed at {a:.2f}"
    if abs(b - a) <= 0.1 * max(abs(a), abs(b), 1e-9):
        return f"stayed near {a:.2f} (from {a:.2f} to {b:.2f})"
    return f"{'rose' if b > a else 'fell'} from {a:.2f} to {b:.2f}"


def loss_summary(run_dir: str | Path) -> str:
    """What the loss curves of a cGAN run show, in one Markdown paragraph read from its ``log.csv`` (numbers: the
    mean of the first and of the last tenth of the logged steps) and ``params.yaml`` (the GAN loss, the L1 weight):
    whether the discriminator wins (its loss falls towards 0 while the generator's adversarial loss climbs: it tells
    the generated images apart), the generator fools it, or the two stay balanced near the loss of a discriminator
    that cannot tell (log 2 = 0.69 for the BCE loss); and how the L1 term moved."""
    import yaml

    run_dir = Path(run_dir)
    log = pd.read_csv(run_dir / "log.csv")
    if log.empty or "loss_d" not in log or "loss_g_gan" not in log:
        return "No losses logged (`log.csv` is empty)."
    params_path = run_dir / "params.yaml"
    params = (yaml.safe_load(params_path.read_text()) or {}) if params_path.is_file() else {}
    mode = str(params.get("gan_mode", "vanilla"))
    ref = BALANCED_LOSS.get(mode, BALANCED_LOSS["vanilla"])
    d0, d1 = _ends(log["loss_d"])
    g0, g1 = _ends(log["loss_g_gan"])
    steps = f"steps {int(log['step'].iloc[0])} to {int(log['step'].iloc[-1])}"
    head = (f"Over {steps}, the discriminator's loss {_moved(d0, d1)} and the generator's adversarial loss "
            f"{_moved(g0, g1)} (means of the first and last tenth of `log.csv`; a discriminator that cannot tell real "
            f"from generated scores {ref:.2f} with the {'BCE' if mode == 'vanilla' else mode} loss).")
    if d1 < 0.5 * ref and g1 > 2 * ref:
        verdict = (" **The discriminator wins**: it tells the generator's images from real ones, so they are told "
                   "apart, and the adversarial term pushes the generator without fooling the discriminator.")
    elif d1 > 1.5 * ref or g1 < 0.5 * ref:
        verdict = (" **The generator fools the discriminator** (or the discriminator gave up): the adversarial term "
                   "no longer tells the generator much.")
    else:
        verdict = " **The two stay balanced**: neither network wins."
    tail = ""
    if "loss_g_l1" in log:
        l0, l1 = _ends(log["loss_g_l1"])
        tail = f" The L1 term {_moved(l0, l1)}"
        lam = params.get("lambda_l1")
        if lam:
            from stsynth_lib.book.report_format import fmt_value

            share = lam * l1 / (lam * l1 + g1) if lam * l1 + g1 > 0 else float("nan")
            pct = "more than 99 %" if share > 0.99 else f"{share:.0%}"
            tail += (f"; weighted by {fmt_value(float(lam))}, it makes {pct} of the generator's loss at the end"
                     + (", so L1, not the discriminator, shapes the images" if share > 0.9 else ""))
        tail += "."
    return head + verdict + tail


def _start_name(run_dir: str | Path) -> str:
    """What a residual generator of this run starts from (its change scaled by 0): from ``model.yaml``."""
    import yaml

    path = Path(run_dir) / "model.yaml"
    spec = yaml.safe_load(path.read_text()) if path.is_file() else {}
    if spec.get("temporal_fusion") == "attention":
        return "blend of the past frames"
    base = (spec.get("guidance") or {}).get("residual_base")
    if spec.get("temporal_fusion") == "tile_reweight":
        return f"{ {'linear': 'linear blend', 'seasonal': 'seasonal blend'}.get(base, 'past image')} reweighted per tile"
    if base == "seasonal":
        return "seasonal blend"
    if base == "linear":
        return "linear blend of the past frames (fitted on train)"
    return "persistence"


def plot_residual_calibration(run_dir: str | Path):
    """Area-balanced validation L1 against the change scale (``best/residual_scale.csv``); None if not calibrated."""
    import matplotlib.pyplot as plt

    path = Path(run_dir) / "best" / "residual_scale.csv"
    if not path.is_file():
        return None
    t = pd.read_csv(path)
    chosen = t[t["chosen"]].iloc[0]
    fig, ax = plt.subplots(figsize=(BOOK_WIDTH_IN, 3.9))
    for g, label in ((1.0, "same scale at every gap"), (float(chosen["full_gap_months"]), None)):
        sub = t[t["full_gap_months"] == g]
        if label is None:
            if g == 1.0:
                continue
            label = f"scale x min(1, gap / {g:.0f} months) (chosen)"
        ax.plot(sub["residual_scale"], sub["val_l1_area_mean"], "o-", ms=3, label=label)
    ax.axhline(t.loc[t["residual_scale"] == 0, "val_l1_area_mean"].iloc[0], ls="--", color="gray", label=f"{_start_name(run_dir)} (scale 0)")
    ax.plot(chosen["residual_scale"], chosen["val_l1_area_mean"], "*", ms=14, color="gold", label="chosen")
    ax.set_xlabel("scale of the predicted change")
    ax.set_ylabel("val L1, mean over areas")
    ax.set_title("Calibration on the validation split")
    ax.grid(alpha=0.3)
    legend_below(fig, *ax.get_legend_handles_labels(), ncol=2, ax=ax)  # the axes' own legend, under it
    return checked(fig)


def show_samples(run_dir: str | Path, which: int | str = "last"):
    """Show a saved sample grid (``"last"``, ``"first"`` or a step): its columns (:func:`sample_grid_columns`)."""
    import matplotlib.pyplot as plt
    from PIL import Image

    from stsynth_lib.runs import sample_grid_path

    path = sample_grid_path(run_dir, which)
    with Image.open(path) as im:
        img = np.asarray(im)
        cols = im.info.get("columns", "past|future mask|generated|truth").split("|")  # grids before: 4 columns
    fig, ax = plt.subplots(figsize=(BOOK_WIDTH_IN, BOOK_WIDTH_IN * img.shape[0] / img.shape[1] + 0.4))
    ax.imshow(img)
    w = img.shape[1] / len(cols)
    ax.set_xticks([w * (i + 0.5) for i in range(len(cols))],
                  [c + " (magenta: invalid)" if c == "truth" else c for c in cols])
    ax.set_yticks([])
    ax.set_title(f"{path.stem} (validation pairs)", fontsize=10)
    fig.tight_layout()
    return checked(fig)


def plot_attention(model, condition: torch.Tensor, batch: Mapping[str, Any], n: int = 3, levels: tuple[int, ...] | None = None):
    """Attention maps of an :class:`AttentionUNetGenerator` overlaid on the past image, one row per pair, under a
    heading that names the pair (its area, dates and gap where the batch has them), the panels filling the width.

    Columns: past image, future mask (labelled pairs only), then one overlay per gate (finest first; ``levels``
    picks some).
    Bright = the gate passes the skip feature (the decoder copies detail from the past image there).
    """
    from stsynth_lib.data.plots import pair_heading
    from stsynth_lib.models.attention_unet import attention_maps

    maps = attention_maps(model, condition)
    levels = tuple(range(len(maps))) if levels is None else levels
    n = min(n, condition.shape[0])
    labelled = _labelled(batch, n)  # no labels: no all-black mask column
    first = 2 if labelled else 1
    titles = ["past"] + (["future mask"] if labelled else []) + [
        f"gate {lv}\n({condition.shape[-1] // 2 ** (lv + 1)} px)" for lv in levels]
    fig, axes = headed_rows(n, first + len(levels), [pair_heading(batch, i) for i in range(n)], [titles], 0.75)
    for i in range(n):
        past = to_uint8(batch["past"][i][:3]).transpose(1, 2, 0)
        axes[i][0].imshow(past)
        if labelled:
            show_mask(axes[i][1], batch["future_mask"][i, 0].cpu().numpy())
        for c, lv in enumerate(levels):
            axes[i][first + c].imshow(past)
            im = axes[i][first + c].imshow(maps[lv][i, 0].cpu(), cmap="magma", alpha=0.6, vmin=0, vmax=1)
    colorbar_below(fig, im, "attention (bright: the gate passes the past image's detail)")
    return checked(fig)


def _labelled(batch: Mapping[str, Any], n: int) -> bool:
    """Whether any of the batch's first ``n`` pairs has building labels (a batch without ``has_mask``: yes)."""
    if "has_mask" not in batch:
        return True
    return bool(torch.as_tensor(batch["has_mask"])[:n].any())


def sample_grid_columns(batch: Mapping[str, Any], n_rows: int = 4) -> list[str]:
    """The columns :func:`sample_grid` draws for ``batch``: the future mask only when a shown pair is labelled."""
    return ["past"] + (["future mask"] if _labelled(batch, n_rows) else []) + ["generated", "truth"]


def sample_grid(batch: Mapping[str, Any], generated: torch.Tensor, n_rows: int = 4) -> np.ndarray:
    """``(rows*H, cols*W, 3)`` uint8 grid: past | future mask (labelled pairs only) | generated | truth (invalid truth
    pixels magenta); :func:`sample_grid_columns` names the columns."""
    n = min(n_rows, generated.shape[0])
    labelled = _labelled(batch, n)
    rows = []
    for i in range(n):
        past = to_uint8(batch["past"][i][:3]).transpose(1, 2, 0)
        mask = (batch["future_mask"][i, 0].float().cpu().numpy() * 255).astype(np.uint8)
        mask = np.repeat(mask[:, :, None], 3, 2)
        gen = to_uint8(generated[i][:3]).transpose(1, 2, 0)
        truth = to_uint8(batch["future"][i][:3]).transpose(1, 2, 0).copy()
        invalid = batch["valid"][i, 0].cpu().numpy() < 0.5
        truth[invalid] = (255, 0, 255)
        rows.append(np.concatenate([past] + ([mask] if labelled else []) + [gen, truth], 1))
    return np.concatenate(rows, 0)


def save_grid(grid: np.ndarray, path: Path, columns: Sequence[str] | None = None) -> Path:
    """Write ``grid`` as a PNG atomically; ``columns`` (the grid's column names) go into its text chunk, where
    :func:`show_samples` reads them."""
    from PIL import Image, PngImagePlugin

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    info = PngImagePlugin.PngInfo()
    if columns:
        info.add_text("columns", "|".join(columns))
    Image.fromarray(grid).save(tmp, format="PNG", pnginfo=info)
    tmp.replace(path)
    return path


def _fusion_pairs(model, fusion: str, caller: str, dataset, guidance, indices, n: int):
    """``(indices, batch, condition)`` of the pairs a figure of a ``temporal_fusion: <fusion>`` generator shows
    (``indices`` None: the first ``n`` pairs whose frames are all present), the condition on the model's device."""
    from stsynth_lib.conditioning import build_condition
    from stsynth_lib.data.plots import pairs_with_full_context
    from stsynth_lib.evaluate.generator import dataset_for_guidance
    from stsynth_lib.training import collate

    if getattr(model, "fusion", None) != fusion:
        raise ValueError(f"{caller} needs a generator trained with temporal_fusion: {fusion}")
    ds = dataset_for_guidance(dataset, guidance)
    indices = pairs_with_full_context(ds, n, search=100) if indices is None else indices
    if not len(indices):
        raise ValueError("the dataset has no pairs: nothing to show")
    batch = collate([ds[int(i)] for i in indices])
    p0 = next(model.parameters())
    return indices, batch, build_condition(batch, guidance).to(device=p0.device, dtype=p0.dtype)


@torch.no_grad()
def plot_frame_weights(model, dataset, guidance, indices=None, n: int = 2):
    """What a ``temporal_fusion: attention`` generator takes from each past frame: per pair (row pairs), the frames
    it saw (absent or wholly invalid ones grey) with their mean weight, under them the per-pixel weight maps (0-1),
    then the blend it starts from, its output and the truth, under a heading naming the pair. ``indices`` None: the
    first ``n`` pairs whose frames are all present."""
    from stsynth_lib.data.plots import pair_heading

    indices, batch, x = _fusion_pairs(model, "attention", "plot_frame_weights", dataset, guidance, indices, n)
    was = model.training
    model.eval()
    tags, w = model.frame_weights(x)
    start, out = model.residual_start(x), model(x)
    model.train(was)
    x, w, start, out = x.float().cpu(), w.float().cpu(), start.float().cpu(), out.float().cpu()
    frames = model.blend.frames  # each frame's bands and validity plane in the condition, in the weights' order
    k, names = len(frames), _frame_names(guidance, tags)
    titles = [[f"{names[j]}\n{float(w[r, j].mean()):.2f}" for j in range(k)] + ["blend\n(start)", "generated", "truth"]
              for r in range(len(indices))]
    heads = [h for r in range(len(indices)) for h in (pair_heading(batch, r), None)]  # a heading over each pair
    fig, axes = headed_rows(2 * len(indices), k + 3, heads, [t for row in titles for t in (row, None)], 0.75, 0.5)
    for r in range(len(indices)):
        top, bottom = axes[2 * r], axes[2 * r + 1]
        for j, f in enumerate(frames):
            present = f["valid"] is None or bool(x[r, f["valid"]].max() > 0.5)
            top[j].imshow(to_uint8(x[r, f["bands"][:3]]).transpose(1, 2, 0) if present else
                          np.full(tuple(x.shape[-2:]) + (3,), 200, np.uint8))
            im = bottom[j].imshow(w[r, j].numpy(), cmap="viridis", vmin=0, vmax=1)
        for j, img in enumerate([start[r], out[r], batch["future"][r]]):
            top[k + j].imshow(to_uint8(img[:3].float().clamp(-1, 1)).transpose(1, 2, 0))
    colorbar_below(fig, im, "weight of the frame (the row under its image)")
    fig.suptitle("Weight of each past frame per pixel (number: its mean; the weights sum to 1)\n" + FRAME_NOTE,
                 fontsize=10, y=1 - 0.05 / fig.get_figheight(), va="top")
    return checked(fig)


FRAME_NOTE = "(t0-k: k months before the past image t0; t1-k: k months before the target t1)"


def _frame_names(guidance, tags: Sequence[str]) -> list[str]:
    """Short names of the frames ``tags`` (channel tags, ``bias`` kept): the context strip's ``t0-1``, ``t1-12``
    (not ``last_year-1``, too long to sit side by side under bars)."""
    from stsynth_lib.conditioning import context_tag
    from stsynth_lib.data.plots import short_offset_label

    names = {context_tag(o): short_offset_label(o) for o in guidance.context_offsets_months or () if o != 0}
    return [names.get(t, t.replace("ctx_", "")) for t in tags]


def _base_frame_weights(guidance, gap: float, tags: list[str]) -> np.ndarray:
    """The residual base's weights of the frames ``tags`` (and its bias last): the linear start's at the fitted gap
    nearest ``gap`` (with ``linear_centre: tile_mean``, each frame's weight plus its share of the centre, the
    frames' mean colour); the seasonal blend's 0.5 / 0.5 (where last year's frame is usable); the past image's 1."""
    from stsynth_lib.conditioning import context_tag

    if guidance.residual_base == "linear":
        _, w, b = min(guidance.linear_base, key=lambda row: abs(row[0] - gap))
        if guidance.linear_centre == "tile_mean":  # the centre (mean of the frames) counted as a share of each frame
            w = np.asarray(w) + (1 - sum(w)) / len(w)
        by_tag = {"past" if o == 0 else context_tag(o): v for o, v in zip(guidance.context_offsets_months, w)}
        return np.array([by_tag.get(t, 0.0) for t in tags] + [b])
    by_tag = {"past": 0.5, "ctx_last_year": 0.5} if guidance.residual_base == "seasonal" else {"past": 1.0}
    return np.array([by_tag.get(t, 0.0) for t in tags] + [0.0])


@torch.no_grad()
def plot_tile_weights(model, dataset, guidance, indices=None, n: int = 3):
    """What a ``temporal_fusion: tile_reweight`` generator changed in its start: per pair (row), the weight of each
    past frame and the bias in the residual base (the linear start fitted on train for the pair's gap, the seasonal
    blend or the past image), and in the tile's own start
    (the mean over bands), then that start, the output and the truth. ``indices`` None: the first ``n`` pairs whose
    frames are all present."""
    import matplotlib.pyplot as plt

    indices, batch, x = _fusion_pairs(model, "tile_reweight", "plot_tile_weights", dataset, guidance, indices, n)
    was = model.training
    model.eval()
    tags, changes = model.tile_changes(x)
    start, out = model.residual_start(x).float().cpu(), model(x).float().cpu()
    model.train(was)
    changes = changes.float().cpu().mean(2).numpy()  # (B, K + 1): band mean
    if getattr(model, "centre_inputs", False):  # the changes act on frame - m: count m as a share of each frame
        changes[:, :-1] -= changes[:, :-1].mean(1, keepdims=True)
    fig, axes = plt.subplots(len(indices), 4, figsize=(BOOK_WIDTH_IN, 2.3 * len(indices) + 1.1), squeeze=False,
                             gridspec_kw={"width_ratios": [4, 1, 1, 1]})
    pos = np.arange(len(tags))
    for r, row in enumerate(axes):
        fitted = _base_frame_weights(guidance, float(batch["gap_months"][r]), tags[:-1])
        row[0].bar(pos - 0.2, fitted, 0.4, label=f"{guidance.residual_base} start" + (
            " fitted on train (this gap)" if guidance.residual_base == "linear" else ""), color="0.6")
        row[0].bar(pos + 0.2, fitted + changes[r], 0.4, label="this tile", color="tab:blue")
        row[0].axhline(0, color="k", lw=0.5)
        row[0].set_xticks(pos, _frame_names(guidance, tags), fontsize=9)  # short: side by side, unrotated
        row[0].set_title(f"{batch['aoi'][r]}\n+{plural(int(batch['gap_months'][r]), 'month')}", fontsize=9)
        for a, img, title in ((row[1], start[r], "tile's start"), (row[2], out[r], "generated"),
                              (row[3], batch["future"][r], "truth")):
            a.imshow(to_uint8(img[:3].float().clamp(-1, 1)).transpose(1, 2, 0))
            a.set_title(title, fontsize=9)
            a.axis("off")
    fig.suptitle("Per-tile reweighting: the weight of each past frame (band mean) and the bias\n" + FRAME_NOTE,
                 fontsize=10)
    legend_below(fig, *axes[0, 0].get_legend_handles_labels(), ncol=2)
    return checked(fig)


def plot_start_weights(model, dataset, guidance, n: int | None = None):
    """What a generator with its own start takes from each past frame: :func:`plot_frame_weights` for
    ``temporal_fusion: attention`` (``n`` default 2 pairs), :func:`plot_tile_weights` for ``tile_reweight`` (3)."""
    fusion = getattr(model, "fusion", None)
    if fusion == "attention":
        return plot_frame_weights(model, dataset, guidance, n=n or 2)
    if fusion == "tile_reweight":
        return plot_tile_weights(model, dataset, guidance, n=n or 3)
    raise ValueError(f"plot_start_weights needs a generator trained with temporal_fusion: attention or tile_reweight, "
                     f"not {fusion or 'concat'}")


def plot_erased_buildings(dataset, fraction: float, n: int = 4, seed: int = 0):
    """What ``erase_building_fraction`` shows the generator: per row, a training pair's past image, the same image
    with a share of its standing buildings erased (their footprints outlined), and the future it must draw them in.

    Picks the ``n`` pairs (of a seeded sample) with the most building pixels, so that there is something to erase.
    """
    import matplotlib.pyplot as plt

    from stsynth_lib.cgan.augment import erase_buildings
    from stsynth_lib.training import collate

    rng = np.random.default_rng(seed)
    labelled = np.flatnonzero(dataset.pairs["has_mask"].to_numpy(bool))
    if len(labelled) == 0:
        raise ValueError("erase_building_fraction needs labelled pairs (building footprints); this split has none")
    cand = rng.choice(labelled, size=min(len(labelled), 8 * n), replace=False)
    samples = [dataset[int(i)] for i in cand]
    order = np.argsort([-float(s["past_mask"].sum()) for s in samples])[:n]
    batch = collate([samples[i] for i in order])
    out = erase_buildings(batch, torch.Generator().manual_seed(seed), fraction)
    erased = (batch["past_mask"] > 0.5) & ~(out["past_mask"] > 0.5)
    fig, axes = plt.subplots(len(order), 3, figsize=(BOOK_WIDTH_IN, 2.5 * len(order)), squeeze=False)
    titles = ("past image", f"past, buildings erased\n(p = {fraction:g})", "future (target)")
    for r in range(len(order)):
        for c, img in enumerate((batch["past"][r], out["past"][r], batch["future"][r])):
            ax = axes[r, c]
            ax.imshow(to_uint8(img[:3]).transpose(1, 2, 0))
            if c == 1:
                ax.contour(erased[r, 0].numpy().astype(float), levels=[0.5], colors="cyan", linewidths=0.6)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=9)
    fig.suptitle("Synthetic construction: erased footprints (cyan) are new\nbuildings for the generator to draw",
                 fontsize=10)
    fig.tight_layout()
    return checked(fig)
