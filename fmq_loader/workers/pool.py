"""ProducerPool: start the worker processes, hand out tasks, watch liveness, shut down in order.

The pool owns the worker processes, one task pipe per worker, and the shared
result ``Queue`` (which owns the slab arena). ``close()`` follows NOTE
[ fmq shutdown order ] in loader.py: stop the reader (the queue's stealer)
first, then ask workers to stop, join them with a timeout, terminate and kill
stragglers, and finally close the queue's shared memory.

Longer than the ~400-line guide: ProducerPool (~390 lines) is one class that owns the
processes, the task board and the shutdown order; splitting it would scatter that state.
"""

from __future__ import annotations

import ast
import contextlib
import linecache
import logging
import os
import pickle
import signal
import sys
import threading
import time
import weakref
from typing import Any, Callable

# multiprocessing imports these on first use (Process.start, Value, Lock); import
# them with the package instead, so the first iter() does not pay for it.
from multiprocessing import (heap, popen_fork, popen_forkserver,  # noqa: F401
                             popen_spawn_posix, sharedctypes, synchronize)
from multiprocessing import process as mp_process

from ..errors import WorkerError
from ..transport.queue import Queue
from ..transport.stealer import FRAME as _FRAME
from .datapipes import world_and_rank
from .stats import WORKER_FIELDS, WorkerStats
from .worker import BUDGET, CONSUMED, MIN_SEQ, STOP, Reseed, Stop, Task, WorkerSpec, run_worker

__all__ = ["ProducerPool"]

logger = logging.getLogger(__name__)

_PROTOCOL = pickle.HIGHEST_PROTOCOL


# Every pool of this process. A worker forked by one pool inherits the descriptors of
# all the others (slabs, pipes); see ProducerPool.forget_inherited.
_LIVE_POOLS: "weakref.WeakSet[ProducerPool]" = weakref.WeakSet()


def _unpicklable(objects, method: str, error: BaseException) -> TypeError | None:
    """A worker could not be started because pickling its arguments failed with ``error``:
    the ``TypeError`` that names which object, or None when none of them fails alone.

    Only after a failed ``start()``: checking up front pickled the dataset once more on
    every ``iter()``, and plain pickle refused what a start may carry, such as a
    ``multiprocessing.Value`` (shared with a worker while it is being started).
    """
    for what, obj in objects:
        if obj is None:
            continue
        try:
            pickle.dumps(obj)
        except Exception as exc:
            if "through inheritance" in str(exc):  # a multiprocessing object: fine in a start
                continue
            return TypeError(
                f"{what} {_brief(obj)} cannot be pickled for a {method!r} worker "
                f"({type(exc).__name__}: {exc}). Functions and classes must be defined at module "
                "top level (not a lambda or a local function); an open file, lock, socket or "
                "handle cannot be sent to a worker: open it in worker_init_fn or on first use "
                "in the worker, or use multiprocessing_context='fork'")
    return None


def _brief(obj: Any) -> str:
    try:
        text = repr(obj)
    except Exception:
        text = f"<{type(obj).__qualname__} object>"
    return text if len(text) <= 120 else text[:117] + "..."


