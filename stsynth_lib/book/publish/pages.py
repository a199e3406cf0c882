"""The generated results pages: the results tables and the strongest-baseline section formatted from a
``summary.json`` written by chapter 6 (never typed), the book staged for `make book` with a landing page that opens
with them (``python -m stsynth_lib.book.publish stage``), and the README's results block (``... readme``)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from stsynth_lib.book.publish.stamp import (
    STAMP_TAG,
    _src,
    EXECUTED_ROOT,
    REFERENCE_ROOT,
    PublishError,
    format_duration,
    profile_data_kind,
    read_nb,
    read_stamp,
    write_nb,
)
from stsynth_lib.book.publish.reference import merge_streams, wrap_prose_lines
from stsynth_lib.book.publish.reference import _text as stream_text
from stsynth_lib.book.publish.profile_cells import cell_facts, drop_profile_cells, resumed_sentence, resumed_trainings
from stsynth_lib.book.publish.facts import capabilities_section, glossary_section, has_metric, read_fid, run_facts
from stsynth_lib.book.report_format import is_controlnet, short_model_name
from stsynth_lib.book.publish.tables import (  # noqa: F401 (re-exported: the page builders' tables)
    _fmt,
    _missing,
    _units,
    _no_interval,
    _delta_cell,
    _model_order,
    model_name,
    model_legend,
    lpips_calibrated,
    headline_table,
    headline_tables,
    strongest_baseline_section,
    headline_sentence,
    new_building_section,
    new_building_sentence,
    NEW_BUILDING_METRICS,
    persistence_sentence,
    table_caption,
    README_START,
    README_END,
    HEADLINE_METRICS,
    PERSISTENCE,
    NOT_A_PREDICTOR,
    STRONGEST_METRICS,
)

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
    out["resumed"] = [stem for stem, s in stamps if s["profile"] == profile
                      and resumed_trainings(read_nb(nb_dir / f"{stem}.ipynb"))]
    out["commits"] = sorted({s["commit"] for s in mine})
    out["other_profiles"] = [f"{stem} ({s['profile']})" for stem, s in stamps if s["profile"] != profile]
    return out


def headline_section(profile: str, summary: dict, *, stamp: dict | None, figure: str | None, reference: bool,
                     data_kind: str | None = None, figure_md: str = "") -> str:
    """One profile's results section of the landing page: where the run comes from, its examples figure
    (``figure_md``, :func:`figure_block`: what the system does, before any number), then
    :func:`_verdict_and_tables` (a labelled profile leads with its new buildings)."""
    kind = (stamp or {}).get("data") or data_kind or "unknown"
    kind_txt = {"real": "REAL data", "synthetic": "SYNTHETIC data"}.get(kind, "data of unknown kind")
    origin = "reference run committed in `book/reference/`" if reference else "local run (`book/executed/`), not a reference"
    lines = [f"## Results: `{profile}` · {kind_txt}", "",
             f"*{origin}*" + (f"; commit {', '.join(f'`{c}`' for c in stamp['commits'])}, {stamp['date']}, "
                             f"{stamp['machine']}, all chapters ran in {format_duration(stamp.get('total_wall_s'))}."
                             + resumed_sentence(stamp.get("resumed") or []) if stamp else "; no run stamp."), ""]
    if stamp and stamp.get("other_profiles"):
        lines += [f"**Mixed run:** these chapters ran with another profile: {', '.join(stamp['other_profiles'])}.", ""]
    if kind == "synthetic":
        lines += ["These are synthetic data: the numbers show that the pipeline works, not how well the models work "
                  "on real imagery.", ""]
    if figure_md:
        lines += [figure_md]
    lines += _verdict_and_tables(summary)
    return "\n".join(lines)


def figure_block(profile: str, figure: str, labelled: bool = False) -> str:
    """The examples figure of one profile (MyST): what the system does, shown before its numbers. ``labelled``: the
    run has building labels, so the figure has a footprints column (``stsynth_lib.evaluate.figures``'s
    ``plot_landing_example`` draws it then only): the caption names only the columns the figure has."""
    cols = "past | " + ("future footprints (buildings white, new ones orange; cyan outlines mark the new ones on "
                        "every other panel) | " if labelled else "")
    # the column's width whatever dpi save_figure_png chose to fit its byte budget: text as large as the figure drew it
    return "\n".join([f"```{{figure}} {figure}", f":name: examples-{profile}", ":width: 100%", "",
                      f"Test examples of `{profile}`: {cols}truth | the learned model with the highest mean PSNR | "
                      f"the true change | the model's change (chapter 6, `runs/{profile}/eval/examples.png`).", "```",
                      ""])


def _verdict_and_tables(summary: dict, readme: bool = False) -> list[str]:
    """The new-building results first (labelled profiles: :func:`new_building_section`, the README its sentence), then
    the headline sentence, the results tables and their caption, the strongest-baseline section and the sentence
    against persistence: what the landing page and the README show of one profile. The README (``readme``) keeps
    the sentences and the scores table; the tables of differences, the model legend and the strongest-baseline
    table are the book's (the sentences state their verdicts)."""
    head, pers = headline_sentence(summary), persistence_sentence(summary)
    new_buildings = new_building_section(summary) if not readme else new_building_sentence(summary)
    lines = ([new_buildings if not readme else f"**New buildings first:** {new_buildings}", ""]
             if new_buildings else [])
    lines += [f"**In one sentence:** {head}", ""] if head else []
    lines += [headline_tables(summary)[0] if readme else headline_table(summary), "", table_caption(summary), ""]
    if model_legend(summary) and not readme:
        lines += [model_legend(summary), ""]
    if pers:
        lines += [pers, ""]
    if strongest_baseline_section(summary) and not readme:
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


