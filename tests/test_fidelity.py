"""The fidelity study: resumable units, the statistics it reports, and its output keys."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import time
from pathlib import Path

import pytest

from archsearch.options import TrainProxyConfig
from archsearch import fidelity
from archsearch.fidelity import stats

from .conftest import ROOT, cli_popen, wait_for, write_fashion


def test_statistics_on_hand_made_rankings():
    x = [1, 2, 3, 4, 5, 6, 7, 8]
    assert stats._kendall(x, x) == pytest.approx(1.0) and stats._kendall(x, x[::-1]) == pytest.approx(-1.0)
    assert stats._top_precision(x, x) == 1.0 and stats._top_precision(x, x[::-1]) == 0.0
    # A signal that is only "size" carries nothing once size is partialled out.
    size = [1, 2, 3, 4, 5, 6, 7, 8]
    assert stats._partial_tau(size, x, size) == pytest.approx(0.0, abs=1e-9)
    lo, hi = stats._bootstrap_tau(x, x, n_boot=200)
    assert lo <= 1.0 <= hi + 1e-9


@pytest.mark.slow
def test_small_study_runs_resumes_and_reports(tmp_path):
    write_fashion(tmp_path / "fm", n_train=64, n_val=32)
    plan = fidelity.FidelityPlan(
        space="search_spaces/fastvit.yaml", n=4, n_holdout=1,
        train=TrainProxyConfig(data="fashion-mnist", resolution=32, max_depth=1, width_mult=0.125, batch_size=8,
                               train_size=64, val_size=32),
        long_steps=6, short_steps=(2, 4), scalings=((32, 1),), n_scaling=4)
    out = tmp_path / "study"
    specs = fidelity.write_specs(plan, out)
    assert len(specs) == 5
    units = fidelity.plan_units(plan, specs, kinds=("train", "zero_cost"))
    assert len(units) == 5 * (2 + 2 + 1) and len({u["id"] for u in units}) == len(units)
    # Most informative first: every main-spec unit, then the hold-out references, then their signals.
    order = [(u["index"] >= plan.n, u["index"] >= plan.n and u.get("steps") != plan.long_steps and u["kind"] == "train")
             for u in units]
    assert order == sorted(order)
    done = fidelity.run_units(out, units[:7], data_root=str(tmp_path / "fm"))
    assert done == 7 and len(fidelity.done_ids(out)) == 7
    # A killed run resumes: finished units are not run again.
    (out / "runs.jsonl").open("a").write('{"id": "cut sho')
    assert fidelity.run_units(out, units, data_root=str(tmp_path / "fm")) == len(units) - 7
    assert fidelity.run_units(out, units, data_root=str(tmp_path / "fm")) == 0
    result = fidelity.analyse(out, command="test")
    assert result["n_specs"] == 4 and -1 <= result["noise_ceiling_tau"] <= 1
    for name in ("synflow", "naswot", "grad_norm", "snip", "params", "macs", "train_top1@2", "train_loss_sum@4", "ensemble"):
        s = result["signals"][name]
        assert {"tau", "tau_ci", "rho", "cost_s", "tau_partial_params", "top_quarter_precision"} <= set(s)
        assert s["tau_ci"][0] <= s["tau_ci"][1]
    assert set(result["chosen"]) >= {"name", "tau_holdout", "n_holdout"} and result["chosen"]["n_holdout"] == 1
    assert json.loads((out / "fidelity.json").read_text())["specs"]
    report = fidelity.write_report(result, out).read_text()
    assert "Noise ceiling" in report and (out / "tau_vs_cost.png").exists()
    # every signal row carries its hold-out score (one hold-out spec ranks nothing: "-", not a tau of 0)
    assert "| hold-out tau [95% CI] |" in report
    assert all(line.endswith("| - |") for line in report.splitlines() if line.startswith("| naswot |"))
    # Another plan in the same directory is refused rather than mixed with these results.
    other = fidelity.FidelityPlan(space="search_spaces/fastvit.yaml", n=5, n_holdout=1, train=plan.train, long_steps=6,
                                  short_steps=(2, 4), scalings=((32, 1),))
    with pytest.raises(Exception, match="another plan"):
        fidelity.write_specs(other, out)
    # ... but not a plan that differs only in what it does not use (budget fields, device, data location).
    same = dataclasses.replace(plan, train=dataclasses.replace(plan.train, steps=999, val_every=7, data_root="/x",
                                                               accelerator="cuda"))
    assert len(fidelity.write_specs(same, out)) == 5


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used, from /proc (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _alive(pid: int) -> bool:
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_a_stopped_study_leaves_no_worker_process_training(tmp_path, signum):
    # Units that would train for hours in two worker processes: SIGTERM must stop them within seconds, not
    # wait for them; after a kill -9 of the study's process (no handler runs) they must not train on as orphans.
    proc = cli_popen(["proxy-fidelity", str(ROOT / "search_spaces" / "fastvit.yaml"), "--out", str(tmp_path / "study"),
                      "-n", "4", "--holdout", "0", "--data", "digits", "--resolution", "32", "--max-depth", "1",
                      "--batch-size", "8", "--train-size", "64", "--val-size", "32", "--long-steps", "1000000",
                      "--short-steps", "2", "--n-scaling", "0", "--workers", "2"], tmp_path)
    workers: list = []
    try:
        wait_for(lambda: len(_children(proc.pid)) >= 3, 120, "two worker processes (and the resource tracker)", proc)
        workers = _children(proc.pid)
        # The workers have imported torch and are training their units once each has used a few seconds of CPU.
        wait_for(lambda: sum(_cpu_s(p) > 6 for p in workers) >= 2, 240, "both workers training", proc)
        assert proc.poll() is None, proc.communicate()
        start = time.monotonic()
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
        if signum == signal.SIGTERM:
            assert time.monotonic() - start < 20, "an interrupt stops the units in flight within seconds"
            assert proc.returncode == 143 and "rerun to resume" in err, err
        wait_for(lambda: not any(_alive(p) for p in workers), 15, "no worker process left training")
    finally:  # whatever failed above, no study of a million steps is left training after the test
        for pid in [*workers, proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_pooled_tau_is_kendall_tau_b_within_one_group_and_ignores_pairs_across_groups():
    import numpy as np
    from scipy.stats import kendalltau

    rng = np.random.default_rng(3)
    x, y = rng.normal(size=12), rng.normal(size=12)
    assert stats._pooled_tau(x, y, [0] * 12) == pytest.approx(kendalltau(x, y).statistic)
    # Two groups ordered perfectly inside, against each other across: only the pairs inside count.
    a, b = [1, 2, 3, 10, 11, 12], [11, 12, 13, 1, 2, 3]
    assert stats._kendall(a, b) < 0 and stats._pooled_tau(a, b, [256, 256, 256, 512, 512, 512]) == pytest.approx(1.0)
    assert stats._pooled_tau([1, 2], [1, 2], ["a", "b"]) is None  # no pair shares a group
    lo, hi = stats._pooled_bootstrap(x, y, [i % 3 for i in range(12)])
    assert -1 <= lo <= hi <= 1


def test_token_bands_and_the_choice_where_the_search_decides():
    assert [stats.token_band(t) for t in (64, 65, 256, 257, 1024)] == [3, 4, 4, 5, 5]
    signals = {"cheap": {"tau_within_resolution": 0.1, "tau_within_resolution_ci": [-0.2, 0.4], "cost_s": 1.0},
               "short": {"tau_within_resolution": 0.45, "tau_within_resolution_ci": [0.1, 0.7], "cost_s": 40.0},
               "long": {"tau_within_resolution": 0.6, "tau_within_resolution_ci": [0.3, 0.8], "cost_s": 90.0}}
    w = stats._choose_within(signals, ceiling=0.53)
    assert w["name"] == "short" and w["bar"] == 0.4 and w["passing"] == ["short", "long"]
    assert stats._choose_within(signals, ceiling=None) is None
    assert stats._at_chance_share([5, 4, 3, 2], [0.12, 0.5, 0.6, 0.1]) == 1.0  # the top quarter (1 spec) reads at chance


def test_the_committed_glyphs_study_reports_ranks_within_resolution_and_tokens():
    result = json.loads((ROOT / "analysis" / "proxy_fidelity_glyphs" / "fidelity.json").read_text(encoding="utf-8"))
    for key in ("noise_ceiling_within_resolution", "noise_ceiling_within_tokens"):
        assert isinstance(result[key], float)
    for v in result["signals"].values():
        assert {"tau_within_resolution", "tau_within_tokens", "top_quarter_at_chance"} <= set(v)
    chosen = result["chosen_within_resolution"]
    assert chosen["passed_bar"] and result["signals"][chosen["name"]]["tau_within_resolution_ci"][0] > 0


def _hand_study(tmp_path, refs, *, extra_lines=()):
    """A 4-spec study on disk whose reference top-1 per (spec, seed) is ``refs[i]`` and whose zero-cost units score
    each spec by its index; ``extra_lines`` are appended to runs.jsonl as they are (bytes or str)."""
    from archsearch.fidelity.plan import FidelityPlan, plan_units, write_specs

    from .conftest import TINY

    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "space.yaml").write_text(TINY)
    plan = FidelityPlan(space=str(tmp_path / "space.yaml"), n=4, n_holdout=0, long_steps=20, short_steps=(10,), n_scaling=0,
                        train=TrainProxyConfig(data="fashion-mnist", resolution=32))
    out = tmp_path / "study"
    specs = write_specs(plan, out)
    lines = []
    for u in plan_units(plan, specs, kinds=("train", "zero_cost")):
        i = u["index"]
        if u["kind"] == "train":
            top1 = refs[i][plan.reference_seeds.index(u["seed"])] if u["steps"] == plan.long_steps else 0.2 + 0.01 * i
            result = {"val_top1": top1, "val_loss": 1.0, "loss_sum": 10.0 - i, "train_loss": 1.0, "history": [], "seconds": 1.0,
                      "trained_spec_hash": "x"}
        else:
            result = {**{n: float(i) for n in ("synflow", "naswot", "grad_norm", "snip")},
                      **{f"{n}_seconds": 0.1 for n in ("synflow", "naswot", "grad_norm", "snip")},
                      "params": 100 + i, "macs": 1000 + i, "complexity_seconds": 0.1}
        lines.append(json.dumps({**u, "result": result, "wall_s": 1.0, "device": "cpu:test"}).encode())
    (out / "runs.jsonl").write_bytes(b"\n".join([*lines, *(x if isinstance(x,
                                                                           bytes) else x.encode() for x in extra_lines)]) + b"\n")
    return out


def test_seeds_that_disagree_choose_nothing_and_say_so(tmp_path, capsys):
    # Seed 0 ranks the specs one way, seed 1 the other: noise ceiling -1, a bar of -0.8 would pass anything.
    out = _hand_study(tmp_path, [(0.1, 0.4), (0.2, 0.3), (0.3, 0.2), (0.4, 0.1)])
    result = stats.analyse(out)
    assert result["noise_ceiling_tau"] < 0
    assert result["chosen"]["name"] is None and not result["chosen"]["passed_bar"] and result["chosen"]["judged"] is False
    from archsearch.fidelity.report import write_report

    assert "Nothing can be chosen" in write_report(result, out).read_text()


@pytest.mark.parametrize("line, why", [
    ('{"id": "train:999", "kind": "train", "index": 0, "result": {"val_top1": NaN}}', "val_top1 is 'nan'"),
    (b'\xff\xfe not utf-8', "not JSON"),
    ('"just a string"', "not a unit's record"),
    ('42', "not a unit's record"),
    ('{"id": "x", "kind": "train", "index": 0, "result": {"val_top1": "high"}}', "val_top1 is 'high'"),
])
def test_a_hand_edited_runs_file_is_read_line_by_line_and_its_bad_lines_named(tmp_path, line, why):
    refs = [(0.1, 0.12), (0.2, 0.22), (0.3, 0.28), (0.4, 0.41)]
    clean = stats.analyse(_hand_study(tmp_path / "a", refs))
    result = stats.analyse(_hand_study(tmp_path / "b", refs, extra_lines=[line]))
    assert result["noise_ceiling_tau"] == clean["noise_ceiling_tau"] and result["signals"] == clean["signals"]
    assert len(result["skipped_lines"]) == 1 and why in result["skipped_lines"][0]


def test_a_nan_reference_is_no_value_its_unit_runs_again(tmp_path):
    from archsearch.fidelity.plan import done_ids

    out = _hand_study(tmp_path, [(0.1, 0.12), (0.2, 0.22), (0.3, 0.28), (0.4, 0.41)])
    lines = (out / "runs.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    first["result"]["val_top1"] = float("nan")
    (out / "runs.jsonl").write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    assert first["id"] not in done_ids(out)
    result = stats.analyse(out)
    assert result["n_specs"] == 3 and result["skipped_lines"]


def test_a_damaged_specs_file_is_one_line(tmp_path, capsys):
    out = _hand_study(tmp_path, [(0.1, 0.12), (0.2, 0.22), (0.3, 0.28), (0.4, 0.41)])
    (out / "specs.json").write_text('{"plan": {"n": 4, "spec')
    from archsearch.cli import main

    assert main(["proxy-fidelity", str(tmp_path / "space.yaml"), "--out", str(out), "--analyse-only"]) == 2
    err = capsys.readouterr().err
    assert "specs.json is damaged" in err and "Traceback" not in err


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_bootstrap_interval_agrees_with_scipy_s_percentile_bootstrap(seed):
    """The hand-written paired bootstrap (kept so that committed reports stay reproducible) against scipy's own."""
    import numpy as np
    from scipy.stats import bootstrap, kendalltau

    rng = np.random.default_rng(seed)
    x = rng.normal(size=30)
    y = 0.6 * x + rng.normal(size=30)
    ours = stats._bootstrap_tau(x, y, n_boot=4000, seed=seed)
    ref = bootstrap((x, y), lambda a, b: kendalltau(a, b).statistic, paired=True, vectorized=False, n_resamples=4000,
                    method="percentile", random_state=np.random.default_rng(seed + 100)).confidence_interval
    assert abs(ours[0] - ref.low) < 0.05 and abs(ours[1] - ref.high) < 0.05, (ours, ref)
    assert stats._kendall(x, y) == pytest.approx(kendalltau(x, y).statistic)
