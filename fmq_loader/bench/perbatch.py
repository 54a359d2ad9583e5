"""Where the main process's CPU per batch goes: per thread, and hot against cold.

A decode-bound synthetic loop (each sample busy-waits ``--delay-ms``, then is a
3x224x224 uint8 tensor; batch 64, 2 persistent workers) is drained once; the
main thread's and the stealer thread's CPU time (``pthread_getcpuclockid``)
are divided by the batches. Then ``codec.decode`` of one such batch is timed
in a hot loop and after a 10 ms sleep each time, which is how a loader runs it:
once per batch, with cold caches. Last, the floor any design pays per batch:
the process CPU of receiving 64 bytes from a busy producer process, read by the
waiting thread itself and handed over by a second thread (fmq's stealer shape).

    python -m fmq_loader.bench perbatch [--batches N] [--delay-ms D]
"""

from __future__ import annotations

import argparse
import os
import queue
import statistics
import threading
import time

import numpy as np
import torch

__all__ = ["main"]


class _Synthetic(torch.utils.data.Dataset):
    def __init__(self, n: int, delay_s: float) -> None:
        self.n, self.delay_s = n, delay_s
        self.image = torch.zeros(3, 224, 224, dtype=torch.uint8)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        end = time.perf_counter() + self.delay_s
        while time.perf_counter() < end:  # a decoder's CPU, not a sleep
            pass
        return self.image.clone(), i % 10


def _thread_cpu() -> dict[str, float]:
    out = {"process (all threads)": time.process_time()}
    for t in threading.enumerate():
        try:
            out[t.name] = time.clock_gettime(time.pthread_getcpuclockid(t.ident))
        except (OSError, AttributeError, TypeError):
            pass
    return out


def per_thread(batches: int, delay_s: float) -> dict[str, float]:
    """ms of CPU per batch, per main-process thread, over one drained epoch."""
    from fmq_loader import FMQLoader

    with FMQLoader(_Synthetic(64 * (batches + 1), delay_s), batch_size=64, num_workers=2,
                   persistent_workers=True) as loader:
        it = iter(loader)
        next(it)  # start-up excluded
        before, n = _thread_cpu(), 0
        for _ in it:
            n += 1
        after = _thread_cpu()
    return {name: 1e3 * (after[name] - before.get(name, 0.0)) / n for name in after}


def decode_hot_and_cold(repeats: int = 60) -> tuple[float, float]:
    """Median µs of codec.decode for [images, labels]: back to back, and after a 10 ms sleep."""
    from fmq_loader.transport import codec

    stream, buffers = codec.encode([torch.zeros(64, 3, 224, 224, dtype=torch.uint8),
                                    torch.arange(64)])
    views = [np.frombuffer(bytearray(b), np.uint8) for b in buffers]
    result = []
    for pause in (0.0, 0.01):
        times = []
        for _ in range(repeats):
            if pause:
                time.sleep(pause)
            t0 = time.thread_time_ns()
            codec.decode(stream, views)
            times.append((time.thread_time_ns() - t0) / 1e3)
        result.append(statistics.median(times))
    return result[0], result[1]


def _busy_writer(fd: int, n: int, period_s: float) -> None:
    for _ in range(n):
        end = time.perf_counter() + period_s
        while time.perf_counter() < end:  # busy between messages, like a decoding worker
            pass
        os.write(fd, b"x" * 64)


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def wakeup_floor(n: int = 150, period_s: float = 0.012) -> dict[str, float]:
    """Median µs of process CPU to receive one 64-byte message: read directly, or via a thread.

    As in a decode-bound loader, every core is busy: the writer, and one spinning
    process per other core (at most 7). With an idle core the figures are several
    times higher, since the woken thread then starts on a core that was asleep.
    """
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    out = {}
    for mode in ("read in the waiting thread", "read by a thread, handed over"):
        r, w = os.pipe()
        writer = ctx.Process(target=_busy_writer, args=(w, n, period_s))
        spinners = [ctx.Process(target=_spin, args=(n * period_s + 2.0,), daemon=True)
                    for _ in range(min(7, (os.cpu_count() or 1) - 1))]
        for proc in (writer, *spinners):
            proc.start()
        os.close(w)
        cpu = []
        try:
            if mode.startswith("read in"):
                get = lambda: os.read(r, 4096)  # noqa: E731
            else:
                handed: queue.SimpleQueue = queue.SimpleQueue()
                threading.Thread(target=lambda: [handed.put(os.read(r, 4096)) for _ in range(n)],
                                 daemon=True).start()
                get = handed.get
            for _ in range(n):
                c0 = time.process_time()
                get()
                cpu.append(time.process_time() - c0)
        finally:
            writer.join(10)
            for proc in spinners:
                proc.kill()
                proc.join()
            os.close(r)
        out[mode] = 1e6 * statistics.median(cpu)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fmq_loader.bench perbatch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, default=150)
    p.add_argument("--delay-ms", type=float, default=0.8, help="CPU per sample in the workers")
    args = p.parse_args(argv)
    if args.batches < 2 or args.delay_ms < 0:
        p.error(f"--batches must be >= 2 and --delay-ms >= 0, got {args.batches} and {args.delay_ms}")
    for name, ms in per_thread(args.batches, args.delay_ms / 1e3).items():
        print(f"{name:<24} {ms:.3f} ms CPU per batch")
    hot, cold = decode_hot_and_cold()
    print(f"codec.decode([images, labels]): {hot:.1f} us hot, {cold:.1f} us after a 10 ms sleep "
          f"({cold / hot:.0f}x)")
    for mode, us in wakeup_floor().items():
        print(f"wake-up floor, {mode}: {us:.1f} us CPU per message")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
