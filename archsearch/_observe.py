"""What a finished trial tells the outside: its progress event (the display) and its MLflow run.

Both read the trial through :class:`archsearch._record.TrialRecord`; neither changes the study.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import optuna
from optuna.trial import TrialState

from ._record import ATTR_RUNGS, TrialRecord
from .progress import TrialEvent
from .tracking import Tracker

__all__ = ["close_parent_run", "open_parent_run", "track_trial", "trial_event"]

#: Study attributes: the study's MLflow parent run, and whether a worker has closed it.
ATTR_PARENT_RUN, ATTR_PARENT_FINISHED = "mlflow_parent_run_id", "mlflow_parent_finished"


def open_parent_run(tracker: Tracker, study: optuna.Study, cfg, *, space: str, storage: str) -> Optional[str]:
    """The study's MLflow parent run: started by the first worker (its id kept on the study), found by the rest.
    Its params say what the study is and which frozen predictor prices its trials."""
    if ATTR_PARENT_RUN not in study.user_attrs and tracker.enabled:
        predictor = {f"predictor.{k}": str(v) for k, v in (study.user_attrs.get("predictor") or {}).items()}
        run_id = tracker.start_study(cfg.study, {
            "space": space, "objectives": ",".join(o.name for o in cfg.objectives), "sampler": cfg.sampler.name,
            "n_trials": str(cfg.n_trials), "storage": storage, **predictor})
        if run_id:
            study.set_user_attr(ATTR_PARENT_RUN, run_id)
    return study.user_attrs.get(ATTR_PARENT_RUN)


def close_parent_run(tracker: Tracker, study: optuna.Study, run_id: str, front_dir) -> None:
    """Log the exported front on the parent run and mark it FINISHED, once (call it under the budget's lock)."""
    if not study.user_attrs.get(ATTR_PARENT_FINISHED):
        tracker.log_study_artifacts(run_id, front_dir)
        tracker.finish_study(run_id)
        study.set_user_attr(ATTR_PARENT_FINISHED, True)


def trial_event(study: optuna.Study, record: TrialRecord, *, objectives: Sequence[str], full_steps: Optional[int],
                budget: int, trial_s: float, elapsed_s: float) -> TrialEvent:
    """The trial this process just ended, and the study's state now (every worker's trials). ``full_steps``:
    a multi-fidelity study's last rung."""
    trials = study.get_trials(deepcopy=False)
    states: Dict[str, int] = {}
    for x in trials:
        states[x.state.name] = states.get(x.state.name, 0) + 1
    note = record.invalid_reason or record.error
    if record.stopped_at_rung:
        steps = record.rung_steps[-1] if record.rung_steps else None
        note = f"stopped at rung {record.stopped_at} " + (
            "(the zero-cost screen: no training)" if steps == 0 else f"({steps} steps)")
    elif record.rungs and full_steps is not None and record.state == "COMPLETE":
        note = f"trained to the full budget ({full_steps} steps)"
    running = {x.number: len(x.user_attrs[ATTR_RUNGS]) - 1 for x in trials
               if x.state == TrialState.RUNNING and x.user_attrs.get(ATTR_RUNGS)}
    front = len(study.best_trials) if states.get("COMPLETE") else 0
    return TrialEvent(
        number=record.number, state=record.state, values=dict(zip(objectives, record.values or [])), budget=budget,
        trial_s=trial_s, elapsed_s=elapsed_s, finished=min(budget, states.get("COMPLETE", 0) + states.get("PRUNED", 0)),
        states=states, front=front, arch=record.arch, resolution=record.resolution,
        note=note.splitlines()[0][:200] if note else "", running_rungs=running)


def track_trial(tracker: Tracker, parent_run_id: Optional[str], record: TrialRecord, *, study_name: str,
                objectives: Sequence[str], device: str) -> None:
    """One MLflow run for a trial: its metrics (and rung values, objective values), spec and sampled params."""
    metrics = dict(record.metrics)
    for i, vals in record.rungs.items():
        metrics.update({f"rung{i}.{name}": v for name, v in zip(objectives, vals)})
    if record.values:
        metrics.update({f"objective.{name}": v for name, v in zip(objectives, record.values)})
    tags = {"spec_hash": record.spec_hash, "arch": record.arch, "device": device, "worker": record.worker}
    if record.invalid_reason:
        tags["invalid_reason"] = record.invalid_reason[:500]
    params: Dict[str, object] = {"resolution": record.resolution, "spec": record.spec_dict, "sampled": record.params}
    spec_yaml = record.spec.to_yaml() if record.spec else None
    tracker.log_trial(parent_run_id, study_name=study_name, number=record.number, state=record.state,
                      params=params, metrics=metrics, tags=tags, spec_yaml=spec_yaml)
