"""``num_workers=0``: batches loaded in the calling process, seeded as workers seed them.

The same batches as the worker path (each sample seeded from its place in the epoch,
the training loop's RNG state restored), timed for ``stats()``; no pool, no queue.
"""

from __future__ import annotations

import contextlib
import itertools
import random
from time import perf_counter
from typing import Any, Callable, Protocol

import numpy as np
import torch

from ..workers.stats import Meter
from ..workers.worker import load_batch
from .epoch import warn_if_past_reported_length
from .pinning import pin
from .resume import EpochProgress

__all__ = ["InProcessEpoch", "in_process_iterable", "metered"]


class InProcessOwner(Protocol):
    """What this module reads of the FMQLoader it loads for (loader.py imports this module)."""

    dataset: Any
    collate_fn: Callable
    auto_collation: bool
    batch_size: int | None
    drop_last: bool
    pin_memory: bool
    _pin_device: Any
    _meter: Meter
    _reported_len: int | None


def metered(meter: Meter, batches):
    """Time each step of ``batches``, ``(samples, batch)`` pairs, for ``stats()``."""
    start = perf_counter()
    for samples, batch in batches:
        meter.record(start, perf_counter(), samples)
        yield batch
        start = perf_counter()


@contextlib.contextmanager
def _own_rng_state():
    """Restore ``random``'s, numpy's and torch's CPU RNG state on exit."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


_END = object()


def in_process_iterable(loader: InProcessOwner):
    """num_workers=0 with an iterable dataset: its batches, loaded in this process.

    Yields ``(samples in the batch, batch)``; ``metered`` passes the batch on. (An
    error inside the dataset's own generator ends it, here as in torch.)
    """
    dataset, collate = loader.dataset, loader.collate_fn
    it, reported, yielded = iter(dataset), loader._reported_len, 0
    while True:
        if loader.auto_collation:
            items = list(itertools.islice(it, loader.batch_size))
            if not items or (loader.drop_last and len(items) < loader.batch_size):
                return
            samples, batch = len(items), collate(items)
        else:
            item = next(it, _END)
            if item is _END:
                return
            samples, batch = 1, collate(item)
        yielded += 1
        # stacklevel: here, metered, the caller of next()
        warn_if_past_reported_length(dataset, reported, yielded, 0, stacklevel=3)
        yield samples, pin(batch, loader._pin_device) if loader.pin_memory else batch


def _naming_indices(exc: Exception, indices) -> Exception | None:
    """``exc``'s type with the dataset indices added to its message; None when that type
    cannot be built from one message."""
    try:
        return type(exc)(f"{exc} (collating dataset indices {list(indices)[:16]})")
    except Exception:
        return None


class InProcessEpoch:
    """num_workers=0 with a map-style dataset: load each batch in this process when asked.

    An iterator object, not a generator, so that after one batch raises (a dataset or
    collate error) the next ``next()`` goes on with the following batch, as torch's
    does; a generator would have ended. Same seeds as the worker path: each sample is
    seeded from its place in the epoch.
    """

    def __init__(self, loader: InProcessOwner, base_seed: int, index_sampler,
                 progress: EpochProgress | None) -> None:
        self._loader, self._base_seed, self._progress = loader, base_seed, progress
        self._meter = loader._meter
        self._batches = iter(index_sampler)
        self._position = 0
        for indices in itertools.islice(self._batches, progress.start if progress is not None else 0):
            self._position += len(indices) if loader.auto_collation else 1  # resume: skip what was seen
        self._done = False

    def __iter__(self):
        return self

    def __next__(self):
        if self._done:
            raise StopIteration
        start = perf_counter()
        loader = self._loader
        try:
            indices = next(self._batches)
        except StopIteration:
            self._done = True
            if self._progress is not None:
                self._progress.finished = True
            raise
        position = self._position
        self._position += len(indices) if loader.auto_collation else 1
        if self._progress is not None:  # a batch that raises counts as handed out, as in workers
            self._progress.count += 1
        with _own_rng_state():  # the training loop's RNG streams are not disturbed
            samples = load_batch(loader.dataset, indices, loader.auto_collation, self._base_seed,
                                 position)
        if loader.auto_collation:
            try:
                batch = loader.collate_fn(samples)
            except (ValueError, TypeError, RuntimeError) as exc:  # name the samples, as workers do
                named = _naming_indices(exc, indices)
                if named is None:
                    raise
                raise named from exc
        else:
            batch = loader.collate_fn(samples)
        if loader.pin_memory:
            batch = pin(batch, loader._pin_device)
        self._meter.record(start, perf_counter(), len(indices) if loader.auto_collation else 1)
        return batch
