"""One epoch over a ProducerPool: publish tasks, reorder results, watch workers, hand out batches.

``PullEpoch`` (map-style datasets) puts index batches on the pool's shared
board a little ahead of need; workers take them when idle and start one only
while ``seq < consumed + budget``, so ``next()`` only pops a rebuilt batch and
bumps a shared counter -- no pipe write, no wake-up of another process. With
persistent workers, the next epoch's tasks are published as soon as this
epoch's sampler runs dry, so its first batches are ready when ``iter()`` comes.

``PushEpoch`` (iterable datasets) sends each worker its own "next batch"
tasks, round-robin, as torch does, since each worker iterates its own copy.

See NOTE [ fmq shutdown order ] in loader.py for who closes what.

Longer than the ~400-line guide: PullEpoch and PushEpoch are two halves of one
protocol with the pool and share _Epoch's receiving, failure and end-of-epoch code.
"""

from __future__ import annotations

import atexit
import itertools
import queue as _queue
import sys
import threading
import time
import warnings
import weakref
from time import perf_counter
from typing import TYPE_CHECKING, Any, Callable, Protocol

import numpy.random  # noqa: F401 -- loaded now, not lazily in the middle of an epoch

from ..errors import QueueClosed, QueueTimeout, WorkerError
from ..transport.stealer import WatchedFdReady
from ..workers import datapipes
from ..workers.collate import PartsJoin, concat_batches, default_collate, own_rows
from ..workers.stats import batch_size_of
from ..workers.worker import EndOfData, WorkerFailure, describe_failure
from .pinning import pin

if TYPE_CHECKING:
    from ..workers.pool import ProducerPool
    from ..workers.stats import Meter

__all__ = ["EpochOwner", "PullEpoch", "PushEpoch", "warn_if_past_reported_length"]


class EpochOwner(Protocol):
    """What an epoch reads of, and calls back on, the loader that owns it (an FMQLoader).

    Spelled out here so that this module does not import loader.py, which imports it.
    The index sampler is passed to ``PullEpoch`` itself: it is bound per epoch.
    """

    dataset: Any
    auto_collation: bool
    collate_fn: Callable
    generator: Any
    in_order: bool
    timeout: float
    pin_memory: bool
    _pin_device: Any
    _meter: "Meter"
    _epoch: int
    _epoch_set: bool
    _reported_len: int | None
    _shared_seed: int | None
    _shared_seed_group: Any

    def __len__(self) -> int: ...

    def _end_epoch(self, it: "_Epoch", clean: bool) -> None: ...

    def _shutdown_pool(self, pool: "ProducerPool") -> None: ...

    def _prefetch_next_epoch(self, epoch: "PullEpoch") -> "PullEpoch | None": ...

    def note_prefetch_draws(self) -> None: ...

    def _prefetch_failed(self, error: Exception) -> None: ...

_POLL_S = 0.1  # how often a waiting next() checks that workers are alive
# How often a waiting next() writes more of the staged tasks (NOTE [ a task larger than the pipe ]).
_FLUSH_POLL_S = 0.001
_SKIP = object()


_EXIT = {"registered": False, "exiting": False}


def watch_for_exit() -> None:
    """Have ``_exiting()`` say True once the interpreter's exit hooks start.

    Called where a loader makes its ``weakref.finalize`` (which registers that
    module's exit hook first, if it was not yet): atexit runs hooks last-in first-out,
    so this one runs before the finalizers and multiprocessing's hook, which close
    loaders."""
    if not _EXIT["registered"]:
        _EXIT["registered"] = True
        atexit.register(_EXIT.__setitem__, "exiting", True)


def _exiting() -> bool:
    return _EXIT["exiting"] or sys.is_finalizing()


