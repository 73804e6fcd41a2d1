"""Offline data for the proxies: real Fashion-MNIST images, a built-in digit canvas, or any ImageFolder.

``FashionMNIST`` reads the IDX files of Debian's ``dataset-fashion-mnist`` (70,000 real 28x28 product
photos, 10 classes; nothing is downloaded): upscaled to the input side (``fashion-mnist``), or small on a
cluttered canvas (``fashion-mnist-canvas``) so that resolution and downsampling matter. Zero-cost proxies
are known to invert on synthetic data and to rank well on real images (White et al., 2022), so the
fidelity study and the shipped searches use the real images.

``DigitCanvas`` puts one of scikit-learn's bundled 8x8 handwritten digits (real scans, 1797 of them,
shipped inside the package) small, at a random place, on a large cluttered canvas: the label is
readable only where resolution and downsampling keep fine detail, the situation FastVLM targets with
text-rich images. Deterministic for a seed, any canvas size, nothing downloaded.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import ConfigError
from ..options import DATA_SET_NAMES

__all__ = [
    "DATA_SETS", "FASHION_MNIST_ROOT", "DigitCanvas", "FashionMNIST", "fashion_mnist_arrays", "image_folder", "load_data",
    "read_idx",
]

_DIGITS = None


def _digits() -> Tuple[np.ndarray, np.ndarray]:
    global _DIGITS
    if _DIGITS is None:
        from sklearn.datasets import load_digits

        d = load_digits()
        _DIGITS = (d.images.astype(np.float32) / 16.0, d.target.astype(np.int64))
    return _DIGITS


class DigitCanvas(Dataset):
    """``n`` images of ``canvas`` x ``canvas`` px with one ``digit_px`` digit and ``clutter`` distractors.

    The split decides which scanned digits are used (train: the first 1400, val: the other 397), so
    validation digits are unseen writers' strokes, not re-placed training images.
    """

    num_classes = 10

    def __init__(self, n: int, *, canvas: int = 64, digit_px: int = 16, clutter: int = 6, split: str = "train",
                 seed: int = 0) -> None:
        if split not in ("train", "val"):
            raise ConfigError("split", f"{split!r} is not one of: train, val")
        if not 8 <= digit_px <= canvas:
            raise ConfigError("digit_px", f"must be within 8..canvas ({canvas}), got {digit_px}")
        self.n, self.canvas, self.digit_px, self.clutter, self.seed = n, canvas, digit_px, clutter, seed
        images, labels = _digits()
        idx = np.arange(1400) if split == "train" else np.arange(1400, len(images))
        self.images, self.labels = images[idx], labels[idx]
        self.offset = 0 if split == "train" else 10_000_000

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, int]:
        rng = np.random.default_rng((self.seed, self.offset + i))
        c, d = self.canvas, self.digit_px
        img = rng.normal(0.0, 0.08, size=(3, c, c)).astype(np.float32)
        # Clutter: strokes and blobs as bright as the digit, so thresholding cannot find it.
        for _ in range(self.clutter):
            h, w = rng.integers(1, max(2, d // 3), size=2) if rng.random() < 0.5 else rng.integers(2, d, size=2)
            y, x = rng.integers(0, c - h + 1), rng.integers(0, c - w + 1)
            img[:, y:y + h, x:x + w] += rng.uniform(0.3, 1.0) * rng.uniform(0.5, 1.0, size=(3, 1, 1)).astype(np.float32)
        k = rng.integers(len(self.images))
        digit = torch.nn.functional.interpolate(
            torch.from_numpy(self.images[k])[None, None], size=(d, d), mode="bilinear", align_corners=False
        )[0, 0].numpy()
        y, x = rng.integers(0, c - d + 1, size=2)
        tint = rng.uniform(0.7, 1.0, size=(3, 1, 1)).astype(np.float32)
        img[:, y:y + d, x:x + d] = np.maximum(img[:, y:y + d, x:x + d], digit[None] * tint)
        return torch.from_numpy(np.clip(img, -1.0, 2.0)), int(self.labels[k])


#: The most pixels an ImageFolder image may declare (PIL's own bomb check warns at 89 M and fails at twice that).
MAX_IMAGE_PIXELS = 64 << 20


def _load_image(path: str):
    """One image as RGB; a damaged, truncated or oversized file is a one-line ConfigError naming it. The size
    is checked from the header, before anything is decoded, so a 100000x100000 PNG costs no memory."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            w, h = img.size
            if w * h > MAX_IMAGE_PIXELS:
                raise ConfigError("data", f"{path}: {w}x{h} pixels, more than the {MAX_IMAGE_PIXELS} an image here may have")
            return img.convert("RGB")
    except ConfigError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ConfigError("data", f"{path}: not a readable image ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None


def image_folder(path: str | Path, resolution: int) -> Dataset:
    """Any ``root/class_name/*.jpg`` tree, resized to ``resolution`` (torchvision's ImageFolder)."""
    from torchvision import datasets, transforms

    if not Path(path).is_dir():
        raise ConfigError("data", f"{path}: not a directory of class folders")
    tf = transforms.Compose([transforms.Resize((resolution, resolution)), transforms.ToTensor()])
    try:
        return datasets.ImageFolder(str(path), transform=tf, loader=_load_image)
    except (FileNotFoundError, RuntimeError) as e:
        raise ConfigError("data", f"{path}: {e}") from None


# --- Fashion-MNIST (real images, offline) -------------------------------------------------------------

#: Where Debian's ``dataset-fashion-mnist`` puts the IDX files.
FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_INSTALL = "apt-get install dataset-fashion-mnist"
_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
#: Pixel mean and standard deviation of Fashion-MNIST's training images (on a 0..1 scale).
_FASHION_MEAN, _FASHION_STD = 0.2860, 0.3530
#: IDX type codes -> numpy dtypes (big-endian where it matters), from the format's definition.
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
#: Fashion-MNIST's largest file holds 47 MB: far more is no data set of ours (or a gzip bomb).
_IDX_MAX_BYTES = 256 << 20


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (LeCun's MNIST format, plain or gzipped) as a numpy array.

    Layout: two zero bytes, a type code, the number of dimensions, each dimension as a big-endian
    uint32, then the data. The header is read first: a body larger than ``_IDX_MAX_BYTES`` is refused
    before it is read or decompressed (a gzip bomb costs nothing), and the body is read in chunks into one
    buffer of the declared size. A file that breaks the layout is a :class:`ConfigError` naming the file.
    """
    import gzip
    import zlib

    path = Path(path)
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    try:
        with (gzip.open if gzipped else open)(path, "rb") as f:
            magic = f.read(4)
            if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_TYPES:
                raise ConfigError("data_root", f"{path}: not an IDX file (bad magic number)")
            dtype, ndim = np.dtype(_IDX_TYPES[magic[2]]), magic[3]
            dims = f.read(4 * ndim)
            if ndim == 0 or len(dims) < 4 * ndim:
                raise ConfigError("data_root", f"{path}: truncated IDX header")
            shape = tuple(int.from_bytes(dims[4 * i: 4 * i + 4], "big") for i in range(ndim))
            size = int(np.prod(shape, dtype=object)) * dtype.itemsize
            if size > _IDX_MAX_BYTES:
                raise ConfigError("data_root", f"{path}: its header declares {shape} of {dtype}, more than "
                                               f"{_IDX_MAX_BYTES >> 20} MiB of data; refusing it")
            body = bytearray(size)
            view, got = memoryview(body), 0
            while got < size:
                n = f.readinto(view[got: got + (1 << 20)])
                if not n:
                    break
                got += n
            extra = len(f.read(1))
    except (OSError, EOFError, zlib.error) as e:
        raise ConfigError("data_root", f"{path}: damaged gzip file ({type(e).__name__}: {e})") from None
    if got != size or extra:
        raise ConfigError("data_root", f"{path}: header says {shape} of {dtype}, but the file holds "
                                       f"{'fewer' if got < size else 'more'} data bytes")
    return np.frombuffer(bytes(body), dtype=dtype).reshape(shape)


def _idx_file(root: Path, name: str) -> Path:
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise ConfigError("data_root", f"{root}: no Fashion-MNIST file {name}[.gz]; install the data set with "
                                   f"`{FASHION_MNIST_INSTALL}` or give --data-root a directory that holds it")


def fashion_mnist_arrays(split: str, root: Optional[str | Path] = None) -> Tuple[np.ndarray, np.ndarray]:
    """``(images uint8 [N, 28, 28], labels int64 [N])`` of the ``train`` (60k) or ``val`` (the 10k test) split.

    Read once per process and kept (47 MB for both splits): a fidelity study trains hundreds of times.
    """
    return _fashion_mnist_arrays(split, str(Path(root or FASHION_MNIST_ROOT)))


@functools.lru_cache(maxsize=4)
def _fashion_mnist_arrays(split: str, root: str) -> Tuple[np.ndarray, np.ndarray]:
    if split not in _FASHION_FILES:
        raise ConfigError("split", f"{split!r} is not one of: {', '.join(_FASHION_FILES)}")
    base = Path(root)
    images_name, labels_name = _FASHION_FILES[split]
    images, labels = read_idx(_idx_file(base, images_name)), read_idx(_idx_file(base, labels_name))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ConfigError("data_root", f"{base}: images {images.shape} and labels {labels.shape} do not pair up")
    return images.astype(np.uint8, copy=False), labels.astype(np.int64)


class FashionMNIST(Dataset):
    """Real 28x28 product photos (10 classes) at ``resolution``, as a whole image or a small object.

    ``canvas=False``: the photo upscaled to the full ``resolution``. ``canvas=True``: the photo at
    ``object_px`` at a random place on a noisy canvas with ``clutter`` bright bars, like
    :class:`DigitCanvas`, so that resolution and downsampling decide whether its detail survives.
    The first ``n`` images of a fixed shuffle of the split are used (the same images for every seed:
    the seed varies the training, not the data). Images are prepared once, as uint8, at construction.
    """

    num_classes = 10
    in_chans = 3

    def __init__(self, n: int, *, resolution: int = 64, split: str = "train", canvas: bool = False,
                 object_px: Optional[int] = None, clutter: int = 2, root: Optional[str | Path] = None) -> None:
        self.images, self.labels = _prepared(n, resolution, split, canvas, object_px, clutter,
                                             str(Path(root or FASHION_MNIST_ROOT)))
        self.resolution, self.canvas = resolution, canvas

    @staticmethod
    def on_canvas(objects: np.ndarray, c: int, clutter: int, split: str) -> torch.Tensor:
        """Each object at a random place on a noisy ``c`` x ``c`` canvas with ``clutter`` bright bars."""
        rng = np.random.default_rng((7, 0 if split == "train" else 1))
        n, d = len(objects), objects.shape[-1]
        out = np.clip(rng.normal(0.1, 0.05, size=(n, 1, c, c)), 0, 1).astype(np.float32)
        for i in range(n):
            for _ in range(clutter):
                h, w = rng.integers(1, max(2, d // 3) + 1), rng.integers(2, d + 1)
                if rng.random() < 0.5:
                    h, w = w, h
                y, x = rng.integers(0, c - h + 1), rng.integers(0, c - w + 1)
                out[i, 0, y:y + h, x:x + w] = rng.uniform(0.3, 1.0)
            y, x = rng.integers(0, c - d + 1, size=2)
            out[i, 0, y:y + d, x:x + d] = np.maximum(out[i, 0, y:y + d, x:x + d], objects[i])
        return torch.from_numpy(out)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, int]:
        x = (self.images[i].float() / 255.0 - _FASHION_MEAN) / _FASHION_STD
        return x.expand(self.in_chans, -1, -1), int(self.labels[i])


@functools.lru_cache(maxsize=8)
def _prepared(n: int, resolution: int, split: str, canvas: bool, object_px: Optional[int], clutter: int,
              root: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """uint8 images [n, 1, res, res] and labels of a fixed subset, kept per process (studies train many times)."""
    images, labels = fashion_mnist_arrays(split, root)
    if not 1 <= n <= len(images):
        raise ConfigError("train_size" if split == "train" else "val_size",
                          f"must be within 1..{len(images)} for the {split} split, got {n}")
    order = np.random.default_rng(12345).permutation(len(images))[:n]
    small = torch.from_numpy(images[order].astype(np.float32) / 255.0)[:, None]
    side = resolution if not canvas else min(resolution, object_px or max(8, resolution // 2))
    scaled = torch.cat([torch.nn.functional.interpolate(chunk, size=(side, side), mode="bilinear", align_corners=False)
                        for chunk in small.split(2048)]).clamp_(0, 1)
    if canvas:
        scaled = FashionMNIST.on_canvas(scaled[:, 0].numpy(), resolution, clutter, split)
    return (scaled * 255).round_().to(torch.uint8), torch.from_numpy(labels[order])


def _digit_sets(cfg, train_size: int, val_size: int):
    common = dict(canvas=cfg.resolution, digit_px=min(cfg.digit_px, cfg.resolution), clutter=cfg.clutter, seed=cfg.seed)
    return DigitCanvas(train_size, split="train", **common), DigitCanvas(val_size, split="val", **common)


def _fashion_sets(canvas: bool):
    def make(cfg, train_size: int, val_size: int):
        common = dict(resolution=cfg.resolution, canvas=canvas, clutter=cfg.clutter, root=cfg.data_root)
        return FashionMNIST(train_size, split="train", **common), FashionMNIST(val_size, split="val", **common)

    return make


def _glyph_sets(cfg, train_size: int, val_size: int):
    from .glyphs import Glyphs

    return Glyphs(train_size, side=cfg.resolution, split="train"), Glyphs(val_size, side=cfg.resolution, split="val")


#: Built-in data sets by name (``data:`` in the proxies' configs); anything else is an ImageFolder root.
DATA_SETS = {
    "glyphs": _glyph_sets,
    "digits": _digit_sets,
    "fashion-mnist": _fashion_sets(canvas=False),
    "fashion-mnist-canvas": _fashion_sets(canvas=True),
}
assert sorted(DATA_SETS) == sorted(DATA_SET_NAMES)


def load_data(cfg, train_size: int, val_size: int) -> Tuple[Dataset, Dataset, int]:
    """``(train, val, num_classes)`` for a proxy config (its ``data``, ``data_root``, ``resolution``, ...); sets that
    would not fit in memory are refused before anything is allocated."""
    if cfg.data in DATA_SETS:
        from ..build import memory_limit_bytes

        need, limit = (train_size + val_size) * cfg.resolution ** 2, memory_limit_bytes()  # one uint8 byte a pixel
        if need > limit and cfg.data != "glyphs":  # glyphs larger than its cache budget are rendered as a stream
            raise ConfigError("train_size" if train_size >= val_size else "val_size",
                              f"{train_size} + {val_size} images at {cfg.resolution} px need about {need / 2**30:.1f} GB, "
                              f"more than the {limit / 2**30:.1f} GB allowed here (ARCHSEARCH_MAX_MEMORY_GB)")
        train, val = DATA_SETS[cfg.data](cfg, train_size, val_size)
        return train, val, 10
    root = Path(cfg.data)
    train, val = image_folder(root / "train", cfg.resolution), image_folder(root / "val", cfg.resolution)
    return train, val, len(train.classes)
