"""Check what a reader sees in the built book: no ``nan`` interval, raw dict dump, traceback or cut-off content.

    python -m stsynth_lib.book.screens book/_build/html --out build/book-check     (make book-check)

Two passes over every content page of a Jupyter Book 1 HTML build:

* static (stdlib only, runs anywhere): the notebook output areas (MyST-NB's ``div.cell_output``) and every table
  are searched for a ``nan`` interval (``[nan, nan]``, ``+0.1 [+nan, +nan]``, ``nan – 0.3``, ``± nan``, a cell that
  is just ``nan`` in an interval column), a raw dict dump (a text line starting ``{'``, ``{"``, ``OrderedDict(``,
  ``dict(``...), a number printed with more than 4 significant decimals (``0.123456``) in a text output or a table cell, and a traceback
  (MyST-NB's ``output traceback`` block, ``Traceback (most recent call last)``, an ``...Error: `` line); a count of
  one before a plural (``1 months``); a relative path leaving the repository in a text output (``../shared/...``);
  consecutive text outputs of one cell, each its own box (``split output``);
* browser (when Chromium is installed; its own command line, no driver: :mod:`stsynth_lib.book.browser`): each
  page gets a full-page screenshot ``<out>/<page>.png`` and a script measures, in the article column, elements whose content is cut off with no
  scrollbar of their own (``scrollWidth > clientWidth`` while ``overflow-x`` is hidden/clip/visible and no scrolling
  box in between), elements that stick out of the column, and images shown at under 90 % of their width (``figure
  scaled down``: a figure drawn wider than the column, its text shrunk with it).

Per page, stdlib only too (:mod:`stsynth_lib.book.content`): an embedded PNG that is one colour, or holds a
panel-sized rectangle of one colour (``constant image``: an all-black mask column); an ``href`` / ``src`` to a file
the build lacks, or a launch link to a path the repository lacks (``missing file``); a verdict sentence or a ✔ / ✘ /
verdict cell that the page's own paired interval contradicts (``verdict contradicted``). Legends over other panels
cannot be seen in HTML: :func:`stsynth_lib.figure_check.check_legends` checks them where the library returns figures.

The network/TeX checks of :mod:`stsynth_lib.book.check` run too. Every finding names the page and a snippet; the
command exits 1 on any finding (2 when the book is not built).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from stsynth_lib.book.browser import find_chromium, measure_page, screenshot
from stsynth_lib.book.check import remote_loads
from stsynth_lib.book.html_tree import _Node, _linear, _parse, _table_rows  # noqa: F401
from stsynth_lib.book.content import _repository, check_verdicts, missing_links, png_findings, table_intervals

# ------------------------------------------------------------------------------------------------------ findings


@dataclass(frozen=True)
class Finding:
    page: str  # path relative to the HTML folder, e.g. executed/06_evaluate.html
    kind: str  # one of KINDS
    snippet: str

    def __str__(self) -> str:
        return f"{self.page}: [{self.kind}] {self.snippet}"


KINDS = ("nan interval", "raw dict dump", "long float", "traceback", "constant image", "missing file",
         "verdict contradicted", "truncated table", "cut off", "sticks out", "behind a scrollbar", "network")

# ------------------------------------------------------------------------------------------------ static rules

_NAN = r"(?<![\w.])[+-]?nan(?!\w)"
_NUM_OR_NAN = r"[+-]?(?:nan(?!\w)|\d)"
NAN_INTERVAL = re.compile(
    "|".join(
        [
            rf"[\[(]\s*{_NAN}\s*[,;]",  # [nan, ...
            rf"[,;]\s*{_NAN}\s*[\])]",  # ..., nan]
            rf"{_NAN}\s*(?:–|—|-|to)\s*{_NUM_OR_NAN}",  # nan – 0.3, nan - nan
            rf"\d\s*(?:–|—|to)\s*{_NAN}",  # 0.3 – nan
            rf"±\s*{_NAN}",
            rf"{_NAN}\s*±",
        ]
    ),
    re.I,
)
_NAN_CELL = re.compile(r"^\s*[+-]?(nan|<NA>)\s*$", re.I)
# a column that holds an interval or one of its ends
_INTERVAL_HEADER = re.compile(
    r"(?:^|[\W_])(?:ci|interval|confidence|lo|hi|low|high|lower|upper)(?:$|[\W_])|±|\[", re.I
)
DICT_DUMP = re.compile(r"^\s*(?:\[?\{['\"]|OrderedDict\(|defaultdict\(|dict\(|mappingproxy\(|Counter\(\{)", re.M)
# Over-long: more than 4 significant decimals (0.123456 and 23.12345 are flagged; 0.0001801, 4 significant, is not,
# nor 23.1234). Version numbers (1.2.12345) are not numbers.
LONG_FLOAT = re.compile(r"(?<![\w.])[-+]?(?:0\.0*[1-9]\d{4,}|[1-9]\d*\.\d{5,})(?:[eE][-+]?\d+)?(?![\d.]*\d)")
TRACEBACK = re.compile(
    r"Traceback \(most recent call last\)|^\s*[A-Za-z_][\w.]*(?:Error|Exception): ", re.M
)


# "1 months", "1 AOIs": a lone count of one before a plural (not 0.1, 11, -1 or "1 of 4 areas")
ONE_PLURAL = re.compile(r"(?<![\d.,\-])\b1 (?:new |test |val |training )?(months|areas|AOIs|blocks|pairs|tiles|"
                        r"buildings|images|rows|steps|samples|frames)\b")
# pandas' footer under a frame it cut (rows or columns replaced by "..."): show_dimensions="truncate" prints it only then
TRUNCATED_FRAME = re.compile(r"\b\d+ rows × \d+ columns\b")
# a relative path that leaves the repository (../shared/data/...): one machine's layout, not the data's name
MACHINE_PATH = re.compile(r"(?<![\w/.])\.\./[\w.-]+/[\w./-]*")


def _snip(text: str, m: re.Match | None = None, width: int = 50) -> str:
    if m is None:
        s = text.strip()
    else:
        s = text[max(0, m.start() - width) : m.end() + width]
        s = ("…" if m.start() > width else "") + s + ("…" if m.end() + width < len(text) else "")
    s = re.sub(r"\s+", " ", s).strip()
    return s if len(s) <= 160 else s[:157] + "…"


def _is_text_output(n: _Node) -> bool:
    c = n.classes
    return "output" in c and any(k in c for k in ("stream", "text_plain", "traceback", "stderr", "error"))


def _in_cell_input(n: _Node) -> bool:
    return any("cell_input" in a.classes for a in n.ancestors())


def _table_findings(table: _Node) -> list[tuple[str, str]]:
    """Cell by cell: a nan interval or a bare nan in an interval column, a dict dump, a long float."""
    rows = [r for r in table.iter() if r.tag == "tr"]
    header = []
    head_rows = [r for r in rows if any(a.tag == "thead" for a in r.ancestors())] or rows[:1]
    for r in head_rows[:1]:
        cells = [c for c in r.children if isinstance(c, _Node) and c.tag in ("th", "td")]
        header = [re.sub(r"\s+", " ", c.text()).strip() for c in cells]
    out = []
    for r in rows:
        if r in head_rows:
            continue
        cells = [c for c in r.children if isinstance(c, _Node) and c.tag in ("th", "td")]
        row_name = re.sub(r"\s+", " ", cells[0].text()).strip() if cells and cells[0].tag == "th" else ""
        for i, c in enumerate(cells):
            if c.tag != "td":  # a row name (index level) is checked for long floats only
                if m := LONG_FLOAT.search(re.sub(r"\s+", " ", c.text()).strip()):
                    out.append(("long float", f"table row name {row_name!r}: " + _snip(c.text(), m)))
                continue
            t = re.sub(r"\s+", " ", c.text()).strip()
            col = header[i] if i < len(header) else ""
            where = f"table row {row_name!r}, column {col!r}: " if row_name else f"table column {col!r}: "
            if (m := NAN_INTERVAL.search(t)) or (_NAN_CELL.match(t) and _INTERVAL_HEADER.search(col)):
                out.append(("nan interval", where + repr(t)))
            if DICT_DUMP.search(t):
                out.append(("raw dict dump", where + _snip(t)))
            if m := LONG_FLOAT.search(t):
                out.append(("long float", where + _snip(t, m)))
    return out


def _text_findings(text: str, text_output: bool) -> list[tuple[str, str]]:
    out = [("nan interval", _snip(text, m)) for m in NAN_INTERVAL.finditer(text)]
    if m := TRACEBACK.search(text):
        out.append(("traceback", _snip(text, m)))
    if m := ONE_PLURAL.search(text):
        out.append(("plural", _snip(text, m)))
    if m := TRUNCATED_FRAME.search(text):  # the footer of an HTML frame too (no "text_output" needed)
        out.append(("truncated table", f"pandas cut this table (some rows or columns are '…'): {_snip(text, m)}"))
    if text_output:
        if m := MACHINE_PATH.search(text):
            out.append(("machine path", _snip(text, m)))
        out += [("raw dict dump", _snip(text[m.start() : m.start() + 120])) for m in DICT_DUMP.finditer(text)]
        if longs := list(LONG_FLOAT.finditer(text)):
            out.append(("long float", f"{len(longs)} number(s) with more than 4 significant decimals: {_snip(text, longs[0])}"))
    return out


def check_page_html(text: str, page: str = "page.html") -> list[Finding]:
    """The static findings of one page's HTML."""
    root = _parse(text)
    found: list[tuple[str, str]] = []
    for n in root.iter():
        if n.tag == "table" and not _in_cell_input(n):
            found += _table_findings(n)
        if "cell_output" in n.classes:
            if any("traceback" in d.classes for d in n.iter()):
                tb = next(d for d in n.iter() if "traceback" in d.classes).text().strip().splitlines()
                found.append(("traceback", _snip(tb[-1] if tb else "")))
                continue
            texts = [d for d in n.iter() if _is_text_output(d)]
            kids = [c for c in n.children if isinstance(c, _Node)]
            if any("stream" in a.classes and "stream" in b.classes for a, b in zip(kids, kids[1:])):
                n_streams = sum("stream" in c.classes for c in kids)
                found.append(("split output", f"{n_streams} text outputs in a row, one box each (merge the streams: "
                                              f"nb_merge_streams, publish.merge_streams): {_snip(texts[0].text())}"))
            # the outputs' text with tables left out (the tables are checked cell by cell)
            found += _text_findings(n.text(skip=lambda d: d.tag == "table" or _is_text_output(d)), False)
            for d in texts:
                found += _text_findings(d.text(), True)
    found += [("verdict contradicted", f) for f in _verdict_findings(root)]
    seen, result = set(), []
    for kind, snippet in found:
        if (kind, snippet) not in seen:
            seen.add((kind, snippet))
            result.append(Finding(page, kind, snippet))
    return result


