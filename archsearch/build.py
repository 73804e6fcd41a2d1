"""``ArchSpec`` -> ``nn.Module`` from timm's FastViT building blocks, and reparameterisation.

No block is re-implemented: the stem, stages, RepMixer and attention blocks, RepCPE and the final conv
are timm's (``timm.models.fastvit``), and module names follow timm's ``FastVit`` so that its
state_dict loads strictly. Two small extensions cover what timm's model class cannot express:

* a width change without downsampling: a stride-1 ``PatchEmbed`` (``FastVitStage(down_stride=1)``);
* an attention head size other than timm's 32: :class:`HeadDimAttentionBlock`, timm's
  ``AttentionBlock`` (same submodules, same names, timm's ``forward``) with ``Attention(head_dim=...)``.
"""
from __future__ import annotations

import copy
import os
from functools import partial
from typing import Any, Callable, Dict, Optional

import torch
import torch.nn as nn
from timm.layers import ClassifierHead, DropPath, LayerNorm2d
from timm.models.fastvit import (
    Attention,
    AttentionBlock,
    ConvMlp,
    FastVitStage,
    LayerScale2d,
    MobileOneBlock,
    RepConditionalPosEnc,
    convolutional_stem,
)
from timm.utils.model import reparameterize_model

from .errors import ConfigError
from .encoders import Encoder
from .spec import NORM_LAYERS, POS_ENCODINGS, ArchSpec, StageSpec

__all__ = [
    "ArchNet",
    "HeadDimAttentionBlock",
    "build_final_conv",
    "build_model",
    "build_stage",
    "build_stem",
    "count_params",
    "reparameterize",
]

#: Norm layers of attention blocks, by the names ``ArchSpec.norm`` accepts.
NORM_LAYER_REGISTRY: Dict[str, Callable[..., nn.Module]] = {
    "batchnorm": nn.BatchNorm2d,
    "layernorm2d": partial(LayerNorm2d, eps=1e-5),
}

#: Positional encodings by ``StageSpec.pos_enc``: a factory of the layer timm's stage expects, or None.
POS_ENC_REGISTRY: Dict[str, Callable[[StageSpec], Optional[Callable[..., nn.Module]]]] = {
    "none": lambda _stage: None,
    "cpe": lambda stage: partial(RepConditionalPosEnc, spatial_shape=(stage.cpe_kernel, stage.cpe_kernel)),
}

assert set(NORM_LAYER_REGISTRY) == set(NORM_LAYERS) and set(POS_ENC_REGISTRY) == set(POS_ENCODINGS)


class HeadDimAttentionBlock(AttentionBlock):
    """timm's ``AttentionBlock`` with a configurable head size.

    timm builds ``Attention(dim)`` with its default ``head_dim=32`` (and asserts ``dim % 32 == 0``), so
    the head size cannot be changed after construction; this constructor sets up the same submodules
    under the same names, and ``forward`` is timm's.
    """

    def __init__(
        self,
        dim: int,
        *,
        head_dim: int,
        mlp_ratio: float,
        act_layer: Callable[..., nn.Module],
        norm_layer: Callable[..., nn.Module],
        drop_path: float = 0.0,
        layer_scale_init_value: Optional[float] = 1e-5,
        device=None,
        dtype=None,
    ) -> None:
        dd = {"device": device, "dtype": dtype}
        nn.Module.__init__(self)
        self.norm = norm_layer(dim, **dd)
        self.token_mixer = Attention(dim=dim, head_dim=head_dim, **dd)
        scale = (lambda: LayerScale2d(dim, layer_scale_init_value, **dd)) if layer_scale_init_value is not None else nn.Identity
        self.layer_scale_1 = scale()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.mlp = ConvMlp(in_chs=dim, hidden_channels=int(dim * mlp_ratio), act_layer=act_layer, **dd)
        self.layer_scale_2 = scale()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()


def build_stem(spec: ArchSpec, *, inference_mode: bool = False, device=None, dtype=None) -> nn.Module:
    """timm's stride-4 MobileOne stem, as wide as the first stage."""
    return convolutional_stem(
        spec.in_chans,
        spec.stages[0].width,
        nn.GELU,
        inference_mode,
        use_scale_branch=spec.stem_scale_branch,
        device=device,
        dtype=dtype,
    )


def build_final_conv(spec: ArchSpec, *, inference_mode: bool = False, device=None, dtype=None) -> nn.Module:
    """timm's ``final_conv`` (3x3 MobileOne block with SE) or an identity when the spec has none."""
    if not spec.final_conv:
        return nn.Identity()
    return MobileOneBlock(
        in_chs=spec.stages[-1].width,
        out_chs=spec.out_channels,
        kernel_size=3,
        stride=1,
        group_size=1,
        inference_mode=inference_mode,
        use_se=True,
        act_layer=nn.GELU,
        num_conv_branches=1,
        device=device,
        dtype=dtype,
    )


