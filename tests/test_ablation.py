"""Ablations (variants as edits, tidy results, MLflow runs) and reports (ablations and studies)."""
from __future__ import annotations

import csv
import json

import pytest

from archsearch.ablation import build_variants, load_ablation, run_ablation
from archsearch.cli import main
from archsearch.errors import ConfigError
from archsearch.report import crossovers, report_ablation, report_study

from .conftest import ROOT


def _quick(tmp_path, name: str, extra=()):
    return load_ablation(ROOT / "trials" / f"{name}.yaml",
                         [f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", "measure.latency.threads=1", *extra], quick=True)


def test_downsampling_variants():
    cfg = load_ablation(ROOT / "trials" / "ablate_downsampling.yaml")
    hd, hd32, sa12 = build_variants(cfg)
    assert (hd.output_stride, hd32.output_stride, sa12.output_stride) == (64, 32, 32)
    assert hd32.widths == hd.widths and hd32.depths == hd.depths
    assert cfg.resolutions == [256, 512, 768, 1024, 1536] and "ttft" in cfg.metrics
    for res in cfg.resolutions:
        assert hd32.visual_tokens(res) == 4 * hd.visual_tokens(res) == sa12.visual_tokens(res)


def test_attention_variants():
    variants = build_variants(load_ablation(ROOT / "trials" / "ablate_attention.yaml"))
    counts = [sum(s.token_mixer == "attention" for s in v.stages) for v in variants]
    assert counts == [0, 1, 2, 3]
    for v in variants:
        tail = [s.token_mixer for s in v.stages][len(v.stages) - sum(s.token_mixer == "attention" for s in v.stages):]
        assert set(tail) <= {"attention"} and all((s.pos_enc == "cpe") == (s.token_mixer == "attention") for s in v.stages)


@pytest.mark.slow
def test_quick_ablation_end_to_end(tmp_path, capsys):
    cfg = _quick(tmp_path, "ablate_downsampling")
    assert cfg.resolutions == [64, 128] and "ttft" not in cfg.metrics
    rows = run_ablation(cfg, tmp_path / "out")
    assert len(rows) == 3 * 2
    with open(tmp_path / "out" / "results.csv", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert {r["variant"] for r in table} == {"fastvithd", "fastvithd_stride32", "fastvit_sa12"}
    by = {(r["variant"], int(r["resolution"])): r for r in table}
    for res in (64, 128):
        assert int(by[("fastvithd_stride32", res)]["tokens"]) == 4 * int(by[("fastvithd", res)]["tokens"])
        assert float(by[("fastvithd", res)]["latency_ms"]) > 0 and "latency_iqr_ms" in by[("fastvithd", res)]
    meta = json.loads((tmp_path / "out" / "ablation.json").read_text())
    assert [v["name"] for v in meta["variants"]] == ["fastvithd", "fastvithd_stride32", "fastvit_sa12"]
    report = report_ablation(tmp_path / "out", tmp_path / "report")
    text = report.read_text()
    assert "| fastvithd_stride32 | 128 |" in text and "## Crossovers" in text
    for png in ("tokens.png", "macs.png", "latency.png"):
        assert (tmp_path / "report" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("archsearch-ablations")
    assert len(client.search_runs([exp.experiment_id])) == 1 + 6  # parent + one per (variant, resolution)


@pytest.mark.slow
def test_ablate_cli(tmp_path, capsys):
    assert main(["ablate", str(ROOT / "trials" / "ablate_attention.yaml"), "--out", str(tmp_path / "a"), "--quick",
                 "--report", f"tracking.uri=sqlite:///{tmp_path}/m.db", "measure.latency.threads=1"]) == 0
    assert (tmp_path / "a" / "report.md").exists()
    assert main(["report", str(tmp_path / "a"), "--out", str(tmp_path / "r")]) == 0
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "has no ablation.json" in capsys.readouterr().err


def test_crossovers():
    rows = [{"variant": "a", "resolution": 256, "latency_ms": 1.0}, {"variant": "b", "resolution": 256, "latency_ms": 2.0},
            {"variant": "a", "resolution": 512, "latency_ms": 5.0}, {"variant": "b", "resolution": 512, "latency_ms": 3.0}]
    assert crossovers(rows, "latency_ms") == ["latency_ms: b becomes lower than a between 256 and 512 px"]


@pytest.mark.parametrize(
    "edit, expected",
    [
        (["variants.1.edits=[stages.4.width=1000]"], "variants[1] (fastvithd_stride32): stages[4].width"),
        (["variants.1.drop_stages=[9]"], "variants[1] (fastvithd_stride32).drop_stages: no stage 9"),
        (["variants.1.edits=[stages.4.mixer=x]"], "stages[4].mixer: unknown key"),
        (["metrics=[speed]"], "metrics: 'speed' is not one of"),
        (["variants.2.spec=fastvit_zz"], "neither a reference"),
    ],
)
def test_bad_ablations(edit, expected):
    with pytest.raises(ConfigError) as info:
        build_variants(load_ablation(ROOT / "trials" / "ablate_downsampling.yaml", edit))
    assert expected in str(info.value) and "\n" not in str(info.value)


@pytest.mark.slow
def test_report_on_a_study(tmp_path):
    from archsearch.search import SearchRunner
    from archsearch.trials import load_trials

    from .conftest import experiment as _experiment

    study = SearchRunner(load_trials(_experiment(tmp_path, n_trials=8))).run().study
    path = report_study(study, tmp_path / "rep")
    text = path.read_text()
    assert "Pareto-optimal" in text and "hypervolume.png" in text and "importance.png" in text
    assert (tmp_path / "rep" / "pareto.png").exists() and (tmp_path / "rep" / "hypervolume.png").exists()


def test_report_gives_accuracy_per_resolution_when_the_side_follows_it(tmp_path):
    import json

    from archsearch.report import report_ablation

    meta = {"name": "x", "variants": [{"name": "a", "arch": "R1/s8"}],
            "measure": {"proxy": {"data": "glyphs", "resolution_scale": 0.125, "batch_size": 64}}}
    (tmp_path / "ablation.json").write_text(json.dumps(meta))
    (tmp_path / "results.csv").write_text("variant,arch,resolution,tokens,naswot,proxy_resolution\n"
                                          "a,R1/s8,256,64,637.3,32\na,R1/s8,512,256,727.2,64\n")
    text = report_ablation(tmp_path, tmp_path).read_text()
    assert "Per variant and resolution" in text and "0.125 x the resolution" in text
    assert "| a | 256 | 32 | 637.30 |" in text and "| a | 512 | 64 | 727.20 |" in text
    (tmp_path / "results.csv").write_text("variant,arch,resolution,tokens,naswot\na,R1/s8,256,64,5.0\na,R1/s8,512,256,5.0\n")
    assert "| a | 5.00 |" in report_ablation(tmp_path, tmp_path).read_text(), "a fixed side: one row per variant"
