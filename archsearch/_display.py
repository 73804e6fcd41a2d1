"""How the command line shows a long run: a live display on a terminal, plain ``[k/N]`` lines elsewhere.

On a terminal, rich draws the budget, trials by state, elapsed time and ETA, the front's size, the last
trial and, in a multi-fidelity search, the rung each running trial is at. Off a terminal (CI logs, ``nohup``,
a cluster's job log, a pipe) every finished trial or unit is one plain line that starts ``[k/N]``, with no
control characters. ``quiet`` shows neither.
"""
from __future__ import annotations

import time
from typing import Dict, List, Optional

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

from .progress import TrialEvent, UnitEvent

__all__ = ["SearchDisplay", "UnitDisplay", "trial_line"]


def _num(v: float) -> str:
    return f"{v:.4g}"


def _duration(s: float) -> str:
    return f"{s:.1f} s" if s < 60 else f"{int(s // 60)} min {int(s % 60):02d} s"


def trial_line(e: TrialEvent) -> str:
    """The plain line of one finished trial: ``[k/N] trial 7 COMPLETE a=1 b=2 (3.1 s; 1 min 02 s elapsed)``."""
    values = " ".join(f"{k}={_num(v)}" for k, v in e.values.items())
    note = f" - {e.note}" if e.note else ""
    where = f" {e.arch} @ {e.resolution} px" if e.arch else ""
    return (f"[{e.finished}/{e.budget}] trial {e.number} {e.state}{where}{' ' + values if values else ''}{note} "
            f"({_duration(e.trial_s)}; {_duration(e.elapsed_s)} elapsed)")


class _Live:
    """A rich Live display on ``console`` while the block runs, or nothing when it is off."""

    def __init__(self, console: Console, on: bool) -> None:
        self.console, self.on = console, on
        self._live: Optional[Live] = None

    def __enter__(self):
        if self.on:
            self._live = Live(self.renderable(), console=self.console, refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.update(self.renderable())
            self._live.__exit__(*exc)
            self._live = None

    def refresh(self) -> None:
        if self._live is not None:
            self._live.update(self.renderable())

    def renderable(self):  # pragma: no cover - each display draws its own
        raise NotImplementedError


class SearchDisplay(_Live):
    """Progress of a search or worker: ``trial(event)`` after every trial this process ends."""

    def __init__(self, out: Console, err: Console, *, study: str, budget: int, finished: int = 0,
                 quiet: bool = False) -> None:
        self.out, self.quiet = out, quiet
        # Output piped (CI logs, `| cat`, a job log): plain lines into it; both on a terminal: the live display.
        super().__init__(err, on=not quiet and out.is_terminal and err.is_terminal)
        self.plain = not quiet and not out.is_terminal
        self.study, self.budget = study, budget
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                 TextColumn("ETA"), TimeRemainingColumn(), console=err)
        self.task = self.progress.add_task(f"{study}: trials", total=budget, completed=min(finished, budget))
        self.last: Optional[TrialEvent] = None

    def start(self, budget: int, finished: int) -> None:
        """The study is open: its budget and the trials it had finished before this run."""
        self.budget = budget
        self.progress.update(self.task, total=budget, completed=min(finished, budget))
        self.refresh()

    def trial(self, e: TrialEvent) -> None:
        self.last = e
        self.progress.update(self.task, completed=min(e.finished, e.budget), total=e.budget)
        if self.plain:
            self.out.print(trial_line(e), markup=False, highlight=False, soft_wrap=True)
        self.refresh()

    def renderable(self):
        lines: List = [self.progress]
        e = self.last
        if e is not None:
            states = ", ".join(f"{n} {k.lower()}" for k, n in sorted(e.states.items()) if n) or "none yet"
            lines.append(Text(f"budget {e.budget} trials; {e.finished} finished; by state: {states}; "
                              f"Pareto front: {e.front}"))
            lines.append(Text("last: " + trial_line(e)))
            if e.running_rungs:
                lines.append(Text("running: " + ", ".join(f"trial {n} past rung {r}" for n,
                                                          r in sorted(e.running_rungs.items()))))
        else:
            lines.append(Text(f"budget {self.budget} trials; waiting for the first to finish"))
        return Group(*lines)


class UnitDisplay(_Live):
    """Progress of a grid of units (ablation rows, fidelity units): ``unit(event)`` after each."""

    def __init__(self, out: Console, err: Console, *, title: str, total: Optional[int], quiet: bool = False) -> None:
        self.out = out
        super().__init__(err, on=not quiet and out.is_terminal and err.is_terminal)
        self.plain = not quiet and not out.is_terminal
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                 TextColumn("ETA"), TimeRemainingColumn(), console=err)
        self.task = self.progress.add_task(title, total=total)
        self.start = time.monotonic()
        self.failed: Dict[str, str] = {}

    def unit(self, e: UnitEvent) -> None:
        self.progress.update(self.task, completed=e.done, total=e.total, description=e.label[:60])
        if e.error:
            self.failed[e.label] = e.error
        if self.plain:
            state = f"failed: {e.error}" if e.error else "done"
            self.out.print(f"[{e.done}/{e.total}] {e.label} {state} ({_duration(e.elapsed_s)} elapsed)",
                           markup=False, highlight=False, soft_wrap=True)
        self.refresh()

    def renderable(self):
        return self.progress
