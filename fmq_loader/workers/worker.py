"""Code that runs only in a worker process: run_worker(spec) and the messages it exchanges.

A worker waits on two things at once: its task pipe from the main process and
``multiprocessing.parent_process().sentinel``, which becomes readable the moment
the parent dies -- so a worker of a SIGKILLed training script exits at once
instead of polling ``getppid()``. Results go to the pool's shared
``fmq_loader.Queue``. See NOTE [ fmq shutdown order ] in loader.py.

Longer than the ~400-line guide: all the code that runs in the worker process stays
in this one module, so the boundary between the processes is one file.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import pickle
import signal
import traceback
from multiprocessing import connection as mp_connection
from typing import Any, Callable

from time import perf_counter

import numpy as np

from . import datapipes
from .seeding import changed_since, rng_snapshot, sample_seed, sample_seeder, seed_worker
from .stats import BATCHES, BUSY, SAMPLES, SKIPPED, WORKER_FIELDS, batch_size_of

__all__ = ["WorkerSpec", "Task", "Reseed", "Stop", "EndOfData", "WorkerFailure",
           "WorkerInfo", "get_worker_info", "run_worker",
           "CONSUMED", "MIN_SEQ", "STOP", "BUDGET"]


@dataclasses.dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs, handed over once at start."""

    worker_id: int
    num_workers: int
    dataset: Any
    auto_collation: bool
    collate_fn: Callable | None
    drop_last: bool
    batch_size: int | None
    worker_init_fn: Callable | None
    tasks: Any  # this worker's own receiving Connection (Stop, Reseed, iterable tasks)
    results: Any  # fmq_loader.Queue
    iterable: bool
    board: Any = None  # the shared receiving Connection of map-style tasks
    board_lock: Any = None
    control: Any = None  # shared int64 words: CONSUMED, MIN_SEQ, STOP, BUDGET
    stats: Any = None  # shared float64 array, WORKER_FIELDS per worker (stats.py)
    base_seed: int = 0  # the first epoch's: the worker's seed is base_seed + worker_id
    world_size: int = 1  # torch.distributed's, read in the main process (DataPipe sharding)
    rank: int = 0
    # Called with ``results`` first thing: closes what a forked worker inherited of the
    # parent's other pools (pool.ProducerPool.forget_inherited; passed in, as this module
    # runs below the pool and must not import it).
    forget_inherited: Callable[[Any], None] | None = None


@dataclasses.dataclass(frozen=True)
class Task:
    """Fetch one batch: ``indices`` for map-style datasets, None for iterable ones."""

    task_id: int
    indices: Any


@dataclasses.dataclass(frozen=True)
class Reseed:
    """Start of an epoch: seed the RNGs and (iterable datasets) restart the iterator.

    ``epoch``: the value of ``loader.set_epoch()``, passed on to this worker's copy of
    the dataset (None: it was not called, or the dataset has no ``set_epoch``).
    """

    base_seed: int
    epoch: int | None = None
    shared_seed: int | None = None  # an IterDataPipe's, the same in every worker (datapipes.py)


@dataclasses.dataclass(frozen=True)
class Stop:
    """Exit the worker loop."""


@dataclasses.dataclass(frozen=True)
class EndOfData:
    """An iterable dataset's iterator in this worker is exhausted."""

    worker_id: int


@dataclasses.dataclass(frozen=True)
class WorkerFailure:
    """A picklable stand-in for an exception raised in a worker (type, message, traceback)."""

    worker_id: int
    pid: int
    exc_type: type
    message: str
    traceback_text: str
    where: str


class WorkerInfo:
    """What ``get_worker_info()`` returns inside a worker: id, num_workers, seed, dataset."""

    def __init__(self, id: int, num_workers: int, seed: int, dataset: Any) -> None:
        object.__setattr__(self, "id", id)
        object.__setattr__(self, "num_workers", num_workers)
        object.__setattr__(self, "seed", seed)
        object.__setattr__(self, "dataset", dataset)

    def __setattr__(self, name: str, value: Any) -> None:  # read-only, as torch's WorkerInfo
        raise RuntimeError(f"Cannot assign attributes to WorkerInfo objects (tried to set "
                           f"{name!r}); it describes this worker and is read-only")

    def __repr__(self) -> str:
        return f"WorkerInfo(id={self.id}, num_workers={self.num_workers}, seed={self.seed})"


_worker_info: WorkerInfo | None = None


def get_worker_info() -> WorkerInfo | None:
    """The current worker's ``WorkerInfo``; None in the main process."""
    return _worker_info


