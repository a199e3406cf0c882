"""Parameter files checked against the options schema (:mod:`stsynth_lib.options`), before papermill runs a notebook.

The options a notebook takes are listed in :mod:`stsynth_lib.options.notebooks` (nothing is read from
``notebooks/``); those a trainer's command line takes are its config's fields. :func:`validate_params` checks the
parameter files (later files win, as with papermill's ``-f``):

* **Keys.** Every key of a notebook's own file must be an option of the notebook; a key of a shared file (named
  ``common.yaml``) must be an option of this notebook or of any other (``known_keys``, default: every option of the
  schema), and is simply not passed to a notebook that does not take it. An unknown key is an error naming the key,
  the file and the closest option.
* **Required keys.** Options declared ``required`` (``profile``, ``data_root``, ``metadata_path``, ``dataset_dir``:
  their defaults are the smoke profile's) must be set by the files, so that a profile that forgets ``dataset_dir``
  cannot silently train on the smoke dataset.
* **Types and values**, from each option's declaration (:meth:`stsynth_lib.options.core.Option.problem`): ``bool``
  takes only true/false; ``int`` integers (not booleans); ``float`` integers and floats, and strings that read as a
  number (YAML 1.1 reads ``1e-4`` as a string; it is converted and the conversion listed); ``auto`` options take
  auto, true or false; null only where the option accepts it; then the declared range or choices.

``python -m stsynth_lib.params check --notebook notebooks/03_train_cgan.py params/smoke/common.yaml
params/smoke/03_train_cgan.yaml`` prints the problems (only the notebook's stem is used); ``merge ... --out
build/x.yaml`` also writes the merged parameters, restricted to the notebook's options, for ``papermill -f``
(``make nb`` does this), so papermill's "Passed unknown parameter" warning only appears for a real problem.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from stsynth_lib.options import all_options
from stsynth_lib.options.core import Option, options_of
from stsynth_lib.options.notebooks import notebook_options, pack

SHARED_FILE_NAMES = ("common.yaml", "common.yml")


class ParamError(ValueError):
    """A parameter file that does not fit its notebook; the message lists every problem with file and key."""


@dataclass
class Checked:
    """The result of :func:`validate_params`: the merged parameters the notebook takes, and what was done."""

    params: dict[str, Any]
    sources: dict[str, str]  # key -> file that set it
    dropped: dict[str, str] = field(default_factory=dict)  # shared key -> file, not taken by this notebook
    conversions: list[str] = field(default_factory=list)


def notebook_parameters(notebook: str | Path) -> dict[str, Option]:
    """The options notebook ``notebooks/<stem>.py`` takes (from the schema; the file is not read)."""
    try:
        return notebook_options(Path(notebook).stem)
    except KeyError as exc:
        raise ParamError(str(exc.args[0])) from exc


def config_parameters(cls) -> dict[str, Option]:
    """The options a config dataclass takes (its fields, declared by the schema)."""
    return {o.name: o for o in options_of(cls)}


def _is_shared(path: Path) -> bool:
    return path.name in SHARED_FILE_NAMES


def _chapter_only(path: Path, declared: dict[str, Option]) -> set[str]:
    """Keys a notebook's own file (``<stem>.yaml``) may set for the chapter but not for the config a command line
    builds from it (e.g. ``nomask_twin`` in ``03_train_cgan.yaml``): dropped there, not refused."""
    try:
        return set(notebook_options(path.stem)) - set(declared)
    except KeyError:
        return set()


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
                    known_keys: Iterable[str] | None = None) -> Checked:
    """Check ``param_files`` (later wins) against the options of ``notebook`` (its stem); raise :class:`ParamError`.

    ``known_keys``: keys a shared file may set (default: every option of the schema). Returns the merged
    parameters restricted to the notebook's options.
    """
    return _validate(notebook_parameters(notebook), Path(notebook).name, list(param_files), known_keys)


def validate_config_files(config_cls, param_files: Iterable[str | Path], known_keys: Iterable[str] | None = None,
                          set_elsewhere: Iterable[str] = ()) -> Checked:
    """The same checks for a command line that reads ``--params`` files into ``config_cls`` (a config dataclass
    built from the schema): an unknown key of a non-shared file, a wrong type or value is a :class:`ParamError`.
    ``set_elsewhere``: keys the command line sets as flags (not required from the files).
    """
    return _validate(config_parameters(config_cls), config_cls.__name__, list(param_files), known_keys, set_elsewhere)


def _validate(declared: dict[str, Option], label: str, param_files: list, known_keys: Iterable[str] | None,
              set_elsewhere: Iterable[str] = ()) -> Checked:
    known = set(all_options() if known_keys is None else known_keys) | set(declared)
    problems: list[str] = []
    checked = Checked(params={}, sources={})
    for path in map(Path, param_files):
        for key, value in _load(path).items():
            key = str(key)
            if key not in declared:
                if (_is_shared(path) and key in known) or key in _chapter_only(path, declared):
                    checked.dropped[key] = str(path)
                    continue
                pool = known if _is_shared(path) else declared
                problems.append(f"{path}: unknown key {key!r} ({label} takes no such option)." + _closest(key, pool))
                continue
            option = declared[key]
            value, note = option.convert(value)
            err = option.problem(value)
            if err:
                problems.append(f"{path}: {key}: {value!r} -- {err} (the default is {option.default!r}).")
                continue
            if note:
                checked.conversions.append(f"{path}: {note}")
            checked.params[key] = value
            checked.sources[key] = str(path)
    for key, option in declared.items():
        if option.required and key not in checked.params and key not in set(set_elsewhere):
            problems.append(f"{key} is not set by any of the parameter files; its default {option.default!r} "
                            "belongs to the smoke profile. Set it in the profile's common.yaml.")
    gaps = [checked.params.get(k, declared[k].default if k in declared else None) for k in ("min_gap_months", "max_gap_months")]
    if None not in gaps and all(isinstance(g, int) for g in gaps) and gaps[1] < gaps[0]:
        problems.append(f"max_gap_months ({gaps[1]}) < min_gap_months ({gaps[0]}).")
    if problems:
        files = ", ".join(str(p) for p in param_files)
        raise ParamError(f"Parameter files {files} do not fit {label}:\n  - " + "\n  - ".join(problems))
    return checked


def notebook_keys(notebooks: Iterable[str | Path]) -> set[str]:
    """Every option of ``notebooks`` (by their stems, from the schema; the files are not read)."""
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
    ap.add_argument("--notebook", required=True, help="the notebook (notebooks/NN_name.py; its stem names its options)")
    ap.add_argument("--out", help="merge: the YAML to write (the merged keys this notebook takes)")
    ap.add_argument("files", nargs="+", help="parameter files, later wins (common.yaml first)")
    a = ap.parse_args(argv)
    try:
        checked = validate_params(a.notebook, a.files)
    except ParamError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for note in checked.conversions:
        print(f"note: {note}", file=sys.stderr)
    if a.command == "merge":
        if not a.out:
            print("error: merge needs --out", file=sys.stderr)
            return 2
        write_params(pack(Path(a.notebook).stem, checked.params), a.out)  # packed concerns as their mapping
    else:
        print(f"{a.notebook}: {len(checked.params)} parameters OK ({', '.join(a.files)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
