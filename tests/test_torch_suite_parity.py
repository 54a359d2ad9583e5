"""Behaviours that PyTorch's own DataLoader test suite checks, in our words (issue 17).

Run with every ``DataLoader`` swapped for ``FMQLoader``, torch's suite found a
hang, duplicated DataPipe elements, lost worker seeds and a few smaller
differences; each test here fails on the code before its fix.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fmq_loader import FMQLoader  # noqa: E402

from _loader_data import IndexDataset, numbers_pipe  # noqa: E402


@pytest.mark.parametrize("batch_size,shuffle,num_workers",
                         [(40960, False, 1), (16384, True, 1), (300_000, True, 2)])
def test_a_task_larger_than_the_board_pipe_is_delivered(batch_size, shuffle, num_workers):
    """A batch whose index list pickles to more than the pipe holds (64 KiB, or the 1 MiB
    the pool asks for) used to hang next() for good: the worker waited for the rest of the
    task, the main process for its batch."""
    n = 2 * batch_size + 7
    loader = FMQLoader(IndexDataset(n), batch_size=batch_size, shuffle=shuffle,
                       num_workers=num_workers, timeout=60)
    seen = []
    for batch in loader:
        assert batch.shape[0] in (batch_size, 7)
        seen.append(batch)
    assert [b.shape[0] for b in seen] == [batch_size, batch_size, 7]
    assert sorted(torch.cat(seen).tolist()) == list(range(n))


def _both(dataset_factory, epochs: int = 1, **kw):
    """The flattened elements torch's DataLoader and FMQLoader yield with the same arguments."""
    out = []
    for cls in (torch.utils.data.DataLoader, FMQLoader):
        generator = torch.Generator().manual_seed(7)
        loader = cls(dataset_factory(), generator=generator, **kw)
        out.append([int(x) for _ in range(epochs) for batch in loader for x in batch.reshape(-1)])
        if cls is FMQLoader:
            loader.close()
    return out


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_sharded_datapipe_yields_each_element_once_as_torchs_does(num_workers):
    """Each worker applies the pipe's sharding_filter (before: every element came from
    every worker, [0, 0, 1, 1, ...])."""
    theirs, ours = _both(numbers_pipe, batch_size=1, num_workers=num_workers)
    assert ours == theirs
    assert sorted(ours) == list(range(10))


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("num_workers,persistent", [(0, False), (2, False), (2, True)])
@pytest.mark.parametrize("shuffle", [True, False, None])
def test_shuffle_turns_a_datapipes_shuffler_on_or_off_as_torchs_does(shuffle, num_workers,
                                                                     persistent):
    """shuffle= reaches the pipe's shufflers (True was refused; False still shuffled), and
    the workers share one seed drawn from the generator, as torch's do, epoch after epoch
    (a new multi-process iterator draws one seed more, which nobody uses)."""
    theirs, ours = _both(lambda: numbers_pipe(20, shuffle=True), epochs=2, batch_size=2,
                         num_workers=num_workers, shuffle=shuffle, persistent_workers=persistent)
    assert ours == theirs
    assert sorted(ours) == sorted(list(range(20)) * 2)
    if shuffle is False and num_workers == 0:
        assert ours == list(range(20)) * 2


def test_worker_seed_is_torchs_inside_worker_init_fn():
    """In worker_init_fn, get_worker_info().seed == torch.initial_seed() == base seed + id
    (it was 0, and the same in every worker)."""
    from _loader_data import WorkerSeedDataset, record_seeds_in_init

    loader = FMQLoader(WorkerSeedDataset(8), batch_size=1, num_workers=2,
                       worker_init_fn=record_seeds_in_init,
                       generator=torch.Generator().manual_seed(3))
    seeds = {}
    for worker_id, seed in loader:
        seeds.setdefault(int(worker_id), set()).add(int(seed))
    assert set(seeds) == {0, 1}
    (s0,), (s1,) = seeds[0], seeds[1]
    assert s1 == s0 + 1
    # the base seed is the generator's first draw, as torch's
    expected = int(torch.empty((), dtype=torch.int64).random_(
        generator=torch.Generator().manual_seed(3)).item())
    assert s0 == expected


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_seed_set_in_worker_init_fn_holds_in_getitem(method):
    """torch.manual_seed(12345) in worker_init_fn: every sample sees initial_seed() 12345 and
    torch draws continue that stream (per-sample reseeding used to override it)."""
    from _loader_data import InitialSeedDataset, seed_torch_12345

    loader = FMQLoader(InitialSeedDataset(6), batch_size=1, num_workers=2,
                       worker_init_fn=seed_torch_12345, multiprocessing_context=method)
    rows = [[float(v) for v in batch] for batch in loader]
    assert [int(r[0]) for r in rows] == [12345] * 6
    torch.manual_seed(12345)
    first_draws = {float(torch.rand(()))}
    # each worker's first sample draws the first value of the 12345 stream
    assert first_draws <= {float(r[3]) for r in rows}


def test_generators_worker_init_fn_leaves_alone_are_still_seeded_per_sample():
    """Seeding numpy in worker_init_fn keeps numpy's stream the user's, while random and
    torch keep per-sample seeds: the same values for any num_workers."""
    from _loader_data import InitialSeedDataset, seed_numpy_from_torch

    def run(num_workers):
        loader = FMQLoader(InitialSeedDataset(8), batch_size=1, num_workers=num_workers,
                           worker_init_fn=seed_numpy_from_torch if num_workers else None, seed=5)
        return [[v.item() for v in b] for b in loader]

    one, two = run(1), run(2)
    assert [r[1] for r in one] == [r[1] for r in two]  # random: per sample
    assert [r[3] for r in one] == [r[3] for r in two]  # torch: per sample
    for rows in (one, two):  # numpy: each worker's own stream, seeded in worker_init_fn
        for worker in {int(r[4]) for r in rows}:
            draws = [r[2] for r in rows if int(r[4]) == worker]
            seed = {int(r[5]) for r in rows if int(r[4]) == worker}.pop()
            assert draws == list(np.random.RandomState(seed % 2**32).random_sample(len(draws)))