def _verdict_findings(root: _Node) -> list[str]:
    """Verdict sentences and ✔ / ✘ / verdict cells that the page's paired intervals contradict
    (:func:`stsynth_lib.book.content.check_verdicts`)."""
    text, intervals = [], []
    for kind, x in _linear(root):
        if kind in ("text", "heading"):
            text.append(x if kind == "text" else f"\n{x}\n")
        elif kind == "table":
            header, rows = _table_rows(x)
            if len(header) < max((len(r) for r in rows), default=0):  # pandas: an index column with no header
                header = [""] * (max(len(r) for r in rows) - len(header)) + header
            found, marked = table_intervals(rows, header, "".join(text)[-600:])
            intervals += [(iv, marked) for iv in found]
    return check_verdicts(intervals, "".join(text))


def page_images(text: str) -> list[tuple[str, str]]:
    """(src, where) of every <img> of a page outside code cells' source; ``where``: the heading it stands under."""
    out, heading = [], "top of the page"
    for kind, x in _linear(_parse(text)):
        if kind == "heading":
            heading = x
        elif kind == "img" and x.attrs.get("src"):
            out.append((x.attrs["src"], f"under {heading!r}"))
    return out


def file_findings(html_dir: str | Path, pages: list[Path] | None = None) -> list[Finding]:
    """Per page: links to missing files (:func:`stsynth_lib.book.content.missing_links`) and constant image panels
    of its PNGs (:func:`stsynth_lib.book.content.png_findings`, each PNG decoded once)."""
    html_dir = Path(html_dir)
    repo = _repository(html_dir)
    cache: dict[Path, list[str]] = {}
    out = []
    for p in pages if pages is not None else content_pages(html_dir):
        rel = str(p.relative_to(html_dir))
        text = p.read_text(errors="ignore")
        out += [Finding(rel, "missing file", f) for f in missing_links(text, p, html_dir, repo)]
        for n, (src, where) in enumerate(page_images(text), 1):
            path = (p.parent / src.split("?", 1)[0]).resolve()
            if path.suffix.lower() != ".png" or not path.is_file():
                continue
            if path not in cache:
                cache[path] = png_findings(path)
            if cache[path]:  # one finding per image, its panels listed
                out.append(Finding(rel, "constant image", f"image {n} ({src.rsplit('/', 1)[-1][:16]}…, {where}): "
                                   + "; ".join(cache[path])))
    return out