def warn_if_past_reported_length(dataset, reported: int | None, yielded: int, num_workers: int,
                                 stacklevel: int) -> None:
    """As torch's DataLoader: an iterable dataset's epoch yields more than the ``len(dataset)``
    that ``len(loader)`` reported (compared with the items yielded, as torch compares them).

    With workers, the usual cause is a dataset that does not shard itself per worker,
    so every worker yields all of it.
    """
    if reported is None or yielded <= reported:
        return
    # torch's wording ("... samples have been fetched. For multiprocessing data-loading, this
    # could be caused by ...") kept, so that code and searches matching it still work
    message = (f"Length of IterableDataset {dataset!r} was reported to be {reported} (when "
               f"accessing len(dataloader)), but {yielded} samples have been fetched. ")
    if num_workers > 0:
        message += ("For multiprocessing data-loading, this could be caused by not properly "
                    f"configuring the IterableDataset replica at each worker: each of the "
                    f"{num_workers} workers iterates its own copy of the dataset: "
                    "have __iter__ yield only its share, by fmq_loader.get_worker_info() (or "
                    "torch.utils.data.get_worker_info()): its id and num_workers.")
    warnings.warn(message, UserWarning, stacklevel=stacklevel + 1)


def _dataset_epoch(loader: EpochOwner) -> int | None:
    """``loader.set_epoch()``'s value when the dataset has ``set_epoch``: workers forward it."""
    if loader._epoch_set and callable(getattr(loader.dataset, "set_epoch", None)):
        return loader._epoch
    return None


