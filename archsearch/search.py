"""Optuna multi-objective search over a space, driven by a ``trials/*.yaml`` experiment: the loop.

One trial: sample (space) -> measure (metrics, proxies; cached) -> objective values, constraint
violations and the spec in the trial's user attributes -> one MLflow run. Invalid samples end PRUNED
with their reason; an exception fails only its trial.

The rooms this loop stands on: where the study lives and who works on it (:mod:`archsearch._storage`:
storage, worker liveness, the claim on the budget), what makes its trials comparable
(:mod:`archsearch._study`: open, check, freeze), what one trial measures (:mod:`archsearch._evaluate`),
what its attributes are (:mod:`archsearch._record`), what a finished trial tells the display and MLflow
(:mod:`archsearch._observe`), and the rung schedule of a multi-fidelity search (:mod:`archsearch._rungs`).
"""
from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import optuna
from optuna.trial import TrialState

from . import _interrupts, _scoped
from ._evaluate import Evaluator
from ._observe import close_parent_run, open_parent_run, track_trial, trial_event
from ._record import ATTR_WORKER, TrialRecord
from . import _optuna
from ._storage import WORKER, BudgetLock, fail_running, fail_trials_of_dead_workers
from ._study import check_conditions, check_space, conditions, freeze_predictor, open_study, record_identity
from .errors import mask_secrets
from .metrics import Measurer
from .progress import TrialEvent
from .references import load_spec
from .space import SearchSpace, load_space
from .tracking import Tracker
from .trials import TrialsConfig

__all__ = ["SearchResult", "SearchRunner", "open_study", "run_search"]

_log = logging.getLogger("archsearch")

#: What the budget counts: trials finished or in flight. FAILED ones are retried; WAITING ones (enqueued
#: references, retries) are work still to do, and the next trial started picks them first.
_COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


@dataclass
class SearchResult:
    study: optuna.Study
    #: Trials this process ran, why it stopped (budget, timeout, failures), and the study's budget.
    ran: int
    stopped: str
    budget: int = 0
    #: Filled by :meth:`SearchRunner.finish`: trials by state, the Pareto front, whether the study is complete.
    states: Dict[str, int] = field(default_factory=dict)
    pareto: list = field(default_factory=list)
    complete: bool = False
    #: Trials this process ended, by state, and the last error among its failed ones.
    states_here: Dict[str, int] = field(default_factory=dict)
    last_error: Optional[str] = None
    #: Trials this process ended with a result: complete, or stopped at a rung with its rung values.
    measured_here: int = 0
    #: Multi-fidelity studies: trials stopped at each rung and the training saved (``_rungs.summary``).
    rungs: Optional[dict] = None
    #: Where the study lives (secrets masked) and its MLflow parent run (None with tracking off).
    url: str = ""
    parent_run_id: Optional[str] = None
    tracking: bool = False

    @property
    def failed_only(self) -> bool:
        """This run ended trials and none with a result (failed, or pruned as an invalid sample): the command
        should not report success. A trial a rung stopped is a result: in a study with workers, one worker may
        end only such trials while another trains the survivors to the full budget."""
        return sum(self.states_here.values()) > 0 and self.measured_here == 0


