"""Search end to end: studies, budget, resume after SIGINT, heartbeat retry after SIGKILL, PostgreSQL workers,
MLflow runs, Pareto export. Tiny spaces and cheap objectives keep each test to seconds."""
from __future__ import annotations

import contextlib
import signal
import socket
import time
from pathlib import Path

import optuna
import pytest
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from archsearch.errors import ConfigError
from archsearch.pareto import dominates, export_pareto, is_fastvithd_like
from archsearch.references import get_reference
from archsearch.search import SearchRunner
from archsearch.trials import load_trials

from .conftest import NOT_YET, ROOT, cli_popen, experiment, run_cli, study_states, wait_for

#: End to end (subprocesses, services, training): outside the fast subset (`pytest -m 'not slow'`).
pytestmark = pytest.mark.slow

def _mlflow_trial_numbers(uri: str, experiment: str = "t") -> list[int]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return sorted(int(r.data.tags["optuna.trial_number"]) for r in runs if "optuna.trial_number" in r.data.tags)


def test_shipped_experiments_load():
    from archsearch._config import read_yaml

    for path in (ROOT / "trials").glob("*.yaml"):
        if "variants" in read_yaml(path):  # an ablation file (tests/test_ablation.py loads those)
            continue
        cfg = load_trials(path)
        runner_space = cfg.resolve(cfg.space)
        assert Path(runner_space).exists(), path


def test_search_in_process(tmp_path):
    cfg = load_trials(experiment(tmp_path, mlflow=True))
    warnings = []
    runner = SearchRunner(cfg, warn=warnings.append)
    result = runner.run()
    study = result.study
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(finished) == 8 and result.stopped == "budget" and not warnings
    # The reference is a point of the space: enqueued and evaluated as trial 0.
    assert study.trials[0].user_attrs.get("reference") == "ref"
    refs = study.user_attrs["references"]
    assert refs[0]["in_space"] and refs[0]["feasible"]
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        assert set(t.user_attrs["metrics"]) == {"macs", "naswot", "tokens"}
        assert t.user_attrs["spec_hash"] and t.user_attrs["resolution"] in (32, 64)
    for t in study.get_trials(states=(TrialState.PRUNED,)):
        assert t.user_attrs["invalid_reason"]
    assert _mlflow_trial_numbers(cfg.tracking.uri) == sorted(t.number for t in finished)
    # Running again is a resume: the budget is the study's, so nothing more runs.
    assert SearchRunner(cfg).run().ran == 0
    out = tmp_path / "front"
    rows = export_pareto(study, out)
    assert rows and (out / "pareto.csv").exists() and (out / "pareto.md").exists() and (out / "pareto.png").exists()
    assert len(list(out.glob("pareto_trial*.yaml"))) == len(rows)


def _parent_runs(uri: str, experiment: str = "t") -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return [r for r in runs if r.data.tags.get("mlflow.runName", "").startswith("study:")]


def test_run_search_finishes_what_it_starts(tmp_path):
    from archsearch.search import run_search

    cfg = load_trials(experiment(tmp_path, n_trials=6, mlflow=True))
    result = run_search(cfg, pareto_out=tmp_path / "front")
    assert result.complete and result.pareto and (tmp_path / "front" / "pareto.csv").exists()
    # The dashboard and optuna.visualization name the objectives.
    assert result.study.metric_names == ["macs", "naswot"]
    parents = _parent_runs(cfg.tracking.uri)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    import mlflow

    assert mlflow.active_run() is None
    client_runs = [r.info.status for r in __import__("mlflow").tracking.MlflowClient(cfg.tracking.uri).search_runs(
        [parents[0].info.experiment_id])]
    assert "RUNNING" not in client_runs


def test_failing_trial_does_not_stop_the_study(tmp_path, monkeypatch):
    cfg = load_trials(experiment(tmp_path, n_trials=5))
    runner = SearchRunner(cfg)
    calls = {"n": 0}
    original = runner.evaluator.values

    def flaky(spec, resolution, trial=None):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated measurement crash")
        return original(spec, resolution, trial)

    monkeypatch.setattr(runner.evaluator, "values", flaky)
    study = runner.run().study
    assert len(study.get_trials(states=(TrialState.FAIL,))) == 1
    assert len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == 5


