"""The glyphs task: one scene at every side, deterministic images, a disk cache, held-out validation fonts,
and the side rule that makes accuracy follow the candidate's resolution."""
from __future__ import annotations

import pytest

import json
import subprocess
import sys

import numpy as np

from archsearch.options import TrainProxyConfig
from archsearch.proxy import glyphs
from archsearch.proxy.glyphs import GlyphTask, Glyphs, render_scene, scene


def test_the_scene_is_the_same_at_every_side_and_images_are_deterministic():
    task = GlyphTask()
    label, items = scene(task, "train", 7)
    assert 0 <= label <= 9 and sum(c == str(label) for c, *_ in items) >= task.targets
    for side in (32, 64, 128):
        a, la = render_scene(task, "train", 7, side)
        b, lb = render_scene(task, "train", 7, side)
        assert a.shape == (side, side) and a.dtype == np.uint8 and la == lb == label
        assert np.array_equal(a, b), "the same (seed, split, index, side) gives the same image"
    assert not np.array_equal(render_scene(task, "train", 8, 64)[0], render_scene(task, "train", 7, 64)[0])
    assert scene(task, "val", 7) != scene(task, "train", 7), "validation draws its own scenes"


def test_a_larger_side_shows_the_glyphs_with_more_pixels():
    # The glyphs are a fixed fraction of the side: the bright area grows with the side squared.
    task = GlyphTask(noise=0.0)
    areas = [(render_scene(task, "train", 3, side)[0] > 0.5 * 255).sum() for side in (32, 64, 128)]
    assert areas[0] < areas[1] < areas[2]


def test_validation_fonts_are_held_out():
    assert not set(glyphs.TRAIN_FONTS) & set(glyphs.VAL_FONTS)
    assert all((glyphs._font_dir() / f).is_file() for f in glyphs.TRAIN_FONTS + glyphs.VAL_FONTS)


def test_images_are_rendered_once_then_read_from_the_disk_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHSEARCH_CACHE_DIR", str(tmp_path))
    glyphs._images.cache_clear()
    data = Glyphs(6, side=32, split="val")
    files = list((tmp_path / "data").glob("glyphs-*-val-32px-6.npz"))
    assert len(files) == 1 and len(data) == 6
    x, y = data[0]
    assert tuple(x.shape) == (3, 32, 32) and 0 <= y <= 9
    glyphs._images.cache_clear()
    monkeypatch.setattr(glyphs, "render_scene", lambda *a: (_ for _ in ()).throw(AssertionError("rendered again")))
    assert np.array_equal(Glyphs(6, side=32, split="val").images, data.images)
    glyphs._images.cache_clear()


def test_the_side_rule_follows_the_candidate_resolution():
    t = TrainProxyConfig(data="glyphs")
    assert (t.for_candidate(256).resolution, t.for_candidate(1024).resolution) == (32, 128)
    assert t.for_candidate(1024).resolution_scale == 0.125, "the rule is explicit in the config (and the cache key)"
    assert TrainProxyConfig(data="glyphs", resolution_scale=1.0).for_candidate(512).resolution == 512
    assert TrainProxyConfig().for_candidate(1024).resolution == 128, "Fashion-MNIST keeps its fixed side"
    assert TrainProxyConfig(data="glyphs", min_side=48).for_candidate(256).resolution == 48


@pytest.mark.slow
def test_measure_names_the_input_side_it_trained(tmp_path):
    # The Done-when command, scaled down: two resolutions, two sides, named in each row's conditions.
    args = ["measure", "fastvit_t8", "-r", "256,512", "-m", "train_top1", "measure.train.data=glyphs", "train.steps=2",
            "train.train_size=64", "train.val_size=16", "train.batch_size=16", "train.width_mult=0.125", "train.max_depth=1",
            "--json"]
    proc = subprocess.run([sys.executable, "-m", "archsearch.cli", *args], capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "ARCHSEARCH_CACHE_DIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    sides = [r["train"]["input_side"] for r in rows]
    assert sides == [32, 64] and [r["train"]["resolution_scale"] for r in rows] == [0.125, 0.125]
