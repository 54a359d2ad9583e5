"""PackedImages: a map-style Dataset over a pack that ``fmq-loader pack`` wrote.

A pack holds pre-resized images (JPEG or raw pixels) in a few memory-mapped shards
(packfile.py). Reading a sample opens no file: it slices the mapping, checks the record's
CRC-32 and hands the bytes to the same transforms as ``ImageFolder`` (a JPEG record is an
``EncodedImage``, so a RandomResizedCrop decodes only its region at reduced scale; a raw
record is a ``RawImage`` the crop reads straight from the mapping). The mapping's pages
are the page cache's, shared by every worker process.

NOTE [ packs in worker processes ]
The shards are mapped at construction (which checks every header and index) and again,
lazily, in each process a pickled copy arrives in (spawn/forkserver workers): a mapping
does not pickle. Forked workers share the parent's mappings. ``close()`` unmaps them in
this process; a later read maps them again.
"""

from __future__ import annotations

import bisect
import json
import os
from collections.abc import Sequence
from typing import Callable

import numpy as np

from fmq_loader.images.datasets import TransformedImages, _IndexView
from fmq_loader.images.decode import EncodedImage, RawImage
from fmq_loader.images.packfile import FORMAT_VERSION, KIND_JPEG, KIND_RAW, PackError, Shard

__all__ = ["META_NAME", "PACK_FORMAT", "PackedImages", "read_meta"]

META_NAME = "meta.json"
PACK_FORMAT = "fmq_loader pack"


def read_meta(root: str) -> dict:
    """The pack's meta.json, checked for format and version.

    Raises:
        FileNotFoundError: root is not a folder.
        PackError: no meta.json (an interrupted or unfinished pack), or not ours.
    """
    if not os.path.isdir(root):
        raise FileNotFoundError(f"pack folder {root!r} is not a directory; pass the OUT folder "
                                "of `fmq-loader pack SRC OUT`")
    path = os.path.join(root, META_NAME)
    if not os.path.exists(path):
        raise PackError(f"{root!r} has no {META_NAME}: it is not a finished pack (a pack that "
                        "was interrupted has none); run `fmq-loader pack SRC OUT --resume` to "
                        "finish it")
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, ValueError) as exc:
        raise PackError(f"{path!r} cannot be read as a pack's meta.json ({exc}); pack the "
                        "images again") from exc
    if not isinstance(meta, dict) or meta.get("format") != PACK_FORMAT:
        raise PackError(f"{path!r} is not an fmq_loader pack's meta.json; pass the OUT folder "
                        "of `fmq-loader pack SRC OUT`")
    if meta.get("version") != FORMAT_VERSION:
        raise PackError(f"pack {root!r} has format version {meta.get('version')!r}; this "
                        f"fmq_loader reads version {FORMAT_VERSION}: pack the images again with "
                        "this version's `fmq-loader pack`")
    return meta


