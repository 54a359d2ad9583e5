"""Shared-memory slabs: a fixed set of reusable memfd slabs, claimed and released across processes.

Each slab is an anonymous ``memfd`` (Linux ``memfd_create``): it has no name in
``/dev/shm`` at all, so no exit path -- not even SIGKILL of every process -- can
leave a segment behind; the kernel frees the memory when the last descriptor and
mapping are gone. Child processes receive the descriptors when the arena is
pickled for them by ``multiprocessing`` (fork inherits them; spawn and
forkserver get them through ``multiprocessing.reduction.DupFd``).

A slab is empty when created and grows to the largest item ever laid into it,
rounded up to ``GROW_STEP_BYTES``; it never shrinks, so a mapping made earlier
stays valid. Growing reserves the pages at once (``posix_fallocate``) after
checking that the whole arena would fit in the memory left (``MemAvailable``,
and the cgroup limit if any): memfd pages come from RAM, not from /dev/shm, so
"/dev/shm full -> bus error" becomes "memory short -> ``BatchTooLarge`` on the
first batch", naming the bytes needed, the bytes available and what to lower. Writing into pages touched before costs no page
fault, which is where the speed comes from (DESIGN.md: "Reuse memory").

Control block (one more memfd, ``2 * num_slabs`` int64 words)::

    word i              state of slab i: 0 free, 1 claimed by a producer or held by views
    word num_slabs + i  size in bytes of slab i (written only by the claimer)

Claim/release protocol: ``free_slabs`` (a semaphore) counts free slabs; a
producer takes one count without blocking, then, under ``lock``, flips the first
free state word to 1. The consumer flips it back to 0 and releases the
semaphore once the last view of the item laid in it has been garbage-collected
(see ``Lease``).
"""

from __future__ import annotations

import _thread
import errno
import functools
import mmap
import os
import sys
import threading
import weakref
from multiprocessing import context as mp_context
from multiprocessing import reduction

import numpy as np

from ..errors import BatchTooLarge

__all__ = ["SlabArena", "GROW_STEP_BYTES", "available_memory"]

GROW_STEP_BYTES = 1 << 20  # slabs grow in 1 MiB steps
ALIGN_BYTES = 64  # each buffer in a slab starts on a cache line


def align(n: int) -> int:
    """Round ``n`` up to the buffer alignment."""
    return (n + ALIGN_BYTES - 1) & ~(ALIGN_BYTES - 1)


