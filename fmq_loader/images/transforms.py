"""Picklable image transforms (Resize, CenterCrop, RandomResizedCrop, ...) with torchvision semantics.

Images are RGB ``PIL.Image`` objects until ``ToTensor``/``PILToTensor``; sizes given as an
int or an ``(h, w)`` pair, as in torchvision. Crop and resize are one resampling step
(``Image.resize(size, box=...)``), and the geometric transforms also accept a
``fmq_loader.decode.EncodedImage``: they then decode a JPEG at the smallest scale their
output allows (see NOTE [ reduced-scale decoding ] in decode.py); a ``RawImage`` (a raw
packed record) is cropped straight from its pixels. Each exposes
``accepts_encoded = True`` and its ``output_size`` (h, w) (None when it depends on the
input) for that purpose.

NOTE [ transform randomness ]
Random transforms draw from ``get_rng()``: by default Python's global ``random`` module,
which torch's DataLoader (and ours) seed per worker. ``use_rng(rng)`` installs another
``random.Random`` for the current thread, e.g. one seeded per sample by
``ImageFolder(seed=...)``, so the same seed gives the same augmentations whatever
``num_workers`` is.

Longer than the ~400-line guide: the public ``fmq_loader.transforms`` namespace is one
module of small classes, as torchvision's transforms are.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import random
import threading
import warnings
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from fmq_loader.images.decode import UNDECODED

__all__ = [
    "CenterCrop",
    "Compose",
    "Normalize",
    "PILToTensor",
    "RandomHorizontalFlip",
    "RandomResizedCrop",
    "Resize",
    "ToTensor",
    "ToUint8Tensor",
    "get_rng",
    "use_rng",
]

_INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}

_local = threading.local()


def get_rng():
    """The generator random transforms draw from: ``use_rng``'s, else the ``random`` module."""
    return getattr(_local, "rng", None) or random


@contextlib.contextmanager
def use_rng(rng: random.Random):
    """Make transforms in this thread draw from ``rng`` inside the ``with`` block."""
    previous = getattr(_local, "rng", None)
    _local.rng = rng
    try:
        yield rng
    finally:
        _local.rng = previous


def _as_pil(img):
    """Decode an ``EncodedImage`` or ``RawImage``; pass anything else through."""
    return img.decode() if isinstance(img, UNDECODED) else img


def _image_size(img) -> tuple[int, int]:
    """(width, height) of a PIL image, an EncodedImage or a RawImage."""
    if isinstance(img, (Image.Image, *UNDECODED)):
        return img.size
    raise TypeError(f"image must be a PIL.Image, EncodedImage or RawImage, got "
                    f"{type(img).__name__}; put geometric transforms before ToTensor/PILToTensor")


_TORCH_FILTERS = {Image.Resampling.BILINEAR: "bilinear", Image.Resampling.BICUBIC: "bicubic"}


def _readonly_tensor(arr: np.ndarray) -> torch.Tensor:
    """``torch.from_numpy`` for an array we only read (Pillow's arrays are read-only)."""
    if arr.flags.writeable:
        return torch.from_numpy(arr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(arr)


def _pixels_hwc(pixels) -> np.ndarray | None:
    """HxWxC uint8 view of an RGB/L image or array, None for other PIL modes."""
    if isinstance(pixels, np.ndarray):
        arr = pixels
    elif pixels.mode in ("RGB", "L"):
        arr = np.asarray(pixels)
    else:
        return None
    return arr[:, :, None] if arr.ndim == 2 else arr


def _chw_to_pil(t: torch.Tensor) -> Image.Image:
    arr = t.permute(1, 2, 0).numpy()
    return Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)


def _resized_crop(img, box, size_wh, resample, as_tensor: bool = False):
    """Crop ``box`` and resample it to ``size_wh`` in one step.

    A JPEG ``EncodedImage`` is decoded at reduced scale where the box allows. Bilinear and
    bicubic use torch's antialiased uint8 kernel, which matches Pillow's resample within
    2 levels (mean difference < 0.05) at about 3x its speed; the box is then rounded to
    whole pixels of the decoded image. Other filters use Pillow with the exact box.

    Returns:
        a ``PIL.Image``, or a uint8 CHW tensor when ``as_tensor``.
    """
    pixels = img
    if isinstance(img, UNDECODED):
        pixels, box = img.decode_region(box, size_wh)
    mode = _TORCH_FILTERS.get(resample)
    arr = _pixels_hwc(pixels) if mode is not None else None
    if arr is not None:
        left, top = int(round(box[0])), int(round(box[1]))
        right = max(left + 1, int(round(box[2])))
        bottom = max(top + 1, int(round(box[3])))
        crop = _readonly_tensor(arr)[top:bottom, left:right].permute(2, 0, 1)[None]
        out = torch.nn.functional.interpolate(crop, size=(size_wh[1], size_wh[0]), mode=mode,
                                              antialias=True, align_corners=False)[0]
        return out if as_tensor else _chw_to_pil(out)
    if not isinstance(pixels, Image.Image):
        pixels = Image.fromarray(pixels)
    out = pixels.resize(size_wh, resample, box=box)
    return PILToTensor()(out) if as_tensor else out


