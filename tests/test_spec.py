"""ArchSpec: validation, stable identity, YAML round trip, stride and grid arithmetic."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from archsearch.build import build_model
from archsearch.errors import ConfigError
from archsearch.references import get_reference
from archsearch.spec import ArchSpec, StageSpec, parse_resolution


def _stage(**kw):
    base = dict(depth=1, width=8)
    base.update(kw)
    return StageSpec(**base)


def test_fastvithd_stride_grid_tokens():
    spec = get_reference("fastvithd").spec
    assert spec.output_stride == 64
    assert spec.grid(1024) == (16, 16)
    assert spec.visual_tokens(1024) == 256
    sa12 = get_reference("fastvit_sa12").spec
    assert sa12.output_stride == 32
    assert sa12.visual_tokens(1024) == 1024
    # The paper's claim in one line: the extra stage gives 4x fewer tokens at any resolution.
    for res in (256, 512, 768, 1024, 1536):
        assert sa12.visual_tokens(res) == 4 * spec.visual_tokens(res)


def test_grid_non_square_and_not_divisible():
    spec = get_reference("fastvit_sa12").spec
    assert spec.grid((768, 1024)) == (24, 32)
    # Every stride-2 conv here rounds up (k odd, padding k//2): 100 -> 50 -> 25 -> 13 -> 7 -> 4.
    assert spec.grid(100) == (4, 4)
    assert spec.stage_grids(64) == [(16, 16), (8, 8), (4, 4), (2, 2)]


def test_hash_is_stable_and_ignores_name():
    a = ArchSpec(stages=(_stage(mlp_ratio=3),), name="a")
    b = ArchSpec(stages=[_stage(mlp_ratio=3.0)], name="b")
    assert a == b and a.spec_hash == b.spec_hash and hash(a) == hash(b)
    assert a.spec_hash != a.replace(norm="layernorm2d").spec_hash
    # Pinned: a change here invalidates every cached measurement, so it must be deliberate.
    assert get_reference("fastvithd").spec.spec_hash == "b24e28a5692a8b15"


def test_yaml_round_trip(tmp_path):
    for name in ("fastvithd", "fastvit_mci0", "fastvit_t8"):
        spec = get_reference(name).spec
        path = tmp_path / f"{name}.yaml"
        spec.save(path)
        back = ArchSpec.load(path)
        assert back == spec and back.name == name and back.spec_hash == spec.spec_hash


@pytest.mark.parametrize(
    "kwargs, key",
    [
        (dict(depth=0), "depth"),
        (dict(width=-1), "width"),
        (dict(token_mixer="conv"), "token_mixer"),
        (dict(mlp_ratio=0), "mlp_ratio"),
        (dict(pos_enc="sinusoidal"), "pos_enc"),
        (dict(cpe_kernel=4), "cpe_kernel"),
        (dict(depth=True), "depth"),
        (dict(downsample="yes"), "downsample"),
        (dict(width=2.5), "width"),
    ],
)
def test_stage_validation_names_the_field(kwargs, key):
    with pytest.raises(ConfigError) as info:
        _stage(**kwargs)
    assert info.value.key == key
    assert str(info.value).startswith(f"{key}: ")


def test_archspec_validation():
    with pytest.raises(ConfigError, match=r"^stages: "):
        ArchSpec(stages=())
    with pytest.raises(ConfigError, match=r"^stages\[1\]\.width: 48 is not divisible by head_dim 32"):
        ArchSpec(stages=(_stage(width=24), _stage(width=48, token_mixer="attention")))
    with pytest.raises(ConfigError, match=r"^stages\[1\]\.width: 48 is not a multiple of the previous stage's width 32"):
        ArchSpec(stages=(_stage(width=32), _stage(width=48)))
    with pytest.raises(ConfigError, match=r"^down_patch_size: "):
        ArchSpec(stages=(_stage(),), down_patch_size=4)
    with pytest.raises(ConfigError, match=r"^norm: 'groupnorm' is not one of"):
        ArchSpec(stages=(_stage(),), norm="groupnorm")
    with pytest.raises(dataclasses.FrozenInstanceError):
        ArchSpec(stages=(_stage(),)).norm = "layernorm2d"  # type: ignore[misc]


def test_parse_resolution():
    assert parse_resolution(1024) == (1024, 1024)
    assert parse_resolution("768x1024") == (768, 1024)
    assert parse_resolution("512") == (512, 512)
    for bad in ("abc", 0, -3, "1x2x3", True, (1.5, 2)):
        with pytest.raises(ConfigError, match="^resolution: "):
            parse_resolution(bad)


def test_scaled_keeps_topology():
    spec = get_reference("fastvithd").spec
    tiny = spec.scaled(width_mult=1 / 16, max_depth=1)
    assert tiny.depths == (1,) * 5
    assert tiny.widths == (8, 16, 32, 64, 128)
    assert tiny.head_dim == 8
    assert [s.token_mixer for s in tiny.stages] == [s.token_mixer for s in spec.stages]
    assert tiny.grid(1024) == spec.grid(1024)


@st.composite
def spec_strategy(draw):
    """Small valid specs: widths multiply (1x or 2x) from stage to stage, as FastViT requires."""
    n = draw(st.integers(1, 5))
    width = draw(st.sampled_from([8, 16]))
    stages = []
    for _ in range(n):
        stages.append(
            StageSpec(
                depth=draw(st.integers(1, 2)),
                width=width,
                token_mixer=draw(st.sampled_from(["repmixer", "attention"])),
                mlp_ratio=draw(st.sampled_from([1.0, 2.0, 3.0])),
                downsample=draw(st.booleans()),
                pos_enc=draw(st.sampled_from(["none", "cpe"])),
                cpe_kernel=draw(st.sampled_from([3, 7])),
                se_downsample=draw(st.booleans()),
            )
        )
        width *= draw(st.sampled_from([1, 2]))
    return ArchSpec(
        stages=tuple(stages),
        norm=draw(st.sampled_from(["batchnorm", "layernorm2d"])),
        lkc_act=draw(st.booleans()),
        stem_scale_branch=draw(st.booleans()),
        head_dim=8,
        down_patch_size=draw(st.sampled_from([3, 7])),
        final_conv=draw(st.booleans()),
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=spec_strategy(), h=st.integers(1, 80), w=st.integers(1, 80))
def test_predicted_grid_matches_forward(spec, h, w):
    model = build_model(spec).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, h, w))
    assert tuple(out.shape[-2:]) == spec.grid((h, w))
    assert out.shape[1] == spec.out_channels


@settings(max_examples=100, deadline=None)
@given(spec=spec_strategy())
def test_yaml_round_trip_property(spec):
    back = ArchSpec.from_yaml(spec.to_yaml())
    assert back == spec and back.spec_hash == spec.spec_hash