class SearchRunner:
    """Evaluates candidates for one study in this process; many runners may share the study."""

    def __init__(
        self,
        cfg: TrialsConfig,
        *,
        storage: Optional[str] = None,
        seed_offset: int = 0,
        warn: Optional[Callable[[str], None]] = None,
    ) -> None:
        self.cfg = cfg
        self.url = storage or cfg.storage
        #: Warnings go to the ``archsearch`` logger unless the caller takes them (the CLI prints them).
        self.warn = warn or _log.warning
        self.space: SearchSpace = load_space(cfg.resolve(cfg.space), cfg.space_overrides)
        self.measurer = Measurer(cfg.measure)
        self.evaluator = Evaluator(cfg, self.space, self.measurer, self.url)
        self.references = [(load_spec(cfg.resolve(e.spec)),
                            e.resolution or max(self.space.config.resolution)) for e in cfg.enqueue]
        seed = None if cfg.sampler.seed is None else cfg.sampler.seed + seed_offset
        self.study = open_study(cfg, self.url, seed=seed)
        # Before anything runs: a reopened study must be sampled from the same space, measured the same way.
        self.conditions = conditions(cfg, self.evaluator.metric_names)
        check_space(self.study, cfg, self.space)
        check_conditions(self.study, cfg, self.conditions)
        #: The claim on the budget: taken before counting the study's trials, given up by the objective as soon
        #: as its trial exists (so other workers may claim the next one while it is measured).
        self.lock = BudgetLock(self.url, cfg.study)
        self.tracker = Tracker(cfg.tracking, warn)
        self.parent_run_id: Optional[str] = None
        #: The trial this process's objective is running, and whether an interrupt ended it (see _run).
        self._running_id: Optional[int] = None
        self._interrupted = False
        #: Trials this process ended, by state, and the last error among them (for the run's exit status).
        self.states_here: Dict[str, int] = {}
        self.last_error: Optional[str] = None
        self.measured_here = 0

    def objective(self, trial: optuna.Trial) -> List[float]:
        # The storage's id of the trial: the loop reads the finished trial back by it, and an interrupted one is
        # marked failed through it.
        self._running_id = _optuna.trial_id(trial)
        try:
            return self._objective(trial)
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (_interrupts.Terminated)
            self._interrupted = True
            raise

    def _objective(self, trial: optuna.Trial) -> List[float]:
        _interrupts.check()  # inside the objective: Optuna marks the trial and stops its heartbeat cleanly
        # First, so that a rerun on this host can tell at once that the trial's process is gone.
        trial.set_user_attr(ATTR_WORKER, WORKER)
        self.lock.release()  # the trial exists now: other workers may claim the next one
        return self.evaluator.trial(trial)

    # --- study-level set-up, once per study -------------------------------------------------------
    def _prepare_study(self) -> None:
        attrs = self.study.user_attrs
        record_identity(self.study, self.cfg, self.space, self.conditions, self.url)
        freeze_predictor(self.study, self.cfg, self.space, self.measurer, self.evaluator.metric_names)
        if "references" not in attrs and self.references:
            self.study.set_user_attr("references", self.evaluator.references(self.study, self.references, self.warn))
        self.parent_run_id = open_parent_run(self.tracker, self.study, self.cfg, space=self.space.name,
                                             storage=mask_secrets(self.url))

    def _account(self, record: TrialRecord) -> None:
        """This process's bookkeeping of a trial it ended: counts by state, and its error in one line."""
        self.states_here[record.state] = self.states_here.get(record.state, 0) + 1
        self.measured_here += record.has_result
        if record.state == "FAIL":
            reason = record.error or self.evaluator.errors.pop(record.number,
                                                               "") or "interrupted or failed outside the measurement"
            self.last_error = reason.splitlines()[0]
            self.warn(f"trial {record.number} failed: {self.last_error}; the study goes on")

    # --- the loop -------------------------------------------------------------------------------
    @property
    def _objectives(self) -> List[str]:
        return [o.name for o in self.cfg.objectives]

    def counted_trials(self) -> int:
        # A dead worker's RUNNING trial must not hold a budget slot: fail it (and re-queue it) first. On this
        # host a worker's process is known gone at once; elsewhere its heartbeat stops (after grace_s).
        fail_trials_of_dead_workers(self.study, max_retry=self.cfg.max_retry, warn=self.warn)
        return len(self.study.get_trials(deepcopy=False, states=_COUNTED))

    def run(self, *, n_trials: Optional[int] = None, on_trial: Optional[Callable[[TrialEvent], None]] = None) -> SearchResult:
        # Optuna logs a failed trial with its traceback; the runner reports it in one line instead and keeps
        # the error on the trial (user attribute ``error``). The caller's verbosity is restored afterwards.
        with _scoped.optuna_verbosity(optuna.logging.ERROR):
            return self._run(n_trials=n_trials, on_trial=on_trial)

    def prepare(self) -> None:
        """What a study does once before its first trial: record its objectives and space, calibrate and freeze
        the latency predictor (when an objective predicts latency), evaluate its references. ``run`` calls it;
        calling it first only does that work up front (a benchmark calibrates outside its timed budget)."""
        with self.lock.held():
            self._prepare_study()

    def _run(self, *, n_trials: Optional[int], on_trial: Optional[Callable[[TrialEvent], None]]) -> SearchResult:
        budget = n_trials or self.cfg.n_trials
        self.prepare()
        deadline = None if self.cfg.timeout_s is None else time.monotonic() + self.cfg.timeout_s
        ran, stopped = 0, "budget"
        failed_in_a_row = 0
        started = time.monotonic()
        while True:
            _interrupts.check()
            if deadline is not None and time.monotonic() > deadline:
                stopped = "timeout"
                break
            self.lock.acquire()
            try:
                counted = self.counted_trials()
                if counted >= budget:
                    break
                if self.cfg.fidelity is not None:
                    from ._rungs import queue_finisher

                    elapsed = (time.monotonic() - started) / self.cfg.timeout_s if self.cfg.timeout_s else 0.0
                    queue_finisher(self.study, self.cfg.fidelity, self.cfg.objectives, budget, counted, elapsed)
                trial_started = time.monotonic()
                try:
                    # One trial per call, not optimize(n_trials=N): each call fails stale trials and starts the
                    # heartbeat for its trial, and the claim on the budget is re-taken before the next.
                    self.study.optimize(self.objective, n_trials=1, catch=(Exception,), gc_after_trial=False,
                                        show_progress_bar=False)
                except (AssertionError, optuna.exceptions.StorageInternalError):
                    if not self._interrupted:
                        raise
                    # Optuna could not record the interrupted trial's end (SQLite answered "database is
                    # locked" once in CI) and left it RUNNING: mark it once more, then stop as asked.
                    self._fail_interrupted_trial()
                    raise _interrupts.interruption() from None
            finally:
                self.lock.release()
            ran += 1
            assert self._running_id is not None
            trial = _optuna.get_trial(self.study, self._running_id)  # this process's own trial
            record = TrialRecord.of(trial)
            self._account(record)
            track_trial(self.tracker, self.parent_run_id, record, study_name=self.cfg.study, objectives=self._objectives,
                        device=self.measurer.options.latency.backend)
            # Failed trials do not use the budget (they are retried), so a search whose every trial fails
            # (a broken measurement, a missing device) must stop on its own.
            failed_in_a_row = failed_in_a_row + 1 if trial.state == TrialState.FAIL else 0
            if failed_in_a_row >= self.cfg.max_consecutive_failures:
                stopped = f"{failed_in_a_row} failed trials in a row (max_consecutive_failures)"
                break
            if on_trial:
                now = time.monotonic()
                on_trial(trial_event(self.study, record, objectives=self._objectives, budget=budget,
                                     full_steps=self.cfg.fidelity.rungs[-1] if self.cfg.fidelity else None,
                                     trial_s=now - trial_started, elapsed_s=now - started))
        return SearchResult(self.study, ran, stopped, budget)

    def _fail_interrupted_trial(self) -> None:
        if self._running_id is None:
            return
        try:
            fail_running(_optuna.storage_of(self.study), self._running_id, "interrupted (SIGINT or SIGTERM)")
        except Exception as e:  # noqa: BLE001 - the storage still refuses: a rerun fails and retries it (heartbeat, grace_s)
            self.warn(f"could not mark the interrupted trial failed ({type(e).__name__}); a rerun will, after grace_s")

    # --- the end of a run ---------------------------------------------------------------------------
    def finish(self, result: SearchResult, *, pareto_out: Optional[Path] = None) -> SearchResult:
        """Export the Pareto front (to ``pareto_out``, or only to MLflow) and, when this run completed the
        study's budget and no other worker still runs a trial, log it on the parent run and mark it FINISHED."""
        from .pareto import export_pareto

        study = self.study
        result.states = {st.name: len(study.get_trials(deepcopy=False, states=(st,))) for st in TrialState}
        complete = (result.stopped == "budget" and result.states.get("RUNNING", 0) == 0
                    and self.counted_trials() >= result.budget)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(pareto_out) if pareto_out else Path(tmp)
            result.pareto = export_pareto(study, out)
            if complete and self.parent_run_id:
                with self.lock.held():  # the last workers may finish together: one closes the run
                    close_parent_run(self.tracker, study, self.parent_run_id, out)
        if self.cfg.fidelity is not None:
            from ._rungs import remove_orphan_checkpoints, rung_dir, summary

            if complete:  # nothing will resume from a dead worker's checkpoint now
                remove_orphan_checkpoints(rung_dir(self.url, self.cfg.study))
            result.rungs = summary(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)),
                                   self.cfg.fidelity.steps)
            study.set_user_attr("rung_summary", result.rungs)
        result.complete = complete
        result.states_here = dict(self.states_here)
        result.last_error = self.last_error
        result.measured_here = self.measured_here
        result.url, result.parent_run_id, result.tracking = mask_secrets(self.url), self.parent_run_id, self.tracker.enabled
        return result


