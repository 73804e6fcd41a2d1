"""Real-image data offline: the IDX reader and Fashion-MNIST, on small IDX files the tests write."""
from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from archsearch.errors import ConfigError
from archsearch.options import TrainProxyConfig
from archsearch.proxy.data import FASHION_MNIST_INSTALL, FashionMNIST, fashion_mnist_arrays, load_data, read_idx

from ..conftest import idx_bytes as _idx
from ..conftest import write_fashion


def test_read_idx_plain_gzip_and_types(tmp_path):
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(_idx(a))
    (tmp_path / "a.gz").write_bytes(gzip.compress(_idx(a)))
    assert np.array_equal(read_idx(tmp_path / "a"), a) and np.array_equal(read_idx(tmp_path / "a.gz"), a)
    f = np.array([1.5, -2.0], dtype=np.float32)
    (tmp_path / "f").write_bytes(_idx(f, 0x0D))
    assert np.array_equal(read_idx(tmp_path / "f"), f)


@pytest.mark.parametrize("blob, match", [
    (b"\x01\x00\x08\x01\x00\x00\x00\x01\x05", "bad magic"),
    (b"\x00\x00\x08\x02\x00\x00", "truncated"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x09\x05", "header says"),
    (b"\x1f\x8b\x08\x00garbage", "damaged gzip"),
])
def test_read_idx_refuses_damaged_files(tmp_path, blob, match):
    (tmp_path / "bad").write_bytes(blob)
    with pytest.raises(ConfigError, match=match):
        read_idx(tmp_path / "bad")


def test_fashion_mnist_plain_and_canvas(tmp_path):
    write_fashion(tmp_path / "fm")
    images, labels = fashion_mnist_arrays("train", tmp_path / "fm")
    assert images.shape == (40, 28, 28) and images.dtype == np.uint8 and set(labels) == set(range(10))
    plain = FashionMNIST(30, resolution=64, root=tmp_path / "fm")
    x, y = plain[3]
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32 and 0 <= y < 10
    canvas = FashionMNIST(30, resolution=64, canvas=True, object_px=16, root=tmp_path / "fm")
    xc, yc = canvas[3]
    assert xc.shape == (3, 64, 64) and yc == y  # same image, same label: only the placement differs
    assert not torch.equal(x, xc)
    # The same subset for every call (the seed varies training, not the data).
    again = FashionMNIST(30, resolution=64, root=tmp_path / "fm")
    assert torch.equal(again[7][0], plain[7][0])
    with pytest.raises(ConfigError, match="train_size"):
        FashionMNIST(41, resolution=32, root=tmp_path / "fm")


def test_plain_files_and_load_data(tmp_path):
    write_fashion(tmp_path / "fm", gz=False)
    cfg = TrainProxyConfig(data="fashion-mnist", data_root=str(tmp_path / "fm"), resolution=32)
    train, val, classes = load_data(cfg, 40, 20)
    assert len(train) == 40 and len(val) == 20 and classes == 10


def test_missing_files_name_the_install_command(tmp_path):
    with pytest.raises(ConfigError, match="apt-get install dataset-fashion-mnist") as e:
        fashion_mnist_arrays("train", tmp_path)
    assert FASHION_MNIST_INSTALL in str(e.value) and "\n" not in str(e.value)
