"""ImageFolder: file listing, labels, decode + transform per sample, corrupt-file policy.

The layout is torchvision's: ``root/<class>/<...>/<image>``; class names sorted give the
labels 0..C-1. The file index is three objects, not a list of Python tuples: one bytes
blob of root-relative paths, an int64 offsets array and an int64 targets array. Forked
workers therefore do not copy the index page by page as they read it (the refcount
writes behind torch issue #13246), and pickling it to spawn/forkserver workers is fast.

NOTE [ corrupt files ]
``on_error`` decides what a file that cannot be read or decoded does:
``"raise"`` (default) raises ``DecodeError`` naming the path and the decoder's message;
``"skip"`` and ``"warn"`` (which also logs a warning) return the next index that loads
instead ((i + 1) % len, then i + 2, ...; at most ``MAX_REPLACEMENTS`` tries), so a batch
stays full and the choice is deterministic. ``ImageFolder.skipped`` counts failed loads
*in this process* (each worker process counts its own copy), and ``skipped_paths`` keeps
the first ``MAX_RECORDED`` failed paths.

NOTE [ per-sample seeds ]
With ``seed=None`` random transforms use the global ``random`` state, which FMQLoader
seeds before every sample from (epoch seed, position in the epoch): with
``FMQLoader(seed=...)`` augmentations repeat whatever ``num_workers`` is (seeding.py).
With ``seed=s``, sample ``i`` in epoch ``e`` draws from ``random.Random(hash(s, e, i))``
(see NOTE [ transform randomness ] in transforms.py), for loaders that do not seed per
sample. Call ``loader.set_epoch(e)`` before each epoch: FMQLoader passes it on to every
worker's copy, persistent workers included (calling ``ImageFolder.set_epoch`` yourself
changes only the main process's copy).
"""

from __future__ import annotations

import hashlib
import logging
import numbers
import os
import random
from collections.abc import Sequence
from typing import Callable

import numpy as np

from fmq_loader.images.decode import DecodeError, EncodedImage, check_decoder, read_bytes
from fmq_loader.images.transforms import use_rng
from fmq_loader.images.tvcompat import accelerate

__all__ = ["IMG_EXTENSIONS", "ON_ERROR", "ImageFolder", "TransformedImages"]

logger = logging.getLogger(__name__)

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".ppm", ".pgm",
                  ".tif", ".tiff")
ON_ERROR = ("raise", "skip", "warn")
MAX_REPLACEMENTS = 100
MAX_RECORDED = 100


def _check_extensions(extensions) -> tuple[str, ...]:
    if isinstance(extensions, str):
        extensions = (extensions,)
    if (not isinstance(extensions, (tuple, list)) or not extensions
            or not all(isinstance(e, str) and e for e in extensions)):
        raise ValueError(f"extensions must be a non-empty tuple of suffixes such as "
                         f"('.jpg', '.png'), got {extensions!r}")
    return tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)


def _scan_files(folder: str, prefix: str, accept: Callable[[str, str], bool],
                out: list[str]) -> None:
    """Append root-relative paths (prefix/...) of accepted files under folder, recursively."""
    with os.scandir(folder) as it:
        entries = list(it)
    for entry in entries:
        rel = f"{prefix}/{entry.name}"
        if entry.is_dir(follow_symlinks=True):
            _scan_files(entry.path, rel, accept, out)
        elif accept(entry.path, entry.name):
            out.append(rel)


class _IndexView(Sequence):
    """A read-only list-like view computed on demand from the compact index."""

    def __init__(self, dataset: "ImageFolder", what: str):
        self._dataset, self._what = dataset, what

    def __len__(self) -> int:
        return len(self._dataset)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = self._dataset._check_index(i)
        target = int(self._dataset._targets[i])
        return target if self._what == "targets" else (self._dataset._path(i), target)

    def __eq__(self, other) -> bool:
        return isinstance(other, (Sequence, _IndexView)) and list(self) == list(other)

    def __repr__(self) -> str:
        head = ", ".join(repr(self[i]) for i in range(min(3, len(self))))
        return f"<{self._what} of {len(self)}: [{head}{', ...' if len(self) > 3 else ''}]>"


