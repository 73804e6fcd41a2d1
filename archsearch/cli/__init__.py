"""``archsearch`` command line: parse, call the library, print. Bad input exits 2 with one line.

One module per command group (``specs``, ``measure``, ``search``, ``analysis``); each registers its commands
in the registry of :mod:`._app`. Importing this package imports no framework: every command imports what it
needs when it runs, so ``--help`` costs no torch, mlflow or lightning."""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import threading
import time
import traceback
from typing import List, Optional

from .. import _interrupts, _scoped
from ..errors import ArchsearchError, mask_secrets
from . import specs, measure, search, analysis, serve  # noqa: F401 - importing them registers their commands (help lists them in this order)
from ._app import COMMANDS, _err, _warn
from .measure import measure_options

__all__ = ["COMMANDS", "entry", "main", "make_parser", "measure_options"]


class _LogLine(logging.Handler):
    """The library's log records, one line each: warnings (something to act on) as ``warning: ...``, notes
    (routine events: a fit, a resumed study, a cache used) as they are, or not at all with ``--quiet``."""

    def __init__(self, quiet: bool) -> None:
        super().__init__(logging.WARNING if quiet else logging.INFO)

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            _warn(record.getMessage())
        else:
            _err.print(mask_secrets(record.getMessage()), markup=False, highlight=False, soft_wrap=True)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="archsearch",
        description="Search and ablate hybrid RepMixer/attention vision encoders (FastViT, FastViTHD).",
    )
    parser.add_argument("--debug", action="store_true", help="on an error, also print the full traceback and its cause")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (configure, run, help) in COMMANDS.items():
        p = sub.add_parser(name, help=help, description=help)
        configure(p)
        p.set_defaults(_run=run)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = make_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        unknown = [a for a in extra if a.startswith("-") or "=" not in a]
        if unknown or not getattr(args, "_accepts_overrides", False):
            parser.error(f"unrecognized arguments: {' '.join(unknown or extra)}")
        args.overrides = extra
    # The library's notes and warnings go to the "archsearch" logger; the command line prints them, one line each.
    handler = _LogLine(quiet=getattr(args, "quiet", False))
    logger = logging.getLogger("archsearch")
    logger.addHandler(handler)
    try:
        with (_interrupts.deferred() if args.command in _LONG_COMMANDS else contextlib.nullcontext(),
              _scoped.log_levels({"archsearch": logging.INFO})):
            return args._run(args)
    except ArchsearchError as e:
        _err.print(f"archsearch {args.command}: error: {mask_secrets(str(e))}", markup=False, highlight=False, soft_wrap=True)
        if args.debug:
            # Errors are raised "from None" for a one-line message; the cause is still on __context__.
            traceback.print_exception(e.__context__ or e, file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (_interrupts.Terminated); the library says what it kept
        term = isinstance(e, _interrupts.Terminated)
        kept = getattr(e, "kept", "finished work is kept, rerun to resume")
        _err.print(f"archsearch {args.command}: {'terminated (SIGTERM)' if term else 'interrupted'}; {kept}",
                   markup=False, highlight=False, soft_wrap=True)
        return 143 if term else 130
    finally:
        logger.removeHandler(handler)


#: Commands that run long enough to be interrupted mid-work: their interrupts wait for a safe point
#: (archsearch._interrupts), so that Ctrl-C or SIGTERM never lands inside Optuna's or SQLAlchemy's internals.
_LONG_COMMANDS = {"measure", "calibrate", "proxy", "proxy-fidelity", "search", "worker", "ablate"}


def entry() -> None:
    """The ``archsearch`` executable: :func:`main`, then exit without waiting on a library thread that
    nobody stopped (a heartbeat left beating by an interrupt would otherwise keep the process alive)."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    lingering = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    deadline = time.monotonic() + 5.0
    for t in lingering:
        t.join(max(0.0, deadline - time.monotonic()))
    if any(t.is_alive() for t in lingering):
        os._exit(code)
    sys.exit(code)


