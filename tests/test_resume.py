"""state_dict() / load_state_dict(): a restored loader yields exactly the rest of the epoch (issue 8).

The interruption point is drawn at random (fixed seed); the restored loader is a
new FMQLoader, as after a crash, and the state goes through JSON on the way.
"""

from __future__ import annotations

import json
import random

import pytest
import torch
from torch.utils.data import BatchSampler, DistributedSampler, RandomSampler

from fmq_loader import FMQLoader
from test_determinism import AugmentedNumbers, N

BATCH, SEED = 3, 99
PICK = random.Random(20240608)  # where each test interrupts its epoch


def _make(**kwargs) -> FMQLoader:
    kwargs = {"batch_size": BATCH, "shuffle": True, "seed": SEED, "timeout": 60, **kwargs}
    if kwargs.get("num_workers"):
        kwargs.setdefault("multiprocessing_context", "fork")
    return FMQLoader(AugmentedNumbers(kwargs.pop("n", N)), **kwargs)


def _uninterrupted(n_epochs: int, set_epoch: bool, **kwargs) -> list[list[torch.Tensor]]:
    with _make(**kwargs) as loader:
        out = []
        for e in range(n_epochs):
            if set_epoch:
                loader.set_epoch(e)
            out.append(list(loader))
        return out


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("num_workers,persistent", [(0, False), (2, False), (2, True)])
@pytest.mark.parametrize("set_epoch", [False, True])
def test_resumed_loader_yields_the_rest_of_the_epoch_then_the_next_epochs(
        num_workers, persistent, set_epoch):
    kwargs = {"num_workers": num_workers, "persistent_workers": persistent}
    want = _uninterrupted(3, set_epoch, **kwargs)
    stop_epoch, stop_batch = PICK.randrange(2), PICK.randrange(len(want[0]) + 1)
    with _make(**kwargs) as loader:
        before = []
        for e in range(stop_epoch + 1):
            if set_epoch:
                loader.set_epoch(e)
            it = iter(loader)
            before = [next(it) for _ in range(stop_batch if e == stop_epoch else len(want[e]))]
        state = json.loads(json.dumps(loader.state_dict()))
        del it
    assert state["epoch"] == stop_epoch and state["batches_seen"] == stop_batch
    with _make(**kwargs) as loader:  # a fresh process would build the loader the same way
        loader.load_state_dict(state)
        after = []
        for e in range(stop_epoch, 3):
            if set_epoch:
                loader.set_epoch(e)
            after.append(list(loader))
    assert _same(before + after[0], want[stop_epoch]), (stop_epoch, stop_batch)
    for e, batches in enumerate(after[1:], stop_epoch + 1):
        assert _same(batches, want[e]), f"epoch {e} after the resumed one differs"


def test_state_between_epochs_resumes_at_the_next_epoch():
    want = _uninterrupted(2, False, num_workers=2, persistent_workers=True)
    with _make(num_workers=2, persistent_workers=True) as loader:
        list(loader)  # the next epoch is already prefetched now
        state = loader.state_dict()
    assert state["epoch"] is None and state["epochs_begun"] == 1
    with _make(num_workers=0) as loader:
        loader.load_state_dict(state)
        assert _same(list(loader), want[1])


def test_load_state_dict_rewinds_a_live_persistent_loader():
    with _make(num_workers=2, persistent_workers=True) as loader:
        it = iter(loader)
        first = [next(it) for _ in range(4)]
        state = loader.state_dict()
        rest = list(it)
        loader.load_state_dict(state)
        assert list(it) == []  # the epoch begun before the load yields no more
        assert _same(list(loader), rest)
        assert len(first) + len(rest) == len(loader)


def test_state_dict_of_a_loaded_loader_is_the_loaded_state():
    with _make() as loader:
        it = iter(loader)
        next(it)
        state = loader.state_dict()
    with _make() as loader:
        loader.load_state_dict(state)
        assert loader.state_dict() == state