@contextlib.contextmanager
def _sigint_deferred():
    """Start a worker with SIGINT blocked from its first instruction; a Ctrl-C meanwhile
    reaches this process afterwards.

    Workers leave Ctrl-C to the main process (run_worker ignores SIGINT, then unblocks
    it), but a spawned worker gets there only once its imports are done; a Ctrl-C
    before that printed its own KeyboardInterrupt traceback. A blocked signal stays
    blocked across fork and exec, and stays pending until it is ignored, so blocking it
    around ``start()`` closes that window. In this process a SIGINT that comes meanwhile
    -- a spawn start that sends a large dataset takes seconds -- is only recorded (it
    may be delivered to another thread, whose handler call lands here), and raised once
    the start is over. (It used to be ignored, so that Ctrl-C was lost.) Only the main
    thread may change signal handlers; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # one still pending arrives now
        if caught:
            signal.raise_signal(signal.SIGINT)


def _widen_pipe(fd: int, size: int = 1 << 20) -> None:
    """Let the board's pipe hold ``size`` bytes (Linux; 64 KiB by default), best effort:
    tasks of up to ~300k indices then go out in one write. Larger ones still work
    (NOTE [ a task larger than the pipe ] in epoch.py)."""
    try:
        import fcntl

        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), size)
    except (OSError, ImportError):  # above /proc/sys/fs/pipe-max-size, or not Linux
        pass


def warm_pillow() -> None:
    """Under fork, load Pillow's image plugins once in the parent rather than in every worker.

    ``PIL.Image.open`` imports its plugins on first use: ~5 ms in each fresh
    worker, on its first image, so on the way to the first batch. Only when the
    program has imported Pillow already (its dataset uses it). ``FMQLoader``
    calls it when it is constructed (~7 ms, once), so ``iter()`` does not wait
    for it; here it is a no-op by then.
    """
    image = sys.modules.get("PIL.Image")
    if image is not None:
        try:
            image.preinit()
        except Exception:  # an unusual Pillow: the workers will do it themselves
            pass


# NOTE [ the main guard ]: a 'spawn' or 'forkserver' worker starts by running the main
# script again, as ``__mp_main__`` (to find what the dataset's pickle names), before it
# runs any of our code. A script that creates and iterates a loader at its top level,
# without ``if __name__ == "__main__":``, therefore starts a loader in every worker while
# that worker is still starting, which multiprocessing refuses; the worker exits with
# code 1. In the worker, start() says so itself (on stderr). The main process sees only
# the exit code, so it tells the case by its own script: the statement the script's top
# level is running lies outside any ``if __name__ ...`` block.
_BOOTSTRAP_ERROR = ("An attempt has been made to start a new process before the current "
                    "process has finished its bootstrapping phase")  # multiprocessing's words


def _top_level_line(main_name: str = "__main__") -> tuple[str, int, str] | None:
    """Where the top level of module ``main_name`` runs now, outside ``if __name__ ==
    "__main__":``: path, line number and text. None when it runs inside such a block (or
    a branch of one), its top level has finished, or there is no source to read."""
    frame = sys._getframe()
    while frame is not None and not (frame.f_code.co_name == "<module>"
                                     and frame.f_globals.get("__name__") == main_name):
        frame = frame.f_back
    if frame is None:
        return None
    path, line = frame.f_code.co_filename, frame.f_lineno
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
    except (OSError, SyntaxError, ValueError):
        return None
    for node in ast.walk(tree):
        if (isinstance(node, ast.If) and node.lineno <= line <= node.end_lineno
                and any(isinstance(n, ast.Name) and n.id == "__name__" for n in ast.walk(node.test))):
            return None  # the worker skips it (or, for another test of __name__, we cannot tell)
    return path, line, linecache.getline(path, line).strip()


def _unguarded_main_line() -> tuple[str, int, str] | None:
    """``_top_level_line()`` of the main script, where a worker would run it again; None for
    ``python -m pkg`` (a package's ``__main__``), -c, a REPL or a frozen program, which
    multiprocessing does not run again in its children (spawn._fixup_main_from_*)."""
    main = sys.modules.get("__main__")
    spec_name = getattr(getattr(main, "__spec__", None), "name", None)
    if (getattr(main, "__file__", None) is None or getattr(sys, "frozen", False)
            or (spec_name is not None and (spec_name == "__main__" or spec_name.endswith(".__main__")))):
        return None
    return _top_level_line()


_GUARD_ADVICE = ("put the script's top-level code under `if __name__ == \"__main__\":` (torch's "
                 "DataLoader needs it too), or use multiprocessing_context='fork'")

_REAP_S = 2.0  # longest wait for a worker whose sentinel is ready to become reapable


class ProducerPool:
    """Worker processes that load, transform and collate batches into shared memory.

    Args:
        dataset: the dataset each worker reads (pickled once per worker under
            spawn/forkserver; inherited under fork).
        num_workers: worker processes, >= 1.
        ctx: the multiprocessing context.
        max_outstanding: most batches in flight; sizes the slab arena
            (``max_outstanding + extra_slabs`` slabs, each as large as the largest batch).
        extra_slabs: slabs for batches the user still holds; beyond them batches
            travel through the pipe instead of blocking.
    """

    def __init__(self, dataset, num_workers: int, ctx, *, auto_collation: bool,
                 collate_fn: Callable | None, drop_last: bool, batch_size: int | None,
                 worker_init_fn: Callable | None, iterable: bool, max_outstanding: int,
                 extra_slabs: int = 4, start: bool = True) -> None:
        self.num_workers = num_workers
        self.budget = max_outstanding
        self.results = Queue(0, num_slabs=max_outstanding + extra_slabs, ctx=ctx)
        self._task_pipes = []
        self.workers = []
        self.exit_codes: dict[int, int] = {}  # pid -> exit code of each worker close() reaped
        self._closed = False
        # Map-style tasks go on one shared board that idle workers read; the
        # control words let the main process bound prefetching without a syscall.
        self._board_r, self._board_w = ctx.Pipe(duplex=False)
        self._board_fd = self._board_w.fileno()
        # Never block on the board: see flush(). Only this process writes to it.
        os.set_blocking(self._board_fd, False)
        _widen_pipe(self._board_fd)
        self._staged = bytearray()  # framed tasks not yet written (publish / flush)
        self.control = ctx.RawArray("q", 4)
        self.control[BUDGET] = max_outstanding
        # The same words as a memoryview: storing one costs a C call, not ctypes' __setitem__.
        self._words = memoryview(self.control).cast("B").cast("q")
        self.worker_stats = ctx.RawArray("d", WORKER_FIELDS * num_workers)  # see stats.py
        self.started_at: list[float] = []  # time.monotonic() at each worker's start
        self.pids: list[int] = []
        self.next_seq = 0  # sequence number of the next task published (main process only)
        self.consumed = 0  # batches handed to the user, mirrored in control[CONSUMED]
        self.ready: dict[int, Any] = {}  # results received, not yet handed out, by sequence number
        self.in_next = threading.Lock()  # held by the thread inside an epoch's next() (epoch.py)
        _LIVE_POOLS.add(self)
        try:
            if ctx.get_start_method() == "fork":
                warm_pillow()
            self._board_lock = ctx.Lock()
            self._ctx = ctx
            self._job = (dataset, auto_collation, collate_fn, drop_last, batch_size, worker_init_fn,
                         iterable)
            if start:
                self.start()
        except BaseException:
            self.close()
            raise

    def start(self, base_seed: int = 0) -> None:
        """Start the worker processes (once; a no-op after that), seeded as torch seeds its
        workers: ``base_seed + worker_id`` (the first epoch's base seed; seeding.py).

        The loader publishes a map-style epoch's first tasks before it calls this,
        so the first worker forked begins its first sample at once instead of
        waiting for the others to be forked (NOTE [ tasks before workers ] in
        loader.py). Each worker's own task pipe is made just before it is forked,
        so no worker inherits another's reading end; ``reseed`` and ``submit``
        (iterable datasets) need the workers started.
        """
        if self.workers or self._closed:
            return
        if getattr(mp_process.current_process(), "_inheriting", False):  # NOTE [ the main guard ]
            where = _top_level_line("__mp_main__")
            script = ("the main script" if where is None else
                      f"{where[0]!r} line {where[1]} ({where[2]!r})")
            raise RuntimeError(
                f"{_BOOTSTRAP_ERROR}: FMQLoader cannot start workers in "
                f"{mp_process.current_process().name}, a {self._ctx.get_start_method()!r} child "
                f"that is still starting up: it runs the main script again (as __mp_main__), "
                f"and {script} iterates a loader outside `if __name__ == \"__main__\":`; "
                + _GUARD_ADVICE)
        dataset, auto_collation, collate_fn, drop_last, batch_size, worker_init_fn, iterable = self._job
        try:
            for wid in range(self.num_workers):
                reader, writer = self._ctx.Pipe(duplex=False)
                self._task_pipes.append(writer)
                spec = WorkerSpec(wid, self.num_workers, dataset, auto_collation, collate_fn,
                                  drop_last, batch_size, worker_init_fn, reader,
                                  self.results, iterable, None if iterable else self._board_r,
                                  self._board_lock, self.control, self.worker_stats, base_seed,
                                  *world_and_rank(),
                                  forget_inherited=ProducerPool.forget_inherited)
                proc = self._ctx.Process(target=run_worker, args=(spec,), name=f"fmq-worker-{wid}",
                                         daemon=True)
                # A Ctrl-C during the start is raised when the block ends: by then the
                # worker is registered, so the close() below stops it.
                with _sigint_deferred():
                    try:
                        proc.start()
                    except (TypeError, AttributeError, pickle.PicklingError) as exc:
                        named = _unpicklable((("dataset", dataset), ("collate_fn", collate_fn),
                                              ("worker_init_fn", worker_init_fn)),
                                             self._ctx.get_start_method(), exc)
                        if named is None:
                            raise
                        raise named from exc
                    finally:
                        reader.close()  # the worker holds the only reading end of its pipe
                    self.started_at.append(time.monotonic())
                    self.pids.append(proc.pid)
                    self.workers.append(proc)
            self._job = None  # it holds the dataset; the workers have their copies
            # The stealer watches the workers' sentinels: get() reports an exit at once.
            self.results.watch([proc.sentinel for proc in self.workers])
            self.flush()  # what did not fit on the board before the workers were there
        except BaseException:
            self.close()
            raise

    def reseed(self, base_seed: int, epoch: int | None = None,
               shared_seed: int | None = None) -> None:
        """Start an epoch in every worker: seed ``base_seed + worker_id``; ``epoch`` for
        set_epoch; ``shared_seed`` for an IterDataPipe's random pipes (datapipes.py)."""
        message = pickle.dumps(Reseed(base_seed, epoch, shared_seed), _PROTOCOL)
        for wid in range(len(self._task_pipes)):
            self._send(wid, message)

    def _send(self, worker_id: int, message: bytes) -> None:
        """Write to one worker's task pipe; a worker that is gone raises ``WorkerError``
        (pid and signal, as ``check_alive``), not the pipe's ``BrokenPipeError``."""
        try:
            self._task_pipes[worker_id].send_bytes(message)
        except OSError as exc:  # BrokenPipeError: its reading end closed with the process
            proc = self.workers[worker_id] if worker_id < len(self.workers) else None
            if proc is not None:
                self.check_alive(exiting=proc.sentinel)
            raise WorkerError(f"worker {worker_id} (pid {getattr(proc, 'pid', '?')}) no longer "
                              f"reads its tasks ({type(exc).__name__}: {exc}); it has stopped",
                              worker_id=worker_id, pid=getattr(proc, "pid", None)) from exc

    def publish(self, base_seed: int, position: int, indices, epoch: int | None = None,
                room: int = 0) -> int:
        """Stage one map-style task for the shared board; return its sequence number.

        ``room``: build the batch in a slab with rows for ``room`` samples, this task's
        first (NOTE [ the join in part 0's slab ] in epoch.py); 0 for the usual.

        ``flush()`` writes the staged tasks: several tasks cost one ``write``.
        Each is framed as ``Connection.send_bytes`` frames it (4-byte big-endian
        length, then the pickle), so workers read them with ``recv_bytes``.
        """
        seq = self.next_seq
        self.next_seq += 1
        body = pickle.dumps((seq, base_seed, position, indices, epoch, room), _PROTOCOL)
        self._staged += _FRAME.pack(len(body))
        self._staged += body
        return seq

    def flush(self) -> int:
        """Write staged tasks to the board, as many bytes as the pipe takes now; never blocks.
        Returns the number of bytes written.

        NOTE [ the board never blocks ]: workers hold at most one task each, and a task
        they may not start yet (beyond the prefetch bound) keeps them from reading
        more; so with large tasks (thousands of indices) the pipe can fill up while
        every worker waits for ``next()``. A blocking write there deadlocked (batch
        4096, shuffled, 2 workers). What does not fit stays staged and goes out at a
        later ``flush()``: ``top_up()`` tries before every wait, and the task a wait
        needs is never behind staged bytes (the pipe holds the tasks before them, in
        order), save the tail of a task larger than the pipe: a waiting ``next()``
        keeps writing that (NOTE [ a task larger than the pipe ] in epoch.py). Before the workers start (NOTE [ tasks before workers ]) nobody reads
        the board at all; ``start()`` flushes once they run.
        """
        staged = self._staged
        written = 0
        while staged:
            try:
                n = os.write(self._board_fd, staged)
            except BlockingIOError:
                break
            del staged[:n]
            written += n
        return written

    @staticmethod
    def forget_inherited(own_results) -> None:
        """In a forked worker: close this process's copies of every other pool's descriptors
        and mappings.

        A loader's workers forked while another loader was alive inherited its slabs
        and pipes, and kept that loader's shared memory (hundreds of MB) alive after
        its close(), until they exited themselves. The worker uses none of them. What
        stays: the mappings of batches the parent held or had buffered when it forked
        (their views came along), at most that loader's prefetch.
        ``own_results``: the queue of the pool this worker belongs to.
        """
        for pool in list(_LIVE_POOLS):
            if pool.results is own_results or pool._closed:
                continue
            pool._closed = True  # nothing in this process may use it
            for conn in [*pool._task_pipes, pool._board_r, pool._board_w]:
                try:
                    conn.close()
                except OSError:
                    pass
            pool.results.release_shared_memory()

    def handles(self) -> list["WorkerProcess"]:
        """The workers as ``WorkerProcess`` objects (what an iterator's ``_workers`` gives)."""
        return [WorkerProcess(self, proc, pid) for proc, pid in zip(self.workers, self.pids)]

    @property
    def closed(self) -> bool:
        """close() was called."""
        return self._closed

    @property
    def running(self) -> bool:
        """The workers were started and the pool is not closed."""
        return bool(self.workers) and not self._closed

    def has_staged(self) -> bool:
        """Tasks published but not yet written to the board (flush() will)."""
        return bool(self._staged)

    def set_bound(self, budget: int | None = None) -> None:
        """Workers may start a task only while ``seq < consumed + budget``; None: the pool's own
        ``budget`` (prefetch_factor x num_workers). See NOTE [ a core for the first join ]."""
        self._words[BUDGET] = self.budget if budget is None else budget

    def mark_consumed(self, n: int = 1) -> None:
        """``n`` more tasks were handed to the user: workers may start ``n`` more."""
        self.consumed += n
        self._words[CONSUMED] = self.consumed

    def skip_below(self, seq: int) -> None:
        """Drop every task numbered below ``seq`` (an epoch the user left early).

        Workers skip those still on the board; results already in flight are
        dropped as they arrive; the prefetch bound restarts at ``seq``.
        """
        self.control[MIN_SEQ] = seq
        self.consumed = max(self.consumed, seq)
        self.control[CONSUMED] = self.consumed
        for stale in [s for s in self.ready if s < seq]:
            del self.ready[stale]

    def submit(self, worker_id: int, task_id: int, indices) -> None:
        """Send one task to one worker.

        Plain ``pickle`` rather than ``Connection.send``: ForkingPickler copies its
        dispatch table (which torch fills with reducers) on every call, ~60 us.
        """
        self._send(worker_id, pickle.dumps(Task(task_id, indices), _PROTOCOL))

    def get(self, timeout: float):
        """One ``(task_id, worker_id, payload)`` result; ``queue.Empty`` after ``timeout``."""
        return self.results.get(True, timeout)

    def worker_stats_snapshot(self) -> tuple[list[WorkerStats], int]:
        """Per-worker figures read from the shared stats array, and total skipped files."""
        now, rows, skipped = time.monotonic(), [], 0
        table = self.worker_stats
        for wid, (pid, started) in enumerate(zip(self.pids, self.started_at)):
            busy, batches, samples, skip = table[wid * WORKER_FIELDS:(wid + 1) * WORKER_FIELDS]
            life = max(now - started, 1e-9)
            rows.append(WorkerStats(wid, pid, int(batches), int(samples), busy,
                                    min(1.0, busy / life), samples / life))
            skipped += int(skip)
        return rows, skipped

    def queue_depth(self) -> int:
        """Batches made and not yet handed out (received, in the pipe, or buffered)."""
        try:
            return len(self.ready) + self.results.qsize()
        except (OSError, ValueError):  # closed
            return len(self.ready)

    def check_alive(self, signals_only: bool = False, exiting: int | None = None) -> None:
        """Raise ``WorkerError`` if a worker has exited (signal named, OOM hint for SIGKILL).

        ``signals_only``: only a worker killed by a signal, or one that exited with a
        non-zero code, counts (it can have sent nothing). A worker that reports its own
        failure (worker_init_fn) sends it and returns, exit code 0, and its failure may
        still be in the pipe.
        ``exiting``: the sentinel of a worker seen exiting. A dying process closes its
        descriptors (the sentinel reads as ready) before it becomes a zombie, so
        ``exitcode`` can still say None for a moment: that worker is reaped first
        (a bounded wait). Missing that moment would leave a worker killed before it
        took a task unreported while the others keep the loop fed.
        """
        for proc in self.workers if exiting is not None else ():
            if proc.sentinel == exiting:
                deadline = time.monotonic() + _REAP_S
                while proc.exitcode is None and time.monotonic() < deadline:  # never blocks
                    time.sleep(0.001)
        for wid, proc in enumerate(self.workers):
            code = proc.exitcode
            if code is None or (signals_only and code == 0):
                continue
            if code < 0:
                try:
                    name = signal.Signals(-code).name
                except ValueError:
                    name = f"signal {-code}"
                hint = ("SIGKILL is often the Linux OOM killer: check `dmesg`, or lower "
                        "num_workers / batch_size" if -code == signal.SIGKILL else
                        "a crash in native code (decoder, extension); run with num_workers=0 "
                        "to see it in the main process" if -code == signal.SIGSEGV else
                        "something outside the loader sent it")
                # torch's wording first, so that code and searches matching it still work
                msg = (f"DataLoader worker (pid {proc.pid}) is killed by signal: "
                       f"{signal.strsignal(-code) or name}. fmq worker {wid} exited with {name}; "
                       f"{hint}")
            else:
                msg = (f"DataLoader worker (pid {proc.pid}) exited unexpectedly: fmq worker {wid} "
                       f"exited with exit code {code}: ")
                method = self._ctx.get_start_method()
                unguarded = _unguarded_main_line() if method != "fork" and code == 1 else None
                if unguarded is not None:  # NOTE [ the main guard ]
                    path, line, text = unguarded
                    msg += (f"a {method!r} worker first runs the main script again (as "
                            f"__mp_main__), and {path!r} line {line} ({text!r}) runs outside "
                            "`if __name__ == \"__main__\":`, so the worker tried to start workers "
                            "of its own (its error is on stderr above); " + _GUARD_ADVICE)
                else:
                    msg += ("a call to sys.exit() or os._exit() in the dataset or worker_init_fn, "
                            "or an error outside them (such as a 'spawn' worker failing to unpickle "
                            "the dataset: its traceback is on stderr above)")
            raise WorkerError(msg, worker_id=wid, pid=proc.pid)

    def close(self, timeout: float = 1.0) -> None:
        """Stop everything; idempotent. See NOTE [ fmq shutdown order ] in loader.py.

        Workers stop between two samples once STOP is set (worker.stop_check); one
        still busy after ``timeout`` (a sample that takes seconds, or hangs) is
        terminated, quietly: an early break, an error or Ctrl-C prints nothing.
        """
        if self._closed:
            return
        self._closed = True
        joined = False
        try:
            self.results.close()  # (2) stop the reader first
            self.control[STOP] = 1
            for pipe in self._task_pipes:  # (3) ask workers to stop
                try:
                    pipe.send_bytes(pickle.dumps(Stop(), _PROTOCOL))
                except (OSError, ValueError):
                    pass
            deadline = time.monotonic() + timeout
            if self.workers:
                self._complete_partial_task(deadline)
            for proc in self.workers:  # (4) join with a bound
                proc.join(max(0.0, deadline - time.monotonic()))
            joined = True
        finally:
            for proc in self.workers:
                if proc.is_alive():
                    if joined:  # (not when close() itself was interrupted: a second Ctrl-C)
                        logger.info("fmq worker %s (pid %s) was still in a sample after %.1f s; "
                                    "terminating it", proc.name, proc.pid, timeout)
                    proc.terminate()
                    proc.join(1.0)
                if proc.is_alive():
                    proc.kill()
                    proc.join(1.0)
                if proc.exitcode is not None:
                    self.exit_codes[proc.pid] = proc.exitcode  # (WorkerProcess reads it)
                    proc.close()
            for pipe in [*self._task_pipes, self._board_r, self._board_w]:
                pipe.close()
            self.results.release_shared_memory()  # (6) live views keep their memory

    def _complete_partial_task(self, deadline: float) -> None:
        """In close(): a worker may be blocked inside ``recv_bytes`` on a task that was only
        partly written (NOTE [ a task larger than the pipe ] in epoch.py); it sees STOP once
        it has the whole task. Write on while writes go through, up to 20 ms without one,
        and never past ``deadline``. (It waited the whole grace, then SIGTERM: 1 s.)"""
        idle_since = None
        while self._staged and time.monotonic() < deadline:
            if self.flush():
                idle_since = None
                continue
            now = time.monotonic()
            if idle_since is None:
                idle_since = now
            elif now - idle_since > 0.02:
                return
            time.sleep(0.001)


class WorkerProcess:
    """One worker as torch's iterator's ``_workers`` hands it out: ``multiprocessing.Process``'s
    ``pid``, ``name``, ``exitcode``, ``is_alive()``, ``join()``, ``terminate()`` and ``kill()``,
    still answering after the pool's ``close()`` reaped and closed the process (a closed
    ``Process`` raises "process object is closed" on all of them; code written for torch
    joins its workers after the iterator is gone)."""

    def __init__(self, pool: ProducerPool, proc, pid: int) -> None:
        self._pool, self._proc = pool, proc
        self.pid, self.name = pid, proc.name  # (a closed Process raises on .pid)

    def _reaped(self) -> bool:
        return self.pid in self._pool.exit_codes

    @property
    def exitcode(self) -> int | None:
        return self._pool.exit_codes[self.pid] if self._reaped() else self._proc.exitcode

    def is_alive(self) -> bool:
        return not self._reaped() and self._proc.is_alive()

    def join(self, timeout: float | None = None) -> None:
        if not self._reaped():
            self._proc.join(timeout)

    def terminate(self) -> None:
        if not self._reaped():
            self._proc.terminate()

    def kill(self) -> None:
        if not self._reaped():
            self._proc.kill()

    def __repr__(self) -> str:
        return f"<WorkerProcess {self.name} pid={self.pid} exitcode={self.exitcode}>"
