"""Checks on a matplotlib figure before it is shown or saved: what the built book's HTML cannot reveal.

* :func:`check_legends` -- every legend (an axes' or the figure's) whose drawn box overlaps another axes, from the
  renderer's window extents;
* :func:`check_legend_covers_data` -- every axes legend drawn over that axes' own data (line vertices, scatter or
  errorbar points, sampled along the lines, inside its box);
* :func:`check_text_size` -- every drawn text (tick labels, titles, legends, annotations) smaller than
  :data:`MIN_TEXT_PT` once the figure is shown in the book's article column (:data:`BOOK_COLUMN_PX` wide: a wider
  figure is scaled down, and its text with it);
* :func:`checked` -- the library's plotting functions return ``checked(fig)``: the figure, with a warning per
  overlapping legend, per legend over data and per too-small text size (tests turn them into errors:
  ``pyproject.toml``);
* layout helpers: :func:`legend_below`, :func:`headed_rows`, :func:`colorbar_below`, :func:`image_rows`.

matplotlib is imported only by the figures passed in: no torch, numpy or pandas import here.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

# overlaps smaller than this many square pixels (a shared edge, antialiasing) are not reported
MIN_OVERLAP_PX2 = 4.0


# The width a cell's output image gets in the built book (sphinx-book-theme, Jupyter Book 1) at make book-check's
# 1280 px window: the article column is 740 px (stsynth_lib.book.browser.measure_page: 253..993 px), a cell output
# inside it 676 px (book-check's "figure scaled down" measured 766 px images shown at 676). Wider is scaled down.
BOOK_COLUMN_PX = 676
MIN_TEXT_PT = 9.0  # the smallest text a reader should have to read in a figure, as shown (issue 35)
CSS_PX_PER_INCH = 96.0  # how browsers map points to pixels (1 pt = 96 / 72 CSS px)
TIGHT_PAD_INCHES = 0.1  # the inline backend saves with bbox_inches="tight" and this pad
# the widest figure (inches, at matplotlib's default 100 dpi) the column shows unscaled: 10 pt text stays 10.4 pt
BOOK_WIDTH_IN = BOOK_COLUMN_PX / 100 - 2 * TIGHT_PAD_INCHES


class LegendOverlapWarning(UserWarning):
    pass


class LegendCoversDataWarning(LegendOverlapWarning):
    """A legend inside an axes drawn over that axes' data (a subclass: the tests' filter on
    :class:`LegendOverlapWarning` makes it an error too)."""


class SmallTextWarning(UserWarning):
    pass


def _name(ax, i: int) -> str:
    title = ax.get_title() or ax.get_label() or ""
    return f"axes {i}" + (f" ({title[:40]!r})" if title and not title.startswith("<") else "")


def check_legends(fig) -> list[str]:
    """One line per (legend, other axes) pair whose boxes overlap, as drawn by ``fig``'s renderer: an axes' legend
    over a neighbouring panel, a figure legend over any panel. Invisible axes are skipped; a legend over its own
    axes (or over a twin drawn in the same box, ``twinx``) is not reported (``loc="best"`` keeps it off the data)."""
    legends = [(leg, leg.axes if leg in [a.get_legend() for a in fig.axes] else None, "figure legend")
               for leg in getattr(fig, "legends", [])]
    legends += [(ax.get_legend(), ax, f"legend of {_name(ax, i)}") for i, ax in enumerate(fig.axes)
                if ax.get_legend() is not None and ax.get_legend().get_visible()]
    if not legends:
        return []
    fig.canvas.draw()  # lays out tight/constrained layouts and places loc="best" legends
    renderer = fig.canvas.get_renderer()
    out = []
    for leg, owner, what in legends:
        box = leg.get_window_extent(renderer)
        for i, ax in enumerate(fig.axes):
            if ax is owner or not ax.get_visible() or (owner is not None and _twins(ax, owner, renderer)):
                continue
            other = ax.get_window_extent(renderer)
            w = min(box.x1, other.x1) - max(box.x0, other.x0)
            h = min(box.y1, other.y1) - max(box.y0, other.y0)
            if w > 0 and h > 0 and w * h >= MIN_OVERLAP_PX2:
                out.append(f"{what} overlaps {_name(ax, i)} by {w:.0f}×{h:.0f} px")
    return out


# a legend over fewer plotted points than this (lines sampled every DATA_STEP_PX display pixels) is not reported
MIN_COVERED_POINTS = 5
DATA_STEP_PX = 4.0


def _display_points(artist, np):
    """``artist``'s data as display points (N, 2): scatter / errorbar markers as they are, a drawn line's segments
    sampled every :data:`DATA_STEP_PX` (a two-point ``axhline`` through a legend covers it too)."""
    from matplotlib.collections import LineCollection
    from matplotlib.lines import Line2D

    if isinstance(artist, Line2D):
        xy = artist.get_transform().transform_path(artist.get_path()).vertices
        drawn = artist.get_linestyle() not in ("None", "", " ", "none")
        runs, points = ([xy], [xy[-1:]]) if drawn else ([], [xy])
    elif isinstance(artist, LineCollection):  # errorbar bars, vlines/hlines
        runs = [artist.get_transform().transform(np.asarray(seg, float)) for seg in artist.get_segments() if len(seg)]
        points = [r[-1:] for r in runs]
    elif len(artist.get_offsets()):  # scatter points (PathCollection and other offset collections)
        return artist.get_offset_transform().transform(np.asarray(artist.get_offsets(), float))
    else:
        return np.zeros((0, 2))
    for xy in runs:
        a, b = xy[:-1], xy[1:]
        n = np.nan_to_num(np.ceil(np.hypot(*(b - a).T) / DATA_STEP_PX), nan=0.0).clip(0, 2000).astype(int)
        seg = np.repeat(np.arange(len(a)), n)
        if len(seg):
            t = (np.arange(len(seg)) - np.repeat(np.cumsum(n) - n, n)) / np.repeat(np.maximum(n, 1), n)
            points.append(a[seg] + (b - a)[seg] * t[:, None])
    return np.concatenate(points) if points else np.zeros((0, 2))


def check_legend_covers_data(fig, min_points: int = MIN_COVERED_POINTS, draw: bool = True) -> list[str]:
    """One line per axes legend drawn over at least ``min_points`` of its axes' plotted points (and those of a twin
    in the same box): line vertices and points sampled along drawn lines, scatter and errorbar points, in display
    coordinates, inside both the legend's box and the axes (where they are drawn). ``loc="best"`` does not promise
    a free spot; a legend outside the axes covers nothing. ``draw`` False: ``fig`` was just drawn (by
    :func:`check_legends`), legends are placed."""
    import numpy as np
    from matplotlib.collections import Collection, LineCollection, PolyCollection
    from matplotlib.lines import Line2D

    owners = [(i, ax) for i, ax in enumerate(fig.axes)
              if ax.get_visible() and ax.get_legend() is not None and ax.get_legend().get_visible()]
    if not owners:
        return []
    if draw:
        fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    out = []
    for i, ax in owners:
        box, frame = ax.get_legend().get_window_extent(renderer), ax.get_window_extent(renderer)
        x0, x1 = max(box.x0, frame.x0), min(box.x1, frame.x1)
        y0, y1 = max(box.y0, frame.y0), min(box.y1, frame.y1)
        if x0 >= x1 or y0 >= y1:
            continue
        covered = 0
        for other in (a for a in fig.axes if a is ax or _twins(a, ax, renderer)):
            for art in other.get_children():
                if not art.get_visible() or not isinstance(art, (Line2D, Collection)) or \
                        (isinstance(art, PolyCollection) and not isinstance(art, LineCollection)):
                    continue  # fill_between bands, images, patches: not counted
                xy = _display_points(art, np)
                covered += int(((xy[:, 0] > x0) & (xy[:, 0] < x1) & (xy[:, 1] > y0) & (xy[:, 1] < y1)).sum())
        if covered >= min_points:
            out.append(f"legend of {_name(ax, i)} covers {covered} plotted points of its data: put it outside the "
                       "axes (below the panels, or to the right)")
    return out


def _twins(a, b, renderer) -> bool:
    """Axes drawn in the same box (``twinx`` / ``twiny``): one panel, whose legends may sit anywhere in it."""
    ea, eb = a.get_window_extent(renderer), b.get_window_extent(renderer)
    return all(abs(u - v) < 1.0 for u, v in zip((ea.x0, ea.y0, ea.x1, ea.y1), (eb.x0, eb.y0, eb.x1, eb.y1)))


def shown_scale(fig, renderer, column_px: float = BOOK_COLUMN_PX) -> float:
    """How many CSS points one point of ``fig``'s text becomes in the book: the inline backend writes the figure's
    tight box at ``fig.dpi`` pixels per inch, the page shows one image pixel per CSS pixel up to the column's width
    and scales a wider image down to it."""
    width_px = (fig.get_tightbbox(renderer).width + 2 * TIGHT_PAD_INCHES) * fig.dpi
    return fig.dpi / CSS_PX_PER_INCH * min(1.0, column_px / max(width_px, 1.0))


def check_text_size(fig, column_px: float = BOOK_COLUMN_PX, min_pt: float = MIN_TEXT_PT) -> list[str]:
    """One line per distinct too-small size: the texts ``fig`` draws (only those drawn: an axis turned off has no
    tick labels) whose size, as the book shows the figure (:func:`shown_scale`), is under ``min_pt``. Each line names
    up to three of the texts and the font size that would pass."""
    from matplotlib.text import Text

    drawn = []
    original = Text.draw

    def recording_draw(self, renderer):
        if self.get_visible() and self.get_text().strip():
            drawn.append(self)
        return original(self, renderer)

    Text.draw = recording_draw
    try:
        fig.canvas.draw()
    finally:
        Text.draw = original
    scale = shown_scale(fig, fig.canvas.get_renderer(), column_px)
    by_size: dict[float, list[str]] = {}
    for t in drawn:
        if t.get_fontsize() * scale < min_pt:
            by_size.setdefault(float(t.get_fontsize()), []).append(t.get_text().replace("\n", " ")[:30])
    return [f"{len(names)} text(s) at {size:g} pt show at {size * scale:.1f} pt in the book (under {min_pt:g} pt: "
            f"use >= {min_pt / scale:.1f} pt or a narrower figure), e.g. {', '.join(repr(n) for n in names[:3])}"
            for size, names in sorted(by_size.items())]


def checked(fig):
    """``fig`` unchanged, after a :class:`LegendOverlapWarning` per overlap :func:`check_legends` finds, a
    :class:`LegendCoversDataWarning` per legend over its data (:func:`check_legend_covers_data`) and a
    :class:`SmallTextWarning` per size :func:`check_text_size` finds (None passes through)."""
    if fig is not None:
        for problem in check_legends(fig):
            warnings.warn(problem, LegendOverlapWarning, stacklevel=2)
        for problem in check_legend_covers_data(fig, draw=False):  # check_legends drew it
            warnings.warn(problem, LegendCoversDataWarning, stacklevel=2)
        for problem in check_text_size(fig):
            warnings.warn(problem, SmallTextWarning, stacklevel=2)
    return fig


def show_mask(ax, mask, empty_text: str = "no building here", fontsize: float = 9, **imshow_kw) -> None:
    """Draw a building mask (H, W) {0, 1} (or an (H, W, 3) mask picture) in ``ax``; an empty one becomes a light
    grey panel that says ``empty_text`` instead of an all-black square (which reads as a broken image; ``make
    book-check`` flags constant panels)."""
    import numpy as np

    m = np.asarray(mask)
    if m.size and np.any(m):
        if m.ndim == 2:
            imshow_kw = {"cmap": "gray", "vmin": 0, "vmax": 1, **imshow_kw}
        ax.imshow(m, **imshow_kw)
        return
    ax.imshow(np.full(m.shape[:2] + (3,), 0.9))
    # one word a line: a narrow panel (a gallery's) cut "no building here" at its edges
    ax.text(0.5, 0.5, "\n".join(str(empty_text).split()), transform=ax.transAxes, ha="center", va="center",
            fontsize=fontsize, color="0.3")


def image_rows(n_items: int, n_panels: int, max_cols: int = 7, title_in: float = 0.5, extra_in: float = 0.7,
               max_side_in: float = 2.3):
    """A figure for ``n_items`` rows of ``n_panels`` image panels that fits the book's column: an item with more
    than ``max_cols`` panels wraps onto further lines (panels stay at least ``BOOK_WIDTH_IN / max_cols`` wide, so
    their titles can be 9 pt), unused cells are hidden. ``title_in``: height per line for the panel titles,
    ``extra_in``: for the suptitle. Returns ``(fig, rows)``: ``rows[i]`` the ``n_panels`` axes of item ``i`` in
    reading order."""
    import matplotlib.pyplot as plt

    cols = max(1, min(n_panels, max_cols))
    lines = -(-n_panels // cols)
    side = min(max_side_in, BOOK_WIDTH_IN / cols)
    fig, axes = plt.subplots(n_items * lines, cols, figsize=(side * cols, n_items * lines * (side + title_in) + extra_in),
                             squeeze=False)
    rows = []
    for i in range(n_items):
        block = list(axes[i * lines:(i + 1) * lines].ravel())
        for ax in block[n_panels:]:
            ax.axis("off")
        rows.append(block[:n_panels])
    return fig, rows


def legend_below(fig, handles, labels, ncol: int = 3, ax=None, top: float = 1.0, note: str | None = None) -> None:
    """``labels`` as one legend under all of ``fig``'s panels (outside every axes: it covers no data, overlaps no
    panel), the panels laid out above it (``tight_layout``; ``top``: the share of the height they may reach), a
    ``supxlabel`` made before kept between them and the legend. ``ax``: the legend is that axes' (for callers that
    read ``ax.get_legend()``), placed in figure coordinates; else a figure legend. ``note``: a line under the legend
    (e.g. where a metric's weights came from)."""
    h = fig.get_figheight()
    note_in = 0.3 if note else 0.0
    rows = -(-len(labels) // ncol)
    lines = sum(max(str(n).count("\n") + 1 for n in labels[r * ncol:(r + 1) * ncol]) for r in range(rows))
    bottom = min(0.5, (0.2 * lines + 0.12 + note_in) / h)
    label = getattr(fig, "_supxlabel", None)
    if label is not None:
        label.set_y(bottom)
    fig.tight_layout(rect=(0, bottom, 1, top))
    kw = dict(loc="lower center", bbox_to_anchor=(0.5, note_in / h), ncol=ncol, fontsize=9, frameon=False)
    if ax is None:
        fig.legend(handles, labels, **kw)
    else:
        ax.legend(handles, labels, bbox_transform=fig.transFigure, **kw)
    if note:
        fig.text(0.01, 0.05 / h, note, fontsize=9, ha="left", va="bottom")


def headed_rows(n_rows: int, n_cols: int, headings=None, titles=None, bottom_in: float = 0.0, top_in: float = 0.0,
                gap_in: float = 0.06):
    """A figure :data:`BOOK_WIDTH_IN` wide of ``n_rows`` rows of ``n_cols`` square image panels that fill the
    width. ``headings[i]`` (None or missing: none): a line over row ``i`` (9 pt, left; e.g. which pair it shows);
    ``titles[i]`` (None or missing: none): row ``i``'s panel titles (9 pt, over its heading); ``bottom_in``: free
    height under the rows (:func:`colorbar_below`), ``top_in`` over them (a suptitle). Returns ``(fig, axes)``,
    ``axes[i][j]`` (axis turned off)."""
    import matplotlib.pyplot as plt

    def at(seq, i):
        return seq[i] if seq is not None and i < len(seq) else None

    head = [0.24 if at(headings, i) else 0.0 for i in range(n_rows)]
    title = [0.17 * max(str(t).count("\n") + 1 for t in at(titles, i)) + 0.06 if at(titles, i) else 0.0
             for i in range(n_rows)]
    side = (BOOK_WIDTH_IN - gap_in * (n_cols - 1)) / n_cols
    height = top_in + sum(head) + sum(title) + n_rows * side + (n_rows - 1) * gap_in + bottom_in
    fig = plt.figure(figsize=(BOOK_WIDTH_IN, height))
    axes, y = [], height - top_in
    for i in range(n_rows):
        y -= title[i] + head[i] + side + (gap_in if i else 0.0)  # the bottom of the row's panels
        axes.append([fig.add_axes((j * (side + gap_in) / BOOK_WIDTH_IN, y / height, side / BOOK_WIDTH_IN,
                                   side / height)) for j in range(n_cols)])
        for j, ax in enumerate(axes[-1]):
            ax.axis("off")
            ax.set_title(at(at(titles, i), j) or "", fontsize=9, pad=head[i] * 72 + 2)
        if head[i]:
            fig.text(0.0, (y + side + 0.04) / height, at(headings, i), fontsize=9, ha="left", va="bottom")
    return fig, axes


def colorbar_below(fig, mappable, label: str) -> None:
    """A horizontal colour bar for ``mappable`` across the middle 60 % of ``fig``'s width, in the bottom 0.75 in
    (``headed_rows(..., bottom_in=0.75)`` leaves them free): its ticks and ``label`` under it."""
    h = fig.get_figheight()
    fig.colorbar(mappable, cax=fig.add_axes((0.2, 0.45 / h, 0.6, 0.1 / h)), orientation="horizontal", label=label)


GAP_IN = 0.08  # between two image panels of a row (inches)
LINE_IN = 0.16  # one line of 9 pt text with its leading (inches)


def grid_shape(n_panels: int, max_cols: int) -> tuple[int, float, int]:
    """(columns, panel side in inches, characters of 9 pt text a panel title holds per line) for an item of
    ``n_panels`` image panels on as few lines as ``max_cols`` allows, spread evenly over them (8 panels, at most 5
    a line: two lines of 4, not 5 + 3 with two cells empty) and filling the book's column."""
    lines = -(-n_panels // max(1, max_cols))
    cols = -(-n_panels // lines)
    side = min(2.3, (BOOK_WIDTH_IN - 0.1 - GAP_IN * (cols - 1)) / cols)
    return cols, side, max(6, int(side * 72 / (0.57 * 9)))


def panel_grid(n_items: int, max_cols: int, titles: Sequence[str], headers: Sequence[str] = (), suptitle: str = ""):
    """A figure of ``n_items`` items of ``len(titles)`` image panels laid out by hand (:func:`grid_shape`, no tight
    layout): per item a one-line header (``headers[i]``, horizontal: what a rotated row label said), then its lines of
    panels, each under room for its tallest 9 pt title (``titles``: one item's); ``suptitle`` on top. Only panels are
    axes, in reading order, ticks off. Returns ``(fig, rows)``: ``rows[i]``, item ``i``'s axes."""
    import matplotlib.pyplot as plt

    n_panels = len(titles)
    cols, side, _ = grid_shape(n_panels, max_cols)
    title = [max(t.count("\n") + 1 for t in titles[k:k + cols]) * LINE_IN + 0.12 for k in range(0, n_panels, cols)]
    head = LINE_IN + 0.1 if headers else 0.0
    item = head + sum(title) + len(title) * side + 0.12
    top = (suptitle.count("\n") + 1) * LINE_IN * 1.2 + 0.12 if suptitle else 0.05
    w, h = BOOK_WIDTH_IN, top + n_items * item
    x0 = (w - cols * side - (cols - 1) * GAP_IN) / 2
    fig = plt.figure(figsize=(w, h))
    if suptitle:
        fig.suptitle(suptitle, fontsize=10, y=1 - 0.06 / h, va="top")
    rows = []
    for i in range(n_items):
        y = h - top - i * item - head  # the top of the item's first line of titles, inches from the bottom
        if headers:
            fig.text(x0 / w, (y + 0.03) / h, headers[i], fontsize=9, ha="left", va="bottom", fontweight="bold")
        rows.append([fig.add_axes(((x0 + k % cols * (side + GAP_IN)) / w,
                                   (y - sum(title[:k // cols + 1]) - (k // cols + 1) * side) / h, side / w, side / h),
                                  xticks=[], yticks=[]) for k in range(n_panels)])  # line k // cols, column k % cols
    return fig, rows
