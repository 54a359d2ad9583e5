"""torchvision transforms in ``fmq_loader.ImageFolder``: the head decoded region-only, the rest theirs.

A torchvision user switches with one line (``torchvision.datasets.ImageFolder`` ->
``fmq_loader.ImageFolder``) and keeps their ``transforms.Compose`` (v1 or v2) unchanged.
When its first step is ``RandomResizedCrop`` or ``Resize`` with bilinear or bicubic
interpolation and antialiasing, that step runs on the *encoded* JPEG: crop parameters
drawn exactly as torchvision draws them (torch's global generator, the same calls in
the same order), then only the crop's region decoded, at reduced scale where the output
allows (NOTE [ region decoding ] in decode.py), and resized in one step. The output is
an RGB ``PIL.Image`` of the step's size, so the remaining steps (flip, ``ToImage``,
``ToDtype``, ``Normalize``, ...) run as torchvision's own code on what they always got.
Pixels differ from torchvision's within the resize tolerance of our fused crop + resize
(torch's antialiased kernel against Pillow's: within 2 levels, mean < 0.05; reduced-
scale decoding adds < 1.5 levels on average: decode.py, transforms.py).

torchvision is never imported here: transforms are recognised by their class's module
and name, so fmq_loader does not depend on it. Anything else is applied unchanged.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from .decode import UNDECODED
from .transforms import Resize, _resized_crop

__all__ = ["accelerate", "TorchvisionHead"]

_FILTERS = {"bilinear": 2, "bicubic": 3}  # PIL's BILINEAR, BICUBIC


def _torchvision_name(obj: Any) -> str | None:
    """``"RandomResizedCrop"`` for a torchvision transform of that class, else None."""
    module = type(obj).__module__ or ""
    if module.startswith("torchvision.transforms"):
        return type(obj).__name__
    return None


def _interpolation(step: Any) -> int | None:
    mode = getattr(step, "interpolation", None)
    name = getattr(mode, "value", mode)
    if getattr(step, "antialias", True) is False:  # only antialiased resizes are matched
        return None
    return _FILTERS.get(name) if isinstance(name, str) else None


def _size_hw(size) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    size = list(size)
    return (size[0], size[0]) if len(size) == 1 else (size[0], size[1])


def accelerate(transform: Callable | None) -> "TorchvisionHead | None":
    """A ``TorchvisionHead`` for a torchvision Compose whose first step we can run on the
    encoded image; None for anything else (the caller applies it as it is)."""
    if transform is None or _torchvision_name(transform) != "Compose":
        return None
    steps = list(getattr(transform, "transforms", []))
    if not steps:
        return None
    head, kind = steps[0], _torchvision_name(steps[0])
    filt = _interpolation(head) if kind in ("RandomResizedCrop", "Resize") else None
    if filt is None:
        return None
    if kind == "Resize" and not (isinstance(head.size, int) or len(list(head.size)) in (1, 2)):
        return None
    return TorchvisionHead(transform, head, kind, filt, steps[1:])


class TorchvisionHead:
    """Runs a torchvision Compose with its first step on the encoded image (module docstring).

    Picklable (it holds the user's Compose), so it crosses into spawn workers.
    """

    accepts_encoded = True

    def __init__(self, compose, head, kind: str, filt: int, rest: list) -> None:
        self.compose, self.head, self.kind, self.filt, self.rest = compose, head, kind, filt, rest

    def __call__(self, img):
        if not isinstance(img, UNDECODED):
            return self.compose(img)
        width, height = img.size
        if self.kind == "RandomResizedCrop":
            top, left, h, w = torchvision_crop_params(width, height, self.head.scale,
                                                      self.head.ratio)
            out_h, out_w = _size_hw(self.head.size)
            out = _resized_crop(img, (left, top, left + w, top + h), (out_w, out_h), self.filt)
        else:
            size = self.head.size
            size = size if isinstance(size, int) else list(size)
            size = size[0] if isinstance(size, list) and len(size) == 1 else size
            resize = Resize(size if isinstance(size, int) else tuple(size), self.filt,
                            getattr(self.head, "max_size", None))
            out = resize.apply(img)
        for step in self.rest:
            out = step(out)
        return out

    def __repr__(self) -> str:
        return f"TorchvisionHead({self.compose!r}, head={self.kind} on the encoded image)"


def torchvision_crop_params(width: int, height: int, scale, ratio) -> tuple[int, int, int, int]:
    """(top, left, h, w) as torchvision's RandomResizedCrop draws them from torch's global
    generator: the same draws, in the same order, so a seeded run crops the same boxes."""
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1]).item()
        aspect_ratio = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1])).item()
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            i = torch.randint(0, height - h + 1, size=(1,)).item()
            j = torch.randint(0, width - w + 1, size=(1,)).item()
            return i, j, h, w
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w
