"""The image sets benchmarks run on, and a one-line description of each for the tables.

Every figure names its set (NOTE: a figure measured on easy images only is not a result):

- ``photo`` (default): synthetic, calibrated to photos (synth.py ``realism="photo"``):
  500x375, quality 90, ~4.6 bits per pixel, like ImageNet's ~110 KB photos.
- ``photo-1600``: the same at 1600x1200 (phone-camera size), ~4.2 bits per pixel.
- ``skimage``: crops of the real photographs scikit-image ships, re-encoded at 500x375,
  quality 90 (~2.1 bits per pixel; photos.py). Needs ``pip install scikit-image``.
- ``simple``: the old easy synthetic images (~2.1 bits per pixel, little texture); kept
  to compare with earlier figures, not to quote alone.

Generated folders are cached under the temp dir, keyed by set, count and seed.
"""

from __future__ import annotations

import os
import tempfile

__all__ = ["IMAGE_SETS", "prepare", "describe"]

IMAGE_SETS = {
    "photo": ("synthetic photo-like", (500, 375)),
    "photo-1600": ("synthetic photo-like", (1600, 1200)),
    "skimage": ("real photographs (scikit-image), cropped", (500, 375)),
    "simple": ("synthetic, easy (not photo-like)", (500, 375)),
}


def prepare(name: str, images: int, seed: int = 0, root: str | None = None,
            progress: bool = True) -> str:
    """The folder of set ``name`` with about ``images`` JPEGs (made once, then reused).

    Raises:
        ValueError: an unknown set name.
        ImportError: ``skimage`` without scikit-image installed.
    """
    if name not in IMAGE_SETS:
        raise ValueError(f"unknown image set {name!r}; choose one of {sorted(IMAGE_SETS)}")
    size = IMAGE_SETS[name][1]
    folder = root or os.path.join(tempfile.gettempdir(), f"fmq_bench_{name}_{images}_{seed}")
    if os.path.isdir(folder) and os.listdir(folder):
        return folder
    if name == "skimage":
        from fmq_loader.images.photos import make_photo_dataset, photo_sources

        per_class = max(1, images // len(photo_sources()))
        make_photo_dataset(folder, per_class=per_class, size=size, seed=seed, progress=progress)
    else:
        from fmq_loader.images.synth import make_dataset

        classes = 10 if images >= 10 else 1
        make_dataset(folder, classes=classes, per_class=max(1, images // classes), size=size,
                     seed=seed, progress=progress, realism="simple" if name == "simple" else "photo")
    return folder


def describe(folder: str, name: str | None = None) -> str:
    """``"photo: synthetic photo-like, 1280 JPEGs 500x375, 104 KB, 4.56 bits/pixel"``:
    measured on the files, so the line stays true for any folder."""
    from PIL import Image

    sizes, pixels, dims = [], [], set()
    for base, _, files in os.walk(folder):
        for f in files:
            if f.lower().endswith((".jpg", ".jpeg")):
                path = os.path.join(base, f)
                sizes.append(os.path.getsize(path))
                if len(pixels) < 64:  # the header only; a sample is enough for the mean
                    with Image.open(path) as img:
                        pixels.append(img.width * img.height)
                        dims.add(img.size)
    if not sizes:
        return f"{folder}: no JPEG files"
    mean_bytes = sum(sizes) / len(sizes)
    bpp = mean_bytes * 8 / (sum(pixels) / len(pixels))
    shape = "x".join(map(str, next(iter(dims)))) if len(dims) == 1 else "mixed sizes"
    label = f"{name}: {IMAGE_SETS[name][0]}, " if name in IMAGE_SETS else f"{folder}: "
    return f"{label}{len(sizes)} JPEGs {shape}, {mean_bytes / 1024:.0f} KB, {bpp:.2f} bits/pixel"
