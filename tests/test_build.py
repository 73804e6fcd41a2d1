"""Builder: output forms, the two extensions beyond timm's model class, reparameterisation."""
from __future__ import annotations

import pytest
import torch

from archsearch.build import build_model, count_params, reparameterize
from archsearch.references import get_reference
from archsearch.space import draw, load_space
from archsearch.spec import ArchSpec, StageSpec

from .conftest import SPACES, randomize_


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_output_forms():
    spec = get_reference("fastvit_t8").spec.scaled(width_mult=0.25, max_depth=1)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        fmap = build_model(spec).eval()(x)
        pooled = build_model(spec, global_pool=True).eval()(x)
        logits = build_model(spec, num_classes=10).eval()(x)
    assert fmap.shape == (2, spec.out_channels, 2, 2)
    assert pooled.shape == (2, spec.out_channels)
    assert logits.shape == (2, 10)


def test_width_change_without_downsampling():
    # timm's FastVit cannot express this; the builder uses a stride-1 PatchEmbed.
    spec = ArchSpec(stages=(StageSpec(1, 16, downsample=False), StageSpec(1, 32, downsample=False)), head_dim=8)
    model = build_model(spec).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32))
    assert spec.output_stride == 4 and out.shape == (1, spec.out_channels, 8, 8)


def test_head_dim_extension():
    spec = ArchSpec(stages=(StageSpec(1, 16), StageSpec(1, 48, token_mixer="attention")), head_dim=16)
    model = build_model(spec)
    attn = model.stages[1].blocks[0].token_mixer
    assert attn.head_dim == 16 and attn.num_heads == 3
    assert count_params(model) == count_params(build_model(spec.replace(head_dim=8)))


def test_meta_build_has_no_storage():
    model = build_model(get_reference("fastvit_mci4").spec, device="meta")
    assert all(p.device.type == "meta" for p in model.parameters())


@pytest.mark.parametrize("name", ["fastvit_t8", "fastvit_sa12", "fastvit_mci0", "fastvithd"])
def test_reparameterize_references(name):
    spec = get_reference(name).spec.scaled(width_mult=0.25, max_depth=2)
    model = randomize_(build_model(spec), seed=1).eval()
    x = torch.randn(2, 3, 96, 96)
    deploy = reparameterize(model)
    assert model.stem[0].reparam_conv is None, "the training-form model must stay untouched"
    with torch.no_grad():
        ref, out = model(x), deploy(x)
    assert _rel_err(out, ref) < 1e-4
    assert count_params(deploy) < count_params(model)
    # Same structure as building directly in inference mode: the deploy form loads strictly.
    build_model(spec, inference_mode=True).load_state_dict(deploy.state_dict(), strict=True)


@pytest.mark.parametrize("space_path", SPACES, ids=lambda p: p.stem)
def test_reparameterize_sampled_specs(space_path):
    candidates, _ = draw(load_space(space_path), 4, seed=7)
    for i, c in enumerate(candidates):
        spec = c.spec.scaled(width_mult=1 / 16, max_depth=2)
        model = randomize_(build_model(spec), seed=i).eval()
        x = torch.randn(1, 3, 64, 64)
        with torch.no_grad():
            assert _rel_err(reparameterize(model)(x), model(x)) < 1e-4, spec.code


def test_reparameterize_inplace():
    model = build_model(get_reference("fastvit_t8").spec.scaled(width_mult=0.25, max_depth=1)).train()
    out = reparameterize(model, inplace=True)
    assert out is model and not model.training
    assert model.stem[0].reparam_conv is not None


def test_head_dim_block_matches_timm_block_at_32():
    # At timm's head size both constructors must give the same module tree and the same function.
    from timm.models.fastvit import AttentionBlock

    from archsearch.build import HeadDimAttentionBlock, NORM_LAYER_REGISTRY

    torch.manual_seed(0)
    theirs = AttentionBlock(64, mlp_ratio=3.0, norm_layer=NORM_LAYER_REGISTRY["layernorm2d"]).eval()
    ours = HeadDimAttentionBlock(
        64, head_dim=32, mlp_ratio=3.0, act_layer=torch.nn.GELU, norm_layer=NORM_LAYER_REGISTRY["layernorm2d"]
    ).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 64, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x))
