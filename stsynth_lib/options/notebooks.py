"""Which options each notebook takes, and the two cells generated from them.

The parameters cell (``# %% tags=["parameters"]``, papermill injects a profile's values after it) states every
option of the notebook with its schema default and help, the chapter's own concern first; the cell after it
(``# %% tags=["options"]``) builds the notebook's config from exactly the options that are the config's fields, by
name. ``make notebooks-sync`` (:mod:`stsynth_lib.book.notebook_sync`) writes both; :func:`cell_differences` is what a test
checks.

A concern in :data:`PACKED` (the trainers' bookkeeping: checkpoints, resume, logging, data subsets, precision) is one
mapping parameter in the cell (``training = {}``: the schema's defaults; set any of its options there), not one line
per option: both training chapters take it, and its options are documented once in ``docs/OPTIONS.md``. Parameter
files still set those options as flat keys; ``python -m stsynth_lib.params merge`` packs them (:func:`pack`).
"""

from __future__ import annotations

import ast
import json
import re
import textwrap
from dataclasses import dataclass
from typing import Any

from stsynth_lib import options as schema
from stsynth_lib.options.core import Option, mapping_problems

PARAMETERS_MARK = re.compile(r'^# %%.*tags\s*=\s*\[[^\]]*["\']parameters["\']')
OPTIONS_HEADER = '# %% tags=["options"]'
LINE = 120
COMMENT_COLUMN = 34
ALL = "*"


@dataclass(frozen=True)
class Config:
    """The config a notebook builds right after its parameters: ``variable = cls(<its options by name>)``."""

    module: str
    cls: str
    variable: str
    options: str  # the name of the tuple in stsynth_lib.options that lists the config's fields


CGAN_CONFIG = Config("stsynth_lib.cgan.config", "CGANTrainConfig", "config", "CGAN_TRAIN")
# chapter 5 replaces pretrained_model by stage 1's backbone: config = dataclasses.replace(controlnet_config, ...)
CONTROLNET_CONFIG = Config("stsynth_lib.controlnet.config", "ControlNetTrainConfig", "controlnet_config",
                           "CONTROLNET_TRAIN")
# concern name -> the one mapping parameter that carries its options in a notebook's parameters cell
PACKED = {"trainer": "training"}
SEGMENTER = ("segmenter_steps", "segmenter_batch_size", "segmenter_base_channels", "segmenter_depth", "segmenter_lr",
             "segmenter_upsample", "segmenter_crop_px", "segmenter_sample_by", "segmenter_decision_threshold")
# the chapter's own concern first, then the shared ones
_CGAN = (("cgan", ALL), ("run", ALL), ("trainer", ALL), ("guidance", ALL),
         ("evaluation", ("max_test_pairs", "nomask_twin")))

# notebook stem -> ((concern name, option names or ALL), ...): the parameters cell, in this order
NOTEBOOKS: dict[str, tuple[tuple[str, Any], ...]] = {
    "01_explore_data": (("run", ("profile", "seed")), ("data", (
        "data_root", "synthetic_data", "metadata_path", "synthetic_n_aois", "synthetic_n_months", "synthetic_size_px",
        "synthetic_cloud_probability", "scan_on_error"))),
    "02_build_dataset": (("run", ("profile", "dataset_dir", "seed")), ("data", (
        "metadata_path", "tile_size_px", "bands", "resize_to_px", "min_gap_months", "max_gap_months", "split_fractions",
        "split_by", "block_size_px", "block_stratify", "min_valid_fraction", "mask_source", "build_on_error",
        "loader_batch_size", "context_strip_offsets_months"))),
    "03_train_cgan": _CGAN,
    # chapter 4 copies chapter 3's recorded options (stsynth_lib.cgan.chapter.twin_config): only these differ
    "04_train_attention_cgan": (("run", ("profile", "runs_dir", "run_name", "device", "progress")),
                                ("cgan", ("model",)), ("twin", ALL), ("evaluation", ("max_test_pairs", "nomask_twin"))),
    "05_controlnet": (("controlnet", ALL), ("stage1", ALL), ("sampling", ALL), ("run", ALL),
                      ("guidance", ("use_mask", "gap_scale_months", "context_offsets_months")), ("trainer", ALL),
                      ("scoring", ("allow_uncalibrated_metrics",)), ("evaluation", ("max_test_pairs", "nomask_twin", *SEGMENTER))),
    "06_evaluate": (("run", ("profile", "dataset_dir", "runs_dir", "seed", "device")), ("scoring", ALL),
                    ("evaluation", ("split", "models", "twins", "baselines", "max_eval_pairs", *SEGMENTER,
                                    "retrain_segmenter", "gallery_metric", "judge_results", "kfold_results"))),
    "07_fid": (("run", ("profile", "dataset_dir", "runs_dir", "seed", "device")),
               ("scoring", ("allow_uncalibrated_metrics",)),
               ("evaluation", ("split", "models", "fid_max_pairs", "fid_batch_size", "min_bucket_pairs",
                               "kid_subset_size", "kid_subsets"))),
}
CONFIGS: dict[str, Config] = {"03_train_cgan": CGAN_CONFIG, "05_controlnet": CONTROLNET_CONFIG}


