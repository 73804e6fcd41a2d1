"""Hostile and careless input: YAML bombs and oversized files, damaged caches, absurd sizes, output
directories that keep what users had, and a fuzz test of every loader and the command line."""
from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from archsearch._config import MAX_YAML_BYTES, MAX_YAML_DEPTH, parse_yaml, read_yaml
from archsearch.cli import main
from archsearch.errors import ArchsearchError, ConfigError
from archsearch.references import get_reference

from .conftest import ROOT, run_cli


def _bomb(levels: int = 10) -> str:
    lines = ["a0: &a0 [" + ", ".join(["lol"] * 10) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def _cli(args, cwd: Path, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "archsearch.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def _one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


# --- YAML ------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_alias_bomb_is_refused_at_once_everywhere(tmp_path):
    normal = (ROOT / "trials" / "quickstart.yaml").read_text()
    t0 = time.perf_counter()
    parse_yaml(normal)
    plain = time.perf_counter() - t0
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="expands to more than"):
        parse_yaml(_bomb())
    # Refused while parsing, never expanded: about what an ordinary experiment file costs (a ratio, not seconds).
    assert time.perf_counter() - t0 < 50 * plain + 0.05
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text((ROOT / "trials" / "quickstart.yaml").read_text() + _bomb())
    t0 = time.perf_counter()
    proc = _cli(["search", str(bomb), "n_trials=3"], ROOT, timeout=60)
    _one_line_error(proc, "bomb.yaml", "expands to more than")
    assert time.perf_counter() - t0 < 30  # the interpreter's start-up; the refusal itself is milliseconds
    for command in (["sample", str(bomb), "--out", str(tmp_path / "s")], ["build", str(bomb)], ["ablate", str(bomb), "--out",
                                                                                                str(tmp_path / "a")]):
        _one_line_error(run_cli(command, ROOT), "expands to more than")
    assert not (tmp_path / "s").exists()


def test_small_aliases_still_work():
    assert parse_yaml("base: &b {depth: 2}\nstages: [*b, *b]") == {"base": {"depth": 2}, "stages": [{"depth": 2}] * 2}


def test_recursive_deep_and_oversized_yaml(tmp_path):
    with pytest.raises(ConfigError, match="recursive"):
        parse_yaml("a: &a [*a]")
    # Our own bound, whatever the parser's version (PyYAML 6.0.4's libyaml refuses 1000 flow levels itself).
    for deep in ("[" * 20000 + "]" * 20000, "[" * (MAX_YAML_DEPTH + 1) + "]" * (MAX_YAML_DEPTH + 1),
                 "a:\n" + "".join(" " * (i + 1) + "- \n" for i in range(MAX_YAML_DEPTH + 1))):
        with pytest.raises(ConfigError, match="nested too deeply"):
            parse_yaml(deep)
    assert parse_yaml("[" * MAX_YAML_DEPTH + "]" * MAX_YAML_DEPTH) is not None
    big = tmp_path / "big.yaml"
    big.write_text("x: " + "y" * (MAX_YAML_BYTES + 10))
    t0 = time.perf_counter()
    read_yaml(ROOT / "trials" / "quickstart.yaml")
    plain = time.perf_counter() - t0
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="more than"):
        read_yaml(big)
    assert time.perf_counter() - t0 < 50 * plain + 0.05  # refused on its size, unread


# --- damaged caches ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_damaged_measurement_cache_is_set_aside(tmp_path):
    env = {"ARCHSEARCH_CACHE_DIR": str(tmp_path / "cache")}
    # Processes of their own: each opens the cache file afresh, as separate commands do.
    assert _cli(["measure", "fastvit_t8", "-r", "64", "-m", "params", "--json"], tmp_path, env).returncode == 0
    db = tmp_path / "cache" / "measurements.sqlite"
    with open(db, "r+b") as f:
        f.write(b"\xde\xad" * 2048)
    proc = _cli(["measure", "fastvit_t8", "-r", "64", "-m", "params", "--json"], tmp_path, env)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert json.loads(proc.stdout)[0]["params"] > 0
    warning = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(warning) == 1 and "damaged cache" in warning[0] and str(db) in warning[0]
    aside = list(db.parent.glob("measurements.sqlite.damaged-*"))
    assert aside and aside[0].read_bytes()[:2] == b"\xde\xad", "the damaged file is kept for inspection"
    # The fresh cache works: a second call is served from it, silently.
    proc = _cli(["measure", "fastvit_t8", "-r", "64", "-m", "params", "--json"], tmp_path, env)
    assert proc.returncode == 0 and not proc.stderr.strip()


@pytest.mark.slow
def test_damaged_cache_during_a_search_does_not_fail_trials(tmp_path):
    env = {"ARCHSEARCH_CACHE_DIR": str(tmp_path / "cache")}
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "measurements.sqlite").write_bytes(b"not a database" * 400)
    args = ["search", str(ROOT / "trials" / "quickstart.yaml"), "tracking.enabled=false", "enqueue=[]",
            "objectives=[{name: params}, {name: macs}]", 'space_overrides=["resolution=[64]"]',
            f"space={ROOT / 'search_spaces' / 'fastvithd.yaml'}", "--storage", f"sqlite:///{tmp_path}/c.db", "n_trials=3"]
    proc = run_cli(args, tmp_path, env)
    assert proc.returncode == 0, proc.stderr
    import optuna

    study = optuna.load_study(study_name="quickstart", storage=f"sqlite:///{tmp_path}/c.db")
    assert not [t for t in study.trials if t.state.name == "FAIL"]
    assert "damaged cache" in proc.stderr


