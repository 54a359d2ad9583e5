"""An image folder cut from real photographs: the colour photos scikit-image ships.

Synthetic images (synth.py) are calibrated to photos' size and decode cost; this set is
the check that they are: real camera photographs (an astronaut, a cat, coffee, a
motorcycle, a rocket, ...), each a class. Every sample is a random crop of its
class's photo (35-100% of the area, the output's aspect ratio), resized with Lanczos
to ``size``, flipped at random, and JPEG-encoded at ``quality``. At quality 90 and
500x375 they come out at 0.9-3.0 bits per pixel, 2.1 on average: clean, low-noise
photos, below ImageNet's ~5 (``realism="photo"`` in synth.py is calibrated to that),
so they are the easier of the two realistic sets to decode.

Needs scikit-image (``pip install scikit-image``); its data files are read from the
installed package without importing it.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
from PIL import Image

from ..progress import Progress
from .synth import _check_positive_int, _check_size

__all__ = ["PHOTOS", "make_photo_dataset", "photo_sources"]

# scikit-image's bundled colour photographs (data/ in its wheel)
PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "hubble_deep_field.jpg", "ihc.png",
          "motorcycle_left.png", "retina.jpg", "rocket.jpg")


def photo_sources() -> list[Path]:
    """The photographs' paths in the installed scikit-image.

    Raises:
        ImportError: scikit-image is not installed, or ships none of them.
    """
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the real-photo image set needs scikit-image's sample photos: "
                          "pip install scikit-image (or use the synthetic set, "
                          "make_dataset(realism='photo'))")
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    found = [data / name for name in PHOTOS if (data / name).is_file()]
    if not found:
        raise ImportError(f"scikit-image at {data.parent} ships none of the photos {PHOTOS}; "
                          "reinstall it (pip install --force-reinstall scikit-image)")
    return found


def make_photo_dataset(root: str | os.PathLike, per_class: int = 100,
                       size: tuple[int, int] = (500, 375), seed: int = 0, quality: int = 90,
                       progress: bool = True) -> Path:
    """Write an ImageFolder of JPEG crops of real photographs, one class per photograph.

    Args:
        root: the folder to create (may exist; files of the same name are overwritten).
        per_class: images per class (>= 1); there are ``len(photo_sources())`` classes.
        size: (width, height) of every image.
        seed: crops are a deterministic function of (seed, class, index).
        quality: JPEG quality 1-95.
        progress: show a progress bar on stderr.

    Returns:
        the root as a ``pathlib.Path``.

    Raises:
        ImportError: scikit-image is not installed.
        ValueError: a bad count, size or quality.
    """
    per_class = _check_positive_int("per_class", per_class)
    width, height = _check_size(size)
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 95:
        raise ValueError(f"quality must be an int in [1, 95], got {quality!r}; e.g. quality=90")
    sources = photo_sources()
    root = Path(root)
    bar = Progress(len(sources) * per_class, progress, f"photos {root}", unit="img")
    try:
        for c, source in enumerate(sources):
            with Image.open(source) as opened:
                photo = opened.convert("RGB")
            folder = root / source.name.split(".")[0]
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                rng = np.random.default_rng([seed, c, i])
                crop = _random_crop(rng, photo.size, width / height)
                img = photo.resize((width, height), Image.Resampling.LANCZOS, box=crop)
                if rng.random() < 0.5:
                    img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
                img.save(folder / f"img_{i:05d}.jpg", "JPEG", quality=quality)
                bar.update()
    finally:
        bar.close()
    return root


def _random_crop(rng: np.random.Generator, source: tuple[int, int],
                 aspect: float) -> tuple[float, float, float, float]:
    """A box of 35-100% of the largest ``aspect`` box that fits ``source``, placed at random."""
    sw, sh = source
    w, h = (sw, sw / aspect) if sw / aspect <= sh else (sh * aspect, sh)
    scale = float(np.sqrt(rng.uniform(0.35, 1.0)))
    w, h = w * scale, h * scale
    left, top = rng.uniform(0, sw - w), rng.uniform(0, sh - h)
    return (left, top, left + w, top + h)
