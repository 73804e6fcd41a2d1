"""The ``archsearch`` command line: build, references, sample."""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from archsearch.cli import main
from archsearch.spec import ArchSpec

from .conftest import ROOT, run_cli


def _json(capsys, *args: str):
    assert main(list(args)) == 0
    return json.loads(capsys.readouterr().out)


def test_console_script_help():
    exe = shutil.which("archsearch")
    assert exe, "the console script is installed by `pip install -e .`"
    proc = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    for command in ("build", "sample", "references"):
        assert command in proc.stdout


def test_build_fastvithd_1024(capsys):
    info = _json(capsys, "build", "fastvithd", "--resolution", "1024", "--json")
    assert info["tokens"] == 256 and info["stride"] == 64 and info["grid"] == [16, 16]
    assert info["params"] == 122_875_584


def test_build_sa12_1024(capsys):
    info = _json(capsys, "build", "fastvit_sa12", "--resolution", "1024", "--json", "--verify")
    assert info["tokens"] == 1024 and info["stride"] == 32 and info["grid"] == [32, 32]


def test_build_from_yaml_and_table(tmp_path, capsys):
    path = tmp_path / "t8.yaml"
    main(["build", "fastvit_t8", "--json"])
    capsys.readouterr()
    from archsearch.references import get_reference

    get_reference("fastvit_t8").spec.save(path)
    info = _json(capsys, "build", str(path), "-r", "256x512", "--json")
    assert info["grid"] == [8, 16] and info["tokens"] == 128
    assert main(["build", str(path), "-r", "256"]) == 0
    assert "visual tokens" in capsys.readouterr().out


def test_references(capsys):
    rows = _json(capsys, "references", "--json")
    assert len(rows) == 12
    assert {r["name"]: r["tokens"] for r in rows}["fastvithd"] == 256


def test_sample_is_deterministic(tmp_path, capsys):
    space = str(ROOT / "search_spaces" / "fastvithd.yaml")
    for out in ("a", "b"):
        assert main(["sample", space, "-n", "5", "--seed", "11", "--out", str(tmp_path / out)]) == 0
    files_a = sorted(p.name for p in (tmp_path / "a").glob("*.yaml"))
    assert len(files_a) == 5
    assert files_a == sorted(p.name for p in (tmp_path / "b").glob("*.yaml"))
    for name in files_a:
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()
        spec = ArchSpec.load(tmp_path / "a" / name)
        assert spec.spec_hash in name
    assert (tmp_path / "a" / "samples.csv").read_text().count("\n") == 6


def test_sample_with_override(tmp_path):
    space = str(ROOT / "search_spaces" / "fastvit.yaml")
    assert main(["sample", space, "-n", "3", "--out", str(tmp_path), "resolution=[64]"]) == 0
    assert "evaluate at resolution 64" in next(tmp_path.glob("*.yaml")).read_text()


def test_unknown_command_exits_2():
    with pytest.raises(SystemExit) as info:
        main(["fly"])
    assert info.value.code == 2


@pytest.mark.slow
def test_measure_json_rows(capsys):
    rows = _json(capsys, "measure", "fastvithd", "fastvit_sa12", "-r", "256,512", "-m", "params,macs,tokens", "--json")
    assert [(r["spec"], r["resolution"]) for r in rows] == [
        ("fastvithd", 256), ("fastvithd", 512), ("fastvit_sa12", 256), ("fastvit_sa12", 512)
    ]
    hd512 = rows[1]
    assert hd512["tokens"] == 64 and hd512["stride"] == 64 and hd512["params"] == 122_875_584
    assert hd512["macs"] == sum(hd512["macs_by_op"].values()) and hd512["macs_conditions"]["counter"] == "fast"
    assert rows[3]["tokens"] == 4 * hd512["tokens"]


@pytest.mark.slow
def test_measure_latency_and_ttft(tmp_path, capsys):
    from .conftest import TINY_LLM_YAML
    from archsearch.references import get_reference

    spec = tmp_path / "tiny.yaml"
    get_reference("fastvithd").spec.scaled(width_mult=0.125, max_depth=1).save(spec)
    llm = tmp_path / "llm.yaml"
    llm.write_text(TINY_LLM_YAML)
    rows = _json(
        capsys, "measure", str(spec), "-r", "128", "-m", "tokens,latency,ttft,predicted_latency", "--llm", str(llm),
        "--threads", "1", "--warmup", "1", "--repeats", "3", "--vs", "fastvit_t8", "--json",
    )
    row = rows[0]
    for key in ("resolution", "tokens", "latency_ms", "ttft_ms", "predicted_latency_ms"):
        assert key in row
    lat = row["latency"]
    assert lat["backend"] == "torch-cpu" and lat["threads"] == 1 and lat["repeats"] == 3 and lat["iqr_ms"] >= 0
    assert row["ttft_ms"] == row["ttft"]["encoder_ms"] + row["ttft"]["prefill_ms"]
    assert row["ttft"]["visual_tokens"] == 4 and row["ttft"]["llm"] == "tiny-llm"
    assert row["latency_ratio_vs"]["vs"] == "fastvit_t8" and row["latency_ratio_vs"]["interleaved"] is True
    # The table form prints the conditions under the numbers.
    assert main(["measure", str(spec), "-r", "128", "-m", "latency", "--threads", "1", "--repeats", "3"]) == 0
    assert "1 threads, median of 3" in capsys.readouterr().out


