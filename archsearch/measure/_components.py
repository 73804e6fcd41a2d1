"""What a latency table is made of: a spec's components (stem, patch embeddings, positional encodings,
one block per stage configuration and input size, final conv), each built in deploy form by the model's
own builder functions, and the probe every component is timed against (:mod:`.predictor`)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

import torch
import torch.nn as nn

from ..build import build_final_conv, build_stage, build_stem, deploy_model, example_input
from ..spec import ArchSpec, Resolution, parse_resolution
from .latency import LatencyConfig, _example

__all__ = ["Component", "components", "probe"]


@dataclass(frozen=True)
class Component:
    key: str
    count: int
    #: Builds (deploy-form module, example input); not part of identity.
    make: Callable[[], Tuple[nn.Module, torch.Tensor]] = field(compare=False, repr=False)


def components(spec: ArchSpec, resolution: Resolution) -> List[Component]:
    """The table entries a spec at a resolution is made of, with how many times each occurs."""
    hw = parse_resolution(resolution)
    h, w = hw
    out = [Component(f"stem:{spec.in_chans}>{spec.stages[0].width}:sb{int(spec.stem_scale_branch)}:{h}x{w}", 1,
                     lambda: (build_stem(spec, inference_mode=True), example_input(spec.in_chans, hw)))]
    grid_in = spec.stem_grid(hw)
    dim_in = spec.stages[0].width
    for stage, grid in zip(spec.stages, spec.stage_grids(hw)):
        out += _stage_components(spec, stage, dim_in, grid_in, grid)
        grid_in, dim_in = grid, stage.width
    if spec.final_conv:
        g = grid_in
        out.append(Component(f"final:{dim_in}>{spec.out_channels}:{g[0]}x{g[1]}", 1,
                             lambda: (build_final_conv(spec, inference_mode=True), example_input(spec.stages[-1].width, g))))
    return out


def _stage_components(spec: ArchSpec, stage, dim_in: int, grid_in: Tuple[int, int], grid: Tuple[int, int]) -> List[Component]:
    """One stage's entries: its downsampling embedding (if any), its positional encoding (if any), one block."""
    one = dataclasses.replace(stage, depth=1)

    def piece(attr: str, c_in: int = dim_in, g: Tuple[int, int] = grid_in, idx: Optional[int] = None):
        def make() -> Tuple[nn.Module, torch.Tensor]:
            torch.manual_seed(0)
            module = getattr(build_stage(spec, one, dim_in, [0.0], inference_mode=True), attr)
            return (module[idx] if idx is not None else module), example_input(c_in, g)

        return make

    out = []
    if stage.downsample or dim_in != stage.width:
        out.append(Component(f"embed:{dim_in}>{stage.width}:s{2 if stage.downsample else 1}:p{spec.down_patch_size}"
                             f":se{int(stage.se_downsample)}:act{int(spec.lkc_act)}:{grid_in[0]}x{grid_in[1]}",
                             1, piece("downsample")))
    if stage.pos_enc != "none":
        out.append(Component(f"{stage.pos_enc}:w{stage.width}:k{stage.cpe_kernel}:{grid[0]}x{grid[1]}", 1,
                             piece("pos_emb", c_in=stage.width, g=grid)))
    mixer = (f"attention:{spec.norm}:hd{spec.head_dim}" if stage.token_mixer == "attention"
             else f"repmixer:k{spec.repmixer_kernel}")
    out.append(Component(f"block:{mixer}:w{stage.width}:r{stage.mlp_ratio:g}:ls{int(spec.layer_scale)}:{grid[0]}x{grid[1]}",
                         stage.depth, piece("blocks", c_in=stage.width, g=grid, idx=0)))
    return out


def probe() -> Tuple[nn.Module, torch.Tensor]:
    """The fixed reference workload of the ``relative`` table: the whole deploy FastViT-T8 at 256 px.

    A whole network, not one block: other tenants slow cache- and bandwidth-hungry whole networks more
    than one block whose weights stay in cache, so a one-block probe let the ratios drift by ~20%.
    """
    from ..references import get_reference

    spec = get_reference("fastvit_t8").spec
    return deploy_model(spec), _example(spec, (256, 256), LatencyConfig(threads=1))
