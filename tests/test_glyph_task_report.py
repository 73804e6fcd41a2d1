"""The glyphs task's validation report (benchmarks/glyph_task.py): how it sets differences against seed noise.
No training: the report is written from a runs.jsonl these tests make."""
import importlib.util
import json
import statistics
from argparse import Namespace
from pathlib import Path

import pytest
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def glyph_task():
    spec = importlib.util.spec_from_file_location("glyph_task", ROOT / "benchmarks" / "glyph_task.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _runs(tmp_path: Path, cells: dict) -> Path:
    """``cells``: (variant, resolution) -> top-1 per seed (seed = position); lines written out of seed order."""
    lines = []
    for (variant, res), values in cells.items():
        for seed, top1 in reversed(list(enumerate(values))):
            lines.append({"key": f"{variant}@{res}:seed{seed}", "variant": variant, "resolution": res, "seed": seed,
                          "input_side": res // 8, "tokens": (res // 64) ** 2, "val_top1": top1, "seconds": 1.0,
                          "threads": 1, "config": {"width_mult": 0.25, "max_depth": 4, "steps": 300, "batch_size": 32,
                                                   "lr": 0.003, "train_size": 100, "val_size": 10,
                                                   "resolution_scale": 0.125}})
    (tmp_path / "runs.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    return tmp_path


def _report(glyph_task, tmp_path: Path, cells: dict) -> str:
    return glyph_task.report(Namespace(out=str(_runs(tmp_path, cells)), command="python benchmarks/glyph_task.py")).read_text()


def _row(report: str, first_cell: str) -> list:
    line = next(x for x in report.splitlines() if x.startswith(f"| {first_cell} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_a_consistent_gain_is_beyond_the_noise_and_paired_by_seed(glyph_task, tmp_path):
    lo = [0.10, 0.12, 0.11, 0.13, 0.09]
    hi = [0.20, 0.23, 0.20, 0.24, 0.18]
    text = _report(glyph_task, tmp_path, {("fastvithd", 256): lo, ("fastvithd", 512): hi})
    step = _row(text, "256 -> 512")
    d = statistics.fmean(hi) - statistics.fmean(lo)
    assert step[1] == f"{d:+.3f}"
    va, vb = statistics.variance(lo) / 5, statistics.variance(hi) / 5
    df = (va + vb) ** 2 / (va ** 2 / 4 + vb ** 2 / 4)
    half = stats.t.ppf(0.975, df) * (va + vb) ** 0.5
    assert step[2] == f"[{d - half:+.3f}, {d + half:+.3f}]"  # Welch's interval
    assert step[3:5] == ["yes", "yes"]
    assert step[5].startswith("5 of 5, [")
    # each seed in seed order, whatever the log's order
    assert "| 0.110 (0.100, 0.120, 0.110, 0.130, 0.090) |" in text
    assert "--seeds 0 1 2 3 4" in text


def test_a_difference_within_the_noise_is_not_beyond_it(glyph_task, tmp_path):
    a = [0.50, 0.30, 0.62, 0.41, 0.55]
    b = [0.52, 0.35, 0.48, 0.60, 0.40]
    text = _report(glyph_task, tmp_path, {("fastvithd", 1024): a, ("fastvithd_stride32", 1024): b})
    row = _row(text, "1024")
    lo, hi = (float(x) for x in row[4].strip("[]").split(","))
    assert lo < 0 < hi
    assert row[5:7] == ["no", "no"]
    assert row[7].startswith(f"{sum(x > y for x, y in zip(a, b))} of 5")


def test_the_regenerate_command_names_the_seeds_the_log_holds(glyph_task):
    argv = ["--out", "analysis/glyphs_task", "--seeds", "3", "4", "--steps", "300"]
    assert glyph_task._without_seeds(argv) == ["--out", "analysis/glyphs_task", "--steps", "300"]
