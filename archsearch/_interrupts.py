"""Interrupts (Ctrl-C, SIGTERM) that land where the work can stop cleanly.

Python raises KeyboardInterrupt wherever the main thread happens to be. Inside Optuna that can be
between starting a trial's heartbeat thread and the ``with`` that stops it: the non-daemon thread then
beats forever and the process never exits (seen in CI under load: still running 16 min after SIGTERM).
Inside SQLAlchemy's pool or a lock it can leave the lock held.

So a long command *defers* interrupts (:func:`deferred`): the handler records the signal, and the work
raises it at safe points (:func:`check`: every timed forward, every training step, every trial). A
second signal raises at once, as does a first one that no safe point has taken within ``GRACE_S``
(a long call with no check in it). SIGTERM is raised as :class:`Terminated`, a KeyboardInterrupt, so
that every handler of Ctrl-C handles it too.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator, Optional

__all__ = ["GRACE_S", "Terminated", "check", "deferred", "interruption", "keep_sigint", "pending"]

#: Seconds a deferred interrupt waits for a safe point before it is raised wherever the work is.
GRACE_S = 10.0


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that a running trial is marked and the study stays resumable."""


class _State:
    #: The signal received and not yet raised, and the timer that forces it after GRACE_S.
    pending: Optional[int] = None
    timer: Optional[threading.Timer] = None
    #: A SIGTERM reached this process (a library that swallowed the interrupt is answered with Terminated).
    terminated = False


def _exception(signum: int) -> KeyboardInterrupt:
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _take() -> Optional[int]:
    signum, _State.pending = _State.pending, None
    if _State.timer is not None:
        _State.timer.cancel()
        _State.timer = None
    return signum


def pending() -> bool:
    """Whether an interrupt waits for the next safe point."""
    return _State.pending is not None


def check() -> None:
    """A safe point: raise the interrupt received since the last one, if any."""
    if _State.pending is not None:
        signum = _take()
        if signum is not None:
            raise _exception(signum)


def _handler(signum: int, frame) -> None:  # noqa: ARG001 - the signal handler's signature
    if signum == signal.SIGTERM:
        _State.terminated = True
    if _State.pending is not None:  # the second signal, or the grace is over: now
        _take()
        raise _exception(signum)
    _State.pending = signum
    timer = threading.Timer(GRACE_S, _force, args=(signum,))
    timer.daemon = True
    _State.timer = timer
    timer.start()


def _force(signum: int) -> None:
    """The grace is over: deliver the signal again to the main thread, where the handler now raises. A real
    signal, not ``_thread.interrupt_main``: it also wakes a main thread blocked in a wait (a lock, a
    future), which a simulated one leaves waiting."""
    signal.pthread_kill(threading.main_thread().ident or 0, signum)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """During the block, SIGINT and SIGTERM are deferred to the next :func:`check` (see the module's
    docstring). SIGINT is left alone where it is ignored (a job started in the background). Elsewhere
    than the main thread this does nothing: signals are only delivered there."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        signal.signal(signal.SIGTERM, _handler)
        if previous[signal.SIGINT] is signal.default_int_handler:
            signal.signal(signal.SIGINT, _handler)
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _take()


def interruption() -> KeyboardInterrupt:
    """The interrupt to raise again after a library swallowed one (Lightning turns Ctrl-C into
    ``sys.exit(1)``): :class:`Terminated` after a SIGTERM, else KeyboardInterrupt."""
    return Terminated() if _State.terminated else KeyboardInterrupt()


@contextlib.contextmanager
def keep_sigint() -> Iterator[None]:
    """Put SIGINT's handler back after the block (Lightning sets it to "ignore" when it is interrupted)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
