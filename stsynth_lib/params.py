"""Parameter files checked against the notebook that reads them, before papermill runs it.

Each notebook's parameters cell (``# %% tags=["parameters"]``) declares every key it accepts with a default.
:func:`validate_params` reads that cell (``ast``, nothing is executed), then checks the parameter files
(later files win, as with papermill's ``-f``):

* **Keys.** Every key of a notebook's own file must be declared by the notebook; a key of a shared file
  (named ``common.yaml``) must be declared by this notebook or by one of ``known_keys`` (the other notebooks),
  and is simply not passed to a notebook that does not declare it. An unknown key is an error naming the key,
  the file and the closest declared key.
* **Required keys.** Keys whose default points at the smoke profile (``profile``, ``data_root``,
  ``metadata_path``, ``dataset_dir``: any string default containing ``smoke``) must be set by the files, so
  that a profile that forgets ``dataset_dir`` cannot silently train on the smoke dataset.
* **Types**, from the default: ``bool`` takes only true/false; ``int`` takes integers (not booleans); ``float``
  takes integers and floats, and strings that read as a number (YAML 1.1 reads ``1e-4`` as a string; it is
  converted and the conversion listed); ``str`` takes strings (a default of ``"auto"`` also takes true/false);
  ``list`` takes lists whose items have the type of the default's items. ``None`` is accepted where the
  default is ``None`` or the declaration's comment mentions ``None``; a ``None`` default takes the type in
  :data:`NONE_DEFAULT_TYPES`, or anything when the key is not listed there.
* **Values**: the ranges and choices of :data:`RULES` (``lambda_l1 > 0``, ``lr > 0``, tile sizes the models
  can take, ...).

``python -m stsynth_lib.params check --notebook notebooks/03_train_cgan.py params/smoke/common.yaml
params/smoke/03_train_cgan.yaml`` prints the problems; ``merge ... --out build/x.yaml`` also writes the
merged parameters, restricted to the keys the notebook declares, for ``papermill -f`` (``make nb`` does this),
so papermill's "Passed unknown parameter" warning only appears for a real problem.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import math
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PARAMETERS_MARK = re.compile(r'^# %%.*tags\s*=\s*\[[^\]]*["\']parameters["\']')
SHARED_FILE_NAMES = ("common.yaml", "common.yml")

# Keys whose notebook default is None: the type a non-None value must have.
NONE_DEFAULT_TYPES: dict[str, type] = {
    "resize_to_px": int, "max_steps": int, "max_test_pairs": int, "max_train_pairs": int, "max_eval_pairs": int,
    "resolution_px": int, "resume_from_checkpoint": str, "fid_max_pairs": int, "max_val_pairs": int,
    "context_offsets_months": list, "img2img_strengths": list,
}


def _positive(v) -> bool:
    return v > 0


def _non_negative(v) -> bool:
    return v >= 0


def _fraction(v) -> bool:
    return 0 <= v <= 1


def _model_tile(v) -> bool:
    return v >= 32 and v & (v - 1) == 0


def _choices(*names: str) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v in names), "one of " + ", ".join(repr(n) for n in names)


# key -> (test on a non-None value, accepted values in words)
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "lambda_l1": (_positive, "a number > 0 (the L1 weight; 0 turns pix2pix into an unguided GAN)"),
    "lr": (_positive, "a number > 0"),
    "learning_rate": (_positive, "a number > 0"),
    "segmenter_lr": (_positive, "a number > 0"),
    "gap_scale_months": (_positive, "a number > 0"),
    "batch_size": (_positive, "an integer >= 1"),
    "train_batch_size": (_positive, "an integer >= 1"),
    "gradient_accumulation_steps": (_positive, "an integer >= 1"),
    "max_train_steps": (_positive, "an integer >= 1"),
    "epochs_constant": (_non_negative, "an integer >= 0"),
    "epochs_decay": (_non_negative, "an integer >= 0"),
    "max_steps": (_positive, "an integer >= 1 or null"),
    "dropout": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "prompt_dropout": (_fraction, "a number in [0, 1]"),
    "radiometric_jitter": (_non_negative, "a number >= 0"),
    "erase_building_fraction": (_fraction, "a number in [0, 1]"),
    "min_valid_fraction": (_fraction, "a number in [0, 1]"),
    "synthetic_cloud_probability": (_fraction, "a number in [0, 1]"),
    "tile_size_px": (_model_tile, "a power of two >= 32 (32, 64, 128, 256, 512, 1024)"),
    "min_gap_months": (lambda v: v >= 1, "an integer >= 1"),
    "max_gap_months": (lambda v: v >= 1, "an integer >= 1"),
    "bands": (lambda v: len(v) > 0 and all(b >= 1 for b in v), "a non-empty list of 1-based band numbers"),
    "split_fractions": (lambda v: len(v) == 3 and all(f >= 0 for f in v) and sum(v) > 0,
                        "three non-negative numbers [train, val, test]"),
    "device": ((lambda v: re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v) is not None), "auto, cpu, cuda, cuda:<n> or mps"),
    "model": _choices("pix2pix", "attention_unet"),
    "img2img_strengths": (lambda v: v is None or (len(v) > 0 and all(0 < float(x) <= 1 for x in v)),
                          "null or a non-empty list of strengths in (0, 1]"),
    "strength_criterion": _choices("psnr", "ssim", "lpips", "f1_new"),
    "strength_sweep_pairs": (_positive, "an integer >= 1"),
    "residual_base": _choices("past", "seasonal", "linear"),
    "linear_centre": _choices("none", "tile_mean"),
    "temporal_fusion": _choices("concat", "attention", "tile_reweight"),
    "norm": _choices("instance", "batch", "none"),
    "gan_mode": _choices("vanilla", "lsgan"),
    "best_metric": _choices("val_l1", "val_psnr", "val_ssim"),
    "time_encoding": _choices("planes", "none"),
    "mask_source": _choices("auto", "pix", "match", "geo"),
    "scan_on_error": _choices("raise", "skip"),
    "build_on_error": _choices("raise", "skip"),
    "split_by": _choices("aoi", "block"),
    "block_stratify": _choices("none", "new_buildings"),
    "block_size_px": (_positive, "an integer >= 1 (at least tile_size_px)"),
    "split": _choices("train", "val", "test"),
    "lpips_net": _choices("alex", "vgg"),
    "scheduler": _choices("unipc", "ddim", "dpmsolver++", "euler", "ddpm"),
}


class ParamError(ValueError):
    """A parameter file that does not fit its notebook; the message lists every problem with file and key."""


@dataclass
class Declared:
    """A key a notebook accepts: its default, whether ``None`` is allowed, and where it is declared."""

    default: Any
    none_ok: bool
    any_type: bool = False  # a config field annotated Any: no type check
    via: str = ""  # "" (the parameters cell) or the config class that reads it from globals()


@dataclass
class Checked:
    """The result of :func:`validate_params`: the merged parameters the notebook declares, and what was done."""

    params: dict[str, Any]
    sources: dict[str, str]  # key -> file that set it
    dropped: dict[str, str] = field(default_factory=dict)  # shared key -> file, not declared by this notebook
    conversions: list[str] = field(default_factory=list)


def notebook_parameters(notebook: str | Path) -> dict[str, Declared]:
    """The keys and defaults of a jupytext percent notebook's parameters cell (parsed, not executed)."""
    notebook = Path(notebook)
    lines = notebook.read_text().splitlines()
    start = next((i for i, line in enumerate(lines) if PARAMETERS_MARK.match(line)), None)
    if start is None:
        raise ParamError(f"{notebook} has no cell tagged parameters (# %% tags=[\"parameters\"]).")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("# %%")), len(lines))
    cell = lines[start + 1 : end]
    out: dict[str, Declared] = {}
    for node in ast.parse("\n".join(cell)).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                default = ast.literal_eval(node.value)
            except ValueError as exc:
                raise ParamError(f"{notebook}: the default of {node.targets[0].id} is not a literal") from exc
            comment = cell[node.lineno - 1].partition("#")[2]
            out[node.targets[0].id] = Declared(default, default is None or "None" in comment)
    for name, decl in _config_fields(notebook).items():
        out.setdefault(name, decl)
    return out


