"""The ``archsearch`` command line: build, references, sample."""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from archsearch.cli import main
from archsearch.spec import ArchSpec

from .conftest import ROOT


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