def build_stage(
    spec: ArchSpec,
    stage: StageSpec,
    dim_in: int,
    drop_path_rates: list[float],
    inference_mode: bool = False,
    device=None,
    dtype=None,
) -> FastVitStage:
    """One stage (patch embedding, positional encoding, blocks) from timm's ``FastVitStage``."""
    dd = {"device": device, "dtype": dtype}
    # timm's FastVit forces a stride-2 downsample whenever the width changes; a stride-1 PatchEmbed
    # lets a spec change width at constant resolution (e.g. FastViTHD without its extra stride).
    needs_embed = stage.downsample or dim_in != stage.width
    custom_attention = stage.token_mixer == "attention" and spec.head_dim != 32
    layer_scale = 1e-5 if spec.layer_scale else None
    fv_stage = FastVitStage(
        dim=dim_in,
        dim_out=stage.width,
        depth=0 if custom_attention else stage.depth,
        token_mixer_type=stage.token_mixer,
        downsample=needs_embed,
        se_downsample=stage.se_downsample,
        down_patch_size=spec.down_patch_size,
        down_stride=2 if stage.downsample else 1,
        pos_emb_layer=POS_ENC_REGISTRY[stage.pos_enc](stage),
        kernel_size=spec.repmixer_kernel,
        mlp_ratio=stage.mlp_ratio,
        act_layer=nn.GELU,
        norm_layer=NORM_LAYER_REGISTRY[spec.norm],
        drop_path_rate=drop_path_rates,
        layer_scale_init_value=layer_scale,
        lkc_use_act=spec.lkc_act,
        inference_mode=inference_mode,
        **dd,
    )
    if custom_attention:
        fv_stage.blocks = nn.Sequential(
            *(
                HeadDimAttentionBlock(
                    stage.width,
                    head_dim=spec.head_dim,
                    mlp_ratio=stage.mlp_ratio,
                    act_layer=nn.GELU,
                    norm_layer=NORM_LAYER_REGISTRY[spec.norm],
                    drop_path=rate,
                    layer_scale_init_value=layer_scale,
                    **dd,
                )
                for rate in drop_path_rates
            )
        )
    return fv_stage


