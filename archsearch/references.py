"""The known FastViT-family designs as ``ArchSpec``s, each equal to a timm registered model.

Read like timm's ``@register_model`` variants: a table of data handed to one constructor. "Equal"
is checked in the test suite: same parameter count as ``timm.create_model(timm_name, num_classes=0)``
and timm's state_dict loads with ``strict=True`` into the model built from the spec, so timm's
pretrained weights (where a user has them) drop in.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Tuple

from .errors import ConfigError
from .encoders import Encoder
from .spec import ArchSpec, StageSpec

__all__ = ["Reference", "REFERENCES", "get_reference", "load_spec"]


@dataclass(frozen=True)
class Reference:
    name: str
    timm_name: str
    spec: ArchSpec
    note: str


def _fastvit(
    name: str,
    *,
    layers: Tuple[int, ...],
    widths: Tuple[int, ...],
    mlp_ratio: float,
    mixers: str,
    se: Tuple[int, ...] = (),
    mobileclip: bool = False,
    hd: bool = False,
) -> ArchSpec:
    """timm's FastVit arguments as a spec. ``mixers``: one letter a stage, R(epMixer) or A(ttention).

    Attention stages carry a 7x7 RepCPE (every timm variant does); stage 0 never downsamples.
    ``mobileclip``: activation after the downsampling large-kernel conv; ``hd``: FastViTHD's
    LayerNorm2d in attention blocks and a stem without the scale branch.
    """
    stages = tuple(
        StageSpec(
            depth=d,
            width=w,
            token_mixer="attention" if m == "A" else "repmixer",
            mlp_ratio=mlp_ratio,
            downsample=i > 0,
            pos_enc="cpe" if m == "A" else "none",
            cpe_kernel=7,
            se_downsample=i in se,
        )
        for i, (d, w, m) in enumerate(zip(layers, widths, mixers))
    )
    return ArchSpec(
        stages=stages,
        lkc_act=mobileclip or hd,
        norm="layernorm2d" if hd else "batchnorm",
        stem_scale_branch=not hd,
        name=name,
    )


_W = (64, 128, 256, 512)

#: The references as data: (name, timm's name, timm's FastVit arguments, note); one constructor builds them.
_TABLE: List[Tuple[str, str, Dict[str, Any], str]] = [
    ("fastvit_t8", "fastvit_t8", dict(layers=(2, 2, 4, 2), widths=(48, 96, 192, 384), mlp_ratio=3, mixers="RRRR"),
     "FastViT-T8"),
    ("fastvit_t12", "fastvit_t12", dict(layers=(2, 2, 6, 2), widths=_W, mlp_ratio=3, mixers="RRRR"), "FastViT-T12"),
    ("fastvit_s12", "fastvit_s12", dict(layers=(2, 2, 6, 2), widths=_W, mlp_ratio=4, mixers="RRRR"), "FastViT-S12"),
    ("fastvit_sa12", "fastvit_sa12", dict(layers=(2, 2, 6, 2), widths=_W, mlp_ratio=4, mixers="RRRA"),
     "FastViT-SA12: attention in the last stage"),
    ("fastvit_sa24", "fastvit_sa24", dict(layers=(4, 4, 12, 4), widths=_W, mlp_ratio=4, mixers="RRRA"), "FastViT-SA24"),
    ("fastvit_sa36", "fastvit_sa36", dict(layers=(6, 6, 18, 6), widths=_W, mlp_ratio=4, mixers="RRRA"), "FastViT-SA36"),
    ("fastvit_ma36", "fastvit_ma36", dict(layers=(6, 6, 18, 6), widths=(76, 152, 304, 608), mlp_ratio=4, mixers="RRRA"),
     "FastViT-MA36"),
    ("fastvit_mci0", "fastvit_mci0", dict(layers=(2, 6, 10, 2), widths=_W, mlp_ratio=3, mixers="RRRA", se=(2, 3),
                                          mobileclip=True), "MobileCLIP MCi0 image encoder"),
    ("fastvit_mci1", "fastvit_mci1", dict(layers=(4, 12, 20, 4), widths=_W, mlp_ratio=3, mixers="RRRA", se=(2, 3),
                                          mobileclip=True), "MobileCLIP MCi1 image encoder"),
    ("fastvit_mci2", "fastvit_mci2", dict(layers=(4, 12, 24, 4), widths=(80, 160, 320, 640), mlp_ratio=3, mixers="RRRA",
                                          se=(2, 3), mobileclip=True), "MobileCLIP MCi2 image encoder"),
    ("fastvithd", "fastvit_mci3", dict(layers=(2, 12, 24, 4, 2), widths=(96, 192, 384, 768, 1536), mlp_ratio=4,
                                       mixers="RRRAA", hd=True),
     "FastVLM's FastViTHD (MCi3): 3 RepMixer + 2 attention stages, output stride 64"),
    ("fastvit_mci4", "fastvit_mci4", dict(layers=(2, 12, 24, 4, 4), widths=(128, 256, 512, 1024, 2048), mlp_ratio=4,
                                          mixers="RRRAA", hd=True), "MobileCLIP2 MCi4: the wider five-stage design"),
]

REFERENCES: Dict[str, Reference] = {
    name: Reference(name, timm_name, _fastvit(name, **args), note) for name, timm_name, args, note in _TABLE
}

#: timm's own names accepted too.
_ALIASES = {"fastvit_mci3": "fastvithd"}


def get_reference(name: str) -> Reference:
    key = _ALIASES.get(name, name)
    if key not in REFERENCES:
        raise ConfigError("reference", f"unknown reference {name!r}; known: {', '.join(REFERENCES)}")
    return REFERENCES[key]


def load_spec(name_or_path: str) -> Encoder:
    """A reference name (``fastvithd``), the path of a spec YAML file, or ``timm:MODEL`` (a timm model as a
    reference encoder, :class:`~archsearch.encoders.TimmEncoder`)."""
    from pathlib import Path

    from .encoders import TimmEncoder, is_timm_name

    if is_timm_name(name_or_path):
        return TimmEncoder.parse(name_or_path)
    looks_like_file = name_or_path.endswith((".yaml", ".yml")) or "/" in name_or_path
    if looks_like_file or Path(name_or_path).is_file():
        return ArchSpec.load(name_or_path)
    try:
        return get_reference(name_or_path).spec
    except ConfigError:
        raise ConfigError(
            "SPEC", f"{name_or_path!r} is neither a reference ({', '.join(REFERENCES)}) nor a spec YAML file"
        ) from None
