"""``fmq-loader pack``: turn an image folder (or a list) into a pack PackedImages reads.

Each source image is decoded (at reduced JPEG scale where the target size allows),
resized so its chosen side fits (``short_side``: the shorter side becomes at most that;
``max_side``: the longer one; never upscaled), converted to RGB, and stored as a JPEG at
``quality`` (4:2:0, baseline) or as raw pixels. Images are decoded and encoded in worker
processes, ``chunk`` sources per task with at most ``2 * workers`` tasks in flight, and
written in source order by this process, so a pack of any size needs only a few tasks'
records in memory and the same sources give the same shards.

NOTE [ interrupted packs ]
Shards are written as ``*.partial`` and renamed once whole (packfile.py); meta.json, which
PackedImages needs, is written last by a rename, so an interrupted pack never reads as
complete. After each shard, ``.pack-progress.json`` records the shards done and where in
the source list the next one starts; ``--resume`` checks that the sources and options are
the same, keeps the finished shards and packs the rest.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import re
import signal
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from fmq_loader.images.datasets import ON_ERROR, ImageFolder
from fmq_loader.images.decode import DecodeError, EncodedImage, read_bytes
from fmq_loader.images.packed import META_NAME, PACK_FORMAT, read_meta
from fmq_loader.images.packfile import (FORMAT_VERSION, KIND_JPEG, KIND_RAW, Shard, ShardWriter,
                                 shard_name)
from fmq_loader.progress import Progress

__all__ = ["PackOptions", "list_sources", "pack", "parse_size"]

logger = logging.getLogger(__name__)

PROGRESS_NAME = ".pack-progress.json"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.I)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text) -> int:
    """``"1GB"`` -> 10**9, ``"512MiB"`` -> 2**29, ``"4096"`` -> 4096.

    Raises:
        ValueError: not a size, or not positive.
    """
    match = _SIZE.match(str(text))
    value = None if match is None else float(match.group(1)) * _UNITS[(match.group(2) or "B").lower()]
    if value is None or value < 1:
        raise ValueError(f"shard size must be a positive size such as 1GB, 512MB or 256MiB, "
                         f"got {text!r}")
    return int(value)


@dataclass(frozen=True)
class PackOptions:
    """How each image is stored; see the module docstring.

    Raises:
        ValueError: both or neither side option, a side < 1, quality outside 1..100, an
            unknown record format or on_error.
    """

    short_side: int | None = 256
    max_side: int | None = None
    record_format: str = "jpeg"
    quality: int = 90
    exif_transpose: bool = False
    on_error: str = "raise"

    def __post_init__(self):
        if (self.short_side is None) == (self.max_side is None):
            raise ValueError(f"give exactly one of short_side and max_side, got "
                             f"short_side={self.short_side!r}, max_side={self.max_side!r}")
        side = self.short_side or self.max_side
        if isinstance(side, bool) or not isinstance(side, int) or side < 1:
            raise ValueError(f"the side length must be an int >= 1, got {side!r}")
        if self.record_format not in ("jpeg", "raw"):
            raise ValueError(f"record format must be 'jpeg' or 'raw', got {self.record_format!r}")
        if isinstance(self.quality, bool) or not isinstance(self.quality, int) \
                or not 1 <= self.quality <= 100:
            raise ValueError(f"quality must be an int in 1..100, got {self.quality!r}")
        if self.on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {self.on_error!r}")

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        """(w, h) after fitting the chosen side, aspect kept, never larger than the source."""
        side = min(width, height) if self.short_side is not None else max(width, height)
        limit = self.short_side if self.short_side is not None else self.max_side
        if side <= limit:
            return width, height
        f = limit / side
        return max(1, round(width * f)), max(1, round(height * f))


# ------------------------------------------------------------------ sources
def _list_file(path: str) -> list[tuple[str, object]]:
    base = os.path.dirname(os.path.abspath(path))
    with open(path, newline="") as f:
        if path.lower().endswith(".json"):
            rows = json.load(f)
            if not isinstance(rows, list):
                raise ValueError(f"{path!r} must hold a JSON list of [path, label] pairs or "
                                 f"{{'path': ..., 'label': ...}} objects, got {type(rows).__name__}")
            rows = [(r["path"], r["label"]) if isinstance(r, dict) else tuple(r) for r in rows]
        else:
            rows = [tuple(r) for r in csv.reader(f) if r]
            if rows and [c.strip().lower() for c in rows[0]] == ["path", "label"]:
                rows = rows[1:]
    out = []
    for n, row in enumerate(rows, 1):
        if len(row) != 2 or not isinstance(row[0], str) or not row[0]:
            raise ValueError(f"{path!r} entry {n} must be (path, label), got {row!r}")
        out.append((os.path.join(base, row[0]), row[1]))
    return out


def list_sources(src) -> tuple[list[str], np.ndarray, list[str]]:
    """(paths, labels, classes) of an ImageFolder tree, or of a CSV/JSON list of
    (path, label) rows (paths relative to the list's folder; labels all ints, or all
    class names, which are then sorted into labels 0..C-1).

    Raises:
        FileNotFoundError: src does not exist.
        ValueError: an empty or malformed list, or an ImageFolder error.
    """
    src = os.fspath(src)
    if os.path.isdir(src):
        folder = ImageFolder(src)
        return ([folder._path(i) for i in range(len(folder))], folder._targets.copy(),
                list(folder.classes))
    if not os.path.isfile(src):
        raise FileNotFoundError(f"pack source {src!r} does not exist; pass an ImageFolder tree "
                                "(root/<class>/<image>) or a .csv/.json list of path,label")
    rows = _list_file(src)
    if not rows:
        raise ValueError(f"pack source list {src!r} has no entries")
    raw = [label for _, label in rows]
    if all(isinstance(v, int) or (isinstance(v, str) and v.strip().lstrip("-").isdigit())
           for v in raw):
        labels = np.array([int(v) for v in raw], dtype=np.int64)
        if labels.min() < 0:
            raise ValueError(f"pack source list {src!r} has a negative label {labels.min()}; "
                             "labels must be ints >= 0 or class names")
        classes = [str(i) for i in range(int(labels.max()) + 1)]
    else:
        classes = sorted({str(v) for v in raw})
        index = {name: i for i, name in enumerate(classes)}
        labels = np.array([index[str(v)] for v in raw], dtype=np.int64)
    return [p for p, _ in rows], labels, classes


# ------------------------------------------------------- encoding (in workers)
def encode_image(path: str, opts: PackOptions) -> tuple[bytes, int, int]:
    """One source file -> (record bytes, width, height), as ``opts`` says.

    Raises:
        DecodeError: the file cannot be read or decoded (the message names it).
    """
    enc = EncodedImage(read_bytes(path), path, "auto", opts.exif_transpose)
    width, height = enc.size
    size = opts.target_size(width, height)
    img = enc.decode(min_size=size)
    if img.size != size:
        img = img.resize(size, Image.Resampling.LANCZOS)
    if opts.record_format == "raw":
        return np.asarray(img, dtype=np.uint8).tobytes(), size[0], size[1]
    out = io.BytesIO()
    img.save(out, "JPEG", quality=opts.quality, subsampling="4:2:0")
    return out.getvalue(), size[0], size[1]


def _encode_chunk(paths: list[str], opts: PackOptions) -> list:
    """Records of ``paths``; a source that fails is its ``DecodeError`` instead."""
    out = []
    for path in paths:
        try:
            out.append(encode_image(path, opts))
        except DecodeError as exc:
            out.append(exc)
    return out


def _ignore_sigint() -> None:
    """Encoding workers leave Ctrl-C to the packing process, which stops them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class _Inline:
    """``ProcessPoolExecutor``'s submit/shutdown, run in this process (workers=0)."""

    class _Done:
        def __init__(self, value):
            self._value = value

        def result(self):
            return self._value

    def submit(self, fn, *args):
        return self._Done(fn(*args))

    def shutdown(self, wait=True, cancel_futures=False):
        pass


