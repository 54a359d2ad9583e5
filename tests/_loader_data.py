"""Small picklable datasets, collate functions and init functions for the loader tests.

They live at module top level so spawn and forkserver workers can import them.
"""

from __future__ import annotations

import collections
import os
import random
import time

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

import fmq_loader

Point = collections.namedtuple("Point", ["x", "label"])

SAMPLE_KINDS = ("tensor", "dict", "tuple", "namedtuple", "ndarray", "str", "number")


class KindDataset(Dataset):
    """Sample ``i`` of one kind: a tensor, dict, tuple, namedtuple, ndarray, str or number."""

    def __init__(self, n: int = 11, kind: str = "tensor") -> None:
        self.n = n
        self.kind = kind

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        t = torch.arange(6, dtype=torch.float32).reshape(2, 3) + i
        if self.kind == "tensor":
            return t
        if self.kind == "dict":
            return {"image": t, "label": i, "name": f"s{i}", "weight": i / 2}
        if self.kind == "tuple":
            return (t, i, np.float32(i) * 0.5)
        if self.kind == "namedtuple":
            return Point(x=t.numpy(), label=i)
        if self.kind == "ndarray":
            return np.full((3, 2), i, dtype=np.int16)
        if self.kind == "str":
            return f"sample-{i}"
        if self.kind == "number":
            return i
        raise ValueError(f"unknown kind {self.kind!r}")


