"""Experiment files (``trials/*.yaml``): a space, objectives, constraints, sampler, budget, storage,
tracking and measurement settings, loaded strictly like the spaces (every error names its key)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

from omegaconf import MISSING

from ._config import from_data, read_yaml, resolve_relative
from .errors import ConfigError
from .options import DEFAULT_STORAGE, ZERO_COST_NAMES, MeasureOptions
from ._config import apply_overrides

__all__ = [
    "ConstraintConfig", "EnqueueConfig", "FidelityConfig", "ObjectiveConfig", "SamplerConfig", "TrackingConfig",
    "TrialsConfig", "load_trials",
]

DIRECTIONS = ("minimize", "maximize")
#: The largest study budget accepted (a typo of a few extra digits is refused, not run for a year).
MAX_TRIALS = 1_000_000
SAMPLER_NAMES = ("nsga2", "nsga3", "tpe", "random", "gp")


@dataclass
class ObjectiveConfig:
    #: An objective of the metric registry (:data:`archsearch.metrics.OBJECTIVES`): macs, params, tokens,
    #: latency_ms, predicted_latency_ms, ttft_ms, a zero-cost proxy (synflow, naswot, grad_norm, snip),
    #: train_top1 or train_loss_sum.
    name: str = MISSING
    #: minimize or maximize; left out, the objective's natural direction (maximize train_top1, ...).
    direction: Optional[str] = None

    def __post_init__(self) -> None:
        from .metrics import resolve_objective

        _, natural = resolve_objective(self.name, "name")
        if self.direction is None:
            self.direction = natural
        if self.direction not in DIRECTIONS:
            raise ConfigError("direction", f"{self.direction!r} is not one of: {', '.join(DIRECTIONS)}")


@dataclass
class ConstraintConfig:
    """``metric <= max`` and/or ``metric >= min``; a trial that breaks it is infeasible."""

    metric: str = MISSING
    max: Optional[float] = None
    min: Optional[float] = None

    def __post_init__(self) -> None:
        from .metrics import metric_of

        metric_of(self.metric, "metric")
        if self.max is None and self.min is None:
            raise ConfigError("max", "give 'max', 'min' or both")
        for key in ("max", "min"):
            v = getattr(self, key)
            if v is not None and not math.isfinite(v):
                raise ConfigError(key, f"must be a finite number, got {v}")


@dataclass
class SamplerConfig:
    name: str = "nsga2"
    seed: Optional[int] = 0
    population_size: int = 20
    n_startup_trials: int = 10

    def __post_init__(self) -> None:
        if self.name not in SAMPLER_NAMES:
            raise ConfigError("name", f"{self.name!r} is not one of: {', '.join(SAMPLER_NAMES)}")
        if self.population_size < 2:
            raise ConfigError("population_size", f"must be >= 2, got {self.population_size}")


@dataclass
class TrackingConfig:
    enabled: bool = True
    #: MLflow tracking URI: a local SQLite store by default, or an MLflow server (http://...).
    uri: str = "sqlite:///mlflow.db"
    experiment: str = "archsearch"


@dataclass
class EnqueueConfig:
    """A reference (name or spec YAML) evaluated first; at the space's largest resolution by default."""

    spec: str = MISSING
    resolution: Optional[int] = None


@dataclass
class FidelityConfig:
    """Multi-fidelity search: every trial gets its cheap objectives and one training run, decided at each
    rung: it goes on only if it is in the top ``1/eta`` of the trials finished at that rung (non-dominated
    sorting over the study's objectives, :mod:`archsearch._rungs`). The model stays in memory from the first
    step to the rung that stops it. A trial stopped at a rung ends PRUNED with each rung's values kept; the
    last ``finish_share`` of the budget trains the provisional front's stopped members to the full budget."""

    #: The training objective the rungs refine (one of the study's objectives).
    metric: str = "train_top1"
    #: Total training steps at each rung, increasing; the last is the full budget.
    rungs: List[int] = MISSING
    eta: int = 3
    #: Relative difference of the fidelity metric that counts as a tie at a rung (its seed-to-seed noise):
    #: such trials are ranked by the exact objectives. 0: every difference counts.
    tie_tolerance: float = 0.0
    #: Validation images scored at the lower rungs of ``train_top1`` (the last rung validates in full).
    val_subset: int = 256
    #: Share of ``n_trials`` that re-runs stopped trials of the provisional front to the full budget, so that
    #: the final front is made of full-budget trials (0: none).
    finish_share: float = 0.25
    #: A zero-cost proxy (synflow, naswot, grad_norm, snip; ``measure.proxy``'s options) that decides a rung 0
    #: before any training: a trial trains only if its score, in the fidelity metric's place, puts it in the
    #: top ``1/eta`` there. None: the first rung is a training one.
    screen: Optional[str] = None

    def __post_init__(self) -> None:
        if self.metric not in ("train_top1", "train_loss_sum"):
            raise ConfigError("metric", f"{self.metric!r} is not a training objective (train_top1, train_loss_sum)")
        if self.screen is not None and self.screen not in ZERO_COST_NAMES:
            raise ConfigError("screen", f"{self.screen!r} is not a zero-cost proxy ({', '.join(ZERO_COST_NAMES)})")
        least = 1 if self.screen else 2
        if len(self.rungs) < least or any(b <= a for a, b in zip(self.rungs, self.rungs[1:])) or self.rungs[0] < 1:
            raise ConfigError("rungs", f"need {'one' if self.screen else 'two'} or more increasing step counts >= 1, "
                                       f"got {list(self.rungs)}")
        if self.eta < 2:
            raise ConfigError("eta", f"must be >= 2, got {self.eta}")
        if not 0 <= self.tie_tolerance < 1:
            raise ConfigError("tie_tolerance", f"must be within [0, 1), got {self.tie_tolerance}")
        if self.val_subset < 1:
            raise ConfigError("val_subset", f"must be >= 1, got {self.val_subset}")
        if not 0 <= self.finish_share < 1:
            raise ConfigError("finish_share", f"must be within [0, 1), got {self.finish_share}")

    @property
    def steps(self) -> List[int]:
        """Training steps at each rung, the screen's (0 steps) first when there is one: the rung indices that
        a trial's stored rung values and ``stopped_at_rung`` use."""
        return ([0] if self.screen else []) + list(self.rungs)


