"""Figures of footprint-guided synthesis: where new buildings were asked for, and what each model drew there."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from stsynth_lib.book.report_format import model_display_name, plural, wrap_name
from stsynth_lib.evaluate.data import METRICS, PERSISTENCE, UPPER_BOUND, EvalResult, gap_bucket_order, model_style
from stsynth_lib.evaluate.report import rgb_image
from stsynth_lib.evaluate.stats import short_area_names
from stsynth_lib.figure_check import BOOK_WIDTH_IN, checked, grid_shape, image_rows, legend_below, panel_grid, show_mask


def new_building_pixels(res: EvalResult) -> np.ndarray:
    """Per pair: valid pixels built at t1 and not at t0 (0 for pairs without labels)."""
    d = res.data
    new = (d.future_mask[:, 0] > 0) & (d.past_mask[:, 0] == 0) & (d.valid[:, 0] > 0)
    return np.where(d.has_mask, new.reshape(len(d), -1).sum(1), 0)


def footprint_picture(d, i: int) -> tuple[np.ndarray, np.ndarray]:
    """(the new-building pixels of pair ``i``: built at t1, not at t0; its footprint panel (H, W, 3): buildings that
    already stood white, new ones orange)."""
    new = (d.future_mask[i, 0] > 0) & (d.past_mask[i, 0] == 0)
    mask_rgb = np.zeros((*new.shape, 3))
    mask_rgb[d.future_mask[i, 0] > 0] = 1.0
    mask_rgb[new] = (1.0, 0.55, 0.0)
    return new, mask_rgb


def pair_header(p) -> str:
    """A pair's header over its panels (``p``: its row of ``pairs``): "<area>: <t0> → <t1>, gap <n> months"."""
    dates = (f"{int(p['past_year'])}-{int(p['past_month']):02d} → {int(p['future_year'])}-{int(p['future_month']):02d}"
             if "past_year" in p else f"pair {p['pair_id']}")
    area = f"{short_area_names([p['aoi']])[str(p['aoi'])]}: " if "aoi" in p else ""  # the id without its tile suffix
    return f"{area}{dates}, gap {plural(round(float(p['gap_months'])), 'month')}"


def pick_new_building_pairs(res: EvalResult, n: int = 4, min_gap_months: int = 6) -> list[int]:
    """Indices of ``n`` pairs with the most new-building pixels, at most one per tile position and past month
    (so the rows show different places), preferring gaps of at least ``min_gap_months``."""
    count = new_building_pixels(res)
    pairs = res.data.pairs
    order = np.lexsort((-count, -(pairs["gap_months"].to_numpy() >= min_gap_months).astype(int)))
    place = (pairs["aoi"].astype(str) + "/" + pairs["row_off"].astype(str) + "-" + pairs["col_off"].astype(str)
             if "row_off" in pairs else pairs["pair_id"].astype(str))
    seen, picks = set(), []
    for i in order:
        if count[i] == 0 or place.iloc[i] in seen:
            continue
        seen.add(place.iloc[i])
        picks.append(int(i))
        if len(picks) == n:
            break
    return picks