def test_the_loader_is_generic_as_torchs_is():
    from typing import List

    alias = FMQLoader[List[torch.Tensor]]
    assert alias.__origin__ is FMQLoader


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_nested_tensors_cross_from_workers(method):
    """Nested tensors travel in-band (they have no flat buffer); the default collate refuses
    them with torch's message."""
    from _loader_data import clone_collate

    dataset = [torch.nested.nested_tensor([torch.randn(5), torch.randn(3)]) for _ in range(6)]
    loader = FMQLoader(dataset, batch_size=1, num_workers=2, collate_fn=clone_collate,
                       multiprocessing_context=method)
    for i, batch in enumerate(loader):
        assert batch[0].is_nested
        for a, b in zip(batch[0].unbind(), dataset[i].unbind()):
            assert torch.equal(a, b)
    with FMQLoader(dataset, batch_size=1, num_workers=2, multiprocessing_context=method) as loader:
        with pytest.raises(RuntimeError, match="not currently supported by the default collate_fn"):
            next(iter(loader))


def test_torch_private_names_some_code_reads():
    """loader._auto_collation and iterator._workers, as torch names them."""
    loader = FMQLoader(IndexDataset(8), batch_size=2, num_workers=2)
    assert loader._auto_collation is True
    assert FMQLoader(IndexDataset(8), batch_size=None)._auto_collation is False
    it = iter(loader)
    next(it)
    workers = it._workers
    assert len(workers) == 2 and all(w.is_alive() for w in workers)
    assert all(w.name.startswith("fmq-worker-") for w in workers)
    del it, workers  # the conftest fixture checks that they are gone


def test_too_many_workers_warns_with_torchs_phrase():
    import os

    n = len(os.sched_getaffinity(0)) + 1
    with pytest.warns(UserWarning, match="excessive worker creation might get DataLoader running "
                                         "slow or even freeze"):
        FMQLoader(IndexDataset(4), num_workers=n)


def test_workers_handed_out_can_be_joined_after_close_and_iterator_can_be_dropped():
    """Code written for torch joins `it._workers` after the iterator is gone, and drops a
    persistent iterator with `loader._iterator = None` (or `_shutdown_workers()`)."""
    loader = FMQLoader(IndexDataset(8), batch_size=2, num_workers=2, persistent_workers=True)
    it = iter(loader)
    next(it)
    assert loader._iterator is it
    workers = it._workers
    loader._iterator = None
    for w in workers:
        w.join(10)  # raised "process object is closed"
        assert not w.is_alive() and w.exitcode is not None
    assert loader._iterator is None
    assert [int(x) for b in loader for x in b] == list(range(8))  # new workers
    it = loader._iterator  # between epochs: a stand-in with torch's two names
    assert len(it._workers) == 2
    it._shutdown_workers()
    assert loader._iterator is None
    with pytest.raises(ValueError, match="only None"):
        loader._iterator = 3
    loader.close()


def test_workers_of_a_finished_epoch_answer_like_processes():
    """torch's suite reads `_workers` after a non-persistent epoch ended (its pool closed):
    join(), is_alive() and exitcode must still answer (a closed Process raises)."""
    loader = FMQLoader(IndexDataset(4), batch_size=2, num_workers=2)
    it = iter(loader)
    assert len(list(it)) == 2
    workers = it._workers
    for w in workers:
        w.join(10)
        assert not w.is_alive() and w.exitcode == 0
        w.terminate()
    assert "exitcode=0" in repr(workers[0])


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_draws_in_worker_init_fn_are_torchs(method):
    """Same generator: in worker_init_fn, initial_seed and the first draws of random, numpy
    and torch are those torch's workers make (numpy's state is torch's _generate_state)."""
    from _loader_data import InitDrawsDataset, draw_in_init

    seen = {}
    for cls in (torch.utils.data.DataLoader, FMQLoader):
        loader = cls(InitDrawsDataset(8), batch_size=None, num_workers=2,
                     worker_init_fn=draw_in_init, multiprocessing_context=method,
                     generator=torch.Generator().manual_seed(11))
        seen[cls] = {int(row[0]): tuple(row[1:]) for row in loader}
    ours, theirs = seen[FMQLoader], seen[torch.utils.data.DataLoader]
    assert theirs and set(ours) <= set(theirs)
    for worker, draws in ours.items():
        assert draws == theirs[worker], f"worker {worker}"


def test_close_completes_a_partly_written_task_so_the_worker_exits_by_itself():
    """A worker blocked reading the rest of a task larger than the board's pipe used to
    miss the stop and be terminated after the grace period (exit -SIGTERM)."""
    import time

    loader = FMQLoader(IndexDataset(900_000), batch_size=300_000, num_workers=1,
                       collate_fn=len, prefetch_factor=1)
    it = iter(loader)
    assert next(it) == 300_000
    workers = it._workers
    time.sleep(0.5)  # the worker finishes its next batch and starts reading the one after
    del it
    loader.close()
    assert [w.exitcode for w in workers] == [0]
