"""Command-line flags generated from options: ``--<name-with-dashes>`` with the option's type, default, accepted
values and help (``python -m stsynth_lib.evaluate`` takes the scoring options this way)."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import Any

import yaml

from stsynth_lib.options.core import Option, yaml_text


def _parser(o: Option):
    def parse(text: str) -> Any:
        value = yaml.safe_load(text) if o.type in (list, dict, "auto") else text
        if o.none_ok and isinstance(value, str) and value.lower() in ("none", "null"):
            return None
        if o.type in (int, float):
            try:
                value = o.type(value)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{text!r}: expected {o.accepted()}") from None
        err = o.problem(value)
        if err:
            raise argparse.ArgumentTypeError(f"{text!r}: {err}")
        return value

    parse.__name__ = o.name
    return parse


def add_options(parser: argparse.ArgumentParser, options: Iterable[Option]) -> None:
    """A flag per option (``dest`` its name); a bool option gets ``--x`` / ``--no-x``."""
    for o in options:
        flag = "--" + o.name.replace("_", "-")
        text = f"{o.help} (default {yaml_text(o.default)}; {o.accepted()})".replace("%", "%%")
        if o.type is bool:
            parser.add_argument(flag, dest=o.name, action=argparse.BooleanOptionalAction, default=o.default, help=text)
        else:
            parser.add_argument(flag, dest=o.name, type=_parser(o), default=o.default, help=text,
                                metavar=o.name.upper())
