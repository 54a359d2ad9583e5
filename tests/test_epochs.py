"""Epoch lifecycle: early breaks, several iterators, errors mid-epoch, and what is left behind.

Each test is a regression test for a bug found in review (see the commit that added this file).
"""

from __future__ import annotations

import gc
import os
import time

import multiprocessing as mp
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from fmq_loader import FMQLoader


class Numbers(Dataset):
    def __init__(self, n: int, fail_at: int | None = None) -> None:
        self.n, self.fail_at = n, fail_at

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        if i == self.fail_at:
            raise KeyError(f"no sample {i}")
        return i


def _batches(it) -> list[list[int]]:
    return [b.tolist() for b in it]


def _raise_in_init(worker_id: int) -> None:
    raise ValueError(f"init of worker {worker_id} failed")


@pytest.mark.parametrize("left_early", [1, 15])
def test_persistent_workers_start_the_next_epoch_after_an_early_break(left_early):
    with FMQLoader(Numbers(40), batch_size=2, num_workers=2, persistent_workers=True,
                   multiprocessing_context="fork", timeout=10) as loader:
        for _ in range(3):
            it = iter(loader)
            for _ in range(left_early):
                next(it)
            del it
        assert len(_batches(loader)) == 20
        assert len(_batches(loader)) == 20


def test_persistent_shuffle_after_a_mid_epoch_iter_matches_torch():
    def epochs(cls):
        loader = cls(Numbers(8), batch_size=2, shuffle=True, num_workers=2,
                     persistent_workers=True, multiprocessing_context="fork",
                     generator=torch.Generator().manual_seed(0))
        it = iter(loader)
        next(it)
        out = [_batches(loader), _batches(loader)]
        if isinstance(loader, FMQLoader):
            loader.close()
        return out

    assert epochs(FMQLoader) == epochs(DataLoader)


def test_two_live_iterators_each_yield_the_whole_epoch():
    with FMQLoader(Numbers(8), batch_size=2, num_workers=2, multiprocessing_context="fork") as loader:
        pairs = list(zip(loader, loader))
        nested = [(a, b) for a in loader for b in loader]
    assert len(pairs) == 4 and all(torch.equal(a, b) for a, b in pairs)
    assert len(nested) == 16


@pytest.mark.parametrize("persistent", [False, True])
def test_a_batch_error_does_not_end_the_epoch(persistent):
    with FMQLoader(Numbers(16, fail_at=5), batch_size=2, num_workers=2, persistent_workers=persistent,
                   multiprocessing_context="fork") as loader:
        it, got, errors = iter(loader), [], 0
        while True:
            try:
                got.append(next(it)[0].item())
            except KeyError:
                errors += 1
            except StopIteration:
                break
    assert errors == 1 and got == [0, 2, 6, 8, 10, 12, 14]


def test_worker_init_fn_error_reaches_the_main_process_with_its_message():
    with FMQLoader(Numbers(8), batch_size=2, num_workers=2, worker_init_fn=_raise_in_init,
                   multiprocessing_context="fork") as loader:
        with pytest.raises(ValueError, match=r"(?s)Caught ValueError in worker \d .*init of worker \d failed"):
            next(iter(loader))


def test_dropped_persistent_loader_stops_its_workers_without_the_cyclic_gc():
    loader = FMQLoader(Numbers(8), batch_size=2, num_workers=2, persistent_workers=True,
                       multiprocessing_context="fork")
    _batches(loader)  # the next epoch is now prefetched
    gc.disable()
    try:
        del loader
        deadline = time.monotonic() + 5
        while mp.active_children() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not mp.active_children()
    finally:
        gc.enable()


def test_open_fds_stay_flat_over_many_non_persistent_epochs():
    with FMQLoader(Numbers(8), batch_size=2, num_workers=2, multiprocessing_context="fork") as loader:
        _batches(loader)
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(10):
            _batches(loader)
        gc.collect()
        assert len(os.listdir("/proc/self/fd")) <= before