# ---------------------------------------------------------------- the job
def _plan_key(paths, labels, classes, opts: PackOptions, shard_bytes: int) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps([asdict(opts), shard_bytes, classes, FORMAT_VERSION]).encode())
    for p in paths:
        h.update(os.fsencode(p) + b"\0")
    h.update(np.ascontiguousarray(labels).tobytes())
    return h.hexdigest()


def _write_json(path: str, data: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _prepare_out(out: str, key: str, resume: bool, overwrite: bool) -> dict:
    """Make ``out`` ready; return the progress to resume from (empty when starting)."""
    ours = re.compile(r"^(shard-\d{5}\.fmqpack(\.partial)?|meta\.json(\.tmp)?|"
                      r"\.pack-progress\.json(\.tmp)?)$")
    os.makedirs(out, exist_ok=True)
    names = os.listdir(out)
    foreign = [n for n in names if not ours.match(n)]
    if foreign:
        raise ValueError(f"pack output {out!r} holds files that are not a pack's ({foreign[:3]}"
                         f"{'...' if len(foreign) > 3 else ''}); choose an empty or new folder")
    if META_NAME in names and not overwrite:
        raise ValueError(f"{out!r} already holds a finished pack; pass --overwrite to replace it")
    progress = {}
    path = os.path.join(out, PROGRESS_NAME)
    if resume and os.path.exists(path) and not overwrite:
        with open(path) as f:
            progress = json.load(f)
        if progress.get("key") != key:
            raise ValueError(f"{out!r} holds an unfinished pack of other sources or options; "
                             "pass --overwrite to start again, or the same SRC and options "
                             "to resume it")
    elif names and not overwrite and not resume:
        raise ValueError(f"{out!r} holds an unfinished pack; pass --resume to finish it or "
                         "--overwrite to start again")
    keep = {s["name"] for s in progress.get("shards", [])}
    if META_NAME in names:
        os.unlink(os.path.join(out, META_NAME))  # first, so the folder never reads as whole
    for name in names:
        if name not in keep and name != META_NAME and (name != PROGRESS_NAME or not progress):
            os.unlink(os.path.join(out, name))
    for entry in progress.get("shards", []):  # a finished shard must still read back
        Shard(os.path.join(out, entry["name"])).close()
    return progress


def pack(src, out, opts: PackOptions | None = None, shard_size="1GB", workers: int | None = None,
         resume: bool = False, overwrite: bool = False, verify: bool = False,
         progress: bool = True, chunk: int = 32) -> dict:
    """Pack ``src`` (folder or list) into ``out``; return the finished pack's meta.json.

    Args:
        opts: how images are stored (default: JPEG, short side 256, quality 90).
        shard_size: a shard is closed once it holds this many bytes ("1GB", "256MiB", int).
        workers: encoding processes (default: CPU count; 0 encodes in this process).
        resume / overwrite: NOTE [ interrupted packs ].
        verify: re-read every record once written (``PackedImages.verify``).

    Raises:
        DecodeError: a source cannot be decoded and ``opts.on_error`` is "raise".
        ValueError, FileNotFoundError: bad sources, options or output folder.
    """
    opts = opts or PackOptions()
    shard_bytes = parse_size(shard_size)
    workers = (os.cpu_count() or 1) if workers is None else int(workers)
    if workers < 0:
        raise ValueError(f"workers must be an int >= 0, got {workers}")
    out = os.path.abspath(os.fspath(out))
    paths, labels, classes = list_sources(src)
    key = _plan_key(paths, labels, classes, opts, shard_bytes)
    state = _prepare_out(out, key, resume, overwrite)
    state.setdefault("key", key)
    state.setdefault("shards", [])
    state.setdefault("skipped", [])
    start = state["shards"][-1]["source_end"] if state["shards"] else 0
    t0 = time.perf_counter()
    kind = KIND_RAW if opts.record_format == "raw" else KIND_JPEG
    pool = _Inline() if workers == 0 else ProcessPoolExecutor(workers, initializer=_ignore_sigint)
    bar = Progress(len(paths), enabled=progress, desc=f"pack {out}", unit="img")
    bar.update(start)
    writer = None
    try:
        pending = []
        next_chunk = start
        position = start
        while pending or next_chunk < len(paths):
            while next_chunk < len(paths) and len(pending) < 2 * max(1, workers):
                end = min(len(paths), next_chunk + chunk)
                pending.append((next_chunk, pool.submit(_encode_chunk, paths[next_chunk:end], opts)))
                next_chunk = end
            first_source, future = pending.pop(0)
            for k, result in enumerate(future.result()):
                source = first_source + k
                if isinstance(result, DecodeError):
                    if opts.on_error == "raise":
                        raise result
                    state["skipped"].append(paths[source])
                    if opts.on_error == "warn":
                        logger.warning("skipping %s", result)
                else:
                    if writer is None:
                        first = sum(s["records"] for s in state["shards"])
                        writer = ShardWriter(os.path.join(out, shard_name(len(state["shards"]))),
                                             first)
                    data, width, height = result
                    writer.add(data, int(labels[source]), width, height, kind)
                position = source + 1
                bar.update(1)
                if writer is not None and writer.bytes_written >= shard_bytes:
                    _finish_shard(out, writer, state, position)
                    writer = None
        if writer is not None:
            _finish_shard(out, writer, state, position)
            writer = None
    except BaseException:
        if writer is not None:
            writer.abort()
        for name in os.listdir(out):  # a Ctrl-C inside ShardWriter() leaves one unassigned
            if name.endswith(".partial"):
                os.unlink(os.path.join(out, name))
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
        raise
    pool.shutdown(wait=True)
    bar.close()
    seconds = time.perf_counter() - t0
    records = sum(s["records"] for s in state["shards"])
    meta = {
        "format": PACK_FORMAT, "version": FORMAT_VERSION, "records": records,
        "classes": classes,
        "shards": [{"name": s["name"], "records": s["records"], "bytes": s["bytes"]}
                   for s in state["shards"]],
        "options": {**asdict(opts), "shard_size": shard_bytes},
        "source": os.path.abspath(os.fspath(src)), "skipped": state["skipped"],
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "stats": {"seconds": round(seconds, 3), "workers": workers,
                  "images": len(paths) - start},
    }
    _write_json(os.path.join(out, META_NAME), meta)
    os.unlink(os.path.join(out, PROGRESS_NAME))
    if verify:
        from fmq_loader.images.packed import PackedImages

        with PackedImages(out) as packed:
            packed.verify()
    return read_meta(out)


def _finish_shard(out: str, writer: ShardWriter, state: dict, source_end: int) -> None:
    writer.finish()
    state["shards"].append({"name": os.path.basename(writer.path), "records": len(writer),
                            "bytes": os.path.getsize(writer.path), "source_end": source_end})
    _write_json(os.path.join(out, PROGRESS_NAME), state)