class ShardedRange(IterableDataset):
    """Yields ``start..end-1``; each worker takes its slice via torch's get_worker_info()."""

    def __init__(self, start: int = 0, end: int = 23) -> None:
        self.start = start
        self.end = end

    def __iter__(self):
        info = get_worker_info()
        if info is None:
            lo, hi = self.start, self.end
        else:
            per = -(-(self.end - self.start) // info.num_workers)
            lo = self.start + info.id * per
            hi = min(lo + per, self.end)
        for i in range(lo, hi):
            yield torch.tensor([i, i * i])


def sum_and_count(samples):
    """A custom collate_fn: the elementwise sum of the samples and how many there were."""
    return {"sum": torch.stack(samples).sum(0), "count": torch.tensor(len(samples))}


class WorkerInfoDataset(Dataset):
    """Returns what torch's and fmq's get_worker_info() say inside the worker."""

    def __init__(self, n: int = 8) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        ours, theirs = fmq_loader.get_worker_info(), get_worker_info()
        return {
            "index": i,
            "pid": os.getpid(),
            "id": ours.id, "num_workers": ours.num_workers, "seed": ours.seed,
            "dataset_is_self": ours.dataset is self,
            "torch_id": theirs.id, "torch_num_workers": theirs.num_workers,
            "torch_seed": theirs.seed, "torch_dataset_is_self": theirs.dataset is self,
            "init_ran_for": _INIT_RAN_FOR,
        }


_INIT_RAN_FOR = -1


class RecordWorkerInit:
    """A worker_init_fn: leaves its argument where WorkerInfoDataset reports it, and
    writes ``<directory>/<worker_id>`` holding the worker's pid."""

    def __init__(self, directory) -> None:
        self.directory = str(directory)

    def __call__(self, worker_id: int) -> None:
        global _INIT_RAN_FOR
        _INIT_RAN_FOR = worker_id
        with open(os.path.join(self.directory, str(worker_id)), "w") as f:
            f.write(str(os.getpid()))


class RandomDrawDataset(Dataset):
    """Each sample: the worker id and one draw from random, numpy and torch."""

    def __init__(self, n: int = 8, delay_s: float = 0.02) -> None:
        self.n = n
        self.delay_s = delay_s

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        time.sleep(self.delay_s)  # so that every worker gets a share of the samples
        info = get_worker_info()
        return (info.id if info is not None else -1, random.random(), float(np.random.rand()),
                float(torch.rand(())))


class SlowDataset(Dataset):
    """Sleeps ``delay_s`` in every ``__getitem__``."""

    def __init__(self, n: int = 4, delay_s: float = 30.0) -> None:
        self.n = n
        self.delay_s = delay_s

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        time.sleep(self.delay_s)
        return torch.tensor(i)


class RaggedDataset(Dataset):
    """Sample ``odd_index`` has shape (5,); every other sample has shape (3,)."""

    def __init__(self, n: int = 8, odd_index: int = 2) -> None:
        self.n = n
        self.odd_index = odd_index

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        return torch.zeros(5 if i == self.odd_index else 3)


class BigTensorDataset(Dataset):
    """Samples large enough (64 KiB each) that batches travel through shared-memory slabs."""

    def __init__(self, n: int = 128) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        return torch.full((128, 128), float(i), dtype=torch.float32)


class EpochRecordingSampler(torch.utils.data.Sampler):
    """Yields 0..n-1 and remembers the epochs set_epoch() was given."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.epochs: list[int] = []

    def __iter__(self):
        return iter(range(self.n))

    def __len__(self) -> int:
        return self.n

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)


class Sized(Dataset):
    """A map-style dataset of ``n`` samples (the small datasets below add __getitem__)."""

    def __init__(self, n: int = 8) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


class IndexDataset(Sized):
    """Sample ``i`` is ``i``: the cheapest map-style dataset there is."""

    def __getitem__(self, i):
        return i


class InitialSeedDataset(Sized):
    """Sample ``i``: ``torch.initial_seed()``, one draw each from random, numpy and torch, and
    the worker's id and seed (-1 outside a worker)."""

    def __getitem__(self, i):
        info = get_worker_info()
        return (torch.initial_seed(), random.random(), float(np.random.rand()), float(torch.rand(())),
                info.id if info else -1, info.seed if info else -1)


def seed_torch_12345(worker_id: int) -> None:
    """A worker_init_fn that seeds torch's global generator with a constant."""
    torch.manual_seed(12345)


def seed_numpy_from_torch(worker_id: int) -> None:
    """The usual worker_init_fn: numpy seeded from the worker's torch seed."""
    np.random.seed(torch.initial_seed() % 2**32)


def record_seeds_in_init(worker_id: int) -> None:
    """A worker_init_fn that checks what torch documents for it, raising if it does not hold."""
    info = get_worker_info()
    ours = fmq_loader.get_worker_info()
    if info.seed != torch.initial_seed() or ours.seed != info.seed:
        raise AssertionError(f"worker {worker_id}: get_worker_info().seed {info.seed} / ours "
                             f"{ours.seed} != torch.initial_seed() {torch.initial_seed()}")
    try:
        ours.id = 3999
    except RuntimeError:
        pass
    else:
        raise AssertionError("fmq_loader.get_worker_info() could be assigned to")


class WorkerSeedDataset(Sized):
    """Sample ``i``: (worker id, the worker seed get_worker_info() reports)."""

    def __getitem__(self, i):
        time.sleep(0.01)
        info = get_worker_info()
        return (info.id, info.seed)


def numbers_pipe(n: int = 10, shuffle: bool = False, shard: bool = True):
    """An IterDataPipe over ``range(n)``: optionally a shuffler, then a sharding filter."""
    from torch.utils.data.datapipes.iter import IterableWrapper

    pipe = IterableWrapper(range(n))
    if shuffle:
        pipe = pipe.shuffle()
    return pipe.sharding_filter() if shard else pipe


def clone_collate(batch):
    """A collate_fn that returns the samples cloned, in a list."""
    return [x.clone() for x in batch]


_INIT_DRAWS = None


def draw_in_init(worker_id: int) -> None:
    """A worker_init_fn that draws once from each generator (kept for InitDrawsDataset)."""
    global _INIT_DRAWS
    _INIT_DRAWS = (torch.initial_seed(), random.random(), float(np.random.rand()),
                   float(torch.rand(())))


class InitDrawsDataset(Sized):
    """Sample ``i``: (worker id, the draws draw_in_init made in this worker)."""

    def __getitem__(self, i):
        time.sleep(0.01)
        return (get_worker_info().id,) + _INIT_DRAWS
