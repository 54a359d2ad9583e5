"""The shared-memory FIFO: multiprocessing.Queue's API, bulk data through reused slabs.

Data path of one ``put(obj)`` (see NOTE [ fmq shutdown order ] in loader.py for
how a loader closes it)::

    producer: codec.encode(obj) -> pickle stream + out-of-band buffers
              buffers copied into a free slab (shm.SlabArena), once
              message = header + buffer table + pickle stream -> pipe
                        (written by put() itself, else by the feeder thread:
                        NOTE [ direct send ])
    consumer: stealer thread: pipe -> message -> views of the slab -> object -> deque
              get(): deque.popleft()

Message layout (little-endian)::

    header  <B i I Q>   kind, slab (-1 if none), number of buffers, pickle-stream bytes
    table   <Q Q> * n   offset and length of each buffer (in the slab, or after the stream)
    stream              protocol-5 pickle
    [data]              only for kind PIPE: the buffers themselves

Kinds: INLINE (no out-of-band buffers), SLAB (buffers in a slab), PIPE (no slab
was free -- every slab is held by items in flight or still referenced by the
consumer -- so the buffers travel through the pipe, as ``multiprocessing.Queue``
would send them; slower but never a deadlock).

Bounds: at most ``maxsize`` items are in flight (put but not yet returned by
``get()``), the stealer's buffer included: ``put()`` takes a semaphore count that
``get()`` gives back. Shared memory: ``num_slabs`` slabs, each as large as the
largest item laid into it, rounded up to 1 MiB.

Trust model: messages are unpickled, so only the processes that share this
queue (the creator and the children it was handed to) may write to it.

Longer than the ~400-line guide: Queue (~380 lines) is one class, multiprocessing.Queue's
API over slabs, and the message layout it reads and writes is documented beside it.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing as mp
import os
import queue as _queue
import select
import struct
import threading
import weakref
from multiprocessing import context as mp_context
from multiprocessing import util as mp_util

import numpy as np
from _multiprocessing import SemLock

from ..errors import QueueClosed
from . import codec
from .shm import SlabArena, align
from .stealer import FRAME as _FRAME, Stealer, WatchedFdReady, _Failed

__all__ = ["Queue", "Reservation"]

logger = logging.getLogger(__name__)

_HEADER = struct.Struct("<BiIQ")
_ENTRY = struct.Struct("<QQ")

# NOTE [ direct send ]
# multiprocessing.Queue hands every message to a feeder thread, so put() never
# blocks on a full pipe. In a worker that thread costs the first batch up to 5 ms:
# it must take the GIL from the worker's main thread, which is already decoding the
# next sample in Python, and waits out the interpreter's switch interval (5 ms)
# for it (measured: a part put at +81.6 ms reached the consumer at +87.1 ms). So
# put() writes a small message itself when nothing of this process is waiting in
# the feeder (per-process FIFO order is kept), the pipe's write lock is free, and
# poll() says the pipe has room: a write of at most PIPE_BUF bytes is then atomic
# and cannot block. Otherwise -- a large PIPE-kind message, a full pipe, another
# writer mid-message -- the message goes to the feeder as before.
_DIRECT_MAX = getattr(select, "PIPE_BUF", 512) - _FRAME.size
INLINE, SLAB, PIPE = 0, 1, 2
_SEM_VALUE_MAX = SemLock.SEM_VALUE_MAX
_STOP = object()  # feeder sentinel

_LIVE_QUEUES: "weakref.WeakSet[Queue]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for q in list(_LIVE_QUEUES):
        q._reset_local()


os.register_at_fork(after_in_child=_after_fork_in_child)


class _Local:
    """This process's side of a queue: feeder thread, stealer thread, closed flag."""

    def __init__(self) -> None:
        self.closed = False
        self.lock = threading.Lock()
        # SimpleQueue: put/get in C, so waking the feeder costs one lock release
        # instead of a Python-level Condition round trip (tiny items, DESIGN.md targets).
        self.buffer: _queue.SimpleQueue = _queue.SimpleQueue()
        self.feeder: threading.Thread | None = None
        self.stealer: Stealer | None = None
        self.watch: tuple[int, ...] = ()  # descriptors the stealer also watches (Queue.watch)
        self.join_at_exit: mp_util.Finalize | None = None
        self.cancel_join = False
        self.feeder_stopping = False
        # NOTE [ direct send ]: messages handed to the feeder and not yet written;
        # changed under send_lock.
        self.backlog = 0
        # Reentrant: a signal handler that put()s while this thread is inside put() gets
        # the lock again, finds the pipe's write lock taken (by itself) and goes to the feeder.
        self.send_lock = threading.RLock()
        self.writable: select.poll | None = None  # polls the pipe's write end for room

    def shutdown(self) -> None:
        """Stop this process's threads; never blocks on a full pipe."""
        self.closed = True
        if self.stealer is not None:
            self.stealer.stop()
        self.stop_feeder()

    def stop_feeder(self) -> None:
        """Let the feeder thread end once it has sent what is buffered."""
        if self.feeder is not None and not self.feeder_stopping:
            self.feeder_stopping = True
            self.buffer.put(_STOP)


