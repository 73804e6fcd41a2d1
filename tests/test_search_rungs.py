"""Multi-fidelity (rung) search end to end: trials stopped at rungs with their values kept, one training run
per trial, the zero-cost screen, PostgreSQL workers, SIGINT resume and kill -9 mid-rung."""
from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from archsearch.search import SearchRunner
from archsearch.trials import load_trials

from .conftest import NOT_YET, cli_env, cli_popen, default_sigint, experiment, study_states, wait_for

#: End to end (subprocesses, services, training): outside the fast subset (`pytest -m 'not slow'`).
pytestmark = pytest.mark.slow


RUNG_TRAIN = ("measure.train={data: digits, resolution: 32, max_depth: 1, width_mult: 1.0, batch_size: 16, "
              "train_size: 128, val_size: 64}")


def _rung_experiment(tmp_path: Path, n_trials: int = 8, storage: str | None = None) -> Path:
    return experiment(tmp_path, objectives="[{name: macs}, {name: train_top1}]", n_trials=n_trials, storage=storage,
                       extra="fidelity: {metric: train_top1, rungs: [2, 4, 8], eta: 2}")


def test_multi_fidelity_search_stops_trials_at_rungs(tmp_path):
    cfg = load_trials(_rung_experiment(tmp_path), [RUNG_TRAIN, "tracking.enabled=false"])
    runner = SearchRunner(cfg)
    result = runner.finish(runner.run(), pareto_out=tmp_path / "front")
    study = result.study
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    stopped = [t for t in study.get_trials(states=(TrialState.PRUNED,)) if "stopped_at_rung" in t.user_attrs]
    assert complete and stopped, "some trials reach the last rung, others stop early"
    for t in complete:
        assert sorted(t.user_attrs["rungs"]) == ["0", "1", "2"] and t.user_attrs["rung_steps"] == [2, 4, 8]
        assert t.values[1] == t.user_attrs["rungs"]["2"][1]
    for t in stopped:
        i = t.user_attrs["stopped_at_rung"]
        assert sorted(t.user_attrs["rungs"]) == [str(j) for j in range(i + 1)] and i < 2
    # The last quarter of the budget re-ran stopped trials of the provisional front to the full budget.
    finishers = [t for t in complete if "finishes" in t.user_attrs]
    assert finishers, "a stopped trial of the provisional front was trained to the full budget"
    for t in finishers:
        assert t.user_attrs["spec_hash"] == study.trials[t.user_attrs["finishes"]].user_attrs["spec_hash"]
    # Only full-budget trials can be on the front; the summary counts the saved training.
    from archsearch.pareto import pareto_rows

    assert {r.number for r in pareto_rows(study)} <= {t.number for t in complete}
    s = result.rungs
    assert s["full_budget"] == len(complete) and sum(s["stopped_at"].values()) == len(stopped)
    assert 0 < s["saved_fraction"] < 1 and study.user_attrs["rung_summary"] == s


def test_a_trial_promoted_across_rungs_builds_its_model_and_loads_its_data_once(tmp_path, monkeypatch):
    import archsearch.proxy._lightning as lightning_module
    import archsearch.proxy.train as train_module

    counts = {"build_model": 0, "load_data": 0}

    def counted(module, name):
        real = getattr(module, name)

        def wrapper(*args, **kwargs):
            counts[name] += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)

    counted(lightning_module, "build_model")  # where the proxy's model is built
    counted(train_module, "load_data")
    monkeypatch.setenv("ARCHSEARCH_CACHE_DIR", str(tmp_path / "cache"))  # a fresh cache: every trial trains
    cfg = load_trials(_rung_experiment(tmp_path, n_trials=3), [RUNG_TRAIN, "tracking.enabled=false", "enqueue=[]",
                                                              "fidelity.finish_share=0"])
    runner = SearchRunner(cfg)
    study = runner.finish(runner.run()).study
    trained = [t for t in study.trials if t.user_attrs.get("rungs")]
    full = [t for t in trained if t.state == TrialState.COMPLETE and len(t.user_attrs["rungs"]) == 3]
    assert full, "the first trial at each rung always goes on: one trial passed two rungs to the last"
    # One model and one data set per trained trial, however many rungs it passed (no rung restarts anything).
    assert counts == {"build_model": len(trained), "load_data": len(trained)}


