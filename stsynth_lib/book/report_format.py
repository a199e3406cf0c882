"""Small formatting helpers for what the book prints: settings tables, rounded numbers, intervals, plurals.

The executed notebooks are read as web pages, so nothing here prints a raw ``dict`` or a 16-digit float:

* :func:`settings_table` -- a dict / dataclass / YAML file as a two-column "setting | value" table, floats rounded;
* :func:`fmt_value` -- one value as short text (4 significant digits by default);
* :func:`round_floats` -- a DataFrame with its float columns rounded for display;
* :func:`format_interval` -- ``"[lo, hi]"``, or ``"n/a (1 area)"`` when one resampled unit gives no interval;
* :func:`plural` / :func:`fix_plurals` -- "1 month", "2 months"; "1 months later" -> "1 month later".

Only :func:`settings_table` and :func:`round_floats` need pandas, and import it when called: the rest is standard
library, so the book tools (:mod:`stsynth_lib.book.publish`, run by `make book` without pandas or torch) use it.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pandas is imported where a table is made, never at import time (the light book environment)
    import pandas as pd

_IRREGULAR = {"AOI": "AOIs", "px": "px"}


def plural(n: float | int, singular: str, plural_form: str | None = None) -> str:
    """``"1 month"``, ``"2 months"``, ``"0 months"`` (the count followed by the right form of the noun)."""
    many = plural_form or _IRREGULAR.get(singular) or (singular + "s")
    count = int(n) if float(n).is_integer() else n
    return f"{count} {singular if count == 1 else many}"


# "1 months later", "1 new buildings", "1 areas", ...: a lone 1 (not 0.1, 11 or -1) before a regular English plural
_ONE_PLURAL = re.compile(r"(?<![\d.,\-])\b1 ((?:new |real |test |training )?)([a-z]+?)s\b")


def fix_plurals(text: str) -> str:
    """Singular after a count of exactly 1 in generated text: ``"1 months later, 1 new buildings"`` ->
    ``"1 month later, 1 new building"``; other counts are left alone."""
    def one(m: re.Match) -> str:
        stem = m.group(2)
        if stem.endswith(("s", "u", "i")):  # "1 class", "1 bus", "1 axis": not a regular plural
            return m.group(0)
        return f"1 {m.group(1)}{stem}"

    return _ONE_PLURAL.sub(one, text)


def fmt_value(v: Any, sig: int = 4) -> str:
    """One value as short text: floats to ``sig`` significant digits (no exponent for ordinary sizes), ``None`` as
    "none", lists comma-separated, NaN as "n/a", a mapping as ``"key value; key value"``, a list of more than two
    mappings (a fitted table) as its shape (``"12 rows of gap_months, weights, bias"``)."""
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}" if abs(v) >= 10_000 else str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "n/a"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        if v == 0 or (1e-4 <= abs(v) < 1e7):
            if float(v).is_integer():
                return f"{int(v):,}" if abs(v) >= 10_000 else str(int(v))
            digits = max(sig - 1 - int(math.floor(math.log10(abs(v)))), 0)
            return f"{v:.{digits}f}".rstrip("0").rstrip(".") if digits else f"{v:.0f}"
        return f"{v:.{sig - 1}e}"
    if isinstance(v, Mapping):
        return "; ".join(f"{k} {fmt_value(x, sig)}" for k, x in v.items()) if v else "none"
    if isinstance(v, (list, tuple)):
        if len(v) > 2 and all(isinstance(x, Mapping) for x in v):  # a fitted table (linear_base): its shape only
            keys = list(dict.fromkeys(k for x in v for k in x))
            return f"{len(v)} rows of {', '.join(map(str, keys))}"
        return ", ".join(fmt_value(x, sig) for x in v) if v else "none"
    if isinstance(v, Path):
        return str(v)
    np = sys.modules.get("numpy")  # a numpy scalar exists only once numpy is imported: never import it here
    if np is not None and isinstance(v, np.generic):
        return fmt_value(v.item(), sig)
    return str(v)


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, key + " / "))
        else:
            out[key] = v
    return out


def settings_table(obj: Any, keys: list[str] | None = None, exclude: list[str] | tuple[str, ...] = (),
                   sig: int = 4, labels: Mapping[str, str] | None = None) -> pd.DataFrame:
    """A dict, a dataclass instance or a YAML/JSON file as a two-column table ("setting", "value").

    Nested mappings are flattened (``"guidance / n_bands"``), floats rounded to ``sig`` significant digits,
    ``keys`` picks and orders rows, ``exclude`` drops some, ``labels`` renames settings (e.g. ``lambda_l1`` ->
    "L1 weight"). The index is blank (no row numbers on the page)."""
    import pandas as pd

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        d = dataclasses.asdict(obj)
    elif isinstance(obj, (str, Path)) and Path(obj).is_file():
        import yaml

        d = yaml.safe_load(Path(obj).read_text()) or {}
    elif isinstance(obj, Mapping):
        d = dict(obj)
    else:
        raise TypeError(f"settings_table needs a mapping, a dataclass or a YAML/JSON file, got {type(obj).__name__}")
    flat = _flatten(d)
    names = [k for k in (keys if keys is not None else flat) if k in flat and k not in set(exclude)]
    labels = dict(labels or {})
    # a blank index: the page shows the two columns, not a 0..n-1 row number beside them
    return pd.DataFrame({"setting": [labels.get(k, k) for k in names], "value": [fmt_value(flat[k], sig) for k in names]},
                        index=[""] * len(names))


def round_floats(df: pd.DataFrame, decimals: int = 4) -> pd.DataFrame:
    """``df`` with every float column and every float level of its index rounded to ``decimals`` (ints and text
    untouched): a row named by a float (an area's persistence PSNR) prints as short as the cells."""
    import pandas as pd

    out = df.copy()
    for c in out.columns:
        if pd.api.types.is_float_dtype(out[c]):
            out[c] = out[c].round(decimals)
    idx = out.index
    levels = [idx.get_level_values(i) for i in range(idx.nlevels)]
    if any(pd.api.types.is_float_dtype(v) for v in levels):
        levels = [v.round(decimals) if pd.api.types.is_float_dtype(v) else v for v in levels]
        out.index = pd.MultiIndex.from_arrays(levels, names=idx.names) if idx.nlevels > 1 else levels[0]
    return out


def format_interval(lo: float | None, hi: float | None, n_units: int | None = None, unit: str = "area",
                    digits: int = 4, signed: bool = True) -> str:
    """``"[+0.0123, +0.0456]"``; when the interval is missing (NaN / None: a single resampled unit), ``"n/a (1 area)"``
    / ``"n/a (1 block)"`` instead of ``nan``."""
    lo = float("nan") if lo is None else float(lo)
    hi = float("nan") if hi is None else float(hi)
    if math.isnan(lo) or math.isnan(hi):
        return f"n/a ({plural(n_units, unit)})" if n_units is not None else "n/a"
    sign = "+" if signed else ""
    return f"[{lo:{sign}.{digits}f}, {hi:{sign}.{digits}f}]"


# ------------------------------------------------------------------------------------- which backbone a row used
CONTROLNET = "ControlNet"
CONTROLNET_NOT_RECORDED = f"{CONTROLNET} [backbone not recorded]"
_BACKBONE_KINDS = {"tiny-random": "tiny random backbone",
                   "sd15-architecture-random": "SD 1.5 architecture, random weights (benchmarks only)"}


def backbone_label(params: Mapping[str, Any]) -> str:
    """What produced a ControlNet run's images, from its ``params.yaml``: ``backbone_description`` when present (a
    sentence such as "tiny, trained from scratch on sn7_real_128 train split"), else from ``backbone`` (the kind)
    and ``backbone_name``: "tiny random backbone", the pretrained model's name, or "<kind> backbone: <name>"."""
    desc = str(params.get("backbone_description") or "").strip()
    if desc:
        return desc
    kind, name = str(params.get("backbone") or "").strip(), str(params.get("backbone_name") or "").strip()
    if kind in _BACKBONE_KINDS:
        return _BACKBONE_KINDS[kind]
    if kind == "pretrained":
        return name or "pretrained backbone"
    if kind:
        return f"{kind} backbone" + (f": {name}" if name and name != kind else "")
    return name or "backbone not recorded"


def controlnet_label(params: Mapping[str, Any], prompt_only: bool = False, strength: float | None = None,
                     sample_mean_of: int | None = None) -> str:
    """``"ControlNet [tiny random backbone]"``; ``prompt_only``: the backbone's images from the prompt alone;
    ``strength`` < 1: denoising started from the noised past image (img2img), which the label says;
    ``sample_mean_of``: the per-pixel mean of that many samples per pair; a ``diffusion_target: residual`` run says it
    drew the change from the past image."""
    start = f"; img2img from the past image, strength {float(strength):g}" if strength is not None and strength < 1 else ""
    residual = "; residual diffusion (the change from the past)" if params.get("diffusion_target") == "residual" else ""
    mean = f"; {MEAN_OF.format(n=int(sample_mean_of))}" if sample_mean_of else ""
    twin = f"; {NO_MASK_TWIN.format(run=params['nomask_twin_of'])}" if params.get("nomask_twin_of") else ""
    return (f"{'Backbone alone, prompt only' if prompt_only else CONTROLNET} "
            f"[{backbone_label(params)}{twin}{residual}{start}{mean}]")


MEAN_OF = "per-pixel mean of {n} samples"
NO_MASK_TWIN = "no footprints: the no-mask twin of {run}"
# the parts of a label that the short name keeps (a twin or a sample mean is another row than its model)
_SHORT_QUALIFIERS = ((re.compile(r"^per-pixel mean of (\d+) samples$"), ", mean of {0}"),
                     (re.compile(r"^no footprints: the no-mask twin of "), ", no mask"))


def is_controlnet(model: str) -> bool:
    """A results row of a ControlNet, by its name (``controlnet``, ``controlnet_sd15``, ...)."""
    return "controlnet" in str(model).lower()


def model_description(model: str, labels: Mapping[str, str] | None = None) -> str:
    """The long description of ``model``: its recorded label (``summary.json``'s ``model_labels``, e.g.
    "ControlNet [tiny, trained from scratch on the sn7_real_128 train split (...); img2img from the past image,
    strength 0.2]"), ``"ControlNet [backbone not recorded]"`` for a ControlNet without one (results written before
    labels were recorded), else the model's own name. Pages print it once, in a legend under a table."""
    label = (labels or {}).get(model)
    if label:
        return str(label)
    return CONTROLNET_NOT_RECORDED if is_controlnet(model) else str(model)


# the backbone part of a label, shortened: (start of the description, short words); first match wins
_SHORT_BACKBONES = (("tiny, trained from scratch", "tiny, from scratch"), ("tiny random backbone", "tiny, random"),
                    ("tiny-trained", "tiny, from scratch"), ("tiny-random", "tiny, random"),
                    ("sd 1.5 architecture, random", "SD 1.5 architecture, random"),
                    ("backbone not recorded", "backbone not recorded"))
SHORT_NAME_MAX = 52  # "ControlNet, no mask, mean of 4 (tiny, from scratch)" (51) is the longest kind


def short_backbone(desc: str) -> str:
    """A backbone description in two or three words ("tiny, from scratch", "Stable Diffusion 1.5")."""
    low = desc.lower()
    for start, short in _SHORT_BACKBONES:
        if low.startswith(start):
            return short
    if "stable-diffusion" in low or "stable diffusion" in low or "sd15" in low or "sd-1-5" in low or "v1-5" in low:
        return "Stable Diffusion 1.5" + (", fine-tuned" if "adapt" in low or "fine-tuned" in low else "")
    name = desc.split(":")[-1].strip().rstrip("/").split("/")[-1] or desc  # "<kind> backbone: <path>" -> its last part
    return name if len(name) <= 24 else name[:23] + "…"


def short_model_name(model: str, labels: Mapping[str, str] | None = None) -> str:
    """The name tables and legends show for ``model`` (at most :data:`SHORT_NAME_MAX` characters): a labelled model
    "<kind> [<backbone description>; <how sampled>]" becomes "<kind> (<backbone in two or three words>)", e.g.
    "ControlNet (tiny, from scratch)", "ControlNet (Stable Diffusion 1.5)", "Backbone alone (tiny, random)"; other
    models keep their own name. The long text is :func:`model_description`, printed once in a legend table."""
    long = model_description(model, labels)
    m = re.match(r"^(?P<kind>[^\[]+?)\s*\[(?P<desc>.*)\]\s*$", long)
    if not m:
        return long if len(long) <= SHORT_NAME_MAX else long[:SHORT_NAME_MAX - 1] + "…"
    kind = m.group("kind").strip()
    kind = "Backbone alone" if kind.lower().startswith("backbone alone") else kind
    parts = [p.strip() for p in m.group("desc").split(";")]
    qualifiers = "".join(short.format(*hit.groups()) for part in parts[1:] for pattern, short in _SHORT_QUALIFIERS
                         if (hit := pattern.match(part)))
    return f"{kind}{qualifiers} ({short_backbone(parts[0])})"


def wrap_name(name: str, width: int) -> str:
    """``name`` on lines of about ``width`` characters for a figure title or legend, broken between words, and inside
    a word longer than ``width`` only after an underscore ("attention_" / "unet"), never between two letters
    (``textwrap``'s default cuts "ControlNet" to "ControlNe" / "t" at width 9)."""
    words = []
    for word in str(name).split():
        words += [p + "_" for p in word.split("_")[:-1]] + [word.split("_")[-1]] if len(word) > width else [word]
    lines: list[str] = []
    for w in words:  # greedy, a piece ending in "_" is joined to the next without a space
        if lines and len(lines[-1]) + (0 if lines[-1].endswith("_") else 1) + len(w) <= width:
            lines[-1] += ("" if lines[-1].endswith("_") else " ") + w
        else:
            lines.append(w)
    return "\n".join(lines)


def model_display_name(model: str, labels: Mapping[str, str] | None = None) -> str:
    """The name a table or figure shows for ``model``: :func:`short_model_name` (the long description, once per page,
    is :func:`model_description`)."""
    return short_model_name(model, labels)


def model_legend_rows(models, labels: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """``[(short name, description)]`` of the ``models`` whose description says more than their short name, in
    order, each once: the rows of the legend table printed under a results table."""
    out: list[tuple[str, str]] = []
    for m in models:
        row = (short_model_name(m, labels), model_description(m, labels))
        if row[0] != row[1] and row not in out:
            out.append(row)
    return out


def model_legend_markdown(models, labels: Mapping[str, str] | None = None) -> str:
    """The legend table (Markdown) of :func:`model_legend_rows`; "" when every name says it all."""
    rows = model_legend_rows(models, labels)
    if not rows:
        return ""
    lines = ["| model (as in the tables) | what it is |", "|---|---|"]
    lines += [f"| {s} | {d.replace('|', '/')} |" for s, d in rows]
    return "\n".join(lines)


def delta_vs_persistence_lines(rows: list[dict], lead: tuple[str, ...] = ()) -> list[str]:
    """Markdown table lines of an experiment's rows (``evaluate.rows_vs_persistence``): PSNR and the paired
    difference to persistence in PSNR, SSIM and LPIPS (``"(not scored)"`` without LPIPS); ``lead`` cells (e.g. the
    candidate's name) open every row."""
    def ci(v):
        return f"{v[0]:+.3f} [{v[1]:+.3f}, {v[2]:+.3f}]"

    lines = []
    for row in rows:
        lp = ci(row["lpips_minus_persistence"]) if "lpips_minus_persistence" in row else "(not scored)"
        lines.append("| " + "".join(f"{c} | " for c in lead) + f"{row['model']} | {row['psnr']:.2f} | "
                     f"{ci(row['psnr_minus_persistence'])} | {ci(row['ssim_minus_persistence'])} | {lp} |")
    return lines


def replace_marked_block(path: str | Path, body: str, name: str = "table") -> None:
    """Rewrite the text between ``<!-- <name>:start -->`` and ``<!-- <name>:end -->`` of a Markdown file (a generated
    table in a README); raises ValueError naming the file when a marker is missing."""
    path = Path(path)
    text = path.read_text()
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if start not in text or end not in text:
        raise ValueError(f"{path}: no {start} ... {end} block to rewrite")
    a, b = text.index(start), text.index(end)
    path.write_text(text[:a] + start + "\n" + body.rstrip("\n") + "\n" + text[b:])