def _groups(stem: str) -> list[tuple[Any, list[Option]]]:
    concerns = {c.name: c for c in schema.CONCERNS}
    out = []
    for name, names in NOTEBOOKS[stem]:
        concern = concerns[name]
        opts = list(concern.options) if names == ALL else list(schema.pick(concern, *names))
        if concern.name in PACKED and names != ALL:
            raise ValueError(f"{stem}: a packed concern ({concern.name}) is taken whole or not at all")
        out.append((concern, opts))
    return out


def notebook_options(stem: str) -> dict[str, Option]:
    """The options notebook ``stem`` takes (what a profile may set for it; packed ones travel in their mapping)."""
    if stem not in NOTEBOOKS:
        raise KeyError(f"notebooks/{stem}.py is not listed in stsynth_lib/options/notebooks.py NOTEBOOKS")
    return {o.name: o for _, opts in _groups(stem) for o in opts}


def cell_parameters(stem: str) -> dict[str, Any]:
    """The names the parameters cell of ``stem`` states and their defaults (a packed concern: its mapping, ``{}``)."""
    out: dict[str, Any] = {}
    for concern, opts in _groups(stem):
        if concern.name in PACKED:
            out[PACKED[concern.name]] = {}
        else:
            out.update((o.name, o.default) for o in opts)
    return out


def pack(stem: str, params: dict[str, Any]) -> dict[str, Any]:
    """Flat parameters of notebook ``stem`` (as the parameter files set them) -> what its cell takes: the options of
    a packed concern moved into their mapping (absent when none is set: the cell's ``{}``)."""
    out = dict(params)
    for concern, _ in _groups(stem):
        if concern.name in PACKED:
            packed = {n: out.pop(n) for n in concern.names() if n in out}
            if packed:
                out[PACKED[concern.name]] = packed
    return out


def unpack(name: str, values: dict | None) -> dict[str, Any]:
    """The options in mapping parameter ``name`` (e.g. ``training``), each checked against its declaration; the
    keyword arguments a notebook passes to its config."""
    concern = next(c for c in schema.CONCERNS if PACKED.get(c.name) == name)
    values = dict(values or {})
    declared = {o.name: o for o in concern.options}
    problems = mapping_problems(values, declared, f"not an option of {name} (its options: {', '.join(declared)}; "
                                                  "docs/OPTIONS.md)")
    if problems:
        raise ValueError(f"{name}:\n  - " + "\n  - ".join(problems))
    return {k: declared[k].convert(v)[0] for k, v in values.items()}


