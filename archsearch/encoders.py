"""Any timm model as a measured reference encoder: ``timm:MODEL``.

FastVLM's claims are against encoders outside the FastViT family (SigLIP-SO400M, CLIP ViT-L/14,
ConvNeXt). ``timm:vit_so400m_patch14_siglip_384`` names one: it is built by timm with random weights
(nothing is downloaded) and measured like a spec for params, MACs, visual tokens, latency and TTFT. It is
a reference, not a point of a search space: the proxies and the latency predictor, which work on a
spec's structure, do not apply. Visual tokens are the patch grid for ViTs (prefix tokens such as CLS
left out) and the feature grid for convnets, both read from a meta-device forward (no memory, no time).
"""
from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from typing import Any, Dict, Protocol, runtime_checkable

from .errors import ConfigError

__all__ = ["Encoder", "PREFIX", "TimmEncoder", "is_timm_name"]

PREFIX = "timm:"


@runtime_checkable
class Encoder(Protocol):
    """What every vision encoder archsearch measures answers, without torch: a searchable
    :class:`archsearch.spec.ArchSpec`, or a reference encoder it cannot search (:class:`TimmEncoder`, ``timm:MODEL``). Measuring,
    reporting and tracking take an ``Encoder``; building a model, the spec-only metrics and sampling dispatch on
    ``isinstance(x, ArchSpec)``, the one place each does."""

    @property
    def name(self) -> str: ...

    @property
    def in_chans(self) -> int: ...

    @property
    def spec_hash(self) -> str: ...

    @property
    def code(self) -> str: ...

    @property
    def output_stride(self) -> int: ...

    def grid(self, resolution: Any) -> tuple[int, int]: ...

    def visual_tokens(self, resolution: Any) -> int: ...

    def channels(self, resolution: Any) -> int: ...

    def memory_bytes(self, resolution: Any = None, *, batch: int = 1) -> dict[str, int]: ...

    def to_dict(self, *, include_name: bool = True) -> dict[str, Any]: ...

    def to_yaml(self) -> str: ...

    def replace(self, **changes: Any) -> Any: ...


def is_timm_name(name: str) -> bool:
    return isinstance(name, str) and name.startswith(PREFIX)


@functools.lru_cache(maxsize=None)
def _known(model: str) -> bool:
    import timm

    return model in timm.list_models()


@dataclass(frozen=True)
class TimmEncoder:
    """A timm model as an encoder: the parts of :class:`~archsearch.spec.ArchSpec` that measuring uses."""

    model: str
    name: str = field(default="", compare=False)
    in_chans: int = 3

    def __post_init__(self) -> None:
        if not self.model or not _known(self.model):
            import difflib

            import timm

            close = difflib.get_close_matches(self.model, timm.list_models(), n=3)
            hint = f"; close: {', '.join(close)}" if close else ""
            raise ConfigError("SPEC", f"{PREFIX}{self.model}: no such timm model{hint}")
        if not self.name:
            object.__setattr__(self, "name", f"{PREFIX}{self.model}")

    @classmethod
    def parse(cls, name: str) -> "TimmEncoder":
        return cls(name[len(PREFIX):].strip())

    # --- identity --------------------------------------------------------------------------------
    @property
    def spec_hash(self) -> str:
        return hashlib.sha256(f"{PREFIX}{self.model}".encode()).hexdigest()[:16]

    @property
    def code(self) -> str:
        return f"{PREFIX}{self.model}"

    def to_dict(self, *, include_name: bool = True) -> Dict[str, Any]:
        return {"timm": self.model, **({"name": self.name} if include_name else {})}

    def to_yaml(self) -> str:
        return f"timm: {self.model}\n"

    def replace(self, **changes: Any) -> "TimmEncoder":
        if set(changes) - {"name"}:
            raise ConfigError("edits", f"{self.code} is a reference encoder: it cannot be edited")
        return TimmEncoder(self.model, name=changes["name"])

    # --- models ------------------------------------------------------------------------------------
    def build(self, device: Any = None, resolution: Any = None) -> Any:
        """The model (eval mode, random weights) whose forward returns its features; ViTs are built for
        ``resolution`` (their patch grid floors a side that is not a multiple of the patch)."""
        import timm
        import torch

        from ._scoped import log_levels
        from .spec import parse_resolution

        kwargs: Dict[str, Any] = dict(pretrained=False, num_classes=0)
        with torch.device(device or "cpu"), log_levels({"timm": 40}):
            model = None
            if resolution is not None:
                try:
                    model = timm.create_model(self.model, img_size=parse_resolution(resolution), **kwargs)
                except TypeError:  # convnets take any input size and no img_size
                    model = None
            if model is None:
                model = timm.create_model(self.model, **kwargs)
        return _Features(model).eval()

    @functools.lru_cache(maxsize=64)  # noqa: B019 - frozen, hashable instances; a few references per process
    def _shape(self, hw: tuple) -> tuple:
        """(feature shape, token grid, params) from a meta-device build and forward."""
        import torch

        model = self.build(device="meta", resolution=hw)
        with torch.no_grad():
            out = model(torch.empty(1, self.in_chans, *hw, device="meta"))
        params = sum(p.numel() for p in model.parameters())
        shape = tuple(int(v) for v in out.shape)
        if len(shape) == 4:  # convnet: (B, C, H, W)
            return shape, (shape[2], shape[3]), params
        n = shape[1]  # ViT: (B, N, C) patch tokens
        patch = getattr(getattr(model.model, "patch_embed", None), "patch_size", None)
        if patch is not None:
            grid = (hw[0] // patch[0], hw[1] // patch[1])
            if grid[0] * grid[1] == n:
                return shape, grid, params
        return shape, (1, n), params

    def grid(self, resolution: Any) -> tuple:
        from .spec import parse_resolution

        return self._shape(parse_resolution(resolution))[1]

    def visual_tokens(self, resolution: Any) -> int:
        h, w = self.grid(resolution)
        return h * w

    def channels(self, resolution: Any) -> int:
        """Channels of each output token at ``resolution`` ((B, C, H, W) or (B, N, C) features)."""
        from .spec import parse_resolution

        shape = self._shape(parse_resolution(resolution))[0]
        return shape[1] if len(shape) == 4 else shape[2]

    @property
    def output_stride(self) -> int:
        return 0  # not meaningful across families; the grid is what counts

    def memory_bytes(self, resolution: Any = None, *, batch: int = 1) -> Dict[str, int]:
        from .spec import parse_resolution

        hw = parse_resolution(resolution if resolution is not None else 224)
        shape, _, params = self._shape(hw)
        acts = 0
        if resolution is not None:
            n = self.visual_tokens(hw)
            width = int(shape[-1] if len(shape) == 3 else shape[1])
            acts = max(n * n, 8 * width * n)  # one head's attention scores, or a block's wide maps
        return {"params": 4 * params, "activations": 4 * acts * max(1, int(batch))}


@functools.lru_cache(maxsize=None)
def _features_module():
    import torch.nn as nn

    class Features(nn.Module):
        """``forward_features`` without prefix tokens (ViTs) or the feature map as is (convnets)."""

        def __init__(self, model: nn.Module) -> None:
            super().__init__()
            self.model = model
            self.prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)

        def forward(self, x):
            y = self.model.forward_features(x)
            if y.dim() == 3 and self.prefix:
                y = y[:, self.prefix:]
            return y

    return Features


def _Features(model):  # noqa: N802 - a class made on first use, so that importing this module needs no torch
    return _features_module()(model)
