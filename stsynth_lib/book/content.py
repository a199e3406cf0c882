"""What the built book shows beyond its text: constant image panels, links to missing files, verdicts their own
intervals contradict. Standard library only (the light book environment has no numpy, pandas, Pillow or torch):
:func:`read_png` is a small ``zlib`` PNG decoder.

* :func:`constant_panels` -- an image whose whole area is one colour, or that holds a panel-sized rectangle of one
  colour other than the background (an all-black mask column, an empty sample): the rectangle must be at least
  ``max(16 px, 8 %)`` of the image's shorter side on both sides, at most 6:1 (a column of stacked tiles), and closed (what borders it is mostly
  another colour), so white margins, bars and histogram bins pass;
* :func:`missing_links` -- ``href`` / ``src`` to a local file that is not in the built HTML tree, and launch /
  source links into this project's repository (``repository.url`` of ``book/_config.yml``) to a path the checkout
  lacks;
* :func:`verdict_findings` -- a sentence of :func:`stsynth_lib.verdict.verdict_sentence` or a ✔ / ✘ / verdict
  cell that the paired interval printed on the same page does not support (:func:`stsynth_lib.verdict.verdict`
  decides).
"""

from __future__ import annotations

import re
import struct
import zlib
from collections import Counter
from itertools import accumulate
from pathlib import Path
from urllib.parse import unquote

from stsynth_lib import verdict as V

# ------------------------------------------------------------------------------------------------------- PNG


class PNGError(ValueError):
    pass


_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def _add(x: bytes, y: bytes, lo: int, hi: int) -> bytes:
    """Byte-wise (x + y) mod 256 of two equal-length byte strings, as big integers (no carry between bytes)."""
    a, b = int.from_bytes(x, "big"), int.from_bytes(y, "big")
    return (((a & lo) + (b & lo)) ^ ((a ^ b) & hi)).to_bytes(len(x), "big")


