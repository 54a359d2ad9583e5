"""The packed image format on disk: shards of records, each shard with its own index.

``fmq-loader pack`` (pack.py) writes it; ``PackedImages`` (packed.py) reads it. A pack is
a folder::

    OUT/meta.json            written last, by an atomic rename: a pack without it is
                             incomplete and is refused
    OUT/shard-00000.fmqpack  records 0..n0-1
    OUT/shard-00001.fmqpack  records n0..n0+n1-1, ...

NOTE [ shard layout ]
All integers little-endian. A shard is a 64-byte header, the records' bytes back to back,
then the index (one ``INDEX_DTYPE`` row per record):

====== ===== =================================================================
offset bytes field
====== ===== =================================================================
0      8     magic ``b"FMQPACK\\0"``
8      4     format version (``FORMAT_VERSION``); any other version is refused
12     4     header size (64)
16     8     records in this shard
24     8     index offset (= 64 + bytes of all records)
32     8     index size in bytes (= records x 40)
40     4     CRC-32 of all record bytes (checked by ``verify()``)
44     4     CRC-32 of the index bytes (checked at open)
48     8     position of the shard's first record in the whole pack
56     4     reserved, zero
60     4     CRC-32 of header bytes 0..59 (checked at open)
====== ===== =================================================================

An index row: offset u64 (from the start of the file), length u32, crc u32 (CRC-32 of the
record's bytes, checked on every read unless ``check_records=False``), label i64,
width u32, height u32, kind u8 (``KIND_JPEG`` or ``KIND_RAW``), channels u8 (3), 6 bytes
of padding. A raw record is ``height x width x channels`` uint8 pixels, row-major (HWC).

A shard is written as ``NAME.partial`` and renamed when its index and header are on disk
(after an fsync), so a file with the final name is whole; ``--resume`` keeps those.
"""

from __future__ import annotations

import mmap
import os
import struct
import zlib

import numpy as np

from fmq_loader.errors import FMQError

__all__ = ["FORMAT_VERSION", "INDEX_DTYPE", "KIND_JPEG", "KIND_RAW", "PackError",
           "ShardWriter", "Shard", "shard_name"]

MAGIC = b"FMQPACK\0"
FORMAT_VERSION = 1
HEADER = struct.Struct("<8sIIQQQIIQ4x")  # 60 bytes, then the header's own CRC-32
HEADER_SIZE = 64
KIND_JPEG, KIND_RAW = 0, 1
KIND_NAMES = {KIND_JPEG: "jpeg", KIND_RAW: "raw"}
INDEX_DTYPE = np.dtype([("offset", "<u8"), ("length", "<u4"), ("crc", "<u4"), ("label", "<i8"),
                        ("width", "<u4"), ("height", "<u4"), ("kind", "u1"), ("channels", "u1"),
                        ("pad", "V6")])
assert INDEX_DTYPE.itemsize == 40


class PackError(FMQError, ValueError):
    """A pack is incomplete, damaged, or of another format version."""


def shard_name(number: int) -> str:
    return f"shard-{number:05d}.fmqpack"


class ShardWriter:
    """Writes one shard: ``add()`` records, then ``finish()`` (or ``abort()``).

    Args:
        path: the shard's final path; it is written as ``path + ".partial"`` until finished.
        first: the position of its first record in the whole pack.
    """

    def __init__(self, path: str, first: int):
        self.path, self.first = path, first
        self._partial = path + ".partial"
        self._file = open(self._partial, "wb")
        self._file.write(b"\0" * HEADER_SIZE)
        self._rows: list[tuple] = []
        self._offset = HEADER_SIZE
        self._crc = 0

    @property
    def bytes_written(self) -> int:
        return self._offset

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, data: bytes, label: int, width: int, height: int, kind: int,
            channels: int = 3) -> None:
        self._file.write(data)
        self._rows.append((self._offset, len(data), zlib.crc32(data), label, width, height,
                           kind, channels, b""))
        self._offset += len(data)
        self._crc = zlib.crc32(data, self._crc)

    def finish(self) -> None:
        """Write the index and header, flush to disk, and give the file its final name."""
        index = np.array(self._rows, dtype=INDEX_DTYPE).tobytes()
        self._file.write(index)
        head = HEADER.pack(MAGIC, FORMAT_VERSION, HEADER_SIZE, len(self._rows), self._offset,
                           len(index), self._crc, zlib.crc32(index), self.first)
        self._file.seek(0)
        self._file.write(head + struct.pack("<I", zlib.crc32(head)))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._partial, self.path)

    def abort(self) -> None:
        """Close and delete the partial file."""
        self._file.close()
        try:
            os.unlink(self._partial)
        except FileNotFoundError:
            pass