def test_seeded_augmentations_do_not_depend_on_next_epoch_prefetch():
    def draws(prefetch: bool):
        with FMQLoader(_RandomDraws(), batch_size=2, num_workers=2, persistent_workers=True, seed=123,
                       prefetch_next_epoch=prefetch, multiprocessing_context="fork") as loader:
            out = []
            for epoch in range(3):
                loader.set_epoch(epoch)
                out.append(_batches(loader))
            return out

    assert draws(True) == draws(False)


class _RandomDraws(Dataset):
    def __len__(self) -> int:
        return 6

    def __getitem__(self, i: int) -> int:
        return int(torch.randint(0, 10**6, ()).item())


class EpochAwareNumbers(Numbers):
    """A dataset with set_epoch (as ImageFolder has): it must not turn off next-epoch prefetch."""

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


def test_a_dataset_with_set_epoch_keeps_next_epoch_prefetch():
    with FMQLoader(EpochAwareNumbers(24), batch_size=4, shuffle=True, num_workers=2,
                   persistent_workers=True, generator=torch.Generator().manual_seed(3)) as loader:
        first = _batches(loader)
        assert loader._prefetched is not None, "the next epoch was not started ahead"
        second = _batches(loader)
    reference = DataLoader(EpochAwareNumbers(24), batch_size=4, shuffle=True, num_workers=2,
                           persistent_workers=True, generator=torch.Generator().manual_seed(3))
    assert [first, second] == [_batches(reference), _batches(reference)]
    del reference


class EpochEcho(Dataset):
    """Each sample is the epoch the dataset was last told (by set_epoch)."""

    def __init__(self, n: int = 8) -> None:
        self.n, self.epoch = n, -1

    def __len__(self) -> int:
        return self.n

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, i: int) -> int:
        return self.epoch


class EpochEchoStream(torch.utils.data.IterableDataset):
    def __init__(self, n: int = 8) -> None:
        self.n, self.epoch = n, -1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        share = self.n // info.num_workers if info is not None else self.n
        return iter([self.epoch] * share)


@pytest.mark.parametrize("dataset", [EpochEcho(8), EpochEchoStream(8)], ids=["map", "iterable"])
def test_set_epoch_reaches_the_persistent_workers_copies_of_the_dataset(dataset):
    # torch's DataLoader calls nothing in the workers: their copies keep the epoch they were
    # made with. Here loader.set_epoch(e) reaches every worker's copy before epoch e's samples.
    with FMQLoader(dataset, batch_size=2, num_workers=2, persistent_workers=True) as loader:
        seen = []
        for epoch in (3, 4, 7):
            loader.set_epoch(epoch)
            seen.append(sorted({v for batch in loader for v in batch.tolist()}))
    assert seen == [[3], [4], [7]]


def test_a_loop_that_never_waits_refills_only_when_no_spare_task_is_left():
    """NOTE [ refill while waiting ]: with every batch ready, next() publishes tasks only
    once no spare task lies beyond the prefetch bound, and the board never runs dry."""
    with FMQLoader(Numbers(400), batch_size=2, num_workers=2, persistent_workers=True,
                   multiprocessing_context="fork") as loader:
        it = iter(loader)
        got = [next(it).tolist()]
        pool = loader._pool
        refills = 0
        for _ in range(60):
            deadline = time.monotonic() + 10
            # a training step: the prefetch fills meanwhile. Every task up to the bound is
            # done, so the next batch is among them (the workers can finish out of order).
            while (len(pool.ready) + pool.results.buffered() < pool.budget
                   and time.monotonic() < deadline):
                time.sleep(0.005)
            spare = pool.next_seq - (pool.consumed + 1) - pool.budget  # after this hand-out
            published = pool.next_seq
            got.append(next(it).tolist())
            if pool.next_seq != published:
                refills += 1
                assert spare <= 0, "a ready next() refilled while spare tasks remained"
            assert pool.next_seq >= pool.consumed + pool.budget, "the board ran dry"
        assert refills >= 10  # about one per 2 * num_workers batches
    assert got == [[2 * k, 2 * k + 1] for k in range(61)]


