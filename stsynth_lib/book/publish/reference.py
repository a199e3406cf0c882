"""Publish a reference run: copy ``book/executed/<profile>/`` into ``book/reference/<profile>/`` with volatile metadata,
widgets and stderr dropped and heavy figures shrunk (``python -m stsynth_lib.book.publish publish``). Pillow is imported
only when a figure is shrunk."""

from __future__ import annotations

import base64
import hashlib
import io
import shutil
import warnings
from pathlib import Path

from stsynth_lib.book.publish.stamp import (EXECUTED_ROOT, REFERENCE_ROOT, PublishError, _src, read_nb, read_stamp,
                                            write_nb)

MAX_TOTAL_MB = 25.0
MAX_NOTEBOOK_BYTES = 1_500_000  # one committed notebook: figures shrink further until it fits (git stays light)
MAX_PNG_PX = 1600
MAX_PNG_BYTES = 400_000

# ------------------------------------------------------------------------------------------------------- publish
_VOLATILE_NB_PAPERMILL = ("duration", "start_time", "end_time", "environment_variables", "input_path",
                          "output_path", "exception", "version")
_WIDGET = "application/vnd.jupyter.widget-view+json"


MIN_PNG_PX = 640  # shrinking for bytes stops here: a figure must stay readable
LAST_RESORT_PNG_PX = 400  # ... unless a notebook of many noise-like figures still exceeds MAX_NOTEBOOK_BYTES


def encode_png(im, palette: bool) -> bytes:
    """``im`` (a PIL image) as optimized PNG bytes; ``palette``: as a 256-colour adaptive palette (RGB/RGBA)."""
    from PIL import Image

    if palette and im.mode in ("RGB", "RGBA"):
        # Figures of satellite tiles compress badly losslessly: a 256-colour adaptive palette keeps them readable.
        im = im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def shrink_png(data: bytes, max_px: int = MAX_PNG_PX, max_bytes: int = MAX_PNG_BYTES, min_px: int = MIN_PNG_PX) -> bytes:
    """Downscale a PNG wider/taller than ``max_px`` and re-encode it when it is heavy (optimized, then a 256-colour
    palette, then smaller by steps of 0.8 down to ``min_px``) until it fits ``max_bytes``; never larger."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.load()
        if max(im.size) <= max_px and len(data) <= max_bytes:
            return data
        side = min(max(im.size), max_px)
        while True:
            scale = side / max(im.size)
            small = im if scale >= 1 else im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))),
                                                    Image.LANCZOS)
            out = encode_png(small, palette=False)
            if len(out) > max_bytes:
                out = min(out, encode_png(small, palette=True), key=len)
            if len(out) <= max_bytes or side * 0.8 < min_px:
                break
            side = int(side * 0.8)
    return out if len(out) < len(data) else data


def _text(out: dict) -> str:
    t = out.get("text", "")
    return "".join(t) if isinstance(t, list) else str(t)


def merge_streams(outputs: list[dict]) -> list[dict]:
    """Consecutive ``stream`` outputs of one name (stdout, stderr) merged into one, as one box on the page: a
    trainer's validation lines, written between progress-bar updates on stderr, arrive as one output each, and once
    stderr is dropped they would show as a grey box per line."""
    merged: list[dict] = []
    for out in outputs:
        prev = merged[-1] if merged else None
        if (out.get("output_type") == "stream" and prev is not None and prev.get("output_type") == "stream"
                and prev.get("name") == out.get("name")):
            merged[-1] = {**prev, "text": _text(prev) + _text(out)}
        else:
            merged.append(out)
    return merged


# a stream line wider than this scrolls sideways in the book's output box (about 100 monospace characters at
# make book-check's 1280 px window): sentences are wrapped, aligned text (tables, aligned columns) is left alone
OUTPUT_LINE_CHARS = 100


def wrap_prose_lines(text: str, width: int = OUTPUT_LINE_CHARS) -> str:
    """``text`` with each line longer than ``width`` that reads as a sentence (no run of two spaces, which aligned
    columns and tables have) wrapped between words, the continuation indented by two spaces: a printed conclusion is
    read whole, not cut at the box's edge."""
    import textwrap

    out = []
    for line in text.split("\n"):
        if len(line) > width and "  " not in line.strip():
            indent = line[:len(line) - len(line.lstrip())]
            out += textwrap.wrap(line, width, subsequent_indent=indent + "  ", break_long_words=False,
                                 break_on_hyphens=False) or [line]
        else:
            out.append(line)
    return "\n".join(out)


