"""Queue benchmark: one producer process, the consumer in this process, four transports side by side.

Transports (one table, one run):

- ``mp.Queue``: ``multiprocessing.Queue`` carrying numpy arrays (pickled through a pipe).
- ``seed fmq``: the seed's design, re-implemented here: ``mp.Queue`` plus a consumer-side
  stealer thread that moves each item into a ``queue.Queue`` as soon as it arrives.
- ``torch.mp.Queue``: ``torch.multiprocessing`` queue carrying tensors; the producer
  lays each item into a fresh shared-memory tensor first, as DataLoader's collate does
  (``_new_shared``), so every item is a new segment.
- ``fmq_loader.Queue``: numpy arrays through reused shared-memory slabs.

Items: 150 MB float64 arrays (100x256x256x3), 9.6 MB uint8 batches (64x224x224x3), tiny ints.

Per transport and item kind, one producer process (forkserver, ``maxsize`` 4) puts
``n`` items per run when asked; the consumer times the ``n`` ``get()`` calls. Columns:

- GB/s, items/s: ``n`` items over the wall time from the request to the last ``get()``.
- get latency: one ``get()`` when an item is waiting (the producer has put it and,
  for transports with a consumer-side buffer, the buffer holds it).
- CPU/item: this process's CPU time (every thread: stealer, unpickling, fd passing)
  during a run, divided by ``n``.
- busy delivery: the time from ``put()`` to the consumer's ``get()`` returning it, when
  the producer goes on computing in Python right after each ``put()`` (as a loader
  worker goes on to its next sample). A transport whose feeder thread writes the pipe
  must first take the producer's GIL, which can take the interpreter's switch interval
  (5 ms); fmq_loader.Queue writes small messages from ``put()`` itself.

Every figure is the median over ``--runs`` runs, after one warm-up run. The four
producers of an item kind live side by side and the runs take turns (mp, seed, torch,
fmq, mp, ...), so load from other programs on the machine hits every transport alike.
Run: ``python -m fmq_loader.bench queue [--quick]`` (``--quick`` takes under a minute).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import queue as std_queue
import statistics
import threading
import time

import numpy as np

__all__ = ["main", "run"]

MAXSIZE = 4
KINDS = {  # name: (shape, dtype) or None for a tiny int
    "150 MB float64": ((100, 256, 256, 3), np.float64),
    "9.6 MB uint8": ((64, 224, 224, 3), np.uint8),
    "tiny int": None,
}
TRANSPORTS = ("mp.Queue", "seed fmq", "torch.mp.Queue", "fmq_loader.Queue")
_STOP = "fmq-bench-stop"
_BUSY_S = 0.02  # the producer's pure-Python work after each put() in the busy-delivery run


def _make_queue(transport: str, ctx):
    if transport == "fmq_loader.Queue":
        import fmq_loader
        return fmq_loader.Queue(MAXSIZE, ctx=ctx)
    if transport == "torch.mp.Queue":
        import torch.multiprocessing  # noqa: F401  (registers tensor reductions)
    return ctx.Queue(MAXSIZE)


def _producer(transport: str, q, kind: str, control) -> None:
    """Runs in the producer process: puts items when the consumer asks, until told to stop."""
    spec = KINDS[kind]
    src = 7 if spec is None else np.ones(*spec)
    if transport == "torch.mp.Queue" and spec is not None:
        import torch
        torch.set_num_threads(1)  # as DataLoader workers do
        src_t = torch.from_numpy(src)

        def item():  # a fresh shared-memory tensor per item, as DataLoader's collate
            out = src_t.new(src_t._typed_storage()._new_shared(src_t.numel(), device="cpu"))
            return out.view(src_t.shape).copy_(src_t)
    else:
        def item():
            return src
    while True:
        cmd, n = control.recv()
        if cmd == "stop":
            break
        if cmd == "busy":  # stamp each item, then compute in Python for _BUSY_S
            for _ in range(n):
                q.put((time.perf_counter(), item()))
                end, spin = time.perf_counter() + _BUSY_S, 0
                while time.perf_counter() < end:
                    spin += 1
            control.send("sent")
            continue
        for _ in range(n):
            q.put(item())
        control.send("sent")
    if transport == "seed fmq":
        q.put(_STOP)  # ends the consumer's stealer thread
    control.send("bye")  # torch's fd sharing needs this process until every item is taken
    control.recv()  # "exit"


class _SeedQueue:
    """The seed's consumer side: a stealer thread from mp.Queue into a local queue.Queue."""

    def __init__(self, src, maxsize: int) -> None:
        self._src, self._dst = src, std_queue.Queue(maxsize)
        self._thread = threading.Thread(target=self._steal, name="seed-stealer", daemon=True)
        self._thread.start()

    def _steal(self) -> None:
        while True:
            item = self._src.get()
            if isinstance(item, str) and item == _STOP:
                return
            self._dst.put(item)

    def get(self):
        return self._dst.get()

    def buffered(self) -> int:
        return self._dst.qsize()


def _buffered(transport: str, q) -> int | None:
    if transport == "seed fmq":
        return q.buffered()
    if transport == "fmq_loader.Queue":
        stealer = q._local.stealer
        return None if stealer is None else len(stealer)
    return None