def stage_notebook(src: Path, dest: Path, summary: dict, has: dict[str, bool] | None = None) -> list[str]:
    """Copy an executed notebook into the staged book: consecutive stream outputs merged into one box
    (:func:`~stsynth_lib.book.publish.reference.merge_streams`) with their sentences wrapped to its width
    (:func:`~stsynth_lib.book.publish.reference.wrap_prose_lines`), the title of a ControlNet chapter naming the
    backbone that ran (:func:`chapter_title`) and, given what the run ``has``
    (:func:`~stsynth_lib.book.publish.profile_cells.cell_facts`), the cells it cannot fill dropped with one note
    (:func:`~stsynth_lib.book.publish.profile_cells.drop_profile_cells`). Returns the tags whose cells were dropped."""
    nb = read_nb(src)
    dropped = drop_profile_cells(nb, has) if has is not None else []
    resumed = resumed_trainings(nb)
    banner = next((c for c in nb.get("cells", []) if STAMP_TAG in (c.get("metadata") or {}).get("tags", [])), None)
    if resumed and banner is not None:  # the stamp's wall time would read as the training time otherwise
        steps = ", ".join(f"`{Path(ck).parent.parent.name}` at step {step}" for ck, step in resumed)
        banner["source"] = (_src(banner).rstrip("\n") + f"\n\n**Trainings resumed from saved checkpoints** "
                            f"({steps}): the wall time above counts only the work after them.")
    titled = False
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            cell["outputs"] = merge_streams(cell.get("outputs", []))
            for out in cell["outputs"]:
                if out.get("output_type") == "stream":
                    out["text"] = wrap_prose_lines(stream_text(out))
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
    return dropped


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
        stamp = profile_stamp(nb_dir)
        try:
            kind = stamp["data"] if stamp else profile_data_kind(name, params_dir)
        except PublishError:
            kind = None
        # without a summary.json nothing says what the run lacks: every cell stays
        has = (cell_facts(run_facts(run_summary, nb_dir), kind) if run_summary else None)
        for p in sorted(nb_dir.glob("*.ipynb")):
            stage_notebook(p, out / name / p.name, run_summary, has)
            chapters.append(f"{name}/{p.stem}")
        figure, figure_md = None, ""
        if fig is not None and fig.is_file():
            (out / name / "results").mkdir()
            shutil.copy2(fig, out / name / "results" / fig.name)
            figure = f"{name}/results/{fig.name}"
            figure_md = figure_block(name, figure, labelled=has_metric(run_summary, "f1_micro"))
        if summary_path is not None and summary_path.is_file():
            summary = json.loads(summary_path.read_text())
            summaries[name] = summary
            sections.append(headline_section(name, summary, stamp=stamp, figure=figure, figure_md=figure_md,
                                             reference=source == "reference", data_kind=kind))
            facts = run_facts(summary, nb_dir, read_fid(summary_path.parent))
            capabilities.append(capabilities_section(name, facts, kind))
        else:
            figures += [figure_md] if figure_md else []
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
    """The story in order: the intro's title; what the system does (the intro's first paragraph; ``figures``: the
    examples of profiles without results); the results sections (each opens with its examples figure, then the
    sentence, the table, its legend); the glossary; what each published
    run can and cannot show; then the rest of the intro ("About this book")."""
    lines = intro.splitlines()
    title_at = next((i for i, l in enumerate(lines) if l.startswith("# ")), None)
    title = lines[title_at] if title_at is not None else "# stsynth"
    rest = "\n".join(lines[title_at + 1:] if title_at is not None else lines).strip("\n")
    first, _, rest = rest.partition("\n\n")
    note = ("<!-- Generated by `python -m stsynth_lib.book.publish stage` from book/intro.md and the results files; "
            "edit those, not this page. -->")
    shown = ("Each results section below opens with test examples of its run: the past image, the guidance where the "
             "run has labels, the truth, a model's prediction and what changed." if sections else "")
    out = [title, "", note, "", "## What the system does", "", first.strip(), ""] + ([shown, ""] if shown else [])
    out += list(figures) + list(sections)
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
        parts += [f"**`{prof}`** · {kind} data{when}:", ""] + _verdict_and_tables(summary, readme=True)
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
