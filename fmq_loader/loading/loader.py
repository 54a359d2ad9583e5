"""FMQLoader: a torch.utils.data.DataLoader-compatible iterable; owns pool + queue + stealer.

Data flow::

    sampler (main) -> shared task board (one pipe; an idle worker takes the next task)
        -> [worker i: dataset[idx] + transform + collate]
        -> fmq_loader.Queue: batch laid into a reused shared-memory slab, descriptor on a pipe
        -> stealer thread (main process): rebuilds zero-copy tensors, buffers them
        -> reorder by task (in_order) -> __next__ -> your training loop

At most ``prefetch_factor * num_workers`` tasks are in flight: a worker starts
task ``seq`` only while ``seq < consumed + prefetch_factor * num_workers``, where
``consumed`` is a shared counter that ``next()`` bumps -- no pipe write, no
wake-up of another process per batch (see epoch.py and docs/design.md).
Iterable datasets get per-worker tasks instead, round-robin, as in torch.

NOTE [ fmq shutdown order ]
    ``FMQLoader.close()`` (also reached from ``with``, the end of a non-persistent
    epoch, an iterator dropped early, and the ``weakref.finalize`` safety net at
    garbage collection or interpreter exit):
    (1) mark closed; (2) stop the stealer thread -- the reader goes first so it
    never reads a half-written slab; (3) set STOP and send every worker ``Stop``
    (a worker checks STOP between samples); (4) join them for 1 s (0.2 s after
    an error), ``terminate()`` then ``kill()`` stragglers, quietly; (5) close the
    queue; (6) drop the slab descriptors -- slabs are anonymous memfds, so the
    kernel frees them once the last view is gone and nothing can be left in
    /dev/shm; (7) detach the finalizer. Workers also exit on their own the
    moment the main process dies (a thread in each waits on the parent's
    sentinel), and a worker forked by one loader drops the descriptors it
    inherited of every other (pool.ProducerPool.forget_inherited).

Longer than the ~400-line guide: FMQLoader is one class whose methods share the
epoch, pool, prefetch and resume state; its keyword checks are in arguments.py, its
``num_workers=0`` path in inprocess.py.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Callable, Generic, Iterable, TypeVar

import numpy as np
import torch
from torch.utils.data import BatchSampler, DistributedSampler, Sampler

from ..workers import datapipes
from ..workers.collate import default_collate, default_convert
from ..workers.pool import ProducerPool, warm_pillow
from ..workers.stats import LoaderStats, Meter
from .arguments import (check_arguments, check_log_every_s, resolve_context,
                        warn_if_more_workers_than_cpus)
from .distributed import EpochOrder
from .epoch import PullEpoch, PushEpoch, watch_for_exit
from .inprocess import InProcessEpoch, in_process_iterable, metered
from .pinning import pin_settings
from .resume import EpochProgress, loader_state, order_sampler, parse_state

__all__ = ["FMQLoader"]

logger = logging.getLogger(__name__)
stats_logger = logging.getLogger("fmq_loader.stats")


T_co = TypeVar("T_co", covariant=True)


class FMQLoader(Generic[T_co]):
    """Drop-in for ``torch.utils.data.DataLoader``; batches arrive through shared memory.

    Same keywords, defaults and validation as torch's DataLoader. Extra,
    fmq-specific keywords:

    Args:
        extra_slabs: shared-memory slabs beyond ``prefetch_factor * num_workers``
            for batches your loop still holds (default 4). A batch you keep stays
            valid; if you keep more, later batches travel through a pipe (slower).
        seed: if set, each epoch's sample seeds come from ``seed`` and the epoch
            index (``set_epoch``'s value, else the count of epochs begun) instead of
            from ``generator`` / torch's global RNG, so batches are the same for any
            ``num_workers`` and start method; with ``shuffle=True`` and no
            ``generator``, the order is drawn from ``seed + epoch`` too (as
            DistributedSampler does), which ``state_dict()`` needs to resume.
        distributed: shard the dataset across ``torch.distributed`` ranks the way
            ``DistributedSampler`` does (padding, or with ``drop_last`` cutting, to a
            multiple of the world size); rank and world size come from the
            initialised process group or torchrun's RANK / WORLD_SIZE. The epoch
            advances by itself unless you call ``set_epoch``.
        prefetch_next_epoch: with ``persistent_workers``, start the next epoch's
            batches while this one ends (default True; off when the sampler,
            batch sampler or its sampler has ``set_epoch``).
        log_every_s: log ``stats().summary()`` at INFO on the ``fmq_loader.stats``
            logger at most this often (from inside ``next()``); None: never.
    """

    def __init__(self, dataset, batch_size: int | None = 1, shuffle: bool | None = None,
                 sampler: Sampler | Iterable | None = None,
                 batch_sampler: Sampler | Iterable | None = None, num_workers: int = 0,
                 collate_fn: Callable | None = None, pin_memory: bool = False,
                 drop_last: bool = False, timeout: float = 0,
                 worker_init_fn: Callable | None = None, multiprocessing_context=None,
                 generator: torch.Generator | None = None, *, prefetch_factor: int | None = None,
                 persistent_workers: bool = False, pin_memory_device: str = "",
                 in_order: bool = True, extra_slabs: int = 4, seed: int | None = None,
                 prefetch_next_epoch: bool = True, log_every_s: float | None = None,
                 distributed: bool = False) -> None:
        # arguments.py: torch's checks and defaults (same errors, same order), and ours
        args = check_arguments(dataset, batch_size, shuffle, sampler, batch_sampler, num_workers,
                               drop_last, timeout, generator, prefetch_factor,
                               persistent_workers, extra_slabs, seed, distributed,
                               on_set_epoch=self.set_epoch)
        dataset, iterable, order = args.dataset, args.iterable, args.order
        batch_size, drop_last = args.batch_size, args.drop_last
        sampler, batch_sampler = args.sampler, args.batch_sampler
        prefetch_factor = args.prefetch_factor
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
        self.multiprocessing_context = multiprocessing_context  # validated by the setter
        if num_workers > 0 and self.multiprocessing_context.get_start_method() == "fork":
            warm_pillow()  # now, not on the way to the first batch
        self.pin_memory_device = pin_memory_device
        # pinning.py: False without an accelerator (with torch's warning)
        self.pin_memory, self._pin_device = pin_settings(pin_memory, pin_memory_device, stacklevel=2)
        warn_if_more_workers_than_cpus(num_workers)
        self.prefetch_next_epoch = prefetch_next_epoch
        self._prefetched = None
        self._prefetch_error: Exception | None = None  # NOTE [ a failing next epoch ]
        self._prefetch_fingerprint: tuple = ()  # NOTE [ an order changed since the prefetch ]
        self._prefetch_before: list = []  # (generator, state before the prefetch drew)
        self._prefetch_states: list = []  # (generator, state before, state after its draws)
        self._iterable = iterable
        self._reported_len: int | None = None  # an iterable dataset's len(), once len(self) asked
        self._epoch = 0
        self._iterations = 0
        self._first_base_seed: int | None = None
        self._shared_seed: int | None = None  # an IterDataPipe's, per iterator (datapipes.py)
        self._shared_seed_group = False  # its broadcast group: not made yet
        self._pool: ProducerPool | None = None
        self._current: weakref.ref | None = None
        self._closed = False
        # The safety net reaches the pool through this holder, never through self.
        # Every live pool: the persistent one, or one per non-persistent iterator.
        # The safety net reaches them through this set, never through self.
        self._pools: set = set()
        self._epoch_open = False  # a persistent epoch was started and not finished
        self._epoch_set = False  # set_epoch() was called: seeds follow it, no prefetch
        self._order = order
        self._bound_index_sampler = None  # this epoch's batches of the loader's own order
        # Different ranks get different sample seeds (else rank r's k-th sample would
        # get the same augmentation on every rank).
        dist_sampler = sampler if isinstance(sampler, (EpochOrder, DistributedSampler)) else \
            getattr(batch_sampler, "sampler", None)
        self._seed_rank = getattr(dist_sampler, "rank", 0) if isinstance(
            dist_sampler, (EpochOrder, DistributedSampler)) else 0
        self._drawn: EpochProgress | None = None  # set by each _draw_base_seed
        self._progress: EpochProgress | None = None  # the epoch iter() last started
        self._prefetched_progress: EpochProgress | None = None
        self._resume = None  # a position load_state_dict() restored, for the next iter()
        self._finalizer = weakref.finalize(self, _close_pools, self._pools)
        watch_for_exit()  # after the finalize above: see there
        self._stats_pool: ProducerPool | None = None  # the pool whose workers stats() shows
        check_log_every_s(log_every_s)
        self.log_every_s = log_every_s
        self._meter = Meter(log_every_s, weakref.WeakMethod(self._log_stats))
        self._iter_lock = threading.Lock()
        self._initialized = True

    # As torch's DataLoader: these shape the batches and the index order, which are
    # fixed at construction (the batch sampler is built from them), so a later
    # assignment would be silently ignored; it raises instead.
    _FIXED_AFTER_INIT = frozenset(
        {"batch_size", "batch_sampler", "sampler", "drop_last", "dataset", "persistent_workers"})

    def __setattr__(self, name: str, value) -> None:
        if name in self._FIXED_AFTER_INIT and self.__dict__.get("_initialized"):
            raise ValueError(f"{name} attribute should not be set after FMQLoader is "
                             f"initialized (as in torch's DataLoader): it was fixed when the "
                             f"loader was built; create a new FMQLoader with {name}={value!r}")
        object.__setattr__(self, name, value)

    @property
    def multiprocessing_context(self):
        """The start method's context (validated on assignment, as in torch's DataLoader)."""
        return self._multiprocessing_context

    @multiprocessing_context.setter
    def multiprocessing_context(self, ctx) -> None:
        self._multiprocessing_context = resolve_context(ctx, self.num_workers)

    # -- torch-compatible surface ------------------------------------------------
    @property
    def _auto_collation(self) -> bool:
        """torch's private name for ``auto_collation``, which some code and tests read."""
        return self.auto_collation

    @property
    def _iterator(self):
        """torch's private name for a persistent loader's live iterator (None otherwise)."""
        if not self.persistent_workers or self._pool is None:
            return None
        current = self._current() if self._current is not None else None
        return current if current is not None else _PersistentWorkers(self, self._pool)

    @_iterator.setter
    def _iterator(self, value) -> None:
        # code written for torch drops the persistent iterator with `loader._iterator = None`
        if value is not None:
            raise ValueError(f"only None may be assigned to _iterator (it drops the persistent "
                             f"workers), got {value!r}")
        if self._pool is not None:
            self._shutdown_pool(self._pool)

    def _shutdown_pool(self, pool: ProducerPool) -> None:
        """Stop ``pool``'s workers; the loader stays usable (a later iter() starts new ones)."""
        if pool is self._pool:
            self._pool = self._prefetched = self._current = None
            self._epoch_open = False
        _close_pool(self._pools, pool)

    @property
    def _index_sampler(self):
        if self._bound_index_sampler is not None:  # the latest epoch's (seed, epoch) order
            return self._bound_index_sampler
        return self.batch_sampler if self.auto_collation else self.sampler

    def __len__(self) -> int:
        if self._iterable:
            length = len(self.dataset)  # TypeError for a dataset without __len__, as in torch
            self._reported_len = length  # an epoch that yields more warns, as torch's does
            if self.batch_size is not None:
                length = length // self.batch_size if self.drop_last else -(-length // self.batch_size)
            return length
        return len(self._index_sampler)

    def set_epoch(self, epoch: int) -> None:
        """Forward ``epoch`` to the sampler (and batch sampler / dataset) that has ``set_epoch``.

        A dataset's ``set_epoch`` is also called in each worker, on its own copy, before
        it loads that epoch's samples: with persistent workers (where torch's copies
        never hear of it) as without.
        """
        self._epoch = epoch
        self._epoch_set = True
        for obj in self._epoch_aware():
            obj.set_epoch(epoch)

    def _epoch_aware(self) -> list:
        """The sampler, batch sampler, its sampler and dataset that have ``set_epoch``."""
        candidates = (self.sampler, self.batch_sampler,
                      getattr(self.batch_sampler, "sampler", None), self.dataset)
        return [obj for obj in candidates
                if callable(getattr(obj, "set_epoch", None)) and obj is not self._order]

    def _draw_base_seed(self) -> int:
        """Begin an epoch: its base seed; binds its order and records it in ``_drawn``."""
        resume, self._resume = self._resume, None
        # As torch: an IterDataPipe's iterator first draws the seed its random pipes share.
        if self._shared_seed_group is False and datapipes.is_iter_datapipe(self.dataset):
            self._shared_seed_group = datapipes.seed_group()
        self._shared_seed = datapipes.draw_shared_seed(self.dataset, self.generator,
                                                       self._shared_seed_group or None)
        if resume is not None:
            self._iterations = resume.iterations
        # With set_epoch the epoch number alone picks the seeds and the loader's own
        # order (a restarted run repeats them); without it, the count of epochs begun.
        epoch = self._epoch if self._epoch_set else self._iterations
        self._drawn = EpochProgress(epoch, self._iterations, resume.batches if resume else 0,
                                    getattr(order_sampler(self), "epoch", None))
        if self._order is not None:
            bound = self._order.for_epoch(epoch)
            self._bound_index_sampler = (BatchSampler(bound, self.batch_size, self.drop_last)
                                         if self.auto_collation else bound)
        if self.seed is not None:
            state = np.random.SeedSequence(
                [self.seed, epoch] + ([self._seed_rank] if self._seed_rank else []))
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
        return base_seed

    def __iter__(self):
        with self._iter_lock:  # two threads' iter() at once would both set the epoch up
            pool = self._pool
            if pool is None:
                return self._iter()
            with pool.in_next:  # nor may it run while another thread is in next() on it
                return self._iter()

    def _iter(self):
        if self._closed:
            raise RuntimeError("this FMQLoader is closed; create a new one to iterate again")
        if self._resume is not None:
            self._resume.check(self)  # before any worker starts
        if self.num_workers == 0:
            base_seed = self._draw_base_seed()
            datapipes.apply_seed(self.dataset, self._shared_seed)
            datapipes.shard(self.dataset, 1, 0, *datapipes.world_and_rank())  # across ranks only
            if not self._iterable:
                epoch = InProcessEpoch(self, base_seed, self._index_sampler, self._drawn)
                self._track(epoch)
                return epoch
            inner = in_process_iterable(self)
            self._track(inner)
            return metered(self._meter, inner)
        if not self.persistent_workers:
            # As torch: each iterator has its own workers, for as long as it lives.
            pool = self._new_pool()
            try:
                it = self._new_epoch(pool)
                pool.start(it.base_seed)  # NOTE [ tasks before workers ]
            except BaseException:
                _close_pool(self._pools, pool)
                raise
            weakref.finalize(it, _close_pool, self._pools, pool)
            self._track(it)
            return it
        current = self._current() if self._current is not None else None
        if current is not None:
            current.detach()
        if self._pool is None:
            self._pool = self._new_pool()
            self._prefetched, self._epoch_open = None, False
        pool = self._pool
        # The usual prefetch bound, whatever an epoch dropped unfinished left it at
        # (NOTE [ a core for the first join ]); a new split epoch sets its own.
        pool.set_bound()
        try:
            error, self._prefetch_error = self._prefetch_error, None
            if error is not None:  # NOTE [ a failing next epoch ] in epoch.py
                self._prefetched = None
                raise error  # (the except below drops what it published)
            it, self._prefetched = self._prefetched, None
            if it is not None and self._order_fingerprint() != self._prefetch_fingerprint:
                # NOTE [ an order changed since the prefetch ]: the generator was reseeded or
                # drawn from, or the sampler given new indices, after the next epoch's order
                # was drawn: torch draws it now, so we do too, from generators that show no
                # draw of ours (one the user did not touch is set back to before them).
                for generator, before, after in self._prefetch_states:
                    if torch.equal(generator.get_state(), after):
                        generator.set_state(before)
                self._iterations = self._prefetched_progress.iterations
                it = self._prefetched_progress = None
                pool.skip_below(pool.next_seq)  # its tasks
            if it is not None:  # the next epoch, already under way
                if self._epoch_open:  # the user left the last one early: drop its remaining tasks
                    pool.skip_below(it._first)
                it.adopt(self)
                self._progress, self._prefetched_progress = self._prefetched_progress, None
            else:
                if self._epoch_open:
                    pool.skip_below(pool.next_seq)
                it = self._new_epoch(pool)
                self._track(it)
            pool.start(it.base_seed)  # NOTE [ tasks before workers ]; a no-op once started
        except BaseException:
            if pool.running:  # a later epoch failed to start: the pool lives on
                pool.skip_below(pool.next_seq)  # drop whatever of it reached the board
                pool.set_bound()
            else:
                _close_pool(self._pools, pool)
                self._pool = self._prefetched = None
            raise
        self._epoch_open = True
        self._current = weakref.ref(it)
        return it

    def _new_epoch(self, pool: ProducerPool) -> "PullEpoch | PushEpoch":
        """Begin the next epoch on ``pool``: draw its base seed, bind its order, publish."""
        base_seed = self._draw_base_seed()  # binds the epoch's order: _index_sampler after it
        if self._iterable:
            return PushEpoch(self, pool, base_seed)
        return PullEpoch(self, pool, base_seed, self._index_sampler, start=self._drawn.start)

    def _prefetch_next_epoch(self, epoch) -> "PullEpoch | None":
        """Called when ``epoch``'s sampler runs dry: start the next epoch's tasks now.

        Only with persistent workers, and only when nothing has ``set_epoch``
        (the next epoch's order could still change). The next epoch's base seed
        and shuffle are drawn here, from ``generator`` -- the same draws, in the
        same order, as at the next ``iter()``; with ``generator=None`` they come
        from torch's global RNG at this moment instead.
        """
        if not (self.persistent_workers and self.prefetch_next_epoch) or self._pool is None:
            return None
        # A sampler with set_epoch may still change the next epoch's order. A dataset's
        # set_epoch does not matter here: persistent workers hold their own copies of
        # the dataset, which a set_epoch in this process never reaches.
        if self._epoch_set or self._resume is not None or any(
                obj is not self.dataset for obj in self._epoch_aware()):
            return None
        before = [(g, g.get_state()) for g in self._generators()]
        base_seed = self._draw_base_seed()  # binds the epoch's order: _index_sampler after it
        self._prefetched = PullEpoch(self, self._pool, base_seed, self._index_sampler,
                                     current=False)
        self._prefetched_progress = self._drawn
        self._drawn.ref = weakref.ref(self._prefetched)
        self._prefetch_before = before
        self.note_prefetch_draws()
        return self._prefetched

    def note_prefetch_draws(self) -> None:
        """The prefetched epoch drew from the generators (or may have): remember their state.

        NOTE [ an order changed since the prefetch ]: ``iter()`` compares it with
        ``_order_fingerprint()`` then; any difference was the user's doing."""
        self._prefetch_fingerprint = self._order_fingerprint()
        self._prefetch_states = [(g, state, g.get_state()) for g, state in self._prefetch_before]

    def _generators(self) -> list:
        """The loader's and its samplers' torch.Generators, each once."""
        found: list = []
        for obj in (self.generator, self.sampler, self.batch_sampler,
                    getattr(self.batch_sampler, "sampler", None)):
            g = obj if isinstance(obj, torch.Generator) else getattr(obj, "generator", None)
            if isinstance(g, torch.Generator) and all(g is not f for f in found):
                found.append(g)
        return found

    def _order_fingerprint(self) -> tuple:
        """What decides the next epoch's order and may change between epochs without
        ``set_epoch``: the state of the loader's and the samplers' generators, and which
        objects the samplers' attributes are (``sampler.indices = ...`` is a new list).
        Torch's global RNG is not in it: with ``generator=None`` the order is drawn from it
        at the prefetch (see ``_prefetch_next_epoch``)."""
        parts: list = []
        for obj in (self.generator, self.sampler, self.batch_sampler,
                    getattr(self.batch_sampler, "sampler", None)):
            if isinstance(obj, torch.Generator):
                parts.append(obj.get_state().numpy().tobytes())
                continue
            attrs = getattr(obj, "__dict__", None)
            if attrs:
                parts.append(tuple((key, id(value)) for key, value in attrs.items()))
            generator = getattr(obj, "generator", None)
            if isinstance(generator, torch.Generator):
                parts.append(generator.get_state().numpy().tobytes())
        return tuple(parts)

    def _prefetch_failed(self, error: Exception) -> None:
        """The next epoch failed while it was prefetched: the next ``iter()`` raises ``error``."""
        self._prefetched = self._prefetched_progress = None
        self._prefetch_error = error

    def _track(self, it) -> None:
        """``it`` is the epoch iter() just started: state_dict() reports its progress."""
        self._drawn.ref = weakref.ref(it)
        self._progress = self._drawn

    def _new_pool(self) -> ProducerPool:
        """A pool whose workers are not started yet.

        NOTE [ tasks before workers ]: ``iter()`` publishes a map-style epoch's first
        tasks, then starts the workers. Forking one worker takes ~3 ms here; a worker
        that found no task waited for the rest to be forked, the first one ~6 ms with
        two. Before the start the board takes what an empty pipe holds (nobody reads it
        yet; NOTE [ the board never blocks ] in pool.py), the rest once they run.
        An iterable dataset's epoch (PushEpoch) starts the workers first: its tasks go
        to each worker's own pipe.
        """
        warn_if_more_workers_than_cpus(self.num_workers)  # as torch, per start
        pool = ProducerPool(
            self.dataset, self.num_workers, self.multiprocessing_context,
            auto_collation=self.auto_collation, collate_fn=self.collate_fn,
            drop_last=self.drop_last, batch_size=self.batch_size,
            worker_init_fn=self.worker_init_fn, iterable=self._iterable,
            max_outstanding=self.prefetch_factor * self.num_workers, extra_slabs=self.extra_slabs,
            start=False)
        self._pools.add(pool)
        self._stats_pool = pool
        return pool

    def _end_epoch(self, it, clean: bool) -> None:
        """``it`` ran to its end (``clean``) or raised; release what it no longer needs."""
        progress = self._progress
        if clean and progress is not None and progress.ref is not None and progress.ref() is it:
            progress.finished = True
        # After an error (a dead worker, the timeout, Ctrl-C in next()) the workers are
        # dropped: one still inside a sample is terminated at once, so the error reaches
        # the caller within a moment, not after the grace a clean close gives.
        grace = _CLOSE_GRACE_S if clean else _ERROR_GRACE_S
        if not self.persistent_workers:
            _close_pool(self._pools, it._pool, grace)
            return
        if self._current is not None and self._current() is it:
            self._current = None
        if clean:
            self._epoch_open = False
        elif it._pool is self._pool:
            # A worker died or timed out mid-epoch: the next epoch starts fresh workers.
            self._stop_pool(grace)

    def _stop_pool(self, grace: float | None = None) -> None:
        pool, self._pool = self._pool, None
        self._prefetched, self._epoch_open = None, False
        if pool is not None:
            _close_pool(self._pools, pool, grace)

    def stats(self) -> LoaderStats:
        """Is the loader what slows training? A snapshot of counters kept as batches go by.

        ``data_bound`` is the share of wall time since the first ``next()`` spent
        inside ``next()``: near 1 when the training step outpaces the workers.
        Worker figures are those of the current (or last) worker pool. Cost: two
        clock reads and a few additions per batch in ``next()``; one float row
        update per batch in each worker; see stats.py.
        """
        pool = self._stats_pool
        workers, skipped = pool.worker_stats_snapshot() if pool is not None else ((), 0)
        if pool is None:
            skipped = getattr(self.dataset, "skipped", 0) if self.num_workers == 0 else 0
        return self._meter.snapshot(
            workers, queue_depth=pool.queue_depth() if pool is not None else 0,
            shared_memory_bytes=pool.results.shared_memory_bytes() if pool is not None else 0,
            skipped_files=int(skipped),
            pipe_batches=pool.results.pipe_items() if pool is not None else 0)

    def _log_stats(self) -> None:
        stats_logger.info("fmq_loader: %s", self.stats().summary())

    def state_dict(self) -> dict:
        """The position to resume from: the epoch in progress and how many batches it handed out.

        Also holds the dataset length, batch size, seed and sampler settings, which
        ``load_state_dict`` checks. Needs ``seed`` and a reproducible order (see
        resume.py); raises ``ValueError`` saying what to change otherwise.
        """
        return loader_state(self)

    def load_state_dict(self, state: dict) -> None:
        """Make the next ``iter()`` yield exactly the rest of the saved epoch, then carry on.

        Raises:
            ValueError: ``state`` is from a loader with another dataset length, batch
                size, seed or sampler (named in the message), or this loader cannot resume.
        """
        resume = parse_state(self, state)
        current = self._current() if self._current is not None else None
        if current is not None:  # an epoch begun before the load yields no more
            current.detach()
        if self._pool is not None:  # drop its tasks (and a prefetched epoch's) at the next iter()
            self._prefetched, self._prefetched_progress, self._epoch_open = None, None, True
        self._progress = None
        self._iterations = state["epochs_begun"]
        self._epoch_set = state["set_epoch"] is not None
        self._epoch = state["set_epoch"] if self._epoch_set else self._epoch
        self._resume = resume

    def close(self) -> None:
        """Stop workers and release shared memory; idempotent. Batches you hold stay valid."""
        if self._closed:
            return
        self._closed = True
        self._current = None
        self._prefetched = None
        self._pool = None
        try:
            _close_pools(self._pools)
        finally:
            self._finalizer.detach()

    def __enter__(self) -> "FMQLoader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<FMQLoader batch_size={self.batch_size} num_workers={self.num_workers} "
                f"prefetch_factor={self.prefetch_factor} persistent={self.persistent_workers}>")


class _PersistentWorkers:
    """``loader._iterator`` between epochs: what code written for torch's persistent
    iterator reads of it (``_workers``, ``_shutdown_workers()``)."""

    def __init__(self, loader: FMQLoader, pool: ProducerPool) -> None:
        self._loader, self._pool = loader, pool

    @property
    def _workers(self) -> list:
        return self._pool.handles()

    def _shutdown_workers(self) -> None:
        self._loader._shutdown_pool(self._pool)


_CLOSE_GRACE_S = 1.0  # how long close() lets a worker finish the sample it is in
_ERROR_GRACE_S = 0.2  # the same after an error: the caller is waiting for the exception


def _close_pool(pools: set, pool: ProducerPool, grace: float | None = None) -> None:
    pools.discard(pool)
    pool.close(_CLOSE_GRACE_S if grace is None else grace)


def _close_pools(pools: set) -> None:
    while pools:
        pools.pop().close()


