"""The glyph scene cache heals: a damaged entry is a missing one, a cache that cannot be written is named once and
the run goes on, and sizes that cannot fit are refused before anything is allocated."""
from __future__ import annotations

import errno
import logging

import numpy as np
import pytest

from archsearch.proxy import glyphs
from archsearch.proxy.glyphs import Glyphs

from ..conftest import run_cli


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHSEARCH_CACHE_DIR", str(tmp_path / "cache"))
    glyphs._images.cache_clear()
    yield tmp_path / "cache" / "data"
    glyphs._images.cache_clear()


def test_a_damaged_cache_file_is_rendered_again_and_replaced(cache):
    first = Glyphs(8, side=32).images.copy()
    (path,) = cache.glob("glyphs-*.npz")
    with open(path, "r+b") as f:  # `truncate -s 300`: a zip cut short raises BadZipFile, not OSError
        f.truncate(300)
    glyphs._images.cache_clear()
    again = Glyphs(8, side=32).images
    assert np.array_equal(first, again)
    with np.load(path) as z:  # replaced by a whole file
        assert z["images"].shape == (8, 32, 32)


def test_a_cache_that_cannot_be_written_is_named_and_the_run_goes_on(cache, caplog):
    cache.parent.mkdir(parents=True)
    cache.write_text("a file where the cache directory should be")
    with caplog.at_level(logging.INFO, logger="archsearch"):
        images = Glyphs(8, side=32).images
    assert images.shape == (8, 32, 32)
    assert any("cannot cache glyph scenes" in r.getMessage() for r in caplog.records)
    assert not any("cached in" in r.getMessage() for r in caplog.records)


def test_a_full_disk_leaves_no_temporary_file(cache, monkeypatch, caplog):
    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    with caplog.at_level(logging.WARNING, logger="archsearch"):
        assert Glyphs(8, side=32).images.shape == (8, 32, 32)
    assert "No space left on device" in caplog.text
    assert not list(cache.glob("*")) if cache.exists() else True


@pytest.mark.parametrize("override, key", [
    ("measure.train.min_side=100000", "min_side"),
    ("measure.train.train_size=1000000000000", "train_size"),
    ("measure.train.resolution=100000", "resolution"),
])
def test_sizes_that_cannot_fit_are_refused_before_any_allocation(override, key):
    result = run_cli(["measure", "fastvit_t8", "-r", "256", "-m", "train_top1", "measure.train.data=glyphs", override])
    assert result.returncode == 2 and key in result.stderr and "MemoryError" not in result.stderr


def test_a_data_set_larger_than_memory_is_refused_by_its_size(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHSEARCH_MAX_MEMORY_GB", "1")
    monkeypatch.setenv("ARCHSEARCH_CACHE_DIR", str(tmp_path))
    # Fashion-MNIST is loaded into memory whole (glyph sets that large are rendered as a stream instead).
    result = run_cli(["proxy", "fastvit_t8", "--kind", "train", "--data", "fashion-mnist", "--resolution", "512", "--steps", "1"])
    assert result.returncode == 2 and "GB allowed here" in result.stderr, result.stderr


def test_a_set_too_large_to_cache_is_rendered_as_a_stream_with_the_same_images(cache, monkeypatch):
    cached = Glyphs(4, side=32)
    monkeypatch.setattr(glyphs, "STREAM_BYTES", 4 * 32 * 32 - 1)
    streamed = Glyphs(4, side=32, split="train")
    assert streamed.stream and not cached.stream and len(streamed) == 4
    for i in range(4):
        a, la = cached[i]
        b, lb = streamed[i]
        assert la == lb and bool((a == b).all())


def test_data_workers_change_how_data_loads_not_the_cache_key():
    from archsearch.options import TrainProxyConfig

    assert TrainProxyConfig(data_workers=8).cache_key() == TrainProxyConfig().cache_key()
    with pytest.raises(Exception, match="data_workers"):
        TrainProxyConfig(data_workers=-1)