class SlabArena:
    """A fixed number of reusable shared-memory slabs.

    Created in the process that owns the queue; handed to children by pickling
    (only while spawning them, like every ``multiprocessing`` primitive).

    Args:
        num_slabs: how many slabs exist; bounds how many items can sit in shared
            memory at once (in flight plus held by the consumer).
        ctx: the multiprocessing context whose lock and semaphore to use.
    """

    def __init__(self, num_slabs: int, ctx) -> None:
        if not isinstance(num_slabs, int) or isinstance(num_slabs, bool) or num_slabs < 1:
            raise ValueError(f"num_slabs must be an int >= 1, got {num_slabs!r}")
        self.num_slabs = num_slabs
        self._lock = ctx.Lock()
        self._free_slabs = ctx.Semaphore(num_slabs)
        self._fds: list[int] = []
        try:
            tag = f"fmq_{os.getpid()}"
            self._ctrl_fd = os.memfd_create(f"{tag}_ctrl", os.MFD_CLOEXEC)
            os.ftruncate(self._ctrl_fd, 16 * num_slabs)
            for i in range(num_slabs):
                self._fds.append(os.memfd_create(f"{tag}_{i}", os.MFD_CLOEXEC))
        except BaseException:
            self._close_fds()
            raise
        self._init_local()

    def _init_local(self) -> None:
        self._pid = os.getpid()
        self._ctrl = mmap.mmap(self._ctrl_fd, 16 * self.num_slabs)
        words = np.frombuffer(self._ctrl, dtype=np.int64)
        self._state = words[: self.num_slabs]
        # The same words as a memoryview, for the per-batch paths (lease, release):
        # indexing it yields a plain int, where numpy builds a scalar object.
        self._state_words = memoryview(self._ctrl).cast("q")
        self._sizes = words[self.num_slabs :]
        self._maps: dict[int, tuple[mmap.mmap, int]] = {}
        self._leased: set[int] = set()  # slabs this process (the consumer) holds views of
        self.pipe_items = 0  # consumer: items that came through the pipe, every slab being held
        self._lease_refs: dict[int, weakref.ref] = {}  # slab -> weakref to its lease token
        me = weakref.ref(self)  # made once: lease() runs once per batch
        self._lease_ended = [functools.partial(_lease_ended, me, slab) for slab in range(self.num_slabs)]
        self._closed = False

    # -- pickling: only while spawning a child, like multiprocessing's own objects
    def __getstate__(self):
        mp_context.assert_spawning(self)
        return {
            "num_slabs": self.num_slabs,
            "lock": self._lock,
            "free_slabs": self._free_slabs,
            "ctrl": reduction.DupFd(self._ctrl_fd),
            "fds": [reduction.DupFd(fd) for fd in self._fds],
        }

    def __setstate__(self, state) -> None:
        self.num_slabs = state["num_slabs"]
        self._lock = state["lock"]
        self._free_slabs = state["free_slabs"]
        self._ctrl_fd = state["ctrl"].detach()
        self._fds = [d.detach() for d in state["fds"]]
        self._init_local()

    def after_fork(self) -> None:
        """Drop this process's mappings inherited from the parent (fork)."""
        if self._pid != os.getpid() and not self._closed:
            self._init_local()

    # -- producer side
    def claim(self, nbytes: int) -> int | None:
        """Claim a free slab of at least ``nbytes``; None when every slab is taken.

        Never blocks: a producer that finds no free slab sends the item through the
        pipe instead, so a consumer that keeps every item it got cannot deadlock
        its producers.
        """
        if not self._free_slabs.acquire(False):
            return None
        with self._lock:
            free = np.flatnonzero(self._state == 0)
            if free.size == 0:  # only if a process died between the two steps
                self._free_slabs.release()
                return None
            slab = int(free[0])
            self._state[slab] = 1
        try:
            if self._sizes[slab] < nbytes:
                self._grow(slab, -(-nbytes // GROW_STEP_BYTES) * GROW_STEP_BYTES, nbytes)
        except BaseException:
            self.release(slab)
            raise
        return slab

    def _grow(self, slab: int, size: int, nbytes: int) -> None:
        """Grow ``slab`` to ``size`` bytes, with its pages reserved now.

        Checked first against the memory this process may still use: the whole
        arena (every slab as large as the largest item, the bound the
        configuration allows) must fit, so a too-large configuration fails on
        its first batch with ``BatchTooLarge`` rather than later. Then the pages
        are reserved with ``posix_fallocate``: a failure is a clean ENOMEM/ENOSPC
        here, not a SIGBUS when the producer writes into a page that cannot be had.
        """
        old = int(self._sizes[slab])
        current = int(self._sizes.sum())
        arena = self.num_slabs * max(size, int(self._sizes.max()))
        free, where = available_memory()
        if free is not None and max(size - old, arena - current) > free:
            raise BatchTooLarge(_budget_message(nbytes, size - old, arena, current, free, where,
                                                self.num_slabs))
        try:
            os.posix_fallocate(self._fds[slab], 0, size)
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                os.ftruncate(self._fds[slab], size)  # no reservation possible: sparse as before
            else:
                raise BatchTooLarge(_budget_message(nbytes, size - old, arena, current, free, where,
                                                    self.num_slabs, exc)) from exc
        self._sizes[slab] = size

    def writable(self, slab: int) -> memoryview:
        """A writable byte view of the whole of ``slab`` in this process."""
        return memoryview(self._mapping(slab, int(self._sizes[slab])))

    def release(self, slab: int) -> None:
        """Return ``slab`` to the free set (idempotent per claim)."""
        if self._closed or self._state_words[slab] == 0:
            return
        self._state_words[slab] = 0
        self._free_slabs.release()

    # -- consumer side
    def lease(self, slab: int, end: int) -> np.ndarray:
        """A uint8 array over bytes ``[0, end)`` of ``slab`` that owns the claim.

        The slab is released when this array and every array or tensor built on
        it (through the buffer protocol) have been garbage-collected.

        Raises:
            ValueError: ``slab`` or ``end`` lie outside the arena (a corrupt descriptor).
        """
        if not 0 <= slab < self.num_slabs or end < 0:
            raise ValueError(f"descriptor names slab {slab} / end {end}, outside the arena of "
                             f"{self.num_slabs} slabs; the queue's pipe carried a corrupt message")
        if self._state_words[slab] != 1 or slab in self._leased:
            raise ValueError(f"descriptor names slab {slab}, which no producer claimed for it "
                             f"({'already held by an earlier item' if slab in self._leased else 'free'}); "
                             "the queue's pipe carried a corrupt or repeated message")
        mapping = self._mapping(slab, end)
        token = np.frombuffer(mapping, dtype=np.uint8, count=end)
        if sys.unraisablehook.__class__ is not _KeepInterrupts:  # NOTE [ Ctrl-C as a batch is freed ]
            sys.unraisablehook = _KeepInterrupts(sys.unraisablehook)
        self._leased.add(slab)
        # A plain weakref (kept here) is cheaper than weakref.finalize; its callback
        # runs when the token, and so every view of the slab, is gone.
        self._lease_refs[slab] = weakref.ref(token, self._lease_ended[slab])
        return token

    def _mapping(self, slab: int, end: int) -> mmap.mmap:
        cached = self._maps.get(slab)
        if cached is not None and cached[1] >= end:
            return cached[0]
        size = os.fstat(self._fds[slab]).st_size
        if end > size:
            raise ValueError(f"descriptor reaches byte {end:,} of slab {slab}, which holds "
                             f"{size:,} bytes; the queue's pipe carried a corrupt message")
        # MAP_POPULATE: the slab's pages (reserved by posix_fallocate) are mapped in one
        # call, not one page fault per 4 KiB on first touch -- about 3x cheaper, and paid
        # here once per slab instead of inside the first batch's copy.
        mapping = mmap.mmap(self._fds[slab], size, flags=_MAP_FLAGS)
        # An older, smaller mapping stays alive as long as views of it exist.
        self._maps[slab] = (mapping, size)
        return mapping

    def nbytes(self) -> int:
        """Bytes the slabs currently span (touched or not)."""
        return 0 if self._closed else int(self._sizes.sum())

    def close(self) -> None:
        """Close this process's descriptors; live views keep their mappings."""
        if self._closed:
            return
        self._closed = True
        for mapping, _ in self._maps.values():
            try:  # unmapped now, with the descriptor mmap keeps of its own
                mapping.close()
            except BufferError:  # a batch still views it: unmapped when that is gone
                pass
        self._maps.clear()
        self._state = self._sizes = None  # views of the control mapping: drop them first
        self._state_words.release()
        try:
            self._ctrl.close()
        except BufferError:  # a view of it is still referenced somewhere
            pass
        self._close_fds()

    def _close_fds(self) -> None:
        for fd in [*self._fds, getattr(self, "_ctrl_fd", None)]:
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._fds = []
        self._ctrl_fd = None


_NO_LIMIT = 1 << 60  # cgroup files write "max" (v2) or a huge number (v1) for no limit


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _cgroup_headroom() -> tuple[int, str] | None:
    """Bytes left under this process's cgroup memory limit, or None without a limit."""
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # cgroup v2
            pairs = [(f"/sys/fs/cgroup{path.rstrip('/')}/memory.max",
                      f"/sys/fs/cgroup{path.rstrip('/')}/memory.current")]
        elif "memory" in controllers.split(","):  # cgroup v1 (the mount may show only our own group)
            pairs = [(f"/sys/fs/cgroup/memory{d}/memory.limit_in_bytes",
                      f"/sys/fs/cgroup/memory{d}/memory.usage_in_bytes")
                     for d in dict.fromkeys((path.rstrip("/"), ""))]
        else:
            continue
        for limit_path, usage_path in pairs:
            limit, usage = _read_int(limit_path), _read_int(usage_path)
            if limit is not None and usage is not None and limit < _NO_LIMIT:
                return max(0, limit - usage), f"cgroup limit {limit_path} minus usage"
    return None


def available_memory() -> tuple[int | None, str]:
    """Bytes this process can still get, and where the figure comes from.

    The smaller of ``MemAvailable`` in /proc/meminfo and the room left under a
    cgroup memory limit (v2 ``memory.max - memory.current``, v1
    ``memory.limit_in_bytes - memory.usage_in_bytes``). ``(None, reason)`` when
    neither can be read (not Linux).
    """
    best: tuple[int | None, str] = (None, "no /proc/meminfo")
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    best = (int(line.split()[1]) * 1024, "MemAvailable in /proc/meminfo")
                    break
    except (OSError, ValueError, IndexError):
        pass
    room = _cgroup_headroom()
    if room is not None and (best[0] is None or room[0] < best[0]):
        best = room
    return best


def _budget_message(nbytes: int, grow: int, arena: int, current: int, free: int | None,
                    where: str, num_slabs: int, exc: OSError | None = None) -> str:
    need = max(grow, arena - current)
    why = (f"the kernel refused to reserve {grow:,} more bytes ({exc.strerror})" if exc is not None
           else f"only {free:,} bytes are available ({where})")
    return (f"an item of {nbytes:,} bytes needs shared memory the machine cannot give: "
            f"{num_slabs} slabs of up to {max(arena // num_slabs, 1):,} bytes each is "
            f"{arena:,} bytes, {need:,} more than the {current:,} already reserved, but {why}. "
            "Lower batch_size (or the size of a sample), prefetch_factor or num_workers, or "
            "extra_slabs (FMQLoader) / num_slabs (Queue); or free memory / raise the cgroup limit")


_MAP_FLAGS = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)


def _lease_ended(arena_ref: weakref.ref, slab: int, _token_ref) -> None:
    _release_slab(arena_ref, slab)


def _release_slab(arena_ref: weakref.ref, slab: int) -> None:
    arena = arena_ref()
    if arena is not None:
        arena._leased.discard(slab)  # first: a producer may claim the slab the moment it is free
        try:
            arena.release(slab)
        except Exception:  # interpreter shutdown: the semaphore may already be gone
            pass


# NOTE [ Ctrl-C as a batch is freed ]: a slab goes back when its batch's last view is
# freed, by the weakref callback _lease_ended, which is Python code run in whichever
# thread dropped the batch: the training loop's. A Ctrl-C that arrives just before
# (its handler runs at the callback's first instruction) raises KeyboardInterrupt
# inside the callback, where Python cannot raise it: it prints "Exception ignored in:
# functools.partial(<function _lease_ended ...>)" and goes on. The Ctrl-C was lost
# and the slab stayed claimed; a script so interrupted ran on until it was killed
# (one exit-matrix case of 240: "still running 10 s after the signal"). No code of
# the callback can catch it (nothing of it runs), so this hook, which Python calls
# with the lost exception, does the callback's work and has the interrupt raised again
# in the main thread: from another thread, because one set here would be raised (and
# lost) inside this hook. Everything else goes to the hook that was there before.
# It is set at the first lease and again should someone replace it (pytest does).
class _KeepInterrupts:
    """``sys.unraisablehook`` while this process leases slabs; see the NOTE above."""

    def __init__(self, previous) -> None:
        self.previous = previous

    def __call__(self, unraisable) -> None:
        callback = unraisable.object
        if callback.__class__ is functools.partial and callback.func is _lease_ended:
            _release_slab(*callback.args)  # what the callback did not get to do (idempotent)
            if unraisable.exc_type is not None and issubclass(unraisable.exc_type, KeyboardInterrupt):
                returned = threading.Event()
                try:
                    threading.Thread(target=_interrupt_main_after, args=(returned,),
                                     name="fmq-ctrl-c-again", daemon=True).start()
                except RuntimeError:  # interpreter shutdown: no thread now; say what happened
                    self.previous(unraisable)
                    return
                returned.set()  # the last call here: the interrupt must not land in this hook
                return
        self.previous(unraisable)


def _interrupt_main_after(returned: threading.Event) -> None:
    """Raise KeyboardInterrupt in the main thread (as Ctrl-C does) once ``returned`` is set."""
    returned.wait()
    _thread.interrupt_main()
