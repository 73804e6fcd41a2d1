"""``glyphs``: a detail-reading task whose scene does not depend on the pixel side.

FastViTHD trades resolution (finer detail) against downsampling (fewer tokens). Fashion-MNIST cannot
show that trade-off: its 28x28 photos hold no detail that a larger side could reveal. Here every image
is a *scene* in normalised coordinates: a few copies of one digit (the label, 10 classes) and distractor
letters, each a small fraction of the side tall, at random places, in random vector fonts, over a noisy
background. The same scene is rasterised at any side, so a larger side shows the same glyphs with more
pixels each: at 32 px a glyph is about 3 px tall and barely legible, at 128 px about 12 px.

Rendering: glyph sprites are drawn once per process from the TrueType fonts matplotlib ships (DejaVu,
STIX, Computer Modern: always installed with the project), each scene is composed at a supersampled side
and area-downsampled, then pixel noise is added. Training and validation use disjoint fonts (the
validation fonts are held out) and disjoint scene streams, so nothing seen in training is shown again
at validation. Images are deterministic for (seed, split, index, side) and cached on disk per
(task, split, side, count): a fidelity study trains hundreds of times on the same images.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from .. import _interrupts

__all__ = ["GLYPHS_VERSION", "GlyphTask", "Glyphs", "render_scene", "scene"]

_log = logging.getLogger("archsearch")

#: Bumped when rendering changes, so that cached images of an older renderer are never reused.
GLYPHS_VERSION = 1

DIGITS = "0123456789"
#: Distractors: letters that no digit resembles in the fonts used (no O, I, l, S, Z, B, G, Q, D, T).
LETTERS = "ACEFHKLMNPRUVWXY"

#: Training and held-out validation fonts (file names under matplotlib's ``mpl-data/fonts/ttf``): each
#: validation font is a style sibling of training fonts, so reading them is within reach.
TRAIN_FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
               "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf",
               "DejaVuSerif-Italic.ttf", "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf",
               "cmr10.ttf", "cmb10.ttf", "cmtt10.ttf")
VAL_FONTS = ("DejaVuSansMono-Oblique.ttf", "DejaVuSerif-BoldItalic.ttf", "STIXGeneralBolIta.ttf", "cmss10.ttf",
             "cmti10.ttf")

#: Sprites are drawn this many pixels tall (then resized down to the glyph's size on the canvas).
_SPRITE_PX = 64
#: Scenes are composed on a canvas of at least this side, then area-downsampled to the requested side.
_CANVAS_PX = 256


@dataclass(frozen=True)
class GlyphTask:
    """What a scene holds, in fractions of the image side (so every side sees the same scene)."""

    #: Copies of the label digit, letters (distractors), and digits of other classes (decoys) per scene.
    targets: int = 3
    letters: int = 3
    decoys: int = 0
    #: Glyph height as a fraction of the side, drawn uniformly from [size_min, size_max]: at the CPU tier's
    #: sides (32-128 px) 4-5 px (barely legible) to 15-20 px. Pilot (FastViT-T8, 64 px, 300 steps): 2
    #: targets among 6 letters at 8-11% stayed at chance; 3 among 3 at 12-16% reached 0.23.
    size_min: float = 0.12
    size_max: float = 0.16
    #: Pixel noise (standard deviation, on a 0..1 scale) added after downsampling.
    noise: float = 0.08
    #: Fixed data seed: the training seed varies initialisation and order, never the images.
    seed: int = 0

    def key(self) -> str:
        text = json.dumps({**dataclasses.asdict(self), "version": GLYPHS_VERSION}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def _font_dir() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


@functools.lru_cache(maxsize=2)
def _sprites(split: str) -> Tuple[Dict[str, List[np.ndarray]], int]:
    """Every digit and letter in every font of ``split``, as tight float32 masks ``_SPRITE_PX`` tall."""
    from PIL import Image, ImageDraw, ImageFont

    fonts = TRAIN_FONTS if split == "train" else VAL_FONTS
    out: Dict[str, List[np.ndarray]] = {c: [] for c in DIGITS + LETTERS}
    for name in fonts:
        font = ImageFont.truetype(str(_font_dir() / name), size=int(_SPRITE_PX * 1.3))
        for c in out:
            img = Image.new("L", (_SPRITE_PX * 3, _SPRITE_PX * 3), 0)
            ImageDraw.Draw(img).text((_SPRITE_PX // 2, _SPRITE_PX // 4), c, fill=255, font=font)
            a = np.asarray(img, dtype=np.float32) / 255.0
            rows, cols = np.nonzero(a.max(axis=1) > 0.05)[0], np.nonzero(a.max(axis=0) > 0.05)[0]
            out[c].append(a[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1])
    return out, len(fonts)


def scene(task: GlyphTask, split: str, index: int) -> Tuple[int, List[tuple]]:
    """The label and the glyphs of one scene: (char, font index, x, y, height, brightness), in fractions of
    the side. A function of (task, split, index) only: every side rasterises the same scene."""
    rng = np.random.default_rng((task.seed, 0 if split == "train" else 1, index))
    label = int(rng.integers(10))
    others = [d for d in DIGITS if d != str(label)]
    chars = ([str(label)] * task.targets + list(rng.choice(list(LETTERS), task.letters))
             + list(rng.choice(others, task.decoys)))
    n_fonts = len(TRAIN_FONTS if split == "train" else VAL_FONTS)
    glyphs = []
    for c in chars:
        h = float(rng.uniform(task.size_min, task.size_max))
        glyphs.append((c, int(rng.integers(n_fonts)), float(rng.uniform(0.02, 0.98 - h)),
                       float(rng.uniform(0.02, 0.98 - h)), h, float(rng.uniform(0.55, 1.0))))
    return label, glyphs


def render_scene(task: GlyphTask, split: str, index: int, side: int) -> Tuple[np.ndarray, int]:
    """One image (uint8 [side, side]) and its label."""
    from PIL import Image

    sprites, _ = _sprites(split)
    label, glyphs = scene(task, split, index)
    ss = max(1, -(-_CANVAS_PX // side))  # supersampling factor: the canvas is side * ss
    c = side * ss
    rng = np.random.default_rng((task.seed, 2 if split == "train" else 3, index, side))
    # A dim background with a smooth gradient, so that brightness alone does not find the glyphs.
    yy, xx = np.mgrid[0:c, 0:c].astype(np.float32) / c
    g = rng.uniform(-1, 1, size=3).astype(np.float32)
    canvas = 0.15 + 0.08 * (g[0] * xx + g[1] * yy + g[2] * xx * yy)
    for ch, font, x, y, h, bright in glyphs:
        sprite = sprites[ch][font]
        ph = max(1, round(h * c))
        pw = max(1, round(sprite.shape[1] * ph / sprite.shape[0]))
        small = np.asarray(Image.fromarray(sprite).resize((pw, ph), Image.BILINEAR), dtype=np.float32)
        top, left = round(y * c), round(x * c)
        region = canvas[top:top + ph, left:left + pw]
        np.maximum(region, small[: region.shape[0], : region.shape[1]] * bright, out=region)
    img = canvas.reshape(side, ss, side, ss).mean(axis=(1, 3))  # area downsampling
    img += rng.normal(0.0, task.noise, size=img.shape).astype(np.float32)
    return (np.clip(img, 0.0, 1.0) * 255).round().astype(np.uint8), label


def _cache_dir() -> Path:
    from ..measure.cache import default_cache_dir

    return default_cache_dir() / "data"


@functools.lru_cache(maxsize=8)
def _images(task: GlyphTask, split: str, side: int, n: int) -> Tuple[np.ndarray, np.ndarray]:
    """``n`` images of ``split`` at ``side`` and their labels, from the disk cache or rendered (and cached)."""
    path = _cache_dir() / f"glyphs-{task.key()}-{split}-{side}px-{n}.npz"
    if path.exists():
        try:
            with np.load(path) as z:
                images, labels = z["images"], z["labels"]
            if images.shape == (n, side, side) and labels.shape == (n,):
                return images, labels
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            pass  # a damaged or cut-short file is a missing one: rendered again and replaced (atomically, below)
    start = time.perf_counter()
    images = np.empty((n, side, side), dtype=np.uint8)
    labels = np.empty(n, dtype=np.int64)
    for i in range(n):
        if i % 256 == 0:
            _interrupts.check()
        images[i], labels[i] = render_scene(task, split, i, side)
    took = time.perf_counter() - start
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp.npz")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(tmp, images=images, labels=labels)
        tmp.replace(path)
        where = f"cached in {path}"
    except OSError as e:  # a read-only or full cache: the images are in memory, the run goes on without caching
        try:
            tmp.unlink()
        except OSError:
            pass
        where = "not cached"
        _log.warning(f"cannot cache glyph scenes in {path.parent} ({e.strerror or type(e).__name__}); going on without the cache")
    _log.info("rendered %d glyph scenes at %d px in %.1f s (%.2f ms each); %s", n, side, took, 1000 * took / n, where)
    return images, labels


#: Sets larger than this are rendered as a stream (each scene when it is read, never cached): 10,000 scenes at
#: 1024 px are 10 GB. The images are the same either way: a scene is a function of (task, split, index, side).
STREAM_BYTES = 1 << 30


class Glyphs(Dataset):
    """``n`` glyph scenes of ``split`` at ``side`` px, as 3-channel tensors normalised to mean 0: from the disk cache,
    or rendered per item when the set is larger than :data:`STREAM_BYTES` (use DataLoader workers to render them)."""

    num_classes = 10

    def __init__(self, n: int, *, side: int, split: str = "train", task: GlyphTask = GlyphTask()) -> None:
        self.n, self.side, self.split, self.task = n, side, split, task
        self.stream = n * side * side > STREAM_BYTES
        self.images: Optional[np.ndarray] = None
        self.labels: Optional[np.ndarray] = None
        if not self.stream:
            self.images, self.labels = _images(task, split, side, n)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, int]:
        if self.images is None or self.labels is None:
            image, label = render_scene(self.task, self.split, int(i), self.side)
        else:
            image, label = self.images[i], int(self.labels[i])
        x = torch.from_numpy(image.astype(np.float32) / 255.0)
        return ((x - 0.2) / 0.25).expand(3, -1, -1), int(label)
