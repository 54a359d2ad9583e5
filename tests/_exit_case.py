"""One case of the exit matrix (tests/test_exit_matrix.py), run as a script in a new session.

    python _exit_case.py STYLE WORKERS METHOD PERSISTENT CASE

STYLE map|iter, WORKERS 1|2, METHOD fork|spawn|forkserver, PERSISTENT 0|1.
Reports ``<tag> <json>`` lines on stdout: ``workers`` (pids), ``sem`` (each
POSIX semaphore name it creates), ``ready`` (signal me now), ``error``,
``after`` (workers still alive after the case's own cleanup).

SIGUSR1 makes any process of the case (the script, its workers, the forkserver)
write every thread's Python stack to stderr: tests/test_exit_matrix.py sends it
to a case that hangs. Registered first thing at module level, so spawned workers
(which run this module's top level as ``__mp_main__``), the forkserver (which
preloads it) and forked workers (which inherit it) have it too.
"""

import faulthandler
import signal

faulthandler.register(signal.SIGUSR1, all_threads=True)

import gc  # (after the registration above: a hang in an import shows too)
import multiprocessing as mp
import os
import sys
import time

import torch

from fmq_loader import FMQLoader

from _script_report import error_report, name_semaphores, report

STYLE, WORKERS, METHOD, PERSISTENT, CASE = sys.argv[1:6]
name_semaphores()


def _sample(i, fail_at):
    if i == fail_at:
        raise KeyError(f"bad sample {i}")
    return torch.full((64, 64), float(i))  # 16 KiB


class MapDataset:
    def __init__(self, n, delay_s=0.0, fail_at=None):
        self.n, self.delay_s, self.fail_at = n, delay_s, fail_at

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if self.delay_s:
            time.sleep(self.delay_s)
        return _sample(i, self.fail_at)


class IterDataset(torch.utils.data.IterableDataset):
    def __init__(self, n, delay_s=0.0, fail_at=None):
        self.n, self.delay_s, self.fail_at = n, delay_s, fail_at

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        for i in range(wid, self.n, nw):
            if self.delay_s:
                time.sleep(self.delay_s)
            yield _sample(i, self.fail_at)


def workers():
    return sorted(p.pid for p in mp.active_children())


def make(n, delay_s=0.0, fail_at=None):
    cls = MapDataset if STYLE == "map" else IterDataset
    return FMQLoader(cls(n, delay_s, fail_at), batch_size=4, num_workers=int(WORKERS),
                     multiprocessing_context=METHOD, persistent_workers=PERSISTENT == "1")


def drain(it):
    """Run ``it`` to its end; report the error that ended it, or None."""
    try:
        for _batch in it:
            pass
        report("error", None)
    except Exception as exc:
        report("error", error_report(exc))


LONG = dict(n=1_000_000, delay_s=0.002)  # never ends within a test


def main():
    if CASE == "end":
        loader = make(32)
        n = 0
        for n, batch in enumerate(loader, 1):
            if n == 1:
                report("workers", workers())
            assert batch.shape == (4, 64, 64)
        report("batches", n)
    elif CASE == "break":
        loader = make(**LONG)
        for n, batch in enumerate(loader):
            if n == 0:
                report("workers", workers())
            if n == 2:
                break
        loader.close()
        report("after", workers())
    elif CASE == "loop_raises":
        loader = make(**LONG)
        for batch in loader:
            report("workers", workers())
            raise ValueError("boom in the training loop")
    elif CASE == "worker_raises":
        loader = make(64, fail_at=13)
        it = iter(loader)
        next(it)
        report("workers", workers())
        drain(it)
        if PERSISTENT == "1":  # persistent workers: the next epoch works, or raises clearly
            try:
                report("next_epoch", sum(1 for _ in loader))
            except Exception as exc:
                report("next_epoch", error_report(exc))
        loader.close()
        report("after", workers())
    elif CASE in ("worker_sigkill", "worker_sigsegv"):
        loader = make(**LONG)
        it = iter(loader)
        next(it)
        report("workers", workers())
        victim = workers()[0]
        report("victim", victim)
        os.kill(victim, signal.SIGKILL if CASE == "worker_sigkill" else signal.SIGSEGV)
        drain(it)
        loader.close()
        report("after", workers())
    elif CASE in ("sigint", "sigterm", "sigint_lost"):
        loader = make(**LONG)
        for n, batch in enumerate(loader):
            if n == 0:
                report("workers", workers())
                if CASE == "sigint_lost":  # a hang to diagnose (not in the matrix): Ctrl-C is lost
                    signal.signal(signal.SIGINT, signal.SIG_IGN)
                report("ready", time.monotonic())
    elif CASE == "del":
        loader = make(**LONG)
        it = iter(loader)
        next(it)
        report("workers", workers())
        del it, loader
        gc.collect()
        report("after", workers())
    elif CASE == "exit_holding":
        loader = make(**LONG)
        it = iter(loader)
        batch = next(it)
        report("workers", workers())
    else:
        raise SystemExit(f"unknown case {CASE!r}")


if __name__ == "__main__":
    main()