def _feed(local: _Local, writer, wlock) -> None:
    """Feeder thread: moves messages from this process's buffer into the pipe."""
    get = local.buffer.get
    while True:
        msg = get()
        if msg is _STOP:
            return
        try:
            with wlock:
                writer.send_bytes(msg)
        except (OSError, ValueError) as exc:  # the pipe is gone: the program is ending
            logger.debug("fmq feeder dropped a message: %r", exc)
            return
        with local.send_lock:  # every put() queues under this lock: the rest is what waits
            local.backlog = local.buffer.qsize()


def _join_feeder(local: _Local) -> None:
    thread = local.feeder
    if thread is not None and thread.ident is not None:  # (one whose start() was interrupted
        thread.join()                                      # early never ran: nothing to join)


def _feeder_running(thread: threading.Thread | None) -> bool:
    """The feeder was started. A ``start()`` interrupted by a signal handler (Ctrl-C)
    after the thread began running returns before the thread says so: wait for it."""
    return thread is not None and (thread.is_alive() or thread._started.wait(1.0))


class Queue:
    """A process-safe FIFO with ``multiprocessing.Queue``'s API and a prefetching consumer.

    numpy arrays and CPU tensors inside items travel through reused shared-memory
    slabs; only a small descriptor crosses the pipe. The first ``get()`` in a
    process makes it the consumer and starts its stealer thread (``fmq-stealer``),
    which rebuilds each item as it arrives, so ``get()`` of an item already
    received returns in microseconds.

    An item returned by ``get()`` belongs to the caller: its arrays and tensors
    are views of a slab that is reused only after every one of them has been
    garbage-collected. Keeping items alive therefore keeps slabs busy; when none
    is free, producers send the next items through the pipe (slower, never stuck).

    Hand it to child processes as a ``Process`` argument (fork, spawn or
    forkserver). Several processes may ``put()``; one process may ``get()``.

    Args:
        maxsize: most items in flight (put, not yet returned by ``get()``); 0 for
            no bound. The stealer's buffer counts against it.
        num_slabs: shared-memory slabs; default ``maxsize + 2`` (8 when unbounded).
            Shared memory in use is at most ``num_slabs`` x the largest item.
        ctx: multiprocessing context or start-method name; default the platform's.

    Raises:
        ValueError: ``maxsize`` is not an int >= 0.
    """

    def __init__(self, maxsize: int = 0, *, num_slabs: int | None = None, ctx=None) -> None:
        if not isinstance(maxsize, int) or isinstance(maxsize, bool) or maxsize < 0:
            raise ValueError(f"maxsize must be an int >= 0 (0 means no bound), got {maxsize!r}")
        if num_slabs is None:
            num_slabs = maxsize + 2 if maxsize > 0 else 8
        if ctx is None or isinstance(ctx, str):
            ctx = mp.get_context(ctx)
        self._maxsize = maxsize
        self._reader, self._writer = ctx.Pipe(duplex=False)
        self._wlock = ctx.Lock()
        self._slots = ctx.BoundedSemaphore(maxsize if maxsize > 0 else _SEM_VALUE_MAX)
        # Its own lock, never the pipe's write lock: a feeder blocked writing into a
        # full pipe holds that one until the consumer reads, so a consumer that had to
        # take it before its first read would deadlock.
        self._consumer_pid = ctx.Value("q", 0)
        self._arena = SlabArena(num_slabs, ctx)
        self._reset_local()

    # -- per-process state ------------------------------------------------------
    def _reset_local(self) -> None:
        self._local = _Local()
        self._arena.after_fork()
        _LIVE_QUEUES.add(self)
        # Safety net: stop this process's threads at exit or when the queue is
        # collected, so the interpreter never tears down under a running thread.
        # It holds only the _Local, never self.
        self._finalizer = weakref.finalize(self, _Local.shutdown, self._local)

    def __getstate__(self):
        mp_context.assert_spawning(self)
        return (self._maxsize, self._reader, self._writer, self._wlock, self._slots,
                self._consumer_pid, self._arena)

    def __setstate__(self, state) -> None:
        (self._maxsize, self._reader, self._writer, self._wlock, self._slots,
         self._consumer_pid, self._arena) = state
        self._reset_local()

    # -- producer side ----------------------------------------------------------
    def put(self, obj, block: bool = True, timeout: float | None = None, *,
            into: "Reservation | None" = None) -> None:
        """Put ``obj`` on the queue; it is copied before this returns.

        ``into``: a slab from ``reserve()`` in which arrays and tensors of ``obj``
        were built. Those are not copied again; others are copied after them. The
        reservation is used up either way (on success, failure, or exception).

        Raises:
            queue.Full: ``maxsize`` items are in flight and none was taken within ``timeout``.
            TypeError: ``obj`` cannot be pickled (nothing else in the queue is affected).
            QueueClosed: this process closed the queue.
        """
        local = self._local
        try:
            if local.closed:
                raise QueueClosed("put() on a closed Queue; create a new Queue to send more items")
            if not self._slots.acquire(block, timeout):
                raise _queue.Full
        except BaseException:
            if into is not None:
                into.cancel()
            raise
        try:
            msg = self._encode(obj) if into is None else self._encode_into(obj, into)
        except BaseException:
            self._slots.release()
            if into is not None:
                into.cancel()
            raise
        with local.send_lock:  # NOTE [ direct send ]
            if local.backlog == 0 and len(msg) <= _DIRECT_MAX and self._write_now(local, msg):
                return
            # Counted first: a KeyboardInterrupt before the put below leaves the count one
            # too high (direct sends wait) until the feeder's next write recounts it.
            local.backlog += 1
            if not _feeder_running(local.feeder):
                self._start_feeder(local)
            local.buffer.put(msg)

    def _write_now(self, local: _Local, msg) -> bool:
        """Write a small message into the pipe if that cannot block; False if not written.

        The pipe's write lock is shared by every producer process: left taken, it would
        stop them all. A signal handler may raise (KeyboardInterrupt) right after
        ``acquire()`` returns, before a ``try`` could guard the lock; the outer handler
        sees by the lock's count that this thread took it and gives it back. (Under
        ``send_lock`` with an empty backlog, no other thread of this process holds it.)
        """
        wlock = self._wlock._semlock
        held = wlock._count()
        try:
            if not wlock.acquire(False):  # another process is writing (maybe a long message)
                return False
            try:
                if local.writable is None:
                    local.writable = select.poll()
                    local.writable.register(self._writer.fileno(), select.POLLOUT)
                events = local.writable.poll(0)
                if not events or events[0][1] != select.POLLOUT:  # full, or the reader is gone
                    return False
                os.write(self._writer.fileno(), _FRAME.pack(len(msg)) + msg)
                return True
            except OSError:  # the pipe is gone: the feeder reports it (at debug level)
                return False
            finally:
                wlock.release()  # first: no handler runs between the body and this call
        except BaseException:
            if wlock._count() > held:  # interrupted between acquire() and the inner try
                wlock.release()
            raise

    def put_nowait(self, obj) -> None:
        """``put(obj, block=False)``."""
        self.put(obj, False)

    def _encode(self, obj) -> bytes:
        stream, buffers = codec.encode(obj)
        return self._encode_buffers(stream, buffers, self._arena.claim)

    def _encode_buffers(self, stream: bytes, buffers: list, claim) -> bytes:
        """The message for a pickle stream and its buffers: in a slab from ``claim`` if it
        gives one, else through the pipe."""
        if not buffers:
            return b"".join((_HEADER.pack(INLINE, -1, 0, len(stream)), stream))
        table, end = [], 0
        for buf in buffers:
            table.append((end, buf.nbytes))
            end = align(end + buf.nbytes)
        entries = b"".join(_ENTRY.pack(off, n) for off, n in table)
        slab = None if claim is None else claim(end)
        if slab is not None:
            try:
                dst = self._arena.writable(slab)
                for (off, n), buf in zip(table, buffers):
                    dst[off:off + n] = buf
            except BaseException:
                self._arena.release(slab)
                raise
            return b"".join((_HEADER.pack(SLAB, slab, len(buffers), len(stream)), entries, stream))
        logger.debug("fmq: no free slab, sending %d bytes through the pipe", end)
        head = b"".join((_HEADER.pack(PIPE, -1, len(buffers), len(stream)), entries, stream))
        msg = bytearray(len(head) + end)
        msg[: len(head)] = head
        for (off, n), buf in zip(table, buffers):
            msg[len(head) + off: len(head) + off + n] = buf
        return msg

    def reserve(self, nbytes: int) -> "Reservation | None":
        """Claim a slab of at least ``nbytes`` to build the next item in; None if none is free.

        Build arrays or tensors in ``Reservation.array(...)`` and ``put(item,
        into=reservation)``: they reach the consumer without another copy. Call
        ``cancel()`` if the item is not put after all. Producers only.
        """
        slab = self._arena.claim(nbytes)
        if slab is None:
            return None
        try:
            return Reservation(self._arena, slab)
        except BaseException:  # e.g. the mapping failed: the slab must not stay claimed
            self._arena.release(slab)
            raise

    def _encode_into(self, obj, into: "Reservation") -> bytes:
        """``_encode`` for an item built (in part) in ``into``'s slab."""
        stream, buffers = codec.encode(obj)
        table, copies, end = [], [], into.used
        for buf in buffers:
            offset = into.offset_of(buf)
            if offset is None:  # built elsewhere: copied after what was built in the slab
                offset, end = align(end), align(end) + buf.nbytes
                copies.append((offset, buf))
            table.append((offset, buf.nbytes))
        if not buffers or end > into.size:  # nothing for the slab / the rest does not fit:
            try:  # all of it into another slab (or the pipe), then this one back
                return self._encode_buffers(stream, buffers, self._arena.claim)
            finally:
                into.cancel()
        dst = into.view
        for offset, buf in copies:
            dst[offset:offset + buf.nbytes] = buf
        into.sent()
        entries = b"".join(_ENTRY.pack(off, n) for off, n in table)
        return b"".join((_HEADER.pack(SLAB, into.slab, len(buffers), len(stream)), entries, stream))

    def _start_feeder(self, local: _Local) -> None:
        with local.lock:
            if _feeder_running(local.feeder):
                return
            if mp.parent_process() is not None and not local.cancel_join and local.join_at_exit is None:
                # In a child, flush what was put before the process exits (as
                # multiprocessing.Queue does); the creator's descendants are joined
                # before it exits, so it need not wait. Stop first (priority 10), then join.
                # Registered before start(): a Ctrl-C inside start() must not leave a
                # running feeder unjoined, which could exit holding the pipe's write lock.
                mp_util.Finalize(None, _Local.stop_feeder, [local], exitpriority=10)
                local.join_at_exit = mp_util.Finalize(None, _join_feeder, [local], exitpriority=-5)
            local.feeder = threading.Thread(target=_feed, args=(local, self._writer, self._wlock),
                                            name="fmq-feeder", daemon=True)
            local.feeder.start()

    # -- consumer side ----------------------------------------------------------
    def get(self, block: bool = True, timeout: float | None = None):
        """Remove and return the oldest item.

        Blocks like ``multiprocessing.Queue.get``: with ``timeout=None`` it waits
        until an item arrives, even if every producer has died -- pass a timeout
        when producers may die (the loader watches its workers itself).

        Raises:
            queue.Empty: no item within ``timeout`` (or at once with ``block=False``).
            QueueClosed: this process closed the queue.
            RuntimeError: another live process is already this queue's consumer.
            WatchedFdReady: a descriptor given to ``watch()`` became readable.
        """
        stealer = self._local.stealer
        if stealer is None:  # (a Stealer with nothing buffered is falsy: it has __len__)
            stealer = self._become_consumer()
        item = stealer.take(block, timeout)
        if item.__class__ is _Failed:
            if type(item.error) is not WatchedFdReady:  # that one took no slot
                self._slots.release()
            raise item.error
        self._slots.release()
        return item

    def watch(self, fds) -> None:
        """Have ``get()`` raise ``WatchedFdReady`` once when one of ``fds`` becomes readable.

        For process sentinels: the consumer learns that a producer exited without
        polling for it. Call it in the consumer process before its first ``get()``.
        """
        if self._local.stealer is not None:
            raise RuntimeError("Queue.watch() must come before this process's first get()")
        self._local.watch = tuple(fds)

    def get_nowait(self):
        """``get(block=False)``."""
        return self.get(False)

    def _become_consumer(self) -> Stealer:
        local = self._local
        with local.lock:
            if local.closed:
                raise QueueClosed("get() on a closed Queue; create a new Queue to receive more items")
            if local.stealer is not None:
                return local.stealer
            me = os.getpid()
            with self._consumer_pid.get_lock():
                other = self._consumer_pid.value
                if other not in (0, me) and _pid_alive(other):
                    raise RuntimeError(
                        f"this Queue already has a consumer, process {other}; fmq_loader.Queue "
                        "supports one consuming process (several producers). Use one Queue per "
                        f"consumer, or close() the queue in process {other} first")
                self._consumer_pid.value = me
            # A partial over the arena, not a bound method: the stealer (reachable from
            # the finalizer) must not keep the Queue alive.
            local.stealer = Stealer(self._reader, functools.partial(_rebuild, self._arena),
                                    watch=local.watch)
            return local.stealer

    # -- state ------------------------------------------------------------------
    def buffered(self) -> int:
        """Items this process's stealer holds ready: ``get()`` returns one at once."""
        stealer = self._local.stealer
        return 0 if stealer is None else len(stealer)

    def qsize(self) -> int:
        """Items put and not yet returned by ``get()``: a snapshot; a following ``get()`` may still block."""
        bound = self._maxsize if self._maxsize > 0 else _SEM_VALUE_MAX
        return bound - self._slots.get_value()

    def empty(self) -> bool:
        """``qsize() == 0`` (a snapshot)."""
        return self.qsize() == 0

    def full(self) -> bool:
        """True when ``maxsize`` items are in flight (a snapshot)."""
        return self._maxsize > 0 and self._slots.get_value() == 0

    @property
    def maxsize(self) -> int:
        return self._maxsize

    # -- closing ----------------------------------------------------------------
    def close(self) -> None:
        """This process will put and get no more; stop its stealer, let its feeder flush.

        Idempotent. Items already put by this process are still delivered (call
        ``join_thread()`` to wait for that). Items buffered by this process's
        stealer are dropped.
        """
        local = self._local
        if local.closed:
            return
        local.shutdown()
        if local.stealer is not None:
            with self._consumer_pid.get_lock():
                if self._consumer_pid.value == os.getpid():
                    self._consumer_pid.value = 0

    def release_shared_memory(self) -> None:
        """Close this process's pipe ends and slab descriptors (after ``close()``).

        Items still held stay valid: the kernel frees a slab once no process has a
        descriptor or mapping of it.
        """
        for conn in (self._reader, self._writer):
            conn.close()
        self._arena.close()

    def shared_memory_bytes(self) -> int:
        """Bytes the slabs span now: at most ``num_slabs`` x the largest item so far."""
        return self._arena.nbytes()

    def pipe_items(self) -> int:
        """Items this consumer received through the pipe because every slab was held."""
        return self._arena.pipe_items

    def join_thread(self) -> None:
        """Wait until every item this process put has been written to the pipe.

        Raises:
            ValueError: the queue is not closed yet (call ``close()`` first).
        """
        local = self._local
        if not local.closed:
            raise ValueError("join_thread() needs close() first: the feeder thread only "
                             "ends after the queue is closed")
        if local.feeder is not None and local.feeder.ident is not None:
            local.feeder.join()

    def cancel_join_thread(self) -> None:
        """Do not wait for this process's unsent items when it exits (they may be lost)."""
        local = self._local
        if local.join_at_exit is not None:
            local.join_at_exit.cancel()
            local.join_at_exit = None
        local.cancel_join = True

    def __enter__(self) -> "Queue":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<fmq_loader.Queue maxsize={self._maxsize} qsize={self.qsize()} "
                f"slabs={self._arena.num_slabs}{' closed' if self._local.closed else ''}>")