def _config_fields(notebook: Path) -> dict[str, Declared]:
    """Fields of the config dataclasses the notebook builds with ``<Config>.from_params(globals())``.

    Such a notebook also reads every field of that config from the injected parameters, so those keys are
    accepted too (typed by the field's default and annotation). The class is found through the notebook's
    ``from <module> import <Config>`` line and imported.
    """
    import importlib

    tree = ast.parse(notebook.read_text())
    modules = {alias.asname or alias.name: node.module for node in ast.walk(tree)
               if isinstance(node, ast.ImportFrom) and node.module for alias in node.names}
    out: dict[str, Declared] = {}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "from_params"
                and isinstance(node.func.value, ast.Name) and node.args and isinstance(node.args[0], ast.Call)
                and isinstance(node.args[0].func, ast.Name) and node.args[0].func.id == "globals"):
            cls_name = node.func.value.id
            if cls_name not in modules:
                continue
            out.update(config_parameters(getattr(importlib.import_module(modules[cls_name]), cls_name)))
    return out


def config_parameters(cls) -> dict[str, Declared]:
    """The keys a config dataclass accepts (its fields), typed by their defaults and annotations."""
    import dataclasses

    out: dict[str, Declared] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        ann = str(f.type)
        out[f.name] = Declared(default, default is None or "None" in ann or "Any" in ann,
                               any_type="Any" in ann, via=cls.__name__)
    return out