def _unfilter(raw: bytes, height: int, stride: int, bpp: int) -> list[bytes]:
    rows: list[bytes] = []
    prev = bytes(stride)
    lo, hi = int.from_bytes(b"\x7f" * stride, "big"), int.from_bytes(b"\x80" * stride, "big")
    pos = 0
    for _ in range(height):
        ft, line = raw[pos], raw[pos + 1 : pos + 1 + stride]
        pos += 1 + stride
        if len(line) != stride:
            raise PNGError("truncated image data")
        if ft == 0:
            cur = bytes(line)
        elif ft == 2:
            cur = _add(line, prev, lo, hi)
        elif ft == 1:
            out = bytearray(stride)
            for c in range(bpp):
                out[c::bpp] = bytes(map((255).__and__, accumulate(line[c::bpp])))
            cur = bytes(out)
        elif ft in (3, 4):
            out = bytearray(line)
            for i in range(stride):
                a = out[i - bpp] if i >= bpp else 0
                b = prev[i]
                if ft == 3:
                    out[i] = (out[i] + ((a + b) >> 1)) & 255
                    continue
                c = prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                out[i] = (out[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
            cur = bytes(out)
        else:
            raise PNGError(f"unknown filter type {ft}")
        rows.append(cur)
        prev = cur
    return rows


def read_png(data: bytes) -> tuple[int, int, int, list[bytes], list[tuple] | None]:
    """Decode a PNG: ``(width, height, bytes_per_pixel, rows, palette)``. Each row holds ``width`` pixels of
    ``bytes_per_pixel`` bytes (palette indices for palette images, 1 byte per pixel for bit depths under 8);
    ``palette`` lists RGB triples (None without one). Interlaced images raise :class:`PNGError`."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise PNGError("not a PNG")
    pos, idat, palette, head = 8, [], None, None
    while pos + 8 <= len(data):
        n, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + n]
        if kind == b"IHDR":
            head = struct.unpack(">IIBBBBB", body)
        elif kind == b"PLTE":
            palette = [tuple(body[i : i + 3]) for i in range(0, len(body), 3)]
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        pos += 12 + n
    if head is None:
        raise PNGError("no IHDR")
    width, height, depth, ctype, _, _, interlace = head
    if interlace:
        raise PNGError("interlaced PNG")
    if ctype not in _CHANNELS:
        raise PNGError(f"colour type {ctype}")
    bits = _CHANNELS[ctype] * depth
    stride, bpp = (width * bits + 7) // 8, max(1, bits // 8)
    rows = _unfilter(zlib.decompress(b"".join(idat)), height, stride, bpp)
    if bits < 8:  # one byte per pixel
        mask, per = (1 << depth) - 1, 8 // depth
        rows = [bytes((r[x // per] >> (8 - depth * (x % per + 1))) & mask for x in range(width)) for r in rows]
    return width, height, bpp, rows, palette


# ------------------------------------------------------------------------------------------- constant panels


def _colour(px: bytes, palette) -> str:
    if palette is not None and len(px) == 1 and px[0] < len(palette):
        px = bytes(palette[px[0]])
    if len(px) in (3, 4):
        name = "#" + px[:3].hex()
        return {"#000000": "black", "#ffffff": "white"}.get(name, name)
    return "value " + px.hex()


def _pixels(row: bytes, bpp: int) -> list[bytes]:
    return [row[i : i + bpp] for i in range(0, len(row), bpp)]


def constant_panels(width: int, height: int, bpp: int, rows: list[bytes], palette=None,
                    min_frac: float = 0.08, min_px: int = 16, max_aspect: float = 6.0) -> list[str]:
    """What is constant in one decoded image: ``["the whole image is white"]``, or one line per panel-sized
    rectangle of one colour other than the background (the commonest colour on the image's border)."""
    if not rows:
        return []
    if all(r == rows[0] for r in rows) and len(set(_pixels(rows[0], bpp))) == 1:
        return [f"the whole {width}×{height} px image is {_colour(rows[0][:bpp], palette)}"]
    border = Counter(_pixels(rows[0], bpp) + _pixels(rows[-1], bpp)
                     + [r[:bpp] for r in rows] + [r[-bpp:] for r in rows])
    background = border.most_common(1)[0][0]
    side = max(min_px, round(min_frac * min(width, height)))
    runs_re = re.compile(rb"(.{%d})\1*" % bpp, re.S)
    active: dict[tuple, int] = {}  # (colour, x0, x1) -> first row of a rectangle still growing
    rects: list[tuple] = []

    def close(key, top, bottom):
        if bottom - top >= side:
            rects.append((key[0], key[1], key[2], top, bottom))

    for y in range(height + 1):
        runs = []
        if y < height:
            for m in runs_re.finditer(rows[y]):
                n = (m.end() - m.start()) // bpp
                if n >= side and m.group(1) != background:
                    runs.append((m.group(1), m.start() // bpp, m.end() // bpp))
        grown: dict[tuple, int] = {}
        for key, top in active.items():
            colour, a, b = key
            kept = False
            for c, s, e in runs:
                if c == colour and min(b, e) - max(a, s) >= side:
                    k2 = (colour, max(a, s), min(b, e))
                    grown[k2] = min(grown.get(k2, top), top)
                    kept = kept or k2 == key
            if not kept:
                close(key, top, y)
        for c, s, e in runs:
            grown.setdefault((c, s, e), y)
        active = grown
    # the largest first; drop rectangles inside a kept one; keep squarish, closed ones
    rects.sort(key=lambda r: -(r[2] - r[1]) * (r[4] - r[3]))
    kept: list[tuple] = []
    for colour, x0, x1, y0, y1 in rects:
        w, h = x1 - x0, y1 - y0
        if max(w, h) > max_aspect * min(w, h):
            continue
        if any(k[1] <= x0 and x1 <= k[2] and k[3] <= y0 and y1 <= k[4] for k in kept):
            continue
        if not _closed(rows, bpp, colour, x0, x1, y0, y1, width, height):
            continue
        kept.append((colour, x0, x1, y0, y1))
    return [f"a {x1 - x0}×{y1 - y0} px panel of one colour ({_colour(c, palette)}) at x {x0}–{x1}, y {y0}–{y1} "
            f"of the {width}×{height} px image" for c, x0, x1, y0, y1 in kept]


def _closed(rows, bpp, colour, x0, x1, y0, y1, width, height, tolerance: float = 0.25) -> bool:
    """Mostly another colour just outside each side of the rectangle (an image panel, not a cut through a larger
    shape such as a histogram's bins); the image's edge counts as closed."""
    sides = []
    if y0 > 0:
        sides.append(_pixels(rows[y0 - 1][x0 * bpp : x1 * bpp], bpp))
    if y1 < height:
        sides.append(_pixels(rows[y1][x0 * bpp : x1 * bpp], bpp))
    if x0 > 0:
        sides.append([rows[y][(x0 - 1) * bpp : x0 * bpp] for y in range(y0, y1)])
    if x1 < width:
        sides.append([rows[y][x1 * bpp : (x1 + 1) * bpp] for y in range(y0, y1)])
    return all(sum(p == colour for p in s) <= tolerance * len(s) for s in sides if s)


def png_findings(path: str | Path) -> list[str]:
    """:func:`constant_panels` of one PNG file; a line saying why when it cannot be decoded."""
    try:
        return constant_panels(*read_png(Path(path).read_bytes()))
    except (PNGError, zlib.error, struct.error, OSError) as e:
        return [f"skipped: cannot decode ({e})"]


# ------------------------------------------------------------------------------------------------- links

_ATTR = re.compile(r"<(\w+)\b[^>]*?\b(href|src)\s*=\s*[\"']([^\"']*)[\"']", re.I)
_SCHEME = re.compile(r"^[a-zA-Z][\w+.-]*:|^//")


def _repository(html_dir: Path) -> tuple[Path, str] | None:
    """(checkout root, "owner/name") of the project the book was built from: the first folder above ``html_dir``
    with ``book/_config.yml`` naming a GitHub ``repository.url``."""
    for root in [html_dir.resolve(), *html_dir.resolve().parents]:
        cfg = root / "book" / "_config.yml"
        if cfg.is_file():
            m = re.search(r"^repository:\s*\n(?:[ \t]+.*\n)*?[ \t]+url:\s*https?://github\.com/([\w.-]+/[\w.-]+?)"
                          r"(?:\.git)?/?\s*$", cfg.read_text(errors="ignore"), re.M)
            return (root, m.group(1)) if m else None
    return None


def missing_links(page_html: str, page: Path, html_dir: Path, repo: tuple[Path, str] | None = None) -> list[str]:
    """One line per ``href`` / ``src`` of ``page`` to a local file missing from ``html_dir`` (or, with ``repo``,
    a GitHub / Colab link into that repository to a path its checkout lacks)."""
    out, seen = [], set()
    for m in _ATTR.finditer(page_html):
        tag, attr, url = m.group(1).lower(), m.group(2).lower(), m.group(3).strip()
        if not url or url.startswith("#") or url in seen:
            continue
        seen.add(url)
        if _SCHEME.match(url):
            if repo and (r := re.match(r"https?://(?:colab\.research\.google\.com/github|github\.com)/"
                                       rf"{re.escape(repo[1])}/(?:blob|tree)/[^/]+/([^?#]+)", url, re.I)):
                if not (repo[0] / unquote(r.group(1))).exists():
                    out.append(f"<{tag} {attr}> {url}: {unquote(r.group(1))} is not in the repository")
            continue
        path = unquote(url.split("#", 1)[0].split("?", 1)[0])
        if not path:
            continue
        target = (html_dir / path.lstrip("/")) if path.startswith("/") else (page.parent / path)
        if not target.exists():
            out.append(f"<{tag} {attr}=\"{url}\">: no such file in the built book")
    return out


# ----------------------------------------------------------------------------------------------- verdicts

_NUM = r"[-+−]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_INTERVAL = re.compile(rf"\[\s*({_NUM})\s*,\s*({_NUM})\s*\]")
_WORDS = {V.BETTER: re.compile(r"\bbetter\b", re.I), V.WORSE: re.compile(r"\bworse\b", re.I),
          V.UNCLEAR: re.compile(r"no clear difference|not clearly different", re.I)}
# metric names a header or cell may use, longest first
_METRIC_WORDS = sorted({**{v: k for k, v in V.METRIC_NAMES.items()}, "PSNR": "psnr", "SSIM": "ssim",
                        "LPIPS": "lpips", "L1": "l1"}.items(), key=lambda kv: -len(kv[0]))
_SENTENCE = re.compile(r"Against (.+?) \((95 % paired intervals over [^()]*|one [^()]*? only: no interval[^()]*)\)\.")
_CLAUSE = re.compile(r"\b(better on|worse on|not clearly different on)\b")


def _float(s: str) -> float:
    return float(s.replace("−", "-"))


def metric_of(text: str) -> str | None:
    """The metric a header or cell names ("Δ PSNR dB vs persistence" -> "psnr"), None when none."""
    for word, key in _METRIC_WORDS:
        if re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text):
            return key
    return None


def direction_of(text: str, metric: str) -> bool:
    """Higher is better? From the text's arrow or words (↑ / "higher is better"), else from the metric."""
    if "↓" in text or re.search(r"lower is better", text, re.I):
        return False
    if "↑" in text or re.search(r"higher is better", text, re.I):
        return True
    return V.higher_is_better(metric)


def _split_top(text: str, seps: tuple[str, ...]) -> list[str]:
    """Split at any of ``seps`` outside brackets and parentheses."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(text):
        ch = text[i]
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth = max(0, depth - 1)
        elif depth == 0:
            sep = next((s for s in seps if text.startswith(s, i)), None)
            if sep:
                parts.append(text[start:i])
                i += len(sep)
                start = i
                continue
        i += 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def parse_verdict_sentences(text: str) -> list[dict]:
    """The claims of every :func:`stsynth_lib.verdict.verdict_sentence` in ``text``: dicts with ``baseline_text``,
    ``model``, ``metric`` (key), ``verdict`` and ``sentence``."""
    claims = []
    for m in _SENTENCE.finditer(re.sub(r"\s+", " ", text)):
        head = _split_top(m.group(1), (", ",))
        if len(head) < 2:
            continue
        base, body = head[0], m.group(1)[m.group(1).index(head[0]) + len(head[0]) :].lstrip(", ")
        for part in _split_top(body, ("; ",)):
            subj = _split_top(part, (" is ", " are "))
            if len(subj) < 2:
                continue
            models = _split_top(subj[0], (", ", " and "))
            rest = part[part.index(subj[0]) + len(subj[0]) :]
            bits = _CLAUSE.split(re.sub(r"^\s*(?:is|are)\s+", "", rest))
            for word, names in zip(bits[1::2], bits[2::2]):
                verdict = {"better on": V.BETTER, "worse on": V.WORSE}.get(word, V.UNCLEAR)
                for name in _split_top(names.strip().removesuffix(" and").strip(), (", ", " and ")):
                    key = metric_of(name)
                    for model in models:
                        if key:
                            claims.append({"baseline_text": base, "model": model, "metric": key,
                                           "verdict": verdict, "sentence": m.group(0)})
    return claims


def _cell_text(node) -> str:
    return re.sub(r"\s+", " ", node.text()).strip()


def table_intervals(rows: list[list[str]], header: list[str], before: str) -> tuple[list[dict], bool]:
    """The paired intervals of one table (``rows`` of cell texts under ``header``): dicts with ``model``,
    ``metric``, ``baseline`` (None when the table does not say), ``lo``, ``hi``, ``higher`` (direction), ``mark``
    (the ✔ / ✘ / verdict word the row gives, "" for none), ``where``; and whether the table marks verdicts at all.
    ``before``: the text just above the table ("Model − `seasonal` on the same test pairs")."""
    found, lower = [], [h.lower() for h in header]
    base_text = re.findall(r"[Mm]odel\s*[−-]\s*`?([\w.-]+)", before)
    page_base = base_text[-1] if base_text else None
    verdict_col = next((i for i, h in enumerate(lower) if h.strip() == "verdict"), None)
    metric_col = next((i for i, h in enumerate(lower) if h.strip() == "metric"), None)
    marks = verdict_col is not None or any("✔" in c or "✘" in c for r in rows for c in r)

    def baseline_of(h: str) -> str | None:
        m = re.search(r"\bvs\.?\s+`?([\w.-]+)", h) or re.search(r"[−-]\s*`?([A-Za-z_][\w.-]*)", h)
        return m.group(1) if m else page_base

    for r in rows:
        if not r:
            continue
        model = r[0] if metric_col != 0 else ""
        if metric_col is not None and "model" in lower:
            model = r[lower.index("model")] if lower.index("model") < len(r) else model
        for i, cell in enumerate(r):
            h = header[i] if i < len(header) else ""
            m = _INTERVAL.search(cell)
            if not m or i == metric_col or h.strip().lower() in ("model", "metric", "verdict"):
                continue
            if metric_col is not None:  # long form: one metric per row, the verdict in its own column
                metric_text = r[metric_col] if metric_col < len(r) else ""
                said = r[verdict_col] if verdict_col is not None and verdict_col < len(r) else cell
                delta_header = next((x for x in header if re.search(r"[−Δ]|\bvs\b", x)), h)
            else:  # wide form: a metric per column
                if not re.search(r"Δ|\bvs\b|[−]", h) and not marks:
                    continue
                metric_text, said, delta_header = h, cell, h
            metric = metric_of(metric_text)
            if metric is None:
                continue
            mark = "✔" if "✔" in said else "✘" if "✘" in said else next(
                (k for k, rx in _WORDS.items() if verdict_col is not None and rx.search(said)), "")
            found.append({"model": model, "metric": metric, "baseline": baseline_of(delta_header),
                          "lo": _float(m.group(1)), "hi": _float(m.group(2)),
                          "higher": direction_of(metric_text + " " + h, metric), "mark": mark,
                          "cell": cell, "where": f"table row {model!r}, column {h!r}"})
    return found, marks


def _same_model(a: str, b: str) -> bool:
    a, b = a.strip(), b.strip()
    for cut in ("...", "…"):
        if a.endswith(cut):
            return b.startswith(a[: -len(cut)].rstrip())
        if b.endswith(cut):
            return a.startswith(b[: -len(cut)].rstrip())
    return a == b


def check_verdicts(intervals: list[tuple[dict, bool]], text: str) -> list[str]:
    """Findings: a marked cell whose mark disagrees with its interval, and a sentence claim that the page's
    interval for the same model, metric and baseline does not support."""
    out = []
    for iv, marked in intervals:
        if not marked:
            continue
        v = V.verdict(iv["lo"], iv["hi"], iv["higher"])
        said = {"✔": V.BETTER, "✘": V.WORSE, "": V.UNCLEAR}.get(iv["mark"], iv["mark"])
        if said != v:
            out.append(f"{iv['where']}: {iv['cell']!r} is marked {said!r} but the interval says {v!r}")
    bases = {iv["baseline"] for iv, _ in intervals if iv["baseline"]}
    for c in parse_verdict_sentences(text):
        base = next((b for b in sorted(bases, key=len, reverse=True)
                     if re.search(rf"(?<![\w-]){re.escape(b)}(?![\w-])", c["baseline_text"])), None)
        if base is None:
            continue
        ivs = [iv for iv, _ in intervals if iv["baseline"] == base and iv["metric"] == c["metric"]
               and _same_model(iv["model"], c["model"])]
        for iv in ivs[:1]:
            v = V.verdict(iv["lo"], iv["hi"], iv["higher"])
            if v != c["verdict"]:
                name = V.METRIC_NAMES.get(c["metric"], c["metric"])
                out.append(f"\"{c['model'][:60]} is {V.CLAUSES[c['verdict']]} {name}\" against {base}, but "
                           f"{iv['where']} prints {iv['cell']!r}: {v}")
    return out
