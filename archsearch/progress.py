"""What a long run reports as it goes: one event per finished trial (search) or unit (ablation, fidelity).

The library fills these plain records; the command line shows them (a live display on a terminal, one
plain ``[k/N]`` line per event elsewhere). Nothing here prints or imports a framework.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional

__all__ = ["TrialEvent", "UnitEvent"]


@dataclass(frozen=True)
class TrialEvent:
    """A trial this process ended, with the study's state at that moment (all workers, from the storage)."""

    number: int
    state: str
    #: Objective values by name (empty for a pruned or failed trial).
    values: Dict[str, float]
    #: Finished trials of the study (complete or pruned; failed ones are retried) and its budget.
    finished: int
    budget: int
    #: Seconds this trial took, and since the run started.
    trial_s: float
    elapsed_s: float
    #: Trials of the study by state, and the size of its Pareto front (feasible complete trials).
    states: Dict[str, int] = field(default_factory=dict)
    front: int = 0
    arch: str = ""
    resolution: Optional[int] = None
    #: Why it ended so: an invalid sample's rule, a failure's error, the rung a multi-fidelity trial stopped at.
    note: str = ""
    #: Multi-fidelity searches: the rung each running trial has finished (trial number -> rung index).
    running_rungs: Dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class UnitEvent:
    """One unit of a grid of work (an ablation's (variant, resolution), a fidelity study's training) ended."""

    done: int
    total: int
    label: str
    elapsed_s: float
    error: str = ""