def clean_notebook(nb: dict, *, max_px: int = MAX_PNG_PX, max_bytes: int = MAX_PNG_BYTES, min_px: int = MIN_PNG_PX) -> dict:
    """Drop volatile metadata, widgets and stderr, merge consecutive stdout outputs into one (:func:`merge_streams`)
    and shrink heavy PNGs. Keeps tags, outputs and the stamp."""
    meta = nb.setdefault("metadata", {})
    meta.pop("widgets", None)
    pm = meta.get("papermill")
    if isinstance(pm, dict):
        for k in _VOLATILE_NB_PAPERMILL:
            pm.pop(k, None)
    seen: set[str] = set()
    for cell in nb.get("cells", []):
        # jupytext draws random cell ids at each conversion: ids from the cell's source keep diffs to what changed
        if "id" in cell:
            base = hashlib.sha1(_src(cell).encode()).hexdigest()[:8]
            cid, k = base, 1
            while cid in seen:
                cid, k = f"{base}-{k}", k + 1
            seen.add(cid)
            cell["id"] = cid
        cm = cell.setdefault("metadata", {})
        for k in ("papermill", "execution", "ExecuteTime", "collapsed", "scrolled"):
            cm.pop(k, None)
        if cell.get("cell_type") != "code":
            continue
        outputs = []
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                continue
            data = out.get("data")
            if isinstance(data, dict):
                if _WIDGET in data:
                    continue  # progress bars: nothing to show in a static page
                if "image/png" in data:
                    raw = base64.b64decode("".join(data["image/png"]) if isinstance(data["image/png"], list)
                                           else data["image/png"])
                    small = shrink_png(raw, max_px, max_bytes, min_px)
                    if small is not raw:
                        data["image/png"] = base64.b64encode(small).decode("ascii")
                        md = out.setdefault("metadata", {}).setdefault("image/png", {})
                        if isinstance(md, dict) and "width" not in md and "height" not in md:
                            # shown as wide as drawn (MyST-NB reads this width): fewer pixels, not smaller text
                            from PIL import Image

                            with Image.open(io.BytesIO(raw)) as im:
                                md["width"] = im.size[0]
            outputs.append(out)
        cell["outputs"] = merge_streams(outputs)
    return nb


def _dir_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def publish(profile: str, *, executed_root: str | Path = EXECUTED_ROOT, runs_dir: str | Path = "runs",
            reference_root: str | Path = REFERENCE_ROOT, max_total_mb: float = MAX_TOTAL_MB,
            max_px: int = MAX_PNG_PX, max_bytes: int = MAX_PNG_BYTES, log=print) -> Path:
    """Copy ``<executed_root>/<profile>/*.ipynb`` (cleaned) and the results files into ``<reference_root>/<profile>/``."""
    src = Path(executed_root) / profile
    notebooks = sorted(src.glob("*.ipynb"))
    if not notebooks:
        raise PublishError(f"No executed notebooks in {src}/: run `make run-all PROFILE={profile}` first "
                           f"(make nb writes {src}/<notebook>.ipynb).")
    eval_dir = Path(runs_dir) / profile / "eval"
    summary = eval_dir / "summary.json"
    if not summary.is_file():
        raise PublishError(f"{summary} not found: run `make nb NB=06_evaluate PROFILE={profile}` "
                           f"(or `make run-all PROFILE={profile}`) first.")
    unstamped = [p.name for p in notebooks if read_stamp(p) is None]
    if unstamped:
        raise PublishError(f"{', '.join(unstamped)} in {src}/ carry no run stamp: rerun them with "
                           f"`make nb NB=<stem> PROFILE={profile}` (or stamp them: python -m stsynth_lib.book.publish "
                           f"stamp {src}/<stem>.ipynb --profile {profile}).")
    other = [f"{p.name} ({read_stamp(p)['profile']})" for p in notebooks if read_stamp(p)["profile"] != profile]
    if other:
        raise PublishError(f"{', '.join(other)} in {src}/ ran with another profile: rerun them with "
                           f"`make nb NB=<stem> PROFILE={profile}`.")
    dest = Path(reference_root) / profile
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "results").mkdir(parents=True)
    for p in notebooks:
        before = p.stat().st_size
        # a notebook of many figures: smaller figures; noise-like ones (diffusion samples) below the usual floor last
        steps = [(max_bytes, MIN_PNG_PX), (max_bytes // 2, MIN_PNG_PX), (max_bytes // 4, MIN_PNG_PX),
                 (max_bytes // 4, LAST_RESORT_PNG_PX), (max_bytes // 8, LAST_RESORT_PNG_PX)]
        for cap, floor in steps:
            write_nb(clean_notebook(read_nb(p), max_px=max_px, max_bytes=cap, min_px=floor), dest / p.name)
            if (dest / p.name).stat().st_size <= MAX_NOTEBOOK_BYTES:
                break
        else:
            warnings.warn(f"{dest / p.name} is {(dest / p.name).stat().st_size / 1e6:.2f} MB after shrinking every "
                          f"figure to {LAST_RESORT_PNG_PX} px: more than {MAX_NOTEBOOK_BYTES / 1e6:.1f} MB", stacklevel=2)
        log(f"  {p.name}: {before / 1e6:.2f} MB -> {(dest / p.name).stat().st_size / 1e6:.2f} MB")
    for name in ("summary.json", "results.md", "fid.json", "examples.png"):
        f = eval_dir / name
        if f.is_file():
            data = f.read_bytes()
            if name.endswith(".png"):
                data = shrink_png(data, max_px, max_bytes)
            (dest / "results" / name).write_bytes(data)
        elif name in ("results.md", "examples.png"):
            warnings.warn(f"{f} not found: the published results omit it (chapter 6 writes it: "
                          f"make nb NB=06_evaluate PROFILE={profile})", stacklevel=2)
    total = _dir_mb(Path(reference_root))
    log(f"published {len(notebooks)} notebooks of {profile} into {dest}/; {Path(reference_root)}/ holds {total:.1f} MB")
    if total > max_total_mb:
        raise PublishError(f"{reference_root}/ holds {total:.1f} MB, over the {max_total_mb:g} MB budget: shrink the "
                           f"figures (smaller max_px / dpi in the notebooks) or publish fewer profiles.")
    return dest
