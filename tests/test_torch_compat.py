"""FMQLoader yields exactly the batches torch.utils.data.DataLoader yields (issue 3).

Every case runs both loaders with the same arguments (fresh, equally seeded
generators) and compares the batches recursively: same container types, same
keys, and ``torch.equal`` tensors of the same dtype and shape.
"""

from __future__ import annotations

import collections
import gc
import os
import re
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch.utils.data import DataLoader, DistributedSampler  # noqa: E402

from fmq_loader import FMQLoader  # noqa: E402

from _loader_data import KindDataset, ShardedRange, sum_and_count  # noqa: E402


def assert_same_batch(ours, theirs, where: str = "batch") -> None:
    """Recursively: same type, same structure, equal tensors of equal dtype and shape."""
    if isinstance(theirs, torch.Tensor):
        assert isinstance(ours, torch.Tensor), f"{where}: got {type(ours).__name__}, torch gives a Tensor"
        assert ours.dtype == theirs.dtype, f"{where}: dtype {ours.dtype} != torch's {theirs.dtype}"
        assert ours.shape == theirs.shape, f"{where}: shape {tuple(ours.shape)} != torch's {tuple(theirs.shape)}"
        assert torch.equal(ours, theirs), f"{where}: values differ:\n{ours}\ntorch:\n{theirs}"
        return
    assert type(ours) is type(theirs), f"{where}: type {type(ours).__name__} != torch's {type(theirs).__name__}"
    if isinstance(theirs, dict):
        assert list(ours) == list(theirs), f"{where}: keys {list(ours)} != torch's {list(theirs)}"
        for key in theirs:
            assert_same_batch(ours[key], theirs[key], f"{where}[{key!r}]")
    elif isinstance(theirs, (list, tuple)):
        assert len(ours) == len(theirs), f"{where}: length {len(ours)} != torch's {len(theirs)}"
        for i, (a, b) in enumerate(zip(ours, theirs)):
            assert_same_batch(a, b, f"{where}[{i}]")
    elif isinstance(theirs, np.ndarray):
        np.testing.assert_array_equal(ours, theirs, err_msg=where)
    else:
        assert ours == theirs, f"{where}: {ours!r} != torch's {theirs!r}"


def _kwargs(kw: dict, num_workers: int, method: str | None) -> dict:
    kw = dict(kw)
    if "generator_seed" in kw:
        kw["generator"] = torch.Generator().manual_seed(kw.pop("generator_seed"))
    kw["num_workers"] = num_workers
    if num_workers > 0 and method is not None:
        kw["multiprocessing_context"] = method
    return kw


def _epochs(loader, epochs: int) -> list[list]:
    return [list(loader) for _ in range(epochs)]


def _case(name, dataset, num_workers=(0, 1, 2), method="fork", epochs=1, **kw):
    return [pytest.param(dataset, kw, nw, method, epochs, id=f"{name}-w{nw}-{method}")
            for nw in num_workers]


SEQUENTIAL = KindDataset(11)
PARITY_CASES = [
    *_case("sequential", SEQUENTIAL, batch_size=3),
    *_case("shuffle-generator-2epochs", SEQUENTIAL, epochs=2, batch_size=4, shuffle=True,
           generator_seed=7),
    *_case("custom-sampler", SEQUENTIAL, num_workers=(0, 2), batch_size=2,
           sampler=[5, 3, 9, 1, 0, 10, 2]),
    *_case("distributed-sampler", SEQUENTIAL, num_workers=(2,), batch_size=2,
           sampler=DistributedSampler(SEQUENTIAL, num_replicas=2, rank=1, shuffle=True, seed=3)),
    *_case("batch-sampler", SEQUENTIAL, num_workers=(0, 2),
           batch_sampler=[[0, 1, 2], [5], [3, 4, 6, 7], [10, 8]]),
    *_case("drop-last", SEQUENTIAL, num_workers=(0, 2), batch_size=4, drop_last=True),
    *_case("batch-size-none", SEQUENTIAL, num_workers=(0, 2), batch_size=None),
    *_case("batch-size-none-dict", KindDataset(5, "dict"), num_workers=(2,), batch_size=None),
    *_case("custom-collate", SEQUENTIAL, num_workers=(0, 2), batch_size=3,
           collate_fn=sum_and_count),
    *[c for kind in ("dict", "tuple", "namedtuple", "ndarray", "str", "number")
      for c in _case(f"{kind}-samples", KindDataset(7, kind), num_workers=(0, 2), batch_size=3)],
    *_case("spawn", KindDataset(9, "dict"), num_workers=(2,), method="spawn", batch_size=2,
           shuffle=True, generator_seed=11),
    *_case("forkserver", KindDataset(9, "namedtuple"), num_workers=(1,), method="forkserver",
           batch_size=4, drop_last=True),
    *_case("persistent-shuffle-2epochs", SEQUENTIAL, num_workers=(2,), epochs=2, batch_size=3,
           shuffle=True, generator_seed=5, persistent_workers=True),
    *_case("persistent-spawn-2epochs", KindDataset(6, "tuple"), num_workers=(2,),
           method="spawn", epochs=2, batch_size=2, persistent_workers=True),
    *_case("iterable-sharded", ShardedRange(0, 23), batch_size=4),
    *_case("iterable-sharded-drop-last", ShardedRange(0, 23), num_workers=(2,), batch_size=4,
           drop_last=True),
    *_case("iterable-sharded-no-batching", ShardedRange(0, 7), num_workers=(0, 2),
           batch_size=None),
    *_case("iterable-sharded-2epochs-persistent", ShardedRange(0, 13), num_workers=(2,),
           epochs=2, batch_size=3, persistent_workers=True),
]


