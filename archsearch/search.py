"""Optuna multi-objective search over a space, driven by a ``trials/*.yaml`` experiment.

One trial: sample (space) -> measure (metrics, proxies; cached) -> objective values, constraint
violations and the spec in the trial's user attributes -> one MLflow run. Invalid samples end PRUNED
with their reason; an exception fails only its trial.

Many workers share a study through an RDB storage (SQLite file, PostgreSQL for many machines):
heartbeats mark a dead worker's trial FAILED and ``RetryHeartbeatStaleTrialCallback`` re-queues it. The
budget (``n_trials``) counts every trial of the study that is not FAILED and is claimed under a lock
(a PostgreSQL advisory lock, or a file lock beside a SQLite file), so that N workers stop at exactly
``n_trials`` finished trials together.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import socket
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from . import _interrupts, _scoped
from ._storage import sqlite_file
from .errors import ConfigError, InvalidSample, mask_secrets
from .metrics import Measurer
from .progress import TrialEvent
from .references import load_spec
from .space import SearchSpace, load_space
from .spec import ArchSpec
from .tracking import Tracker
from .trials import TrialsConfig

__all__ = ["SearchResult", "SearchRunner", "open_study", "run_search"]

_log = logging.getLogger("archsearch")

#: What the budget counts: trials finished or in flight. FAILED ones are retried; WAITING ones (enqueued
#: references, retries) are work still to do, and the next trial started picks them first.
_COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


def _sampler(cfg: TrialsConfig, seed: Optional[int]) -> optuna.samplers.BaseSampler:
    # Constraints reach the samplers through Trial.set_constraint (Optuna 5), not constraints_func.
    s = cfg.sampler
    samplers: Dict[str, Callable[[], optuna.samplers.BaseSampler]] = {
        "nsga2": lambda: optuna.samplers.NSGAIISampler(population_size=s.population_size, seed=seed),
        "nsga3": lambda: optuna.samplers.NSGAIIISampler(population_size=s.population_size, seed=seed),
        "tpe": lambda: optuna.samplers.TPESampler(seed=seed, n_startup_trials=s.n_startup_trials, multivariate=True),
        "random": lambda: optuna.samplers.RandomSampler(seed=seed),
        "gp": lambda: optuna.samplers.GPSampler(seed=seed, n_startup_trials=s.n_startup_trials),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return samplers[s.name]()


def _storage(cfg: TrialsConfig, url: str) -> optuna.storages.BaseStorage:
    if url == "memory":  # one process, nothing kept: benchmarks and experiments in a notebook
        return optuna.storages.InMemoryStorage()
    if url.startswith("sqlite") and sqlite_file(url) is None:
        # Every SQLAlchemy connection to sqlite:// is a database of its own: the heartbeat thread would find
        # no tables (a 76-line traceback), and nothing would be kept anyway.
        raise ConfigError("storage", f"{url}: an in-memory SQLite database cannot hold a study that workers and "
                                     "heartbeats share; use sqlite:///FILE.db, or storage=memory for one process")
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    try:
        # Workers that start together on a fresh database would all create Optuna's tables at once (on
        # PostgreSQL one dies with a UniqueViolation): the first creates them, the others wait for it.
        with warnings.catch_warnings(), _BudgetLock(url, "__schema__").held():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=cfg.heartbeat_s,
                grace_period=cfg.grace_s,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=cfg.max_retry),
            )
    except Exception as e:  # noqa: BLE001 - SQLAlchemy raises many kinds; the user needs one line
        raise ConfigError("storage", mask_secrets(f"cannot open {url}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")) from None


def open_study(cfg: TrialsConfig, url: str, *, seed: Optional[int] = None) -> optuna.Study:
    with _scoped.optuna_verbosity(optuna.logging.ERROR):
        return _open_study(cfg, url, seed=seed)


def _open_study(cfg: TrialsConfig, url: str, *, seed: Optional[int] = None) -> optuna.Study:
    storage = _storage(cfg, url)
    directions = [o.direction for o in cfg.objectives]
    try:
        study = optuna.create_study(
            study_name=cfg.study, storage=storage, directions=directions, sampler=_sampler(cfg, seed), load_if_exists=True
        )
    except Exception as e:  # noqa: BLE001
        raise ConfigError("storage", mask_secrets(f"cannot open study {cfg.study!r} in {url}: {str(e).splitlines()[0][:200]}")) from None
    have = [d.name.lower() for d in study.directions]
    if have != directions:
        raise ConfigError(
            "objectives", mask_secrets(f"study {cfg.study!r} already exists in {url} with directions {have}, not {directions}; "
                                       "use another study_name")
        )
    done = len(study.get_trials(deepcopy=False))
    if done and seed is not None:
        # A resumed study must not replay its seeded sampler (2, then 5, then 8 trials gave 3 distinct specs):
        # the seed moves on with the study, so each process draws what the earlier ones did not.
        study = optuna.load_study(study_name=cfg.study, storage=storage, sampler=_sampler(cfg, seed + done))
    names = [o.name for o in cfg.objectives]
    stored = study.user_attrs.get("objectives")
    if stored is not None and stored != names:
        raise ConfigError("objectives", f"study {cfg.study!r} optimises {stored}, not {names}; use another study_name")
    if study.metric_names != names:
        # optuna-dashboard and optuna.visualization label the objectives with these names.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(names)
    return study


def _proc_start(pid: int) -> Optional[str]:
    """Start time (clock ticks since boot) of a live process, None when there is none (or a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


#: This process as a trial's ``worker`` attribute: host, pid and start time (a reused pid is another process).
_WORKER = f"{socket.gethostname()}:{os.getpid()}:{_proc_start(os.getpid()) or 0}"


def _dead_local_worker(worker: Optional[str]) -> Optional[int]:
    """The pid of ``worker`` when it ran on this host and its process is gone, else None."""
    parts = (worker or "").rsplit(":", 2)
    if len(parts) != 3 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return None
    pid = int(parts[1])
    if pid == os.getpid():
        return None
    if os.path.isdir("/proc/self"):
        start = _proc_start(pid)
        return None if start is not None and parts[2] in ("0", start) else pid
    try:  # no /proc: a signal 0 tells whether the pid exists
        os.kill(pid, 0)
    except ProcessLookupError:
        return pid
    except PermissionError:
        pass
    return None


def _fail_running(storage: optuna.storages.BaseStorage, trial_id: int, error: str) -> bool:
    """Fail a RUNNING trial with ``error`` as its reason; False when it has finished already (another worker, or
    Optuna, got there first). Other storage errors propagate."""
    try:
        storage.set_trial_user_attr(trial_id, "error", error)
        return storage.set_trial_state_values(trial_id, TrialState.FAIL)
    except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError):
        return False


