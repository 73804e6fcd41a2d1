"""A study's identity: what makes its trials comparable, recorded when it is created and checked whenever it
is reopened, before any trial runs.

* :func:`open_study`: create or load the Optuna study with its directions, objective names and a sampler
  whose seed moves on with the study (a resumed run never replays the specs an earlier one drew).
* :func:`check_space` / :func:`check_conditions`: a reopened study must be sampled from the same space and
  measured under the same conditions (every option that changes what a used metric means).
* :func:`freeze_predictor`: one latency scale per study, fitted before its first trial and frozen on it.
* :func:`record_identity`: what the first run stores (objectives, space, conditions).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import optuna
from optuna.trial import TrialState

from . import _scoped
from ._storage import open_storage, quiet_experimental
from .errors import ConfigError, mask_secrets
from .space import SearchSpace
from .trials import SAMPLER_NAMES, TrialsConfig

__all__ = ["check_conditions", "check_space", "conditions", "freeze_predictor", "open_study", "record_identity",
           "record_measurements",
           "space_identity"]

_log = logging.getLogger("archsearch")

#: Study attribute keys (the study's identity as stored on it).
ATTR_OBJECTIVES, ATTR_DIRECTIONS, ATTR_CONDITIONS, ATTR_PREDICTOR = "objectives", "directions", "conditions", "predictor"
ATTR_SPACE, ATTR_SPACE_HASH, ATTR_SPACE_RESOLUTIONS = "space", "space_hash", "space_resolutions"


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
    assert tuple(samplers) == SAMPLER_NAMES
    with quiet_experimental():
        return samplers[s.name]()


def open_study(cfg: TrialsConfig, url: str, *, seed: Optional[int] = None) -> optuna.Study:
    """Create or load ``cfg``'s study in ``url``; a study with other directions or objectives is refused."""
    with _scoped.optuna_verbosity(optuna.logging.ERROR):
        storage = open_storage(url, heartbeat_s=cfg.heartbeat_s, grace_s=cfg.grace_s, max_retry=cfg.max_retry)
        directions: List[Any] = [o.direction for o in cfg.objectives]  # "minimize" / "maximize", as stored
        try:
            study = optuna.create_study(study_name=cfg.study, storage=storage, directions=directions,
                                        sampler=_sampler(cfg, seed), load_if_exists=True)
        except Exception as e:  # noqa: BLE001
            raise ConfigError("storage",
                              mask_secrets(f"cannot open study {cfg.study!r} in {url}: {str(e).splitlines()[0][:200]}")) from None
        have = [d.name.lower() for d in study.directions]
        if have != directions:
            raise ConfigError("objectives", mask_secrets(f"study {cfg.study!r} already exists in {url} with directions "
                                                         f"{have}, not {directions}; use another study_name"))
        done = len(study.get_trials(deepcopy=False))
        if done and seed is not None:
            # A resumed study must not replay its seeded sampler (2, then 5, then 8 trials gave 3 distinct specs):
            # the seed moves on with the study, so each process draws what the earlier ones did not.
            study = optuna.load_study(study_name=cfg.study, storage=storage, sampler=_sampler(cfg, seed + done))
        names = [o.name for o in cfg.objectives]
        stored = study.user_attrs.get(ATTR_OBJECTIVES)
        if stored is not None and stored != names:
            raise ConfigError("objectives", f"study {cfg.study!r} optimises {stored}, not {names}; use another study_name")
        if study.metric_names != names:
            # optuna-dashboard and optuna.visualization label the objectives with these names.
            with quiet_experimental():
                study.set_metric_names(names)
        return study


