"""What a trial stores, by name, and the typed record read back from it.

A trial's results live in Optuna's user attributes (the study's storage is the one place every worker
sees). Their keys are defined here, once; the loop writes them, and the Pareto export, the tracking
glue, the progress display and the rung schedule read them through :class:`TrialRecord`, which parses
the stored spec once.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

from .spec import ArchSpec

__all__ = ["ATTR_ARCH", "ATTR_ERROR", "ATTR_FINISHES", "ATTR_INVALID", "ATTR_METRICS", "ATTR_OUTPUT_STRIDE",
           "ATTR_REFERENCE", "ATTR_RESOLUTION", "ATTR_RUNGS", "ATTR_RUNG_STEPS", "ATTR_SPEC", "ATTR_SPEC_HASH",
           "ATTR_STOPPED_AT", "ATTR_TRAIN_HISTORY", "ATTR_WORKER", "TrialRecord"]

#: The sampled candidate: its spec (``ArchSpec.to_dict``), hash, short code, input side and output stride.
ATTR_SPEC, ATTR_SPEC_HASH, ATTR_ARCH = "spec", "spec_hash", "arch"
ATTR_RESOLUTION, ATTR_OUTPUT_STRIDE = "resolution", "output_stride"
#: Every objective and constraint metric by name (the objective values are the trial's own values).
ATTR_METRICS = "metrics"
#: Why it has no values: an invalid sample's rule (PRUNED), a failure's error in one line (FAIL).
ATTR_INVALID, ATTR_ERROR = "invalid_reason", "error"
#: The worker (``host:pid``) that runs it, so that a rerun on that host can tell its process is gone.
ATTR_WORKER = "worker"
#: An enqueued reference's name.
ATTR_REFERENCE = "reference"
#: The validation history of its proxy training (multi-objective studies, which cannot prune).
ATTR_TRAIN_HISTORY = "train_history"
#: Multi-fidelity studies: objective values at each rung passed ({"0": [...], ...}), the rung boundaries
#: in steps, the rung that stopped it (PRUNED), and on a trial that re-runs a stopped one to the full
#: budget, that one's number.
ATTR_RUNGS, ATTR_RUNG_STEPS, ATTR_STOPPED_AT, ATTR_FINISHES = "rungs", "rung_steps", "stopped_at_rung", "finishes"


@dataclass(frozen=True)
class TrialRecord:
    """One trial as archsearch reads it back: state, values and the stored attributes, typed."""

    number: int
    state: str
    values: Optional[List[float]]
    params: Dict[str, Any]
    spec_dict: Optional[dict] = None
    spec_hash: str = ""
    arch: str = ""
    resolution: Optional[int] = None
    metrics: Dict[str, float] = field(default_factory=dict)
    invalid_reason: str = ""
    error: str = ""
    worker: str = ""
    rungs: Dict[str, List[float]] = field(default_factory=dict)
    rung_steps: List[int] = field(default_factory=list)
    stopped_at: Optional[int] = None

    @classmethod
    def of(cls, trial) -> "TrialRecord":
        """From an Optuna ``FrozenTrial``."""
        a: Mapping[str, Any] = trial.user_attrs
        res = a.get(ATTR_RESOLUTION)
        return cls(number=trial.number, state=trial.state.name, values=list(trial.values) if trial.values else None,
                   params=dict(trial.params), spec_dict=a.get(ATTR_SPEC), spec_hash=a.get(ATTR_SPEC_HASH, ""),
                   arch=a.get(ATTR_ARCH, ""), resolution=int(res) if res is not None else None,
                   metrics=dict(a.get(ATTR_METRICS) or {}), invalid_reason=str(a.get(ATTR_INVALID) or ""),
                   error=str(a.get(ATTR_ERROR) or ""), worker=str(a.get(ATTR_WORKER) or ""),
                   rungs=dict(a.get(ATTR_RUNGS) or {}), rung_steps=list(a.get(ATTR_RUNG_STEPS) or []),
                   stopped_at=a.get(ATTR_STOPPED_AT))

    @functools.cached_property
    def spec(self) -> Optional[ArchSpec]:
        """The sampled spec, parsed once (None for a trial that never got one: an invalid sample)."""
        return ArchSpec.from_dict(self.spec_dict) if self.spec_dict else None

    @property
    def stopped_at_rung(self) -> bool:
        return self.state == "PRUNED" and self.stopped_at is not None

    @property
    def has_result(self) -> bool:
        """Complete, or stopped at a rung with its rung values: a result, unlike an invalid sample or a failure."""
        return self.state == "COMPLETE" or self.stopped_at_rung