def content_pages(html_dir: str | Path) -> list[Path]:
    """The book's pages: every .html but Sphinx's index/search pages, ``_static``/``_sources`` and redirects."""
    html_dir = Path(html_dir)
    pages = []
    for p in sorted(html_dir.rglob("*.html")):
        rel = p.relative_to(html_dir)
        if any(part.startswith("_") for part in rel.parts) or rel.name in ("genindex.html", "search.html",
                                                                             "py-modindex.html"):
            continue
        if re.search(r"<meta[^>]+http-equiv=[\"']refresh", p.read_text(errors="ignore")[:4000], re.I):
            continue
        pages.append(p)
    return pages


def static_findings(html_dir: str | Path) -> list[Finding]:
    html_dir = Path(html_dir)
    out = []
    for p in content_pages(html_dir):
        out += check_page_html(p.read_text(errors="ignore"), str(p.relative_to(html_dir)))
    return out


# ------------------------------------------------------------------------------------------------ browser pass
# (Chromium itself, the measuring script and the screenshots: stsynth_lib.book.browser)


def browser_findings(html_dir: str | Path, out_dir: str | Path, chromium: str, width: int = 1280,
                     pages: list[Path] | None = None) -> tuple[list[Finding], list[Path]]:
    """Screenshot every page into ``out_dir`` and report cut-off and sticking-out content."""
    html_dir, out_dir = Path(html_dir), Path(out_dir)
    findings, shots = [], []
    for p in pages if pages is not None else content_pages(html_dir):
        rel = p.relative_to(html_dir)
        m = measure_page(chromium, p, width)
        col = m["column"]
        for c in m["cut"]:
            what = "wider" if c["axis"] == "x" else "taller"
            findings.append(Finding(str(rel), "cut off", f"{c['element']}: content {c['content']} px {what} than its "
                                                        f"{c['box']} px box, which has no scrollbar"))
        for o in m["out"]:
            findings.append(Finding(str(rel), "sticks out", f"{o['element']}: spans x {o['left']}–{o['right']} px, "
                                    f"the column {col['selector']} spans {col['left']}–{col['right']} px"))
        for s in m.get("scaled", []):
            findings.append(Finding(str(rel), "figure scaled down", f"{s['element']}: {s['natural']} px wide, shown at "
                                    f"{s['shown']} px ({s['shown'] / s['natural']:.0%}): its text shrinks as much"))
        for h in m.get("hidden", []):
            findings.append(Finding(str(rel), "behind a scrollbar", f"{h['element']}: {h['content']} px wide in a "
                                    f"{h['box']} px box: its last {h['content'] - h['box']} px need a sideways scroll"))
        png = out_dir / rel.with_suffix(".png")
        shots += screenshot(chromium, p, png, width, m["height"])
    return findings, shots