def space_identity(space: SearchSpace) -> str:
    """What the study's trials were sampled from: the space after overrides (resolutions included)."""
    text = json.dumps(dataclasses.asdict(space.config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_space(study: optuna.Study, cfg: TrialsConfig, space: SearchSpace) -> None:
    attrs = study.user_attrs
    if attrs.get(ATTR_SPACE_HASH, space_identity(space)) != space_identity(space):
        raise ConfigError("space", (
            f"study {cfg.study!r} was sampled from another search space (space {attrs.get(ATTR_SPACE)!r}, "
            f"resolutions {attrs.get(ATTR_SPACE_RESOLUTIONS)}; now {space.name!r}, {list(space.config.resolution)}); "
            "its trials would not compare: use another study_name"))


def conditions(cfg: TrialsConfig, metric_names: Sequence[str]) -> dict:
    """Everything that changes what a metric of this study means (not how precisely it is measured:
    repeats and warm-up may differ): the constraints, the rungs, and the options of each metric family used."""
    from .metrics import metric_of

    m = cfg.measure
    families = {metric_of(n) for n in metric_names}
    precision = ("warmup", "repeats", "time_budget_s", "max_cv", "noisy_retries")  # how precisely, not what
    lat = {k: v for k, v in dataclasses.asdict(m.latency).items() if k not in precision}
    place = ("data_root", "accelerator", "devices", "progress_bar", "data_workers")  # where it runs, not what it measures
    out: dict = {"constraints": [dataclasses.asdict(c) for c in cfg.constraints],
                 "fidelity": dataclasses.asdict(cfg.fidelity) if cfg.fidelity else None,
                 # Another sampler, seed or population draws another sequence of trials: two searches mixed in one
                 # study would look like one. It is a new study (a new study_name); n_trials may grow on resume.
                 "sampler": dataclasses.asdict(cfg.sampler)}
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


def check_conditions(study: optuna.Study, cfg: TrialsConfig, mine: dict) -> None:
    """Refuse, naming the first key that differs, a reopened study whose conditions are not ``mine``."""
    stored = study.user_attrs.get(ATTR_CONDITIONS)
    if stored is None:
        return
    for key in sorted(set(stored) | set(mine)):
        old, new = stored.get(key), mine.get(key)
        if old == new or (key == "sampler" and key not in stored):  # stored before the sampler was part of a study
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            sub = next(k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k))
            key, old, new = f"{key}.{sub}", old.get(sub), new.get(sub)
        raise ConfigError(key, f"study {cfg.study!r} was measured with {old!r}, this run would use {new!r}: "
                               "its trials would not compare on one front; resume with the same settings or use "
                               "another study_name")


def record_identity(study: optuna.Study, cfg: TrialsConfig, space: SearchSpace, mine: dict, url: str) -> None:
    """Store the identity on a new study; on a reopened one, check the space again (another process may have
    created the study meanwhile) and say it is resumed."""
    attrs = study.user_attrs
    if ATTR_CONDITIONS not in attrs:
        study.set_user_attr(ATTR_CONDITIONS, mine)
    if ATTR_OBJECTIVES not in attrs:
        study.set_user_attr(ATTR_OBJECTIVES, [o.name for o in cfg.objectives])
        study.set_user_attr(ATTR_DIRECTIONS, [o.direction for o in cfg.objectives])
        study.set_user_attr(ATTR_SPACE, space.name)
        study.set_user_attr(ATTR_SPACE_HASH, space_identity(space))
        study.set_user_attr(ATTR_SPACE_RESOLUTIONS, list(space.config.resolution))
    else:
        check_space(study, cfg, space)
        done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
        _log.info(f"resuming study {cfg.study!r} in {mask_secrets(url)}: {done} trials finished before")


def freeze_predictor(study: optuna.Study, cfg: TrialsConfig, space: SearchSpace, measurer, metric_names: Sequence[str]) -> None:
    """One latency scale per study: the predictor is fitted (once per table) before the first trial, its
    identity stored on the study, and every process of the study prices its trials with it."""
    from .metrics import metric_of

    if not any(metric_of(n) in ("predicted_latency", "predicted_ttft") for n in metric_names):
        return
    predictor = measurer.predictor
    stored = study.user_attrs.get(ATTR_PREDICTOR)
    if stored is None:
        n = measurer.options.predictor_fit
        if not predictor.fit and n:
            _fit_predictor(predictor, space, n)
        stored = predictor.identity()
        study.set_user_attr(ATTR_PREDICTOR, stored)
    else:
        _log.info(f"latency predictor: the study's frozen fit (table {stored.get('table')}, scale {stored.get('scale')})")
        mine = {"table": predictor.path.name, "statistic": predictor.statistic}
        if any(stored.get(k) != v for k, v in mine.items()):
            raise ConfigError("measure.latency", (
                f"study {cfg.study!r} priced its trials with latency table {stored.get('table')} "
                f"({stored.get('statistic')}); this run would use {mine['table']} ({mine['statistic']}): resume it "
                "with the same device and latency options, or start a new study (another study_name) to recalibrate"))
    predictor.freeze(stored)


def _fit_predictor(predictor, space: SearchSpace, n: int) -> None:
    from .space import draw

    found, _ = draw(space, n, seed=12345)
    start = time.perf_counter()
    _log.info(f"fitting the latency predictor on {len(found)} whole models of {space.name} "
              f"before the first trial (once per table: {predictor.path.name})")
    timed = []

    def progress(_arch: str) -> None:
        timed.append(time.perf_counter())
        if len(timed) == 1 and len(found) > 1:
            took = timed[0] - start
            _log.info(f"predictor fit: model 1 of {len(found)} took {took:.0f} s; about {took * (len(found) - 1):.0f} s to go")

    predictor.fit_scale([(c.spec, c.resolution) for c in found], progress=progress)
    _log.info(f"latency predictor fitted in {time.perf_counter() - start:.0f} s: scale {predictor.scale:.3g}, "
              f"exponent {predictor.exponent:.3f}")


#: Trial attribute: where and how its measured latency was timed (backend, device fingerprint, spread).
ATTR_LATENCY = "latency"
_LATENCY_KEPT = ("backend", "device_fingerprint", "threads", "repeats", "cv", "noisy", "url")


def record_measurements(trial: optuna.Trial, row: Dict[str, Any]) -> None:
    """What a trial keeps beside its values: its training history, and its latency's device and spread
    (a remote device's fingerprint, so that a study says which device priced each trial)."""
    if "train" in row:
        trial.set_user_attr("train_history", row["train"]["history"])
    latency = row.get("latency") or (row.get("ttft") or {}).get("encoder")
    if isinstance(latency, dict):
        kept = {k: latency[k] for k in _LATENCY_KEPT if k in latency}
        kept["device"] = (latency.get("device") or {}).get("name")
        trial.set_user_attr(ATTR_LATENCY, kept)
