"""Helpers shared by the image tests: small real image folders and files (no mocks)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from fmq_loader.images.synth import make_dataset


def image_folder(root: Path, classes: int = 2, per_class: int = 32, size=(64, 48),
                 seed: int = 0) -> Path:
    """A real ImageFolder of small JPEGs (64 by default) made by our generator."""
    return make_dataset(root, classes=classes, per_class=per_class, size=size, seed=seed,
                        progress=False)


def photo(size=(64, 48), seed: int = 0) -> Image.Image:
    """A smooth-plus-noise RGB image like the generator's."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([128 + 100 * np.sin(xx / w * 3 + c) * np.cos(yy / h * 2 - c)
                     for c in range(3)], axis=2)
    noise = rng.normal(0, 6, size=(h, w, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")


def encode(img: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()
