"""Soak: many short epochs; open fds, threads, RSS, children and slab bytes must stay flat.

``python -m fmq_loader.bench soak [--epochs 200] [--workers 2] [--context fork]``
prints, for persistent workers and for a new pool per epoch, the figures after
the first epoch and after the last. ``measure()`` is what
tests/test_soak.py checks.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing as mp
import os

import numpy as np

__all__ = ["SoakDataset", "measure", "main"]

FIELDS = ("fds", "slab_fds", "threads", "rss_mib", "children", "slab_bytes")


class SoakDataset:
    """``n`` samples of ``sample_bytes`` each (float32), content = index."""

    def __init__(self, n: int = 32, sample_bytes: int = 64 << 10) -> None:
        self.n, self.sample_bytes = n, sample_bytes

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        return np.full(self.sample_bytes // 4, i, np.float32)


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


def _fd_targets() -> list[str]:
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # the directory's own fd, closed by now
            pass
    return out


def _snapshot(slab_bytes: int) -> dict:
    targets = _fd_targets()
    slab_fds = sum(t.startswith("/memfd:fmq_") for t in targets)
    return {"fds": len(targets) - slab_fds,  # pipes, sockets, files: must stay flat
            # a slab's descriptor, plus one more per mapping of it (mmap keeps a dup): grows
            # with the slabs in use, at most 2 x (slabs + control block)
            "slab_fds": slab_fds,
            "threads": _status("Threads"),  # native threads too, not only Python's
            "rss_mib": _status("VmRSS") / 1024,
            "children": len(mp.active_children()),
            "slab_bytes": slab_bytes}


def measure(epochs: int, persistent: bool, *, num_workers: int = 2, batch_size: int = 4,
            n: int = 32, sample_bytes: int = 64 << 10, context: str = "fork") -> list[dict]:
    """One snapshot per epoch, taken after the epoch (slab bytes: the most seen during it)."""
    from fmq_loader import FMQLoader

    rows = []
    loader = FMQLoader(SoakDataset(n, sample_bytes), batch_size=batch_size, shuffle=True,
                       num_workers=num_workers, multiprocessing_context=context,
                       persistent_workers=persistent)
    try:
        for epoch in range(epochs):
            slab_bytes, batches = 0, 0
            for batch in loader:
                batches += 1
                if int(batch[0, 0]) != int(batch[0, -1]):
                    raise AssertionError(f"epoch {epoch}: a torn sample")
                slab_bytes = max(slab_bytes, sum(p.results.shared_memory_bytes()
                                                 for p in list(loader._pools)))
                del batch
            if batches != -(-n // batch_size):
                raise AssertionError(f"epoch {epoch}: {batches} batches")
            gc.collect()
            rows.append(_snapshot(slab_bytes))
    finally:
        loader.close()
    return rows


def growth(rows: list[dict], warmup: int = 1) -> dict:
    """Last snapshot minus the one after ``warmup`` epochs, per field."""
    return {k: rows[-1][k] - rows[warmup - 1][k] for k in FIELDS}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fmq_loader.bench soak", description=__doc__)
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--context", default="fork", choices=mp.get_all_start_methods())
    p.add_argument("--sample-bytes", type=int, default=64 << 10)
    args = p.parse_args(argv)
    if args.epochs < 2:
        p.error(f"--epochs must be >= 2 to compare a first and a last epoch, got {args.epochs}")
    print(f"{args.epochs} epochs of 32 samples x {args.sample_bytes:,} bytes, batch 4, "
          f"{args.workers} workers ({args.context}); after epoch 1 -> after epoch {args.epochs}")
    print(f"{'workers':12} " + " ".join(f"{k:>22}" for k in FIELDS))
    for persistent in (True, False):
        rows = measure(args.epochs, persistent, num_workers=args.workers, context=args.context,
                       sample_bytes=args.sample_bytes)
        cells = []
        for k in FIELDS:
            a, b = rows[0][k], rows[-1][k]
            cells.append(f"{a:.1f} -> {b:.1f}" if k == "rss_mib" else f"{a:,} -> {b:,}")
        print(f"{'persistent' if persistent else 'per epoch':12} " + " ".join(f"{c:>22}" for c in cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