class _Epoch:
    """What both kinds of epoch share: receiving, failures, timeouts, the end."""

    def __init__(self, loader: EpochOwner, pool: "ProducerPool", current: bool = True) -> None:
        # A prefetched epoch is held by its loader, so it refers back weakly (no cycle
        # that would keep workers alive until the cyclic GC); adopt() makes it strong.
        self._loader = loader if current else weakref.proxy(loader)
        self._pool = pool
        self._get = pool.results.get
        self._task_failed = False  # the last error was one batch's: the epoch goes on
        self._n = pool.num_workers
        self._in_order = loader.in_order
        self._timeout = loader.timeout
        self._pin = loader.pin_memory
        self._pin_device = loader._pin_device
        self._meter = loader._meter
        self._samples = 0  # samples in the batch being handed out (set by _next_batch)
        self._done = False

    def __iter__(self):
        return self

    def __len__(self) -> int:
        return len(self._loader)

    @property
    def _workers(self) -> list:
        """The worker processes, under the private name torch's iterator gives them, which
        some code and tests read (``pool.WorkerProcess``: they answer after close() too)."""
        return self._pool.handles()

    def _shutdown_workers(self) -> None:
        """Stop this iterator's workers now, under the private name torch's iterator gives
        it; the loader stays usable."""
        self._done = True
        self._loader._shutdown_pool(self._pool)

    def __next__(self):
        if self._done:
            raise StopIteration
        # One next() at a time per pool: two threads iterating one loader would corrupt its
        # bookkeeping (internal errors followed). A clear error instead; ~0.1 µs.
        in_next = self._pool.in_next
        if not in_next.acquire(False):
            raise RuntimeError(
                "next() was called on this loader's iterator while another thread was inside "
                "next() on the same workers; iterate one FMQLoader from one thread at a time, "
                "or give each thread its own loader")
        try:
            return self._next_locked()
        finally:
            in_next.release()

    def _next_locked(self):
        start = perf_counter()
        try:
            batch = self._next_batch()
        except StopIteration:
            self._finish()
            raise
        except BaseException:
            if self._task_failed:  # as torch: a batch's exception does not end the epoch
                self._task_failed = False
            else:
                self._finish(error=True)
            if _exiting() and threading.current_thread() is not threading.main_thread():
                # The interpreter is exiting and closed the loader under a daemon thread
                # that waited in next() (non-daemon threads were joined before). An error
                # would print its traceback; the thread is dropped at exit anyway.
                threading.Event().wait()
            if sys.exc_info()[0] is QueueClosed and self._pool.closed:
                raise QueueClosed(
                    "this iterator's FMQLoader was closed (close(), the end of its `with` block, "
                    "or an error that stopped its workers) while the iterator was in use; call "
                    "iter(loader) on an open loader for more batches") from None
            raise
        if self._pin:
            batch = pin(batch, self._pin_device)
        self._meter.record(start, perf_counter(), self._samples)
        return batch

    def _raise(self, failure: WorkerFailure, task: bool = True):
        """Re-raise a worker's exception here; ``task``: it was one batch's, not the worker's."""
        self._task_failed = task
        message = describe_failure(failure)
        try:
            exc = failure.exc_type(message)
        except Exception:
            exc = WorkerError(message, worker_id=failure.worker_id, pid=failure.pid)
        raise exc

    def _receive(self):
        """The next ``(seq, worker_id, payload)``; raises on a dead worker or the timeout.

        The stealer also watches the workers' sentinels: a worker's exit arrives here as
        ``WatchedFdReady`` even while the others keep delivering, so a worker killed by a
        signal is reported at once, at no cost to a ``next()`` whose batch is ready.
        """
        pool = self._pool
        if self._timeout <= 0 and not pool.has_staged():
            exited = None
            try:  # the common case: ready now, or within one wait (no exception raised)
                return self._get(True, _POLL_S)
            except _queue.Empty:
                pass
            except WatchedFdReady as ready:
                exited = ready.fd
            if exited is not None:  # (outside the except: the error does not chain the internal one)
                self._pool.check_alive(signals_only=True, exiting=exited)  # by itself: below
        deadline = time.monotonic() + self._timeout if self._timeout > 0 else None
        flush_wait = _FLUSH_POLL_S
        while True:
            if self._done:  # detached by a newer iter() in another thread
                raise StopIteration
            wait = _POLL_S
            if pool.has_staged():
                # NOTE [ a task larger than the pipe ]: a task of more bytes than the
                # board's pipe holds (batch_size 25000 pickles to ~75 KB) is written in
                # parts; the worker reading it blocks until the rest comes, while this
                # process waits for a batch: next() hung for good. So a waiting next()
                # writes more as workers drain the pipe, polling from 1 ms (a write
                # that made progress) backing off to _POLL_S (none: workers held back
                # by the prefetch bound, NOTE [ the board never blocks ] in pool.py).
                if pool.flush():
                    flush_wait = _FLUSH_POLL_S
                if pool.has_staged():
                    wait = flush_wait
                    flush_wait = min(2 * flush_wait, _POLL_S)
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
            exited = None
            try:
                return pool.get(max(0.0, wait))
            except _queue.Empty:
                pass
            except WatchedFdReady as ready:
                exited = ready.fd
            if exited is not None:
                # A worker exited. Killed by a signal: raise now. Exited by itself (a
                # worker_init_fn failure is sent before that): its message comes first.
                pool.check_alive(signals_only=True, exiting=exited)
                continue
            pool.check_alive()
            if deadline is not None and time.monotonic() >= deadline:
                alive = sum(p.exitcode is None for p in pool.workers)
                raise QueueTimeout(
                    f"DataLoader timed out after {self._timeout} seconds: no batch arrived "
                    f"(timeout); {alive}/{self._n} workers alive. A worker may be stuck in the "
                    "dataset; see `py-spy dump --pid <worker pid>`, or raise timeout")

    def detach(self) -> None:
        """A new epoch of the same persistent workers started: this one yields no more."""
        self._done = True

    def _finish(self, error: bool = False) -> None:
        if self._done:
            return
        self._done = True
        self._loader._end_epoch(self, clean=not error)


