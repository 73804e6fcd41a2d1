"""archsearch export: timm's local-dir folder, the ONNX deploy model and the model card, from a spec or a front."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState, create_trial

from archsearch._record import ATTR_ERROR, ATTR_RESOLUTION, ATTR_SPEC, ATTR_SPEC_HASH
from archsearch.build import build_model
from archsearch.export import export_encoder
from archsearch.export._card import snippets
from archsearch.references import get_reference
from archsearch.space import draw, load_space

from .conftest import ROOT, run_cli

HD = get_reference("fastvithd").spec


def _sampled(n: int = 3):
    """Specs of the flagship space at the scale a test affords (round_to 32 keeps timm's head size of 32)."""
    found, _ = draw(load_space(ROOT / "search_spaces" / "fastvithd.yaml"), n, seed=3)
    return [c.spec.scaled(width_mult=0.125, max_depth=1, round_to=32) for c in found]


def _extension_spec():
    """A width change without downsampling (FastViTHD's stride-32 twin): timm's FastVit cannot express it."""
    small = HD.scaled(width_mult=0.125, max_depth=1, round_to=32)
    return dataclasses.replace(small, stages=small.stages[:-1] + (dataclasses.replace(small.stages[-1], downsample=False),))


def _timm_model(folder: Path):
    import timm

    return timm.create_model(f"local-dir:{folder}/timm", pretrained=True).eval()


def _same_weights(spec, folder: Path):
    from safetensors.torch import load_file

    model = build_model(spec).eval()
    model.load_state_dict(load_file(str(folder / "timm" / "model.safetensors")), strict=True)
    return model


@pytest.mark.slow
@pytest.mark.parametrize("which", ["fastvithd", "fastvit_sa12", "sa12_layernorm", "sampled0", "sampled1", "sampled2"])
def test_timm_folder_and_onnx_agree_with_build_model(tmp_path, which):
    if which == "sa12_layernorm":  # a 4-stage spec that fastvit_mci3 serves through the first 4 of its pos_embs
        spec = get_reference("fastvit_sa12").spec.replace(norm="layernorm2d").scaled(width_mult=0.25, round_to=32)
    else:
        spec = get_reference(which).spec if which in ("fastvithd", "fastvit_sa12") else _sampled()[int(which[-1])]
    res = 128 if which == "fastvithd" else 64
    out = tmp_path / "x"
    result = export_encoder(spec, res, out)
    x = torch.randn(2, 3, res, res, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = _same_weights(spec, out)(x)
        got = _timm_model(out).forward_features(x)
    assert torch.equal(got, want), "the timm folder must give exactly build_model's output"
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    (onnx_out,) = sess.run(None, {"pixel_values": x.numpy()})
    assert np.max(np.abs(onnx_out - want.numpy())) <= 1e-4 * max(1.0, float(want.abs().max()))
    assert result.onnx_max_abs_diff is not None and result.grid == spec.grid(res)
    if which == "sa12_layernorm":
        assert result.timm_architecture == "fastvit_mci3"


@pytest.mark.slow
def test_a_fastvithd_folder_loads_in_an_interpreter_that_never_imports_archsearch(tmp_path):
    result = run_cli(["export", "fastvithd", "--out", tmp_path / "x", "--format", "timm", "-r", "256", "--json"])
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["timm_architecture"] == "fastvit_mci3"
    code = ("import sys, timm\nm = timm.create_model('local-dir:%s')\n"
            "assert 'archsearch' not in sys.modules\nprint(sum(p.numel() for p in m.parameters()))" % (tmp_path / "x" / "timm"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.split()[-1]) == sum(p.numel() for p in build_model(HD, device="meta").parameters())
    card = (tmp_path / "x" / "README.md").read_text()
    assert "plain timm: no archsearch needed" in card and "reference `fastvithd`" in card and "4x4 = 16 visual tokens" in card


@pytest.mark.slow
def test_a_spec_with_an_extension_works_after_import_archsearch_and_its_card_says_so(tmp_path):
    spec = _extension_spec()
    result = export_encoder(spec, 64, tmp_path / "ext")
    assert result.needs_archsearch and result.timm_architecture == "archsearch_fastvit"
    card = (tmp_path / "ext" / "README.md").read_text()
    assert "This folder needs archsearch" in card
    # The card's own snippets run, from the folder's parent, in a fresh interpreter.
    for name, code in snippets(result).items():
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
        assert out.returncode == 0, (name, out.stderr[-2000:])
        assert f"{result.grid[0]}, {result.grid[1]}" in out.stdout
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(_timm_model(tmp_path / "ext").forward_features(x), _same_weights(spec, tmp_path / "ext")(x))


def _study(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path}/s.db"
    study = optuna.create_study(study_name="s", storage=url, directions=["minimize", "maximize"])
    study.set_user_attr("objectives", ["macs", "naswot"])
    a, b = _sampled(2)
    for spec, values in ((a, [1.0, 1.0]), (b, [2.0, 3.0])):
        study.add_trial(create_trial(state=TrialState.COMPLETE, values=values, user_attrs={
            ATTR_SPEC: spec.to_dict(), ATTR_SPEC_HASH: spec.spec_hash, ATTR_RESOLUTION: 64}))
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={ATTR_ERROR: "out of memory"}))
    return url


@pytest.mark.slow
def test_pareto_export_writes_one_folder_per_member_with_a_card_naming_its_trial(tmp_path):
    url = _study(tmp_path)
    from archsearch.tracking import Tracker
    from archsearch.trials import TrackingConfig

    mlflow_uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker(TrackingConfig(uri=mlflow_uri, experiment="archsearch"))
    for n in (0, 1):
        tracker.log_trial(None, study_name="s", number=n, state="COMPLETE", params={}, metrics={}, tags={}, spec_yaml=None)
    result = run_cli(["pareto", "s", "--storage", url, "--out", tmp_path / "front", "--export", "timm",
                      "--tracking-uri", mlflow_uri])
    assert result.returncode == 0, result.stderr
    for n in (0, 1):
        card = (tmp_path / "front" / f"trial{n:04d}" / "README.md").read_text()
        assert f"trial {n}" in card and "| macs |" in card
        assert (tmp_path / "front" / f"trial{n:04d}" / "timm" / "config.json").exists()
    runs = tracker.client.search_runs([tracker._experiment()], filter_string="tags.`optuna.trial_number` = '1'")
    arts = [a.path for a in tracker.client.list_artifacts(runs[0].info.run_id, "export")]
    assert "export/timm" in arts and "export/README.md" in arts


@pytest.mark.parametrize("args, says", [
    (["s:7"], "no trial 7"),
    (["s:2"], "trial 2 of 's' is FAIL: out of memory"),
    (["nope:0"], "no study 'nope'"),
    (["s:0", "--format", "tflite"], "formats are timm, onnx"),
    (["s:0", "-r", "8"], "needs at least"),
])
def test_bad_input_is_one_line_exit_2_and_no_folder(tmp_path, args, says):
    url = _study(tmp_path)
    result = run_cli(["export", *args, "--storage", url, "--out", tmp_path / "x"])
    assert result.returncode == 2 and says in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".x*"))


def test_an_existing_folder_is_replaced_only_with_overwrite_and_never_a_users_file(tmp_path):
    spec = _sampled(1)[0]
    out = tmp_path / "x"
    export_encoder(spec, 64, out, formats=["timm"])
    (out / "notes.txt").write_text("mine")
    result = run_cli(["export", spec_file(tmp_path, spec), "--out", out, "--format", "timm", "-r", "64"])
    assert result.returncode == 2 and "--overwrite" in result.stderr
    result = run_cli(["export", spec_file(tmp_path, spec), "--out", out, "--format", "timm", "-r", "64", "--overwrite"])
    assert result.returncode == 0, result.stderr
    assert (out / "notes.txt").read_text() == "mine" and (out / "timm" / "config.json").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "README.md").write_text("my own card")
    result = run_cli(["export", spec_file(tmp_path, spec), "--out", mine, "--format", "timm", "-r", "64", "--overwrite"])
    assert result.returncode == 2 and "no export wrote" in result.stderr
    assert (mine / "README.md").read_text() == "my own card" and not (mine / "timm").exists()


def spec_file(tmp_path: Path, spec) -> Path:
    path = tmp_path / "spec.yaml"
    spec.save(path)
    return path