class Shard:
    """One shard, memory-mapped read-only; its header and index checked at open.

    The file descriptor is closed once mapped: a process holds one mapping per shard
    and no open file. Pages are the page cache's, shared by every worker.

    Raises:
        PackError: the file is not a shard, was written by another format version, is
            truncated, or its header or index fails its checksum.
    """

    def __init__(self, path: str):
        self.path = path
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < HEADER_SIZE:
                raise self._bad(f"is {size} bytes, shorter than a shard header")
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            self._read_index(size)
        except BaseException:
            self._map.close()
            raise

    def _bad(self, what: str) -> PackError:
        return PackError(f"pack shard {self.path!r} {what}; the pack is damaged or incomplete: "
                         "pack it again with `fmq-loader pack`")

    def _read_index(self, size: int) -> None:
        head = self._map[:HEADER_SIZE]
        magic, version, header_size, records, index_at, index_size, data_crc, index_crc, first = \
            HEADER.unpack_from(head)
        if magic != MAGIC:
            raise PackError(f"{self.path!r} is not an fmq_loader pack shard (magic {magic!r}, "
                            f"expected {MAGIC!r}); point PackedImages at a folder that "
                            "`fmq-loader pack` wrote")
        if version != FORMAT_VERSION:
            raise PackError(f"pack shard {self.path!r} has format version {version}; this "
                            f"fmq_loader reads version {FORMAT_VERSION}: pack the images again "
                            "with this version's `fmq-loader pack`")
        if struct.unpack_from("<I", head, 60)[0] != zlib.crc32(head[:60]):
            raise self._bad("has a header that fails its checksum")
        if (header_size != HEADER_SIZE or index_size != records * INDEX_DTYPE.itemsize
                or index_at + index_size != size):
            raise self._bad(f"has an inconsistent header ({records} records, index at "
                            f"{index_at} of {index_size} bytes, file {size} bytes)")
        raw_index = self._map[index_at:index_at + index_size]
        if zlib.crc32(raw_index) != index_crc:
            raise self._bad("has an index that fails its checksum")
        index = np.frombuffer(raw_index, dtype=INDEX_DTYPE)
        ends = index["offset"] + index["length"]
        if records and (index["offset"].min() < HEADER_SIZE or ends.max() > index_at):
            raise self._bad("has index entries outside its data")
        self.index, self.first, self.data_crc = index, int(first), data_crc
        self.data_end = int(index_at)

    def __len__(self) -> int:
        return len(self.index)

    def record(self, i: int) -> memoryview:
        """Record ``i``'s bytes: a read-only view of the mapping (no copy)."""
        row = self.index[i]
        offset = int(row["offset"])
        return memoryview(self._map)[offset:offset + int(row["length"])]

    def check_record(self, i: int, data) -> None:
        if zlib.crc32(data) != int(self.index[i]["crc"]):
            raise PackError(f"record {i} of pack shard {self.path!r} fails its checksum; the "
                            "file is damaged on disk: pack the images again with "
                            "`fmq-loader pack`")

    def verify(self) -> None:
        """Re-read every record and check its CRC and the shard's data CRC.

        Raises:
            PackError: a record or the data fails its checksum.
        """
        for i in range(len(self.index)):
            self.check_record(i, self.record(i))
        if zlib.crc32(memoryview(self._map)[HEADER_SIZE:self.data_end]) != self.data_crc:
            raise self._bad("has data that fails its checksum")

    def close(self) -> None:
        """Unmap now, or when the last array still viewing a record is freed."""
        try:
            self._map.close()
        except BufferError:  # a sample still views it; unmapped when that is collected
            pass
