"""The browser pass of ``make book-check``: Chromium's own command line, no driver.

Finds Chromium (``$CHROMIUM`` or the system packages), loads a copy of a page with a measuring script injected
(:func:`measure_page`: elements of the article column whose content is cut off with no scrollbar of their own, and
elements that stick out of the column) and takes full-page screenshots (:func:`screenshot`). Standard library only;
:mod:`stsynth_lib.book.screens` turns the measurements into findings.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

_CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--mute-audio",
]
_MAX_SHOT_HEIGHT = 16000  # px; Chromium paints at most 16384
# an image shown at under this share of its own width: a figure drawn wider than the column, its text shrunk with it
# (matplotlib's default 10 pt, 10.4 pt on screen at 100 dpi, falls under 9 pt below 86 %; the library's figures fit
# the column: stsynth_lib.figure_check.BOOK_WIDTH_IN)
SCALED_BELOW = 0.9

# Runs after load in a copy of the page; writes its measurements as JSON into <pre id="__bookcheck">.
_MEASURE_JS = r"""
(function () {
  var SCALED_BELOW = __SCALED_BELOW__;
  function describe(el) {
    var s = el.tagName.toLowerCase();
    if (el.id) s += '#' + el.id;
    if (el.classList.length) s += '.' + Array.prototype.slice.call(el.classList, 0, 3).join('.');
    var a = el.parentElement, path = [];
    while (a && path.length < 3 && !a.matches('.bd-article, main, body')) {
      if (a.classList.length) path.unshift(a.tagName.toLowerCase() + '.' + Array.prototype.slice.call(a.classList, 0, 2).join('.'));
      a = a.parentElement;
    }
    var t = (el.innerText || el.textContent || '').replace(/\s+/g, ' ').trim().slice(0, 60);
    return (path.length ? path.join(' > ') + ' > ' : '') + s + (t ? ' "' + t + '"' : '');
  }
  function run() {
    var col = document.querySelector('.bd-article') || document.querySelector('main') || document.body;
    var cr = col.getBoundingClientRect();
    function scrolls(el) {  // a scrolling box between el and the column
      for (var a = el.parentElement; a && a !== col && a !== document.body; a = a.parentElement) {
        var ox = getComputedStyle(a).overflowX;
        if (ox === 'auto' || ox === 'scroll') return true;
      }
      return false;
    }
    var SKIP = '.margin, .sidebar, aside, .full-width, .visually-hidden, .sr-only, svg, .copybtn, .headerlink, .toggle-details, .tag_hide-input, button';
    var cut = [], out = [];
    var els = col.querySelectorAll('*');
    for (var i = 0; i < els.length; i++) {
      var el = els[i];
      if (el.closest(SKIP)) continue;
      var cs = getComputedStyle(el);
      if (cs.display === 'inline' || cs.display === 'none' || cs.display === 'contents' || cs.position === 'fixed') continue;
      var ox = cs.overflowX, oy = cs.overflowY;
      var r = el.getBoundingClientRect();
      if (r.width === 0 || r.height === 0) continue;
      var inScroll = scrolls(el);
      if (el.clientWidth > 2 && el.scrollWidth > el.clientWidth + 2 && ox !== 'auto' && ox !== 'scroll' && !inScroll)
        cut.push([el, 'x', el.scrollWidth, el.clientWidth]);
      else if (el.clientHeight > 2 && el.scrollHeight > el.clientHeight + 4 && (oy === 'hidden' || oy === 'clip') && !inScroll)
        cut.push([el, 'y', el.scrollHeight, el.clientHeight]);
      if ((r.right > cr.right + 2 || r.left < cr.left - 2) && !inScroll) out.push([el, r]);
    }
    var hidden = [], tables = col.querySelectorAll('table');  // page tables (not cell outputs) needing a sideways scroll
    for (var j = 0; j < tables.length; j++) {
      var t = tables[j];
      if (t.closest(SKIP) || t.closest('.cell_output, .output')) continue;
      for (var a = t; a && a !== col && a !== document.body; a = a.parentElement) {
        var aox = getComputedStyle(a).overflowX;
        if (aox !== 'auto' && aox !== 'scroll') continue;
        if (a.scrollWidth > a.clientWidth + 8) hidden.push({element: describe(t), content: a.scrollWidth, box: a.clientWidth});
        break;
      }
    }
    var scaled = [], imgs = col.querySelectorAll('img');  // figures drawn wider than shown: their text shrinks too
    for (var q = 0; q < imgs.length; q++) {
      var im = imgs[q];
      if (im.closest(SKIP) || !im.naturalWidth || !im.clientWidth) continue;
      if (im.clientWidth < SCALED_BELOW * im.naturalWidth)
        scaled.push({element: describe(im) + (im.alt ? ' alt="' + im.alt.slice(0, 40) + '"' : ''),
                     natural: im.naturalWidth, shown: im.clientWidth});
    }
    var cutEls = cut.map(function (c) { return c[0]; });
    function contains(list, e, inner) {  // another element of list inside (inner) or around e
      return list.some(function (o) { return o !== e && (inner ? e.contains(o) : o.contains(e)); });
    }
    var res = {
      hidden: hidden,
      scaled: scaled,
      height: Math.max(document.documentElement.scrollHeight, document.body.scrollHeight),
      column: {selector: col.className ? '.' + col.className.split(' ')[0] : col.tagName.toLowerCase(),
               left: Math.round(cr.left), right: Math.round(cr.right)},
      cut: cut.filter(function (c) { return !contains(cutEls, c[0], true); }).map(function (c) {
        return {element: describe(c[0]), axis: c[1], content: c[2], box: c[3]};
      }),
      out: out.filter(function (o) {
        return !contains(out.map(function (x) { return x[0]; }), o[0], false) &&
               !contains(cutEls, o[0], true) && !contains(cutEls, o[0], false);
      }).map(function (o) {
        return {element: describe(o[0]), left: Math.round(o[1].left), right: Math.round(o[1].right)};
      })
    };
    var pre = document.createElement('pre');
    pre.id = '__bookcheck';
    pre.textContent = JSON.stringify(res);
    document.body.appendChild(pre);
  }
  if (document.readyState === 'complete') run(); else window.addEventListener('load', run);
})();
"""


def find_chromium() -> str | None:
    """Chromium from $CHROMIUM or the system packages (Debian: apt-get install chromium chromium-driver)."""
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if name and (path := shutil.which(name)):
            return path
    return None


def _chromium(chromium: str, args: list[str], timeout: float = 90) -> str:
    with tempfile.TemporaryDirectory(prefix="bookcheck-chromium-") as profile:
        proc = subprocess.run(
            [chromium, *_CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True, text=True, timeout=timeout,
        )
    if proc.returncode != 0:
        raise RuntimeError(f"chromium exited {proc.returncode}: {proc.stderr[-500:]}")
    return proc.stdout


def _copy_with(page: Path, tmp: Path, script: str) -> Path:
    """A copy of ``page`` in ``tmp`` that loads its links from the original folder and runs ``script`` at the end."""
    text = page.read_text(errors="ignore")
    base = f'<base href="{page.parent.resolve().as_uri()}/">'
    head = re.search(r"<head(\s[^>]*)?>", text, re.I)
    text = text[: head.end()] + base + text[head.end() :] if head else base + text
    end = text.lower().rfind("</body>")
    script = f"<script>{script}</script>"
    text = text[:end] + script + text[end:] if end >= 0 else text + script
    copy = tmp / "page.html"
    copy.write_text(text)
    return copy


def measure_page(chromium: str, page: Path, width: int = 1280, height: int = 900) -> dict:
    """Load a copy of ``page`` with the measuring script and return its measurements."""
    with tempfile.TemporaryDirectory(prefix="bookcheck-page-") as tmp:
        copy = _copy_with(page, Path(tmp), _MEASURE_JS.replace("__SCALED_BELOW__", str(SCALED_BELOW)))
        dom = _chromium(chromium, [f"--window-size={width},{height}", "--virtual-time-budget=10000", "--dump-dom",
                                   copy.as_uri()])
    m = re.search(r'<pre id="__bookcheck"[^>]*>(.*?)</pre>', dom, re.S)
    if not m:
        raise RuntimeError(f"{page}: the measuring script left no result")
    return json.loads(html.unescape(m.group(1)))


def screenshot(chromium: str, page: Path, png: Path, width: int = 1280, height: int = 900) -> list[Path]:
    """Full-page screenshot ``png``; a page taller than Chromium paints at once is scaled down to fit."""
    png.parent.mkdir(parents=True, exist_ok=True)
    height = max(300, int(height))
    scale = [] if height <= _MAX_SHOT_HEIGHT else [f"--force-device-scale-factor={_MAX_SHOT_HEIGHT / height:.4f}"]
    _chromium(chromium, [f"--window-size={width},{height}", *scale, "--virtual-time-budget=5000",
                         f"--screenshot={png.resolve()}", page.resolve().as_uri()])
    if not png.is_file():
        raise RuntimeError(f"chromium wrote no screenshot {png}")
    return [png]