class _Cell:
    """One transport carrying one item kind: its queue, its producer process, its figures."""

    def __init__(self, ctx, transport: str, kind: str) -> None:
        self.transport = transport
        self.q = _make_queue(transport, ctx)
        self.control, child_end = ctx.Pipe()
        self.proc = ctx.Process(target=_producer, args=(transport, self.q, kind, child_end),
                                name=f"bench-producer-{transport}", daemon=True)
        self.proc.start()
        child_end.close()
        self.consumer = _SeedQueue(self.q, MAXSIZE) if transport == "seed fmq" else self.q
        self.walls: list[float] = []
        self.cpus: list[float] = []
        self.lats: list[float] = []
        self.busy: list[float] = []

    def timed_run(self, n: int) -> tuple[float, float]:
        """Ask for ``n`` items, take them; return (wall seconds, consumer CPU seconds)."""
        get = self.consumer.get
        t0, c0 = time.perf_counter(), time.process_time()
        self.control.send(("put", n))
        for _ in range(n):
            get()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        self.control.recv()
        return wall, cpu

    def busy_delivery(self, n: int) -> float:
        """Median seconds from put() to get() when the producer computes after each put()."""
        self.control.send(("busy", n))
        delays = []
        for _ in range(n):
            stamp, _item = self.consumer.get()
            delays.append(time.perf_counter() - stamp)  # CLOCK_MONOTONIC: one clock for both
            del _item
        self.control.recv()
        return statistics.median(delays)

    def waiting_get(self) -> float:
        """Seconds one get() takes when its item is already waiting."""
        self.control.send(("put", 1))
        self.control.recv()
        deadline = time.monotonic() + 10.0
        while _buffered(self.transport, self.consumer) == 0 and time.monotonic() < deadline:
            time.sleep(0.001)
        if _buffered(self.transport, self.consumer) is None:
            time.sleep(0.05)
        t0 = time.perf_counter()
        self.consumer.get()
        return time.perf_counter() - t0

    def close(self) -> None:
        try:
            if self.proc.is_alive():
                self.control.send(("stop", 0))
                self.control.recv()  # "bye": the seed's stealer has its stop item
                self.control.send(("exit", 0))
        except (OSError, EOFError):
            pass
        self.proc.join(30)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        if self.transport == "fmq_loader.Queue":
            self.q.close()


def _measure_kind(ctx, kind: str, n: int, runs: int, busy_n: int) -> dict:
    """All transports on one item kind, runs interleaved so drifting machine load hits all alike."""
    cells = []
    try:
        for t in TRANSPORTS:
            cells.append(_Cell(ctx, t, kind))
        for cell in cells:  # warm-up: touches slabs, imports, page cache
            cell.timed_run(n)
        for _ in range(runs):
            for cell in cells:
                wall, cpu = cell.timed_run(n)
                cell.walls.append(wall)
                cell.cpus.append(cpu / n)
            for cell in cells:
                cell.lats.append(cell.waiting_get())
            for cell in cells:
                cell.busy.append(cell.busy_delivery(busy_n))
    finally:
        for cell in cells:
            cell.close()
    spec = KINDS[kind]
    nbytes = 0 if spec is None else int(np.prod(spec[0])) * np.dtype(spec[1]).itemsize
    out = {}
    for cell in cells:
        wall = statistics.median(cell.walls)
        out[(kind, cell.transport)] = {
            "gbps": nbytes * n / wall / 1e9 if nbytes else None, "items_s": n / wall,
            "lat_s": statistics.median(cell.lats), "cpu_s": statistics.median(cell.cpus),
            "busy_s": statistics.median(cell.busy)}
    return out


def run(quick: bool = False, runs: int | None = None, kinds=tuple(KINDS)) -> dict:
    """Measure every transport on each item kind; return {(kind, transport): figures}."""
    runs = runs or (3 if quick else 5)
    counts = {"150 MB float64": 3 if quick else 6, "9.6 MB uint8": 15 if quick else 40,
              "tiny int": 10000 if quick else 20000}
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["numpy", "torch", "fmq_loader", __name__])
    results = {}
    for kind in kinds:
        busy_n = 3 if kind == "150 MB float64" else 10
        results.update(_measure_kind(ctx, kind, counts[kind], runs, busy_n))
    return results


def _fmt(v, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "ms":
        return f"{v * 1e3:.3f} ms" if v < 0.01 else f"{v * 1e3:.1f} ms"
    return f"{v:,.2f}" if v < 100 else f"{v:,.0f}"


def report(results: dict) -> str:
    head = (f"{'item':<15} {'transport':<17} {'GB/s':>7} {'items/s':>9} {'get latency':>12} "
            f"{'CPU/item':>10} {'busy delivery':>14} {'x mp.Queue':>11} {'x torch':>8}")
    lines = [head, "-" * len(head)]
    for kind in dict.fromkeys(k for k, _ in results):
        base, tq = results[(kind, "mp.Queue")], results[(kind, "torch.mp.Queue")]
        for t in TRANSPORTS:
            r = results[(kind, t)]
            lines.append(f"{kind:<15} {t:<17} {_fmt(r['gbps'], ''):>7} {_fmt(r['items_s'], ''):>9} "
                         f"{_fmt(r['lat_s'], 'ms'):>12} {_fmt(r['cpu_s'], 'ms'):>10} "
                         f"{_fmt(r['busy_s'], 'ms'):>14} "
                         f"{r['items_s'] / base['items_s']:>10.2f}x "
                         f"{r['items_s'] / tq['items_s']:>7.2f}x")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fmq_loader.bench queue",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer items and runs (< 1 min)")
    parser.add_argument("--runs", type=int, default=None, help="timed runs per cell (median)")
    parser.add_argument("--items", default=",".join(KINDS), metavar="KIND,...",
                        help=f"item kinds to measure, of: {', '.join(KINDS)}")
    args = parser.parse_args(argv)
    kinds = [k.strip() for k in args.items.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        parser.error(f"--items must name kinds from {', '.join(KINDS)}, got {unknown!r}")
    import torch
    print(f"# {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}, "
          f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}; maxsize {MAXSIZE}; "
          f"median of {args.runs or (3 if args.quick else 5)} runs")
    print(report(run(quick=args.quick, runs=args.runs, kinds=kinds)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