def plot_new_buildings(res: EvalResult, models: Sequence[str] | None = None, n: int = 4, indices: Sequence[int] | None = None,
                       title: str | None = None):
    """Test pairs with the most new buildings, each under a header (area, dates, gap): past | future mask | truth |
    each model, spread evenly over lines of at most five panels (:func:`panel_grid`). The new buildings (footprints
    at t1 that were not built at t0) are outlined in every image panel, and drawn orange in the mask panel (buildings
    that already stood are white). Returns the figure, or ``None`` when no pair has labelled new buildings."""
    idx = list(indices) if indices is not None else pick_new_building_pairs(res, n)
    if not idx:
        return None
    names = [m for m in (models or res.predictions) if m not in (PERSISTENCE, UPPER_BOUND) and m in res.predictions]
    d = res.data
    labelled = bool(np.asarray(d.has_mask)[idx].any())  # no labels: no (all-black) footprint column
    _, _, chars = grid_shape(len(names) + 2 + labelled, 5)
    shown = [wrap_name(model_display_name(m, res.labels) if res.labels else m, chars) for m in names]
    cols = ["past (=\npersistence)"] + (["future\nfootprints"] if labelled else []) + ["truth\n(future)"] + shown
    pictures = [footprint_picture(d, i) for i in idx]
    headers = [pair_header(d.pairs.iloc[i]) + (f", {plural(int(new.sum()), 'new-building pixel')}" if labelled else "")
               for i, (new, _) in zip(idx, pictures)]
    fig, axes = panel_grid(len(idx), 5, cols, headers, title or (
        "New buildings (cyan outline; orange in the footprint panel):\nasked for by the future mask, absent from the "
        "past image"))
    for r, (i, (new, mask_rgb)) in enumerate(zip(idx, pictures)):
        panels = [rgb_image(d.past[i])] + ([mask_rgb] if labelled else []) + [rgb_image(d.future[i])]
        panels += [rgb_image(res.predictions[m][i]) if res.available[m][i] else np.zeros_like(panels[0]) for m in names]
        for c, img in enumerate(panels):
            ax = axes[r][c]
            if labelled and c == 1:
                show_mask(ax, img, "no building\nin the footprints")
            else:
                ax.imshow(img)
            if not (labelled and c == 1) and new.any():
                ax.contour(new.astype(float), levels=[0.5], colors=["#00e5ff"], linewidths=0.8)
            ax.set_title(cols[c], fontsize=9)  # every item's: an item's panels may span lines
    return checked(fig)


def plot_examples(res: EvalResult, models: Sequence[str] | None = None, n: int = 4):
    """The same layout as :func:`plot_new_buildings` (past | footprints | truth | each model and baseline) on ``n``
    evenly spread pairs of the split: for data without building labels, or to show ordinary pairs."""
    from stsynth_lib.training import spread_indices

    idx = [int(i) for i in spread_indices(len(res.data), min(n, len(res.data)))]
    return plot_new_buildings(res, models, indices=idx,
                              title="Test pairs: past | future footprints (where labelled) | truth |\neach model "
                                    "and baseline") if idx else None


def landing_model(res: EvalResult, exclude: Sequence[str] = ()) -> str | None:
    """The learned model the landing figure shows: the one with the highest mean PSNR on the scored pairs (baselines,
    the real future and ``exclude``, e.g. the no-mask twins, left out); None when no learned model was scored."""
    from stsynth_lib.baselines import is_baseline

    df = res.per_tile[res.per_tile["common"]] if "common" in res.per_tile else res.per_tile
    skip = set(exclude)
    means = df[~df["model"].map(lambda m: is_baseline(m) or m == UPPER_BOUND or m in skip)].groupby("model")["psnr"].mean()
    means = means[means.index.isin(list(res.predictions))].dropna()
    return str(means.idxmax()) if len(means) else None


def change_pairs(res: EvalResult, n: int = 3, quantiles: Sequence[float] = (0.6, 0.75, 0.9)) -> list[int]:
    """``n`` pairs that show change without hand-picking: the pairs with the most new-building pixels where the split
    is labelled (:func:`pick_new_building_pairs`), else the pairs at the ``quantiles`` of the true change (mean
    |truth - past| over valid pixels): changed enough to see, short of the largest changes (mostly clouds)."""
    picks = pick_new_building_pairs(res, n)
    if picks:
        return picks
    d = res.data
    change = np.abs(d.future.astype(np.float32) - d.past.astype(np.float32)).mean(1) * (d.valid[:, 0] > 0)
    score = change.reshape(len(d), -1).sum(1) / np.maximum((d.valid[:, 0] > 0).reshape(len(d), -1).sum(1), 1)
    order = np.argsort(score, kind="stable")
    out: list[int] = []
    for q in list(quantiles)[:n]:
        i = int(order[min(int(round(q * (len(order) - 1))), len(order) - 1)])
        if i not in out:
            out.append(i)
    return out


