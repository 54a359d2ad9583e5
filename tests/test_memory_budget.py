"""Shared-memory budget: an arena that cannot fit fails early and clearly, never with a bus error.

Slabs are memfds, so their pages come from RAM (and the cgroup limit), not from
/dev/shm. These tests make genuinely too-large requests: an item viewing a
sparse file larger than the machine's memory, so nothing is allocated before
the arena refuses it.
"""

from __future__ import annotations

import mmap
import multiprocessing as mp
import os
import re
import signal
import time

import numpy as np
import pytest

from fmq_loader import FMQLoader, Queue
from fmq_loader.errors import BatchTooLarge, WorkerError
from fmq_loader.transport.shm import GROW_STEP_BYTES, SlabArena, available_memory


def _mem_total() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    pytest.skip("no MemTotal in /proc/meminfo")


def _too_large() -> int:
    """More bytes than this machine has, in whole grow steps."""
    return (_mem_total() // GROW_STEP_BYTES + 1024) * GROW_STEP_BYTES


def _sparse_array(path, nbytes: int) -> np.ndarray:
    """A plain uint8 array of ``nbytes`` over a sparse file: no page is allocated until read."""
    with open(path, "wb") as f:
        f.truncate(nbytes)
    with open(path, "r+b") as f:
        mapping = mmap.mmap(f.fileno(), nbytes)
    return np.frombuffer(mapping, dtype=np.uint8)


def _numbers(text: str) -> list[int]:
    return [int(n.replace(",", "")) for n in re.findall(r"\d[\d,]*", text)]


def test_available_memory_reports_meminfo_or_the_cgroup_room():
    free, where = available_memory()
    assert free is not None and 0 < free <= _mem_total(), (free, where)
    assert "MemAvailable" in where or "cgroup" in where


def test_arena_refuses_a_slab_larger_than_memory_with_the_figures_and_settings():
    arena = SlabArena(3, mp.get_context())
    try:
        need = _too_large()
        with pytest.raises(BatchTooLarge) as info:
            arena.claim(need)
        text = str(info.value)
        assert f"{need:,} bytes" in text, text
        assert "bytes are available (MemAvailable" in text or "cgroup" in text, text
        for setting in ("batch_size", "prefetch_factor", "extra_slabs", "num_workers"):
            assert setting in text, text
        assert isinstance(info.value, ValueError)
        # nothing was reserved, the slab went back, the arena still works
        assert arena.nbytes() == 0
        slabs = [arena.claim(10) for _ in range(3)]
        assert sorted(slabs) == [0, 1, 2]
    finally:
        arena.close()


def test_arena_refuses_early_when_all_its_slabs_together_would_not_fit():
    """One slab fits; num_slabs of them would not: refused on the first item, not mid-epoch."""
    free, _ = available_memory()
    one = (free // 4 // GROW_STEP_BYTES) * GROW_STEP_BYTES  # a quarter of what is free
    arena = SlabArena(16, mp.get_context())  # 16 quarters: four times too much
    try:
        with pytest.raises(BatchTooLarge, match="16 slabs of up to"):
            arena.claim(one)
        assert arena.nbytes() == 0
    finally:
        arena.close()


def test_slab_growth_reserves_its_pages():
    """posix_fallocate: the pages exist (st_blocks) as soon as the slab grows, before any write."""
    arena = SlabArena(1, mp.get_context())
    try:
        slab = arena.claim(3 * GROW_STEP_BYTES)
        st = os.fstat(arena._fds[slab])
        assert st.st_size == 3 * GROW_STEP_BYTES
        assert st.st_blocks * 512 >= 3 * GROW_STEP_BYTES
    finally:
        arena.close()


def test_queue_put_of_an_item_larger_than_memory_raises_and_the_queue_keeps_working(tmp_path):
    q = Queue(4, ctx="fork")
    try:
        big = _sparse_array(tmp_path / "sparse", _too_large())
        with pytest.raises(BatchTooLarge, match="needs shared memory the machine cannot give"):
            q.put({"x": big})
        assert q.qsize() == 0  # the slot went back
        q.put(np.arange(10_000))
        assert np.array_equal(q.get(timeout=10), np.arange(10_000))
    finally:
        q.close()
        q.release_shared_memory()


class SparseDataset:
    """Item 0 is an ordinary array; item 1 views a sparse file larger than memory."""

    def __init__(self, path: str, nbytes: int) -> None:
        self.path, self.nbytes = path, nbytes

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i):
        if i == 0:
            return np.ones(10_000, np.uint8)
        return _sparse_array(self.path, self.nbytes)


def test_loader_batch_larger_than_memory_raises_batch_too_large_naming_bytes_and_settings(tmp_path):
    """Re-raised in the main process with the worker's type (as worker errors are), and its text."""
    ds = SparseDataset(str(tmp_path / "sparse"), _too_large())
    loader = FMQLoader(ds, batch_size=None, num_workers=1, multiprocessing_context="fork")
    try:
        it = iter(loader)
        assert int(next(it).sum()) == 10_000
        with pytest.raises(BatchTooLarge) as info:
            next(it)
        text = str(info.value)
        assert "Caught BatchTooLarge in worker 0" in text and "sending the batch" in text, text
        assert f"{ds.nbytes:,} bytes" in text and "batch_size" in text, text
    finally:
        loader.close()


class SlowDataset:
    def __len__(self) -> int:
        return 10_000

    def __getitem__(self, i):
        time.sleep(0.005)
        return np.full(1000, i, np.int32)


def test_worker_sigkill_message_names_the_oom_killer():
    loader = FMQLoader(SlowDataset(), batch_size=4, num_workers=2, multiprocessing_context="fork")
    try:
        it = iter(loader)
        next(it)
        victim = loader._pools and next(iter(loader._pools)).workers[0].pid
        os.kill(victim, signal.SIGKILL)
        with pytest.raises(WorkerError) as info:
            for _ in it:
                pass
        text = str(info.value)
        assert f"pid {victim}" in text and "SIGKILL" in text, text
        assert "OOM killer" in text and "dmesg" in text, text
        assert info.value.pid == victim
    finally:
        loader.close()


class _HugeUntouched:
    """Tensors of ``nbytes`` each whose pages are never touched; counts its loads."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        self.loads = mp.get_context("fork").Array("i", 8)  # per index

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int):
        import torch

        with self.loads.get_lock():
            self.loads[i] += 1
        return torch.empty(self.nbytes, dtype=torch.uint8), i


def test_a_batch_no_slab_can_take_fails_at_its_first_sample():
    """The worker builds default-collated batches in a slab it reserves at the first
    sample. A refused reservation was swallowed: the whole batch (here 4 x half the
    machine's memory, in untouched pages) was loaded and stacked in ordinary memory
    before put() raised the same BatchTooLarge."""
    dataset = _HugeUntouched(_mem_total() // 2)
    with FMQLoader(dataset, batch_size=4, num_workers=1, multiprocessing_context="fork",
                   timeout=60) as loader:
        with pytest.raises(BatchTooLarge, match="needs shared memory the machine cannot give"):
            next(iter(loader))
    assert list(dataset.loads[:4]) == [1, 0, 0, 0]  # (the worker may have begun batch 2)
