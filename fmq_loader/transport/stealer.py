"""Consumer-side prefetch thread: drains the queue's pipe into a local deque; start/stop/join.

The seed's idea (fmq, 2017): a thread in the consumer process takes each item
off the inter-process channel the moment it arrives, so the training loop's
``get()`` finds it ready. Here the thread receives only small descriptors and
rebuilds items as views of shared memory, so it holds the GIL for microseconds
per item instead of unpickling every byte.

The thread waits in ``poll()`` on two descriptors: the queue's pipe and a private
wake-up pipe that ``stop()`` writes to, so stopping never waits for a timeout.
"""

from __future__ import annotations

import os
import queue
import select
import struct
import threading
from typing import Callable

from ..errors import ProducersGone, QueueClosed

__all__ = ["Stealer", "WatchedFdReady"]


class _Failed:
    """An item whose rebuild raised; ``get()`` re-raises the error in the caller."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class WatchedFdReady(Exception):
    """Raised by ``take()``: a descriptor passed as ``watch`` became readable (e.g. a process
    sentinel: that process has exited). Items buffered before it were handed out first."""

    def __init__(self, fd: int) -> None:
        super().__init__(f"watched descriptor {fd} is readable")
        self.fd = fd


class _Done:
    """Queued after the last item: the error every later ``take()`` raises."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


_READ_SIZE = 1 << 16
# multiprocessing.Connection's frame: a 4-byte big-endian signed length, then the bytes.
# Also the writers' (queue.put, pool.publish): one definition for both ends.
FRAME = struct.Struct(">i")
_BIG = 1 << 20  # a message at least this large is read straight into its own buffer


def _split_frames(fd: int, pending: bytearray) -> list:
    """Read once from ``fd``; return the whole messages now in ``pending``.

    The frames are ``multiprocessing.Connection``'s: a 4-byte big-endian signed
    length (-1, then an 8-byte length, for messages over 2 GiB) and the bytes.
    One ``read`` usually returns one or more whole descriptors, where
    ``Connection.recv_bytes`` needs two reads per message. A large message (the
    pipe fallback) is read into a buffer of its own size, without re-copying.

    Raises:
        EOFError: the pipe's write ends are all closed.
    """
    chunk = os.read(fd, _READ_SIZE)
    if not chunk:
        raise EOFError
    if not pending:  # the usual case: whole small messages, sliced out of the chunk uncopied
        out, pos, end = [], 0, len(chunk)
        while end - pos >= 4:
            size = FRAME.unpack_from(chunk, pos)[0]
            if size < 0 or end - pos - 4 < size:
                break
            out.append(memoryview(chunk)[pos + 4:pos + 4 + size])
            pos += 4 + size
        if pos == end:
            return out
        pending += chunk[pos:]  # a message split across reads, or a large one: below
        return out + _split_pending(fd, pending)
    pending += chunk
    return _split_pending(fd, pending)


def _split_pending(fd: int, pending: bytearray) -> list:
    """The whole messages in ``pending`` (removed from it); reads the rest of a large one."""
    out = []
    while len(pending) >= 4:
        size = int.from_bytes(pending[:4], "big", signed=True)
        head = 4
        if size == -1:
            if len(pending) < 12:
                break
            size, head = int.from_bytes(pending[4:12], "big"), 12
        if len(pending) - head < size:
            if size < _BIG:
                break
            msg = bytearray(size)  # read the rest in place
            have = len(pending) - head
            msg[:have] = pending[head:]
            view = memoryview(msg)
            while have < size:
                n = os.readv(fd, [view[have:]])
                if n == 0:
                    raise EOFError
                have += n
            del pending[:]
            out.append(msg)
            break
        out.append(bytes(pending[head:head + size]))
        del pending[:head + size]
    return out


class Stealer:
    """Receives messages on ``reader`` in a named daemon thread and buffers rebuilt items.

    The buffer is bounded by the producers, not here: the queue's ``maxsize``
    semaphore is taken by ``put()`` and given back only when ``take()`` hands the
    item to the caller.

    Args:
        reader: the receiving ``multiprocessing.connection.Connection``.
        rebuild: turns one received message (bytes) into the item.
        name: the thread's name, visible in ``py-spy dump``.
    """

    def __init__(self, reader, rebuild: Callable[[bytes], object], name: str = "fmq-stealer",
                 watch: tuple[int, ...] = ()) -> None:
        self._reader = reader
        self._rebuild = rebuild
        self._watch = tuple(watch)
        # SimpleQueue: put/get in C, so handing an item to a blocked get() costs one
        # lock release instead of a Python-level Condition round trip.
        self._items: queue.SimpleQueue = queue.SimpleQueue()
        self._done: _Done | None = None
        self._stop_requested = False
        self._wake_r, self._wake_w = os.pipe()
        # daemon: a non-daemon thread would be joined before exit handlers could stop it
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        fd = self._reader.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        watched = set(self._watch)
        for other in watched:
            poller.register(other, select.POLLIN)
        items, rebuild = self._items, self._rebuild
        pending = bytearray()  # bytes read but not yet a whole message
        try:
            while not self._stop_requested:
                events = poller.poll()
                if self._stop_requested or any(fd == self._wake_r for fd, _ in events):
                    return
                if len(events) > 1 or events[0][0] != fd:
                    for ready, _ in events:
                        if ready in watched:  # reported once, after what came before it
                            watched.discard(ready)
                            poller.unregister(ready)
                            items.put(_Failed(WatchedFdReady(ready)))
                    if not any(ready == fd for ready, _ in events):
                        continue
                # One read takes every small message already in the pipe.
                for msg in _split_frames(fd, pending):
                    try:
                        item = rebuild(msg)
                    except Exception as exc:  # delivered to the caller of get(), in order
                        item = _Failed(exc)
                    items.put(item)
                    # Not kept while poll() waits: the caller's drop of the item must
                    # free its slab, not the arrival of the next message.
                    item = None
        except (EOFError, OSError) as exc:
            if not self._stop_requested:
                self._end(ProducersGone(
                    f"the queue's pipe closed ({type(exc).__name__}): every process that "
                    "could put() has exited; no more items will arrive"))

    def _end(self, error: BaseException) -> None:
        self._done = _Done(error)
        self._items.put(self._done)

    def take(self, block: bool = True, timeout: float | None = None):
        """Pop the oldest item; ``queue.Empty`` when none came in time.

        Raises:
            queue.Empty: no item within ``timeout`` (or at once, with ``block=False``).
            QueueClosed: ``stop()`` was called.
            ProducersGone: the pipe reached end-of-file.
        """
        if self._done is not None and self._done.error.__class__ is QueueClosed:
            raise self._done.error
        # SimpleQueue.get raises queue.Empty itself; negative timeouts mean "now".
        item = self._items.get(block, None if timeout is None else max(0.0, timeout))
        if item.__class__ is _Done:
            self._items.put(item)  # every later take() sees it too
            raise item.error
        return item

    def __len__(self) -> int:
        return self._items.qsize()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and drop buffered items (their slabs return to the arena).

        Idempotent. Wakes any thread blocked in ``take()`` with ``QueueClosed``.
        """
        if self._stop_requested:
            return
        self._stop_requested = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)
        while True:  # drop buffered items: their slabs return to the arena
            try:
                self._items.get_nowait()
            except queue.Empty:
                break
        self._end(QueueClosed("get() on a closed Queue; create a new Queue to receive more items"))
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
