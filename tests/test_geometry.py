"""The proxy geometry: which network a proxy judges for a candidate and on which side, as one object."""
import dataclasses

import pytest

from archsearch.errors import ConfigError
from archsearch.geometry import GEOMETRIES, ProxyGeometry
from archsearch.options import ProxyConfig, TrainProxyConfig
from archsearch.references import get_reference

HD = get_reference("fastvithd").spec
TWIN = dataclasses.replace(HD, stages=HD.stages[:-1] + (dataclasses.replace(HD.stages[-1], downsample=False),))


@pytest.mark.parametrize("geometry, side, grid", [("copy", 128, (2, 2)), ("late_grid", 128, (16, 16)),
                                                  ("reference", 256, (16, 16))])
def test_fastvithd_at_1024_px_under_each_geometry(geometry, side, grid):
    cfg = TrainProxyConfig(data="glyphs", geometry=geometry).for_candidate(1024)
    assert cfg.resolution == side and cfg.candidate_resolution == 1024
    net = cfg.scaled(HD)
    assert net.grid(side) == grid
    assert net.widths == HD.scaled(width_mult=0.25, max_depth=4).widths  # only strides change, never widths


def test_the_deployed_grid_geometry_keeps_the_stride_difference_where_it_is():
    geo = ProxyGeometry("late_grid", side_scale=0.125)
    hd, twin = geo.network(HD, 1024), geo.network(TWIN, 1024)
    hd_grids, twin_grids = hd.stage_grids(128), twin.stage_grids(128)
    # The twin differs from FastViTHD only in its last stage, deployed and in the proxy alike.
    assert hd_grids[:-1] == twin_grids[:-1] and hd_grids[-1] == (16, 16) and twin_grids[-1] == (32, 32)
    assert HD.stage_grids(1024)[-2:] == hd_grids[-2:]
    assert geo.grids(TWIN, 1024) == {"deployed_grid": [32, 32], "proxy_grid": [32, 32], "grid_ratio": 1.0}


def test_today_s_copy_keeps_the_strides_and_says_its_grid_is_one_64th():
    geo = ProxyGeometry("copy", side_scale=0.125)
    assert geo.network(HD, 1024).output_stride == HD.output_stride
    assert geo.grids(HD, 1024)["grid_ratio"] == pytest.approx(1 / 64, abs=1e-4)


def test_a_spec_with_fewer_downsamplings_than_the_shrink_loses_them_all():
    stride16 = dataclasses.replace(HD, stages=tuple(dataclasses.replace(s, downsample=i in (1, 2)) for i,
                                                    s in enumerate(HD.stages)))
    net = ProxyGeometry("late_grid", side_scale=0.125).network(stride16, 512)
    assert net.output_stride == 4 and not any(s.downsample for s in net.stages)


def test_without_a_side_rule_the_side_is_fixed_and_nothing_is_dropped():
    geo = ProxyGeometry("late_grid", side_scale=None, fixed_side=96)
    assert geo.side(1024) == 96 and geo.drops(1024) == 0
    cfg = TrainProxyConfig(data="fashion-mnist", geometry="late_grid").for_candidate(1024)
    assert cfg.resolution == 128 and cfg.scaled(HD).output_stride == HD.output_stride


def test_an_unknown_geometry_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match="geometry.*one of"):
        TrainProxyConfig(geometry="crops")
    with pytest.raises(ConfigError, match="geometry"):
        ProxyGeometry("nope")


def test_the_geometry_and_the_candidate_are_in_the_cache_key_and_conditions():
    a = TrainProxyConfig(data="glyphs").for_candidate(1024).cache_key()
    b = TrainProxyConfig(data="glyphs", geometry="late_grid").for_candidate(1024).cache_key()
    assert a["geometry"] == "copy" and b["geometry"] == "late_grid" and a != b
    assert a["candidate_resolution"] == 1024
    z = dataclasses.asdict(ProxyConfig(data="glyphs", geometry="reference").for_candidate(512))
    assert z["geometry"] == "reference" and z["resolution"] == 128


def test_every_named_geometry_describes_itself():
    for name in GEOMETRIES:
        d = ProxyGeometry(name, side_scale=0.125).describe()
        assert d["geometry"] == name and d["description"] and "resolution" in d["input_side"]
