"""``fmq-loader regrid``: a lossless copy of an image folder whose JPEG crops decode faster.

Every JPEG of SRC is rewritten into OUT with a restart marker every few MCUs (the same
DCT coefficients, so Pillow, torchvision and our decoders give exactly the same pixels;
baseline, with optimised Huffman tables), and every other file is copied unchanged,
under the same relative path, symlinked folders followed and empty ones made, as
``ImageFolder`` sees them: ``ImageFolder(OUT)`` has the same samples, classes and labels
as ``ImageFolder(SRC)``. The C region decoder then decodes a crop from just the restart
intervals covering it, instead of entropy-decoding every row above its last one (NOTE
[ restart grid ] in ``_jpegregion.c``): on 1600x1200 photos a RandomResizedCrop decodes
in about 2/3 of the time (docs/benchmarks.md).

Sizes: files written with the standard Huffman tables (most encoders, cameras and Pillow
by default) come out about as large (0.99-1.01x on our image sets); files that already
had optimised tables or were progressive grow by the markers, 5-8% at quality 90 and
more at low quality (up to ~1.4x at quality 50). The run reports the total.

A JPEG that libjpeg refuses (corrupt, truncated) and a multi-picture file (MPO: its
other frames lie after the first image's end, which a rewrite would drop) are copied
unchanged and counted: at training time they decode as before. Files without a JFIF
segment (camera files) get one in front of their EXIF segment, as jpegtran does;
arithmetic-coded files come out Huffman-coded. A file that cannot be read stops the run
with an error naming it. Files are written as ``NAME.fmq-regrid-partial``, synced and
renamed once whole; an interrupted run removes its partial files. ``resume=True`` keeps
every file already in OUT as it is (whatever options wrote it) and removes partial files
a killed run left; ``overwrite=True`` replaces files of the same name and leaves others.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor

from fmq_loader.images.decode import DecodeError, read_bytes, region_decoder_available
from fmq_loader.images.pack import _Inline, _ignore_sigint
from fmq_loader.progress import Progress

__all__ = ["DEFAULT_INTERVAL", "regrid_bytes", "regrid_folder"]

DEFAULT_INTERVAL = 2  # MCUs per restart interval: 32 px of 4:2:0 (docs/benchmarks.md)
_JPEG_MAGIC = b"\xff\xd8\xff"
_CHUNK = 16  # files per task
_PARTIAL = ".fmq-regrid-partial"


def _check_available() -> None:
    if not region_decoder_available():
        raise RuntimeError("regrid needs the C extension fmq_loader.images._jpegregion, which "
                           "was not built (no libjpeg-turbo headers when fmq-loader was "
                           "installed): apt-get install libjpeg62-turbo-dev, then reinstall")


def _check_interval(interval) -> None:
    if not isinstance(interval, int) or isinstance(interval, bool) or not 1 <= interval <= 65535:
        raise ValueError(f"interval must be an int from 1 to 65535 (MCUs), got {interval!r}; "
                         f"the default is {DEFAULT_INTERVAL}")


def regrid_bytes(data: bytes, interval: int = DEFAULT_INTERVAL, path: str | None = None) -> bytes:
    """Rewrite one JPEG losslessly with a restart marker every ``interval`` MCUs or fewer.

    Args:
        data: the JPEG file's bytes.
        interval: MCUs per restart interval at most (the largest divisor of a row's MCUs
            not above it is used).
        path: where the bytes came from, for the error message.

    Returns:
        the new JPEG's bytes.

    Raises:
        DecodeError: libjpeg refused the data (the message names ``path`` and why).
        ValueError: ``interval`` is not 1 to 65535.
        RuntimeError: the C extension is not built.
    """
    _check_available()
    from fmq_loader.images import _jpegregion

    _check_interval(interval)
    try:
        return _jpegregion.regrid(data, interval)[0]
    except ValueError as exc:
        where = repr(path) if path is not None else f"<{len(data)} bytes>"
        raise DecodeError(f"{where} could not be regridded: {exc}; it is copied unchanged "
                          "by regrid_folder, and decoded by Pillow as before", path) from exc


def _write(path: str, data: bytes) -> None:
    partial = path + _PARTIAL
    with open(partial, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())  # a file that is there on resume is whole
    os.replace(partial, path)


def _is_multi_picture(data: bytes) -> bool:
    """An MPO (an APP2 "MPF" segment before the scan): its other frames follow the first EOI."""
    i = 2
    while i + 4 <= len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        if marker == 0xDA:
            return False
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if marker == 0xE2 and data[i + 4:i + 8] == b"MPF\x00":
            return True
        i += 2 + length
    return False


def _regrid_chunk(jobs: list[tuple[str, str]], interval: int, resume: bool) -> list:
    """(status, bytes in, bytes out) per job: regridded, copied, refused (a JPEG libjpeg
    refused, or an MPO: copied unchanged) or kept (resume: already there).

    Raises:
        DecodeError: a source cannot be read (naming it).
    """
    results = []
    for source, target in jobs:
        if resume and os.path.exists(target):
            results.append(("kept", 0, 0))
            continue
        data = read_bytes(source)
        status, out = "copied", data
        if data[:3] == _JPEG_MAGIC and _is_multi_picture(data):
            status = "refused"
        elif data[:3] == _JPEG_MAGIC:
            try:
                status, out = "regridded", regrid_bytes(data, interval, source)
            except DecodeError:
                status = "refused"
        os.makedirs(os.path.dirname(target), exist_ok=True)
        _write(target, out)
        results.append((status, len(data), len(out)))
    return results


def _list_tree(src: str) -> tuple[list[str], list[str]]:
    """(folders, files) under ``src``, relative, symlinked folders followed (as ImageFolder
    does; a link back to a folder above is not followed twice)."""
    folders, found, seen = [], [], set()
    for folder, dirs, files in os.walk(src, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        folders.append(os.path.relpath(folder, src))
        found += [os.path.relpath(os.path.join(folder, f), src) for f in sorted(files)]
    return folders, found


def _remove_partials(out: str) -> None:
    for folder, _, files in os.walk(out):
        for name in files:
            if name.endswith(_PARTIAL):
                os.unlink(os.path.join(folder, name))


def regrid_folder(src, out, interval: int = DEFAULT_INTERVAL, workers: int | None = None,
                  resume: bool = False, overwrite: bool = False, progress: bool = True) -> dict:
    """Write a lossless, restart-gridded copy of the folder ``src`` into ``out``.

    Args:
        src: a folder (an ImageFolder tree, or any tree of files).
        out: the folder to write; new or empty unless ``resume`` or ``overwrite``.
        interval: MCUs per restart interval at most (default 2).
        workers: processes (default: the CPUs this process may use); 0 runs in this one.
        resume: keep files already in ``out`` (an interrupted run) and do the rest.
        overwrite: write into a non-empty ``out``, replacing files of the same name.
        progress: show a progress bar.

    Returns:
        counts: files, regridded, copied (not JPEG), refused (JPEGs copied unchanged),
        kept (resume), bytes_in and bytes_out (of the files written), seconds, workers.

    Raises:
        ValueError: ``src`` is not a folder, ``out`` is inside it or not empty, or a bad
            ``interval`` / ``workers``.
        RuntimeError: the C extension is not built.
        DecodeError: a source file cannot be read (the message names it); the files
            written so far stay, and ``resume=True`` finishes the run.
    """
    _check_available()
    src, out = os.path.abspath(os.fspath(src)), os.path.abspath(os.fspath(out))
    if not os.path.isdir(src):
        raise ValueError(f"regrid: SRC must be a folder, got {src!r}")
    if os.path.commonpath([src, out]) == src:
        raise ValueError(f"regrid: OUT must not be SRC or inside it, got OUT={out!r} for "
                         f"SRC={src!r}; choose a folder next to SRC")
    _check_interval(interval)
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
            os.cpu_count() or 1)
    if not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be an int >= 0 (0: no worker processes), got {workers!r}")
    if os.path.isdir(out) and os.listdir(out) and not (resume or overwrite):
        raise ValueError(f"regrid: OUT {out!r} is not empty; pass --resume to finish an "
                         "interrupted run there, or --overwrite to replace its files")
    os.makedirs(out, exist_ok=True)
    if resume:
        _remove_partials(out)  # a killed run's
    folders, files = _list_tree(src)
    for rel in folders:
        os.makedirs(os.path.join(out, rel), exist_ok=True)
    jobs = [(os.path.join(src, rel), os.path.join(out, rel)) for rel in files]
    counts = dict(files=len(files), regridded=0, copied=0, refused=0, kept=0, bytes_in=0,
                  bytes_out=0)
    t0 = time.perf_counter()
    pool = _Inline() if workers == 0 else ProcessPoolExecutor(workers, initializer=_ignore_sigint)
    bar = Progress(len(jobs), enabled=progress, desc=f"regrid {out}", unit="file")
    try:
        pending, next_job = [], 0
        while pending or next_job < len(jobs):
            while next_job < len(jobs) and len(pending) < 2 * max(1, workers):
                chunk = jobs[next_job:next_job + _CHUNK]
                pending.append(pool.submit(_regrid_chunk, chunk, interval, resume))
                next_job += len(chunk)
            for status, size_in, size_out in pending.pop(0).result():
                counts[status] += 1
                counts["bytes_in"] += size_in
                counts["bytes_out"] += size_out
                bar.update(1)
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        _remove_partials(out)
        bar.close()
        raise
    pool.shutdown(wait=True)
    bar.close()
    counts.update(seconds=round(time.perf_counter() - t0, 3), workers=workers)
    return counts