@dataclass
class TrialsConfig:
    name: str = MISSING
    space: str = MISSING
    objectives: List[ObjectiveConfig] = MISSING
    space_overrides: List[str] = field(default_factory=list)
    constraints: List[ConstraintConfig] = field(default_factory=list)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    #: Total trials of the study (all workers together, finished or running; failed ones are retried).
    n_trials: int = 20
    timeout_s: Optional[float] = None
    #: Any SQLAlchemy URL (sqlite:///..., postgresql://...), or ``memory`` (one process, nothing kept).
    storage: str = DEFAULT_STORAGE
    study_name: Optional[str] = None
    enqueue: List[EnqueueConfig] = field(default_factory=list)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    #: Every metric's options (latency, proxy, train, LLM); defaults in :mod:`archsearch.options`.
    measure: MeasureOptions = field(default_factory=MeasureOptions)
    #: Seconds between worker heartbeats; a RUNNING trial silent for ``grace_s`` is failed and retried.
    heartbeat_s: int = 10
    grace_s: int = 30
    max_retry: int = 2
    #: Stop this process after this many trials in a row have failed (exceptions are not retried forever).
    max_consecutive_failures: int = 5
    #: Rungs of training (multi-fidelity search); None: every trial trains ``measure.train.steps``.
    fidelity: Optional[FidelityConfig] = None
    description: str = ""
    #: Directory of the trials file; relative paths (space, enqueued specs) resolve against it.
    base_dir: str = "."

    def __post_init__(self) -> None:
        if not self.objectives:
            raise ConfigError("objectives", "at least one objective is needed")
        names = [o.name for o in self.objectives]
        if len(set(names)) != len(names):
            raise ConfigError("objectives", f"duplicate objective in {names}")
        if not 1 <= self.n_trials <= MAX_TRIALS:
            raise ConfigError("n_trials", f"must be within 1..{MAX_TRIALS}, got {self.n_trials}")
        if self.timeout_s is not None and not (math.isfinite(self.timeout_s) and self.timeout_s > 0):
            raise ConfigError("timeout_s", f"must be a positive number of seconds (or left out), got {self.timeout_s}")
        if self.max_consecutive_failures < 1:
            raise ConfigError("max_consecutive_failures", f"must be >= 1, got {self.max_consecutive_failures}")
        if self.max_retry < 0:
            raise ConfigError("max_retry", f"must be >= 0, got {self.max_retry}")
        if self.fidelity is not None and self.fidelity.metric not in names:
            raise ConfigError("fidelity.metric", f"{self.fidelity.metric!r} is not one of the objectives {names}")
        if self.heartbeat_s < 1 or self.grace_s <= self.heartbeat_s:
            raise ConfigError("grace_s", f"must exceed heartbeat_s ({self.heartbeat_s}), got {self.grace_s}")

    @property
    def study(self) -> str:
        return self.study_name or self.name

    def describe(self, n_trials: Optional[int] = None) -> str:
        """What a run of this experiment would do, in one line, with nothing run (``search --dry-run``): the space
        and its references are loaded, so that a bad one is reported now."""
        from .references import load_spec
        from .space import load_space

        space = load_space(self.resolve(self.space), self.space_overrides)
        refs = [load_spec(self.resolve(e.spec)).code for e in self.enqueue]
        return (f"study {self.study!r}, space {space.name!r} (resolutions {list(space.config.resolution)}), "
                f"objectives {', '.join(f'{o.name} ({o.direction})' for o in self.objectives)}, "
                f"{n_trials or self.n_trials} trials with {self.sampler.name}{self._describe_rungs()}; "
                f"references: {', '.join(refs) or 'none'}; nothing run")

    def _describe_rungs(self) -> str:
        f = self.fidelity
        if f is None:
            return ""
        screen = f"a {f.screen} screen, then " if f.screen else ""
        return f" in rungs ({screen}{f.metric} at {', '.join(map(str, f.rungs))} steps, top 1/{f.eta} go on)"

    def resolve(self, path: str) -> str:
        """A path written in the file, found from the file's folder (see :func:`resolve_relative`)."""
        return resolve_relative(path, self.base_dir)


def load_trials(path: str | Path, overrides: Sequence[str] = ()) -> TrialsConfig:
    data = apply_overrides(read_yaml(path), overrides)
    if isinstance(data, dict):
        if "base_dir" in data:
            raise ConfigError("base_dir", "is set from the file's location, not written in it")
        data = {**data, "base_dir": str(Path(path).parent)}
    try:
        return from_data(TrialsConfig, data)
    except ConfigError as e:
        raise ConfigError(e.key, f"{e.message} (in {path})") from None
