"""The seed README's "Test the time", in Python 3: multiprocessing.Queue vs fmq_loader.Queue.

Ten 150 MB float64 arrays go into each queue, then five get() calls on each are timed.
The seed's fmq.Queue was as slow as mp.Queue on its first get() and ended with an
EOFError at exit; fmq_loader.Queue's stealer thread rebuilds each item as a view of
shared memory, so even the first get() is fast, and the program ends cleanly.

Run: ``python examples/seed_speed.py``
"""

import multiprocessing as mp
import sys
from time import perf_counter as time

import numpy as np

import fmq_loader

if __name__ == "__main__":
    q1 = mp.Queue(10)
    q2 = fmq_loader.Queue(10)

    a = np.zeros((100, 256, 256, 3))
    a_size = sys.getsizeof(a)
    print(f"Object size: {a_size} bytes = {a_size // 1024}KB = {a_size // 1024 // 1024}MB")

    for i in range(10):
        q1.put(np.array(a))
        q2.put(np.array(a))

    mp_times, fmq_times = [], []
    for i in range(5):
        st = time()
        b = q1.get()
        mp_times.append(time() - st)
        print(f"mp get() a time {mp_times[-1]:.6f}")
    for i in range(5):
        st = time()
        b = q2.get()
        fmq_times.append(time() - st)
        assert b.shape == a.shape and not b.any()
        print(f"fmq get() a time {fmq_times[-1]:.6f}")

    print(f"first get(): fmq_loader.Queue {fmq_times[0] * 1e3:.2f} ms vs mp.Queue "
          f"{mp_times[0] * 1e3:.1f} ms ({mp_times[0] / fmq_times[0]:.0f}x faster); "
          f"five gets: {sum(fmq_times) * 1e3:.2f} ms vs {sum(mp_times) * 1e3:.1f} ms")

    # Five items are still in each queue. mp.Queue would otherwise wait at exit for its
    # feeder thread to flush them into a pipe nobody reads; fmq_loader.Queue needs no care.
    q1.cancel_join_thread()
    q1.close()
    q2.close()