class PackedImages(TransformedImages):
    """A map-style dataset over a pack folder; ``ImageFolder``'s interface otherwise.

    Args:
        root: the pack folder (``OUT`` of ``fmq-loader pack SRC OUT``).
        transform: called on each image, as in ``ImageFolder``; our geometric transforms
            and a torchvision Compose headed by RandomResizedCrop/Resize read only the
            region they need.
        target_transform: called on each int label.
        on_error: "raise", "skip" or "warn" for records that cannot be decoded (a record
            that fails its checksum always raises ``PackError``).
        decoder: "auto", "pillow", "simplejpeg" or "turbo", for JPEG records.
        seed: None, or an int >= 0 for per-sample seeds (``ImageFolder``'s NOTE
            [ per-sample seeds ]).
        check_records: check each record's CRC-32 on every read (about 6 us for a 30 KB
            JPEG record, 35 us for a 256x341 raw one); False trusts the disk.

    Attributes:
        classes, class_to_idx, targets: as ``ImageFolder``'s.
        sizes: (N, 2) int array of each stored image's (width, height).
        meta: the pack's meta.json (options it was packed with, source, counts).

    Raises:
        FileNotFoundError: root is not a folder.
        PackError: an unfinished pack, another format version, a missing or damaged shard.
    """

    def __init__(self, root, transform: Callable | None = None,
                 target_transform: Callable | None = None, on_error: str = "raise",
                 decoder: str = "auto", seed: int | None = None, check_records: bool = True):
        self.root = os.path.abspath(os.fspath(root))
        self._init_transforms(transform, target_transform, on_error, decoder, seed)
        self.check_records = bool(check_records)
        self.meta = read_meta(self.root)
        self.classes = list(self.meta["classes"])
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        self._shards: list[Shard] | None = None
        shards = self._open_shards()
        self._starts = [s.first for s in shards]
        self._targets = np.concatenate([s.index["label"] for s in shards]).astype(np.int64)
        self.sizes = np.concatenate([np.stack([s.index["width"], s.index["height"]], axis=1)
                                     for s in shards]).astype(np.int64)
        if len(self._targets) != self.meta["records"]:
            raise PackError(f"pack {self.root!r} has {len(self._targets)} records in its shards "
                            f"but meta.json says {self.meta['records']}; pack the images again")

    def _open_shards(self) -> list[Shard]:
        if self._shards is None:
            shards, first = [], 0
            try:
                for entry in self.meta["shards"]:
                    path = os.path.join(self.root, entry["name"])
                    if not os.path.exists(path):
                        raise PackError(f"pack {self.root!r} lacks shard {entry['name']!r} that "
                                        "meta.json lists; copy the whole folder, or pack again")
                    shard = Shard(path)
                    shards.append(shard)
                    if shard.first != first or len(shard) != entry["records"]:
                        raise PackError(f"pack shard {path!r} holds records {shard.first}.."
                                        f"{shard.first + len(shard) - 1}, but meta.json expects "
                                        f"{entry['records']} from {first}; it belongs to another "
                                        "pack: pack the images again")
                    first += len(shard)
            except BaseException:
                for shard in shards:
                    shard.close()
                raise
            self._shards = shards
        return self._shards

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_shards"] = None  # NOTE [ packs in worker processes ]
        return state

    def close(self) -> None:
        """Unmap the shards in this process (a later read maps them again)."""
        shards, self._shards = self._shards, None
        for shard in shards or ():
            shard.close()

    def __enter__(self) -> "PackedImages":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def targets(self) -> Sequence:
        return _IndexView(self, "targets")

    def _locate(self, i: int) -> tuple[Shard, int]:
        s = bisect.bisect_right(self._starts, i) - 1
        return self._open_shards()[s], i - self._starts[s]

    def _name(self, i: int) -> str:
        shard, j = self._locate(i)
        return f"{shard.path}#{j}"

    def _load_image(self, i: int):
        shard, j = self._locate(i)
        view = shard.record(j)
        try:
            if self.check_records:
                shard.check_record(j, view)
            kind, width, height, channels = (int(v) for v in shard.index[j][
                ["kind", "width", "height", "channels"]])
            if kind == KIND_JPEG:
                img = EncodedImage(bytes(view), f"{shard.path}#{j}", self.decoder,
                                   size=(width, height))
            elif kind == KIND_RAW:
                pixels = np.frombuffer(view, np.uint8).reshape(height, width, channels)
                img = RawImage(pixels, f"{shard.path}#{j}")
            else:
                raise PackError(f"record {j} of pack shard {shard.path!r} has kind {kind}, which "
                                "this fmq_loader does not know; pack the images again")
            return self._apply_transform(img)
        finally:
            del view

    def verify(self) -> int:
        """Re-read every record: checksums of records, data and index; JPEG headers.

        Returns:
            the number of records checked.

        Raises:
            PackError: a record or shard fails its checksum, or a JPEG record's header
                disagrees with its stored size.
        """
        n = 0
        for shard in self._open_shards():
            shard.verify()
            for j in range(len(shard)):
                row = shard.index[j]
                if int(row["kind"]) == KIND_JPEG:
                    size = EncodedImage(bytes(shard.record(j)), f"{shard.path}#{j}").size
                    if size != (int(row["width"]), int(row["height"])):
                        raise PackError(f"record {j} of pack shard {shard.path!r} decodes as "
                                        f"{size}, but the index says "
                                        f"{(int(row['width']), int(row['height']))}")
                n += 1
        return n

    def __repr__(self) -> str:
        opts = self.meta.get("options", {})
        return (f"PackedImages(root={self.root!r}, {len(self)} samples, {len(self.classes)} "
                f"classes, {opts.get('record_format', '?')} records, "
                f"transform={self.transform!r}, seed={self.seed!r})")
