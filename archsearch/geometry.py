"""Proxy geometry: which network a proxy trains or scores for a candidate, and on which input side.

A proxy cannot afford the deployed encoder at its deployed resolution on this machine, so it judges a
smaller stand-in. *How* it shrinks decides what it can see. Today's copy (``copy``) narrows the widths,
caps the depths and shrinks the input side 8x but keeps every stride, so its token grid is 1/64 of the
deployed one: FastViTHD at 1024 px deploys 16x16 tokens, its copy at 128 px has 2x2, and a glyph that
spans two deployed tokens covers a quarter of one. Such a copy cannot judge an output stride. The
``deployed_grid`` stride rule turns the *earliest* downsamplings into stride 1 (a stride-1 patch
embedding, the width change kept), as many as the side was shrunk by, so that the last stages see the
deployed token grid while the input side stays small (EcoNAS, Zhou et al. 2020, on why a reduced input
must be checked against the full setting before it is trusted).

:class:`ProxyGeometry` is that rule as one value: stride rule, side rule and scaling. It is declared in the
proxy options (``geometry``: a name of :data:`GEOMETRIES`), resolved for a candidate by
:meth:`ProxyGeometry.network` and :meth:`ProxyGeometry.side`, and recorded with every result
(:meth:`ProxyGeometry.describe`). Torch-free: it maps one :class:`ArchSpec` to another.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

from .errors import ConfigError
from .spec import ArchSpec, parse_resolution

__all__ = ["GEOMETRIES", "STRIDE_RULES", "GeometryPreset", "ProxyGeometry", "geometry_names"]


def _keep(spec: ArchSpec, drops: int) -> ArchSpec:  # noqa: ARG001 - every rule takes the shrink
    return spec


def _deployed_grid(spec: ArchSpec, drops: int) -> ArchSpec:
    """The first ``drops`` downsampling stages open with a stride-1 patch embedding instead (their width
    change is kept: ``archsearch.build``'s stride-1 ``PatchEmbed``). A spec with fewer downsamplings
    than ``drops`` loses all of them; its grid is then still finer than the deployed one is coarse."""
    stages, left = [], drops
    for s in spec.stages:
        if s.downsample and left > 0:
            s, left = dataclasses.replace(s, downsample=False), left - 1
        stages.append(s)
    return dataclasses.replace(spec, stages=tuple(stages))


#: How a geometry treats the strides of the candidate, given how many factors of 2 its side was shrunk by.
STRIDE_RULES: Dict[str, Callable[[ArchSpec, int], ArchSpec]] = {"keep": _keep, "deployed_grid": _deployed_grid}


@dataclass(frozen=True)
class GeometryPreset:
    """A named geometry: its stride rule and its input side as a multiple of the data set's side rule."""

    strides: str
    side_factor: float
    description: str


#: The geometries an option may name. The side rule of the data set (``options.DATA_SIDE_SCALE``: 1/8 for
#: ``glyphs`` on this CPU tier) times ``side_factor`` gives the input side.
GEOMETRIES: Dict[str, GeometryPreset] = {
    "copy": GeometryPreset("keep", 1.0, "scaled copy, strides kept: input side x the data set's rule, so the token "
                                        "grid shrinks with it (1/64 of the deployed one at 1/8 of the side)"),
    "late_grid": GeometryPreset("deployed_grid", 1.0, "scaled copy at the same small side whose earliest "
                                                      "downsamplings are stride 1: its last stages see the deployed grid"),
    "reference": GeometryPreset("deployed_grid", 2.0, "scaled copy at twice the side, earliest downsamplings stride 1: "
                                                      "the deployed grid and 4x the pixels of each glyph"),
}


def geometry_names() -> Tuple[str, ...]:
    return tuple(GEOMETRIES)


@dataclass(frozen=True)
class ProxyGeometry:
    """The network a proxy judges for a candidate at ``resolution`` and its input side, as one value.

    ``side_scale`` None: a fixed input side (``fixed_side``), for data sets with no detail to gain.
    """

    name: str = "copy"
    side_scale: Optional[float] = None
    fixed_side: int = 128
    min_side: int = 32
    width_mult: float = 0.25
    max_depth: Optional[int] = 4
    round_to: int = 8

    def __post_init__(self) -> None:
        if self.name not in GEOMETRIES:
            raise ConfigError("geometry", f"{self.name!r} is not one of: {', '.join(GEOMETRIES)}")

    @property
    def preset(self) -> GeometryPreset:
        return GEOMETRIES[self.name]

    @property
    def scale(self) -> Optional[float]:
        """The input side as a factor of the candidate's resolution (None: a fixed side)."""
        return None if self.side_scale is None else self.side_scale * self.preset.side_factor

    def side(self, resolution: Optional[int]) -> int:
        """The input side for a candidate at ``resolution`` (the fixed side when there is no side rule)."""
        if self.scale is None or resolution is None:
            return self.fixed_side
        return max(self.min_side, round(self.scale * int(resolution)))

    def drops(self, resolution: Optional[int], side: Optional[int] = None) -> int:
        """Factors of 2 by which the input side (``side``, else this geometry's) is smaller than the candidate's
        resolution: 0 without a side rule or a resolution."""
        if resolution is None or (self.scale is None and side is None):
            return 0
        return max(0, round(math.log2(int(resolution) / (side or self.side(resolution)))))

    def network(self, spec: ArchSpec, resolution: Optional[int], side: Optional[int] = None) -> ArchSpec:
        """The spec a proxy trains or scores for ``spec`` deployed at ``resolution`` (on input ``side``)."""
        net = STRIDE_RULES[self.preset.strides](spec, self.drops(resolution, side))
        if self.width_mult == 1.0 and self.max_depth is None:
            return net
        return net.scaled(width_mult=self.width_mult, max_depth=self.max_depth, round_to=self.round_to)

    def grids(self, spec: ArchSpec, resolution: int) -> dict:
        """The proxy's token grid against the deployed one (what the geometry lets a proxy see)."""
        deployed = spec.grid(parse_resolution(resolution))
        proxy = self.network(spec, resolution).grid(self.side(resolution))
        return {"deployed_grid": list(deployed), "proxy_grid": list(proxy),
                "grid_ratio": round(proxy[0] * proxy[1] / max(1, deployed[0] * deployed[1]), 4)}

    def describe(self) -> dict:
        """What a report and a result's conditions name: the geometry and its rules."""
        side = "fixed" if self.scale is None else f"{self.scale:g} x resolution (at least {self.min_side} px)"
        return {"geometry": self.name, "strides": self.preset.strides, "input_side": side,
                "width_mult": self.width_mult, "max_depth": self.max_depth, "description": self.preset.description}