def _type_name(t: type) -> str:
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string", list: "a list"}[t]


def _check_type(key: str, value: Any, decl: Declared) -> tuple[Any, str | None, str | None]:
    """(value, possibly converted; error or None; conversion note or None)."""
    if value is None:
        return value, (None if decl.none_ok else "null is not accepted here"), None
    if decl.any_type:
        return value, None, None
    want = type(decl.default) if decl.default is not None else NONE_DEFAULT_TYPES.get(key)
    if want is tuple:
        want = list
    if want not in (bool, int, float, str, list):
        return value, None, None
    if want is float:
        if isinstance(value, str):
            try:
                return float(value), None, f"{key}: the string {value!r} read as the number {float(value)!r}"
            except ValueError:
                pass
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return (float(value) if ok else value), (None if ok else f"expected {_type_name(float)}"), None
    if want is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif want is str:
        ok = isinstance(value, str) or (decl.default == "auto" and isinstance(value, bool))
    elif want is list:
        ok = isinstance(value, list)
        items = {type(x) for x in decl.default or []}
        if ok and len(items) == 1:
            item = items.pop()
            fits = (lambda x: isinstance(x, (int, float)) and not isinstance(x, bool)) if item is float else \
                   (lambda x: isinstance(x, item) and not (item is int and isinstance(x, bool)))
            if not all(fits(x) for x in value):
                return value, f"expected a list of {_type_name(item).removeprefix('a ').removeprefix('an ')}s", None
    else:
        ok = isinstance(value, want)
    return value, (None if ok else f"expected {_type_name(want)}"), None


def _check_rule(key: str, value: Any) -> str | None:
    if key not in RULES or value is None:
        return None
    test, words = RULES[key]
    try:
        good = bool(test(value))
    except TypeError:
        good = False
    if isinstance(value, float) and not math.isfinite(value):
        good = False
    return None if good else f"accepted values: {words}"


def _is_shared(path: Path) -> bool:
    return path.name in SHARED_FILE_NAMES