def test_a_search_whose_trials_all_fail_stops(tmp_path, monkeypatch):
    cfg = load_trials(experiment(tmp_path, n_trials=50), ["max_consecutive_failures=3", "tracking.enabled=false"])
    warnings = []
    runner = SearchRunner(cfg, warn=warnings.append)

    def broken(spec, resolution, trial=None):
        raise RuntimeError("no such device")

    monkeypatch.setattr(runner.evaluator, "values", broken)
    result = runner.run()
    assert "3 failed trials in a row" in result.stopped
    assert len(result.study.get_trials(states=(TrialState.FAIL,))) == 3
    assert warnings and "no such device" in warnings[-1]


def test_unreachable_tracking_warns_once(tmp_path):
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = load_trials(experiment(tmp_path, n_trials=3, tracking=f"http://127.0.0.1:{port}"))
    warnings = []
    study = SearchRunner(cfg, warn=warnings.append).run().study
    assert len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == 3
    assert len(warnings) == 1 and "continuing without tracking" in warnings[0]


def test_bad_experiment_files(tmp_path):
    path = experiment(tmp_path)
    text = path.read_text()
    cases = [
        (text.replace("name: macs", "name: beauty"), "objectives[0].name: 'beauty' is not one of"),
        (text.replace("direction: minimize", "direction: down"), "objectives[0].direction: 'down'"),
        (text.replace("name: nsga2", "name: annealing"), "sampler.name: 'annealing'"),
        (text.replace("n_trials: 8", "n_trials: 0"), "n_trials: must be within 1.."),
        (text + "budget: 3\n", "budget: unknown key"),
        (text.replace("metric: tokens, max: 64", "metric: tokens"), "constraints[0].max: give 'max', 'min'"),
        (text.replace("space: space.yaml", "space: nowhere.yaml"), "nowhere.yaml: no such file"),
    ]
    for body, expected in cases:
        path.write_text(body)
        with pytest.raises(ConfigError) as info:
            SearchRunner(load_trials(path))
        assert expected in str(info.value), body
        assert "\n" not in str(info.value)


def test_directions_of_an_existing_study_are_checked(tmp_path):
    cfg = load_trials(experiment(tmp_path, n_trials=2))
    SearchRunner(cfg).run()
    flipped = load_trials(tmp_path / "trials.yaml", ["objectives.0.direction=maximize"])
    with pytest.raises(ConfigError, match="already exists"):
        SearchRunner(flipped)


SLOW = "[{name: latency_ms, direction: minimize}, {name: macs, direction: minimize}]"