class TransformedImages:
    """What ImageFolder and PackedImages share: transform, labels, seeds, ``on_error``.

    A subclass sets ``_targets`` (int64 array) and implements ``_load_image(i)`` (the
    transformed image of sample ``i``, raising ``DecodeError`` when it cannot be read)
    and ``_name(i)`` (what messages and ``skipped_paths`` call sample ``i``).
    """

    _targets: np.ndarray

    def _init_transforms(self, transform, target_transform, on_error: str, decoder: str,
                         seed) -> None:
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        for name, fn in (("transform", transform), ("target_transform", target_transform)):
            if fn is not None and not callable(fn):
                raise ValueError(f"{name} must be callable or None, got {fn!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)
                                 or seed < 0):
            raise ValueError(f"seed must be None or an int >= 0, got {seed!r}")
        self.transform, self.target_transform = transform, target_transform
        # a torchvision Compose is kept as given; its first step runs on the encoded image
        self._torchvision_head = (transform, accelerate(transform))
        self.on_error = on_error
        self.decoder = check_decoder(decoder)
        self.seed = None if seed is None else int(seed)
        self.epoch = 0
        self.skipped = 0
        self.skipped_paths: list[str] = []

    def __len__(self) -> int:
        return len(self._targets)

    def _check_index(self, index) -> int:
        if isinstance(index, bool) or not isinstance(index, numbers.Integral):
            raise TypeError(f"index must be an int, got {index!r} ({type(index).__name__})")
        n = len(self._targets)
        if not -n <= index < n:
            raise IndexError(f"index must be in [-{n}, {n}), got {index}; "
                             f"the dataset has {n} samples")
        return int(index) % n

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch for per-sample seeds (no effect when ``seed`` is None).

        Raises:
            ValueError: epoch is not an int >= 0.
        """
        if isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral) or epoch < 0:
            raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")
        self.epoch = int(epoch)

    def sample_rng(self, index: int) -> random.Random | None:
        """The generator sample ``index`` draws from this epoch, or None without a seed."""
        if self.seed is None:
            return None
        key = f"{self.seed}:{self.epoch}:{index}".encode()
        return random.Random(int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(),
                                            "little"))

    def _apply_transform(self, img):
        """Run the transform on an undecoded image (``EncodedImage`` or ``RawImage``)."""
        transform = self.transform
        if transform is None:
            return img.decode()
        if self._torchvision_head[0] is not transform:  # assigned since
            self._torchvision_head = (transform, accelerate(transform))
        if self._torchvision_head[1] is not None:  # a torchvision Compose: tvcompat.py
            transform = self._torchvision_head[1]
        if getattr(transform, "accepts_encoded", False):
            return transform(img)
        return transform(img.decode())

    def _load(self, i: int):
        rng = self.sample_rng(i)
        if rng is None:
            img = self._load_image(i)
        else:
            with use_rng(rng):
                img = self._load_image(i)
        target = int(self._targets[i])
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target

    def __getitem__(self, index):
        """Return (image, label) for ``index``.

        Without a transform the image is an RGB ``PIL.Image``; with one, whatever the
        transform returns. The label is an int (or target_transform's result).

        Raises:
            DecodeError: the image cannot be read or decoded and on_error is "raise", or
                ``MAX_REPLACEMENTS`` consecutive images failed with "skip"/"warn".
            IndexError: index out of range.
        """
        index = self._check_index(index)
        if self.on_error == "raise":
            return self._load(index)
        n = len(self)
        last = None
        for attempt in range(min(n, MAX_REPLACEMENTS)):
            i = (index + attempt) % n
            try:
                return self._load(i)
            except DecodeError as exc:
                last = exc
                self.skipped += 1
                if len(self.skipped_paths) < MAX_RECORDED:
                    self.skipped_paths.append(self._name(i))
                if self.on_error == "warn":
                    logger.warning("skipping sample %d: %s", i, exc)
        raise DecodeError(f"{min(n, MAX_REPLACEMENTS)} consecutive samples from index {index} "
                          f"failed to load (on_error={self.on_error!r}); last: {last}; "
                          "check the dataset", last.path) from last


class ImageFolder(TransformedImages):
    """A map-style dataset of images laid out as ``root/<class>/<image>``.

    Args:
        root: the folder holding one sub-folder per class (nested folders are read too).
        transform: called on each image; our geometric transforms (and a ``Compose``
            starting with one) receive an ``EncodedImage`` and decode at reduced scale.
        target_transform: called on each int label.
        extensions: file suffixes to include, case-insensitive.
        on_error: "raise", "skip" or "warn"; see NOTE [ corrupt files ].
        decoder: "auto" (simplejpeg for JPEGs when installed), "pillow" or "simplejpeg".
        exif_transpose: rotate images upright by their EXIF orientation tag.
        seed: None, or an int >= 0 for per-sample seeds; see NOTE [ per-sample seeds ].
        loader: optional callable path -> image replacing our decoding (no reduced-scale
            decode then); its exceptions count as decode failures for ``on_error``.
        is_valid_file: optional callable path -> bool used instead of ``extensions``.
        allow_empty: allow class folders without any image (else ValueError).

    Attributes:
        classes: sorted class names. class_to_idx: name -> label.
        samples: list-like of (path, label), computed on demand; ``imgs`` is an alias.
        targets: list-like of int labels, computed on demand.
        skipped: failed loads replaced in this process (each worker counts its own).
        skipped_paths: the first ``MAX_RECORDED`` paths that failed in this process.

    Raises:
        FileNotFoundError: root does not exist.
        ValueError: no class folder, a class folder without images, or a bad argument.
    """

    def __init__(self, root, transform: Callable | None = None,
                 target_transform: Callable | None = None, extensions=IMG_EXTENSIONS,
                 on_error: str = "raise", decoder: str = "auto", exif_transpose: bool = False,
                 seed: int | None = None, loader: Callable | None = None,
                 is_valid_file: Callable[[str], bool] | None = None, allow_empty: bool = False):
        self.root = os.path.abspath(os.fspath(root))
        self.extensions = _check_extensions(extensions)
        for name, fn in (("loader", loader), ("is_valid_file", is_valid_file)):
            if fn is not None and not callable(fn):
                raise ValueError(f"{name} must be callable or None, got {fn!r}")
        self._init_transforms(transform, target_transform, on_error, decoder, seed)
        self.exif_transpose = bool(exif_transpose)
        self.loader = loader
        self._build_index(is_valid_file, allow_empty)

    # ----------------------------------------------------------------- index
    def _build_index(self, is_valid_file, allow_empty: bool) -> None:
        if not os.path.isdir(self.root):
            raise FileNotFoundError(f"ImageFolder root {self.root!r} is not a directory; "
                                    "pass the folder that holds one sub-folder per class")
        with os.scandir(self.root) as it:
            self.classes = sorted(e.name for e in it if e.is_dir(follow_symlinks=True))
        if not self.classes:
            raise ValueError(f"ImageFolder root {self.root!r} has no class folders; expected "
                             f"root/<class>/<image> with extensions {self.extensions}")
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        if is_valid_file is not None:
            def accept(path, name):
                return bool(is_valid_file(path))
        else:
            exts = self.extensions

            def accept(path, name):
                return name.lower().endswith(exts)
        chunks, offsets, targets, empty = [], [0], [], []
        for label, name in enumerate(self.classes):
            rels: list[str] = []
            _scan_files(os.path.join(self.root, name), name, accept, rels)
            if not rels:
                empty.append(name)
            for rel in sorted(rels):
                chunk = os.fsencode(rel)
                chunks.append(chunk)
                offsets.append(offsets[-1] + len(chunk))
                targets.append(label)
        if not targets:
            raise ValueError(f"ImageFolder root {self.root!r} has class folders {self.classes[:5]}"
                             f"{'...' if len(self.classes) > 5 else ''} but no files with "
                             f"extensions {self.extensions}; check the root and extensions")
        if empty and not allow_empty:
            raise ValueError(f"ImageFolder class folders {empty[:5]} under {self.root!r} have no "
                             f"files with extensions {self.extensions}; remove them or pass "
                             "allow_empty=True")
        self._blob = b"".join(chunks)
        self._offsets = np.asarray(offsets, dtype=np.int64)
        self._targets = np.asarray(targets, dtype=np.int64)

    def _path(self, i: int) -> str:
        rel = os.fsdecode(self._blob[self._offsets[i]:self._offsets[i + 1]])
        return os.path.join(self.root, rel)

    @property
    def samples(self) -> Sequence:
        return _IndexView(self, "samples")

    imgs = samples

    @property
    def targets(self) -> Sequence:
        return _IndexView(self, "targets")

    # --------------------------------------------------------------- samples
    def _name(self, i: int) -> str:
        return self._path(i)

    def _load_image(self, i: int):
        path = self._path(i)
        if self.loader is not None:
            try:
                img = self.loader(path)
            except (OSError, ValueError, SyntaxError, EOFError) as exc:
                raise DecodeError(f"{path!r} could not be loaded by {self.loader!r}: "
                                  f"{type(exc).__name__}: {exc}", path) from exc
            return img if self.transform is None else self.transform(img)
        return self._apply_transform(
            EncodedImage(read_bytes(path), path, self.decoder, self.exif_transpose))

    def __repr__(self) -> str:
        return (f"ImageFolder(root={self.root!r}, {len(self)} samples, {len(self.classes)} "
                f"classes, transform={self.transform!r}, on_error={self.on_error!r}, "
                f"decoder={self.decoder!r}, seed={self.seed!r})")