def _check_size(name: str, size) -> tuple[int, int]:
    """Normalise an int or (h, w) to (h, w) of positive ints, else ValueError."""
    pair = (size, size) if isinstance(size, numbers.Integral) else size
    ok = (isinstance(pair, (tuple, list)) and len(pair) == 2
          and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v > 0
                  for v in pair))
    if not ok:
        raise ValueError(f"{name} must be a positive int or a pair (h, w) of positive ints, "
                         f"got {size!r}; e.g. {name}=224")
    return int(pair[0]), int(pair[1])


def _check_interpolation(interpolation) -> int:
    if isinstance(interpolation, str) and interpolation.lower() in _INTERPOLATIONS:
        return _INTERPOLATIONS[interpolation.lower()]
    if isinstance(interpolation, int) and interpolation in set(_INTERPOLATIONS.values()):
        return int(interpolation)
    raise ValueError(f"interpolation must be one of {sorted(_INTERPOLATIONS)} or a "
                     f"PIL.Image.Resampling value, got {interpolation!r}")


def _check_range(name: str, value, low: float) -> tuple[float, float]:
    ok = (isinstance(value, (tuple, list)) and len(value) == 2
          and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value))
    if not ok or not low < value[0] <= value[1]:
        raise ValueError(f"{name} must be a pair (min, max) with {low} < min <= max, "
                         f"got {value!r}")
    return float(value[0]), float(value[1])


class Compose:
    """Apply transforms in order.

    Args:
        transforms: callables, each taking the previous one's output.

    Raises:
        ValueError: ``transforms`` is not a list of callables.
    """

    def __init__(self, transforms: Sequence[Callable]):
        if not isinstance(transforms, (list, tuple)) or not all(map(callable, transforms)):
            raise ValueError(f"transforms must be a list of callables, got {transforms!r}")
        self.transforms = list(transforms)

    @property
    def accepts_encoded(self) -> bool:
        return bool(self.transforms) and getattr(self.transforms[0], "accepts_encoded", False)

    @property
    def output_size(self) -> tuple[int, int] | None:
        """(h, w) of the last transform that fixes it, else None."""
        for t in reversed(self.transforms):
            size = getattr(t, "output_size", None)
            if size is not None:
                return size
        return None

    def _tensor_step(self) -> int | None:
        """Index of the last geometric transform if everything after it works on tensors.

        That transform then returns a uint8 CHW tensor instead of a PIL image: the same
        pixels, one conversion fewer (see ``_resized_crop``).
        """
        geometric = [k for k, t in enumerate(self.transforms) if hasattr(t, "apply")]
        if not geometric:
            return None
        rest = self.transforms[geometric[-1] + 1:]
        if all(isinstance(t, _TENSOR_SAFE) for t in rest) and any(
                isinstance(t, (PILToTensor, ToTensor)) for t in rest):
            return geometric[-1]
        return None

    def __call__(self, img):
        if isinstance(img, UNDECODED) and not self.accepts_encoded:
            img = img.decode()
        tensor_step = self._tensor_step()
        for k, t in enumerate(self.transforms):
            img = t.apply(img, as_tensor=True) if k == tensor_step else t(img)
        return img

    def __repr__(self) -> str:
        inner = "".join(f"\n    {t!r}," for t in self.transforms)
        return f"Compose([{inner}\n])"