class PullEpoch(_Epoch):
    """A map-style epoch: tasks on the shared board, results reordered by sequence number.

    The epoch's first batch is split into one task per worker when the default
    collate is in use, so the first ``next()`` does not wait for one worker to
    decode a whole batch alone; the parts are joined here (one copy, first
    batch only) into exactly the batch an unsplit task would give.
    """

    def __init__(self, loader: EpochOwner, pool: "ProducerPool", base_seed: int,
                 index_sampler, current: bool = True, start: int = 0) -> None:
        super().__init__(loader, pool, current)
        self._current = current  # only the current epoch may start the one after it
        self._tasks = iter(index_sampler)  # the epoch's batches of indices (or indices)
        self.base_seed = base_seed
        self._dataset_epoch = _dataset_epoch(loader)
        # Place in the epoch of the next task's first sample: it seeds each sample.
        self._position = 0
        for indices in itertools.islice(self._tasks, start):  # resume: skip what was seen
            self._position += len(indices) if loader.auto_collation else 1
        self._first = pool.next_seq
        # A prefetched epoch's first batch is made ahead of need: splitting it would
        # only add the join's copy to the main process.
        self._split_first = (current and self._n > 1 and loader.auto_collation
                             and loader.collate_fn is default_collate)
        self._spans: dict[int, int] = {}  # first seq -> number of parts, per batch not handed out
        self._join: tuple[int, PartsJoin] | None = None  # the split batch's first seq, its join
        self._sizes: dict[int, int] = {}  # first seq -> samples in the batch
        self._auto_collation = loader.auto_collation
        self._published = 0
        self._yielded = 0
        self._exhausted = False
        self.successor: PullEpoch | None = None
        self._successor_failed = False  # NOTE [ a failing next epoch ]
        # NOTE [ a core for the first join ]: the split first batch is joined here, in
        # the main process (collate.PartsJoin: each part is copied in as it arrives).
        # With the usual bound, every worker has started a later batch by then, so the
        # join's copy waits for a core (5-14 ms measured against 2 ms alone). Until it
        # is handed out, workers may start only num_workers - 1 tasks beyond its parts:
        # the last worker to finish a part waits, and its core is the join's. The bound
        # comes back at the hand-out (or the epoch's end). Holding every worker back
        # (bound num_workers) gave the first batch 3.5 ms sooner but the fifth 13 ms
        # later (24 alternating runs): the workers idle, so we do not.
        # NOTE [ the join in part 0's slab ]: the split batch's part 0 is built in a slab
        # with rows for the whole batch (its task has ``room``; assemble.py), and its
        # message says how many rows are its own. The join adopts that slab as the
        # batch and copies the other parts into it: no 9.6 MB allocation, no page
        # faults and no copy of part 0 in the main process, which took 4-5 ms after
        # the last part when both parts came together (2026-12-03 timeline). Parts
        # that come before part 0 wait for it. Part 0 built the usual way (another
        # collate, odd samples, no free slab) is joined as before.
        self._held = self._split_first and pool.budget > 2 * self._n - 1
        if self._held:
            pool.set_bound(2 * self._n - 1)
        self.top_up()

    def top_up(self, spare: int = 0) -> None:
        """Refill the board in chunks: once at most ``spare`` tasks lie beyond the
        prefetch bound, publish up to ``spare + 2 * num_workers`` beyond it, in one
        ``write`` (so a refill is at least ``2 * num_workers`` tasks).

        NOTE [ refill while waiting ]: a refill iterates the sampler, pickles the
        tasks and writes them: ~15 µs for four tasks with warm caches, 70-360 µs
        right after a training step (measured inside ``next()``), and 0.4-2 ms when
        the sampler runs dry and the next epoch is set up. ``next()`` does it before
        it blocks, where it delays nothing, as soon as no more than ``budget`` tasks
        lie beyond the prefetch bound (``spare=budget``): so the ``budget`` batches
        prefetched during a long training step are then handed out without a refill
        (one inside a ready ``next()`` had tripled its time). With a batch ready it
        refills only when no spare task is left (``spare=0``), so a training loop that
        never waits still keeps its workers fed.
        """
        pool = self._pool
        if pool.next_seq > pool.consumed + pool.budget + spare:
            if pool.has_staged():  # NOTE [ the board never blocks ]
                pool.flush()
            return
        try:
            self._publish_until(pool.consumed + pool.budget + spare + 2 * self._n)
        finally:
            pool.flush()

    def _publish_until(self, limit: int) -> None:
        pool = self._pool
        while pool.next_seq < limit:
            if self._exhausted:
                if not self._current or self._successor_failed:
                    return
                try:
                    if self.successor is None:
                        self.successor = self._loader._prefetch_next_epoch(self)
                    if self.successor is not None:
                        self.successor._publish_until(limit)
                        self._loader.note_prefetch_draws()  # its sampler may have drawn more
                except Exception as exc:
                    # NOTE [ a failing next epoch ]: the next epoch's sampler (or its set-up)
                    # raised while it was prefetched. It belongs to that epoch: this one
                    # hands out all its batches, and the next iter() raises it, as torch's
                    # does. No more prefetching; iter() drops the tasks it published.
                    self.successor = None
                    self._successor_failed = True
                    self._loader._prefetch_failed(exc)
                return
            try:
                indices = next(self._tasks)
            except StopIteration:
                self._exhausted = True
                continue
            position = self._position
            if self._published == 0 and self._split_first and len(indices) >= self._n:
                indices = list(indices)
                cuts = [len(indices) * k // self._n for k in range(self._n + 1)]
                first = None
                for part in range(self._n):  # part 0 with room for the batch: NOTE below
                    seq = pool.publish(self.base_seed, position + cuts[part],
                                       indices[cuts[part]:cuts[part + 1]], self._dataset_epoch,
                                       room=0 if part else len(indices))
                    first = seq if first is None else first
                self._spans[first] = self._n
                self._sizes[first] = len(indices)
                self._join = first, PartsJoin([cuts[k + 1] - cuts[k] for k in range(self._n)],
                                              [indices[cuts[k]:cuts[k + 1]] for k in range(self._n)],
                                              room_in=0)
            else:
                first = pool.publish(self.base_seed, position, indices, self._dataset_epoch)
                self._spans[first] = 1
                self._sizes[first] = len(indices) if self._auto_collation else 1
            self._position += self._sizes[first]
            self._published += 1

    def adopt(self, loader: EpochOwner) -> None:
        """This prefetched epoch becomes the current one (``iter()`` was called)."""
        self._loader = loader
        self._current = True
        self.top_up()

    def detach(self) -> None:
        super().detach()
        self._release_hold()
        self.successor = None

    def _finish(self, error: bool = False) -> None:
        self._release_hold()
        super()._finish(error)

    def _release_hold(self) -> None:
        """The workers' usual prefetch bound again (NOTE [ a core for the first join ])."""
        if self._held:
            self._held = False
            self._pool.set_bound()

    def _complete(self, first: int) -> bool:
        ready, nparts = self._pool.ready, self._spans[first]
        if nparts == 1:
            return first in ready
        return all(seq in ready for seq in range(first, first + nparts))

    def _next_batch(self):
        while True:
            if self._done:  # detached by a newer iter() (another thread's) while waiting here
                raise StopIteration
            if self._yielded == self._published:
                if self._exhausted:
                    raise StopIteration
                self.top_up()  # the window was full when the sampler last ran
                if self._yielded == self._published and not self._exhausted:
                    raise RuntimeError("fmq_loader: no task could be published although none "
                                       "is in flight; this is a bug, please report it")
                continue
            if self._in_order:
                first = next(iter(self._spans))
                if first in self._pool.ready and (self._spans[first] == 1 or self._complete(first)):
                    return self._hand_out(first)
            else:  # any complete batch of ours; the successor's results wait in the same dict
                for first in self._spans:
                    if self._complete(first):
                        return self._hand_out(first)
            if not self._pool.results.buffered():  # next() will block: refill now
                self.top_up(spare=self._pool.budget)  # NOTE [ refill while waiting ]
            message = self._receive()
            seq, payload = message[0], message[2]
            if seq < 0:  # a failure outside any task (worker_init_fn): the worker is gone
                self._raise(payload, task=False)
            if seq >= self._first:  # else: a task of an abandoned epoch
                whole = None
                if len(message) > 3:  # NOTE [ the join in part 0's slab ]: rows for the batch
                    whole, payload = payload, own_rows(payload, message[3])
                self._pool.ready[seq] = payload
                if self._join is not None and 0 <= seq - self._join[0] < self._n:
                    self._join[1].add(seq - self._join[0], payload, whole)  # copied in now

    def _hand_out(self, first: int):
        nparts = self._spans.pop(first)
        self._samples = self._sizes.pop(first)
        ready = self._pool.ready
        self._yielded += 1
        pool = self._pool
        if nparts == 1:
            pool.mark_consumed(1)
            if self._held:  # a first batch too small to split
                self._release_hold()
            if pool.next_seq <= pool.consumed + pool.budget:  # top_up()'s own test, without the call
                self.top_up()
            batch = ready.pop(first)
            if batch.__class__ is WorkerFailure:
                self._raise(batch)
            return batch
        parts = [ready.pop(seq) for seq in range(first, first + nparts)]
        join = self._join[1] if self._join is not None and self._join[0] == first else None
        if join is not None:
            self._join = None  # not kept (with its copy of the batch) past this hand-out
        try:
            for part in parts:
                if part.__class__ is WorkerFailure:
                    self._raise(part)
            try:
                return concat_batches(parts) if join is None else join.result(parts)
            except Exception:  # e.g. samples of different shapes: one batch's error, the epoch
                self._task_failed = True  # goes on, as when a worker's collate raises it
                raise
        finally:  # after the join: workers held back for it may go on now
            pool.mark_consumed(nparts)
            self._release_hold()
            self.top_up()


class PushEpoch(_Epoch):
    """An iterable-dataset epoch: per-worker tasks, round-robin, until every worker ends."""

    def __init__(self, loader: EpochOwner, pool: "ProducerPool", base_seed: int) -> None:
        super().__init__(loader, pool)
        self.base_seed = base_seed
        fresh = not pool.workers
        pool.start(base_seed)  # its tasks go to each worker's own pipe, made when the worker starts
        if fresh:
            # As torch: a new multi-process iterator draws one more shared seed (in its
            # _reset), which no worker uses; an IterDataPipe's later epochs then draw as
            # torch's do (datapipes.py).
            datapipes.draw_shared_seed(loader.dataset, loader.generator,
                                       loader._shared_seed_group or None)
        self._budget = pool.budget
        self._active = [True] * self._n
        self._outstanding: dict[int, int] = {}
        self._ready: dict[int, Any] = {}
        self._auto_collation = loader.auto_collation
        self._worker_cycle = itertools.cycle(range(self._n))
        self._reported_len = loader._reported_len  # as torch: the value when this epoch began
        self._handed_out = 0
        pool.reseed(base_seed, _dataset_epoch(loader), loader._shared_seed)
        self._first = self._next_task = self._next_yield = pool.next_seq
        for _ in range(self._budget):
            self._dispatch()

    def _dispatch(self) -> None:
        if len(self._outstanding) + len(self._ready) >= self._budget or not any(self._active):
            return
        for _ in range(self._n):
            wid = next(self._worker_cycle)
            if self._active[wid]:
                break
        task_id = self._next_task
        self._next_task += 1
        self._pool.next_seq = self._next_task
        self._outstanding[task_id] = wid
        self._pool.submit(wid, task_id, None)

    def _next_batch(self):
        while True:
            if self._done:  # detached by a newer iter() (another thread's) while waiting here
                raise StopIteration
            if self._in_order:
                while self._next_yield in self._ready:
                    payload = self._ready.pop(self._next_yield)
                    self._next_yield += 1
                    result = self._accept(payload)
                    if result is not _SKIP:
                        return result
            elif self._ready:
                result = self._accept(self._ready.pop(next(iter(self._ready))))
                if result is not _SKIP:
                    return result
                continue
            if not self._outstanding and not self._ready:
                self._dispatch()
                if not self._outstanding:
                    raise StopIteration
            task_id, _, payload = self._receive()
            if task_id < 0:
                self._raise(payload, task=False)
            if task_id < self._first:
                continue  # a batch of an epoch that was abandoned early
            self._outstanding.pop(task_id, None)
            self._ready[task_id] = payload

    def _accept(self, payload):
        if isinstance(payload, WorkerFailure):
            self._raise(payload)
        if isinstance(payload, EndOfData):
            self._active[payload.worker_id] = False
            self._dispatch()
            return _SKIP
        self._dispatch()
        self._samples = batch_size_of(payload) if self._auto_collation else 1
        self._handed_out += 1
        # stacklevel: here, _next_batch, _next_locked, __next__, the caller of next()
        warn_if_past_reported_length(self._loader.dataset, self._reported_len, self._handed_out,
                                     self._n, stacklevel=5)
        return payload
