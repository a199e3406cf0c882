"""The generated results pages: the results tables and the strongest-baseline section formatted from a
``summary.json`` written by chapter 6 (never typed), the book staged for `make book` with a landing page that opens
with them (``python -m stsynth_lib.book.publish stage``), and the README's results block (``... readme``)."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

from stsynth_lib.book.publish.stamp import (
    EXECUTED_ROOT,
    REFERENCE_ROOT,
    PublishError,
    format_duration,
    profile_data_kind,
    read_nb,
    read_stamp,
    write_nb,
)
from stsynth_lib.book.publish.reference import merge_streams
from stsynth_lib.book.publish.facts import capabilities_section, glossary_section, read_fid, run_facts
from stsynth_lib.book.report_format import (is_controlnet, model_description, model_legend_markdown,
                                              short_model_name)
from stsynth_lib.verdict import MARK_LEGEND, mark, strongest_baseline_text, verdict_sentence

README_START = "<!-- results-table:start -->"
README_END = "<!-- results-table:end -->"
# (summary.json metric key, column label, digits of the mean, digits of the paired difference)
HEADLINE_METRICS = (("psnr", "PSNR dB", 2, 2), ("ssim", "SSIM", 3, 4), ("lpips", "LPIPS", 3, 4))
PERSISTENCE = "persistence"
NOT_A_PREDICTOR = ("real_future",)  # the segmenter's ceiling: no image metrics


# ------------------------------------------------------------------------------------------------- results tables
def _fmt(v, digits: int, sign: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"


def _missing(v) -> bool:
    """A value summary.json leaves out: null, or NaN (json.dumps writes NaN for rows that did not pass pandas)."""
    return v is None or (isinstance(v, float) and math.isnan(v))


def _units(rows: list[dict]) -> str:
    """The resampled unit of these paired rows: "area" or "block" (rows carry it; older files: areas)."""
    return next((r["unit"] for r in rows if r.get("unit")), "area")


def _no_interval(row: dict) -> str:
    """What a paired cell shows instead of an interval when one unit (area or block) was resampled."""
    n, unit = row.get("n_areas") or 1, row.get("unit") or "area"
    return f"n/a ({n} {unit}{'s' if n != 1 else ''})"


def _delta_cell(row: dict | None, digits: int, verdict: bool = False) -> str:
    """A paired row as "+0.31 [+0.12, +0.49]" ("n/a (1 area)" in place of a missing interval); ``verdict`` adds the
    row's mark (:func:`stsynth_lib.verdict.mark`: ✔ better, ✘ worse, none: no clear difference)."""
    if row is None:
        return "n/a"
    diff = _fmt(row["mean_diff"], digits, True)
    if _missing(row.get("ci_lo")) or _missing(row.get("ci_hi")):
        return f"{diff} {_no_interval(row)}"
    tick = f" {mark(row)}" if verdict and mark(row) else ""
    return f"{diff} [{_fmt(row['ci_lo'], digits, True)}, {_fmt(row['ci_hi'], digits, True)}]{tick}"


def _model_order(summary: dict) -> list[str]:
    present = []
    for r in summary.get("summary", []):
        if r["model"] not in present and r["model"] not in NOT_A_PREDICTOR and r["metric"] in ("psnr", "ssim", "lpips"):
            present.append(r["model"])
    order = [PERSISTENCE] + list(summary.get("baselines", [])) + list(summary.get("runs", {}))
    return [m for m in order if m in present] + [m for m in present if m not in order]


def model_name(summary: dict, model: str) -> str:
    """The short name a results row and a sentence show: summary.json's ``model_names`` entry, else
    :func:`stsynth_lib.book.report_format.short_model_name` of its ``model_labels`` entry (summaries written before
    short names were recorded: "ControlNet (tiny, from scratch)" for the ~140-character label), "ControlNet (backbone
    not recorded)" for a ControlNet of an older summary, else the model's name. The long description is printed once,
    in :func:`model_legend` under the table."""
    recorded = (summary.get("model_names") or {}).get(model)
    return str(recorded) if recorded else short_model_name(model, summary.get("model_labels"))