class Resize:
    """Resize so the shorter side is ``size`` (int), or to exactly ``size`` = (h, w).

    Args:
        size: int (shorter side, aspect kept, longer side truncated as torchvision does)
            or (h, w).
        interpolation: "bilinear" (default), "bicubic", "nearest", ... or a PIL filter.
        max_size: with an int size, cap the longer side (shorter side then shrinks).

    Raises:
        ValueError: non-positive or non-int size, unknown interpolation, bad max_size.
    """

    accepts_encoded = True

    def __init__(self, size, interpolation="bilinear", max_size: int | None = None):
        self.size = _check_size("size", size)
        self._shorter = isinstance(size, numbers.Integral)
        self.interpolation = _check_interpolation(interpolation)
        if max_size is not None:
            if not isinstance(max_size, numbers.Integral) or isinstance(max_size, bool) \
                    or not self._shorter or max_size <= self.size[0]:
                raise ValueError(f"max_size must be an int > size and size an int, got "
                                 f"max_size={max_size!r}, size={size!r}")
        self.max_size = max_size

    @property
    def output_size(self) -> tuple[int, int] | None:
        return None if self._shorter else self.size

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        """(w, h) of the output for an input of width x height."""
        if not self._shorter:
            return self.size[1], self.size[0]
        short, long = min(width, height), max(width, height)
        new_short, new_long = self.size[0], int(self.size[0] * long / short)
        if self.max_size is not None and new_long > self.max_size:
            new_short, new_long = int(self.max_size * new_short / new_long), self.max_size
        return (new_short, new_long) if width <= height else (new_long, new_short)

    def __call__(self, img):
        return self.apply(img)

    def apply(self, img, as_tensor: bool = False):
        """Resize; return a PIL image, or a uint8 CHW tensor when ``as_tensor``."""
        width, height = _image_size(img)
        out = self.target_size(width, height)
        return _resized_crop(img, (0, 0, width, height), out, self.interpolation, as_tensor)

    def __repr__(self) -> str:
        size = self.size[0] if self._shorter else self.size
        return f"Resize(size={size}, interpolation={self.interpolation}, max_size={self.max_size})"