class Slow(Numbers):
    def __getitem__(self, i: int) -> int:
        time.sleep(0.02)
        return i


def test_the_batches_prefetched_during_a_step_are_handed_out_without_a_refill():
    """NOTE [ refill while waiting ]: a next() that waits leaves ``budget`` spare tasks on
    the board, so the ``budget`` batches made during a long training step come out of
    ready next() calls that publish nothing."""
    with FMQLoader(Slow(400), batch_size=1, num_workers=2, persistent_workers=True,
                   multiprocessing_context="fork", timeout=10) as loader:
        it = iter(loader)
        pool = loader._pool
        got = []
        for _ in range(4):
            got += [next(it).item() for _ in range(3)]  # decode-bound: these wait
            assert pool.next_seq - pool.consumed >= 2 * pool.budget - 1
            deadline = time.monotonic() + 10
            while (len(pool.ready) + pool.results.buffered() < pool.budget
                   and time.monotonic() < deadline):
                time.sleep(0.005)  # the step: every task up to the bound is made
            published = pool.next_seq
            got += [next(it).item() for _ in range(pool.budget)]
            assert pool.next_seq == published, "a ready next() refilled the board"
    assert got == list(range(len(got)))


class Recorded(Dataset):
    """Leaves a file named after each index it loads: what the workers started, seen from outside."""

    def __init__(self, n: int, folder: str) -> None:
        self.n, self.folder = n, folder

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        open(os.path.join(self.folder, str(i)), "w").close()
        return i


def _loaded(folder) -> set[int]:
    return {int(name) for name in os.listdir(folder)}


def test_workers_leave_a_core_for_the_first_batch_join_then_take_up_the_usual_bound(tmp_path):
    """NOTE [ a core for the first join ]: until the split first batch is handed out,
    workers start at most num_workers - 1 tasks beyond its parts; then the usual bound."""
    with FMQLoader(Recorded(64, str(tmp_path)), batch_size=4, num_workers=2,
                   persistent_workers=True, multiprocessing_context="fork") as loader:
        it = iter(loader)
        pool = loader._pool
        time.sleep(1.0)  # a first batch the loop is slow to ask for: workers run ahead
        # parts [0, 1] and [2, 3] of batch 0, and batch 1; batch 2 (8-11) waits
        assert _loaded(tmp_path) == set(range(8))
        assert next(it).tolist() == [0, 1, 2, 3]
        assert pool.control[3] == pool.budget == 4  # BUDGET: prefetch_factor 2 x 2 workers
        deadline = time.monotonic() + 10
        while _loaded(tmp_path) != set(range(4 * 5)) and time.monotonic() < deadline:
            time.sleep(0.01)
        # the usual bound: 4 tasks beyond the one handed out (batches 1-4)
        assert _loaded(tmp_path) == set(range(4 * 5))
        assert [b.tolist() for b in it] == [[k, k + 1, k + 2, k + 3] for k in range(4, 64, 4)]


def test_a_failed_part_of_the_split_first_batch_raises_once_and_the_epoch_goes_on():
    with FMQLoader(Numbers(24, fail_at=1), batch_size=4, num_workers=2,
                   multiprocessing_context="fork") as loader:
        it = iter(loader)
        with pytest.raises(KeyError, match="no sample 1"):
            next(it)
        assert it._join is None  # the half-built batch is not kept
        assert _batches(it) == [[k, k + 1, k + 2, k + 3] for k in range(4, 24, 4)]


def test_an_epoch_dropped_before_its_first_batch_does_not_leave_the_bound_held():
    with FMQLoader(Numbers(16), batch_size=4, num_workers=2, prefetch_factor=4,
                   persistent_workers=True, multiprocessing_context="fork") as loader:
        it = iter(loader)
        assert loader._pool.control[3] == 3  # held for the split first batch: 2 * 2 - 1
        del it
        for _ in range(2):
            assert _batches(loader) == [[k, k + 1, k + 2, k + 3] for k in range(0, 16, 4)]
            assert loader._pool.control[3] == loader._pool.budget == 8


