"""Offline data for the training proxy: a built-in high-resolution task, or any ImageFolder.

``DigitCanvas`` puts one of scikit-learn's bundled 8x8 handwritten digits (real scans, 1797 of them,
shipped inside the package) small, at a random place, on a large cluttered canvas: the label is
readable only where resolution and downsampling keep fine detail, the situation FastVLM targets with
text-rich images. Deterministic for a seed, any canvas size, nothing downloaded.
"""
from __future__ import annotations

from pathlib import Path
from typing import Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import ConfigError

__all__ = ["DigitCanvas", "image_folder"]

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


def image_folder(path: str | Path, resolution: int) -> Dataset:
    """Any ``root/class_name/*.jpg`` tree, resized to ``resolution`` (torchvision's ImageFolder)."""
    from torchvision import datasets, transforms

    if not Path(path).is_dir():
        raise ConfigError("data", f"{path}: not a directory of class folders")
    tf = transforms.Compose([transforms.Resize((resolution, resolution)), transforms.ToTensor()])
    try:
        return datasets.ImageFolder(str(path), transform=tf)
    except (FileNotFoundError, RuntimeError) as e:
        raise ConfigError("data", f"{path}: {e}") from None