class _BudgetLock:
    """Serialises "count the study's trials, then start one" across processes sharing a storage."""

    def __init__(self, url: str, study_name: str) -> None:
        self.url = url
        self.key = int(hashlib.sha256(f"archsearch:{study_name}".encode()).hexdigest()[:15], 16)
        self._held: Optional[Callable[[], None]] = None

    def acquire(self) -> None:
        path = sqlite_file(self.url)
        if path is not None:
            lock = open(f"{path}.{self.key:x}.lock", "w")
            fcntl.flock(lock, fcntl.LOCK_EX)

            def release() -> None:
                fcntl.flock(lock, fcntl.LOCK_UN)
                lock.close()
        elif self.url.startswith("postgresql"):
            import sqlalchemy

            engine = sqlalchemy.create_engine(self.url, poolclass=sqlalchemy.pool.NullPool)
            conn = engine.connect()
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self.key})

            def release() -> None:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
                conn.close()
                engine.dispose()
        else:  # memory (also sqlite :memory:) and other databases: one process at a time is still exact
            def release() -> None:
                pass

        self._held = release

    def release(self) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            held()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self.acquire()
        try:
            yield
        finally:
            self.release()


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
    #: Multi-fidelity studies: trials stopped at each rung and the training saved (``_rungs.summary``).
    rungs: Optional[dict] = None

    @property
    def failed_only(self) -> bool:
        """This run ran trials and completed none (failed or pruned: an invalid sample is no result either):
        the command should not report success."""
        return sum(self.states_here.values()) > 0 and self.states_here.get("COMPLETE", 0) == 0


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
        self.references = [(load_spec(cfg.resolve(e.spec)), e.resolution or max(self.space.config.resolution)) for e in cfg.enqueue]
        seed = None if cfg.sampler.seed is None else cfg.sampler.seed + seed_offset
        self.study = open_study(cfg, self.url, seed=seed)
        self._check_space()  # before anything runs: a reopened study must be sampled from the same space
        self._check_conditions()  # ... and measured under the same conditions
        self.lock = _BudgetLock(self.url, cfg.study)
        self.tracker = Tracker(cfg.tracking, warn)
        self.parent_run_id: Optional[str] = None
        self._last_state: Optional[TrialState] = None
        #: The trial this process's objective is running, and whether an interrupt ended it (see _run).
        self._trial_id: Optional[int] = None
        self._interrupted = False
        #: Each failed trial's error as this process saw it (the storage may not have taken it).
        self._errors: Dict[int, str] = {}
        #: Trials this process ended, by state, and the last error among them (for the run's exit status).
        self.states_here: Dict[str, int] = {}
        self.last_error: Optional[str] = None

    # --- evaluation -----------------------------------------------------------------------------
    def _metric_names(self) -> List[str]:
        return [o.name for o in self.cfg.objectives] + [c.metric for c in self.cfg.constraints]

    def evaluate(self, spec: ArchSpec, resolution: int, trial: Optional[optuna.Trial] = None) -> Dict[str, float]:
        """Every objective and constraint metric of a candidate (measurements are cached)."""
        values, row = self.measurer.values(spec, resolution, self._metric_names())
        if trial is not None and "train" in row:
            trial.set_user_attr("train_history", row["train"]["history"])
        return values

    def _evaluate_in_rungs(self, trial: optuna.Trial, spec: ArchSpec, resolution: int) -> Dict[str, float]:
        """The cheap metrics, then training rung by rung while the trial stays in the top 1/eta of its rung
        (:func:`archsearch._rungs.promotes`); a trial stopped at a rung ends PRUNED with its rung values."""
        from ._rungs import promotes

        f = self.cfg.fidelity
        cheap_names = [n for n in self._metric_names() if n != f.metric]
        values, _ = self.measurer.values(spec, resolution, cheap_names) if cheap_names else ({}, {})
        names = [o.name for o in self.cfg.objectives]
        directions = [o.direction for o in self.cfg.objectives]
        field = "val_top1" if f.metric == "train_top1" else "loss_sum"
        rungs: Dict[str, list] = {}
        # The trial's checkpoint lives with the study (not in $TMPDIR) and goes when the trial ends, whatever
        # its state; one left by a killed worker is an orphan that the next run on this host removes.
        checkpoint = self._rung_dir() / f"trial{trial._trial_id}-{os.getpid()}.ckpt"
        try:
            for i, steps in enumerate(f.rungs):
                r = self.measurer.training_rung(spec, steps, f.rungs[-1], checkpoint, resolution)
                values[f.metric] = float(r[field])
                rungs[str(i)] = [values[n] for n in names]
                # Stored before deciding, so that the other workers rank against it at once.
                trial.set_user_attr("rungs", dict(rungs))
                trial.set_user_attr("rung_steps", list(f.rungs[: i + 1]))
                if i == len(f.rungs) - 1:
                    return values
                # A failed trial (a killed worker's) does not stand in the table: its retry, with the same
                # values, would otherwise lose the tie to it and nothing would reach the last rung.
                table = {t.number: t.user_attrs["rungs"][str(i)] for t in trial.study.get_trials(deepcopy=False)
                         if str(i) in t.user_attrs.get("rungs", {}) and t.state != TrialState.FAIL}
                table[trial.number] = rungs[str(i)]
                if not promotes(trial.number, table, directions, f.eta):
                    trial.set_user_attr("stopped_at_rung", i)
                    trial.set_user_attr("metrics", values)
                    raise optuna.TrialPruned(f"stopped at rung {i} ({steps} steps): not in the top 1/{f.eta} of "
                                             f"{len(table)} trials there")
        finally:
            for leftover in (checkpoint, *checkpoint.parent.glob(f"{checkpoint.name}.*.tmp")):
                leftover.unlink(missing_ok=True)
        raise AssertionError("unreachable")

    def _rung_dir(self) -> Path:
        """This study's rung checkpoints: under the cache directory, one folder per (storage, study)."""
        from .measure.cache import default_cache_dir

        key = hashlib.sha256(f"{mask_secrets(self.url)}\n{self.cfg.study}".encode()).hexdigest()[:16]
        path = default_cache_dir() / "rungs" / key
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _remove_orphan_checkpoints(self) -> None:
        """Checkpoints of trials whose process is gone (kill -9): nothing will resume from them."""
        for ckpt in self._rung_dir().glob("trial*-*.ckpt*"):
            pid = ckpt.name.split("-", 1)[1].split(".", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and not os.path.exists(f"/proc/{pid}"):
                ckpt.unlink(missing_ok=True)

    def _violations(self, values: Dict[str, float]) -> List[float]:
        out = []
        for c in self.cfg.constraints:
            v = values[c.metric]
            out.append(max(v - c.max if c.max is not None else float("-inf"), c.min - v if c.min is not None else float("-inf")))
        return out

    def objective(self, trial: optuna.Trial) -> List[float]:
        self._trial_id = trial._trial_id
        try:
            return self._objective(trial)
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (_interrupts.Terminated)
            self._interrupted = True
            raise

    def _objective(self, trial: optuna.Trial) -> List[float]:
        _interrupts.check()  # inside the objective: Optuna marks the trial and stops its heartbeat cleanly
        # First, so that a rerun on this host can tell at once that the trial's process is gone.
        trial.set_user_attr("worker", _WORKER)
        self.lock.release()  # the trial exists now: other workers may claim the next one
        try:
            cand = self.space.sample_candidate(trial)
        except InvalidSample as e:
            trial.set_user_attr("invalid_reason", e.reason)
            raise optuna.TrialPruned(e.reason) from None
        spec = cand.spec
        trial.set_user_attr("spec", spec.to_dict())
        trial.set_user_attr("spec_hash", spec.spec_hash)
        trial.set_user_attr("arch", spec.code)
        trial.set_user_attr("resolution", cand.resolution)
        trial.set_user_attr("output_stride", spec.output_stride)
        try:
            if self.cfg.fidelity is None:
                values = self.evaluate(spec, cand.resolution, trial)
            else:
                values = self._evaluate_in_rungs(trial, spec, cand.resolution)
        except optuna.TrialPruned:
            raise
        except Exception as e:
            error = f"{type(e).__name__}: {str(e).strip()[:500]}"
            self._errors[trial.number] = error  # kept here too: a full disk may refuse the attribute below
            trial.set_user_attr("error", error)
            raise
        trial.set_user_attr("metrics", values)
        for c, violation in zip(self.cfg.constraints, self._violations(values)):
            trial.set_constraint(f"{c.metric}", violation)
        return [values[o.name] for o in self.cfg.objectives]

    # --- study-level set-up, once per study -------------------------------------------------------
    def _space_identity(self) -> str:
        """What the study's trials were sampled from: the space after overrides (resolutions included)."""
        text = json.dumps(dataclasses.asdict(self.space.config), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def _uses_prediction(self) -> bool:
        from .metrics import metric_of

        return any(metric_of(n) in ("predicted_latency", "predicted_ttft") for n in self._metric_names())

    def _freeze_predictor(self) -> None:
        """One latency scale per study: the predictor is fitted (once per table) before the first trial, its
        identity stored on the study, and every process of the study prices its trials with it."""
        if not self._uses_prediction():
            return
        predictor = self.measurer.predictor
        stored = self.study.user_attrs.get("predictor")
        if stored is None:
            n = self.measurer.options.predictor_fit
            if not predictor.fit and n:
                from .space import draw

                found, _ = draw(self.space, n, seed=12345)
                start = time.perf_counter()
                _log.info(f"fitting the latency predictor on {len(found)} whole models of {self.space.name} "
                          f"before the first trial (once per table: {predictor.path.name})")
                timed = []

                def progress(_arch: str) -> None:
                    timed.append(time.perf_counter())
                    if len(timed) == 1 and len(found) > 1:
                        took = timed[0] - start
                        _log.info(f"predictor fit: model 1 of {len(found)} took {took:.0f} s; about "
                                  f"{took * (len(found) - 1):.0f} s to go")

                predictor.fit_scale([(c.spec, c.resolution) for c in found], progress=progress)
                _log.info(f"latency predictor fitted in {time.perf_counter() - start:.0f} s: scale {predictor.scale:.3g}, "
                          f"exponent {predictor.exponent:.3f}")
            stored = predictor.identity()
            self.study.set_user_attr("predictor", stored)
        else:
            _log.info(f"latency predictor: the study's frozen fit (table {stored.get('table')}, scale {stored.get('scale')})")
            mine = {"table": predictor.path.name, "statistic": predictor.statistic}
            if any(stored.get(k) != v for k, v in mine.items()):
                raise ConfigError("measure.latency", (
                    f"study {self.cfg.study!r} priced its trials with latency table {stored.get('table')} "
                    f"({stored.get('statistic')}); this run would use {mine['table']} ({mine['statistic']}): resume it "
                    "with the same device and latency options, or start a new study (another study_name) to recalibrate"))
        predictor.freeze(stored)

    def _check_space(self) -> None:
        attrs = self.study.user_attrs
        if attrs.get("space_hash", self._space_identity()) != self._space_identity():
            raise ConfigError("space", (
                f"study {self.cfg.study!r} was sampled from another search space (space {attrs.get('space')!r}, "
                f"resolutions {attrs.get('space_resolutions')}; now {self.space.name!r}, {list(self.space.config.resolution)}); "
                "its trials would not compare: use another study_name"))

    def _conditions(self) -> dict:
        """Everything that changes what a metric of this study means (not how precisely it is measured:
        repeats and warm-up may differ): the constraints, the rungs, and the options of each metric family used."""
        from .metrics import metric_of

        m = self.measurer.options
        families = {metric_of(n) for n in self._metric_names()}
        precision = ("warmup", "repeats", "time_budget_s", "max_cv", "noisy_retries")  # how precisely, not what
        lat = {k: v for k, v in dataclasses.asdict(m.latency).items() if k not in precision}
        place = ("data_root", "accelerator", "devices", "progress_bar")  # where it runs, not what it measures
        out: dict = {"constraints": [dataclasses.asdict(c) for c in self.cfg.constraints],
                     "fidelity": dataclasses.asdict(self.cfg.fidelity) if self.cfg.fidelity else None}
        if families & {"latency", "ttft", "predicted_latency", "predicted_ttft"}:
            out["measure.latency"] = lat
        if families & {"ttft", "predicted_ttft"}:
            out["measure.llm"], out["measure.prompt_tokens"] = m.llm, m.prompt_tokens
        if "macs" in families:
            out["measure.counter"] = m.counter
        if families & {"synflow", "naswot", "grad_norm", "snip"}:
            out["measure.proxy"] = {k: v for k, v in dataclasses.asdict(m.proxy).items() if k not in place}
        if families & {"train_top1", "train_loss_sum"}:
            out["measure.train"] = {k: v for k, v in dataclasses.asdict(m.train).items() if k not in place}
        return json.loads(json.dumps(out, default=str))

    def _check_conditions(self) -> None:
        stored = self.study.user_attrs.get("conditions")
        if stored is None:
            return
        mine = self._conditions()
        for key in sorted(set(stored) | set(mine)):
            old, new = stored.get(key), mine.get(key)
            if old == new:
                continue
            if isinstance(old, dict) and isinstance(new, dict):
                sub = next(k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k))
                key, old, new = f"{key}.{sub}", old.get(sub), new.get(sub)
            raise ConfigError(key, f"study {self.cfg.study!r} was measured with {old!r}, this run would use {new!r}: "
                                   "its trials would not compare on one front; resume with the same settings or use "
                                   "another study_name")

    def _prepare_study(self) -> None:
        attrs = self.study.user_attrs
        identity = self._space_identity()
        if "conditions" not in attrs:
            self.study.set_user_attr("conditions", self._conditions())
        if "objectives" not in attrs:
            self.study.set_user_attr("objectives", [o.name for o in self.cfg.objectives])
            self.study.set_user_attr("directions", [o.direction for o in self.cfg.objectives])
            self.study.set_user_attr("space", self.space.name)
            self.study.set_user_attr("space_hash", identity)
            self.study.set_user_attr("space_resolutions", list(self.space.config.resolution))
        else:
            self._check_space()
            done = len(self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
            _log.info(f"resuming study {self.cfg.study!r} in {mask_secrets(self.url)}: {done} trials finished before")
        self._freeze_predictor()
        if self.cfg.fidelity is not None:
            self._remove_orphan_checkpoints()
        if "references" not in attrs and self.references:
            refs = []
            for spec, res in self.references:
                try:
                    values = self.evaluate(spec, res)
                except Exception as e:  # noqa: BLE001 - a reference that cannot be measured must not stop the study
                    self.warn(f"reference {spec.name or spec.spec_hash} at {res} px not evaluated: {type(e).__name__}: {e}")
                    continue
                feasible = all(v <= 0 for v in self._violations(values))
                params = self.space.params_for(spec, res) if isinstance(spec, ArchSpec) else None
                if params is not None:
                    self.study.enqueue_trial(params, user_attrs={"reference": spec.name})
                refs.append({"name": spec.name or spec.spec_hash, "resolution": res, "spec_hash": spec.spec_hash,
                             "arch": spec.code, "values": [values[o.name] for o in self.cfg.objectives],
                             "metrics": values, "feasible": feasible, "in_space": params is not None})
            self.study.set_user_attr("references", refs)
        if "mlflow_parent_run_id" not in attrs and self.tracker.enabled:
            predictor = {f"predictor.{k}": str(v) for k, v in (self.study.user_attrs.get("predictor") or {}).items()}
            run_id = self.tracker.start_study(self.cfg.study, {
                "space": self.space.name, "objectives": ",".join(o.name for o in self.cfg.objectives),
                "sampler": self.cfg.sampler.name, "n_trials": str(self.cfg.n_trials), "storage": mask_secrets(self.url),
                **predictor,
            })
            if run_id:
                self.study.set_user_attr("mlflow_parent_run_id", run_id)
        self.parent_run_id = self.study.user_attrs.get("mlflow_parent_run_id")

    def _log_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self._last_state = trial.state  # this process's trial (with many workers the study's last may not be)
        self.states_here[trial.state.name] = self.states_here.get(trial.state.name, 0) + 1
        if trial.state == TrialState.FAIL:
            reason = (trial.user_attrs.get("error") or self._errors.pop(trial.number, None)
                      or "interrupted or failed outside the measurement")
            self.last_error = reason.splitlines()[0]
            self.warn(f"trial {trial.number} failed: {self.last_error}; the study goes on")
        metrics = dict(trial.user_attrs.get("metrics", {}))
        for i, vals in (trial.user_attrs.get("rungs") or {}).items():
            metrics.update({f"rung{i}.{o.name}": v for o, v in zip(self.cfg.objectives, vals)})
        if trial.values:
            metrics.update({f"objective.{o.name}": v for o, v in zip(self.cfg.objectives, trial.values)})
        spec = trial.user_attrs.get("spec")
        tags = {"spec_hash": trial.user_attrs.get("spec_hash", ""), "arch": trial.user_attrs.get("arch", ""),
                "device": self.measurer.options.latency.backend, "worker": trial.user_attrs.get("worker", "")}
        if "invalid_reason" in trial.user_attrs:
            tags["invalid_reason"] = trial.user_attrs["invalid_reason"][:500]
        params = {"resolution": trial.user_attrs.get("resolution"), "spec": spec, "sampled": trial.params}
        spec_yaml = ArchSpec.from_dict(spec).to_yaml() if spec else None
        self.tracker.log_trial(self.parent_run_id, study_name=self.cfg.study, number=trial.number, state=trial.state.name,
                               params=params, metrics=metrics, tags=tags, spec_yaml=spec_yaml)

    # --- the loop -------------------------------------------------------------------------------
    def counted_trials(self) -> int:
        # A dead worker's RUNNING trial must not hold a budget slot: fail it (and re-queue it) first. On this
        # host a worker's process is known gone at once; elsewhere its heartbeat stops (after grace_s).
        if not isinstance(self.study._storage, optuna.storages.InMemoryStorage):
            self._fail_trials_of_dead_local_workers()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(self.study)
        return len(self.study.get_trials(deepcopy=False, states=_COUNTED))

    def _fail_trials_of_dead_local_workers(self) -> None:
        storage = self.study._storage
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry = RetryHeartbeatStaleTrialCallback(max_retry=self.cfg.max_retry)
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            pid = _dead_local_worker(t.user_attrs.get("worker"))
            if pid is None:
                continue
            if not _fail_running(storage, t._trial_id, f"its worker (pid {pid} on this host) died"):
                continue  # another worker got there first
            self.warn(f"trial {t.number}: its worker (pid {pid}) is gone; the trial is failed and retried")
            retry(self.study, storage.get_trial(t._trial_id))

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
                if self.counted_trials() >= budget:
                    break
                trial_started = time.monotonic()
                try:
                    self.study.optimize(self.objective, n_trials=1, catch=(Exception,), callbacks=[self._log_trial],
                                        gc_after_trial=False, show_progress_bar=False)
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
            # Failed trials do not use the budget (they are retried), so a search whose every trial fails
            # (a broken measurement, a missing device) must stop on its own.
            failed_in_a_row = failed_in_a_row + 1 if self._last_state == TrialState.FAIL else 0
            if failed_in_a_row >= self.cfg.max_consecutive_failures:
                stopped = f"{failed_in_a_row} failed trials in a row (max_consecutive_failures)"
                break
            if on_trial:
                now = time.monotonic()
                on_trial(self._event(budget, now - trial_started, now - started))
        return SearchResult(self.study, ran, stopped, budget)

    def _event(self, budget: int, trial_s: float, elapsed_s: float) -> TrialEvent:
        """The trial this process just ended, and the study's state now (every worker's trials)."""
        t = self.study._storage.get_trial(self._trial_id)  # the Study API has no lookup by id
        trials = self.study.get_trials(deepcopy=False)
        states: Dict[str, int] = {}
        for x in trials:
            states[x.state.name] = states.get(x.state.name, 0) + 1
        attrs = t.user_attrs
        note = attrs.get("invalid_reason") or attrs.get("error") or ""
        if "stopped_at_rung" in attrs:
            note = f"stopped at rung {attrs['stopped_at_rung']} ({attrs['rung_steps'][-1]} steps)"
        elif attrs.get("rungs") and self.cfg.fidelity is not None and t.state == TrialState.COMPLETE:
            note = f"trained to the full budget ({self.cfg.fidelity.rungs[-1]} steps)"
        running = {x.number: len(x.user_attrs["rungs"]) - 1 for x in trials
                   if x.state == TrialState.RUNNING and x.user_attrs.get("rungs")}
        front = len(self.study.best_trials) if states.get("COMPLETE") else 0
        values = dict(zip([o.name for o in self.cfg.objectives], t.values)) if t.values else {}
        return TrialEvent(
            number=t.number, state=t.state.name, values=values, budget=budget, trial_s=trial_s, elapsed_s=elapsed_s,
            finished=min(budget, states.get("COMPLETE", 0) + states.get("PRUNED", 0)), states=states, front=front,
            arch=attrs.get("arch", ""), resolution=attrs.get("resolution"), note=str(note).splitlines()[0][:200] if note else "",
            running_rungs=running)

    def _fail_interrupted_trial(self) -> None:
        try:
            _fail_running(self.study._storage, self._trial_id, "interrupted (SIGINT or SIGTERM)")
        except Exception as e:  # the storage still refuses: a rerun fails and retries it (heartbeat, grace_s)
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
                    if not study.user_attrs.get("mlflow_parent_finished"):
                        self.tracker.log_study_artifacts(self.parent_run_id, out)
                        self.tracker.finish_study(self.parent_run_id)
                        study.set_user_attr("mlflow_parent_finished", True)
        if self.cfg.fidelity is not None:
            from ._rungs import summary

            result.rungs = summary(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)),
                                   self.cfg.fidelity.rungs)
            study.set_user_attr("rung_summary", result.rungs)
        result.complete = complete
        result.states_here = dict(self.states_here)
        result.last_error = self.last_error
        return result


def run_search(
    cfg: TrialsConfig,
    *,
    n_trials: Optional[int] = None,
    pareto_out: Optional[Path] = None,
    on_trial: Optional[Callable[[int, int], None]] = None,
    **runner_options,
) -> SearchResult:
    """Run (or resume) ``cfg``'s study in this process and finish what it starts: the Pareto front is
    exported (to ``pareto_out`` when given) and logged, and the study's MLflow parent run is FINISHED once
    its budget is complete (by whichever worker completes it). ``runner_options`` are :class:`SearchRunner`'s."""
    runner = SearchRunner(cfg, **runner_options)
    return runner.finish(runner.run(n_trials=n_trials, on_trial=on_trial), pareto_out=pareto_out)
