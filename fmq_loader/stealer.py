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

import collections
import os
import select
import threading
import time
from typing import Callable

from .errors import ProducersGone, QueueClosed

__all__ = ["Stealer"]


class _Failed:
    """An item whose rebuild raised; ``get()`` re-raises the error in the caller."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


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

    def __init__(self, reader, rebuild: Callable[[bytes], object], name: str = "fmq-stealer") -> None:
        self._reader = reader
        self._rebuild = rebuild
        self._items: collections.deque = collections.deque()
        self._cond = threading.Condition(threading.Lock())
        self._gone: BaseException | None = None
        self._stop_requested = False
        self._wake_r, self._wake_w = os.pipe()
        # daemon: a non-daemon thread would be joined before exit handlers could stop it
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._reader.fileno(), select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        try:
            while not self._stop_requested:
                events = poller.poll()
                if self._stop_requested or any(fd == self._wake_r for fd, _ in events):
                    return
                msg = self._reader.recv_bytes()
                try:
                    item = self._rebuild(msg)
                except Exception as exc:  # delivered to the caller of get(), in order
                    item = _Failed(exc)
                with self._cond:
                    self._items.append(item)
                    self._cond.notify()
        except (EOFError, OSError) as exc:
            if not self._stop_requested:
                with self._cond:
                    self._gone = ProducersGone(
                        f"the queue's pipe closed ({type(exc).__name__}): every process that "
                        "could put() has exited; no more items will arrive")
                    self._cond.notify_all()

    def take(self, block: bool = True, timeout: float | None = None):
        """Pop the oldest item; ``queue.Empty`` when none came in time.

        Raises:
            queue.Empty: no item within ``timeout`` (or at once, with ``block=False``).
            QueueClosed: ``stop()`` was called.
            ProducersGone: the pipe reached end-of-file.
        """
        import queue

        items = self._items
        try:
            return items.popleft()  # fast path: deque.popleft is atomic
        except IndexError:
            pass
        if not block:
            self._raise_if_done()
            raise queue.Empty
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        with self._cond:
            while not items:
                self._raise_if_done()
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise queue.Empty
                self._cond.wait(remaining)
            return items.popleft()

    def _raise_if_done(self) -> None:
        if self._stop_requested:
            raise QueueClosed("get() on a closed Queue; create a new Queue to receive more items")
        if self._gone is not None:
            raise self._gone

    def __len__(self) -> int:
        return len(self._items)

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
        with self._cond:
            self._items.clear()
            self._cond.notify_all()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
