"""Stamp executed notebooks, publish a reference run into the book, and generate the results pages.

    python -m stsynth_lib.publish stamp book/executed/smoke/06_evaluate.ipynb --profile smoke
    python -m stsynth_lib.publish publish --profile sn7_real_128          # book/executed/<p>/ -> book/reference/<p>/
    python -m stsynth_lib.publish stage --source reference --out build/book   # what `make book` builds
    python -m stsynth_lib.publish readme [--check]                         # README results block

Every number on the landing page and in the README's results block is formatted here from a ``summary.json``
written by chapter 6 (never typed). The module imports only the standard library and PyYAML at the top, so
`make book` runs it in a light environment (jupyter-book alone, no torch); Pillow is imported only to shrink
figures when publishing.
"""

from __future__ import annotations

import argparse
import base64
import datetime as _dt
import hashlib
import io
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

STAMP_TAG = "stsynth-stamp"
HIDE_TAGS = ("parameters", "injected-parameters")
REFERENCE_ROOT = Path("book/reference")
EXECUTED_ROOT = Path("book/executed")
MAX_TOTAL_MB = 25.0
MAX_PNG_PX = 1600
MAX_PNG_BYTES = 400_000
README_START = "<!-- results-table:start -->"
README_END = "<!-- results-table:end -->"
# (summary.json metric key, column label, digits of the mean, digits of the paired difference)
HEADLINE_METRICS = (("psnr", "PSNR dB", 2, 2), ("ssim", "SSIM", 3, 4), ("lpips", "LPIPS", 3, 4))
PERSISTENCE = "persistence"
NOT_A_PREDICTOR = ("real_future",)  # the segmenter's ceiling: no image metrics


class PublishError(RuntimeError):
    """A missing input, named with the command that makes it."""


