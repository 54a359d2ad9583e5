"""FMQLoader: a torch.utils.data.DataLoader-compatible iterable; owns pool + queue + stealer.

Data flow::

    sampler (main) -> task pipes -> [worker i: dataset[idx] + transform + collate]
        -> fmq_loader.Queue: batch laid into a reused shared-memory slab, descriptor on a pipe
        -> stealer thread (main process): rebuilds zero-copy tensors, buffers them
        -> reorder by task id (in_order) -> __next__ -> your training loop

At most ``prefetch_factor * num_workers`` tasks are in flight; a worker starts
the next one as soon as it has sent the previous, and the stealer has each batch
rebuilt before ``next()`` asks for it.

NOTE [ fmq shutdown order ]
    ``FMQLoader.close()`` (also reached from ``with``, the end of a non-persistent
    epoch, an iterator dropped early, and the ``weakref.finalize`` safety net at
    garbage collection or interpreter exit):
    (1) mark closed; (2) stop the stealer thread -- the reader goes first so it
    never reads a half-written slab; (3) send every worker ``Stop``; (4) join
    them with a timeout, ``terminate()`` then ``kill()`` stragglers; (5) close the
    queue; (6) drop the slab descriptors -- slabs are anonymous memfds, so the
    kernel frees them once the last view is gone and nothing can be left in
    /dev/shm; (7) detach the finalizer. Workers also exit on their own the
    moment the main process dies (they wait on the parent's sentinel).
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing as mp
import queue as _queue
import time
import warnings
import weakref
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch.utils.data import (BatchSampler, IterableDataset, RandomSampler, Sampler,
                              SequentialSampler)

from .collate import default_collate, default_convert
from .errors import QueueTimeout, WorkerError
from .pool import ProducerPool
from .worker import EndOfData, WorkerFailure, describe_failure

__all__ = ["FMQLoader"]

logger = logging.getLogger(__name__)

_POLL_S = 0.05  # how often a waiting next() checks that workers are alive


class _InfiniteIndices(Sampler):
    """Stands in for the sampler of an iterable dataset (yields None forever)."""

    def __init__(self) -> None:
        pass

    def __iter__(self):
        while True:
            yield None


def _is_iterable_dataset(dataset) -> bool:
    if isinstance(dataset, IterableDataset):
        return True
    return not hasattr(dataset, "__getitem__") and hasattr(dataset, "__iter__")


class FMQLoader:
    """Drop-in for ``torch.utils.data.DataLoader``; batches arrive through shared memory.

    Same keywords, defaults and validation as torch's DataLoader. Extra,
    fmq-specific keywords:

    Args:
        extra_slabs: shared-memory slabs beyond ``prefetch_factor * num_workers``
            for batches your loop still holds (default 4). A batch you keep stays
            valid; if you keep more, later batches travel through a pipe (slower).
        seed: if set, the per-epoch worker seeds come from ``seed`` and the epoch
            number instead of from ``generator`` / torch's global RNG.
    """

    def __init__(self, dataset, batch_size: int | None = 1, shuffle: bool | None = None,
                 sampler: Sampler | Iterable | None = None,
                 batch_sampler: Sampler | Iterable | None = None, num_workers: int = 0,
                 collate_fn: Callable | None = None, pin_memory: bool = False,
                 drop_last: bool = False, timeout: float = 0,
                 worker_init_fn: Callable | None = None, multiprocessing_context=None,
                 generator: torch.Generator | None = None, *, prefetch_factor: int | None = None,
                 persistent_workers: bool = False, pin_memory_device: str = "",
                 in_order: bool = True, extra_slabs: int = 4, seed: int | None = None) -> None:
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError("num_workers option should be non-negative; use num_workers=0 to "
                             f"disable multiprocessing, got {num_workers!r}")
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
        if persistent_workers and num_workers == 0:
            raise ValueError("persistent_workers option needs num_workers > 0")
        iterable = _is_iterable_dataset(dataset)
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
        if sampler is None:
            if iterable:
                sampler = _InfiniteIndices()
            elif shuffle:
                sampler = RandomSampler(dataset, generator=generator)
            else:
                sampler = SequentialSampler(dataset)
        if batch_size is not None and batch_sampler is None:
            batch_sampler = BatchSampler(sampler, batch_size, drop_last)
        self.dataset = dataset
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.sampler = sampler
        self.batch_sampler = batch_sampler
        self.num_workers = num_workers
        self.prefetch_factor = prefetch_factor
        self.auto_collation = batch_sampler is not None
        if collate_fn is None:
            collate_fn = default_collate if self.auto_collation else default_convert
        self.collate_fn = collate_fn
        self.timeout = timeout
        self.worker_init_fn = worker_init_fn
        self.generator = generator
        self.persistent_workers = persistent_workers
        self.in_order = in_order
        self.extra_slabs = extra_slabs
        self.seed = seed
        self.multiprocessing_context = self._resolve_context(multiprocessing_context)
        self.pin_memory = pin_memory
        self.pin_memory_device = pin_memory_device
        if pin_memory and not torch.cuda.is_available():
            warnings.warn("'pin_memory' argument is set as true but no accelerator is found, "
                          "then device pinned memory won't be used.", stacklevel=2)
            self.pin_memory = False
        self._iterable = iterable
        self._epoch = 0
        self._iterations = 0
        self._first_base_seed: int | None = None
        self._pool: ProducerPool | None = None
        self._current: weakref.ref | None = None
        self._closed = False
        # The safety net reaches the pool through this holder, never through self.
        self._holder: list = [None]
        self._finalizer = weakref.finalize(self, _close_pool_holder, self._holder)

    def _resolve_context(self, ctx):
        if ctx is None:
            return mp.get_context() if self.num_workers > 0 else None
        if self.num_workers == 0:
            raise ValueError("multiprocessing_context can only be used with multi-process "
                             f"loading (num_workers > 0), but got num_workers={self.num_workers}")
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

    # -- torch-compatible surface ------------------------------------------------
    @property
    def _index_sampler(self):
        return self.batch_sampler if self.auto_collation else self.sampler

    def __len__(self) -> int:
        if self._iterable:
            length = len(self.dataset)  # TypeError for a dataset without __len__, as in torch
            if self.batch_size is not None:
                length = length // self.batch_size if self.drop_last else -(-length // self.batch_size)
            return length
        return len(self._index_sampler)

    def set_epoch(self, epoch: int) -> None:
        """Forward ``epoch`` to the sampler (and batch sampler / dataset) that has ``set_epoch``."""
        self._epoch = epoch
        for obj in (self.sampler, self.batch_sampler, getattr(self.batch_sampler, "sampler", None),
                    self.dataset):
            if obj is not None and callable(getattr(obj, "set_epoch", None)):
                obj.set_epoch(epoch)

    def __iter__(self):
        if self._closed:
            raise RuntimeError("this FMQLoader is closed; create a new one to iterate again")
        if self.seed is not None:
            state = np.random.SeedSequence([self.seed, self._epoch, self._iterations])
            base_seed = int(state.generate_state(1, np.uint64)[0] >> np.uint64(1))
        elif self.persistent_workers and self._first_base_seed is not None:
            # As torch: a persistent iterator draws from the generator only once, so a
            # shuffling sampler sees the same generator state; later epochs derive theirs.
            state = np.random.SeedSequence([self._first_base_seed, self._iterations])
            base_seed = int(state.generate_state(1, np.uint64)[0] >> np.uint64(1))
        else:  # as torch: one draw from the generator (or the global RNG) per iterator
            base_seed = int(torch.empty((), dtype=torch.int64).random_(generator=self.generator).item())
            self._first_base_seed = base_seed
        self._iterations += 1
        if self.num_workers == 0:
            return _single_process_iter(self, base_seed)
        current = self._current() if self._current is not None else None
        if current is not None:
            current.abandon()
        if self._pool is None:
            self._start_pool()
        it = _EpochIterator(self, self._pool, base_seed)
        self._current = weakref.ref(it)
        # An iterator dropped mid-epoch (early break, del) ends its epoch's workers.
        if not self.persistent_workers:
            weakref.finalize(it, _stop_if_current, weakref.ref(self), self._pool)
        return it

    def _start_pool(self) -> None:
        self._pool = ProducerPool(
            self.dataset, self.num_workers, self.multiprocessing_context,
            auto_collation=self.auto_collation, collate_fn=self.collate_fn,
            drop_last=self.drop_last, batch_size=self.batch_size,
            worker_init_fn=self.worker_init_fn, iterable=self._iterable,
            max_outstanding=self.prefetch_factor * self.num_workers, extra_slabs=self.extra_slabs)
        self._holder[0] = self._pool

    def _end_epoch(self, it: "_EpochIterator") -> None:
        if self._current is not None and self._current() is it:
            self._current = None
        if not self.persistent_workers:
            self._stop_pool()

    def _stop_pool(self) -> None:
        pool, self._pool = self._pool, None
        self._holder[0] = None
        if pool is not None:
            pool.close()

    def close(self) -> None:
        """Stop workers and release shared memory; idempotent. Batches you hold stay valid."""
        if self._closed:
            return
        self._closed = True
        self._current = None
        try:
            self._stop_pool()
        finally:
            self._finalizer.detach()

    def __enter__(self) -> "FMQLoader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<FMQLoader batch_size={self.batch_size} num_workers={self.num_workers} "
                f"prefetch_factor={self.prefetch_factor} persistent={self.persistent_workers}>")


def _stop_if_current(loader_ref: weakref.ref, pool: ProducerPool) -> None:
    loader = loader_ref()
    if loader is not None and loader._pool is pool:
        loader._stop_pool()
    elif loader is None:
        pool.close()


def _close_pool_holder(holder: list) -> None:
    pool = holder[0]
    holder[0] = None
    if pool is not None:
        pool.close()


def _pin(data, device: str):
    if isinstance(data, torch.Tensor):
        return data.pin_memory(device) if device else data.pin_memory()
    if isinstance(data, dict):
        return type(data)({k: _pin(v, device) for k, v in data.items()}) if type(data) is not dict \
            else {k: _pin(v, device) for k, v in data.items()}
    if isinstance(data, tuple) and hasattr(data, "_fields"):
        return type(data)(*(_pin(v, device) for v in data))
    if isinstance(data, (list, tuple)):
        return type(data)(_pin(v, device) for v in data)
    return data


def _single_process_iter(loader: FMQLoader, base_seed: int):
    """num_workers=0: load in this process, same semantics as the worker path."""
    dataset, collate = loader.dataset, loader.collate_fn
    if loader._iterable:
        it = iter(dataset)
        if loader.auto_collation:
            while True:
                items = list(itertools.islice(it, loader.batch_size))
                if not items or (loader.drop_last and len(items) < loader.batch_size):
                    return
                batch = collate(items)
                yield _pin(batch, loader.pin_memory_device) if loader.pin_memory else batch
        else:
            for item in it:
                batch = collate(item)
                yield _pin(batch, loader.pin_memory_device) if loader.pin_memory else batch
        return
    for indices in loader._index_sampler:
        if loader.auto_collation:
            batch = collate([dataset[i] for i in indices])
        else:
            batch = collate(dataset[indices])
        yield _pin(batch, loader.pin_memory_device) if loader.pin_memory else batch


class _EpochIterator:
    """One epoch over a ProducerPool: dispatch tasks, reorder results, watch workers."""

    def __init__(self, loader: FMQLoader, pool: ProducerPool, base_seed: int) -> None:
        self._loader = loader
        self._pool = pool
        self._n = pool.num_workers
        self._budget = loader.prefetch_factor * self._n
        self._in_order = loader.in_order
        self._timeout = loader.timeout
        self._pin = loader.pin_memory
        self._tasks = iter(loader._index_sampler)
        self._exhausted = False
        self._active = [True] * self._n  # iterable datasets: workers with data left
        self._outstanding: dict[int, int] = {}  # task id -> worker id
        self._ready: dict[int, Any] = {}
        self._next_task = 0
        self._next_yield = 0
        self._worker_cycle = itertools.cycle(range(self._n))
        self._done = False
        pool.reseed(base_seed)
        # Tasks of an earlier epoch still in flight: their ids are below ours.
        self._first_id = getattr(pool, "next_task_id", 0)
        self._next_task = self._next_yield = self._first_id
        for _ in range(self._budget):
            self._dispatch()

    def _dispatch(self) -> None:
        if self._exhausted or len(self._outstanding) + len(self._ready) >= self._budget:
            return
        if not any(self._active):
            self._exhausted = True
            return
        try:
            indices = next(self._tasks)
        except StopIteration:
            self._exhausted = True
            return
        for _ in range(self._n):
            wid = next(self._worker_cycle)
            if self._active[wid]:
                break
        task_id = self._next_task
        self._next_task += 1
        self._pool.next_task_id = self._next_task
        self._outstanding[task_id] = wid
        self._pool.submit(wid, task_id, indices)

    def __iter__(self):
        return self

    def __next__(self):
        if self._done:
            raise StopIteration
        try:
            batch = self._next_batch()
        except StopIteration:
            self._finish()
            raise
        except BaseException:
            self._finish(error=True)
            raise
        return _pin(batch, self._loader.pin_memory_device) if self._pin else batch

    def _next_batch(self):
        while True:
            if self._in_order:
                while self._next_yield in self._ready:
                    payload = self._ready.pop(self._next_yield)
                    self._next_yield += 1
                    result = self._accept(payload)
                    if result is not _SKIP:
                        return result
            elif self._ready:
                key = next(iter(self._ready))
                result = self._accept(self._ready.pop(key))
                if result is not _SKIP:
                    return result
                continue
            if not self._outstanding and not self._ready:
                self._dispatch()
                if not self._outstanding:
                    raise StopIteration
            task_id, wid, payload = self._receive()
            if task_id < self._first_id and task_id >= 0:
                continue  # a batch of an epoch that was abandoned early
            if task_id < 0:  # a failure outside any task (worker_init_fn)
                self._raise(payload)
            self._outstanding.pop(task_id, None)
            self._ready[task_id] = payload
            self._dispatch()

    def _accept(self, payload):
        if isinstance(payload, WorkerFailure):
            self._raise(payload)
        if isinstance(payload, EndOfData):
            self._active[payload.worker_id] = False
            self._dispatch()
            return _SKIP
        self._dispatch()
        return payload

    def _raise(self, failure: WorkerFailure):
        message = describe_failure(failure)
        try:
            exc = failure.exc_type(message)
        except Exception:
            exc = WorkerError(message, worker_id=failure.worker_id, pid=failure.pid)
        raise exc

    def _receive(self):
        deadline = time.monotonic() + self._timeout if self._timeout > 0 else None
        while True:
            wait = _POLL_S if deadline is None else min(_POLL_S, deadline - time.monotonic())
            try:
                return self._pool.get(max(0.0, wait))
            except _queue.Empty:
                pass
            self._pool.check_alive()
            if deadline is not None and time.monotonic() >= deadline:
                alive = sum(p.exitcode is None for p in self._pool.workers)
                raise QueueTimeout(
                    f"DataLoader timed out after {self._timeout} seconds: no batch arrived "
                    f"(timeout); {alive}/{self._n} workers alive. A worker may be stuck in the "
                    "dataset; see `py-spy dump --pid <worker pid>`, or raise timeout")

    def abandon(self) -> None:
        """A new epoch started before this one ended (early break)."""
        if not self._done:
            self._finish(error=not self._loader.persistent_workers)

    def _finish(self, error: bool = False) -> None:
        if self._done:
            return
        self._done = True
        self._ready.clear()
        if error and self._loader.persistent_workers:
            # a failure may leave a worker mid-task; restart the pool on the next epoch
            self._loader._stop_pool()
        self._loader._end_epoch(self)

    def __len__(self) -> int:
        return len(self._loader)


_SKIP = object()
