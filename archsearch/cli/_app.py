"""The command line's shared parts: the consoles, the registry of commands, argument helpers."""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Dict

from rich.console import Console

from ..errors import mask_secrets
from ..spec import parse_resolution

# Off a terminal (CI logs, pipes) rich would wrap tables at 80 columns.
_out = Console(width=None if sys.stdout.isatty() else 160)
_err = Console(stderr=True)

#: Subcommands by name: (add arguments, run). Filled by ``_command`` where each is defined.
COMMANDS: Dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], str]] = {}


def _command(name: str, help: str, configure: Callable[[argparse.ArgumentParser], None]):
    def register(run: Callable[[argparse.Namespace], int]):
        COMMANDS[name] = (configure, run, help)
        return run

    return register


def _warn(message: str) -> None:
    _err.print(f"warning: {mask_secrets(message)}", markup=False, highlight=False, soft_wrap=True)


def _quiet_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", "-q", action="store_true", help="no progress display and no notes (warnings still print)")


def _overwrite_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty output directory, replacing the files an earlier run of this command wrote")


def _accept_overrides(p: argparse.ArgumentParser, what: str) -> None:
    """Trailing ``KEY=VALUE`` arguments (OmegaConf dotlist) anywhere after the command."""
    p.usage = p.format_usage().replace("usage: ", "").strip() + " [KEY=VALUE ...]"
    p.epilog = f"KEY=VALUE: OmegaConf dotlist overrides of {what}, e.g. resolution=[64] stages.0.width=[32]"
    p.set_defaults(overrides=[], _accepts_overrides=True)


def _resolutions(text: str) -> list[tuple[int, int]]:
    return [parse_resolution(r) for r in text.split(",") if r.strip()] or [parse_resolution(text)]


def _default(cls, name: str):
    """The one default of an option, read from its dataclass (so help texts cannot drift)."""
    import dataclasses

    f = cls.__dataclass_fields__[name]
    return f.default if f.default is not dataclasses.MISSING else "all cores" if name == "threads" else f.default_factory()


def _option_flags(p, cls, helps: dict) -> None:
    """One flag per named field of the option dataclass ``cls`` (``{field: help}``), generated from the field:
    ``--field-name``, its type from the field's default, the default shown from the dataclass and not repeated
    here. Flags left out parse to None (booleans: False), so that :func:`_given` keeps the dataclass's default."""
    import types
    import typing

    hints = typing.get_type_hints(cls)
    for name, text in helps.items():
        default = _default(cls, name)
        kind = hints[name]
        if typing.get_origin(kind) in (typing.Union, types.UnionType):
            kind = next(a for a in typing.get_args(kind) if a is not type(None))  # Optional[int] -> int
        flag = "--" + name.replace("_", "-")
        if kind is bool:
            p.add_argument(flag, action="store_true", default=None, help=f"{text} (default {'on' if default else 'off'})")
        else:
            p.add_argument(flag, type=kind if kind in (int, float) else str, default=None, help=f"{text} (default {default})")


def _given(args, names) -> dict:
    """The options of ``names`` given on the command line (:func:`_option_flags`), by field name."""
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def _progress():
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(), console=_err, transient=True,
    )


