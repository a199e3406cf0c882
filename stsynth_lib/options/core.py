"""The :class:`Option` declaration, its checks, and config dataclasses built from options.

An option is declared once (name, type, default, accepted values, one-line help) in one of the concern modules of
:mod:`stsynth_lib.options`; its checks, its notebook line, its command-line flag and its row in ``docs/OPTIONS.md``
are derived from that declaration. Standard library only (no torch), so every layer may import it.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Iterable
from typing import Any

TYPE_WORDS = {bool: "true/false", int: "an integer", float: "a number", str: "a string", list: "a list",
              dict: "a mapping"}


@dataclasses.dataclass(frozen=True)
class Option:
    """One option: its name (unit in the name, ``_px``, ``_months``, ``_db``), type, default and accepted values.

    ``type``: bool, int, float, str, list or dict; ``"auto"`` for ``auto | true | false``. ``none_ok``: null is
    accepted. ``choices``, ``min``/``max`` (``min_open``/``max_open``: the bound itself is excluded) or ``test``
    (a predicate, with ``words`` saying what it accepts) bound the value. ``required``: a profile must set it (its
    default is the smoke profile's). ``item``: the type of a list's items.
    """

    name: str
    type: Any
    default: Any
    help: str
    none_ok: bool = False
    choices: tuple = ()
    min: float | None = None
    max: float | None = None
    min_open: bool = False
    max_open: bool = False
    test: Callable[[Any], bool] | None = None
    words: str = ""
    required: bool = False
    item: Any = None

    def __post_init__(self):
        if self.type == "auto":
            object.__setattr__(self, "choices", ("auto", True, False))
        problem = self.problem(self.default)
        if problem:
            raise ValueError(f"option {self.name}: its default {self.default!r} is refused: {problem}")

    @property
    def annotation(self) -> str:
        name = "Any" if self.type == "auto" else self.type.__name__
        return f"{name} | None" if self.none_ok else name

    def accepted(self) -> str:
        """The accepted values in words (the docs table, the error messages)."""
        if self.words:
            text = self.words
        elif self.choices:
            text = "one of " + ", ".join(repr(c) if isinstance(c, str) else _yaml(c) for c in self.choices)
        else:
            text = TYPE_WORDS[self.type]
            if self.item is not None:
                text += " of " + TYPE_WORDS[self.item].split(" ", 1)[-1] + "s"
            lo = None if self.min is None else (">" if self.min_open else ">=") + f" {_num(self.min)}"
            hi = None if self.max is None else ("<" if self.max_open else "<=") + f" {_num(self.max)}"
            if lo and hi:
                text += f" in {'(' if self.min_open else '['}{_num(self.min)}, {_num(self.max)}{')' if self.max_open else ']'}"
            elif lo or hi:
                text += " " + (lo or hi)
        return text + (" or null" if self.none_ok else "")

    def type_problem(self, value: Any) -> str | None:
        if value is None:
            return None if self.none_ok else "null is not accepted here"
        if self.type == "auto":
            return None
        want = self.type
        if want is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif want is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif want is list:
            ok = isinstance(value, (list, tuple))
            if ok and self.item is not None and self.type_of_items(value):
                return f"expected a list of {TYPE_WORDS[self.item].split(' ', 1)[-1]}s"
        else:
            ok = isinstance(value, want)
        return None if ok else f"expected {TYPE_WORDS[want]}"

    def type_of_items(self, value) -> bool:
        """True when an item of list ``value`` has the wrong type."""
        if self.item is float:
            return not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value)
        return not all(isinstance(x, self.item) and not (self.item is int and isinstance(x, bool)) for x in value)

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is refused (type, then range or choices), or None."""
        err = self.type_problem(value)
        if err or value is None:
            return err
        if self.choices and value not in self.choices:
            return f"accepted values: {self.accepted()}"
        good = True
        try:
            if self.test is not None:
                good = bool(self.test(value))
            if self.min is not None:
                good = good and (value > self.min if self.min_open else value >= self.min)
            if self.max is not None:
                good = good and (value < self.max if self.max_open else value <= self.max)
        except TypeError:
            good = False
        if isinstance(value, float) and not math.isfinite(value):
            good = False
        return None if good else f"accepted values: {self.accepted()}"

    def convert(self, value: Any) -> tuple[Any, str | None]:
        """``value`` with a string that reads as a number made a number where a float is wanted (YAML 1.1 reads
        ``1e-4`` as a string); (value, note or None)."""
        if self.type is float and isinstance(value, str):
            try:
                return float(value), f"{self.name}: the string {value!r} read as the number {float(value)!r}"
            except ValueError:
                pass
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value), None
        return value, None



