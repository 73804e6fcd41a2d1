"""archsearch verify: a study's front and references trained per seed, resumable, with the fixed verified.json shape."""
from __future__ import annotations

import json

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from archsearch._observe import ATTR_PARENT_RUN
from archsearch._record import ATTR_RESOLUTION, ATTR_SPEC, ATTR_SPEC_HASH
from archsearch.references import get_reference

from .conftest import run_cli

TINY = ["steps=3", "train_size=64", "val_size=32", "batch_size=8"]


def _study(tmp_path, parent_run: str | None = None) -> str:
    url = f"sqlite:///{tmp_path}/v.db"
    t8 = get_reference("fastvit_t8").spec.scaled(width_mult=0.25, max_depth=1)
    sa = get_reference("fastvit_sa12").spec.scaled(width_mult=0.25, max_depth=1)
    study = optuna.create_study(study_name="v", storage=url, directions=["minimize", "maximize"])
    study.set_user_attr("objectives", ["macs", "naswot"])
    study.set_user_attr("references", [{"name": "fastvit_t8", "resolution": 256, "values": [5.0, 600.0]}])
    if parent_run:
        study.set_user_attr(ATTR_PARENT_RUN, parent_run)
    for spec, values in ((t8, [1.0, 500.0]), (sa, [2.0, 700.0]), (t8, [3.0, 400.0])):  # the third is dominated
        study.add_trial(create_trial(state=TrialState.COMPLETE, values=values, user_attrs={
            ATTR_SPEC: spec.to_dict(), ATTR_SPEC_HASH: spec.spec_hash, ATTR_RESOLUTION: 256}))
    return url


@pytest.mark.slow
def test_verify_trains_the_front_and_references_per_seed_and_resumes(tmp_path):
    url = _study(tmp_path)
    out = tmp_path / "ver"
    args = ["verify", "v", "--storage", url, "--out", out, "--seeds", "0", "1", "--reference", "fastvit_sa12@256", *TINY]
    result = run_cli(args)
    assert result.returncode == 0, result.stderr
    assert "[1/6]" in result.stdout and "[6/6]" in result.stdout
    v = json.loads((out / "verified.json").read_text())
    assert v["chance"] == 0.1 and v["setting"]["steps"] == 3 and v["setting"]["data"] == "glyphs"
    assert [m["trial"] for m in v["members"]] == [0, 1]  # the front, not the dominated third trial
    for m in v["members"]:
        assert {"trial", "spec_hash", "resolution", "stride", "tokens", "search_score", "top1", "at_chance",
                "dominated"} <= set(m)
        assert len(m["top1"]) == 2 and isinstance(m["at_chance"], bool) and isinstance(m["dominated"], bool)
        assert m["at_chance"] == (sum(m["top1"]) / 2 <= 0.15)
    assert [(r["name"], r["resolution"], len(r["top1"])) for r in v["references"]] == [("fastvit_sa12", 256, 2)]
    assert (out / "verified.md").exists() and (out / "verified.png").exists()
    lines = (out / "units.jsonl").read_text().splitlines()
    again = run_cli(args)
    assert again.returncode == 0 and (out / "units.jsonl").read_text().splitlines() == lines, "nothing trained twice"
    assert json.loads((out / "verified.json").read_text())["members"] == v["members"]


def test_dominated_compares_trained_top1_with_every_verified_point():
    from archsearch.fidelity.verify import Point, _result

    t8 = get_reference("fastvit_t8").spec
    study = optuna.create_study(directions=["minimize", "maximize"])
    a, b = Point("trial 0", t8, 256, (1.0, 900.0), 0), Point("trial 1", t8, 512, (2.0, 100.0), 1)
    ref = Point("fastvit_t8@256", t8, 256, (1.0, 0.0))
    key = lambda p, s: f"{p.label}:{p.spec.spec_hash}@{p.resolution}:seed{s}"  # noqa: E731
    done = {key(a, s): {"top1": 0.11} for s in (0, 1)} | {key(b, s): {"top1": 0.6} for s in (0, 1)} \
        | {key(ref, s): {"top1": 0.5} for s in (0, 1)}
    from archsearch.fidelity.verify import REFERENCE_SETTING

    r = _result(study, [a, b], [ref], ["macs", "naswot"], 1, done, (0, 1), REFERENCE_SETTING)
    by = {m["trial"]: m for m in r["members"]}
    # Trial 0 led by its signal; trained, it reads at chance and the reference (same MACs, 0.5) dominates it.
    assert by[0]["at_chance"] and by[0]["dominated"] and by[0]["dominated_by"] == ["fastvit_t8@256"]
    assert not by[1]["dominated"] and not by[1]["at_chance"]


def test_verify_logs_under_the_study_s_mlflow_run(tmp_path):
    from archsearch.tracking import Tracker
    from archsearch.trials import TrackingConfig

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker(TrackingConfig(uri=uri))
    parent = tracker.start_study("v", {})
    url = _study(tmp_path, parent_run=parent)
    result = run_cli(["verify", "v", "--storage", url, "--out", tmp_path / "ver", "--tracking-uri", uri, "steps=1",
                      "train_size=16", "val_size=8", "batch_size=8", "-q"])
    assert result.returncode == 0, result.stderr
    assert "verify/verified.json" in [a.path for a in tracker.client.list_artifacts(parent, "verify")]
    assert "verify.trial0.top1" in tracker.client.get_run(parent).data.metrics


@pytest.mark.parametrize("args, says", [
    (["nope", "--storage", "{url}"], "no study 'nope'"),
    (["v", "--storage", "sqlite:///{tmp}/missing.db"], "no database file"),
    (["v", "--storage", "{url}", "--seeds", "0"], "at least 2 different seeds"),
    (["v", "--storage", "{url}", "stepz=3"], "stepz"),
    (["v", "--storage", "{url}", "--reference", "fastvithd"], "NAME@RESOLUTION"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, args, says):
    url = _study(tmp_path)
    argv = [a.format(url=url, tmp=tmp_path) for a in args]
    result = run_cli(["verify", *argv, "--out", tmp_path / "ver", *TINY])
    assert result.returncode == 2 and says in result.stderr and "Traceback" not in result.stderr, result.stderr
