"""Search spaces: loading, flat sampling, rules, and every sampled spec building to its predicted grid."""
from __future__ import annotations

import optuna
import pytest
import torch

from archsearch.build import build_model
from archsearch.errors import InvalidSample
from archsearch.references import get_reference
from archsearch.space import SearchSpace, draw, load_space

from .conftest import SPACES, TINY

LOW_RES = [32, 48, 64, (48, 80), 57, 96]


def test_shipped_spaces_exist():
    assert {p.stem for p in SPACES} >= {"fastvithd", "fastvit"}


@pytest.mark.slow
@pytest.mark.parametrize("space_path", SPACES, ids=lambda p: p.stem)
def test_200_sampled_specs_build_to_their_predicted_grid(space_path):
    space = load_space(space_path)
    candidates, rejected = draw(space, 200, seed=0)
    assert len(candidates) == 200
    assert len({c.spec.spec_hash for c in candidates}) > 150, "sampling should explore, not repeat"
    for i, c in enumerate(candidates):
        # Tiny copy: same topology, so the same grid; widths / 16 and depth <= 2 keep this fast.
        tiny = c.spec.scaled(width_mult=1 / 16, max_depth=2)
        res = LOW_RES[i % len(LOW_RES)]
        model = build_model(tiny).eval()
        with torch.no_grad():
            out = model(torch.randn(1, 3, *(res if isinstance(res, tuple) else (res, res))))
        assert tuple(out.shape[-2:]) == c.spec.grid(res), c.spec.code
        assert out.shape[1] == tiny.out_channels


@pytest.mark.parametrize("space_path", SPACES, ids=lambda p: p.stem)
def test_sampling_is_deterministic_and_flat(space_path):
    space = load_space(space_path)
    a, _ = draw(space, 20, seed=3)
    b, _ = draw(space, 20, seed=3)
    c, _ = draw(space, 20, seed=4)
    assert [x.spec.spec_hash for x in a] == [x.spec.spec_hash for x in b]
    assert [x.resolution for x in a] == [x.resolution for x in b]
    assert [x.spec.spec_hash for x in a] != [x.spec.spec_hash for x in c]
    # Every trial suggests the same parameters, so NSGA-II / GP / multivariate TPE model all of them.
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    names = set()
    for _ in range(30):
        trial = study.ask()
        try:
            space.sample_candidate(trial)
        except InvalidSample:
            pass
        names.add(frozenset(trial.params))
    assert len(names) == 1


def _sample_with(space: SearchSpace, params: dict):
    study = optuna.create_study()
    study.enqueue_trial(params, skip_if_exists=False)
    return space.sample_candidate(study.ask())


def test_fastvithd_is_a_point_of_its_space():
    space = load_space(SPACES[[p.stem for p in SPACES].index("fastvithd")])
    stage = lambda d, m, pe="none": dict(depth=d, mult=m, pe=pe)  # noqa: E731
    stages = [stage(2, None), stage(12, 2), stage(24, 2), stage(4, 2, "cpe"), stage(2, 2, "cpe"), stage(1, 1)]
    params = {"resolution": 1024, "num_stages": 5, "output_stride": 64, "num_attention_stages": 2}
    for i, s in enumerate(stages):
        params[f"s{i}_depth"] = s["depth"]
        params[f"s{i}_width" if s["mult"] is None else f"s{i}_width_mult"] = 96 if s["mult"] is None else s["mult"]
        params.update({f"s{i}_mlp_ratio": 4.0, f"s{i}_pos_enc": s["pe"], f"s{i}_se_downsample": False})
    c = _sample_with(space, params)
    assert c.spec == get_reference("fastvithd").spec
    assert c.spec.visual_tokens(c.resolution) == 256


def test_fastvit_sa12_is_a_point_of_its_space():
    space = load_space(SPACES[[p.stem for p in SPACES].index("fastvit")])
    params = {"resolution": 256, "num_stages": 4, "output_stride": 32, "num_attention_stages": 1, "s0_width": 64}
    for i, d in enumerate((2, 2, 6, 2)):
        params[f"s{i}_depth"] = d
        if i:
            params[f"s{i}_width_mult"] = 2
        params.update({f"s{i}_mlp_ratio": 4.0, f"s{i}_pos_enc": "cpe" if i == 3 else "none", f"s{i}_se_downsample": False})
    assert _sample_with(space, params).spec == get_reference("fastvit_sa12").spec


def _tiny_space(tmp_path, body: str) -> SearchSpace:
    path = tmp_path / "space.yaml"
    path.write_text(body)
    return load_space(path)




def test_rejections_name_their_rule(tmp_path):
    space = _tiny_space(tmp_path, TINY)
    _, rejected = draw(space, 30, seed=0)
    text = " | ".join(rejected)
    assert "output_stride 32 needs 3 downsampling stages, only 2 stages" in text
    assert "would use repmixer" in text  # stage 2 allows only attention
    assert "rules.nondecreasing_width" in text or "not a multiple" in text


def test_downsampling_placed_early(tmp_path):
    space = _tiny_space(tmp_path, TINY)
    candidates, _ = draw(space, 40, seed=1)
    for c in candidates:
        flags = [s.downsample for s in c.spec.stages]
        k = flags.count(True)
        assert c.spec.output_stride == 4 * 2**k
        expected = [True] * k if k == len(flags) else [False] + [True] * k + [False] * (len(flags) - 1 - k)
        assert flags == expected


def test_overrides(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(TINY)
    space = load_space(path, ["resolution=[32,48]", "stages.0.width=[16]"])
    assert space.config.resolution == [32, 48]
    assert space.config.stages[0].width == [16]