def mapping_problems(values: dict, declared: dict[str, Option], unknown: str) -> list[str]:
    """Why the mapping ``values`` (option name -> value) does not fit the ``declared`` options: each key not declared
    (``"<key>: " + unknown``), then each value its declaration refuses; [] when it fits."""
    out = [f"{k}: {unknown}" for k in values if k not in declared]
    out += [f"{k} = {v!r}: {err}" for k, v in values.items() if k in declared
            and (err := declared[k].problem(declared[k].convert(v)[0]))]
    return out

def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def _yaml(v: Any) -> str:
    return {True: "true", False: "false", None: "null"}.get(v, str(v)) if not isinstance(v, (int, float)) or \
        isinstance(v, bool) else str(v)


def yaml_text(v: Any) -> str:
    """A default as a YAML reader writes it (the docs table)."""
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(yaml_text(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {yaml_text(x)}" for k, x in v.items()) + "}"
    return _yaml(v)


@dataclasses.dataclass
class Concern:
    """The options of one concern (data, guidance, cGAN, ...), in the order notebooks and docs show them."""

    name: str
    title: str
    options: tuple[Option, ...]

    def __post_init__(self):
        names = [o.name for o in self.options]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"concern {self.name}: {sorted(dup)} declared twice")

    def __getitem__(self, name: str) -> Option:
        for o in self.options:
            if o.name == name:
                return o
        raise KeyError(name)

    def names(self) -> list[str]:
        return [o.name for o in self.options]


def check_values(obj: Any, options: Iterable[Option]) -> None:
    """Raise ``ValueError`` naming the first option of ``obj`` (a config) whose value is refused."""
    for o in options:
        value = getattr(obj, o.name)
        if o.problem(value):
            raise ValueError(f"{o.name} must be {o.accepted()}, got {value!r}")


def option_fields(cls: type, options: Iterable[Option]) -> type:
    """``cls`` made a dataclass whose fields are ``options`` (before its own annotated fields, if any): the default,
    the annotation and ``metadata["option"]`` come from each declaration. Mutable defaults are copied per instance."""
    own = dict(cls.__dict__.get("__annotations__", {}))
    ann: dict[str, str] = {}
    for o in options:
        if o.name in own:
            raise ValueError(f"{cls.__name__}.{o.name} is declared by the schema; do not declare it again")
        ann[o.name] = o.annotation
        if isinstance(o.default, (list, dict)):
            default = o.default
            setattr(cls, o.name, dataclasses.field(default_factory=lambda d=default: type(d)(d),
                                                   metadata={"option": o}))
        else:
            setattr(cls, o.name, dataclasses.field(default=o.default, metadata={"option": o}))
    cls.__annotations__ = {**ann, **own}
    return dataclasses.dataclass(cls)


def config_from(options: Iterable[Option]):
    """Class decorator: :func:`option_fields` with ``options``. The dataclass's ``__post_init__`` checks every value
    against its declaration, then runs the class's ``check()`` (its cross-field checks), if it has one."""
    options = tuple(options)

    def wrap(cls: type) -> type:
        def __post_init__(self):
            check_values(self, options)
            if hasattr(self, "check"):
                self.check()

        cls.__post_init__ = __post_init__
        return option_fields(cls, options)

    return wrap


def options_of(cls: type) -> list[Option]:
    """The options of a config dataclass built by :func:`option_fields`."""
    return [f.metadata["option"] for f in dataclasses.fields(cls) if "option" in f.metadata]


def snake_flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def is_device(v: str) -> bool:
    return re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v) is not None
