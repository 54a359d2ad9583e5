"""With ``seed``, batches -- indices and augmentations -- do not depend on how they are loaded (issue 8).

Every sample draws from ``random``, numpy and torch inside ``__getitem__``; the
reference is ``num_workers=0``. Across world sizes, the ranks' shards of an epoch
interleave back into the one global order of a single process.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, DistributedSampler

from fmq_loader import FMQLoader

N, BATCH, SEED = 37, 4, 1234


class AugmentedNumbers(Dataset):
    """Sample ``i``: ``[i, random.random(), np.random.rand(), torch.rand()]`` (float64)."""

    def __init__(self, n: int = N) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        return torch.tensor([float(i), random.random(), float(np.random.rand()),
                             float(torch.rand(()))], dtype=torch.float64)


def _epochs(n_epochs: int = 2, **kwargs) -> list[torch.Tensor]:
    """Each epoch's batches, concatenated: one row per sample."""
    kwargs = {"batch_size": BATCH, "shuffle": True, "seed": SEED, **kwargs}
    with FMQLoader(AugmentedNumbers(), **kwargs) as loader:
        return [torch.cat(list(loader)) for _ in range(n_epochs)]


@pytest.fixture(scope="module")
def reference() -> list[torch.Tensor]:
    return _epochs(num_workers=0)


def test_seeded_epochs_shuffle_every_index_once_and_differ(reference):
    for epoch in reference:
        assert sorted(epoch[:, 0].long().tolist()) == list(range(N))
    assert not torch.equal(reference[0][:, 0], reference[1][:, 0])  # a new order each epoch
    assert not torch.equal(reference[0][:, 1:], reference[1][:, 1:])


def test_seeded_single_process_run_repeats_and_leaves_the_global_rng_alone(reference):
    torch.manual_seed(0)
    before = torch.rand(3)
    torch.manual_seed(0)
    again = _epochs(num_workers=0)
    assert torch.equal(torch.rand(3), before)  # neither the shuffle nor the seeding drew from it
    assert all(torch.equal(a, b) for a, b in zip(reference, again))


@pytest.mark.parametrize("num_workers,context,persistent", [
    (1, "fork", False), (2, "fork", False), (4, "fork", False), (2, "fork", True),
    (2, "spawn", True), (2, "forkserver", False),
])
def test_batches_match_num_workers_0_for_any_worker_count_and_start_method(
        reference, num_workers, context, persistent):
    got = _epochs(num_workers=num_workers, multiprocessing_context=context,
                  persistent_workers=persistent, in_order=True)
    for epoch, (want, have) in enumerate(zip(reference, got)):
        assert torch.equal(want, have), f"epoch {epoch} differs"


def test_set_epoch_picks_order_and_augmentations_whatever_came_before():
    with FMQLoader(AugmentedNumbers(), batch_size=BATCH, shuffle=True, seed=SEED) as a, \
            FMQLoader(AugmentedNumbers(), batch_size=BATCH, shuffle=True, seed=SEED,
                      num_workers=2, multiprocessing_context="fork") as b:
        a.set_epoch(5)
        first = torch.cat(list(a))
        for e in (0, 3, 5):
            b.set_epoch(e)
            last = torch.cat(list(b))
    assert torch.equal(first, last)


def test_unsharded_seeded_order_is_distributed_samplers_global_order(reference):
    for epoch, batches in enumerate(reference):
        sampler = DistributedSampler(AugmentedNumbers(), num_replicas=1, rank=0, shuffle=True,
                                     seed=SEED)
        sampler.set_epoch(epoch)
        assert batches[:, 0].long().tolist() == list(sampler)


def _rank_rows(monkeypatch, rank: int, world: int, **kwargs) -> list[torch.Tensor]:
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))
    return _epochs(distributed=True, num_workers=0, **kwargs)


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_ranks_shards_interleave_into_the_same_global_order_for_any_world_size(
        reference, monkeypatch, world):
    shards = [_rank_rows(monkeypatch, r, world) for r in range(world)]
    for epoch in range(2):
        per_rank = [shards[r][epoch][:, 0].long().tolist() for r in range(world)]
        assert len({len(s) for s in per_rank}) == 1  # DistributedSampler pads to equal shares
        merged = [per_rank[p % world][p // world] for p in range(len(per_rank[0]) * world)]
        assert merged[:N] == reference[epoch][:, 0].long().tolist()
        assert merged[N:] == merged[:len(merged) - N]  # padding repeats the first indices


def test_ranks_draw_different_augmentations_for_their_kth_sample(monkeypatch):
    r0, r1 = (_rank_rows(monkeypatch, r, 2)[0] for r in (0, 1))
    assert not torch.equal(r0[:, 1:], r1[:, 1:])


def test_distributed_drop_last_cuts_the_tail_instead_of_padding(monkeypatch):
    shards = [_rank_rows(monkeypatch, r, 2, drop_last=True)[0] for r in range(2)]
    indices = [i for s in shards for i in s[:, 0].long().tolist()]
    assert len(indices) == len(set(indices)) == 32  # 36 of 37 samples, 4 full batches per rank


def test_distributed_without_process_group_or_torchrun_env_says_what_to_set(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(RuntimeError, match=r"no initialised torch\.distributed process group.*"
                                           r"RANK / WORLD_SIZE.*torchrun"):
        FMQLoader(AugmentedNumbers(), distributed=True)


def test_distributed_rejects_bad_rank_env_and_conflicting_options(monkeypatch):
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=r"0 <= RANK < WORLD_SIZE, got RANK=2, WORLD_SIZE=2"):
        FMQLoader(AugmentedNumbers(), distributed=True)
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ValueError, match="mutually exclusive with sampler"):
        FMQLoader(AugmentedNumbers(), distributed=True, sampler=range(3))
    with pytest.raises(ValueError, match="pass seed= instead of generator="):
        FMQLoader(AugmentedNumbers(), distributed=True, generator=torch.Generator())


def test_loader_sampler_set_epoch_forwards_to_the_loader(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with FMQLoader(AugmentedNumbers(), batch_size=BATCH, shuffle=True, seed=SEED,
                   distributed=True) as loader:
        loader.sampler.set_epoch(3)  # the habit from DistributedSampler
        got = torch.cat(list(loader))[:, 0].long().tolist()
    sampler = DistributedSampler(AugmentedNumbers(), num_replicas=2, rank=1, shuffle=True,
                                 seed=SEED)
    sampler.set_epoch(3)
    assert got == list(sampler)


class AugmentedStream(torch.utils.data.IterableDataset):
    """Each worker streams its share of 0..n-1, with a draw from ``random`` per item."""

    def __init__(self, n: int = 20) -> None:
        self.n = n

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid, nw = (0, 1) if info is None else (info.id, info.num_workers)
        for i in range(wid, self.n, nw):
            yield torch.tensor([float(i), random.random()], dtype=torch.float64)


def test_iterable_dataset_repeats_only_for_the_same_num_workers():
    """Documented limit: each worker iterates its own stream, so batches depend on num_workers."""
    def run(num_workers):
        with FMQLoader(AugmentedStream(), batch_size=4, seed=SEED, num_workers=num_workers,
                       multiprocessing_context="fork") as loader:
            return torch.cat(list(loader))

    once, twice = run(2), run(2)
    assert torch.equal(once, twice)
    assert not torch.equal(once[:, 0], run(1)[:, 0])  # another split of the stream into batches