@pytest.mark.parametrize("change,named", [
    ({"n": N - 1}, r"dataset_length 37 in the state, 36 here"),
    ({"batch_size": BATCH + 1}, r"batch_size 3 in the state, 4 here"),
    ({"seed": SEED + 1}, r"seed 99 in the state, 100 here"),
    ({"shuffle": False}, r"sampler 'EpochOrder' in the state, 'SequentialSampler' here"),
])
def test_state_from_another_loader_is_refused_naming_the_mismatch(change, named):
    with _make() as loader:
        state = loader.state_dict()
    with _make(**change) as other, pytest.raises(ValueError, match=named):
        other.load_state_dict(state)


def test_set_epoch_to_another_epoch_after_loading_is_refused():
    with _make() as loader:
        loader.set_epoch(4)
        it = iter(loader)
        next(it)
        state = loader.state_dict()
    with _make() as loader:
        loader.load_state_dict(state)
        loader.set_epoch(5)
        with pytest.raises(ValueError, match=r"restored epoch 4 after 1 batches.*set_epoch\(4\)"):
            iter(loader)


@pytest.mark.parametrize("kwargs,named", [
    ({"seed": None}, r"needs FMQLoader\(seed=\.\.\.\)"),
    ({"shuffle": False, "sampler": RandomSampler(range(N))}, r"sampler RandomSampler .* seed="),
    ({"generator": torch.Generator()}, r"sampler RandomSampler"),
    ({"num_workers": 2, "in_order": False}, r"in_order=False"),
])
def test_state_dict_refuses_an_order_it_cannot_draw_again(kwargs, named):
    with _make(**kwargs) as loader, pytest.raises(ValueError, match=named):
        loader.state_dict()


def test_state_dict_refuses_an_iterable_dataset():
    from _loader_data import ShardedRange

    with FMQLoader(ShardedRange(0, 10), batch_size=2, seed=1) as loader, \
            pytest.raises(ValueError, match="iterable dataset has no position"):
        loader.state_dict()


def test_resume_with_a_distributed_sampler_and_set_epoch():
    dataset = AugmentedNumbers()

    def make():
        sampler = DistributedSampler(dataset, num_replicas=2, rank=1, shuffle=True, seed=3)
        return FMQLoader(dataset, batch_size=BATCH, sampler=sampler, seed=SEED)

    with make() as loader:
        loader.set_epoch(2)
        want = list(loader)
        loader.set_epoch(2)
        it = iter(loader)
        before = [next(it) for _ in range(2)]
        state = loader.state_dict()
    with make() as loader:
        loader.load_state_dict(state)
        loader.set_epoch(2)
        assert _same(before + list(loader), want)


def test_state_saved_with_the_last_batch_in_hand_resumes_to_an_empty_epoch():
    """A checkpoint taken in the loop body of the epoch's last batch: nothing of it is left."""
    want = _uninterrupted(2, False, num_workers=2, persistent_workers=True)
    with _make(num_workers=2, persistent_workers=True) as loader:
        it = iter(loader)
        for _ in range(len(loader)):
            next(it)
        state = loader.state_dict()
    assert state["epoch"] == 0 and state["batches_seen"] == len(want[0])
    with _make(num_workers=2, persistent_workers=True) as loader:
        loader.load_state_dict(state)
        assert list(loader) == []
        assert _same(list(loader), want[1])


def test_resume_with_a_batch_sampler_over_a_distributed_sampler_checks_its_epoch():
    dataset = AugmentedNumbers()

    def make():
        sampler = DistributedSampler(dataset, num_replicas=2, rank=0, shuffle=True, seed=3)
        return FMQLoader(dataset, batch_sampler=BatchSampler(sampler, BATCH, False), seed=SEED)

    with make() as loader:
        loader.batch_sampler.sampler.set_epoch(1)
        it = iter(loader)
        next(it)
        state = loader.state_dict()
    with make() as loader:
        loader.load_state_dict(state)
        with pytest.raises(ValueError, match=r"DistributedSampler's epoch 1, but its epoch is now 0"):
            iter(loader)
