"""Checks on a matplotlib figure before it is shown or saved: what the built book's HTML cannot reveal.

* :func:`check_legends` -- every legend (an axes' or the figure's) whose drawn box overlaps another axes, from the
  renderer's window extents;
* :func:`checked` -- the library's plotting functions return ``checked(fig)``: the figure, with a warning per
  overlapping legend (tests assert none).

matplotlib is imported only by the figures passed in: no torch, numpy or pandas import here.
"""

from __future__ import annotations

import warnings

# overlaps smaller than this many square pixels (a shared edge, antialiasing) are not reported
MIN_OVERLAP_PX2 = 4.0


class LegendOverlapWarning(UserWarning):
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


def checked(fig):
    """``fig`` unchanged, after a :class:`LegendOverlapWarning` per overlap :func:`check_legends` finds (None
    passes through)."""
    if fig is not None:
        for problem in check_legends(fig):
            warnings.warn(problem, LegendOverlapWarning, stacklevel=2)
    return fig


def show_mask(ax, mask, empty_text: str = "no building here", **imshow_kw) -> None:
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
    ax.text(0.5, 0.5, empty_text, transform=ax.transAxes, ha="center", va="center", fontsize=8, color="0.3")