@pytest.mark.parametrize("dataset,kw,num_workers,method,epochs", PARITY_CASES)
def test_yields_the_batches_torch_dataloader_yields(dataset, kw, num_workers, method, epochs):
    theirs_loader = DataLoader(dataset, **_kwargs(kw, num_workers, method))
    theirs = _epochs(theirs_loader, epochs)
    theirs_len = len(theirs_loader) if not isinstance(dataset, ShardedRange) else None
    del theirs_loader  # torch's persistent workers stop when its iterator is collected
    gc.collect()
    with FMQLoader(dataset, **_kwargs(kw, num_workers, method)) as loader:
        ours = _epochs(loader, epochs)
        if theirs_len is not None:  # torch: no len() without __len__
            assert len(loader) == theirs_len
    for epoch, (ours_batches, theirs_batches) in enumerate(zip(ours, theirs)):
        assert len(ours_batches) == len(theirs_batches), f"epoch {epoch}: batch count"
        for i, (a, b) in enumerate(zip(ours_batches, theirs_batches)):
            assert_same_batch(a, b, f"epoch {epoch} batch {i}")


def _key(batch) -> tuple:
    return tuple(batch.flatten().tolist())


@pytest.mark.parametrize("dataset", [KindDataset(13), ShardedRange(0, 17)],
                         ids=["map-style", "iterable-sharded"])
def test_in_order_false_yields_the_same_multiset_of_batches(dataset):
    theirs = DataLoader(dataset, batch_size=3, num_workers=2, multiprocessing_context="fork",
                        in_order=False)
    with FMQLoader(dataset, batch_size=3, num_workers=2, multiprocessing_context="fork",
                   in_order=False) as loader:
        ours = list(loader)
    assert collections.Counter(map(_key, ours)) == collections.Counter(map(_key, theirs))


def test_len_matches_torch_for_samplers_drop_last_and_sized_iterables():
    class SizedRange(ShardedRange):
        def __len__(self):
            return self.end - self.start

    dataset = KindDataset(10)
    for kw in (dict(batch_size=3), dict(batch_size=3, drop_last=True), dict(batch_size=None),
               dict(batch_sampler=[[0], [1, 2]]), dict(sampler=range(7), batch_size=2),
               dict(sampler=DistributedSampler(dataset, num_replicas=3, rank=0), batch_size=2)):
        assert len(FMQLoader(dataset, **kw)) == len(DataLoader(dataset, **kw)), kw
    for kw in (dict(batch_size=4), dict(batch_size=4, drop_last=True), dict(batch_size=None)):
        sized = SizedRange(0, 10)
        assert len(FMQLoader(sized, **kw)) == len(DataLoader(sized, **kw)), kw


