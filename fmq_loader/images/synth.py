"""Synthetic image folders: JPEGs that compress like photos, for tests, examples and benchmarks.

Each image is smooth structure (two octaves of random colour fields, upsampled bicubically,
plus a soft-edged ellipse) with fine Gaussian-like noise on top. Each class has its own
base hue, so a model can learn the labels. Two levels of realism:

- ``"photo"`` (the default): texture at every scale as in photographs (1/f amplitude
  spectrum: strong luminance texture, weaker chroma) under sensor-like noise. At quality
  90 a 500x375 image is ~100-115 KB, 4.3-5 bits per pixel, like ImageNet's photos
  (~110 KB at ~400x350); decoding costs what a photo's does.
- ``"simple"``: smooth fields and fine noise only, ~2 bits per pixel (~50 KB at
  500x375): quick to make and to decode, for tests. Benchmark figures on these
  flatter a decoder-bound loader: decode is a smaller share of the work than on photos.

Layout: ``root/class_000/img_00000.jpg`` ... (the layout ``ImageFolder`` reads).
Images are deterministic for a given ``seed``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from ..progress import Progress

__all__ = ["make_dataset", "make_image", "REALISM"]

REALISM = ("photo", "simple")
# "photo" texture, in levels of 255: luminance and per-channel chroma (std of the 1/f field)
_LUMA_TEXTURE, _CHROMA_TEXTURE = 42.0, 14.0

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


def _texture_tile(width: int, height: int, seed: int) -> np.ndarray:
    """A (height+64, width+64, 4) tile of 1/f ("pink") noise, unit std per channel:
    channel 0 is luminance texture, 1-3 chroma. Each image takes a random window of it,
    flipped at random, so a folder costs four FFTs, not four per image."""
    rng = np.random.default_rng([seed, 0x7E47])
    h, w = height + _NOISE_MARGIN, width + _NOISE_MARGIN
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    freq = np.sqrt(fy * fy + fx * fx)
    freq[0, 0] = 1.0
    tile = np.empty((h, w, 4), np.float32)
    for c in range(4):
        amplitude = freq ** (-1.0 if c == 0 else -1.3)  # chroma: less fine detail
        amplitude[0, 0] = 0.0
        spectrum = (rng.standard_normal(freq.shape) + 1j * rng.standard_normal(freq.shape))
        field = np.fft.irfft2(spectrum * amplitude, s=(h, w))
        tile[:, :, c] = field / (field.std() + 1e-9)
    return tile


def make_image(rng: np.random.Generator, size: tuple[int, int], hue: np.ndarray,
               noise: np.ndarray | None = None, texture: np.ndarray | None = None) -> Image.Image:
    """Draw one photo-like RGB image.

    Args:
        rng: the generator to draw from.
        size: (width, height).
        hue: the class's base colour, 3 floats in [0, 255].
        noise: an optional noise tile at least (height+64, width+64, 3), from _noise_tile.
        texture: an optional 1/f texture tile from _texture_tile ("photo" realism);
            None: no texture ("simple").

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
    if texture is not None:
        ty, tx = rng.integers(0, _NOISE_MARGIN, size=2)
        window = texture[ty:ty + height, tx:tx + width]
        if rng.random() < 0.5:
            window = window[:, ::-1]
        if rng.random() < 0.5:
            window = window[::-1]
        sign = np.float32(1.0 if rng.random() < 0.5 else -1.0)
        img += window[:, :, :1] * (sign * _LUMA_TEXTURE)
        img += window[:, :, 1:] * (sign * _CHROMA_TEXTURE)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def make_dataset(root: str | os.PathLike, classes: int = 10, per_class: int = 100,
                 size: tuple[int, int] = (500, 375), seed: int = 0, quality: int = 90,
                 progress: bool = True, realism: str = "photo") -> Path:
    """Write a synthetic ImageFolder of photo-like JPEGs.

    About 100-200 images/s per core at 500x375. At quality 90 a 500x375 image is
    ~100-115 kB with ``realism="photo"``, ~50 kB with ``"simple"`` (module docstring).

    Args:
        root: the folder to create (may exist; files of the same name are overwritten).
        classes: number of class folders, ``class_000`` ... (>= 1).
        per_class: images per class (>= 1).
        size: (width, height) of every image, each >= 8.
        seed: images are a deterministic function of (seed, class, index).
        quality: JPEG quality 1-95.
        progress: show a progress bar on stderr (tqdm if installed).
        realism: ``"photo"`` (photographs' bits per pixel and decode cost) or
            ``"simple"`` (smoother, quicker; for tests).

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
    if realism not in REALISM:
        raise ValueError(f"realism must be one of {REALISM}, got {realism!r}; \"photo\" for "
                         "benchmarks, \"simple\" for quick tests")
    root = Path(root)
    noise = _noise_tile(width, height, seed)
    texture = _texture_tile(width, height, seed) if realism == "photo" else None
    hue_rng = np.random.default_rng([seed, 0xC0105])
    bar = Progress(classes * per_class, progress, f"make-dataset {root}", unit="img")
    try:
        for c in range(classes):
            folder = root / f"class_{c:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            hue = hue_rng.uniform(40, 215, size=3).astype(np.float32)
            for i in range(per_class):
                rng = np.random.default_rng([seed, c, i])
                img = make_image(rng, (width, height), hue, noise, texture)
                img.save(folder / f"img_{i:05d}.jpg", "JPEG", quality=quality)
                bar.update()
    finally:
        bar.close()
    return root