class CenterCrop:
    """Crop the centre (h, w); a smaller image is zero-padded first, as in torchvision.

    Args:
        size: int or (h, w).

    Raises:
        ValueError: non-positive or non-int size.
    """

    accepts_encoded = True

    def __init__(self, size):
        self.size = _check_size("size", size)

    @property
    def output_size(self) -> tuple[int, int]:
        return self.size

    def __call__(self, img):
        return self.apply(img)

    def apply(self, img, as_tensor: bool = False):
        """Crop; return a PIL image, or a uint8 CHW tensor when ``as_tensor``."""
        img = _as_pil(img)
        width, height = _image_size(img)
        crop_h, crop_w = self.size
        top = -((crop_h - height) // 2) if crop_h > height else int(round((height - crop_h) / 2))
        left = -((crop_w - width) // 2) if crop_w > width else int(round((width - crop_w) / 2))
        out = img.crop((left, top, left + crop_w, top + crop_h))
        return PILToTensor()(out) if as_tensor else out

    def __repr__(self) -> str:
        return f"CenterCrop(size={self.size})"


class RandomResizedCrop:
    """Crop a random area and aspect ratio, then resize it to ``size``: one resampling step.

    Parameters are sampled as torchvision defines them: up to 10 tries of area fraction
    ~ U(scale) and log aspect ratio ~ U(log ratio); w = round(sqrt(area * ratio)),
    h = round(sqrt(area / ratio)); accepted if it fits, at a uniform integer offset; else
    a centre crop of the whole image clamped to the ratio range.

    Args:
        size: output int or (h, w).
        scale: (min, max) fraction of the image area, 0 < min <= max.
        ratio: (min, max) aspect ratio w/h, 0 < min <= max.
        interpolation: "bilinear" (default), "bicubic", ... or a PIL filter.

    Raises:
        ValueError: a bad size, scale, ratio or interpolation.
    """

    accepts_encoded = True

    def __init__(self, size, scale=(0.08, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0),
                 interpolation="bilinear"):
        self.size = _check_size("size", size)
        self.scale = _check_range("scale", scale, 0.0)
        self.ratio = _check_range("ratio", ratio, 0.0)
        self.interpolation = _check_interpolation(interpolation)

    @property
    def output_size(self) -> tuple[int, int]:
        return self.size

    def get_params(self, width: int, height: int, rng=None) -> tuple[int, int, int, int]:
        """Sample a crop (top, left, h, w) for a width x height image.

        Args:
            width: image width.
            height: image height.
            rng: a ``random.Random``-like generator; default ``get_rng()``.
        """
        rng = rng or get_rng()
        area = width * height
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(10):
            target_area = area * rng.uniform(self.scale[0], self.scale[1])
            aspect = math.exp(rng.uniform(log_lo, log_hi))
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = rng.randint(0, height - h)
                left = rng.randint(0, width - w)
                return top, left, h, w
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, int(round(width / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            w, h = int(round(height * self.ratio[1])), height
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, img):
        return self.apply(img)

    def apply(self, img, as_tensor: bool = False):
        """Crop and resize; return a PIL image, or a uint8 CHW tensor when ``as_tensor``."""
        width, height = _image_size(img)
        top, left, h, w = self.get_params(width, height)
        out = (self.size[1], self.size[0])
        return _resized_crop(img, (left, top, left + w, top + h), out, self.interpolation,
                             as_tensor)

    def __repr__(self) -> str:
        return (f"RandomResizedCrop(size={self.size}, scale={self.scale}, ratio={self.ratio}, "
                f"interpolation={self.interpolation})")


class RandomHorizontalFlip:
    """Mirror left-right with probability ``p`` (PIL image, HWC array or CHW tensor).

    Args:
        p: probability in [0, 1].

    Raises:
        ValueError: p outside [0, 1] or not a number.
    """

    def __init__(self, p: float = 0.5):
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
        self.p = float(p)

    def __call__(self, img):
        img = _as_pil(img)
        if get_rng().random() >= self.p:
            return img
        if isinstance(img, Image.Image):
            return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if isinstance(img, torch.Tensor):
            return img.flip(-1)
        if isinstance(img, np.ndarray):
            return np.ascontiguousarray(img[:, ::-1])
        raise TypeError(f"image must be a PIL.Image, HWC numpy array or CHW tensor, "
                        f"got {type(img).__name__}")

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


def _hwc_array(img) -> np.ndarray:
    img = _as_pil(img)
    if isinstance(img, Image.Image):
        arr = np.array(img.convert("RGB") if img.mode not in ("RGB", "L") else img)
    elif isinstance(img, np.ndarray):
        arr = img
    else:
        raise TypeError(f"image must be a PIL.Image or HWC numpy array, got "
                        f"{type(img).__name__}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.dtype != np.uint8:
        raise ValueError(f"image array must be uint8 HxWxC, got {arr.dtype} {arr.shape}")
    return arr


class PILToTensor:
    """PIL image (or HWC uint8 array) -> uint8 CHW ``torch.Tensor``, values unchanged.

    A uint8 CHW tensor passes through (it is what a fused crop before it returns).
    """

    def __call__(self, img) -> torch.Tensor:
        if isinstance(img, torch.Tensor) and img.dtype == torch.uint8 and img.ndim == 3:
            return img
        arr = _hwc_array(img)
        if not arr.flags.writeable:
            arr = arr.copy()
        return torch.from_numpy(arr).permute(2, 0, 1)

    def __repr__(self) -> str:
        return "PILToTensor()"


ToUint8Tensor = PILToTensor


class ToTensor:
    """PIL image (or HWC uint8 array) -> float32 CHW ``torch.Tensor`` in [0, 1] (x / 255)."""

    def __call__(self, img) -> torch.Tensor:
        if isinstance(img, torch.Tensor) and img.dtype == torch.uint8 and img.ndim == 3:
            return img.to(torch.float32).div_(255.0)
        arr = _hwc_array(img)
        out = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1), np.float32))
        return out.div_(255.0)

    def __repr__(self) -> str:
        return "ToTensor()"


class Normalize:
    """(x - mean) / std per channel of a float CHW tensor.

    Args:
        mean: one value per channel.
        std: one non-zero value per channel.
        inplace: modify the input tensor instead of a copy.

    Raises:
        ValueError: std with a zero, lengths that differ, or non-numbers.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], inplace: bool = False):
        for name, value in (("mean", mean), ("std", std)):
            if not isinstance(value, (tuple, list)) or not value or not all(
                    isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value):
                raise ValueError(f"{name} must be a non-empty list of numbers, got {value!r}")
        if len(mean) != len(std):
            raise ValueError(f"mean and std must have the same length, got {len(mean)} and "
                             f"{len(std)}")
        if any(s == 0 for s in std):
            raise ValueError(f"std must not contain zero, got {std!r}")
        self.mean, self.std, self.inplace = list(mean), list(std), bool(inplace)

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            raise TypeError(f"Normalize needs a float tensor, got "
                            f"{getattr(tensor, 'dtype', type(tensor).__name__)}; "
                            "put ToTensor() before Normalize")
        mean = torch.as_tensor(self.mean, dtype=tensor.dtype).view(-1, 1, 1)
        std = torch.as_tensor(self.std, dtype=tensor.dtype).view(-1, 1, 1)
        out = tensor if self.inplace else tensor.clone()
        return out.sub_(mean).div_(std)

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std})"


_TENSOR_SAFE = (RandomHorizontalFlip, PILToTensor, ToTensor, Normalize)