def literal(v: Any) -> str:
    """A default as Python source (double-quoted strings, as the notebooks write them)."""
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(literal(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{literal(k)}: {literal(x)}" for k, x in v.items()) + "}"
    return repr(v)


def _line(o: Option) -> list[str]:
    code = f"{o.name} = {literal(o.default)}"
    pad = max(COMMENT_COLUMN, len(code) + 2)
    if pad > LINE // 2:  # a long default: the help above it
        return [f"# {h}" for h in textwrap.wrap(o.help, LINE - 2)] + [code]
    help_lines = textwrap.wrap(o.help, LINE - pad - 2) or [""]
    return [f"{code.ljust(pad)}# {help_lines[0]}"] + [" " * pad + f"# {h}" for h in help_lines[1:]]


def parameters_cell_text(stem: str) -> str:
    """The parameters cell of notebook ``stem`` as it stands in the percent script (header, source, blank line)."""
    lines = ['# %% tags=["parameters"]',
             "# Generated by `make notebooks-sync` from stsynth_lib/options (docs/OPTIONS.md); a profile's YAML sets "
             "them."]
    for concern, opts in _groups(stem):
        if concern.name in PACKED:
            text = (f"{concern.title}: any of {', '.join(o.name for o in opts)} (defaults and help: "
                    'docs/OPTIONS.md), e.g. {"resume_from_checkpoint": "latest"}')
            lines += [f"# {t}" for t in textwrap.wrap(text, LINE - 2, break_on_hyphens=False)]
            lines.append(f"{PACKED[concern.name]} = {{}}")
            continue
        lines.append(f"# {concern.title}")
        for o in opts:
            lines += _line(o)
    return "\n".join(lines) + "\n\n"


def options_cell_text(stem: str) -> str:
    """The cell after the parameters: the notebook's config built from exactly its options, by name ("" if none)."""
    cfg = CONFIGS.get(stem)
    if cfg is None:
        return ""
    taken = notebook_options(stem)
    packed = {o.name: PACKED[c.name] for c, opts in _groups(stem) if c.name in PACKED for o in opts}
    args, done = [], set()
    for o in getattr(schema, cfg.options):
        if o.name in packed and packed[o.name] not in done:
            done.add(packed[o.name])
            args.append(f'**unpack("{packed[o.name]}", {packed[o.name]})')
        elif o.name in taken and o.name not in packed:
            args.append(f"{o.name}={o.name}")
    args = textwrap.wrap(", ".join(args), LINE - 4, break_on_hyphens=False)
    imports = f"from {cfg.module} import {cfg.cls}\n" + ("from stsynth_lib.options.notebooks import unpack\n"
                                                        if done else "")
    return (f"{OPTIONS_HEADER}\n# Generated by `make notebooks-sync`: the parameters above that are {cfg.cls} "
            f"fields, by name.\n{imports}\n{cfg.variable} = {cfg.cls}(\n"
            + "".join(f"    {a}\n" for a in args) + ")\n\n")


_CELL = re.compile(r"^# %%.*$", re.M)


def _cell_span(text: str, pred) -> tuple[int, int] | None:
    marks = list(_CELL.finditer(text))
    for i, m in enumerate(marks):
        if pred(m.group(0)):
            return m.start(), marks[i + 1].start() if i + 1 < len(marks) else len(text)
    return None


def with_option_cells(text: str, stem: str) -> str:
    """``text`` (a percent script) with its parameters cell and the options cell after it generated from the schema."""
    span = _cell_span(text, PARAMETERS_MARK.match)
    if span is None:
        raise ValueError(f"{stem}: no cell tagged parameters")
    start, end = span
    opt = _cell_span(text[end:], lambda h: h.startswith(OPTIONS_HEADER))
    if opt is not None and opt[0] == 0:
        end += opt[1]
    return text[:start] + parameters_cell_text(stem) + options_cell_text(stem) + text[end:]


def cell_defaults(text: str) -> dict[str, Any]:
    """The names and literal defaults the parameters cell of ``text`` states (parsed, not executed)."""
    span = _cell_span(text, PARAMETERS_MARK.match)
    if span is None:
        raise ValueError("no cell tagged parameters")
    body = text[span[0]:span[1]].split("\n", 1)[1]
    out = {}
    for node in ast.parse(body).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            out[node.targets[0].id] = ast.literal_eval(node.value)
    return out


def cell_differences(text: str, stem: str) -> list[str]:
    """How the parameters cell of notebook ``stem`` differs from the schema: a missing or extra name, another
    default."""
    stated, declared = cell_defaults(text), cell_parameters(stem)
    out = [f"{stem}: {n} is not an option of this notebook in the schema" for n in stated if n not in declared]
    out += [f"{stem}: {n} is missing from the parameters cell" for n in declared if n not in stated]
    out += [f"{stem}: {n} = {stated[n]!r} in the cell, {declared[n]!r} in the schema"
            for n in stated if n in declared and not _same(stated[n], declared[n])]
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b or (isinstance(a, (int, float)) and isinstance(b, (int, float))
                                             and not isinstance(a, bool) and not isinstance(b, bool) and a == b)