def run_search(
    cfg: TrialsConfig,
    *,
    n_trials: Optional[int] = None,
    pareto_out: Optional[Path] = None,
    on_trial: Optional[Callable[[TrialEvent], None]] = None,
    on_start: Optional[Callable[[int, int], None]] = None,
    **runner_options,
) -> SearchResult:
    """Run (or resume) ``cfg``'s study in this process and finish what it starts: the Pareto front is
    exported (to ``pareto_out`` when given) and logged, and the study's MLflow parent run is FINISHED once
    its budget is complete (by whichever worker completes it). ``runner_options`` are :class:`SearchRunner`'s.

    ``on_start(budget, finished)`` is called once the study is open, ``on_trial(event)`` after each trial this
    process ends. An interrupt (Ctrl-C, SIGTERM) propagates with ``kept`` set: what stays stored, in words."""
    runner = SearchRunner(cfg, **runner_options)
    budget = n_trials or cfg.n_trials
    if on_start:
        on_start(budget, runner.counted_trials())
    try:
        result = runner.run(n_trials=budget, on_trial=on_trial)
    except KeyboardInterrupt as e:
        done = len(runner.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
        e.kept = (f"{done} finished trials of {cfg.study!r} are kept in {mask_secrets(runner.url)}; "  # type: ignore[attr-defined]
                  "run the same command to continue")
        raise
    return runner.finish(result, pareto_out=pareto_out)