def test_damaged_latency_table_is_set_aside(tmp_path, caplog):
    from archsearch.measure.predictor import LatencyPredictor

    path = tmp_path / "lut.json"
    for junk in ('{"entries": {"a": ', "[1, 2]", '{"entries": 5}'):
        path.write_text(junk)
        p = LatencyPredictor(path=path)
        assert p.entries == {} and not path.exists()
    assert len(list(tmp_path.glob("lut.json.damaged-*"))) >= 1
    assert "damaged cache" in caplog.text


# --- absurd sizes ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_memory_and_size_refusals(tmp_path):
    _one_line_error(run_cli(["measure", "fastvit_t8", "-r", "100000", "-m", "latency"], tmp_path), "resolution", "16384")
    t0 = time.perf_counter()
    line = _one_line_error(run_cli(["measure", "fastvit_t8", "-r", "16000", "-m", "latency"], tmp_path),
                           "GB", "ARCHSEARCH_MAX_MEMORY_GB")
    assert "activations" in line and time.perf_counter() - t0 < 60
    wide = tmp_path / "wide.yaml"
    wide.write_text("stages:\n  - {depth: 1, width: 1000000000}\n")
    _one_line_error(run_cli(["measure", str(wide), "-r", "64", "-m", "params"], tmp_path), "stages[0].width", "16384")
    # A limit set by the user is obeyed, and named in the message.
    _one_line_error(run_cli(["measure", "fastvit_t8", "-r", "256", "-m", "latency"], tmp_path,
                         {"ARCHSEARCH_MAX_MEMORY_GB": "0.01"}), "0.0 GB allowed", "ARCHSEARCH_MAX_MEMORY_GB")


def test_memory_estimate_is_close_to_the_built_model():
    from archsearch.build import build_model, count_params

    for name in ("fastvit_t8", "fastvit_sa12", "fastvithd"):
        spec = get_reference(name).spec
        real = 4 * count_params(build_model(spec, device="meta", inference_mode=True))
        assert 0.8 < spec.memory_bytes()["params"] / real < 1.25


# --- output directories ----------------------------------------------------------------------------

def _study(tmp_path: Path, name: str) -> str:
    import optuna

    url = f"sqlite:///{tmp_path}/s.db"
    study = optuna.create_study(study_name=name, storage=url, directions=["minimize", "minimize"])
    spec = get_reference("fastvit_t8").spec
    for i in range(3 if name == "one" else 2):
        study.add_trial(optuna.trial.create_trial(
            values=[float(i), float(3 - i)],
            user_attrs={"spec": spec.scaled(width_mult=1 + i).to_dict(), "resolution": 64}))
    study.set_user_attr("objectives", ["a", "b"])
    return url


