"""Process-wide settings changed only for the call that needs them, and put back afterwards.

Importing archsearch or calling it from Python must leave the caller's process as it was: environment
variables, logger levels, Optuna's verbosity, torch's denormal flushing. Each helper here saves the
current value, sets the one the call needs, and restores it on the way out (also on errors).
"""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Dict, Iterator, Optional

__all__ = ["env", "flush_denormal", "flush_denormal_enabled", "log_levels", "optuna_verbosity"]


@contextlib.contextmanager
def env(**values: Optional[str]) -> Iterator[None]:
    """Set environment variables (None unsets one) for the duration of the block."""
    saved = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def log_levels(levels: Dict[str, int]) -> Iterator[None]:
    """Raise (or lower) the named loggers' levels for the duration of the block."""
    saved = {name: logging.getLogger(name).level for name in levels}
    try:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


@contextlib.contextmanager
def optuna_verbosity(level: int) -> Iterator[None]:
    import optuna

    saved = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(level)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(saved)


def flush_denormal_enabled() -> bool:
    """Whether this thread's CPU flushes denormals now (torch has a setter but no getter)."""
    import torch

    return bool((torch.tensor([1e-40], dtype=torch.float32) * 1.0).item() == 0.0)


@contextlib.contextmanager
def flush_denormal(on: bool = True) -> Iterator[None]:
    import torch

    saved = flush_denormal_enabled()
    torch.set_flush_denormal(on)
    try:
        yield
    finally:
        torch.set_flush_denormal(saved)
