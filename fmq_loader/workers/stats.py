"""``loader.stats()``: is the loader what slows training? Counters cheap enough to leave on.

Main process: each ``next()`` reads the clock twice and bumps a few counters
(``Meter.record``); the share of the loop's wall time spent inside ``next()`` is
the *data-bound share* -- near 1 when the training step is faster than the
workers, near 0 when the step dominates.

Workers: after each task a worker adds its busy time, batch and sample counts
and its dataset's ``skipped`` count to its own row of a shared float64 array
(``WORKER_FIELDS``); only that worker writes the row, the main process reads it
when ``stats()`` is called, so nothing crosses a pipe.

It lives in workers/, the lowest layer that uses it: workers write the rows, the pool
sizes and reads them, and loading/ builds ``LoaderStats`` from both.
"""

from __future__ import annotations

import collections
import dataclasses
import time

__all__ = ["LoaderStats", "WorkerStats", "Meter", "batch_size_of", "WORKER_FIELDS", "BUSY",
           "BATCHES", "SAMPLES", "SKIPPED"]

# Columns of a worker's row in the pool's shared stats array.
BUSY, BATCHES, SAMPLES, SKIPPED = range(4)
WORKER_FIELDS = 4

_WINDOW_S = 5.0  # the "recent" rate looks back this far


@dataclasses.dataclass(frozen=True)
class WorkerStats:
    """One worker process: what it made and how much of its life it spent making it."""

    worker_id: int
    pid: int | None
    batches: int
    samples: int
    busy_s: float
    busy_share: float  # busy_s / seconds since the worker started, in [0, 1]
    samples_per_s: float  # samples / seconds since the worker started


@dataclasses.dataclass(frozen=True)
class LoaderStats:
    """A snapshot of an ``FMQLoader``; see ``FMQLoader.stats()``."""

    batches: int
    samples: int
    elapsed_s: float
    samples_per_s: float
    recent_samples_per_s: float
    wait_s: float
    data_bound: float
    recent_data_bound: float
    queue_depth: int
    shared_memory_bytes: int
    pipe_batches: int  # batches that came through the pipe: every slab was held (see extra_slabs)
    workers: tuple[WorkerStats, ...]
    skipped_files: int

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        """One line, for logs."""
        busy = (" workers busy " + "/".join(f"{w.busy_share:.0%}" for w in self.workers)
                if self.workers else " no workers")
        return (f"{self.batches} batches, {self.samples} samples, "
                f"{self.recent_samples_per_s:.1f} samples/s (overall {self.samples_per_s:.1f}), "
                f"data-bound {self.recent_data_bound:.0%} (overall {self.data_bound:.0%}),{busy}, "
                f"queue {self.queue_depth}, "
                f"slabs {self.shared_memory_bytes / 2**20:.1f} MiB, skipped files {self.skipped_files}")

    def format(self) -> str:
        """A small human-readable table."""
        lines = [
            f"batches            {self.batches}",
            f"samples            {self.samples}",
            f"elapsed            {self.elapsed_s:.2f} s",
            f"samples/s          {self.samples_per_s:.1f} overall, "
            f"{self.recent_samples_per_s:.1f} over the last {_WINDOW_S:.0f} s",
            f"waiting in next()  {self.wait_s:.2f} s = data-bound share {self.data_bound:.1%} "
            f"overall, {self.recent_data_bound:.1%} over the last {_WINDOW_S:.0f} s",
            f"queue depth        {self.queue_depth} batches ready",
            f"shared memory      {self.shared_memory_bytes / 2**20:.1f} MiB of slabs; "
            f"{self.pipe_batches} batches sent through the pipe for want of a free slab",
            f"skipped files      {self.skipped_files}",
        ]
        if self.workers:
            lines.append("worker  pid      batches  samples  busy   samples/s")
            lines += [f"{w.worker_id:<7} {w.pid!s:<8} {w.batches:<8} {w.samples:<8} "
                      f"{w.busy_share:>5.0%}  {w.samples_per_s:.1f}" for w in self.workers]
        return "\n".join(lines)

    __str__ = format


class Meter:
    """The main process's side: time inside ``next()`` and what it handed out."""

    __slots__ = ("batches", "samples", "wait_s", "first_t", "last_t", "recent", "next_log",
                 "log_every_s", "log")

    def __init__(self, log_every_s: float | None = None, log=None) -> None:
        self.log_every_s = log_every_s
        self.log = log  # a WeakMethod of the loader's logging method
        self.next_log = float("inf")
        self.batches = 0
        self.samples = 0
        self.wait_s = 0.0
        self.first_t: float | None = None  # when the first next() began
        self.last_t = 0.0
        self.recent: collections.deque = collections.deque()  # (time, samples, wait) in the window

    def record(self, start: float, end: float, samples: int) -> None:
        """One ``next()`` that began at ``start`` and returned ``samples`` at ``end``."""
        if self.first_t is None:
            self.first_t = start
            if self.log_every_s:
                self.next_log = start + self.log_every_s
        self.batches += 1
        self.samples += samples
        self.wait_s += end - start
        self.last_t = end
        recent = self.recent
        recent.append((end, samples, end - start))
        if recent[0][0] < end - _WINDOW_S:
            recent.popleft()
        if end >= self.next_log:
            self.next_log = end + self.log_every_s
            log = self.log()
            if log is not None:
                log()

    def snapshot(self, workers=(), queue_depth: int = 0, shared_memory_bytes: int = 0,
                 skipped_files: int = 0, pipe_batches: int = 0,
                 now: float | None = None) -> LoaderStats:
        now = time.perf_counter() if now is None else now
        elapsed = 0.0 if self.first_t is None else now - self.first_t
        while self.recent and self.recent[0][0] < now - _WINDOW_S:
            self.recent.popleft()
        window = min(_WINDOW_S, elapsed)
        recent_samples = sum(n for _, n, _ in self.recent)
        # only the part of each wait inside the window (a wait is [end - wait, end])
        recent_wait = sum(min(w, end - (now - window)) for end, _, w in self.recent)
        return LoaderStats(
            batches=self.batches, samples=self.samples, elapsed_s=elapsed,
            samples_per_s=self.samples / elapsed if elapsed > 0 else 0.0,
            recent_samples_per_s=recent_samples / window if window > 0 else 0.0,
            wait_s=self.wait_s,
            data_bound=min(1.0, self.wait_s / elapsed) if elapsed > 0 else 0.0,
            recent_data_bound=min(1.0, recent_wait / window) if window > 0 else 0.0,
            queue_depth=queue_depth, shared_memory_bytes=shared_memory_bytes,
            pipe_batches=pipe_batches,
            workers=tuple(workers), skipped_files=skipped_files)


def batch_size_of(batch) -> int:
    """Samples in a collated batch: the first dimension of its first tensor/array, else 1."""
    while True:
        shape = getattr(batch, "shape", None)
        if shape is not None:
            return int(shape[0]) if len(shape) else 1
        if isinstance(batch, dict):
            if not batch:
                return 1
            batch = next(iter(batch.values()))
        elif isinstance(batch, (list, tuple)) and batch:
            if not isinstance(batch[0], (list, tuple, dict)) and getattr(batch[0], "shape", None) is None:
                return len(batch)
            batch = batch[0]
        else:
            return 1
