"""Output folders: a command replaces only what an earlier run of it wrote (its manifest), never a user's own file,
and a study with nothing to show is one line, not an empty table."""
from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from .conftest import run_cli
from .test_export import _study

ABLATION = ["trials/ablate_downsampling.yaml", "--quick", "tracking.enabled=false", "measure.latency.threads=1",
            "metrics=[params,tokens]"]


def _mine(folder, name: str, text: str = "the user's own\n"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    return folder / name


@pytest.mark.parametrize("command, name", [("pareto", "pareto.md"), ("pareto", "pareto.csv"), ("report", "report.md")])
def test_overwrite_never_replaces_a_users_own_file(tmp_path, command, name):
    url = _study(tmp_path)
    mine = _mine(tmp_path / "out", name)
    result = run_cli([command, "s", "--storage", url, "--out", tmp_path / "out", "--overwrite"])
    assert result.returncode == 2 and "not from an earlier" in result.stderr and "Traceback" not in result.stderr
    assert mine.read_text() == "the user's own\n"


def test_overwrite_replaces_what_the_same_command_wrote_before(tmp_path):
    url = _study(tmp_path)
    assert run_cli(["pareto", "s", "--storage", url, "--out", tmp_path / "out"]).returncode == 0
    notes = _mine(tmp_path / "out", "notes.txt")
    result = run_cli(["pareto", "s", "--storage", url, "--out", tmp_path / "out", "--overwrite"])
    assert result.returncode == 0, result.stderr
    assert notes.read_text() == "the user's own\n" and (tmp_path / "out" / "pareto.md").exists()


@pytest.mark.slow
def test_ablate_refuses_a_folder_in_use_and_overwrites_only_its_own_results(tmp_path):
    out = tmp_path / "abl"
    mine = _mine(out, "results.csv")
    result = run_cli(["ablate", *ABLATION[:1], "--out", out, *ABLATION[1:]])
    assert result.returncode == 2 and "--overwrite" in result.stderr and mine.read_text() == "the user's own\n"
    result = run_cli(["ablate", *ABLATION[:1], "--out", out, "--overwrite", *ABLATION[1:]])
    assert result.returncode == 2 and "not from an earlier `ablate` run" in result.stderr
    assert mine.read_text() == "the user's own\n"
    mine.unlink()
    notes = _mine(out, "notes.txt")
    assert run_cli(["ablate", *ABLATION[:1], "--out", out, *ABLATION[1:], "--overwrite"]).returncode == 0
    first = (out / "results.csv").read_text()
    assert run_cli(["ablate", *ABLATION[:1], "--out", out, *ABLATION[1:], "--overwrite"]).returncode == 0
    assert (out / "results.csv").read_text() == first and notes.read_text() == "the user's own\n"


def test_ablate_into_a_file_is_one_line(tmp_path):
    (tmp_path / "some_file").write_text("x")
    result = run_cli(["ablate", *ABLATION[:1], "--out", tmp_path / "some_file", *ABLATION[1:]])
    assert result.returncode == 2 and "is a file" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["pareto", "report"])
def test_a_study_without_a_complete_trial_is_one_line_exit_1_and_writes_nothing(tmp_path, command):
    url = f"sqlite:///{tmp_path}/e.db"
    study = optuna.create_study(study_name="e", storage=url, directions=["minimize", "maximize"])
    study.add_trial(create_trial(state=TrialState.FAIL))
    result = run_cli([command, "e", "--storage", url, "--out", tmp_path / "out"])
    assert result.returncode == 1 and "no complete trial (1 fail)" in result.stderr
    assert not (tmp_path / "out").exists()


def test_overwrite_replaces_only_what_the_same_command_wrote(tmp_path):
    """A file that another command recorded is not this command's to replace."""
    from archsearch._outputs import prepare_output_dir, record_outputs, write_atomic
    from archsearch.errors import ConfigError

    out = tmp_path / "out"
    out.mkdir()
    (out / "report.md").write_text("written by another command\n")
    record_outputs(out, "pareto", ["report.md"])
    with pytest.raises(ConfigError, match="not from an earlier `report` run"):
        prepare_output_dir(out, "report", overwrite=True)
    (out / "notes.md").write_text("mine\n")
    record_outputs(out, "report", ["old.png"])
    prepare_output_dir(tmp_path / "out2", "report")
    ready = prepare_output_dir(out, "pareto", overwrite=True)  # pareto's own report.md goes; notes.md stays
    with pytest.raises(ConfigError, match="no earlier run of this command"):
        write_atomic(ready / "notes.md", "replaced?")
    assert (out / "notes.md").read_text() == "mine\n" and not (out / "report.md").exists()


def test_each_preparation_decides_afresh_what_is_the_user_s(tmp_path):
    from archsearch._outputs import prepare_output_dir, write_atomic

    out = tmp_path / "out"
    out.mkdir()
    (out / "x.png").write_text("the user's")
    prepare_output_dir(out, "report", overwrite=True)  # x.png is the user's: never replaced in that run
    (out / "x.png").unlink()
    prepare_output_dir(out, "report")  # an empty folder now: nothing in it is the user's
    write_atomic(out / "x.png", "first")
    write_atomic(out / "x.png", "again")  # this run's own file, rewritten
    assert (out / "x.png").read_text() == "again"
