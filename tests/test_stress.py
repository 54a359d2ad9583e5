"""Stress: tiny and huge batches, empty datasets, short datasets, many workers, a slow consumer."""

from __future__ import annotations

import time

import numpy as np
import pytest

from fmq_loader import FMQLoader
from fmq_loader.transport.shm import GROW_STEP_BYTES, available_memory

torch = pytest.importorskip("torch")


class BytesDataset:
    """Item i is ``sizes[i]`` bytes: value i+1 everywhere, so a torn or mixed-up item shows."""

    def __init__(self, sizes) -> None:
        self.sizes = list(sizes)

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, i):
        return np.full(self.sizes[i], (i + 1) % 251, np.uint8)


class Range:
    def __init__(self, n: int, nbytes: int = 1024, delay_s: float = 0.0) -> None:
        self.n, self.nbytes, self.delay_s = n, nbytes, delay_s

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        if self.delay_s:
            time.sleep(self.delay_s)
        return np.full(self.nbytes // 8, i, np.int64)


class EmptyIterable(torch.utils.data.IterableDataset):
    def __iter__(self):
        return iter(())


def _check_sizes(sizes, **kw) -> None:
    with FMQLoader(BytesDataset(sizes), batch_size=None, num_workers=2, **kw) as loader:
        got = 0
        for i, item in enumerate(loader):
            assert item.shape == (sizes[i],) and item.dtype == torch.uint8, i
            if sizes[i]:
                v = (i + 1) % 251
                assert int(item[0]) == v and int(item[-1]) == v and int(item.min()) == v, i
            got += 1
            del item
        assert got == len(sizes)


SIZES = [0, 1, 4095, 4096, 4097, GROW_STEP_BYTES - 1, GROW_STEP_BYTES + 1, 20_000_000, 3, 20_000_000]


def test_batches_from_0_bytes_to_20_mb_arrive_intact():
    _check_sizes(SIZES)


@pytest.mark.slow
def test_500_mb_batches_arrive_intact():
    need = 500_000_000
    free, where = available_memory()
    # worker copy + slab + (transient) second slab while the first is still held, with margin
    if free is None or free < 6 * need:
        pytest.skip(f"needs about {6 * need:,} bytes free, {where} says {free}")
    _check_sizes([need, 1, need], prefetch_factor=1, extra_slabs=1)


@pytest.mark.parametrize("iterable", [False, True], ids=["map", "iterable"])
@pytest.mark.parametrize("persistent", [False, True])
def test_empty_dataset_gives_no_batches_every_epoch(iterable, persistent):
    ds = EmptyIterable() if iterable else Range(0)
    with FMQLoader(ds, batch_size=4, num_workers=2, persistent_workers=persistent) as loader:
        for _ in range(2):
            assert list(loader) == []


@pytest.mark.parametrize("drop_last, expected", [(False, 1), (True, 0)])
def test_batch_size_larger_than_the_dataset(drop_last, expected):
    with FMQLoader(Range(5), batch_size=16, num_workers=2, drop_last=drop_last) as loader:
        batches = list(loader)
    assert len(batches) == expected == len(loader)
    if expected:
        assert batches[0].shape == (5, 128)
        assert batches[0][:, 0].tolist() == [0, 1, 2, 3, 4]


def test_sixteen_workers_on_few_cores_deliver_every_sample_once_in_order():
    with FMQLoader(Range(96), batch_size=2, num_workers=16, multiprocessing_context="fork") as loader:
        seen = [int(v) for batch in loader for v in batch[:, 0]]
    assert seen == list(range(96))


def test_slow_consumer_keeps_shared_memory_and_prefetch_bounded():
    """Workers far faster than the loop: slabs and buffered batches stay within the bound."""
    nbytes = 300_000  # one batch: 4 x 300 KB, in one 2 MiB slab
    pf, workers, extra = 2, 2, 4
    bound = (pf * workers + extra) * 2 * GROW_STEP_BYTES
    loader = FMQLoader(Range(4 * 150, nbytes), batch_size=4, num_workers=workers,
                       prefetch_factor=pf, extra_slabs=extra, multiprocessing_context="fork")
    try:
        most_bytes = most_ready = 0
        for n, batch in enumerate(loader):
            assert int(batch[0, 0]) == 4 * n
            time.sleep(0.01)  # the consumer is the bottleneck
            pool = next(iter(loader._pools))
            most_bytes = max(most_bytes, pool.results.shared_memory_bytes())
            most_ready = max(most_ready, len(pool.ready) + len(pool.results._local.stealer or ()))
        assert n == 149
        assert 0 < most_bytes <= bound, (most_bytes, bound)
        assert most_ready <= pf * workers, most_ready
    finally:
        loader.close()


class Marked:
    """Sample i: 64 KiB of value i; slow enough that a kill lands mid-batch."""

    def __len__(self) -> int:
        return 400

    def __getitem__(self, i):
        time.sleep(0.004)
        return torch.full((128, 128), float(i))


@pytest.mark.parametrize("persistent", [False, True])
def test_worker_killed_mid_batch_never_yields_a_partial_or_duplicated_batch(persistent):
    import os
    import signal

    from fmq_loader.errors import WorkerError

    loader = FMQLoader(Marked(), batch_size=8, num_workers=2, persistent_workers=persistent,
                       multiprocessing_context="fork")
    try:
        batches = []
        it = iter(loader)
        with pytest.raises(WorkerError, match="SIGKILL"):
            for n, batch in enumerate(it):
                batches.append(batch[:, 0, 0].tolist())
                if n == 3:
                    pool = next(iter(loader._pools))
                    time.sleep(0.012)  # the workers are 3 samples into their next batches
                    os.kill(pool.workers[1].pid, signal.SIGKILL)
        assert 4 <= len(batches) < 50
        # in order, each batch whole, none twice
        assert batches == [[float(8 * b + k) for k in range(8)] for b in range(len(batches))]
        if persistent:  # the next epoch starts fresh workers and runs whole
            again = [batch[:, 0, 0].tolist() for batch in loader]
            assert again == [[float(8 * b + k) for k in range(8)] for b in range(50)]
        else:
            assert not loader._pools  # the failed epoch's workers are gone
    finally:
        loader.close()