def model_legend(summary: dict) -> str:
    """The legend table under the results table: each short name whose model has a longer description (chapter 6's
    ``model_labels``: which backbone, how it was sampled), once; "" when no name needs one."""
    labels = summary.get("model_labels") or {}
    rows = {model_name(summary, m): model_description(m, labels) for m in _model_order(summary)}
    rows = {k: v for k, v in rows.items() if k != v}
    if not rows:
        return ""
    return "\n".join(["| model (as in the tables) | what it is |", "|---|---|"]
                     + [f"| {k} | {v.replace('|', '/')} |" for k, v in rows.items()])


def lpips_calibrated(summary: dict) -> bool:
    rows = [r for r in summary.get("summary", []) if r["metric"] == "lpips"]
    cal = summary.get("calibrated", {})
    cal = cal.get("lpips", True) if isinstance(cal, dict) else cal  # older files: one flag for every metric
    return bool(cal) and all(r.get("calibrated", True) for r in rows)


def headline_table(summary: dict) -> str:
    """The headline table of the landing page and the README (Markdown, from a summary.json; the evaluation's
    own wide table is :func:`stsynth_lib.evaluate.results_table`): every model, persistence and baseline; n pairs;
    PSNR, SSIM, LPIPS [95 % CI over tiles]; and the paired difference to persistence [95 % CI, resampling
    summary["paired_resamples"]]."""
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
        cells = [model_name(summary, m), "/".join(str(n) for n in sorted(ns)) or "n/a"]
        for k, _, d, _ in labels:
            r = rows.get((m, k))
            if r is None or _missing(r.get("mean")):
                cells.append("n/a")
            elif _missing(r.get("ci_lo")) or _missing(r.get("ci_hi")):
                cells.append(f"{_fmt(r['mean'], d)} (no interval)")
            else:
                cells.append(f"{_fmt(r['mean'], d)} [{_fmt(r['ci_lo'], d)}, {_fmt(r['ci_hi'], d)}]")
        for k, _, _, dd in labels:
            if m == PERSISTENCE:
                cells.append("(reference)")
                continue
            cells.append(_delta_cell(paired.get((m, k)), dd))
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
            f"{summary.get('paired_resamples', 'whole areas (AOIs)')}]; a model is better than the bar on a metric "
            f"only when the whole interval is on the good side of zero:")
    models = list(dict.fromkeys(r["model"] for r in rows if r["model"] != name))
    if not models:
        return head + "\n\nNo learned model was scored against it.\n"
    by = {(r["model"], r["metric"]): r for r in rows}
    cols = ["model"] + [f"Δ {lab} ({better} is better)" for _, lab, _, better in STRONGEST_METRICS] + [f"{_units(rows)}s better (PSNR)"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for m in models:
        cells = [model_name(summary, m)]
        for k, _, d, _ in STRONGEST_METRICS:
            cells.append(_delta_cell(by.get((m, k)), d, verdict=True))
        p = by.get((m, "psnr"))
        cells.append(f"{p.get('areas_better', 'n/a')} of {p.get('n_areas', 'n/a')}" if p else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    return head + "\n\n" + "\n".join(lines) + f"\n\n{MARK_LEGEND}.\n"


def headline_sentence(summary: dict) -> str:
    """The profile's result in one sentence: every learned model against the strongest simple baseline, in the
    words of :func:`stsynth_lib.verdict.verdict_sentence` (the paired interval decides); "" without that
    comparison."""
    info = summary.get("strongest_baseline")
    if not info:
        return ""
    name = info["name"]
    return verdict_sentence(summary.get("paired_vs_strongest_baseline") or [], name,
                            baseline_text=strongest_baseline_text(name, info.get("chosen_on", "val")),
                            name=lambda m: model_name(summary, m), metrics=[k for k, *_ in STRONGEST_METRICS],
                            split=summary.get("split", "test"))


def persistence_sentence(summary: dict) -> str:
    """Every model and simple baseline against persistence in one sentence (the paired interval decides)."""
    return verdict_sentence(summary.get("paired_vs_persistence") or [], PERSISTENCE,
                            baseline_text="persistence (the past image as the prediction)",
                            name=lambda m: model_name(summary, m), split=summary.get("split", "test"))


def table_caption(summary: dict) -> str:
    unit = summary.get("paired_resamples", "whole areas (AOIs)")
    n_units = sorted({r.get("n_areas") for r in summary.get("paired_vs_persistence", []) if r.get("n_areas")})
    units = (f" ({'/'.join(str(n) for n in n_units)} unit{'s' if n_units != [1] else ''})" if n_units else "")
    cal = "" if lpips_calibrated(summary) else (" LPIPS is **uncalibrated** (random backbone): it ranks these rows "
                                                "and means nothing outside this table.")
    weights = f" LPIPS weights: {summary['lpips_weights']}." if summary.get("lpips_weights") else ""
    split = summary.get("split", "test")
    one = _units(summary.get("paired_vs_persistence", []))
    return (f"Split `{split}`, {summary.get('n_pairs', 'n/a')} {split} pairs. Scores: mean "
            f"[95 % bootstrap interval over tiles]; n pairs = tiles scored. Δ = model − persistence on the same "
            f"pairs [95 % interval, resampling {unit}{units}; \"n/a (1 {one})\" = one {one} resampled, no interval]. "
            f"Higher is better for PSNR and SSIM, lower for LPIPS.{weights}{cal}")


def profile_stamp(nb_dir: Path, profile: str | None = None) -> dict | None:
    """The stamp of the notebooks in ``nb_dir`` that ran with ``profile`` (default: the folder's name): the first one's,
    with the summed wall time of all of them and, under "other_profiles", the notebooks that ran with another."""
    profile = profile or nb_dir.name
    stamps = [(p.stem, s) for p, s in ((p, read_stamp(p)) for p in sorted(nb_dir.glob("*.ipynb"))) if s]
    mine = [s for _, s in stamps if s["profile"] == profile]
    if not mine:
        return None
    out = dict(mine[0])
    walls = [s.get("wall_s") for s in mine]  # this profile's chapters only
    out["total_wall_s"] = sum(walls) if all(w is not None for w in walls) else None
    out["commits"] = sorted({s["commit"] for s in mine})
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
    lines += _verdict_and_tables(summary)
    return "\n".join(lines)


def figure_block(profile: str, figure: str) -> str:
    """The examples figure of one profile (MyST): what the system does, shown before its numbers."""
    return "\n".join([f"```{{figure}} {figure}", f":name: examples-{profile}", "",
                      f"Test examples of `{profile}`: past | future footprints (labelled data) | truth | the learned "
                      f"model with the highest mean PSNR | the true change | the model's change (chapter 6, "
                      f"`runs/{profile}/eval/examples.png`).", "```", ""])


def _verdict_and_tables(summary: dict) -> list[str]:
    """The headline sentence, the results table and its caption, the strongest-baseline section and the sentence
    against persistence: what the landing page and the README show of one profile."""
    head, pers = headline_sentence(summary), persistence_sentence(summary)
    lines = [f"**In one sentence:** {head}", ""] if head else []
    lines += [headline_table(summary), "", table_caption(summary), ""]
    if model_legend(summary):
        lines += [model_legend(summary), ""]
    if pers:
        lines += [pers, ""]
    if strongest_baseline_section(summary):
        lines += [strongest_baseline_section(summary), ""]
    return lines


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


def launch_config(config: str, source: str, reference_root: Path, book_dir: Path) -> str:
    """The staged ``_config.yml``: launch (Colab) links must open a notebook the repository has. A reference book's
    pages are ``book/reference/<profile>/*.ipynb`` in git, so ``path_to_book`` becomes that folder; a local run's
    pages (``book/executed/``, ignored by git) exist nowhere online, so its launch buttons are turned off."""
    if source == "reference":
        root, repo = reference_root.resolve(), book_dir.resolve().parent
        rel = root.relative_to(repo) if root.is_relative_to(repo) else reference_root
        return re.sub(r"^(\s+path_to_book:).*$", lambda m: f"{m.group(1)} {rel.as_posix()}", config, flags=re.M)
    config = re.sub(r"^(\s+colab_url:).*$", lambda m: f'{m.group(1)} ""', config, flags=re.M)
    return re.sub(r"^(\s+binderhub_url:).*$", lambda m: f'{m.group(1)} ""', config, flags=re.M)


def chapter_title(title: str, summary: dict) -> str:
    """A chapter's title (``"# 5. ControlNet on Stable Diffusion"``) naming the backbone the run's ControlNet used
    (summary.json's ``model_labels``, :func:`~stsynth_lib.book.report_format.short_model_name`): ``"# 5. ControlNet
    on a latent diffusion backbone (tiny, from scratch)"``. Titles of other chapters, and every title when the run
    scored no ControlNet, are returned unchanged."""
    m = re.match(r"^(#\s+)(\d+\.\s*)?(.*)$", title)
    if not m or "controlnet" not in m.group(3).lower():
        return title
    labels = summary.get("model_labels") or {}
    models = [x for x in list(summary.get("runs") or {}) + list(labels) if is_controlnet(x)]
    if not models:
        return title
    short = model_name(summary, models[0])
    inner = re.search(r"\((.*)\)\s*$", short)
    backbone = inner.group(1) if inner else "backbone not recorded"
    return f"{m.group(1)}{m.group(2) or ''}ControlNet on a latent diffusion backbone ({backbone})"


def stage_notebook(src: Path, dest: Path, summary: dict) -> None:
    """Copy an executed notebook into the staged book: consecutive stream outputs merged into one box
    (:func:`~stsynth_lib.book.publish.reference.merge_streams`) and the title of a ControlNet chapter naming the
    backbone that ran (:func:`chapter_title`)."""
    nb = read_nb(src)
    titled = False
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            cell["outputs"] = merge_streams(cell.get("outputs", []))
        elif cell.get("cell_type") == "markdown" and not titled:
            src_text = "".join(cell["source"]) if isinstance(cell.get("source"), list) else str(cell.get("source", ""))
            lines = src_text.split("\n")
            at = next((i for i, line in enumerate(lines) if line.startswith("# ")), None)
            if at is not None:
                lines[at] = chapter_title(lines[at], summary)
                cell["source"] = "\n".join(lines)
                titled = True
    write_nb(nb, dest)
    shutil.copystat(src, dest)


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
    config = (book_dir / "_config.yml").read_text()
    config = launch_config(config, source, Path(reference_root), book_dir)
    (out / "_config.yml").write_text(config)
    if (book_dir / "_static").is_dir():
        shutil.copytree(book_dir / "_static", out / "_static")
    sections, parts, figures, summaries, capabilities = [], [], [], {}, []
    for name, nb_dir, summary_path, fig in profiles:
        (out / name).mkdir()
        chapters = []
        run_summary = json.loads(summary_path.read_text()) if summary_path is not None and summary_path.is_file() else {}
        for p in sorted(nb_dir.glob("*.ipynb")):
            stage_notebook(p, out / name / p.name, run_summary)
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
            figures.append(figure_block(name, figure))
        if summary_path is not None and summary_path.is_file():
            summary = json.loads(summary_path.read_text())
            summaries[name] = summary
            sections.append(headline_section(name, summary, stamp=stamp, figure=figure,
                                             reference=source == "reference", data_kind=kind))
            facts = run_facts(summary, nb_dir, read_fid(summary_path.parent))
            capabilities.append(capabilities_section(name, facts, kind))
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
    glossary = glossary_section(summaries) if summaries else ""
    (out / "intro.md").write_text(landing_page((book_dir / "intro.md").read_text(), sections, figures=figures,
                                               glossary=glossary, capabilities=capabilities))
    return out


def landing_page(intro: str, sections: list[str], *, figures: list[str] = (), glossary: str = "",
                 capabilities: list[str] = ()) -> str:
    """The story in order: the intro's title; what the system does (the intro's first paragraph and each profile's
    examples figure); the results sections (the sentence, the table, its legend); the glossary; what each published
    run can and cannot show; then the rest of the intro ("About this book")."""
    lines = intro.splitlines()
    title_at = next((i for i, l in enumerate(lines) if l.startswith("# ")), None)
    title = lines[title_at] if title_at is not None else "# stsynth"
    rest = "\n".join(lines[title_at + 1:] if title_at is not None else lines).strip("\n")
    first, _, rest = rest.partition("\n\n")
    note = ("<!-- Generated by `python -m stsynth_lib.book.publish stage` from book/intro.md and the results files; "
            "edit those, not this page. -->")
    out = [title, "", note, "", "## What the system does", "", first.strip(), ""] + list(figures) + list(sections)
    if glossary:
        out += [glossary]
    if capabilities:
        out += ["## What each published run can and cannot show", ""] + list(capabilities)
    return "\n".join(out + ["## About this book", "", rest.strip("\n"), ""])


# --------------------------------------------------------------------------------------------------------- README
def readme_block(reference_root: str | Path = REFERENCE_ROOT) -> str:
    root = Path(reference_root)
    parts = [README_START,
             "<!-- Generated by `make readme-results` (python -m stsynth_lib.book.publish readme) from "
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
        parts += [f"**`{prof}`** · {kind} data{when}:", ""] + _verdict_and_tables(summary)
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