class UnshardedSizedRange(torch.utils.data.IterableDataset):
    """Every worker yields all of 0..n-1: the classic missing-shard mistake."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        return iter(range(self.n))


def _warnings_while(fn) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    return caught


@pytest.mark.parametrize("num_workers", [0, 2])
def test_an_iterable_that_yields_more_than_its_reported_len_warns_as_torch_does(num_workers):
    """torch warns at each item past len(dataset), once len(loader) was asked (its NOTE
    [ IterableDataset and __len__ ]); with workers, an unsharded dataset is the usual cause."""
    extra = {"multiprocessing_context": "fork"} if num_workers else {}
    counts, items = {}, {}
    for cls in (DataLoader, FMQLoader):
        loader = cls(UnshardedSizedRange(4), batch_size=None, num_workers=num_workers, **extra)
        assert not _warnings_while(lambda: list(loader))  # len() not asked: no warning
        len(loader)
        got = []
        caught = _warnings_while(lambda: got.extend(int(x) for x in loader))
        items[cls], counts[cls] = sorted(got), len(caught)
        if cls is FMQLoader:
            assert all(w.filename == __file__ for w in caught)  # points at the loop
            if caught:
                message = str(caught[0].message)
                assert "was reported to be 4 (when accessing len(dataloader))" in message
                assert "but 5 samples have been fetched" in message  # torch's phrase
                assert "get_worker_info()" in message
    assert items[FMQLoader] == items[DataLoader]
    assert counts[FMQLoader] == counts[DataLoader] == (4 if num_workers else 0)


def test_more_workers_than_cpus_warns_as_torch_does():
    cpus = len(os.sched_getaffinity(0))
    for cls in (DataLoader, FMQLoader):
        caught = _warnings_while(lambda: cls(KindDataset(4), num_workers=cpus + 1))
        assert len(caught) == 1 and caught[0].category is UserWarning, (cls, caught)
        assert not _warnings_while(lambda: cls(KindDataset(4), num_workers=cpus))
    message = str(caught[0].message)
    assert f"num_workers={cpus + 1}" in message and f"the {cpus} CPUs" in message
    assert caught[0].filename == __file__


@pytest.mark.parametrize("name, value", [("batch_size", 3), ("sampler", None), ("batch_sampler", None),
                                         ("drop_last", True), ("dataset", [1]),
                                         ("persistent_workers", True)])
def test_attributes_fixed_at_construction_refuse_assignment_as_torchs_do(name, value):
    for cls in (DataLoader, FMQLoader):
        loader = cls(KindDataset(10), batch_size=2)
        with pytest.raises(ValueError, match=f"{name} attribute should not be set after"):
            setattr(loader, name, value)


def test_multiprocessing_context_is_checked_when_assigned_as_torchs_is():
    for cls in (DataLoader, FMQLoader):
        loader = cls(KindDataset(10), batch_size=2, num_workers=1)
        with pytest.raises(ValueError, match="should specify a valid start method"):
            loader.multiprocessing_context = "bogus"
        loader.multiprocessing_context = "spawn"
        assert loader.multiprocessing_context.get_start_method() == "spawn"
        loader.num_workers = 2  # allowed, as in torch
    with FMQLoader(KindDataset(10), batch_size=2, num_workers=1) as loader:
        loader.multiprocessing_context = "fork"
        loader.num_workers = 2
        assert_same_batch(list(loader), list(DataLoader(KindDataset(10), batch_size=2)))


def _flat(message: str) -> str:
    return "".join(message.split()).rstrip(".")


INVALID = [
    pytest.param(KindDataset(4), dict(num_workers=-1), id="negative-num-workers"),
    pytest.param(KindDataset(4), dict(timeout=-1), id="negative-timeout"),
    pytest.param(KindDataset(4), dict(prefetch_factor=2), id="prefetch-factor-without-workers"),
    pytest.param(KindDataset(4), dict(num_workers=1, prefetch_factor=-1),
                 id="negative-prefetch-factor"),
    pytest.param(KindDataset(4), dict(persistent_workers=True), id="persistent-without-workers"),
    pytest.param(ShardedRange(0, 4), dict(shuffle=True), id="iterable-with-shuffle"),
    pytest.param(ShardedRange(0, 4), dict(sampler=[0, 1]), id="iterable-with-sampler"),
    pytest.param(ShardedRange(0, 4), dict(batch_sampler=[[0, 1]]), id="iterable-with-batch-sampler"),
    pytest.param(KindDataset(4), dict(sampler=[0, 1], shuffle=True), id="sampler-with-shuffle"),
    pytest.param(KindDataset(4), dict(batch_sampler=[[0, 1]], batch_size=2),
                 id="batch-sampler-with-batch-size"),
    pytest.param(KindDataset(4), dict(batch_sampler=[[0, 1]], shuffle=True),
                 id="batch-sampler-with-shuffle"),
    pytest.param(KindDataset(4), dict(batch_sampler=[[0, 1]], sampler=[0, 1]),
                 id="batch-sampler-with-sampler"),
    pytest.param(KindDataset(4), dict(batch_sampler=[[0, 1]], drop_last=True),
                 id="batch-sampler-with-drop-last"),
    pytest.param(KindDataset(4), dict(batch_size=None, drop_last=True),
                 id="batch-size-none-with-drop-last"),
    pytest.param(KindDataset(4), dict(num_workers=1, multiprocessing_context="no-such-method"),
                 id="unknown-start-method"),
    pytest.param(KindDataset(4), dict(multiprocessing_context="fork"),
                 id="context-without-workers"),
]


@pytest.mark.parametrize("dataset,kw", INVALID)
def test_invalid_arguments_raise_torchs_value_error(dataset, kw):
    """Our message starts with torch's (whitespace aside) and may add the offending value."""
    with pytest.raises(ValueError) as theirs:
        DataLoader(dataset, **kw)
    torch_message = str(theirs.value)
    with pytest.raises(ValueError, match=re.escape(torch_message.split()[0])) as ours:
        FMQLoader(dataset, **kw)
    assert _flat(str(ours.value)).startswith(_flat(torch_message)), (
        f"ours: {ours.value}\ntorch's: {torch_message}")