def test_multi_fidelity_workers_on_postgresql_and_sigint_resume(tmp_path, postgres_dbs):
    optuna_url, _ = postgres_dbs
    path = _rung_experiment(tmp_path, n_trials=10, storage=optuna_url)  # more than one worker does before the signal
    args = [str(path), RUNG_TRAIN, "tracking.enabled=false"]
    # One worker is interrupted after its first finished trial; the rung values it stored stay.
    first = cli_popen(["worker", *args], tmp_path)
    wait_for(lambda: any(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in study_states(optuna_url).values()), 300,
              "a finished trial")
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 130, err
    kept = {t.number: t.user_attrs["rungs"] for t in optuna.load_study(study_name="t", storage=optuna_url).trials
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and "rungs" in t.user_attrs}
    assert kept
    # Two workers finish the study together: each trial decided once, the budget exact.
    workers = [cli_popen(["worker", *args], tmp_path) for _ in range(2)]
    for w in workers:
        _, err = w.communicate(timeout=900)
        assert w.returncode == 0, err
    study = optuna.load_study(study_name="t", storage=optuna_url)
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(finished) == 10 and not study.get_trials(states=(TrialState.RUNNING,))
    assert {n: study.trials[n].user_attrs["rungs"] for n in kept} == kept
    for t in finished:
        if "rungs" not in t.user_attrs:  # an invalid sample, pruned before measuring
            continue
        full = len(t.user_attrs["rungs"]) == 3
        assert full == (t.state == TrialState.COMPLETE) == ("stopped_at_rung" not in t.user_attrs)


def test_kill_9_mid_rung_then_rerun_ends_with_full_budget_trials_and_no_checkpoint(tmp_path):
    # The killed trial's rung-0 values must not block its retry, and its checkpoint must not outlive it.
    path = experiment(tmp_path, objectives="[{name: macs}, {name: train_top1}]", n_trials=3,
                       extra="fidelity: {metric: train_top1, rungs: [2, 60], eta: 2}")
    url = f"sqlite:///{tmp_path}/study.db"
    env_tmp = tmp_path / "tmp"
    env_tmp.mkdir()
    args = ["search", str(path), RUNG_TRAIN, "tracking.enabled=false", "enqueue=[]", "grace_s=600"]
    victim = subprocess.Popen([sys.executable, "-m", "archsearch.cli", *args], cwd=tmp_path,
                              env={**cli_env(tmp_path), "TMPDIR": str(env_tmp)}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    rung_dir = tmp_path / "cache" / "rungs"

    def in_rung_1() -> bool:  # past rung 0, its checkpoint written, training on to rung 1
        try:
            study = optuna.load_study(study_name="t", storage=url)
        except NOT_YET:
            return False
        running = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if t.user_attrs.get("rungs")]
        return bool(running) and any(rung_dir.rglob("*.ckpt"))

    wait_for(in_rung_1, 300, "a trial training its second rung")
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=60)
    assert list(rung_dir.rglob("*.ckpt")), "the checkpoint lives under the study's cache, not in $TMPDIR"
    rerun = subprocess.run([sys.executable, "-m", "archsearch.cli", *args], cwd=tmp_path,
                           env={**cli_env(tmp_path), "TMPDIR": str(env_tmp)}, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr
    study = optuna.load_study(study_name="t", storage=url)
    from archsearch.pareto import pareto_rows

    front = pareto_rows(study)
    complete = {t.number for t in study.get_trials(states=(TrialState.COMPLETE,))}
    assert front and {r.number for r in front} <= complete, "a non-empty front of full-budget trials"
    assert not list((tmp_path / "cache").rglob("*.ckpt*")) and not list(env_tmp.rglob("*.ckpt*")), "no checkpoint left"


def test_a_zero_cost_screen_stops_trials_before_any_training(tmp_path, monkeypatch):
    import archsearch.proxy._lightning as lightning_module

    built = []
    real = lightning_module.build_model
    monkeypatch.setattr(lightning_module, "build_model", lambda *a, **k: built.append(1) or real(*a, **k))
    monkeypatch.setenv("ARCHSEARCH_CACHE_DIR", str(tmp_path / "cache"))  # a fresh cache: every trial trains
    path = experiment(tmp_path, objectives="[{name: macs}, {name: train_top1}]", n_trials=6,
                      extra="fidelity: {metric: train_top1, rungs: [4], eta: 2, screen: naswot, finish_share: 0}")
    cfg = load_trials(path, [RUNG_TRAIN, "tracking.enabled=false", "enqueue=[]",
                             "measure.proxy={data: digits, resolution: 32, max_depth: 1, width_mult: 1.0, batch_size: 16}"])
    runner = SearchRunner(cfg)
    result = runner.finish(runner.run())
    trials = [t for t in result.study.trials if t.user_attrs.get("rungs")]
    screened = [t for t in trials if t.user_attrs.get("stopped_at_rung") == 0]
    trained = [t for t in trials if t.state == TrialState.COMPLETE]
    assert screened and trained and len(screened) + len(trained) == len(trials)
    for t in screened:  # stopped by its naswot score, in the accuracy's place, with no training run
        assert t.state == TrialState.PRUNED and t.user_attrs["rung_steps"] == [0]
        assert t.user_attrs["rungs"]["0"][1] == t.user_attrs["metrics"]["naswot"]
        assert "train_top1" not in t.user_attrs["metrics"]
    for t in trained:
        assert t.user_attrs["rung_steps"] == [0, 4] and t.values[1] == t.user_attrs["rungs"]["1"][1]
    assert len(built) == len(trained), "a screened trial builds no training model"
    s = result.rungs
    assert s["rungs"] == [0, 4] and s["stopped_at"] == {"0": len(screened)} and s["full_budget"] == len(trained)
    assert s["steps_trained"] == 4 * len(trained)
