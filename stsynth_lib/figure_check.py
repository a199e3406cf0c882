"""Checks on a matplotlib figure before it is shown or saved: what the built book's HTML cannot reveal.

* :func:`check_legends` -- every legend (an axes' or the figure's) whose drawn box overlaps another axes, from the
  renderer's window extents;
* :func:`check_text_size` -- every drawn text (tick labels, titles, legends, annotations) smaller than
  :data:`MIN_TEXT_PT` once the figure is shown in the book's article column (:data:`BOOK_COLUMN_PX` wide: a wider
  figure is scaled down, and its text with it);
* :func:`checked` -- the library's plotting functions return ``checked(fig)``: the figure, with a warning per
  overlapping legend and per too-small text size (tests turn both into errors: ``pyproject.toml``).

matplotlib is imported only by the figures passed in: no torch, numpy or pandas import here.
"""

from __future__ import annotations

import warnings

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
    """``fig`` unchanged, after a :class:`LegendOverlapWarning` per overlap :func:`check_legends` finds and a
    :class:`SmallTextWarning` per size :func:`check_text_size` finds (None passes through)."""
    if fig is not None:
        for problem in check_legends(fig):
            warnings.warn(problem, LegendOverlapWarning, stacklevel=2)
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
    ax.text(0.5, 0.5, empty_text, transform=ax.transAxes, ha="center", va="center", fontsize=fontsize, color="0.3")


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