# --------------------------------------------------------------------------------------------------- notebooks io
def read_nb(path: str | Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_nb(nb: dict, path: str | Path) -> None:
    """Write like nbformat does (sorted keys, indent 1), so diffs stay small and stable."""
    Path(path).write_text(json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def _src(cell: dict) -> str:
    s = cell.get("source", "")
    return "".join(s) if isinstance(s, list) else s


def _tags(cell: dict) -> list:
    return cell.setdefault("metadata", {}).setdefault("tags", [])


# --------------------------------------------------------------------------------------------------------- stamp
def profile_data_kind(profile: str, params_dir: str | Path = "params") -> str:
    """"synthetic" or "real", from ``synthetic_data`` in ``params/<profile>/common.yaml``."""
    import yaml

    path = Path(params_dir) / profile / "common.yaml"
    if not path.is_file():
        raise PublishError(f"{path} not found: is '{profile}' a profile? (ls {params_dir}/)")
    common = yaml.safe_load(path.read_text()) or {}
    return "synthetic" if common.get("synthetic_data", False) else "real"


def git_commit(repo: str | Path = ".") -> str:
    """Short commit of ``repo``, with ``-dirty`` when tracked files differ from it; "unknown" outside git."""
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def machine_description() -> str:
    """CPU model and core count, plus the GPU names nvidia-smi reports (no torch import)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"CPU {cpu}, {os.cpu_count()} cores"
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=20).stdout.split("\n")
            gpus = [g.strip() for g in out if g.strip()]
            if gpus:
                text = f"GPU {', '.join(gpus)}; " + text
        except (OSError, subprocess.SubprocessError):
            pass
    return text


def format_duration(seconds: float | None) -> str:
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "not measured"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def banner_text(stamp: dict) -> str:
    kind = "REAL" if stamp["data"] == "real" else "SYNTHETIC"
    what = ("real SpaceNet 7 imagery" if stamp["data"] == "real"
            else "synthetic SpaceNet 7 imagery: these numbers show the pipeline works, not how well the models do")
    return (f"**Profile `{stamp['profile']}` · {kind} data** ({what}).\n\n"
            f"*Run stamp:* commit `{stamp['commit']}` · {stamp['date']} · {stamp['machine']} · "
            f"this notebook ran in **{format_duration(stamp.get('wall_s'))}** (measured by papermill). "
            f"Every time estimate in this book is read from such a stamp. The parameters of the run are in the "
            f"collapsed *Parameters* cells below.")


def stamp_notebook(path: str | Path, profile: str, *, params_dir: str | Path = "params", repo: str | Path = ".",
                   wall_s: float | None = None, date: str | None = None, machine: str | None = None,
                   commit: str | None = None) -> dict:
    """Record the run stamp in ``metadata.stsynth.stamp``, hide the parameter cells, put a banner cell first.

    Idempotent: a second call replaces the banner and the stamp and adds no tag twice. The wall time is papermill's
    own measurement (``metadata.papermill.duration``) unless ``wall_s`` is given."""
    nb = read_nb(path)
    pm = nb.get("metadata", {}).get("papermill", {})
    ran_with = (pm.get("parameters") or {}).get("profile")
    if ran_with and ran_with != profile:
        raise PublishError(f"{path} ran with profile '{ran_with}' (papermill parameters), not '{profile}': "
                           f"rerun it with `make nb NB={Path(path).stem} PROFILE={profile}`")
    if wall_s is None and pm.get("duration") is not None:
        wall_s = float(pm["duration"])
    if date is None:
        end = pm.get("end_time")
        when = (_dt.datetime.fromisoformat(end) if end else _dt.datetime.now(_dt.timezone.utc))
        date = when.astimezone(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    stamp = {"profile": profile, "data": profile_data_kind(profile, params_dir),
             "commit": commit or git_commit(repo), "date": date, "machine": machine or machine_description(),
             "wall_s": None if wall_s is None else round(float(wall_s), 1)}
    nb.setdefault("metadata", {}).setdefault("stsynth", {})["stamp"] = stamp
    cells = [c for c in nb.get("cells", []) if STAMP_TAG not in c.get("metadata", {}).get("tags", [])]
    for c in cells:
        tags = _tags(c)
        if any(t in tags for t in HIDE_TAGS):
            if "hide-cell" not in tags:
                tags.append("hide-cell")
            which = (f"this run's values ({profile})" if "injected-parameters" in tags
                     else "the notebook's defaults")
            c["metadata"]["mystnb"] = {**c["metadata"].get("mystnb", {}),
                                       "code_prompt_show": f"Parameters: {which}", "code_prompt_hide": "Hide parameters"}
    banner = {"cell_type": "markdown", "id": "stsynth-stamp", "metadata": {"tags": [STAMP_TAG]},
              "source": banner_text(stamp)}
    nb["cells"] = [banner] + cells
    write_nb(nb, path)
    return stamp


def read_stamp(nb_or_path) -> dict | None:
    nb = read_nb(nb_or_path) if isinstance(nb_or_path, (str, Path)) else nb_or_path
    return nb.get("metadata", {}).get("stsynth", {}).get("stamp")


# ------------------------------------------------------------------------------------------------------- publish
_VOLATILE_NB_PAPERMILL = ("duration", "start_time", "end_time", "environment_variables", "input_path",
                          "output_path", "exception", "version")
_WIDGET = "application/vnd.jupyter.widget-view+json"


def shrink_png(data: bytes, max_px: int = MAX_PNG_PX, max_bytes: int = MAX_PNG_BYTES) -> bytes:
    """Downscale a PNG wider/taller than ``max_px`` and re-encode it optimized when it is heavy; never larger."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.load()
        big = max(im.size) > max_px
        if not big and len(data) <= max_bytes:
            return data
        if big:
            scale = max_px / max(im.size)
            im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, format="PNG", optimize=True)
        out = buf.getvalue()
        if len(out) > max_bytes and im.mode in ("RGB", "RGBA"):
            # Figures of satellite tiles compress badly losslessly: a 256-colour adaptive palette keeps them readable.
            q = im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
            buf = io.BytesIO()
            q.save(buf, format="PNG", optimize=True)
            if len(buf.getvalue()) < len(out):
                out = buf.getvalue()
    return out if len(out) < len(data) else data


def clean_notebook(nb: dict, *, max_px: int = MAX_PNG_PX, max_bytes: int = MAX_PNG_BYTES) -> dict:
    """Drop volatile metadata, widgets and stderr, and shrink heavy PNGs. Keeps tags, outputs and the stamp."""
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
                    small = shrink_png(raw, max_px, max_bytes)
                    if small is not raw:
                        data["image/png"] = base64.b64encode(small).decode("ascii")
                        md = out.get("metadata", {}).get("image/png")
                        if isinstance(md, dict) and ("width" in md or "height" in md):
                            from PIL import Image

                            with Image.open(io.BytesIO(small)) as im:
                                w, h = im.size
                            md.update({k: v for k, v in (("width", w), ("height", h)) if k in md})
            outputs.append(out)
        cell["outputs"] = outputs
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
                           f"`make nb NB=<stem> PROFILE={profile}` (or stamp them: python -m stsynth_lib.publish "
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
        write_nb(clean_notebook(read_nb(p), max_px=max_px, max_bytes=max_bytes), dest / p.name)
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


# ------------------------------------------------------------------------------------------------- results tables
def _fmt(v, digits: int, sign: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"


def _no_interval(row: dict) -> str:
    """What a paired cell shows instead of an interval when one unit (area or block) was resampled."""
    n, unit = row.get("n_areas") or 1, row.get("unit") or "area"
    return f"n/a ({n} {unit}{'s' if n != 1 else ''})"


def _model_order(summary: dict) -> list[str]:
    present = []
    for r in summary.get("summary", []):
        if r["model"] not in present and r["model"] not in NOT_A_PREDICTOR and r["metric"] in ("psnr", "ssim", "lpips"):
            present.append(r["model"])
    order = [PERSISTENCE] + list(summary.get("baselines", [])) + list(summary.get("runs", {}))
    return [m for m in order if m in present] + [m for m in present if m not in order]


def lpips_calibrated(summary: dict) -> bool:
    rows = [r for r in summary.get("summary", []) if r["metric"] == "lpips"]
    return bool(summary.get("calibrated", {}).get("lpips", True)) and all(r.get("calibrated", True) for r in rows)


def results_table(summary: dict) -> str:
    """Markdown: every model, persistence and baseline; n pairs; PSNR, SSIM, LPIPS [95 % CI over tiles]; and the
    paired difference to persistence [95 % CI, resampling summary["paired_resamples"]]."""
    rows = {(r["model"], r["metric"]): r for r in summary.get("summary", [])}
    paired = {(r["model"], r["metric"]): r for r in summary.get("paired_vs_persistence", [])
              if r.get("baseline", PERSISTENCE) in (PERSISTENCE, None)}
    cal = lpips_calibrated(summary)
    labels = [(k, lab + (" (uncalibrated)" if k == "lpips" and not cal else ""), d, dd)
              for k, lab, d, dd in HEADLINE_METRICS]
    head = ["model", "n pairs"] + [lab for _, lab, _, _ in labels] + [f"Δ {lab} vs persistence" for _, lab, _, _ in labels]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in _model_order(summary):
        ns = {rows[(m, k)]["n"] for k, *_ in labels if (m, k) in rows}
        cells = [m, "/".join(str(n) for n in sorted(ns)) or "n/a"]
        for k, _, d, _ in labels:
            r = rows.get((m, k))
            cells.append("n/a" if r is None else f"{_fmt(r['mean'], d)} [{_fmt(r['ci_lo'], d)}, {_fmt(r['ci_hi'], d)}]")
        for k, _, _, dd in labels:
            if m == PERSISTENCE:
                cells.append("(reference)")
                continue
            p = paired.get((m, k))
            if p is None:
                cells.append("n/a")
            elif p.get("ci_lo") is None or p.get("ci_hi") is None:
                cells.append(f"{_fmt(p['mean_diff'], dd, True)} {_no_interval(p)}")
            else:
                cells.append(f"{_fmt(p['mean_diff'], dd, True)} [{_fmt(p['ci_lo'], dd, True)}, "
                             f"{_fmt(p['ci_hi'], dd, True)}]")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


STRONGEST_METRICS = (("psnr", "PSNR dB", 2, "higher"), ("ssim", "SSIM", 4, "higher"), ("l1", "L1", 4, "lower"))


def strongest_baseline_section(summary: dict) -> str:
    """Markdown: each learned model minus the strongest simple baseline (chosen on validation by chapter 6 and
    recorded in summary.json), paired on the same test pairs; "" when summary.json has no such comparison."""
    info = summary.get("strongest_baseline")
    rows = summary.get("paired_vs_strongest_baseline") or []
    if not info:
        return ""
    name = info["name"]
    head = (f"**The bar: the strongest simple baseline, `{name}`** (no learning; chosen by "
            f"{info.get('chosen_by', 'psnr').upper()} on the `{info.get('chosen_on', 'val')}` split, never on test). "
            f"Model − `{name}` on the same test pairs [95 % interval, resampling "
            f"{summary.get('paired_resamples', 'whole areas (AOIs)')}]; a model beats the bar on a metric only when "
            f"the interval is on the good side of zero:")
    models = list(dict.fromkeys(r["model"] for r in rows if r["model"] != name))
    if not models:
        return head + "\n\nNo learned model was scored against it.\n"
    by = {(r["model"], r["metric"]): r for r in rows}
    cols = ["model"] + [f"Δ {lab} ({better} is better)" for _, lab, _, better in STRONGEST_METRICS] + ["areas better (PSNR)"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for m in models:
        cells = [m]
        for k, _, d, _ in STRONGEST_METRICS:
            r = by.get((m, k))
            if r is None:
                cells.append("n/a")
            elif r.get("ci_lo") is None or r.get("ci_hi") is None:
                cells.append(f"{_fmt(r['mean_diff'], d, True)} {_no_interval(r)}")
            else:
                mark = {True: " ✔", False: " ✘"}.get(r.get("better"), "")
                cells.append(f"{_fmt(r['mean_diff'], d, True)} [{_fmt(r['ci_lo'], d, True)}, "
                             f"{_fmt(r['ci_hi'], d, True)}]{mark}")
        p = by.get((m, "psnr"))
        cells.append(f"{p.get('areas_better', 'n/a')} of {p.get('n_areas', 'n/a')}" if p else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    return head + "\n\n" + "\n".join(lines) + "\n\n✔ beats the bar, ✘ worse than the bar, no mark: no clear difference.\n"


def table_caption(summary: dict) -> str:
    unit = summary.get("paired_resamples", "whole areas (AOIs)")
    n_units = sorted({r.get("n_areas") for r in summary.get("paired_vs_persistence", []) if r.get("n_areas")})
    units = (f" ({'/'.join(str(n) for n in n_units)} unit{'s' if n_units != [1] else ''})" if n_units else "")
    cal = "" if lpips_calibrated(summary) else (" LPIPS is **uncalibrated** (random backbone): it ranks these rows "
                                                "and means nothing outside this table.")
    weights = f" LPIPS weights: {summary['lpips_weights']}." if summary.get("lpips_weights") else ""
    return (f"Split `{summary.get('split', 'test')}`, {summary.get('n_pairs', 'n/a')} test pairs. Scores: mean "
            f"[95 % bootstrap interval over tiles]; n pairs = tiles scored. Δ = model − persistence on the same "
            f"pairs [95 % interval, resampling {unit}{units}; \"n/a (1 area)\" = one unit resampled, no interval]. "
            f"Higher is better for PSNR and SSIM, lower for LPIPS.{weights}{cal}")


def _first(d: Path, pattern: str):
    return next(iter(sorted(d.glob(pattern))), None)


def profile_stamp(nb_dir: Path, profile: str | None = None) -> dict | None:
    """The stamp of the notebooks in ``nb_dir`` that ran with ``profile`` (default: the folder's name): the first one's,
    with the summed wall time of all of them and, under "other_profiles", the notebooks that ran with another."""
    profile = profile or nb_dir.name
    stamps = [(p.stem, s) for p, s in ((p, read_stamp(p)) for p in sorted(nb_dir.glob("*.ipynb"))) if s]
    mine = [s for _, s in stamps if s["profile"] == profile]
    if not mine:
        return None
    out = dict(mine[0])
    walls = [s.get("wall_s") for _, s in stamps]
    out["total_wall_s"] = sum(walls) if all(w is not None for w in walls) else None
    out["commits"] = sorted({s["commit"] for _, s in stamps})
    out["other_profiles"] = [f"{stem} ({s['profile']})" for stem, s in stamps if s["profile"] != profile]
    return out


def headline_section(profile: str, summary: dict, *, stamp: dict | None, figure: str | None, reference: bool,
                     data_kind: str | None = None) -> str:
    kind = (stamp or {}).get("data") or data_kind or "unknown"
    kind_txt = {"real": "REAL data", "synthetic": "SYNTHETIC data"}.get(kind, "data of unknown kind")
    origin = "reference run committed in `book/reference/`" if reference else "local run (`book/executed/`), not a reference"
    lines = [f"## Results: `{profile}` · {kind_txt}", "",
             f"*{origin}*" + (f"; commit {', '.join(f'`{c}`' for c in stamp['commits'])}, {stamp['date']}, "
                             f"{stamp['machine']}, all chapters ran in {format_duration(stamp.get('total_wall_s'))}."
                             if stamp else "; no run stamp."), ""]
    if stamp and stamp.get("other_profiles"):
        lines += [f"**Mixed run:** these chapters ran with another profile: {', '.join(stamp['other_profiles'])}.", ""]
    if kind == "synthetic":
        lines += ["These are synthetic data: the numbers show that the pipeline works, not how well the models work "
                  "on real imagery.", ""]
    lines += [results_table(summary), "", table_caption(summary), ""]
    if strongest_baseline_section(summary):
        lines += [strongest_baseline_section(summary), ""]
    for v in summary.get("verdict", []):
        lines.append(f"* {v}")
    if summary.get("verdict"):
        lines.append("")
    if figure:
        lines += [f"```{{figure}} {figure}", f":name: examples-{profile}", "",
                  f"Test examples of `{profile}`: past | truth | each model (chapter 6, `runs/{profile}/eval/examples.png`).",
                  "```", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- book stage
def _profile_sources(source: str, profile: str | None, reference_root: Path, executed_root: Path, runs_dir: Path):
    """[(profile, notebook dir, summary.json or None, examples.png or None)]."""
    if source == "reference":
        dirs = sorted(d for d in reference_root.glob("*") if d.is_dir() and any(d.glob("*.ipynb")))
        if profile:
            dirs = [d for d in dirs if d.name == profile]
        if not dirs:
            raise PublishError(f"No reference notebooks in {reference_root}/"
                               f"{profile + '/' if profile else ''}: publish a run "
                               f"(make run-all PROFILE=sn7_real_128 && make publish PROFILE=sn7_real_128), "
                               f"or build a local run: make book PROFILE=smoke")
        return [(d.name, d, d / "results" / "summary.json", d / "results" / "examples.png") for d in dirs]
    if not profile:
        raise PublishError("--source executed needs --profile")
    d = executed_root / profile
    if not any(d.glob("*.ipynb")):
        raise PublishError(f"No executed notebooks in {d}/: run `make run-all PROFILE={profile}` first")
    ev = runs_dir / profile / "eval"
    return [(profile, d, ev / "summary.json", ev / "examples.png")]


def _chapter_title(nb_path: Path) -> str:
    for c in read_nb(nb_path).get("cells", []):
        if c.get("cell_type") == "markdown":
            m = re.search(r"^#\s+(.+)$", _src(c), re.M)
            if m:
                return m.group(1).strip()
    return nb_path.stem


def stage_book(source: str = "reference", profile: str | None = None, *, out: str | Path = "build/book",
               book_dir: str | Path = "book", reference_root: str | Path = REFERENCE_ROOT,
               executed_root: str | Path = EXECUTED_ROOT, runs_dir: str | Path = "runs",
               params_dir: str | Path = "params") -> Path:
    """Lay out a buildable Jupyter Book in ``out``: config, static files, the notebooks of each profile, a generated
    table of contents and a generated landing page that opens with the results. Nothing is executed."""
    out, book_dir = Path(out), Path(book_dir)
    profiles = _profile_sources(source, profile, Path(reference_root), Path(executed_root), Path(runs_dir))
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    shutil.copy2(book_dir / "_config.yml", out / "_config.yml")
    if (book_dir / "_static").is_dir():
        shutil.copytree(book_dir / "_static", out / "_static")
    sections, parts = [], []
    for name, nb_dir, summary_path, fig in profiles:
        (out / name).mkdir()
        chapters = []
        for p in sorted(nb_dir.glob("*.ipynb")):
            shutil.copy2(p, out / name / p.name)
            chapters.append(f"{name}/{p.stem}")
        stamp = profile_stamp(nb_dir)
        try:
            kind = stamp["data"] if stamp else profile_data_kind(name, params_dir)
        except PublishError:
            kind = None
        figure = None
        if fig is not None and fig.is_file():
            (out / name / "results").mkdir()
            shutil.copy2(fig, out / name / "results" / fig.name)
            figure = f"{name}/results/{fig.name}"
        if summary_path is not None and summary_path.is_file():
            summary = json.loads(summary_path.read_text())
            sections.append(headline_section(name, summary, stamp=stamp, figure=figure,
                                             reference=source == "reference", data_kind=kind))
        else:
            sections.append(f"## Results: `{name}`\n\nNo `summary.json` for this profile "
                            f"(`{summary_path}`): run chapter 6 (`make nb NB=06_evaluate PROFILE={name}`).\n")
        kind_txt = {"real": "real data", "synthetic": "synthetic data"}.get(kind, "")
        parts.append((f"{name}" + (f" ({kind_txt})" if kind_txt else ""), chapters))
    toc = ["format: jb-book", "root: intro", "parts:"]
    for caption, chapters in parts:
        toc.append(f"  - caption: \"{caption}\"")
        toc.append("    chapters:")
        toc += [f"      - file: {c}" for c in chapters]
    (out / "_toc.yml").write_text("\n".join(toc) + "\n")
    (out / "intro.md").write_text(landing_page((book_dir / "intro.md").read_text(), sections))
    return out


def landing_page(intro: str, sections: list[str]) -> str:
    """The intro's title, then the results sections, then the rest of the intro."""
    lines = intro.splitlines()
    title_at = next((i for i, l in enumerate(lines) if l.startswith("# ")), None)
    title = lines[title_at] if title_at is not None else "# stsynth"
    rest = "\n".join(lines[title_at + 1:] if title_at is not None else lines).strip("\n")
    note = ("<!-- Generated by `python -m stsynth_lib.publish stage` from book/intro.md and the results files; "
            "edit those, not this page. -->")
    return "\n".join([title, "", note, ""] + sections + ["## About this book", "", rest, ""])


# --------------------------------------------------------------------------------------------------------- README
def readme_block(reference_root: str | Path = REFERENCE_ROOT) -> str:
    root = Path(reference_root)
    parts = [README_START,
             "<!-- Generated by `make readme-results` (python -m stsynth_lib.publish readme) from "
             "book/reference/*/results/summary.json; do not edit by hand. -->", ""]
    found = sorted(p for p in root.glob("*/results/summary.json"))
    if not found:
        parts += ["No reference run is published yet (`book/reference/` holds no `results/summary.json`). To publish "
                  "one: `make run-all PROFILE=sn7_real_128`, `make publish PROFILE=sn7_real_128`, then "
                  "`make readme-results`.", ""]
    for p in found:
        prof = p.parent.parent.name
        summary = json.loads(p.read_text())
        stamp = profile_stamp(p.parent.parent)
        kind = (stamp or {}).get("data", "unknown")
        when = (f" (commit {', '.join(f'`{c}`' for c in stamp['commits'])}, {stamp['date']}, {stamp['machine']}, "
                f"all chapters {format_duration(stamp.get('total_wall_s'))})" if stamp else "")
        parts += [f"**`{prof}`** · {kind} data{when}:", "", results_table(summary), "", table_caption(summary), ""]
        if strongest_baseline_section(summary):
            parts += [strongest_baseline_section(summary), ""]
    parts.append(README_END)
    return "\n".join(parts)


def update_readme(readme: str | Path = "README.md", reference_root: str | Path = REFERENCE_ROOT,
                  check: bool = False) -> bool:
    """Rewrite the block between the markers; with ``check`` only compare. Returns True when the file is current."""
    path = Path(readme)
    text = path.read_text(encoding="utf-8")
    if README_START not in text or README_END not in text:
        raise PublishError(f"{path} has no {README_START} ... {README_END} block to fill")
    a = text.index(README_START)
    b = text.index(README_END) + len(README_END)
    new = text[:a] + readme_block(reference_root) + text[b:]
    if new == text:
        return True
    if not check:
        path.write_text(new, encoding="utf-8")
    return False


# ------------------------------------------------------------------------------------------------------------ CLI
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stsynth_lib.publish", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("stamp", help="stamp executed notebooks (profile, data kind, commit, date, machine, wall time)")
    s.add_argument("notebooks", nargs="+")
    s.add_argument("--profile", required=True)
    s.add_argument("--wall-s", type=float, default=None, help="default: papermill's measured duration")
    p = sub.add_parser("publish", help="copy book/executed/<profile>/ into book/reference/<profile>/ (cleaned)")
    p.add_argument("--profile", required=True)
    p.add_argument("--max-mb", type=float, default=MAX_TOTAL_MB)
    g = sub.add_parser("stage", help="lay out the book to build (no notebook is executed)")
    g.add_argument("--source", choices=("reference", "executed"), default="reference")
    g.add_argument("--profile", default=None)
    g.add_argument("--out", default="build/book")
    r = sub.add_parser("readme", help="rewrite (or --check) the README's generated results block")
    r.add_argument("--check", action="store_true")
    r.add_argument("--readme", default="README.md")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "stamp":
            for nb in a.notebooks:
                st = stamp_notebook(nb, a.profile, wall_s=a.wall_s)
                print(f"stamped {nb}: {st['profile']} ({st['data']}), {st['commit']}, {format_duration(st['wall_s'])}")
        elif a.cmd == "publish":
            publish(a.profile, max_total_mb=a.max_mb)
        elif a.cmd == "stage":
            out = stage_book(a.source, a.profile, out=a.out)
            print(f"staged the book ({a.source}) in {out}/")
        elif a.cmd == "readme":
            ok = update_readme(a.readme, check=a.check)
            if a.check and not ok:
                print(f"{a.readme}'s results block differs from book/reference/*/results/summary.json: "
                      f"run make readme-results")
                return 1
            print(f"{a.readme}: results block " + ("up to date" if ok else "rewritten"))
    except PublishError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
