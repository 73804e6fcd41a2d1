"""One source of truth: every option's default is defined once and the CLI, the experiment files and
Python callers agree; archsearch leaves the caller's process-wide state as it found it."""
from __future__ import annotations

import pytest

import json
import subprocess
import sys

from archsearch.ablation import load_ablation
from archsearch.cli import make_parser, measure_options
from archsearch.options import LatencyConfig, MeasureOptions, ProxyConfig, TrainProxyConfig
from archsearch.trials import load_trials


def test_cli_experiment_files_and_library_share_the_defaults(tmp_path):
    args = make_parser().parse_args(["measure", "fastvithd"])
    args.overrides = []
    assert measure_options(args) == MeasureOptions()
    (tmp_path / "t.yaml").write_text("name: t\nspace: search_spaces/fastvit.yaml\nobjectives: [{name: macs}]\n")
    assert load_trials(tmp_path / "t.yaml").measure == MeasureOptions()
    (tmp_path / "a.yaml").write_text("name: a\nbase: fastvithd\nvariants: [{name: v}]\nresolutions: [64]\n")
    assert load_ablation(tmp_path / "a.yaml").measure == MeasureOptions()
    # The nested sections are the very classes the proxies and timers take.
    assert MeasureOptions().train == TrainProxyConfig() and MeasureOptions().proxy == ProxyConfig()
    assert MeasureOptions().latency == LatencyConfig()


def test_the_drifted_defaults_are_gone():
    # Experiment files once defaulted to 1/8 width, no depth cap and 150 steps on synthetic digits.
    t = MeasureOptions().train
    assert (t.width_mult, t.max_depth, t.data) == (0.25, 4, "fashion-mnist")
    assert MeasureOptions().proxy.data == "fashion-mnist"


def test_cli_options_and_overrides_reach_the_options():
    args = make_parser().parse_args(["measure", "fastvithd", "--repeats", "4", "--threads", "1", "--data-root", "/d"])
    args.overrides = ["train.steps=80", "latency.warmup=0", "proxy.seed=3"]
    o = measure_options(args)
    assert (o.latency.repeats, o.latency.threads, o.latency.warmup) == (4, 1, 0)
    assert (o.train.steps, o.proxy.seed, o.train.data_root, o.proxy.data_root) == (80, 3, "/d", "/d")


_STATE = r"""
import json, logging, os, sys
def state():
    import torch, optuna
    from archsearch._scoped import flush_denormal_enabled
    return {"flush": flush_denormal_enabled(), "optuna": optuna.logging.get_verbosity(),
            "levels": {n: logging.getLogger(n).level for n in ("mlflow", "alembic", "lightning", "lightning.pytorch",
                                                                  "lightning.fabric", "archsearch", "optuna")},
            "env": {k: v for k, v in os.environ.items() if k.startswith(("MLFLOW", "ARCHSEARCH_CACHE"))},
            "threads": torch.get_num_threads()}
before = state()
import archsearch, archsearch.cli, archsearch.search, archsearch.tracking, archsearch.ablation, archsearch.metrics
after_import = state()
from archsearch import draw, load_space
from archsearch.metrics import Measurer
from archsearch.options import LatencyConfig, MeasureOptions
from archsearch.references import load_spec
from archsearch.tracking import Tracker
from archsearch.trials import TrackingConfig
draw(load_space("search_spaces/fastvit.yaml"), 2, seed=0)
m = Measurer(MeasureOptions(latency=LatencyConfig(threads=1, warmup=0, repeats=2)))
m.measure(load_spec("fastvit_t8"), 64, ["macs", "latency"])
t = Tracker(TrackingConfig(uri="sqlite:///" + sys.argv[1] + "/m.db"))
t.finish_study(t.start_study("s", {"a": "b"}))
print(json.dumps([before, after_import, state()]))
"""


@pytest.mark.slow
def test_import_and_measurement_leave_global_state_as_it_was(tmp_path):
    env = {"ARCHSEARCH_CACHE_DIR": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"}
    import os

    env.update({k: v for k, v in os.environ.items() if k in ("HOME", "PYTHONPATH", "LANG")})
    out = subprocess.run([sys.executable, "-c", _STATE, str(tmp_path)], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    before, after_import, after_calls = json.loads(out.stdout.strip().splitlines()[-1])
    assert after_import == before
    assert after_calls == before