def plot_landing_example(res: EvalResult, model: str | None = None, n: int = 3, fontsize: float = 12.0,
                         exclude: Sequence[str] = ()):
    """What the system does, in one figure for the landing page: per pair, past | future footprints (labelled data
    only) | truth | the model | the true change | the model's change. The change panels are the mean over bands of
    |image - past| on one colour scale per row (black: unchanged), so a prediction that only copies the past shows a
    black last panel. ``model`` defaults to :func:`landing_model` (without ``exclude``); rows from
    :func:`change_pairs`. Returns None
    without a learned model or a pair."""
    import matplotlib.pyplot as plt

    model = model or landing_model(res, exclude)
    idx = change_pairs(res, n) if model else []
    if not idx:
        return None
    d = res.data
    labelled = bool(np.asarray(d.has_mask)[idx].any())
    name = model_display_name(model, res.labels) if res.labels else model
    cols = ["past"] + (["future\nfootprints"] if labelled else []) + ["truth\n(future)", wrap_name(name, 10),
                                                                      "true\nchange", "model's\nchange"]
    fig, axes = image_rows(len(idx), len(cols), max_cols=7, title_in=0.2, extra_in=1.2)
    for r, i in enumerate(idx):
        past = d.past[i].astype(np.float32)
        pred = res.predictions[model][i]
        true_change = np.abs(d.future[i].astype(np.float32) - past).mean(0) / 255.0
        model_change = np.abs(pred.astype(np.float32) - past).mean(0) / 255.0
        vmax = max(float(np.quantile(true_change, 0.99)), 1e-3)
        new, mask_rgb = footprint_picture(d, i)
        panels = [rgb_image(d.past[i])] + ([mask_rgb] if labelled else []) + [rgb_image(d.future[i]), rgb_image(pred)]
        for c, img in enumerate(panels + [true_change, model_change]):
            ax = axes[r][c]
            if c >= len(panels):
                ax.imshow(img, cmap="magma", vmin=0, vmax=vmax)
            elif labelled and c == 1:
                show_mask(ax, img, "no building", fontsize=fontsize)
            else:
                ax.imshow(img)
            if new.any() and not (labelled and c == 1):
                ax.contour(new.astype(float), levels=[0.5], colors=["#00e5ff"], linewidths=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(cols[c], fontsize=fontsize)
        p = d.pairs.iloc[i]
        gap = plural(round(float(p["gap_months"])), "month")
        axes[r][0].set_ylabel(f"gap {gap}", fontsize=fontsize)
    fig.suptitle("Change panels: mean |image - past| over bands,\none scale per row (black: unchanged)"
                 + ("; cyan: new buildings" if labelled else ""), fontsize=fontsize)
    fig.tight_layout()
    return checked(fig)


def save_figure_png(fig, path, max_kb: int = 400, dpis: Sequence[int] = (100, 80, 64, 50, 40)):
    """Save ``fig`` as a PNG at ``path``, under ``max_kb`` KB (the book's landing page embeds it): the highest of
    ``dpis`` whose file fits, first as full colour, then as a 256-colour palette PNG (satellite tiles are noisy and
    compress poorly). Returns the path; raises when even the lowest dpi does not fit."""
    import io
    from pathlib import Path

    from PIL import Image

    from stsynth_lib.book.publish.reference import encode_png

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    limit = max_kb * 1024
    for dpi in dpis:
        buf = io.BytesIO()
        fig.savefig(buf, dpi=dpi, format="png", facecolor="white")
        if buf.tell() <= limit:
            path.write_bytes(buf.getvalue())
            return path
        with Image.open(io.BytesIO(buf.getvalue())) as img:
            out = encode_png(img, palette=True)
        if len(out) <= limit:
            path.write_bytes(out)
            return path
    raise ValueError(f"{path}: over {max_kb} KB even at {dpis[-1]} dpi as a palette PNG")


def plot_gain_by_gap(table, metric: str = "psnr", labels=None, title: str | None = None):
    """One panel per baseline: each model's paired difference to it per time-gap bucket (a
    :func:`~stsynth_lib.evaluate.stats.paired_gain_by_gap` table), with its resampled-area interval; above the zero
    line the model is better on a higher-is-better metric. Returns the figure, or None for an empty table."""
    import matplotlib.pyplot as plt

    if table is None or len(table) == 0:
        return None
    bases = list(dict.fromkeys(table["baseline"]))
    order = [b for b in gap_bucket_order() if b in set(table["gap_bucket"])]
    fig, axes = plt.subplots(len(bases), 1, figsize=(BOOK_WIDTH_IN, 2.6 * len(bases) + 1.6), squeeze=False,
                             sharex=True, sharey=True)
    unit = METRICS.get(metric, (None, metric))[1]
    for ax, base in zip(axes[:, 0], bases):
        g = table[table["baseline"] == base]
        models = list(dict.fromkeys(g["model"]))
        width = 0.8 / max(len(models), 1)
        for j, m in enumerate(models):
            r = g[g["model"] == m].set_index("gap_bucket").reindex(order)
            x = np.arange(len(order)) + (j - (len(models) - 1) / 2) * width
            lo = (r["mean_diff"] - r["ci_lo"]).clip(lower=0).fillna(0)
            hi = (r["ci_hi"] - r["mean_diff"]).clip(lower=0).fillna(0)
            ax.errorbar(x, r["mean_diff"], yerr=[lo, hi], ls="none", capsize=3, **model_style(m),
                        label=wrap_name(model_display_name(m, labels), 40))
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(np.arange(len(order)), order)
        ax.set_title(f"model - {base}", fontsize=10)
        ax.set_ylabel(f"paired difference, {unit}")
        ax.grid(alpha=0.3)
    axes[-1][0].set_xlabel("time gap t1 - t0 (months)")
    fig.suptitle(title or f"Where the gain comes from: {unit} difference to each baseline\nper time gap "
                          "(95 % interval, whole areas resampled)", fontsize=10)
    legend_below(fig, *axes[0][0].get_legend_handles_labels(), ncol=2)
    return checked(fig)


def plot_gain_by_area(table, metric: str = "psnr", labels=None, title: str | None = None):
    """One panel per baseline, side by side: each model's mean paired difference to it per area (a
    :func:`~stsynth_lib.evaluate.stats.paired_gain_by_area` table), one row per area named on the shared y axis with
    its persistence level in brackets, the least stable area at the top, so an area that carries a loss (or a win)
    stands out. Area names: :func:`~stsynth_lib.evaluate.stats.short_area_names`; models: one marker each, offset
    within the area's row. Returns the figure, or None for an empty table."""
    import matplotlib.pyplot as plt

    if table is None or len(table) == 0:
        return None
    bases, models = list(dict.fromkeys(table["baseline"])), list(dict.fromkeys(table["model"]))
    level = table.groupby("aoi")["persistence"].first().sort_values(kind="stable")
    short, row = short_area_names(level.index), {a: k for k, a in enumerate(level.index)}
    unit = METRICS.get(metric, (None, metric))[1]
    row_in = max(0.3, 0.06 * len(models) + 0.1)  # room for every model's marker in an area's row
    # at least 3.4 in: with one or two areas the two-line title, the axes and the legend below still need their room
    fig, axes = plt.subplots(1, len(bases), figsize=(BOOK_WIDTH_IN, max(3.4, row_in * len(level) + 2.2)), squeeze=False,
                             sharey=True)
    for ax, base in zip(axes[0], bases):
        g = table[table["baseline"] == base]
        for j, m in enumerate(models):
            r = g[g["model"] == m]
            ax.plot(r["mean_diff"], r["aoi"].map(row) + (j - (len(models) - 1) / 2) * 0.7 / len(models), ls="none",
                    **model_style(m), alpha=0.85,
                    label=wrap_name(model_display_name(m, labels), 40))
        ax.hlines(np.arange(1, len(level)) - 0.5, 0, 1, transform=ax.get_yaxis_transform(), color="0.88", lw=0.6,
                  zorder=0)  # a line between two areas' rows
        ax.axvline(0, color="k", lw=0.8)
        ax.set_title(f"model - {base}", fontsize=9)
        ax.set_xlabel(unit, fontsize=9)
        ax.tick_params(labelsize=9)
        ax.grid(axis="x", alpha=0.3)
        ax.margins(x=0.1)
    axes[0][0].set_yticks(range(len(level)), [f"{short[a]} ({v:.1f})" for a, v in level.items()])
    axes[0][0].set_ylim(len(level) - 0.5, -0.5)
    fig.suptitle(title or f"Is the gain broad? Mean {unit} difference to each baseline per area and model\n"
                          f"(areas by their persistence {unit} in brackets, least stable at the top)", fontsize=10)
    legend_below(fig, *axes[0][0].get_legend_handles_labels(), ncol=2)
    return checked(fig)


def plot_sequence_examples(res: EvalResult, models: Sequence[str] | None = None, n: int = 3,
                           indices: Sequence[int] | None = None, title: str | None = None):
    """Rows of pairs: the past sequence (the context frames scored by the baselines, with their dates; absent ones
    grey) | truth | each model and baseline. Needs ``res`` scored with context (``evaluate_models(...,
    baselines=...)``); pairs whose frames are all present are preferred, spread over the split. Each pair under a
    header (area, gap), its panels spread evenly over as few lines of at most six as hold them."""
    from stsynth_lib.data.plots import month_label, short_offset_label
    from stsynth_lib.training import spread_indices

    d = res.data
    if d.context_offsets is None or d.context_tile_ids is None:
        raise ValueError("plot_sequence_examples needs context frames: score with evaluate_models(..., "
                         "baselines=('mean_last_3', 'seasonal')) so the split is read with its past sequence")
    full = np.flatnonzero((d.context_tile_ids >= 0).all(1))
    pool = full if len(full) >= n else np.arange(len(d))
    idx = list(indices) if indices is not None else [int(pool[i]) for i in spread_indices(len(pool), min(n, len(pool)))]
    if not idx:
        return None
    names = [m for m in (models or res.predictions) if m not in (PERSISTENCE, UPPER_BOUND) and m in res.predictions]
    offsets = list(d.context_offsets)
    ctx = d.context_fields(np.asarray(idx))
    _, _, chars = grid_shape(len(offsets) + 1 + len(names), 6)
    shown = [wrap_name(model_display_name(m, res.labels) if res.labels else m, chars) for m in names]
    items = []  # (header, panels, titles) per pair
    for r, i in enumerate(idx):
        p = d.pairs.iloc[i]
        t1 = int(p["future_year"]) * 12 + int(p["future_month"])
        panels, titles = [], []
        for k, o in enumerate(offsets):
            if bool(ctx["context_present"][r, k]):
                panels.append(rgb_image(ctx["context"][r, k]))
                titles.append(f"{short_offset_label(o)}\n{month_label(t1 - int(ctx['context_age_months'][r, k]))}")
            else:
                panels.append(np.full(d.future.shape[2:] + (3,), 0.8))
                titles.append(f"{short_offset_label(o)}\nabsent")
        panels.append(rgb_image(d.future[i]))
        titles.append(f"truth\n{month_label(t1)}")
        panels += [rgb_image(res.predictions[m][i]) if res.available[m][i] else np.zeros_like(panels[-1]) for m in names]
        items.append((pair_header(p), panels, titles + shown))
    fig, axes = panel_grid(len(idx), 6, items[0][2], [it[0] for it in items],
                           title or "Test pairs: the past sequence | truth | each model and baseline")
    for row, (_, panels, titles) in zip(axes, items):
        for ax, img, t in zip(row, panels, titles):
            ax.imshow(img)
            ax.set_title(t, fontsize=9)  # every item's: the frames' dates differ, and the panels span lines
    return checked(fig)


def plot_metrics_vs_gap(res: EvalResult, metrics: Sequence[str] = ("psnr", "ssim", "lpips"), n_boot: int = 200,
                        seed: int = 0, note: str | None = None):
    """One panel per metric of ``res`` (:func:`stsynth_lib.evaluate.report.plot_metric_vs_gap`: mean per time-gap
    bucket with its 95 % band, persistence dashed) and one legend for all of them, under the panels (no legend
    covers a neighbouring panel); ``note``: a small line under the panels (e.g. where the LPIPS weights came from)."""
    import matplotlib.pyplot as plt

    from stsynth_lib.evaluate.report import plot_metric_vs_gap

    shown = [m for m in metrics if m in set(res.summary["metric"])]
    fig, axes = plt.subplots(len(shown), 1, figsize=(BOOK_WIDTH_IN, 2.6 * len(shown) + 1.8), squeeze=False,
                             sharex=True)
    for ax, metric in zip(axes[:, 0], shown):
        plot_metric_vs_gap(res, metric, n_boot=n_boot, seed=seed, ax=ax, legend=False)
        if ax is not axes[-1][0]:
            ax.set_xlabel("")
    legend_below(fig, *axes[0][0].get_legend_handles_labels(), ncol=2, note=note)
    return checked(fig)


def plot_fid_by_gap(table, calibrated: bool, note: str | None = None):
    """Chapter 7's figure: KID x 1000 (± one standard deviation over subsets) and FID per time-gap bucket, one line per
    model, persistence dashed, the number of pairs under each bucket; one legend under both panels; ``note`` (where
    the Inception weights came from) under the legend. ``table``: :func:`~stsynth_lib.evaluate.report.fid_report`'s."""
    import matplotlib.pyplot as plt

    from stsynth_lib.evaluate.data import gap_bucket_order
    from stsynth_lib.metrics import perceptual as P

    buckets = [b for b in gap_bucket_order() if b in set(table["gap_bucket"])]
    fig, axes = plt.subplots(2, 1, figsize=(BOOK_WIDTH_IN, 6.8), sharex=True, squeeze=False)
    axes = axes[:, 0]
    x = np.arange(len(buckets))
    # the names the table shows (fid_table): a ControlNet by its short name, never the bare run name "controlnet"
    labels = ({m: v for m, v in zip(table["model"], table["label"]) if isinstance(v, str) and v}
              if "label" in table else {})
    groups = list(table[table["gap_bucket"] != "all"].groupby("model", sort=False))
    for k, (name, g) in enumerate(groups):
        g = g.set_index("gap_bucket").reindex(buckets)
        style = dict(ls="--", color="k", marker="o") if name == PERSISTENCE else model_style(name)
        shown = model_display_name(name, labels)
        dx = (k - (len(groups) - 1) / 2) * 0.4 / max(1, len(groups))  # side by side: error bars apart at one gap
        axes[0].errorbar(x + dx, g["kid"] * 1000, yerr=g["kid_std"] * 1000, capsize=3, label=shown, **style)
        axes[1].plot(x, g["fid"], label=shown, **style)
    n_per_bucket = table[table["model"] == PERSISTENCE].set_index("gap_bucket")["n"]
    for ax, what in zip(axes, ("KID x1000", "FID")):
        ax.set_xticks(x, [f"{b}\n(n={n_per_bucket[b]})" for b in buckets])
        ax.set_ylabel(P.label(what, calibrated))
        ax.set_title(f"{P.label(what, calibrated)} vs time gap", fontsize=10)
        ax.grid(alpha=0.3)
    axes[1].set_xlabel("time gap t1 - t0 (months)")
    legend_below(fig, *axes[0].get_legend_handles_labels(), ncol=2, note=note)
    return checked(fig)
