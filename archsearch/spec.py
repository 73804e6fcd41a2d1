"""``ArchSpec``: the one concrete description of a FastViT-family backbone.

A spec is a frozen value: ordered stages plus a few global choices. It validates itself on
construction (errors name the field), hashes stably (the cache key of every measurement), round-trips
to YAML, and predicts its output stride and token grid for any input resolution without building a
model. It imports no torch: everything above it (builder, counters, search) takes a spec.

Conventions follow timm's ``FastVit``: a stride-4 convolutional stem whose width is the first stage's,
then stages that each may open with a stride-2 ``PatchEmbed`` ("downsample"). Output stride is
``4 * 2**(number of downsampling stages)``: FastViT has 3 (stride 32), FastViTHD 4 (stride 64).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Tuple, Union

import yaml

from ._config import from_data, join_key, parse_yaml, read_yaml
from .errors import ConfigError

__all__ = [
    "ArchSpec",
    "StageSpec",
    "Resolution",
    "NORM_LAYERS",
    "POS_ENCODINGS",
    "TOKEN_MIXERS",
    "STEM_STRIDE",
    "parse_resolution",
]

#: Names the builder knows; ``archsearch.build`` maps each to its module and checks it covers them all.
TOKEN_MIXERS = ("repmixer", "attention")
POS_ENCODINGS = ("none", "cpe")
NORM_LAYERS = ("batchnorm", "layernorm2d")

#: timm's convolutional stem: two stride-2 3x3 MobileOne blocks then a 1x1 one.
STEM_STRIDE = 4
_STEM_CONVS = ((3, 2, 1), (3, 2, 1))  # (kernel, stride, padding) of the stem's strided convs

Resolution = Union[int, Tuple[int, int]]

#: Sane maxima: far beyond any encoder worth measuring, far below sizes whose arithmetic overflows.
#: Memory is checked separately (``ArchSpec.memory_bytes``, ``build.check_fits``).
MAX_RESOLUTION = 16384
MAX_WIDTH = 16384
MAX_DEPTH = 256
MAX_STAGES = 16
MAX_RATIO = 64.0
MAX_KERNEL = 63
MAX_IN_CHANS = 64


def parse_resolution(resolution: Resolution | str) -> tuple[int, int]:
    """``1024`` / ``"1024"`` / ``(768, 1024)`` / ``"768x1024"`` -> ``(h, w)``; errors name the value."""
    if isinstance(resolution, str):
        parts = resolution.lower().replace("x", ",").split(",") if "x" in resolution.lower() else [resolution]
        try:
            nums = [int(p.strip()) for p in parts]
        except ValueError:
            raise ConfigError("resolution", f"{resolution!r} is not an integer or HxW") from None
        resolution = nums[0] if len(nums) == 1 else tuple(nums)  # type: ignore[assignment]
    if isinstance(resolution, bool):
        raise ConfigError("resolution", f"{resolution!r} is not an integer")
    if isinstance(resolution, int):
        h = w = resolution
    elif isinstance(resolution, (tuple, list)) and len(resolution) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) for v in resolution
    ):
        h, w = resolution
    else:
        raise ConfigError("resolution", f"{resolution!r} is not an integer or an (h, w) pair")
    if h < 1 or w < 1:
        raise ConfigError("resolution", f"{resolution!r} must be positive")
    if max(h, w) > MAX_RESOLUTION:
        raise ConfigError("resolution", f"{resolution!r} is larger than {MAX_RESOLUTION} px")
    return int(h), int(w)


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _coerce_fields(obj: Any) -> None:
    """Type-check a frozen dataclass's fields and normalise numbers, so that equal specs hash equal."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        tp, value = hints[f.name], getattr(obj, f.name)
        if tp is bool:
            if not isinstance(value, bool):
                raise ConfigError(f.name, f"expected true or false, got {value!r}")
        elif tp is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f.name, f"expected an integer, got {value!r}")
        elif tp is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f.name, f"expected a number, got {value!r}")
            object.__setattr__(obj, f.name, float(value))
        elif tp is str:
            if not isinstance(value, str):
                raise ConfigError(f.name, f"expected a string, got {value!r}")


def _check_choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(key, f"{value!r} is not one of: {', '.join(allowed)}")