class Reservation:
    """A slab claimed by a producer to build one item in (``Queue.reserve``).

    ``array()`` hands out consecutive, aligned pieces of it; ``put(item,
    into=...)`` sends the item with those pieces in place, or ``cancel()`` gives
    the slab back. Exactly one of the two happens; both are idempotent.
    """

    __slots__ = ("slab", "view", "size", "used", "_arena", "_base", "_open")

    def __init__(self, arena: SlabArena, slab: int) -> None:
        self._arena, self.slab = arena, slab
        self.view = arena.writable(slab)
        self.size = self.view.nbytes
        self._base = np.frombuffer(self.view, np.uint8).__array_interface__["data"][0]
        self.used = 0
        self._open = True

    def array(self, shape, dtype=np.uint8) -> "np.ndarray | None":
        """A writable array of ``shape`` and ``dtype`` in the next free bytes of the slab, like
        ``np.empty``; None when it does not fit."""
        dtype = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        start = align(self.used)
        if not self._open or start + count * dtype.itemsize > self.size:
            return None
        self.used = start + count * dtype.itemsize
        return np.frombuffer(self.view, dtype, count, start).reshape(shape)

    def offset_of(self, buf) -> int | None:
        """Where ``buf`` lies in the slab, if it lies wholly inside what was handed out."""
        address = np.frombuffer(buf, np.uint8).__array_interface__["data"][0]
        offset = address - self._base
        return offset if 0 <= offset and offset + buf.nbytes <= self.used else None

    def sent(self) -> None:
        self._open = False  # the consumer releases it now

    def cancel(self) -> None:
        if self._open:
            self._open = False
            self._arena.release(self.slab)


