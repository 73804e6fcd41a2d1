"""Each reference equals timm's registered model: parameter count, strict state_dict load, outputs."""
from __future__ import annotations

import json

import pytest
import timm
import torch

from archsearch.build import build_model, count_params
from archsearch.references import REFERENCES, get_reference, load_spec
from archsearch.errors import ConfigError

EXPECTED = {
    "fastvit_t8", "fastvit_t12", "fastvit_s12", "fastvit_sa12", "fastvit_sa24", "fastvit_sa36", "fastvit_ma36",
    "fastvit_mci0", "fastvit_mci1", "fastvit_mci2", "fastvithd", "fastvit_mci4",
}


def test_all_references_present():
    assert set(REFERENCES) == EXPECTED
    assert get_reference("fastvit_mci3") is REFERENCES["fastvithd"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_reference_equals_timm(name):
    ref = REFERENCES[name]
    # Meta device: shapes and names without allocating 300M parameters; load_state_dict still checks
    # every key and every shape.
    theirs = timm.create_model(ref.timm_name, num_classes=0, device="meta")
    ours = build_model(ref.spec, device="meta")
    assert count_params(ours) == count_params(theirs)
    ours.load_state_dict(theirs.state_dict(), strict=True, assign=True)


def test_strict_load_catches_a_wrong_spec():
    theirs = timm.create_model("fastvit_sa12", num_classes=0, device="meta")
    wrong = get_reference("fastvit_sa12").spec.replace(norm="layernorm2d")
    with pytest.raises(RuntimeError):
        build_model(wrong, device="meta").load_state_dict(theirs.state_dict(), strict=True, assign=True)


@pytest.mark.parametrize(
    "name, resolution", [("fastvit_t8", 64), ("fastvit_sa12", 64), ("fastvit_mci0", 64), ("fastvithd", 128)]
)
def test_timm_weights_give_identical_features(name, resolution):
    ref = REFERENCES[name]
    torch.manual_seed(0)
    theirs = timm.create_model(ref.timm_name, num_classes=0).eval()
    ours = build_model(ref.spec).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(1, 3, resolution, resolution)
    with torch.no_grad():
        out = ours(x)
        torch.testing.assert_close(out, theirs.forward_features(x), rtol=0, atol=0)
    assert out.shape == (1, ref.spec.out_channels, *ref.spec.grid(resolution))


def test_load_spec_by_name_or_path(tmp_path):
    spec = load_spec("fastvithd")
    path = tmp_path / "hd.yaml"
    spec.save(path)
    assert load_spec(str(path)) == spec
    with pytest.raises(ConfigError, match="neither a reference"):
        load_spec("fastvit_xl")


def test_timm_models_are_measured_references(capsys):
    from archsearch.cli import main

    assert main(["measure", "timm:vit_so400m_patch14_siglip_384", "fastvithd", "-r", "384", "-m", "params,tokens", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    siglip, hd = rows
    assert siglip["spec"] == "timm:vit_so400m_patch14_siglip_384" and siglip["tokens"] == 27 * 27 and siglip["stride"] == 14
    assert hd["tokens"] == 36 and 3.0 < siglip["params"] / hd["params"] < 4.0  # FastVLM: "3.4x smaller"
    # A convnet's tokens are its feature grid.
    assert main(["measure", "timm:convnext_large_mlp", "-r", "384", "-m", "tokens", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["tokens"] == 12 * 12
    # Bad names and metrics that need a spec's structure: one line, exit 2.
    assert main(["measure", "timm:vit_nope_patch14", "-r", "384", "-m", "params"]) == 2
    err = capsys.readouterr().err
    assert "no such timm model" in err and len(err.strip().splitlines()) == 1
    assert main(["measure", "timm:convnext_large_mlp", "-r", "64", "-m", "naswot"]) == 2
    assert "reference encoder" in capsys.readouterr().err


def test_timm_reference_in_an_ablation(tmp_path):
    from archsearch.ablation import build_variants, load_ablation

    path = tmp_path / "a.yaml"
    path.write_text("name: a\nbase: fastvit_t8\nvariants:\n  - {name: t8}\n  - {name: vit, spec: 'timm:vit_tiny_patch16_224'}\n"
                    "resolutions: [64]\nmetrics: [params, tokens]\n")
    specs = build_variants(load_ablation(path))
    assert [s.name for s in specs] == ["t8", "vit"] and specs[1].visual_tokens(64) == 16
    path.write_text(path.read_text().replace("spec: 'timm:vit_tiny_patch16_224'}",
                                             "spec: 'timm:vit_tiny_patch16_224', edits: [depth=2]}"))
    with pytest.raises(ConfigError, match="reference encoder"):
        build_variants(load_ablation(path))