def _load(path: Path) -> dict:
    if not path.is_file():
        raise ParamError(f"Parameter file {path} does not exist.")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ParamError(f"{path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ParamError(f"{path}: the top level must be a mapping of key: value, got a {type(data).__name__}.")
    return data


def _closest(key: str, keys: Iterable[str]) -> str:
    near = difflib.get_close_matches(key, sorted(keys), n=1, cutoff=0.6)
    return f" Did you mean {near[0]!r}?" if near else ""


def validate_params(notebook: str | Path, param_files: Iterable[str | Path],
                    known_keys: Iterable[str] = ()) -> Checked:
    """Check ``param_files`` (later wins) against ``notebook``'s parameters cell; raise :class:`ParamError`.

    ``known_keys``: keys other notebooks declare (a shared file may set them). Returns the merged parameters
    restricted to the keys the notebook declares.
    """
    return _validate(notebook_parameters(notebook), Path(notebook).name, list(param_files), known_keys)


def validate_config_files(config_cls, param_files: Iterable[str | Path], known_keys: Iterable[str] = (),
                          set_elsewhere: Iterable[str] = ()) -> Checked:
    """The same checks for a command line that reads ``--params`` files into ``config_cls`` (a dataclass).

    E.g. ``validate_config_files(CGANTrainConfig, ns.params, notebook_keys(notebooks))`` (what
    :meth:`stsynth_lib.training.TrainConfig.from_command_line` does): an unknown key of a non-shared file, a wrong type or value is a :class:`ParamError`.
    ``set_elsewhere``: keys the command line sets as flags (not required from the files).
    """
    return _validate(config_parameters(config_cls), config_cls.__name__, list(param_files), known_keys, set_elsewhere)


def _validate(declared: dict[str, Declared], label: str, param_files: list, known_keys: Iterable[str],
              set_elsewhere: Iterable[str] = ()) -> Checked:
    known = set(known_keys) | set(declared)
    problems: list[str] = []
    checked = Checked(params={}, sources={})
    for path in map(Path, param_files):
        for key, value in _load(path).items():
            key = str(key)
            if key not in declared:
                if _is_shared(path) and key in known:
                    checked.dropped[key] = str(path)
                    continue
                pool = known if _is_shared(path) else declared
                problems.append(f"{path}: unknown key {key!r} ({label} declares no such parameter)."
                                + _closest(key, pool))
                continue
            value, err, note = _check_type(key, value, declared[key])
            err = err or _check_rule(key, value)
            if err:
                problems.append(f"{path}: {key}: {value!r} -- {err} (the notebook's default is {declared[key].default!r}).")
                continue
            if note:
                checked.conversions.append(f"{path}: {note}")
            checked.params[key] = value
            checked.sources[key] = str(path)
    for key, decl in declared.items():
        if isinstance(decl.default, str) and "smoke" in decl.default and key not in checked.params \
                and key not in set(set_elsewhere):
            problems.append(f"{key} is not set by any of the parameter files; the notebook's default {decl.default!r} "
                            "belongs to the smoke profile. Set it in the profile's common.yaml.")
    gaps = [checked.params.get(k, declared[k].default if k in declared else None) for k in ("min_gap_months", "max_gap_months")]
    if None not in gaps and all(isinstance(g, int) for g in gaps) and gaps[1] < gaps[0]:
        problems.append(f"max_gap_months ({gaps[1]}) < min_gap_months ({gaps[0]}).")
    if problems:
        files = ", ".join(str(p) for p in param_files)
        raise ParamError(f"Parameter files {files} do not fit {label}:\n  - " + "\n  - ".join(problems))
    return checked


def notebook_keys(notebooks: Iterable[str | Path]) -> set[str]:
    """Every key declared by ``notebooks`` (for the shared-file check)."""
    keys: set[str] = set()
    for nb in notebooks:
        keys |= set(notebook_parameters(nb))
    return keys


def write_params(params: dict[str, Any], out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(params, sort_keys=False))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stsynth_lib.params", description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=["check", "merge"])
    ap.add_argument("--notebook", required=True, help="the jupytext notebook (notebooks/NN_name.py)")
    ap.add_argument("--out", help="merge: the YAML to write (the merged keys this notebook declares)")
    ap.add_argument("--known-notebooks", nargs="*", default=None,
                    help="notebooks whose keys a common.yaml may set (default: the notebook's folder, NN_*.py)")
    ap.add_argument("files", nargs="+", help="parameter files, later wins (common.yaml first)")
    a = ap.parse_args(argv)
    others = a.known_notebooks if a.known_notebooks is not None else sorted(Path(a.notebook).parent.glob("[0-9][0-9]_*.py"))
    try:
        checked = validate_params(a.notebook, a.files, notebook_keys(others))
    except ParamError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for note in checked.conversions:
        print(f"note: {note}", file=sys.stderr)
    if a.command == "merge":
        if not a.out:
            print("error: merge needs --out", file=sys.stderr)
            return 2
        write_params(checked.params, a.out)
    else:
        print(f"{a.notebook}: {len(checked.params)} parameters OK ({', '.join(a.files)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