@dataclass(frozen=True)
class StageSpec:
    """One stage: an optional stride-2 patch embedding, an optional CPE, then ``depth`` blocks."""

    depth: int
    width: int
    token_mixer: str = "repmixer"
    mlp_ratio: float = 3.0
    #: Open the stage with a stride-2 ``PatchEmbed``. A width change without it uses a stride-1 one.
    downsample: bool = True
    #: ``cpe``: timm's ``RepConditionalPosEnc`` (a reparameterisable depthwise conv) before the blocks.
    pos_enc: str = "none"
    cpe_kernel: int = 7
    #: Squeeze-excite inside the downsampling conv (MobileCLIP MCi0-2).
    se_downsample: bool = False

    def __post_init__(self) -> None:
        _coerce_fields(self)
        if not 1 <= self.depth <= MAX_DEPTH:
            raise ConfigError("depth", f"must be in 1..{MAX_DEPTH}, got {self.depth}")
        if not 1 <= self.width <= MAX_WIDTH:
            raise ConfigError("width", f"must be in 1..{MAX_WIDTH}, got {self.width}")
        _check_choice("token_mixer", self.token_mixer, TOKEN_MIXERS)
        if not 0 < self.mlp_ratio <= MAX_RATIO or self.hidden_width < 1:
            raise ConfigError("mlp_ratio", f"must be in (0, {MAX_RATIO}] and leave >= 1 hidden channel, got {self.mlp_ratio}")
        _check_choice("pos_enc", self.pos_enc, POS_ENCODINGS)
        if not 1 <= self.cpe_kernel <= MAX_KERNEL or self.cpe_kernel % 2 == 0:
            raise ConfigError("cpe_kernel", f"must be an odd integer in 1..{MAX_KERNEL}, got {self.cpe_kernel}")

    @property
    def hidden_width(self) -> int:
        """MLP hidden channels, rounded down as timm does (``int(dim * mlp_ratio)``)."""
        return int(self.width * self.mlp_ratio)

    @property
    def code(self) -> str:
        return f"{'A' if self.token_mixer == 'attention' else 'R'}{self.depth}"