# ---------------------------------------------------------------------------------------------------------- CLI


def _report(findings: list[Finding], per_group: int = 5) -> list[str]:
    lines = []
    for kind in KINDS:
        of_kind = [f for f in findings if f.kind == kind]
        if not of_kind:
            continue
        lines.append(f"{kind} ({len(of_kind)}):")
        for page in dict.fromkeys(f.page for f in of_kind):
            here = [f for f in of_kind if f.page == page]
            lines.append(f"  {page} ({len(here)})")
            lines += [f"    {f.snippet}" for f in here[:per_group]]
            if len(here) > per_group:
                lines.append(f"    … and {len(here) - per_group} more")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stsynth_lib.book.screens", description=__doc__.split("\n")[0])
    ap.add_argument("html_dir", nargs="?", default="book/_build/html")
    ap.add_argument("--out", default="build/book-check", help="screenshots and findings.json go here")
    ap.add_argument("--width", type=int, default=1280, help="browser window width in px")
    ap.add_argument("--no-browser", action="store_true", help="static checks only")
    ap.add_argument("--all", action="store_true", help="list every finding, not the first 5 per page and kind")
    a = ap.parse_args(argv)
    html_dir, out_dir = Path(a.html_dir), Path(a.out)
    if not (html_dir / "index.html").is_file():
        print(f"{html_dir}/index.html not found: build the book first (make book)")
        return 2
    t0 = time.time()
    pages = content_pages(html_dir)
    findings = [Finding(str(Path(s.split(": ", 1)[0]).relative_to(html_dir)) if s.startswith(str(html_dir)) else "?",
                        "network", s.split(": ", 1)[-1]) for s in remote_loads(html_dir)]
    findings += static_findings(html_dir)
    findings += file_findings(html_dir, pages)
    shots: list[Path] = []
    chromium = None if a.no_browser else find_chromium()
    if chromium:
        if out_dir.exists():  # screenshots of pages that no longer exist would mislead
            for old in out_dir.rglob("*.png"):
                old.unlink()
        more, shots = browser_findings(html_dir, out_dir, chromium, a.width, pages)
        findings += more
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "findings.json").write_text(json.dumps([asdict(f) for f in findings], indent=1, ensure_ascii=False))
    for line in _report(findings, 10**9 if a.all else 5):
        print(line)
    print(f"book-check: {len(pages)} pages, {len(findings)} findings, {time.time() - t0:.0f} s; "
          f"list in {out_dir}/findings.json")
    if chromium:
        print(f"screenshots: {len(shots)} PNG in {out_dir}/")
    elif a.no_browser:
        print("browser pass skipped (--no-browser)")
    else:
        print("Chromium not found: screenshots skipped (apt-get install chromium chromium-driver)")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