def _corrupt(msg, what: str) -> ValueError:
    return ValueError(f"the queue's pipe carried a corrupt message ({len(msg)} bytes): {what}; "
                      "only this queue's own processes may write to it (see the trust model in "
                      "fmq_loader/queue.py)")


@functools.lru_cache(maxsize=64)
def _entries(n: int) -> struct.Struct:
    """The buffer table of ``n`` entries, as one Struct."""
    return struct.Struct(f"<{2 * n}Q")


def _rebuild(arena: SlabArena, msg: bytes):
    """Rebuild one item from its message (runs in the stealer thread; holds no Queue).

    Every field is checked before it is used: kind, counts and lengths against the
    message, slab index, claim and offsets against the arena (in ``lease``), so a
    corrupt descriptor raises ``ValueError`` instead of reading outside its slab.
    """
    if len(msg) < _HEADER.size:
        raise _corrupt(msg, f"shorter than the {_HEADER.size}-byte header")
    kind, slab, nbuf, nstream = _HEADER.unpack_from(msg, 0)
    if kind not in (INLINE, SLAB, PIPE):
        raise _corrupt(msg, f"kind must be 0, 1 or 2, got {kind}")
    pos = _HEADER.size
    body = pos + nbuf * _ENTRY.size + nstream
    if body > len(msg) or (kind != PIPE and body != len(msg)):
        raise _corrupt(msg, f"header announces {nbuf} buffers and a {nstream:,}-byte stream")
    if (kind == INLINE) != (nbuf == 0) or (kind != SLAB and slab != -1):
        raise _corrupt(msg, f"kind {kind} with {nbuf} buffers and slab {slab}")
    view = memoryview(msg)
    stream = view[pos + nbuf * _ENTRY.size:body]
    if kind == INLINE:
        return codec.decode(stream, ())
    flat = _entries(nbuf).unpack_from(msg, pos)  # offset, length, offset, length, ...
    pos += nbuf * _ENTRY.size
    if kind == SLAB:
        # Slices of one memoryview of the token: each keeps the token (the lease) alive.
        if nbuf == 1:  # the usual batch: one large tensor (the labels travel in-band)
            token = memoryview(arena.lease(slab, flat[0] + flat[1]))
            return codec.decode(stream, [token[flat[0]:flat[0] + flat[1]]])
        ends = [flat[i] + flat[i + 1] for i in range(0, 2 * nbuf, 2)]
        token = memoryview(arena.lease(slab, max(ends)))
        return codec.decode(stream, [token[flat[i]:ends[i // 2]] for i in range(0, 2 * nbuf, 2)])
    table = list(zip(flat[::2], flat[1::2]))
    data = view[pos + nstream:]
    arena.pipe_items += 1
    if any(off + n > len(data) for off, n in table):
        raise _corrupt(msg, "its buffer table points past its data")
    return codec.decode(stream, [bytearray(data[off:off + n]) for off, n in table])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
