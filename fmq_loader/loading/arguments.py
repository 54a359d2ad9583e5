"""FMQLoader's keyword rules: torch DataLoader's checks, defaults and warnings, and ours.

``check_arguments`` takes the constructor's keywords and returns them resolved (the
sampler and batch sampler built, DataPipes wrapped, the loader's own order chosen) or
raises the error torch's DataLoader raises for the same call, in the same order. The
running code is in loader.py; nothing here keeps state.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import sys
import warnings
from typing import Any, Callable

from torch.utils.data import (BatchSampler, IterableDataset, RandomSampler, Sampler,
                              SequentialSampler)

from ..workers import datapipes
from .distributed import EpochOrder, detect_rank

__all__ = ["Arguments", "check_arguments", "check_log_every_s", "resolve_context",
           "is_iterable_dataset", "warn_if_more_workers_than_cpus", "user_stacklevel"]


class InfiniteIndices(Sampler):
    """Stands in for the sampler of an iterable dataset (yields None forever)."""

    def __init__(self) -> None:
        pass

    def __iter__(self):
        while True:
            yield None


def is_iterable_dataset(dataset) -> bool:
    """A torch IterableDataset, or anything with __iter__ and no __getitem__."""
    if isinstance(dataset, IterableDataset):
        return True
    return not hasattr(dataset, "__getitem__") and hasattr(dataset, "__iter__")


@dataclasses.dataclass(frozen=True)
class Arguments:
    """The keywords ``check_arguments`` resolved; the others are used as given."""

    dataset: Any  # a DataPipe comes back wrapped (datapipes.py)
    iterable: bool  # an iterable dataset: per-worker streams, no sampler
    batch_size: int | None
    drop_last: bool
    sampler: Any
    batch_sampler: Any  # None without auto-collation (batch_size=None)
    prefetch_factor: int | None  # 2 by default with workers, None without
    order: EpochOrder | None  # the loader's own order, shuffled from (seed, epoch)


def check_arguments(dataset, batch_size, shuffle, sampler, batch_sampler, num_workers: int,
                    drop_last: bool, timeout: float, generator, prefetch_factor,
                    persistent_workers: bool, extra_slabs: int, seed, distributed: bool,
                    on_set_epoch: Callable[[int], None]) -> Arguments:
    """Check FMQLoader's keywords as torch's DataLoader does (same messages, same order).

    Args:
        on_set_epoch: the loader's ``set_epoch``, which the loader's own order
            (``distributed=True``, or ``shuffle`` with ``seed``) calls when it is told
            an epoch (distributed.py).

    Raises:
        ValueError, TypeError: as torch's DataLoader for the same keywords; for ours
            (``extra_slabs``, ``seed``, ``distributed``), what is wrong and what to pass.
    """
    if not isinstance(num_workers, int):  # (a bool passes, as in torch)
        raise TypeError(f"num_workers must be an int (0 loads in this process), got "
                        f"{num_workers!r} of type {type(num_workers).__name__}")
    if num_workers < 0:
        raise ValueError("num_workers option should be non-negative; use num_workers=0 to "
                         f"disable multiprocessing, got {num_workers!r}")
    if not isinstance(extra_slabs, int) or isinstance(extra_slabs, bool) or extra_slabs < 0:
        raise ValueError(f"extra_slabs must be an int >= 0 (shared-memory slabs for batches "
                         f"your loop keeps), got {extra_slabs!r}")
    if timeout < 0:
        raise ValueError(f"timeout option should be non-negative, got {timeout!r}")
    if num_workers == 0 and prefetch_factor is not None:
        raise ValueError("prefetch_factor option could only be specified in multiprocessing. "
                         "let num_workers > 0 to enable multiprocessing, otherwise set "
                         "prefetch_factor to None.")
    if num_workers > 0 and prefetch_factor is None:
        prefetch_factor = 2
    if prefetch_factor is not None and prefetch_factor < 0:
        raise ValueError(f"prefetch_factor option should be non-negative, got {prefetch_factor!r}")
    if num_workers > 0 and (not isinstance(prefetch_factor, int) or isinstance(prefetch_factor, bool)
                            or prefetch_factor == 0):
        # torch accepts these here and fails later (an AssertionError at iter() for 0);
        # with 0 no worker could ever start a batch, and next() would wait for good
        raise ValueError(f"prefetch_factor must be an int >= 1 with num_workers={num_workers} "
                         f"(how many batches each worker may prepare ahead), got "
                         f"{prefetch_factor!r}")
    if persistent_workers and num_workers == 0:
        raise ValueError("persistent_workers option needs num_workers > 0")
    dataset = datapipes.wrap(dataset, shuffle)  # torch's handling of DataPipes: datapipes.py
    iterable = is_iterable_dataset(dataset)
    if datapipes.is_iter_datapipe(dataset):
        shuffle = None  # it went to the pipe's shufflers
    if iterable:
        if shuffle not in (False, None):
            raise ValueError("DataLoader with IterableDataset: expected unspecified shuffle "
                             f"option, but got shuffle={shuffle}")
        if sampler is not None:
            raise ValueError("DataLoader with IterableDataset: expected unspecified sampler "
                             f"option, but got sampler={sampler}")
        if batch_sampler is not None:
            raise ValueError("DataLoader with IterableDataset: expected unspecified "
                             f"batch_sampler option, but got batch_sampler={batch_sampler}")
    shuffle = bool(shuffle)
    if sampler is not None and shuffle:
        raise ValueError("sampler option is mutually exclusive with shuffle")
    if batch_sampler is not None:
        if batch_size != 1 or shuffle or sampler is not None or drop_last:
            raise ValueError("batch_sampler option is mutually exclusive with batch_size, "
                             "shuffle, sampler, and drop_last")
        batch_size, drop_last = None, False
    elif batch_size is None and drop_last:
        raise ValueError("batch_size=None option disables auto-batching and is mutually "
                         "exclusive with drop_last")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
        raise ValueError(f"seed must be a non-negative int or None, got {seed!r}")
    order = None  # the loader's own order, shuffled from (seed, epoch): distributed.py
    if distributed:
        if iterable:
            raise ValueError("distributed=True shards a map-style dataset's indices; an "
                             "IterableDataset must shard itself (e.g. by "
                             "torch.distributed.get_rank() in __iter__); use distributed=False")
        if sampler is not None or batch_sampler is not None:
            raise ValueError("distributed=True builds its own sharded sampler, so it is "
                             "mutually exclusive with sampler and batch_sampler; pass "
                             "sampler=DistributedSampler(...) instead if you need your own")
        if generator is not None:
            raise ValueError("distributed=True shuffles from seed + epoch, as "
                             "DistributedSampler does; pass seed= instead of generator=")
        rank, world = detect_rank()
        order = EpochOrder(dataset, shuffle=shuffle, seed=0 if seed is None else seed,
                           num_replicas=world, rank=rank, drop_last=drop_last,
                           on_set_epoch=on_set_epoch)
    elif sampler is None and shuffle and seed is not None and generator is None and not iterable:
        order = EpochOrder(dataset, shuffle=True, seed=seed, on_set_epoch=on_set_epoch)
    if order is not None:
        sampler = order
    if sampler is None:
        if iterable:
            sampler = InfiniteIndices()
        elif shuffle:
            sampler = RandomSampler(dataset, generator=generator)
        else:
            sampler = SequentialSampler(dataset)
    if batch_size is not None and batch_sampler is None:
        batch_sampler = BatchSampler(sampler, batch_size, drop_last)
    return Arguments(dataset, iterable, batch_size, drop_last, sampler, batch_sampler,
                     prefetch_factor, order)


def check_log_every_s(log_every_s) -> None:
    """``log_every_s``: a positive number of seconds, or None."""
    if log_every_s is not None and (not isinstance(log_every_s, (int, float))
                                    or isinstance(log_every_s, bool) or not log_every_s > 0):
        raise ValueError(f"log_every_s must be a positive number of seconds or None, "
                         f"got {log_every_s!r}")


def resolve_context(ctx, num_workers: int):
    """The ``multiprocessing_context`` keyword as a context (None with ``num_workers=0``),
    checked as torch checks it."""
    if ctx is None:
        return mp.get_context() if num_workers > 0 else None
    if num_workers == 0:
        raise ValueError("multiprocessing_context can only be used with multi-process "
                         f"loading (num_workers > 0), but got num_workers={num_workers}")
    if isinstance(ctx, str):
        valid = mp.get_all_start_methods()
        if ctx not in valid:
            raise ValueError("multiprocessing_context option should specify a valid start "
                             f"method in {valid!r}, but got multiprocessing_context={ctx!r}")
        return mp.get_context(ctx)
    if not isinstance(ctx, mp.context.BaseContext):
        raise TypeError("multiprocessing_context option should be a valid context object or "
                        "a string specifying the start method, but got "
                        f"multiprocessing_context={ctx!r}")
    return ctx


# The whole fmq_loader package (this file is in fmq_loader/loading/): a warning raised from
# tools/build.py must skip those frames too.
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def user_stacklevel() -> int:
    """``stacklevel`` for a ``warnings.warn`` in the caller that points at the first frame
    outside fmq_loader: the user's ``FMQLoader(...)``, ``build_from_config(...)`` or
    ``for batch in loader`` line, however many of our frames lie between (pandas'
    ``find_stack_level``; ``skip_file_prefixes`` needs Python 3.12)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    return level


def warn_if_more_workers_than_cpus(num_workers: int) -> None:
    """As torch's DataLoader: more workers than CPUs this process may run on can slow
    loading down or freeze it (at construction, and where workers start). The warning
    points at the user's code (``user_stacklevel``)."""
    try:
        cpus: int | None = len(os.sched_getaffinity(0))
        source = "this process may run on (os.sched_getaffinity)"
    except AttributeError:  # not Linux
        cpus, source = os.cpu_count(), "of this machine (os.cpu_count; affinity unknown)"
    if num_workers <= 0 or (cpus is not None and num_workers <= cpus):
        return
    have = f"the {cpus} CPUs {source}" if cpus is not None else "this machine's CPUs (how many is unknown)"
    warnings.warn(f"num_workers={num_workers}: this DataLoader will create {num_workers} worker "
                  f"processes, more than {have}. Please be aware that excessive worker creation "
                  "might get DataLoader running slow or even freeze; lower num_workers if it does.",
                  UserWarning, stacklevel=user_stacklevel())