def test_sigint_then_resume(tmp_path):
    path = experiment(tmp_path, objectives=SLOW, n_trials=6, extra="")
    url = f"sqlite:///{tmp_path}/study.db"
    # Seconds a trial, so that the signal lands mid-study; one attempt each (a busy host's noisy re-measure
    # would triple them).
    slow = ["measure.latency.repeats=3000", "measure.latency.noisy_retries=0"]
    proc = cli_popen(["search", str(path), *slow], tmp_path)
    wait_for(lambda: sum(s == TrialState.COMPLETE for s in study_states(url).values()) >= 1, 240, "a complete trial")
    proc.send_signal(signal.SIGINT)
    asked = time.monotonic()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert time.monotonic() - asked < 30, "an interrupt stops a measurement within seconds"
    assert "interrupted" in err and "Traceback" not in err
    before = optuna.load_study(study_name="t", storage=url)
    kept = {t.number: t.values for t in before.get_trials(states=(TrialState.COMPLETE,))}
    assert 1 <= len(kept) < 6
    # The rest at 3 repeats: how precisely latency is timed is no condition of the study (its values are).
    proc = cli_popen(["search", str(path), "measure.latency.repeats=3"], tmp_path)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    after = optuna.load_study(study_name="t", storage=url)
    assert len(after.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == 6
    assert {n: v for n, v in ((t.number, t.values) for t in after.trials) if n in kept} == kept


def _heartbeat_age_s(db: Path):
    """Seconds since the newest trial heartbeat Optuna's RDB storage holds (None before the first), by the database's
    own clock (SQLite's CURRENT_TIMESTAMP is UTC)."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(db, timeout=10)) as con:
        row = con.execute("SELECT (julianday('now') - julianday(MAX(heartbeat))) * 86400 FROM trial_heartbeats").fetchone()
    return None if row is None or row[0] is None else float(row[0])


def test_sigkill_worker_trial_is_failed_by_heartbeat_and_retried(tmp_path):
    path = experiment(tmp_path, objectives=SLOW, n_trials=3)
    url = f"sqlite:///{tmp_path}/study.db"
    victim = cli_popen(["worker", str(path), "measure.latency.repeats=3000", "measure.latency.noisy_retries=0"], tmp_path)
    wait_for(lambda: any(s == TrialState.RUNNING for s in study_states(url).values()), 240, "a running trial")
    wait_for(lambda: _heartbeat_age_s(tmp_path / "study.db") is not None, 60, "the running trial's heartbeat")
    running = [n for n, s in study_states(url).items() if s == TrialState.RUNNING]
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=60)
    # grace_s is 3: the trial is stale once its last heartbeat is older than that (read from the storage).
    wait_for(lambda: _heartbeat_age_s(tmp_path / "study.db") > 3.2, 60, "the killed trial's heartbeat to go stale")
    rescuer = cli_popen(["worker", str(path)], tmp_path)
    out, err = rescuer.communicate(timeout=600)
    assert rescuer.returncode == 0, err
    study = optuna.load_study(study_name="t", storage=url)
    killed = study.trials[running[0]]
    assert killed.state == TrialState.FAIL
    retries = [t for t in study.trials if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == killed.number]
    assert retries and retries[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert retries[0].params == killed.params
    assert len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == 3


def test_three_workers_on_postgresql(tmp_path, postgres_dbs):
    optuna_url, mlflow_url = postgres_dbs
    path = experiment(tmp_path, n_trials=30, storage=optuna_url, tracking=mlflow_url)
    # Create the study and the MLflow tables once, so the three workers race only for trials.
    SearchRunner(load_trials(path)).run(n_trials=1)
    workers = [cli_popen(["worker", str(path)], tmp_path) for _ in range(3)]
    for w in workers:
        out, err = w.communicate(timeout=900)
        assert w.returncode == 0, err
    study = optuna.load_study(study_name="t", storage=optuna_url)
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    numbers = [t.number for t in study.trials]
    assert len(finished) == 30
    assert len(numbers) == len(set(numbers)) and not study.get_trials(states=(TrialState.RUNNING, TrialState.FAIL))
    assert len({t.user_attrs.get("worker") for t in finished if "worker" in t.user_attrs}) >= 2, "the work was shared"
    assert _mlflow_trial_numbers(mlflow_url) == sorted(t.number for t in finished)
    # Whichever worker completed the budget closed the study's parent run.
    parents = _parent_runs(mlflow_url)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert study.metric_names == ["macs", "naswot"]


def test_pareto_helpers():
    assert dominates([1, 5], [2, 5], ["minimize", "maximize"])
    assert not dominates([1, 5], [1, 5], ["minimize", "minimize"])
    assert not dominates([1, 4], [2, 5], ["minimize", "maximize"])
    assert is_fastvithd_like(get_reference("fastvithd").spec)
    assert not is_fastvithd_like(get_reference("fastvit_sa12").spec)
    no_attention = get_reference("fastvithd").spec
    no_attention = no_attention.replace(stages=tuple(s.__class__(**{**s.__dict__,
                                                                    "token_mixer": "repmixer"}) for s in no_attention.stages))
    assert not is_fastvithd_like(no_attention)


def test_paretocli_popen(tmp_path, capsys):
    from archsearch.cli import main

    cfg = load_trials(experiment(tmp_path, n_trials=4))
    SearchRunner(cfg).run()
    assert main(["pareto", "t", "--storage", cfg.storage, "--out", str(tmp_path / "p")]) == 0
    assert (tmp_path / "p" / "pareto.csv").read_text().startswith("trial,arch,resolution,output_stride,spec_hash,macs,naswot")
    assert main(["pareto", "nope", "--storage", cfg.storage, "--out", str(tmp_path / "p")]) == 2
    assert "no study 'nope'" in capsys.readouterr().err


def test_train_proxy_objective(tmp_path):
    cfg = load_trials(experiment(tmp_path,
                                 objectives="[{name: train_top1, direction: maximize}, {name: macs, direction: minimize}]",
                                  n_trials=2), ["measure.train.steps=4", "measure.train.resolution=32",
                                                "measure.train.data=digits", "measure.train.train_size=64",
                                                "measure.train.val_size=32", "measure.train.batch_size=16",
                                                "tracking.enabled=false"])
    study = SearchRunner(cfg).run().study
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert done and all(0.0 <= t.values[0] <= 1.0 for t in done)
    assert all("train_top1" in t.user_attrs["metrics"] for t in done)


def test_a_run_that_only_failed_exits_non_zero(tmp_path):
    # Every trial fails (no CUDA device here): the command says why in one line and exits 1, not 0.
    path = experiment(tmp_path, objectives="[{name: latency_ms}]", n_trials=4)
    proc = cli_popen(["search", str(path), "measure.latency.backend=cuda", "tracking.enabled=false",
                      "max_consecutive_failures=2"],
                tmp_path)
    out, err = proc.communicate(timeout=300)
    if proc.returncode == 0 and "cuda" not in err:
        pytest.skip("this machine has a CUDA device: the trials do not fail")
    assert proc.returncode == 1, (out, err)
    line = [l for l in err.splitlines() if "error:" in l]
    assert len(line) == 1 and "no trial completed in this run (2 fail)" in line[0]
    assert "CUDA" in line[0] or "NVIDIA" in line[0]
    assert "Traceback" not in err


def test_kill_9_then_immediate_rerun_completes_the_budget(tmp_path):
    # The dead worker ran on this host: its trial is failed and retried at once, not after grace_s (600 s).
    path = experiment(tmp_path, objectives=SLOW, n_trials=3, extra="")
    url = f"sqlite:///{tmp_path}/study.db"
    # Seconds of timing per trial, so that the kill lands inside a measurement (not between two trials); no
    # reference (it would be timed before any trial, and its enqueued trial is then served from the cache).
    victim = cli_popen(["search", str(path), "measure.latency.repeats=30000", "measure.latency.noisy_retries=0", "grace_s=600",
                        "tracking.enabled=false",
                   "enqueue=[]"], tmp_path)

    def measuring() -> list:  # a trial killed before it names its worker waits for grace_s (documented)
        try:
            study = optuna.load_study(study_name="t", storage=url)
        except NOT_YET:
            return []
        return [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                if "worker" in t.user_attrs and "spec" in t.user_attrs]

    wait_for(measuring, 240, "a running trial that names its worker and is being measured")
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=60)
    assert measuring(), study_states(url)
    rerun = cli_popen(["search", str(path), "grace_s=600", "tracking.enabled=false", "enqueue=[]"], tmp_path)
    out, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err
    assert "is gone; the trial is failed and retried" in err and "Traceback" not in err
    study = optuna.load_study(study_name="t", storage=url)
    assert len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == 3
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    killed = study.get_trials(states=(TrialState.FAIL,))
    assert len(killed) == 1 and "died" in killed[0].user_attrs["error"]


def test_sigterm_is_handled_like_sigint(tmp_path):
    path = experiment(tmp_path, objectives=SLOW, n_trials=3)
    url = f"sqlite:///{tmp_path}/study.db"
    proc = cli_popen(["search", str(path), "measure.latency.repeats=3000", "measure.latency.noisy_retries=0",
                      "tracking.enabled=false"], tmp_path)
    wait_for(lambda: any(s == TrialState.RUNNING for s in study_states(url).values()), 240, "a running trial")
    proc.send_signal(signal.SIGTERM)
    asked = time.monotonic()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert time.monotonic() - asked < 30, "an interrupt stops a measurement within seconds"
    assert "terminated" in err and "Traceback" not in err
    assert not [n for n, s in study_states(url).items() if s == TrialState.RUNNING], "the trial was marked"


def test_a_study_reopened_with_another_space_is_refused(tmp_path):
    path = experiment(tmp_path, objectives="[{name: params}, {name: macs}]", n_trials=2)
    url = f"sqlite:///{tmp_path}/study.db"
    env = {"ARCHSEARCH_CACHE_DIR": str(tmp_path / "cache")}
    assert run_cli(["search", str(path), "tracking.enabled=false"], tmp_path, env).returncode == 0
    before = study_states(url)
    for change in ('space_overrides=["resolution=[128]"]', 'space_overrides=["stages.0.width=[24]"]'):
        proc = run_cli(["search", str(path), "n_trials=4", "tracking.enabled=false", change], tmp_path, env)
        assert proc.returncode == 2, (proc.stdout, proc.stderr)
        assert proc.stderr.count("\n") == 1 and "another search space" in proc.stderr
        assert study_states(url) == before
    # The same space resumes.
    proc = run_cli(["search", str(path), "n_trials=4", "tracking.enabled=false"], tmp_path, env)
    assert proc.returncode == 0 and len(study_states(url)) >= 4


def test_two_workers_on_a_fresh_postgresql_database(tmp_path, postgres_dbs):
    # Both create Optuna's (and MLflow's) tables at once: neither may die of it; the budget is exact.
    optuna_url, mlflow_url = postgres_dbs
    path = experiment(tmp_path, objectives="[{name: params}, {name: macs}]", n_trials=6, storage=optuna_url,
                       tracking=mlflow_url)
    workers = [cli_popen(["worker", str(path)], tmp_path) for _ in range(2)]
    for w in workers:
        out, err = w.communicate(timeout=600)
        assert w.returncode == 0, err
        assert "Traceback" not in err
    study = optuna.load_study(study_name="t", storage=optuna_url)
    assert len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == 6
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.FAIL))


def test_a_study_prices_every_trial_with_one_frozen_predictor(tmp_path, monkeypatch):
    path = experiment(tmp_path, objectives="[{name: predicted_latency_ms}, {name: macs}]", n_trials=8, mlflow=True)
    cfg = load_trials(path, ["measure.predictor_fit=3", "measure.latency.threads=1"])
    result = SearchRunner(cfg).run()
    study = result.study
    ident = study.user_attrs["predictor"]
    assert ident["table"].endswith(".json") and ident["scale"] > 0 and ident["probe_ms"] > 0
    # The same spec hash has the same predicted latency, and the reference is not "dominated" by its own trial.
    by_hash: dict = {}
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        by_hash.setdefault(t.user_attrs["spec_hash"], set()).add(t.user_attrs["metrics"]["predicted_latency_ms"])
    ref = study.user_attrs["references"][0]
    by_hash.setdefault(ref["spec_hash"], set()).add(ref["metrics"]["predicted_latency_ms"])
    assert all(len(v) == 1 for v in by_hash.values()), by_hash
    from archsearch.pareto import pareto_rows

    assert not any(ref["name"] in r.dominates for r in pareto_rows(study) if r.spec.spec_hash == ref["spec_hash"])
    # MLflow's parent run names the table and its fit.
    parent = _parent_runs(cfg.tracking.uri)[0]
    assert parent.data.params["predictor.table"] == ident["table"]
    assert float(parent.data.params["predictor.scale"]) == pytest.approx(ident["scale"])
    # Resuming with another thread count is refused before anything runs (the study's conditions) ...
    other = load_trials(path, ["measure.predictor_fit=3", "measure.latency.threads=2", "n_trials=10"])
    with pytest.raises(ConfigError, match="measure.latency.threads"):
        SearchRunner(other)
    # ... and under the same options on another device (another table), the frozen predictor refuses it.
    import archsearch.measure.predictor as predictor_module

    monkeypatch.setattr(predictor_module, "latency_device", lambda cfg: ({"kind": "cpu"}, "cpu-another-machine"))
    with pytest.raises(ConfigError, match="priced its trials with latency table"):
        SearchRunner(load_trials(path, ["measure.predictor_fit=3", "n_trials=10"])).run()
