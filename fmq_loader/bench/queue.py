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

Every figure is the median over ``--runs`` runs, after one warm-up run.
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
        for _ in range(n):
            q.put(item())
        control.send("sent")
    if transport == "seed fmq":
        q.put(_STOP)  # ends the consumer's stealer thread
    control.send("bye")  # torch's fd sharing needs this process until every item is taken
    control.recv()


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


def _measure(ctx, transport: str, kind: str, n: int, runs: int) -> dict:
    q = _make_queue(transport, ctx)
    control, child_end = ctx.Pipe()
    proc = ctx.Process(target=_producer, args=(transport, q, kind, child_end),
                       name=f"bench-producer-{transport}", daemon=True)
    proc.start()
    child_end.close()
    consumer = _SeedQueue(q, MAXSIZE) if transport == "seed fmq" else q
    walls, cpus, lats = [], [], []
    try:
        for r in range(runs + 1):  # run 0 warms up (touches slabs, imports, page cache)
            t0, c0 = time.perf_counter(), time.process_time()
            control.send(("put", n))
            for _ in range(n):
                consumer.get()
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            control.recv()
            if r:
                walls.append(wall)
                cpus.append(cpu / n)
        for _ in range(runs):  # latency: one item already waiting
            control.send(("put", 1))
            control.recv()
            deadline = time.monotonic() + 10.0
            while _buffered(transport, consumer) == 0 and time.monotonic() < deadline:
                time.sleep(0.001)
            if _buffered(transport, consumer) is None:
                time.sleep(0.05)
            t0 = time.perf_counter()
            consumer.get()
            lats.append(time.perf_counter() - t0)
        control.send(("stop", 0))
        control.recv()
    finally:
        if proc.is_alive():
            try:
                control.send(("exit", 0))
            except OSError:
                pass
        proc.join(30)
        if proc.is_alive():
            proc.kill()
            proc.join()
        if transport == "fmq_loader.Queue":
            q.close()
    wall = statistics.median(walls)
    spec = KINDS[kind]
    nbytes = 0 if spec is None else int(np.prod(spec[0])) * np.dtype(spec[1]).itemsize
    return {"gbps": nbytes * n / wall / 1e9 if nbytes else None, "items_s": n / wall,
            "lat_s": statistics.median(lats), "cpu_s": statistics.median(cpus)}


def run(quick: bool = False, runs: int | None = None, kinds=tuple(KINDS)) -> dict:
    """Measure every transport on each item kind; return {(kind, transport): figures}."""
    runs = runs or (3 if quick else 5)
    counts = {"150 MB float64": 3 if quick else 6, "9.6 MB uint8": 15 if quick else 40,
              "tiny int": 5000 if quick else 20000}
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["numpy", "torch", "fmq_loader", __name__])
    return {(kind, t): _measure(ctx, t, kind, counts[kind], runs)
            for kind in kinds for t in TRANSPORTS}


def _fmt(v, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "ms":
        return f"{v * 1e3:.3f} ms" if v < 0.01 else f"{v * 1e3:.1f} ms"
    return f"{v:,.2f}" if v < 100 else f"{v:,.0f}"


def report(results: dict) -> str:
    head = (f"{'item':<15} {'transport':<17} {'GB/s':>7} {'items/s':>9} {'get latency':>12} "
            f"{'CPU/item':>10} {'x mp.Queue':>11} {'x torch':>8}")
    lines = [head, "-" * len(head)]
    for kind in dict.fromkeys(k for k, _ in results):
        base, tq = results[(kind, "mp.Queue")], results[(kind, "torch.mp.Queue")]
        for t in TRANSPORTS:
            r = results[(kind, t)]
            lines.append(f"{kind:<15} {t:<17} {_fmt(r['gbps'], ''):>7} {_fmt(r['items_s'], ''):>9} "
                         f"{_fmt(r['lat_s'], 'ms'):>12} {_fmt(r['cpu_s'], 'ms'):>10} "
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