class Indices(Dataset):
    def __len__(self) -> int:
        return 1_000_000

    def __getitem__(self, i: int) -> int:
        return i


@pytest.mark.parametrize("persistent", [False, True])
def test_more_tasks_than_an_empty_pipe_holds_before_the_workers_start(persistent):
    """Regression (NOTE [ tasks before workers ]): iter() wrote every first task to the
    board before any worker could read it, and blocked for good once they passed 64 KiB."""
    with FMQLoader(Indices(), batch_size=4096, num_workers=2, shuffle=True, timeout=30,
                   persistent_workers=persistent, multiprocessing_context="fork") as loader:
        it = iter(loader)
        batches = [next(it) for _ in range(12)]
        assert all(len(b) == 4096 for b in batches)
        assert len({int(i) for b in batches for i in b}) == 12 * 4096


class _SecondEpochFails(torch.utils.data.Sampler):
    """Its second __iter__ raises: say, the next epoch's index file is gone."""

    def __init__(self, n: int) -> None:
        self.n, self.calls = n, 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        self.calls += 1
        if self.calls == 2:
            raise FileNotFoundError("the index file of epoch 2 is gone")
        return iter(range(self.n))


def test_a_next_epoch_whose_sampler_fails_while_prefetched_fails_at_its_own_iter_as_torchs():
    """NOTE [ a failing next epoch ]: with persistent workers the next epoch's sampler runs
    before this epoch ends. Its error used to come out of this epoch's next(), losing the
    rest of its batches; torch's comes at the next iter(). Then a third epoch runs."""
    def epochs(cls):
        loader = cls(Numbers(32), batch_size=4, num_workers=2, persistent_workers=True,
                     sampler=_SecondEpochFails(32), multiprocessing_context="fork")
        out = []
        for _ in range(3):
            got = []
            try:
                for batch in loader:
                    got.append(batch.tolist())
                out.append(got)
            except FileNotFoundError as exc:
                out.append((got, str(exc)))
        if cls is FMQLoader:
            loader.close()
        return out

    ours, theirs = epochs(FMQLoader), epochs(DataLoader)
    assert ours == theirs
    assert ours[1] == ([], "the index file of epoch 2 is gone") and len(ours[0]) == len(ours[2]) == 8


def test_next_after_the_loader_was_closed_says_the_loader_was_closed():
    """It said "get() on a closed Queue; create a new Queue", which names an internal."""
    from fmq_loader.errors import QueueClosed

    loader = FMQLoader(Numbers(400), batch_size=4, num_workers=2, multiprocessing_context="fork")
    it = iter(loader)
    next(it)
    loader.close()
    with pytest.raises(QueueClosed, match=r"this iterator's FMQLoader was closed .* call iter\(loader\)"):
        for _ in range(100):  # batches received before close() may still come out first
            next(it)


def test_two_threads_iterating_one_persistent_loader_get_a_clear_error_not_a_hang():
    """Unsupported, as with torch's DataLoader; it raised internal errors ("this is a bug")
    or blocked for good. Now one thread may end early or be told why it cannot go on."""
    import threading

    with FMQLoader(Numbers(400), batch_size=4, num_workers=2, persistent_workers=True,
                   multiprocessing_context="fork") as loader:
        outcome: dict = {}

        def consume(k: int) -> None:
            try:
                outcome[k] = len([b for b in loader])
            except Exception as exc:  # noqa: BLE001 -- recorded for the assertion
                outcome[k] = exc

        threads = [threading.Thread(target=consume, args=(k,), daemon=True) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not any(t.is_alive() for t in threads), "a thread blocked for good"
    for result in outcome.values():
        assert isinstance(result, int) or (
            isinstance(result, RuntimeError) and "another thread was inside next()" in str(result)), outcome
