"""Command-line flags derived from dataclasses, as transformers' ``HfArgumentParser`` does: one flag per field,
its help the field's docstring and default (``Config``, ``InferenceSettings``, ``ServeSettings``,
``ClusterSettings``). A command's flags are declared once, on its dataclass; this module turns them into
argparse arguments and back into the dataclass. Nothing here prints or exits.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Sequence
from typing import Any

from gpt2clf.config import Config, coerce_fields, field_help, field_sections

__all__ = ["add_dataclass_flags", "config_overrides", "flag", "flag_values", "settings_from_args",
           "training_field_groups"]


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_dataclass_flags(parser: argparse.ArgumentParser, cls: type, names: Sequence[str] | None = None,
                        title: str | None = None) -> None:
    """Add one flag per field of dataclass ``cls`` in ``names`` (default: every field), in a group
    ``title``: ``--field-name``, its help the field's docstring and default. A bool field gets
    ``--x``/``--no-x``, a list field a repeatable flag. Unset flags stay None (not applied);
    :func:`flag_values` collects the set ones."""
    group = parser.add_argument_group(title) if title else parser
    hints = typing.get_type_hints(cls)
    helps = field_help(cls)
    defaults = cls()
    for name in names or [f.name for f in dataclasses.fields(cls)]:
        default = getattr(defaults, name)
        shown = ",".join(default) if isinstance(default, list) else default
        text = f"{helps.get(name, '')} (default: {shown})".replace("%", "%%")  # argparse formats help with %
        if hints[name] is bool:
            group.add_argument(flag(name), dest=name, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif typing.get_origin(hints[name]) is list:  # repeatable: --text-column a --text-column b
            group.add_argument(flag(name), dest=name, action="append", default=None, metavar=name.upper(), help=text)
        else:
            group.add_argument(flag(name), dest=name, default=None, metavar=name.upper(), help=text)


def flag_values(args: argparse.Namespace, cls: type, names: Sequence[str] | None = None) -> dict[str, Any]:
    """The fields of dataclass ``cls`` (those in ``names``) set explicitly on the command line, as typed."""
    names = names or [f.name for f in dataclasses.fields(cls)]
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def settings_from_args(cls: type, args: argparse.Namespace) -> Any:
    """Dataclass ``cls`` with its defaults, overlaid with its flags that were set (converted and checked)."""
    return cls(**coerce_fields(cls, flag_values(args, cls)))


def config_overrides(args: argparse.Namespace, names: Sequence[str] | None = None) -> dict[str, Any]:
    """The Config fields set explicitly on the command line."""
    return flag_values(args, Config, names)


def training_field_groups() -> list[tuple[str, list[str]]]:
    """train's flag groups: Config's sections (its ``# --- title ---`` comments), every field in one;
    the recipe section's --preset has its own flag in the run group."""
    return [(title, names) for title, names in field_sections(Config).items() if title != "recipe"]