def test_pareto_out_refuses_a_used_directory_and_replaces_with_overwrite(tmp_path, capsys):
    url = _study(tmp_path, "one")
    _study(tmp_path, "two")
    out = tmp_path / "d"
    assert main(["pareto", "one", "--storage", url, "--out", str(out)]) == 0
    first = sorted(p.name for p in out.iterdir())
    (out / "notes.txt").write_text("mine")
    assert main(["pareto", "two", "--storage", url, "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err and sorted(p.name for p in out.iterdir()) == sorted(first + ["notes.txt"])
    assert main(["pareto", "two", "--storage", url, "--out", str(out), "--overwrite"]) == 0
    specs = sorted(p.name for p in out.glob("pareto_trial*.yaml"))
    csv_files = [line.split(",")[-1] for line in (out / "pareto.csv").read_text().splitlines()[1:]]
    assert specs == sorted(csv_files), "only the second study's specs are left"
    assert (out / "notes.txt").read_text() == "mine", "files of another kind are kept"
    # A file where a directory is expected: one line, no traceback.
    assert main(["pareto", "one", "--storage", url, "--out", str(out / "pareto.md")]) == 2
    assert "is a file" in capsys.readouterr().err


def test_sample_out_keeps_exactly_one_runs_specs(tmp_path, capsys):
    out = tmp_path / "s"
    space = str(ROOT / "search_spaces" / "fastvit.yaml")
    assert main(["sample", space, "-n", "4", "--out", str(out)]) == 0
    assert main(["sample", space, "-n", "2", "--seed", "1", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err and len(list(out.glob("spec_*.yaml"))) == 4
    assert main(["sample", space, "-n", "2", "--seed", "1", "--out", str(out), "--overwrite"]) == 0
    listed = [line.split(",")[1] for line in (out / "samples.csv").read_text().splitlines()[1:]]
    assert sorted(p.name for p in out.glob("spec_*.yaml")) == sorted(listed) and len(listed) == 2


def test_report_and_search_pareto_out_onto_a_file(tmp_path, capsys):
    url = _study(tmp_path, "one")
    f = tmp_path / "taken"
    f.write_text("x")
    assert main(["report", "one", "--storage", url, "--out", str(f)]) == 2
    assert "is a file" in capsys.readouterr().err
    # search checks --pareto-out before running anything: no trial is stored.
    args = ["search", str(ROOT / "trials" / "quickstart.yaml"), "tracking.enabled=false",
            f"space={ROOT / 'search_spaces' / 'fastvithd.yaml'}", "--storage", f"sqlite:///{tmp_path}/q.db",
            "--pareto-out", str(f)]
    assert main(args) == 2
    assert "--pareto-out" in capsys.readouterr().err and not (tmp_path / "q.db").exists()
    assert f.read_text() == "x"


def test_reading_a_missing_sqlite_file_creates_nothing(tmp_path, capsys):
    typo = tmp_path / "typo.db"
    for cmd in (["pareto", "one", "--storage", f"sqlite:///{typo}", "--out", str(tmp_path / "p")],
                ["report", "one", "--storage", f"sqlite:///{typo}", "--out", str(tmp_path / "r.md")]):
        assert main(cmd) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "no database file" in err and str(typo) in err
        assert not typo.exists() and not (tmp_path / "p").exists()
    # An existing file without the study still names the studies that are there.
    url = _study(tmp_path, "one")
    assert main(["report", "two", "--storage", url, "--out", str(tmp_path / "r.md")]) == 2
    assert "studies there: one" in capsys.readouterr().err


# --- fuzz ----------------------------------------------------------------------------------------

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_BASES = {
    "spec": get_reference("fastvithd").spec.to_yaml(),
    "space": (ROOT / "search_spaces" / "fastvithd.yaml").read_text(),
    "trials": (ROOT / "trials" / "quickstart.yaml").read_text(),
}
_VALUES = ["-1", "0", "1e9", "1000000000", "abc", "null", "[]", "{}", "'${oc.env:HOME}'", "*x", "&x [1]", "true",
           "10000000000000000000000000000", "-0.5", "[1, [2, [3]]]", "!!python/object:os.system {}", "'\\x00'", "nan",
           "{a: &a [1], b: [*a, *a]}", "9" * 40]


@st.composite
def _mutated(draw):
    kind = draw(st.sampled_from(sorted(_BASES)))
    lines = _BASES[kind].splitlines()
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["value", "delete", "duplicate", "insert", "truncate", "indent"]))
        i = draw(st.integers(0, max(0, len(lines) - 1)))
        if not lines:
            lines = [""]
        if op == "value" and ":" in lines[i]:
            head = lines[i].split(":", 1)[0]
            lines[i] = f"{head}: {draw(st.sampled_from(_VALUES))}"
        elif op == "delete":
            del lines[i]
        elif op == "duplicate":
            lines.insert(i, lines[i])
        elif op == "insert":
            lines.insert(i, draw(st.text(alphabet=st.sampled_from(list("ab:-[]{}&*!# \t'\"12")), max_size=20)))
        elif op == "truncate":
            lines = lines[: i + 1]
            lines[-1] = lines[-1][: draw(st.integers(0, len(lines[-1])))]
        elif op == "indent":
            lines[i] = "  " + lines[i] if draw(st.booleans()) else lines[i].lstrip()
    return kind, "\n".join(lines) + "\n"


class _Hang(Exception):
    pass


def _alarm(signum, frame):  # noqa: ARG001
    raise _Hang()


@settings(max_examples=200, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@pytest.mark.slow
@given(case=_mutated())
def test_fuzz_mutated_yaml_gives_clean_results_or_one_line_errors(tmp_path, capsys, case):
    kind, text = case
    path = tmp_path / f"{kind}.yaml"
    path.write_text(text)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(20)
    try:
        # The loaders: a result or an ArchsearchError, nothing else.
        from archsearch.space import load_space
        from archsearch.spec import ArchSpec
        from archsearch.trials import load_trials

        loader = {"spec": ArchSpec.load, "space": load_space, "trials": load_trials}[kind]
        try:
            loader(path)
        except ArchsearchError as e:
            assert "\n" not in str(e)
        # The command line: exit 0 or a one-line error with exit 2.
        command = {"spec": ["build", str(path), "-r", "256", "--json"],
                   "space": ["sample", str(path), "-n", "2", "--out", str(tmp_path / "out"), "--overwrite"],
                   "trials": ["search", str(path), "--dry-run", f"space={ROOT / 'search_spaces' / 'fastvithd.yaml'}",
                              "enqueue=[]"]}[kind]
        code = main(command)
        err = capsys.readouterr().err
        assert code in (0, 2), err
        if code == 2:
            assert len([l for l in err.splitlines() if "error:" in l]) == 1 and "Traceback" not in err
    except _Hang:
        pytest.fail(f"hung past 20 s on a mutated {kind} file:\n{text}")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    assert grown_mb < 1024, f"memory grew {grown_mb:.0f} MB on a mutated {kind} file"