@pytest.mark.slow
def test_calibrate(tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text(
        "name: t\nresolution: [64]\nnum_stages: [2]\noutput_stride: [8]\nfixed: {head_dim: 8}\n"
        "stages:\n  - {depth: [1], width: [8]}\n  - {depth: [1, 2], width_mult: [1, 2]}\n"
    )
    report = _json(capsys, "calibrate", "--space", str(space), "-n", "3", "--fit", "2", "--threads", "1", "--json")
    assert report["entries"] >= 3 and report["scale"] > 0 and len(report["fit_ratios"]) == 2


@pytest.mark.parametrize(
    "args, expected",
    [
        (["measure", "fastvithd", "-m", "speed"], "metrics: 'speed' is not one of"),
        (["measure", "fastvithd", "-m", "ttft", "--llm", "gpt-9"], "llm: 'gpt-9' is neither a preset"),
        (["measure", "fastvithd", "-m", "latency", "--backend", "tpu"], "backend: 'tpu' is not one of"),
        (["measure", "fastvithd", "--counter", "abacus"], "counter: 'abacus'"),
        (["measure", "fastvithd", "-r", "0"], "resolution: 0 must be positive"),
    ],
)
def test_measure_bad_input(args, expected, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1


def test_debug_shows_the_cause(capsys):
    assert main(["--debug", "build", "no_such_spec.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[0].startswith("archsearch build: error:") and "Traceback" in err
    assert main(["build", "no_such_spec.yaml"]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_measure_overrides_of_the_options(capsys):
    assert main(["measure", "fastvit_t8", "-r", "64", "-m", "params", "latency.repeats=zero"]) == 2
    assert "repeats" in capsys.readouterr().err
    assert main(["measure", "fastvit_t8", "-r", "64", "-m", "params", "train.nope=1"]) == 2
    assert "train.nope" in capsys.readouterr().err


# --- progress of the long commands (off a terminal: one [k/N] line per finished trial or unit) ---------------

Q = [str(ROOT / "trials" / "quickstart.yaml"), "tracking.enabled=false", "enqueue=[]",
     "objectives=[{name: params}, {name: macs}]", 'space_overrides=["resolution=[64]"]']


def _run_piped(args, cwd, timeout=600):
    import os
    import sys

    env = {**os.environ, "ARCHSEARCH_CACHE_DIR": str(cwd / "cache")}
    return subprocess.run([sys.executable, "-m", "archsearch.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_search_prints_one_line_per_finished_trial_and_no_warnings(tmp_path):
    # Run from another directory: the experiment's relative paths resolve from the experiment file.
    proc = _run_piped(["search", *Q, "n_trials=6"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout + proc.stderr
    lines = [l for l in text.splitlines() if l.startswith("[")]
    assert [l.split("]")[0] for l in lines] == [f"[{k}/6" for k in range(1, 7)], text
    assert all(" trial " in l for l in lines)
    assert not [l for l in text.splitlines() if l.startswith("warning:")], text
    assert "Pareto front: nowhere yet: `archsearch pareto quickstart" in proc.stdout
    # Resumed: a note (no "warning:"), and nothing more to run (in this process: the same main, no start-up).
    env = {"ARCHSEARCH_CACHE_DIR": str(tmp_path / "cache")}
    proc = run_cli(["search", *Q, "n_trials=6"], tmp_path, env)
    assert proc.returncode == 0 and "resuming study 'quickstart'" in proc.stderr
    assert not [l for l in proc.stderr.splitlines() if l.startswith("warning:")]
    assert run_cli(["search", *Q, "n_trials=6", "--quiet"], tmp_path, env).stderr == ""


@pytest.mark.slow
def test_ablate_prints_one_line_per_unit(tmp_path):
    proc = run_cli(["ablate", str(ROOT / "trials" / "ablate_downsampling.yaml"), "--out", str(tmp_path / "a"), "--quick",
                    "tracking.enabled=false", "metrics=[tokens,macs]"], tmp_path,
                    {"ARCHSEARCH_CACHE_DIR": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr
    assert [l.split("]")[0] for l in proc.stdout.splitlines() if l.startswith("[")] == [f"[{k}/6" for k in range(1, 7)]


def test_help_and_sample_import_no_framework(tmp_path):
    # A fresh interpreter: --help of every command and `sample` must not pay for torch, mlflow or lightning.
    import sys

    code = f"""
import sys
from archsearch.cli import COMMANDS, main
for argv in [["--help"]] + [[name, "--help"] for name in COMMANDS]:
    try:
        main(argv)
    except SystemExit:
        pass
assert main(["sample", {str(ROOT / 'search_spaces' / 'fastvithd.yaml')!r}, "-n", "2", "--out", {str(tmp_path / 's')!r}]) == 0
print(sorted(m for m in ("torch", "mlflow", "lightning", "timm") if m in sys.modules))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"
