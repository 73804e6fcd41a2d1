"""The one metric registry: measure, search and ablate resolve the same names; training metrics are
cached under keys that change with data, budget and seed."""
from __future__ import annotations

import dataclasses

import pytest

from archsearch.ablation import AblationConfig, VariantConfig
from archsearch.errors import ConfigError
from archsearch.measure import MeasureCache
from archsearch.metrics import METRICS, OBJECTIVES, Measurer, metric_of, parse_metrics
from archsearch.options import MeasureOptions, TrainProxyConfig
from archsearch.proxy import train as train_module
from archsearch.proxy.train import TrainResult
from archsearch.references import get_reference
from archsearch.trials import ObjectiveConfig


def test_every_name_resolves_alike_in_measure_search_and_ablate():
    assert {"params", "macs", "tokens", "latency", "predicted_latency", "ttft", "synflow", "naswot", "grad_norm", "snip",
            "train_top1", "train_loss_sum"} <= set(METRICS)
    assert parse_metrics(",".join(METRICS)) == list(METRICS)
    AblationConfig(name="a", base="fastvithd", variants=[VariantConfig(name="v")], resolutions=[64], metrics=list(METRICS))
    for objective, metric in OBJECTIVES.items():
        assert metric_of(objective) == metric and objective in METRICS[metric].objectives
        o = ObjectiveConfig(name=objective)  # the direction defaults to the objective's natural one
        assert o.direction == METRICS[metric].objectives[objective]
        assert parse_metrics([objective]) == [metric]
    assert ObjectiveConfig(name="train_top1").direction == "maximize"
    assert ObjectiveConfig(name="train_loss_sum").direction == "minimize"
    with pytest.raises(ConfigError, match="^name: 'accuracy' is not one of"):
        ObjectiveConfig(name="accuracy")
    with pytest.raises(ConfigError, match="^metrics: 'flops' is not one of"):
        parse_metrics("params,flops")


class _FakeTraining:
    """Stands in for train_proxy: counts calls and returns a result derived from the config."""

    def __init__(self) -> None:
        self.calls = []

    def __call__(self, spec, cfg, **_):
        self.calls.append(cfg)
        return TrainResult(val_top1=0.5 + cfg.seed / 100, val_loss=1.0, train_loss=0.5, first_train_loss=2.3,
                           loss_sum=float(cfg.steps), history=[{"step": cfg.steps, "val_top1": 0.5, "val_loss": 1.0}],
                           seconds=0.1, config=dataclasses.asdict(cfg), trained_spec_hash=cfg.scaled(spec).spec_hash)


def test_training_metrics_share_one_cached_training(tmp_path, monkeypatch):
    fake = _FakeTraining()
    monkeypatch.setattr(train_module, "train_proxy", fake)
    spec = get_reference("fastvit_t8").spec
    cache = MeasureCache(tmp_path / "c.sqlite")
    m = Measurer(MeasureOptions(), cache)
    row = m.measure(spec, 256, ["params", "train_top1", "train_loss_sum"])
    assert row["train_top1"] == 0.5 and row["train_loss_sum"] == MeasureOptions().train.steps and row["params"] > 0
    assert len(fake.calls) == 1  # both training metrics from one training
    cond = row["train"]
    assert (cond["data"], cond["steps"], cond["seed"], cond["resolution"]) == ("fashion-mnist", 50, 0, 128)
    Measurer(MeasureOptions(), cache).measure(spec, 256, ["train_top1"])
    assert len(fake.calls) == 1  # a second process is served from the cache


@pytest.mark.parametrize("change", [{"data": "fashion-mnist-canvas"}, {"steps": 60}, {"seed": 1}, {"data_root": "/elsewhere"},
                                    {"max_depth": 2}, {"resolution": 64}, {"lr": 1e-3}])
def test_training_cache_key_changes_with_data_budget_and_seed(tmp_path, monkeypatch, change):
    fake = _FakeTraining()
    monkeypatch.setattr(train_module, "train_proxy", fake)
    spec = get_reference("fastvit_t8").spec
    cache = MeasureCache(tmp_path / "c.sqlite")
    Measurer(MeasureOptions(), cache).measure(spec, 64, ["train_top1"])
    other = MeasureOptions(train=dataclasses.replace(TrainProxyConfig(), **change))
    Measurer(other, cache).measure(spec, 64, ["train_top1"])
    assert len(fake.calls) == 2
    # Display-only options do not retrain.
    quiet = MeasureOptions(train=dataclasses.replace(other.train, progress_bar=True))
    Measurer(quiet, cache).measure(spec, 64, ["train_top1"])
    assert len(fake.calls) == 2


def test_zero_cost_metric_conditions_and_cache(tmp_path):
    from archsearch.options import ProxyConfig

    spec = get_reference("fastvit_t8").spec
    opts = MeasureOptions(proxy=ProxyConfig(data="noise", resolution=32, batch_size=4, width_mult=0.125, max_depth=1))
    cache = MeasureCache(tmp_path / "c.sqlite")
    row = Measurer(opts, cache).measure(spec, 64, ["synflow"])
    assert row["synflow"] > 0 and row["synflow_conditions"]["data"] == "noise"
    n = len(cache)
    Measurer(dataclasses.replace(opts, proxy=dataclasses.replace(opts.proxy, seed=3)), cache).measure(spec, 64, ["synflow"])
    assert len(cache) == n + 1