def _publish_worker_info(spec: WorkerSpec, seed: int) -> None:
    """Runs in the worker process. Make our and torch's get_worker_info() answer."""
    global _worker_info
    _worker_info = WorkerInfo(spec.worker_id, spec.num_workers, seed, spec.dataset)
    try:  # torch's own get_worker_info() reads this module global
        from torch.utils.data._utils import worker as torch_worker

        torch_worker._worker_info = torch_worker.WorkerInfo(
            id=spec.worker_id, num_workers=spec.num_workers, seed=seed, dataset=spec.dataset)
    except Exception:  # a torch without that private hook: only ours answers
        pass


def _keep_freed_memory() -> None:
    """Runs in the worker process. Ask glibc to reuse large freed blocks.

    Without it every batch-sized allocation is a fresh mmap whose pages fault in
    again (DESIGN.md: "Memory allocation inside decoders matters").
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 512 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def _failure(spec: WorkerSpec, exc: BaseException, where: str) -> WorkerFailure:
    return WorkerFailure(spec.worker_id, os.getpid(), type(exc), _text(lambda: str(exc), exc),
                         _text(lambda: "".join(traceback.format_exception(
                             type(exc), exc, exc.__traceback__)), exc), where)


def _text(make: Callable[[], str], exc: BaseException) -> str:
    """``make()``, or a stand-in when the exception's own ``__str__`` raises (which would
    otherwise end the worker with its traceback on stderr and the failure lost)."""
    try:
        return make()
    except Exception as inner:
        return (f"<{type(exc).__qualname__}: its __str__ raised {type(inner).__name__}: "
                f"{inner}>\n" + "".join(traceback.format_tb(exc.__traceback__)))


# Words of the pool's control block (shared int64s, written by the main process).
CONSUMED, MIN_SEQ, STOP, BUDGET = range(4)
# How often a worker held back by the prefetch bound looks again: from 1 ms, doubling to 16 ms.
_BOUND_POLL_MIN_S, _BOUND_POLL_MAX_S = 0.001, 0.016


class Stopping(BaseException):
    """Raised between two samples in a worker: the pool is closing, drop this batch.

    A BaseException, so the worker's ``except Exception`` (a dataset's error, sent on
    as a WorkerFailure) does not catch it.
    """


def stop_check(control) -> Callable[[Any, Any], None]:
    """An ``each`` for ``load_batch``: raise ``Stopping`` once the pool set its STOP word.

    So ``close()`` (an early break, an error, Ctrl-C) waits for one sample, not a
    whole batch: a batch of slow samples took the full 5 s grace before.
    """
    def check(_k=None, _sample=None) -> None:
        if control is not None and control[STOP]:
            raise Stopping
    return check


def load_batch(dataset, indices, auto_collation: bool, base_seed: int, position: int,
               reseed: Callable[[int], None] | None = None, each: Callable | None = None):
    """The samples of one task, each loaded right after seeding it from its epoch position.

    ``position`` is the first sample's place in the epoch. Returns the list of
    samples (auto-collation) or ``dataset[indices]`` (``batch_size=None``).
    ``each(k, sample)`` is called after sample ``k`` is loaded (auto-collation).
    Shared by the workers and the ``num_workers=0`` path (see seeding.py).
    ``reseed(seed)`` seeds the generators (``seeding.sample_seeder``; default: all).
    """
    if reseed is None:
        reseed = sample_seeder()
    if not auto_collation:
        reseed(sample_seed(base_seed, position))
        return dataset[indices]
    getitems = getattr(dataset, "__getitems__", None)
    if getitems:  # as torch (2.1 and later): the whole batch in one call, when the dataset has it
        reseed(sample_seed(base_seed, position))  # seeded once: it loads them all
        samples = getitems(indices)
        if each is not None:
            for k, sample in enumerate(samples):
                each(k, sample)
        return samples
    samples = []
    for k, i in enumerate(indices):
        reseed(sample_seed(base_seed, position + k))
        samples.append(dataset[i])
        if each is not None:
            each(k, samples[-1])
    return samples


def run_worker(spec: WorkerSpec) -> None:
    """Runs in the worker process. Serve tasks until Stop, end of the task pipe, or parent death.

    Map-style datasets: tasks come from the pool's shared *board* pipe, which
    every worker reads (under ``board_lock``), so an idle worker takes the next
    batch at once. A task may start only while ``seq < consumed + budget``
    (``consumed`` is how many batches the main process has handed out): that
    bounds prefetching without the main process waking anyone per batch.
    Iterable datasets: each worker gets its own tasks on its own pipe.
    """
    import torch

    from .assemble import SlabAssembler
    from .collate import default_collate

    # Ctrl-C reaches the whole process group; the main process owns the reaction. The
    # worker started with SIGINT blocked (pool._sigint_deferred): ignore it, which drops
    # one pending since, then unblock it for whatever the dataset starts.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    torch.set_num_threads(1)
    _keep_freed_memory()
    results = spec.results
    results.cancel_join_thread()  # never hang at exit on a consumer that stopped reading
    if spec.forget_inherited is not None:
        spec.forget_inherited(results)  # fork: other loaders' slabs and pipes
    parent = __import__("multiprocessing").parent_process()
    sentinel = [parent.sentinel] if parent is not None else []
    if parent is not None:
        _exit_with(parent.sentinel)
    watch = [spec.tasks] + ([spec.board] if spec.board is not None else []) + sentinel
    control = spec.control
    check_stop = stop_check(control)

    # As torch: seeded from base_seed + worker_id, DataPipes sharded, then worker_init_fn.
    _publish_worker_info(spec, seed_worker(spec.base_seed, spec.worker_id))
    user_owned = frozenset()  # NOTE [ a generator worker_init_fn seeds is its own ] in seeding.py
    if spec.worker_init_fn is not None or datapipes.is_datapipe(spec.dataset):
        try:
            datapipes.shard(spec.dataset, spec.num_workers, spec.worker_id, spec.world_size,
                            spec.rank)
            if spec.worker_init_fn is not None:
                before = rng_snapshot()
                spec.worker_init_fn(spec.worker_id)
                user_owned = changed_since(before)
        except Exception as exc:
            results.put((-1, spec.worker_id, _failure(spec, exc, "in worker_init_fn")))
            results.close()
            results.join_thread()  # deliver it before exiting: cancel_join_thread() is in force
            return
    # The default collate: batches are built in a slab as their samples come (assemble.py).
    assemble = spec.auto_collation and spec.collate_fn is default_collate
    iterator = None
    seed_seen = epoch_seen = epoch = None
    reseed = sample_seeder(user_owned)
    row = (None if spec.stats is None else
           np.frombuffer(spec.stats, np.float64)[spec.worker_id * WORKER_FIELDS:][:WORKER_FIELDS])
    while True:
        ready = mp_connection.wait(watch)
        if sentinel and sentinel[0] in ready:
            return  # the parent died: no new task (it may have come with the same wake-up)
        if spec.tasks in ready:
            try:
                msg = pickle.loads(spec.tasks.recv_bytes())
            except (EOFError, OSError):
                return
            if isinstance(msg, Stop):
                return
            if isinstance(msg, Reseed):
                _publish_worker_info(spec, seed_worker(msg.base_seed, spec.worker_id, user_owned))
                iterator = None
                try:
                    if msg.epoch is not None:
                        spec.dataset.set_epoch(msg.epoch)
                    datapipes.apply_seed(spec.dataset, msg.shared_seed)
                    iterator = iter(spec.dataset)
                except Exception as exc:
                    results.put((-1, spec.worker_id, _failure(spec, exc, "creating the dataset iterator")))
                continue
            task_id, indices, room = msg.task_id, msg.indices, 0
        elif spec.board is not None and spec.board in ready:
            with spec.board_lock:
                try:
                    if not spec.board.poll():
                        continue  # another worker took it
                    message = spec.board.recv_bytes()
                except (EOFError, OSError):
                    return  # the board was closed: the pool is gone
                task_id, base_seed, position, indices, epoch, room = pickle.loads(message)
            if task_id < control[MIN_SEQ]:
                continue  # the rest of an epoch the user left early
            pause = _BOUND_POLL_MIN_S
            while task_id >= control[CONSUMED] + control[BUDGET] and not control[STOP]:
                # Poll, backing off: the consumer is slower than the workers here, so a
                # few ms late costs nothing, and no wake-up lands on the training loop.
                if mp_connection.wait(sentinel + [spec.tasks], pause):
                    return  # parent died, or Stop arrived
                pause = min(2 * pause, _BOUND_POLL_MAX_S)
            if control[STOP]:
                return
            if task_id < control[MIN_SEQ]:
                continue
            if seed_seen != base_seed:
                seed_seen = base_seed
                _publish_worker_info(spec, base_seed + spec.worker_id)
        else:
            return  # the parent died
        began = perf_counter()
        assembler = into = None
        roomy = False
        try:
            if not spec.iterable and epoch is not None and epoch != epoch_seen:
                # loader.set_epoch(): this worker's copy of the dataset follows it (with
                # persistent workers, the copy in the main process is not the one used)
                epoch_seen = epoch
                spec.dataset.set_epoch(epoch)
            if spec.iterable:
                if assemble:
                    assembler = SlabAssembler(results, spec.batch_size)
                payload = _next_from_iterable(spec, iterator, assembler, check_stop)
                if assembler is not None and payload.__class__ is not EndOfData:
                    into = assembler.reservation()
            elif assemble:  # NOTE: see assemble.py; the same batch as default_collate's
                assembler = SlabAssembler(results, len(indices), room)
                add = assembler.add

                def each(k, sample):
                    add(k, sample)
                    check_stop()
                payload = assembler.finish(load_batch(spec.dataset, indices, True, base_seed,
                                                      position, reseed, each))
                roomy = assembler.roomy  # NOTE [ the join in part 0's slab ] in epoch.py
                into = assembler.reservation()
            else:
                payload = load_batch(spec.dataset, indices, spec.auto_collation, base_seed,
                                     position, reseed, check_stop)
                if spec.collate_fn is not None:
                    payload = spec.collate_fn(payload)
        except Stopping:
            if assembler is not None:
                assembler.cancel()
            return
        except Exception as exc:
            where = (f"fetching indices {_short(indices)}" if indices is not None
                     else "iterating the dataset")
            payload = _failure(spec, exc, where)
            roomy = False
        if assembler is not None:
            assembler.cancel()  # a failure before the batch was finished: give its slab back
            assembler = None
        try:
            # A batch built with room for the whole split batch says how many rows are its own.
            results.put((task_id, spec.worker_id, payload, len(indices)) if roomy
                        else (task_id, spec.worker_id, payload), into=into)
        except Exception as exc:  # e.g. the batch could not be pickled
            results.put((task_id, spec.worker_id, _failure(spec, exc, "sending the batch")))
        if row is not None:  # see stats.py; this worker is the row's only writer
            row[BUSY] += perf_counter() - began
            if not isinstance(payload, (EndOfData, WorkerFailure)):
                row[BATCHES] += 1
                row[SAMPLES] += (batch_size_of(payload) if spec.iterable and spec.auto_collation
                                 else len(indices) if spec.auto_collation else 1)
            row[SKIPPED] = getattr(spec.dataset, "skipped", 0)
        del payload


def _exit_with(parent_sentinel) -> None:
    """End this worker the moment its parent dies, even in the middle of a sample.

    The task loop sees the parent's sentinel between tasks, but a sample that takes
    minutes (or never returns) would keep an orphan alive that long. A daemon thread
    waits on the sentinel and ends the process with ``os._exit`` (nothing to flush:
    the batch in progress has nobody to go to).
    """
    import threading

    def watch() -> None:
        try:
            mp_connection.wait([parent_sentinel])
        except OSError:
            pass
        os._exit(0)

    threading.Thread(target=watch, name="fmq-parent-watch", daemon=True).start()


def _next_from_iterable(spec: WorkerSpec, iterator, assembler=None,
                        check_stop: Callable[[], None] | None = None):
    """Runs in the worker process. One batch (or one item) from this worker's iterator.

    ``assembler``: a ``SlabAssembler`` that builds the batch (default collate only).
    ``check_stop``: raises ``Stopping`` between samples once the pool is closing.
    """
    if iterator is None:
        return EndOfData(spec.worker_id)
    if not spec.auto_collation:
        try:
            item = next(iterator)
        except StopIteration:
            return EndOfData(spec.worker_id)
        return spec.collate_fn(item) if spec.collate_fn is not None else item
    items = []
    for item in iterator:
        if assembler is not None:
            assembler.add(len(items), item)
        items.append(item)
        if len(items) == spec.batch_size:
            break
        if check_stop is not None:
            check_stop()
    if not items or (spec.drop_last and len(items) < spec.batch_size):
        return EndOfData(spec.worker_id)  # the caller cancels the assembler
    return spec.collate_fn(items) if assembler is None else assembler.finish(items)


def _short(indices) -> str:
    text = repr(list(indices) if not isinstance(indices, int) else indices)
    return text if len(text) <= 80 else text[:77] + "..."


class _KeyErrorMessage(str):
    """``str(KeyError(m))`` is ``repr(m)``: quoted, newlines escaped. This keeps it readable."""

    def __repr__(self) -> str:
        return str(self)


def describe_failure(f: WorkerFailure) -> str:
    """The message the main process raises for a worker failure."""
    message = (f"Caught {f.exc_type.__name__} in worker {f.worker_id} (pid {f.pid}) {f.where}.\n"
               f"Original {f.traceback_text}")
    # KeyError (and its subclasses) would print the traceback text as one escaped line
    return _KeyErrorMessage(message) if issubclass(f.exc_type, KeyError) else message