@dataclass(frozen=True)
class ArchSpec:
    """A FastViT-family backbone: stem, ``stages`` in order, optional final conv (timm's ``final_conv``)."""

    stages: Tuple[StageSpec, ...]
    in_chans: int = 3
    #: The MobileOne scale (1x1) branch in the stem; FastViTHD drops it.
    stem_scale_branch: bool = True
    repmixer_kernel: int = 3
    #: Kernel of the stride-2 large-kernel conv in each ``PatchEmbed``.
    down_patch_size: int = 7
    #: Norm in attention blocks: FastViT uses BatchNorm, FastViTHD LayerNorm2d.
    norm: str = "batchnorm"
    #: Activation after the large-kernel conv of ``PatchEmbed`` (MobileCLIP and FastViTHD use it).
    lkc_act: bool = False
    head_dim: int = 32
    layer_scale: bool = True
    #: timm's ``final_conv``: a 3x3 MobileOne block with SE widening to ``head_ratio * width``.
    final_conv: bool = True
    head_ratio: float = 2.0
    #: A label (reference name); not part of the architecture, so not part of equality or hash.
    name: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.stages, list):
            object.__setattr__(self, "stages", tuple(self.stages))
        if not isinstance(self.stages, tuple) or not self.stages:
            raise ConfigError("stages", "must be a non-empty list of stages")
        if len(self.stages) > MAX_STAGES:
            raise ConfigError("stages", f"{len(self.stages)} stages, more than {MAX_STAGES}")
        for i, stage in enumerate(self.stages):
            if not isinstance(stage, StageSpec):
                raise ConfigError(join_key("stages", i), f"expected a StageSpec, got {type(stage).__name__}")
        _coerce_fields(self)
        if not 1 <= self.in_chans <= MAX_IN_CHANS:
            raise ConfigError("in_chans", f"must be in 1..{MAX_IN_CHANS}, got {self.in_chans}")
        if not 1 <= self.repmixer_kernel <= MAX_KERNEL or self.repmixer_kernel % 2 == 0:
            raise ConfigError("repmixer_kernel", f"must be an odd integer in 1..{MAX_KERNEL}, got {self.repmixer_kernel}")
        if not 3 <= self.down_patch_size <= MAX_KERNEL or self.down_patch_size % 2 == 0:
            # ReparamLargeKernelConv pairs it with a 3x3 branch, so it must be odd and >= 3.
            raise ConfigError("down_patch_size", f"must be an odd integer in 3..{MAX_KERNEL}, got {self.down_patch_size}")
        _check_choice("norm", self.norm, NORM_LAYERS)
        if not 1 <= self.head_dim <= MAX_WIDTH:
            raise ConfigError("head_dim", f"must be in 1..{MAX_WIDTH}, got {self.head_dim}")
        if not 0 < self.head_ratio <= MAX_RATIO:
            raise ConfigError("head_ratio", f"must be in (0, {MAX_RATIO}], got {self.head_ratio}")
        for i, (prev, stage) in enumerate(zip(self.stages, self.stages[1:]), start=1):
            # PatchEmbed's large-kernel conv is grouped with groups=in_channels (a depthwise conv with a
            # channel multiplier), so a stage that changes width must multiply the previous one.
            if stage.width % prev.width:
                raise ConfigError(
                    f"stages[{i}].width",
                    f"{stage.width} is not a multiple of the previous stage's width {prev.width} "
                    "(FastViT's patch embedding is a grouped conv with groups=in_channels)",
                )
        for i, stage in enumerate(self.stages):
            if stage.token_mixer == "attention" and stage.width % self.head_dim:
                raise ConfigError(
                    f"stages[{i}].width",
                    f"{stage.width} is not divisible by head_dim {self.head_dim} (attention stage)",
                )

    # --- derived quantities: no model is built -------------------------------------------------
    @property
    def num_stages(self) -> int:
        return len(self.stages)

    @property
    def depths(self) -> tuple[int, ...]:
        return tuple(s.depth for s in self.stages)

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(s.width for s in self.stages)

    @property
    def output_stride(self) -> int:
        return STEM_STRIDE * 2 ** sum(s.downsample for s in self.stages)

    @property
    def out_channels(self) -> int:
        """Channels of the feature map the model returns (after ``final_conv`` when present)."""
        last = self.stages[-1].width
        return int(last * self.head_ratio) if self.final_conv else last

    @property
    def code(self) -> str:
        """Short human label, e.g. ``R2-R12-R24-A4-A2/s64`` for FastViTHD."""
        return "-".join(s.code for s in self.stages) + f"/s{self.output_stride}"

    def stem_grid(self, resolution: Resolution | str) -> tuple[int, int]:
        """Feature-map size (h, w) after the stride-4 stem."""
        h, w = parse_resolution(resolution)
        for k, s, p in _STEM_CONVS:
            h, w = _conv_out(h, k, s, p), _conv_out(w, k, s, p)
        return h, w

    def stage_grids(self, resolution: Resolution | str) -> list[tuple[int, int]]:
        """Feature-map size (h, w) at the output of each stage, by conv arithmetic."""
        h, w = self.stem_grid(resolution)
        k = self.down_patch_size
        grids = []
        for stage in self.stages:
            if stage.downsample:
                h, w = _conv_out(h, k, 2, k // 2), _conv_out(w, k, 2, k // 2)
            grids.append((h, w))
        return grids

    def grid(self, resolution: Resolution | str) -> tuple[int, int]:
        """Token grid (h, w) of the output feature map."""
        return self.stage_grids(resolution)[-1]

    def memory_bytes(self, resolution: Resolution | str | None = None, *, batch: int = 1) -> dict[str, int]:
        """A torch-free estimate of fp32 memory: ``params`` (weights of the deploy form, within ~2x) and
        ``activations`` (the largest set of feature maps alive at once in an inference forward at
        ``resolution``; 0 without one). Used to refuse, before any allocation, what cannot fit."""
        params, prev = 0, None
        c0 = self.stages[0].width
        params += 2 * 9 * c0 + c0 * c0 + 9 * self.in_chans * c0
        acts = 0
        if resolution is not None:
            h, w = parse_resolution(resolution)
            acts = self.in_chans * h * w + 3 * c0 * ((h + 1) // 2) * ((w + 1) // 2)
            grids = self.stage_grids(resolution)
        for i, st in enumerate(self.stages):
            c, hidden = st.width, st.hidden_width
            if prev is not None and (st.downsample or c != prev):
                params += c * self.down_patch_size ** 2 + c * c
            mixer = 4 * c * c if st.token_mixer == "attention" else 2 * self.repmixer_kernel ** 2 * c
            params += st.depth * (2 * c * hidden + mixer + 4 * c) + (st.cpe_kernel ** 2 * c if st.pos_enc == "cpe" else 0)
            if resolution is not None:
                n = grids[i][0] * grids[i][1]
                attn = n * n if st.token_mixer == "attention" else 0  # one head's score matrix at a time
                acts = max(acts, (3 * c + hidden) * n + attn)
            prev = c
        if self.final_conv:
            c, wide = self.stages[-1].width, self.out_channels
            params += 9 * wide + wide * wide // 8  # grouped 3x3 (groups = in channels) and its SE
            if resolution is not None:
                acts = max(acts, (c + 2 * wide) * grids[-1][0] * grids[-1][1])
        return {"params": 4 * params, "activations": 4 * acts * max(1, int(batch))}

    def visual_tokens(self, resolution: Resolution | str) -> int:
        """Tokens handed to the LLM: one per output-grid cell (FastVLM feeds them unpooled)."""
        h, w = self.grid(resolution)
        return h * w


    def channels(self, resolution: Resolution | str) -> int:  # noqa: ARG002 - every resolution alike
        """Channels of each output token (the Encoder protocol's question; a spec's answer is fixed)."""
        return self.out_channels
    def scaled(self, *, width_mult: float = 1.0, max_depth: int | None = None, round_to: int = 8) -> "ArchSpec":
        """A smaller copy with the same topology: same stages, mixers, strides, so the same token grid.

        The first width is scaled and rounded to a multiple of ``round_to``; later widths keep their
        integer ratio to the previous stage (the grouped patch embedding needs it), so every width is a
        multiple of ``round_to`` and the actual factor can differ from ``width_mult`` by the rounding.
        ``head_dim`` becomes ``gcd(head_dim, round_to)`` so attention widths stay divisible by it.
        Used for tests and for proxies of networks too big to train on this machine.
        """
        if width_mult <= 0:
            raise ConfigError("width_mult", f"must be > 0, got {width_mult}")
        if round_to < 1:
            raise ConfigError("round_to", f"must be >= 1, got {round_to}")
        if max_depth is not None and max_depth < 1:
            raise ConfigError("max_depth", f"must be >= 1, got {max_depth}")
        width = max(round_to, round(self.stages[0].width * width_mult / round_to) * round_to)
        widths = [width]
        for prev, stage in zip(self.stages, self.stages[1:]):
            widths.append(widths[-1] * (stage.width // prev.width))
        stages = tuple(
            dataclasses.replace(s, width=w, depth=s.depth if max_depth is None else min(s.depth, max_depth))
            for s, w in zip(self.stages, widths)
        )
        return dataclasses.replace(self, stages=stages, head_dim=math.gcd(self.head_dim, round_to))

    # --- identity and serialisation -------------------------------------------------------------
    def to_dict(self, *, include_name: bool = True) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["stages"] = [dict(s) for s in d["stages"]]
        if not include_name or not self.name:
            d.pop("name")
        return d

    @property
    def spec_hash(self) -> str:
        """Stable 16-hex-digit digest of the architecture (not the name): the cache key."""
        blob = json.dumps(self.to_dict(include_name=False), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def __hash__(self) -> int:
        return hash(self.spec_hash)

    def replace(self, **changes: Any) -> "ArchSpec":
        return dataclasses.replace(self, **changes)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False)

    @classmethod
    def from_dict(cls, data: Any, key: str = "") -> "ArchSpec":
        return from_data(cls, data, key)

    @classmethod
    def from_yaml(cls, text: str, source: str = "<string>") -> "ArchSpec":
        return cls.from_dict(parse_yaml(text, source))

    @classmethod
    def load(cls, path: str | Path) -> "ArchSpec":
        return cls.from_dict(read_yaml(path))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml(), encoding="utf-8")