class ArchNet(nn.Module):
    """A backbone built from an ``ArchSpec``.

    ``forward`` returns the final feature map ``(B, C, H/stride, W/stride)`` (the visual tokens a VLM
    projects), the pooled embedding ``(B, C)`` with ``global_pool=True``, or logits with
    ``num_classes > 0`` (timm's ``ClassifierHead``, as used by the training proxy).
    """

    def __init__(
        self,
        spec: ArchSpec,
        *,
        num_classes: int = 0,
        global_pool: bool = False,
        drop_path_rate: float = 0.0,
        inference_mode: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.spec = spec
        self.num_classes = num_classes
        self.global_pool = global_pool or num_classes > 0
        self.stem = build_stem(spec, inference_mode=inference_mode, **dd)
        # Drop path grows linearly with block index over the whole network, as in timm.
        total = sum(spec.depths)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        stages, dim, start = [], spec.stages[0].width, 0
        for stage in spec.stages:
            stages.append(build_stage(spec, stage, dim, rates[start:start + stage.depth], inference_mode, **dd))
            dim, start = stage.width, start + stage.depth
        self.stages = nn.Sequential(*stages)
        self.final_conv = build_final_conv(spec, inference_mode=inference_mode, **dd)
        self.num_features = spec.out_channels
        if num_classes > 0:
            self.head = ClassifierHead(self.num_features, num_classes, pool_type="avg", **dd)
        self.apply(_init_weights)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_conv(self.stages(self.stem(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        if self.num_classes > 0:
            return self.head(x)
        if self.global_pool:
            return x.mean(dim=(2, 3))
        return x


def _init_weights(m: nn.Module) -> None:
    # timm's FastVit init: truncated normal for linear layers, convs keep PyTorch's default.
    if isinstance(m, nn.Linear) and m.weight.device.type != "meta":
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


#: Environment variable that sets how much memory (GB) a model and its activations may take; default:
#: 80% of the memory available when the check runs.
MEMORY_LIMIT_ENV = "ARCHSEARCH_MAX_MEMORY_GB"


def memory_limit_bytes() -> int:
    value = os.environ.get(MEMORY_LIMIT_ENV)
    if value:
        try:
            return int(float(value) * 2**30)
        except ValueError:
            raise ConfigError(MEMORY_LIMIT_ENV, f"{value!r} is not a number of GB") from None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            info = {line.split(":")[0]: line.split()[1] for line in f}
        available = int(info["MemAvailable"]) * 1024
    except (OSError, KeyError, ValueError, IndexError):
        available = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return int(0.8 * available)


def check_fits(spec: Encoder, resolution: Any = None, *, batch: int = 1, training_form: bool = False) -> None:
    """Refuse, before allocating anything, a model (and its forward at ``resolution``) that would not fit in
    this machine's memory: one line naming the estimate, the limit and how to raise it."""
    est = spec.memory_bytes(resolution, batch=batch)
    need = est["params"] * (3 if training_form else 1) + est["activations"]
    limit = memory_limit_bytes()
    if need > limit:
        where = f" at {resolution} px, batch {batch}" if resolution is not None else ""
        raise ConfigError(
            "resolution" if est["activations"] > est["params"] else "spec",
            f"{spec.name or spec.code}{where} needs about {need / 2**30:.1f} GB (weights {est['params'] / 2**30:.1f} GB, "
            f"activations {est['activations'] / 2**30:.1f} GB), more than the {limit / 2**30:.1f} GB allowed here; "
            f"set {MEMORY_LIMIT_ENV} to raise the limit",
        )


def build_model(spec: Encoder, **options: Any) -> nn.Module:
    """Build the training-form model; ``options`` are :class:`ArchNet`'s (``inference_mode=True`` builds
    the deploy form directly, ``device="meta"`` builds without allocating: parameter counts and output
    shapes in milliseconds). A model whose weights would not fit in memory is refused first."""
    resolution = options.pop("resolution", None)  # only reference encoders (ViTs) are built for one input size
    if str(options.get("device") or "") != "meta":
        check_fits(spec, training_form=not options.get("inference_mode", False))
    if not isinstance(spec, ArchSpec):  # a reference encoder (timm:MODEL) builds itself
        from .encoders import TimmEncoder

        assert isinstance(spec, TimmEncoder), type(spec)
        return spec.build(device=options.get("device"), resolution=resolution)
    return ArchNet(spec, **options)


def reparameterize(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Fold every reparameterisable branch (MobileOne, RepMixer, RepCPE, large-kernel conv) for deployment.

    Returns the deploy model in eval mode; the training-form model is left untouched unless ``inplace``.
    """
    was_training = model.training
    model = model if inplace else copy.deepcopy(model)
    model.eval()  # folding reads BatchNorm running statistics
    model = reparameterize_model(model, inplace=True)
    if inplace and was_training:
        model.eval()
    return model


def deploy_model(spec: ArchSpec, *, seed: int = 0, resolution: Any = None) -> nn.Module:
    """The reparameterized (deploy-form) model with seeded random weights, in eval mode (``resolution``:
    the input size a reference ViT is built for; FastViT-family models take any)."""
    torch.manual_seed(seed)
    return build_model(spec, inference_mode=True, resolution=resolution).eval()


def example_input(channels: int, hw: tuple[int, int], *, batch: int = 1, seed: int = 0) -> torch.Tensor:
    """A seeded Gaussian input of shape (batch, channels, H, W): what every timed or counted forward sees."""
    return torch.randn(batch, channels, *hw, generator=torch.Generator().manual_seed(seed))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def describe(spec: Encoder, resolution: tuple[int, int], *, verify: bool = False) -> dict:
    """Params of both forms (meta-device builds: no memory, no init) and the predicted output grid.

    ``verify`` also runs a meta-device forward (shapes only, ~1 s for FastViTHD) and checks that the
    built model's grid is the spec's prediction; the test suite checks this on hundreds of specs.
    """
    model = build_model(spec, device="meta")
    grid = list(spec.grid(resolution))
    if verify and isinstance(spec, ArchSpec):  # a reference encoder's grid is read from its own forward
        with torch.no_grad():
            out = model(torch.empty(1, spec.in_chans, *resolution, device="meta"))
        built = [int(out.shape[-2]), int(out.shape[-1])]
        if built != grid or int(out.shape[1]) != spec.channels(resolution):  # a bug, not bad input: keep the traceback
            raise AssertionError(f"built output {tuple(out.shape)} != predicted grid {grid} for {spec.code}")
    deploy = build_model(spec, device="meta", inference_mode=True)
    return {
        "name": spec.name or None,
        "spec_hash": spec.spec_hash,
        "arch": spec.code,
        "resolution": list(resolution),
        "params": count_params(model),
        "params_deploy": count_params(deploy),
        "channels": spec.channels(resolution),
        "grid": grid,
        "tokens": grid[0] * grid[1],
        "stride": spec.output_stride,
    }
