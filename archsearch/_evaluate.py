"""What one trial measures: sample the candidate, record it on the trial, measure every objective and
constraint metric (rung by rung in a multi-fidelity study), and the constraint violations. The study's
references are evaluated here too, the same way, before its first trial.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Tuple

import optuna

from ._record import ATTR_ARCH, ATTR_ERROR, ATTR_FINISHES, ATTR_INVALID, ATTR_METRICS, ATTR_OUTPUT_STRIDE, \
    ATTR_REFERENCE, ATTR_RESOLUTION, ATTR_SPEC, ATTR_SPEC_HASH
from ._study import record_measurements
from .errors import InvalidSample
from .metrics import Measurer
from .space import SearchSpace
from .encoders import Encoder
from .spec import ArchSpec
from .trials import TrialsConfig

__all__ = ["Evaluator"]


class Evaluator:
    """Measures candidates of ``space`` for ``cfg``'s study (stored at ``url``) with ``measurer`` (cached)."""

    def __init__(self, cfg: TrialsConfig, space: SearchSpace, measurer: Measurer, url: str) -> None:
        self.cfg = cfg
        self.space = space
        self.measurer = measurer
        self.url = url
        #: Each failed trial's error as this process saw it (the storage may not have taken it).
        self.errors: Dict[int, str] = {}

    @property
    def metric_names(self) -> List[str]:
        return [o.name for o in self.cfg.objectives] + [c.metric for c in self.cfg.constraints]

    def trial(self, trial: optuna.Trial) -> List[float]:
        """Sample, measure and record one trial; its objective values. An invalid sample is PRUNED with its
        reason; a measurement's exception fails the trial with its error kept in one line."""
        try:
            cand = self.space.sample_candidate(trial)
        except InvalidSample as e:
            trial.set_user_attr(ATTR_INVALID, e.reason)
            raise optuna.TrialPruned(e.reason) from None
        spec = cand.spec
        for key, value in ((ATTR_SPEC, spec.to_dict()), (ATTR_SPEC_HASH, spec.spec_hash), (ATTR_ARCH, spec.code),
                           (ATTR_RESOLUTION, cand.resolution), (ATTR_OUTPUT_STRIDE, spec.output_stride)):
            trial.set_user_attr(key, value)
        try:
            values = self.values(spec, cand.resolution, trial) if self.cfg.fidelity is None \
                else self._in_rungs(trial, spec, cand.resolution)
        except optuna.TrialPruned:
            raise
        except Exception as e:
            error = f"{type(e).__name__}: {str(e).strip()[:500]}"
            self.errors[trial.number] = error  # kept here too: a full disk may refuse the attribute below
            trial.set_user_attr(ATTR_ERROR, error)
            raise
        trial.set_user_attr(ATTR_METRICS, values)
        for c, violation in zip(self.cfg.constraints, self.violations(values)):
            trial.set_constraint(f"{c.metric}", violation)
        return [values[o.name] for o in self.cfg.objectives]

    def values(self, spec: Encoder, resolution: int, trial: optuna.Trial | None = None) -> Dict[str, float]:
        """Every objective and constraint metric of a candidate (measurements are cached)."""
        values, row = self.measurer.values(spec, resolution, self.metric_names)
        if trial is not None:
            record_measurements(trial, row)
        return values

    def _in_rungs(self, trial: optuna.Trial, spec: ArchSpec, resolution: int) -> Dict[str, float]:
        """The cheap metrics, then training rung by rung (:func:`archsearch._rungs.train_in_rungs`)."""
        from ._rungs import rung_dir, train_in_rungs

        f = self.cfg.fidelity
        assert f is not None
        cheap_names = [n for n in self.metric_names if n != f.metric]
        values, row = self.measurer.values(spec, resolution, cheap_names) if cheap_names else ({}, {})
        record_measurements(trial, row)
        return train_in_rungs(trial, measurer=self.measurer, fidelity=f, objectives=self.cfg.objectives, spec=spec,
                              resolution=resolution, values=values, checkpoint_dir=rung_dir(self.url, self.cfg.study),
                              finishing=ATTR_FINISHES in trial.user_attrs)

    def reference(self, spec: Encoder, resolution: int) -> Dict[str, float]:
        """A reference's values; in a rung study its training is the rung run every trial gets, never stopped,
        so that its enqueued trial replays the cached run instead of training it a second time."""
        f = self.cfg.fidelity
        if f is None or not isinstance(spec, ArchSpec):
            return self.values(spec, resolution)
        from ._rungs import train_reference

        cheap = [n for n in self.metric_names if n != f.metric]
        values, _ = self.measurer.values(spec, resolution, cheap) if cheap else ({}, {})
        values[f.metric] = train_reference(self.measurer, f, spec, resolution)
        return values

    def violations(self, values: Dict[str, float]) -> List[float]:
        """Each constraint's violation (<= 0: satisfied), in the order of ``cfg.constraints``."""
        out = []
        for c in self.cfg.constraints:
            v = values[c.metric]
            out.append(max(v - c.max if c.max is not None else float("-inf"), c.min - v if c.min is not None else float("-inf")))
        return out

    def references(self, study: optuna.Study, references: List[Tuple[Encoder, int]], warn: Callable[[str], None]) -> list:
        """Evaluate the study's references, enqueue those the space can sample as its first trials, and return
        their summaries (name, values, feasibility) for the study's attributes. One that cannot be measured is
        reported and skipped: it must not stop the study."""
        refs = []
        for spec, res in references:
            try:
                values = self.reference(spec, res)
            except Exception as e:  # noqa: BLE001 - a reference that cannot be measured must not stop the study
                warn(f"reference {spec.name or spec.spec_hash} at {res} px not evaluated: {type(e).__name__}: {e}")
                continue
            feasible = all(v <= 0 for v in self.violations(values))
            params = self.space.params_for(spec, res) if isinstance(spec, ArchSpec) else None
            if params is not None:
                study.enqueue_trial(params, user_attrs={ATTR_REFERENCE: spec.name})
            refs.append({"name": spec.name or spec.spec_hash, "resolution": res, "spec_hash": spec.spec_hash,
                         "arch": spec.code, "values": [values[o.name] for o in self.cfg.objectives],
                         "metrics": values, "feasible": feasible, "in_space": params is not None})
        return refs
