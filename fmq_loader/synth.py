"""Synthetic image folders: JPEGs that compress like photos, for tests, examples and benchmarks.

Each image is smooth structure (two octaves of random colour fields, upsampled bicubically,
plus a soft-edged ellipse) with fine Gaussian-like noise on top, so its JPEG size and
decode cost resemble a photo's rather than a flat colour's (tiny, fast) or pure noise's
(huge, slow). Each class has its own base hue, so a model can learn the labels.

Layout: ``root/class_000/img_00000.jpg`` ... (the layout ``ImageFolder`` reads).
Images are deterministic for a given ``seed``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from .progress import Progress

__all__ = ["make_dataset", "make_image"]

_NOISE_MARGIN = 64


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}; e.g. {name}=10")
    return int(value)


def _check_size(size) -> tuple[int, int]:
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 8
                   for v in size)):
        raise ValueError(f"size must be (width, height), two ints >= 8, got {size!r}; "
                         "e.g. size=(500, 375)")
    return int(size[0]), int(size[1])


def _noise_tile(width: int, height: int, seed: int) -> np.ndarray:
    """A reusable noise tile; each image takes a random window of it (fast, not periodic)."""
    rng = np.random.default_rng([seed, 0xF00D])
    shape = (height + _NOISE_MARGIN, width + _NOISE_MARGIN, 3)
    return np.clip(rng.normal(0.0, 7.0, size=shape), -40, 40).astype(np.float32)


def make_image(rng: np.random.Generator, size: tuple[int, int], hue: np.ndarray,
               noise: np.ndarray | None = None) -> Image.Image:
    """Draw one photo-like RGB image.

    Args:
        rng: the generator to draw from.
        size: (width, height).
        hue: the class's base colour, 3 floats in [0, 255].
        noise: an optional noise tile at least (height+64, width+64, 3), from _noise_tile.

    Returns:
        an RGB ``PIL.Image`` of ``size``.
    """
    width, height = size
    img = np.empty((height, width, 3), np.float32)
    img[:] = hue
    for cells, amplitude in ((3, 70.0), (12, 30.0)):
        grid = rng.uniform(-amplitude, amplitude, size=(cells, cells * 4 // 3 + 1, 3))
        layer = Image.fromarray(np.clip(grid + 128, 0, 255).astype(np.uint8), "RGB")
        img += np.asarray(layer.resize((width, height), Image.Resampling.BICUBIC),
                          np.float32) - 128
    # a soft-edged object gives edges at several scales
    cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width
    ry, rx = rng.uniform(0.1, 0.35) * height, rng.uniform(0.1, 0.35) * width
    yy = ((np.arange(height, dtype=np.float32) - cy) / ry) ** 2
    xx = ((np.arange(width, dtype=np.float32) - cx) / rx) ** 2
    inside = np.clip((1.0 - (yy[:, None] + xx[None, :])) * 8.0, 0.0, 1.0)
    img += inside[:, :, None] * rng.uniform(-90, 90, size=3).astype(np.float32)
    if noise is None:
        noise = _noise_tile(width, height, int(rng.integers(1 << 30)))
    oy, ox = rng.integers(0, _NOISE_MARGIN, size=2)
    img += noise[oy:oy + height, ox:ox + width]
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def make_dataset(root: str | os.PathLike, classes: int = 10, per_class: int = 100,
                 size: tuple[int, int] = (500, 375), seed: int = 0, quality: int = 90,
                 progress: bool = True) -> Path:
    """Write a synthetic ImageFolder of photo-like JPEGs.

    About 200-400 images/s per core at 500x375; a 500x375 image at quality 90 is ~60-90 kB.

    Args:
        root: the folder to create (may exist; files of the same name are overwritten).
        classes: number of class folders, ``class_000`` ... (>= 1).
        per_class: images per class (>= 1).
        size: (width, height) of every image, each >= 8.
        seed: images are a deterministic function of (seed, class, index).
        quality: JPEG quality 1-95.
        progress: show a progress bar on stderr (tqdm if installed).

    Returns:
        the root as a ``pathlib.Path``.

    Raises:
        ValueError: a non-positive count, a bad size or quality.
        OSError: the folder cannot be written.
    """
    classes = _check_positive_int("classes", classes)
    per_class = _check_positive_int("per_class", per_class)
    width, height = _check_size(size)
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 95:
        raise ValueError(f"quality must be an int in [1, 95], got {quality!r}; e.g. quality=90")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    root = Path(root)
    noise = _noise_tile(width, height, seed)
    hue_rng = np.random.default_rng([seed, 0xC0105])
    bar = Progress(classes * per_class, progress, f"make-dataset {root}", unit="img")
    try:
        for c in range(classes):
            folder = root / f"class_{c:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            hue = hue_rng.uniform(40, 215, size=3).astype(np.float32)
            for i in range(per_class):
                rng = np.random.default_rng([seed, c, i])
                img = make_image(rng, (width, height), hue, noise)
                img.save(folder / f"img_{i:05d}.jpg", "JPEG", quality=quality)
                bar.update()
    finally:
        bar.close()
    return root