def test_invalid_context_object_raises_torchs_type_error():
    with pytest.raises(TypeError) as theirs:
        DataLoader(KindDataset(4), num_workers=1, multiprocessing_context=3)
    with pytest.raises(TypeError, match="multiprocessing_context option should be a valid context"):
        FMQLoader(KindDataset(4), num_workers=1, multiprocessing_context=3)
    assert "multiprocessing_context option should be a valid context" in str(theirs.value)


class BatchedOnly(torch.utils.data.Dataset):
    """Loads batches only, through __getitems__ (as Hugging Face datasets do)."""

    def __len__(self) -> int:
        return 6

    def __getitems__(self, indices):
        return [torch.tensor([100 + i]) for i in indices]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_dataset_with_getitems_is_fetched_through_it_as_torchs_is(num_workers):
    """torch 2.1+ calls __getitems__(indices) for each batch when the dataset has it;
    it was ignored (NotImplementedError from Dataset.__getitem__)."""
    extra = {"multiprocessing_context": "fork"} if num_workers else {}
    kw = dict(batch_size=2, num_workers=num_workers, **extra)
    with FMQLoader(BatchedOnly(), **kw) as loader:
        ours = list(loader)
    assert_same_batch(ours, list(DataLoader(BatchedOnly(), **kw)))


def test_reseeding_the_generator_or_replacing_indices_between_epochs_is_followed():
    """With persistent workers the next epoch's order is drawn before this one ends.
    A generator reseeded per epoch, or a sampler given new indices, used to take effect
    one epoch late. NOTE [ an order changed since the prefetch ]."""
    def reseeded(cls):
        g = torch.Generator()
        loader = cls(KindDataset(8), batch_size=4, shuffle=True, generator=g, num_workers=2,
                     persistent_workers=True, multiprocessing_context="fork")
        out = []
        for epoch in range(3):
            g.manual_seed(100 + epoch)
            out.append([b.tolist() for b in loader])
        return out

    def new_indices(cls):
        sampler = torch.utils.data.SubsetRandomSampler([0, 1, 2, 3],
                                                       generator=torch.Generator().manual_seed(0))
        loader = cls(KindDataset(8), batch_size=2, sampler=sampler, num_workers=2,
                     persistent_workers=True, multiprocessing_context="fork")
        out = []
        for epoch in range(3):
            sampler.indices = [4, 5, 6, 7] if epoch % 2 else [0, 1, 2, 3]
            out.append([b.tolist() for b in loader])
        return out

    for case in (reseeded, new_indices):
        assert case(FMQLoader) == case(DataLoader), case.__name__


class FailsAt2(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 5

    def __getitem__(self, i: int):
        if i == 2:
            raise KeyError(f"no sample {i}")
        return torch.tensor([i])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_the_epoch_goes_on_after_a_batch_raises_as_torchs_does(num_workers):
    """With num_workers=0 the iterator was a generator, which an exception ends."""
    extra = {"multiprocessing_context": "fork"} if num_workers else {}

    def events(cls):
        out, it = [], iter(cls(FailsAt2(), batch_size=1, num_workers=num_workers, **extra))
        while True:
            try:
                out.append(next(it).tolist())
            except StopIteration:
                return out
            except KeyError:
                out.append("KeyError")

    assert events(FMQLoader) == events(DataLoader) == [[[0]], [[1]], "KeyError", [[3]], [[4]]]
