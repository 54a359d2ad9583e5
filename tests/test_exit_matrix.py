"""Exit matrix: every way a training script can end, in every loader configuration.

{map-style, iterable} x {1, 2 workers} x {fork, spawn, forkserver} x
{persistent, not} x {run to the end, break early, exception in the loop, worker
raises, worker SIGKILL, worker SIGSEGV, SIGINT to the main process, SIGTERM to
the main process, del without close(), interpreter exit holding an iterator}.

Each case runs tests/_exit_case.py in a new session (so the whole process tree
can be found, and killed, by session id) under a hard timeout, then checks:

- it ended within a bound (and within a bound of the signal, for the signal cases);
- no process of its session is left (workers, forkserver, resource tracker)
  a few seconds after it ended;
- nothing new of its own is in /dev/shm (fmq* entries, or its semaphores);
- stderr is empty, or holds exactly the expected error.

SIGTERM: Python's default is to die at once, without running any cleanup. What
the loader guarantees then: its workers see the parent's sentinel close and
exit; its slabs are memfds, which vanish with the last process holding them; the
multiprocessing resource tracker unlinks the semaphores that spawn/forkserver
named in /dev/shm (and says so on stderr: Python's warning, not ours).

A case that fails prints everything it has (pytest.fail with the whole text, never
cut): stdout, stderr and, for a case that hangs or leaves processes behind, the
Python stack of every thread of every process of its session (SIGUSR1 makes each
write them; see tests/_exit_case.py), taken before anything is killed.

A representative slice (one case of every kind in several configurations, each
dimension value covered) runs by default; the full product is ``slow``
(``make test-matrix``). Cases run three at a time: each waits mostly on
interpreter start-up and ``import torch``.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from _script_report import session_processes

pytest.importorskip("torch")

SCRIPT = str(Path(__file__).with_name("_exit_case.py"))
ROOT = str(Path(__file__).resolve().parent.parent)

STYLES = ("map", "iter")
WORKERS = (1, 2)
METHODS = ("fork", "spawn", "forkserver")
PERSISTENT = (False, True)
CASES = ("end", "break", "loop_raises", "worker_raises", "worker_sigkill", "worker_sigsegv",
         "sigint", "sigterm", "del", "exit_holding")

# The cases that signal the script once it reports "ready" (sigint_lost: a hang, for the
# test of the hang diagnostics; not in the matrix).
SIGNALS = {"sigint": signal.SIGINT, "sigterm": signal.SIGTERM, "sigint_lost": signal.SIGINT}

RUN_BOUND_S = 90  # the whole script, start-up included, on a loaded 2-core machine
SIGNAL_BOUND_S = 10  # from the signal (or the last report) to the script's exit
GONE_BOUND_S = 10  # from the script's exit to the last process of its session


def _full() -> list[tuple]:
    return list(itertools.product(STYLES, WORKERS, METHODS, PERSISTENT, CASES))


def _slice() -> list[tuple]:
    """Every case three times: fork with 2 workers, map-style and iterable, persistent
    and not; spawn/forkserver with 1 worker, rotating over style and persistence
    (a spawned worker costs an interpreter start and ``import torch``; 2 spawned
    workers per case are left to the full matrix)."""
    rotate = [("map", 1, "spawn", True), ("iter", 1, "forkserver", False),
              ("iter", 1, "spawn", False), ("map", 1, "forkserver", True)]
    out = []
    for i, case in enumerate(CASES):
        out.append(("map", 2, "fork", bool(i % 2), case))
        out.append(("iter", 2, "fork", not i % 2, case))
        out.append((*rotate[i % 4], case))
    return out


def _case_id(case: tuple) -> str:
    style, workers, method, persistent, what = case
    return f"{style}-{workers}w-{method}-{'persistent' if persistent else 'transient'}-{what}"


# -- running a case --------------------------------------------------------------
class Run:
    def __init__(self, case):
        self.case = case
        self.returncode = None
        self.stdout = self.stderr = ""
        self.elapsed_s = 0.0
        self.signal_to_exit_s = None
        self.leftover: list[str] = []
        self.shm_left: list[str] = []
        self.failure = None
        self.stacks: list[str] = []  # Python stacks of a hung case's processes (dump_stacks)

    @property
    def reports(self) -> dict:
        out: dict = {"sem": []}
        for line in self.stdout.splitlines():
            tag, _, value = line.partition(" ")
            try:
                value = json.loads(value)
            except ValueError:
                continue
            if tag == "sem":
                out["sem"].append(value)
            else:
                out[tag] = value
        return out

    def __repr__(self) -> str:
        text = (f"{_case_id(self.case)}: rc={self.returncode} after {self.elapsed_s:.1f} s, "
                f"signal->exit {self.signal_to_exit_s}, left {self.leftover}, shm {self.shm_left}, "
                f"failure {self.failure}\n--- stdout\n{self.stdout}--- stderr\n{self.stderr}")
        for stacks in self.stacks:
            text += f"\n{stacks}"
        return text


def _kill_session(sid: int) -> None:
    for pid, _ in session_processes(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


STACKS_WAIT_S = 2.0  # how long one process gets to write its stacks


def _catches(pid: int, sig: int) -> bool:
    """Process ``pid`` has a handler for ``sig`` (its SigCgt mask in /proc)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            caught = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
    except (OSError, StopIteration, ValueError):
        return False
    return bool(caught >> (sig - 1) & 1)


def dump_stacks(sid: int, err: list[str], when: str) -> list[str]:
    """Have every process of session ``sid`` write its threads' Python stacks to stderr
    (SIGUSR1, registered with faulthandler by _exit_case.py), one process at a time, and
    return them, each under a line naming the process. ``err`` is the list the stderr
    reader appends to: what it gains after a process's signal is that process's dump.

    Only to processes that catch SIGUSR1: it would kill the others (the resource tracker and,
    on Python 3.11, the forkserver do not run _exit_case.py; nor does a process still starting).
    """
    out = []
    for pid, desc in session_processes(sid):
        if not _catches(pid, signal.SIGUSR1):
            out.append(f"--- stacks {when}: {desc}: not asked (it does not catch SIGUSR1)\n")
            continue
        start = len(err)
        try:
            os.kill(pid, signal.SIGUSR1)
        except ProcessLookupError:
            continue
        deadline = time.monotonic() + STACKS_WAIT_S
        seen, quiet_since = start, time.monotonic()
        while time.monotonic() < deadline:  # until its output has been quiet for 0.3 s
            time.sleep(0.05)
            if len(err) != seen:
                seen, quiet_since = len(err), time.monotonic()
            elif seen > start and time.monotonic() - quiet_since > 0.3:
                break
        end = len(err)  # (the reader only appends: what comes meanwhile stays in err)
        out.append(f"--- stacks {when}: {desc}\n" + ("".join(err[start:end]) or "(nothing written)\n"))
        del err[start:end]  # reported here, under the process's name, not again in stderr
    return out


def _shm() -> set[str]:
    return set(os.listdir("/dev/shm"))


def _default_sigint() -> None:
    # A shell running CI in the background may start us with SIGINT ignored, which the
    # script would inherit; Python installs KeyboardInterrupt only over SIG_DFL.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_case(case: tuple) -> Run:
    style, workers, method, persistent, what = case
    run = Run(case)
    before = _shm()
    start = time.monotonic()
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, SCRIPT, style, str(workers), method,
                             str(int(persistent)), what], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
                            preexec_fn=_default_sigint, start_new_session=True)
    lines: list[str] = []
    err: list[str] = []
    ready = threading.Event()

    def read_out():
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("ready "):
                ready.set()
        ready.set()  # the script ended without being ready: do not wait any more

    readers = [threading.Thread(target=read_out, daemon=True),
               threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True)]
    for t in readers:
        t.start()
    try:
        if what in SIGNALS:
            if not ready.wait(RUN_BOUND_S):
                run.failure = "never got its first batch"
            elif proc.poll() is None:
                sent = time.monotonic()
                proc.send_signal(SIGNALS[what])
                try:
                    proc.wait(SIGNAL_BOUND_S)
                    run.signal_to_exit_s = round(time.monotonic() - sent, 2)
                except subprocess.TimeoutExpired:
                    run.failure = f"still running {SIGNAL_BOUND_S} s after the signal"
                    run.stacks += dump_stacks(proc.pid, err, f"{SIGNAL_BOUND_S} s after the signal")
        proc.wait(max(1.0, RUN_BOUND_S - (time.monotonic() - start)))
    except subprocess.TimeoutExpired:
        run.failure = run.failure or f"still running after {RUN_BOUND_S} s"
        run.stacks += dump_stacks(proc.pid, err, f"at {time.monotonic() - start:.0f} s, before the kill")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        run.elapsed_s = time.monotonic() - start
        for t in readers:
            t.join(GONE_BOUND_S)
        run.returncode = proc.returncode
        run.stdout, run.stderr = "".join(lines), "".join(err)
        # every process of the session must be gone; kill what is left so nothing leaks on
        deadline = time.monotonic() + GONE_BOUND_S
        while session_processes(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        run.leftover = [d for _, d in session_processes(proc.pid)]
        if run.leftover:
            run.stacks += dump_stacks(proc.pid, err, f"{GONE_BOUND_S} s after the script ended")
            run.stderr = "".join(err)
        _kill_session(proc.pid)
        ours = {"sem." + n.lstrip("/") for n in run.reports["sem"]}
        deadline = time.monotonic() + GONE_BOUND_S
        while True:
            run.shm_left = sorted(n for n in _shm() - before if n.startswith("fmq") or n in ours)
            if not run.shm_left or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    return run


# -- expectations ----------------------------------------------------------------
RESOURCE_TRACKER_LINES = ("resource_tracker: There appear to be", "warnings.warn(")


def _only_resource_tracker_warnings(stderr: str) -> bool:
    """After SIGTERM under spawn/forkserver, Python's resource tracker unlinks the dead
    program's semaphores and warns about it; no other line is acceptable."""
    return all(any(m in line for m in RESOURCE_TRACKER_LINES) for line in stderr.splitlines()
               if line.strip())


def check(run: Run) -> None:
    """Fail with everything the run has: the reason first, then the whole of its output."""
    try:
        _expect(run)
    except AssertionError as exc:
        pytest.fail(f"{_case_id(run.case)}: {exc}\n\n{run!r}", pytrace=False)


def _expect(run: Run) -> None:
    style, workers, method, persistent, what = run.case
    r = run.reports
    assert run.failure is None, run.failure
    assert run.elapsed_s < RUN_BOUND_S, f"took {run.elapsed_s:.1f} s, over {RUN_BOUND_S} s"
    assert not run.leftover, f"processes of its session left {GONE_BOUND_S} s after it ended"
    assert not run.shm_left, f"left in /dev/shm: {run.shm_left}"
    assert len(r.get("workers", ())) == workers, f"reported workers {r.get('workers')}"
    if "after" in r:
        assert r["after"] == [], "workers alive after the case's own cleanup"
    if what in ("end", "break", "del", "exit_holding"):
        assert (run.returncode, run.stderr) == (0, "")
        if what == "end":
            assert r["batches"] == 8
    elif what == "loop_raises":
        assert run.returncode == 1
        assert run.stderr.count("Traceback") == 1
        assert run.stderr.rstrip().endswith("ValueError: boom in the training loop")
    elif what == "worker_raises":
        assert (run.returncode, run.stderr) == (0, "")
        error = r["error"]
        assert error is not None, "the epoch ended without the worker's KeyError"
        assert "KeyError" in error["types"]
        assert "Caught KeyError in worker " in error["message"] and "bad sample 13" in error["message"]
        if persistent:  # re-iterating either works or raises a clear error
            nxt = r["next_epoch"]
            assert isinstance(nxt, int) or "Caught KeyError in worker " in nxt["message"]
    elif what in ("worker_sigkill", "worker_sigsegv"):
        assert (run.returncode, run.stderr) == (0, "")
        error = r["error"]
        assert error is not None, "the loop ended normally after a worker was killed"
        assert "WorkerError" in error["types"] and "RuntimeError" in error["types"]
        sig = "SIGKILL" if what == "worker_sigkill" else "SIGSEGV"
        assert f"pid {r['victim']}" in error["message"] and sig in error["message"]
        if sig == "SIGKILL":
            assert "OOM killer" in error["message"]
    elif what == "sigint":
        assert run.returncode != 0
        assert run.stderr.count("Traceback") == 1
        assert run.stderr.rstrip().endswith("KeyboardInterrupt")
        assert run.signal_to_exit_s is not None and run.signal_to_exit_s < SIGNAL_BOUND_S
    elif what == "sigterm":
        assert run.returncode == -signal.SIGTERM
        if method == "fork":  # fork names no semaphore in /dev/shm: nothing to clean up
            assert run.stderr == ""
        else:
            assert _only_resource_tracker_warnings(run.stderr)
    else:  # pragma: no cover
        raise AssertionError(what)


# -- running the selected cases three at a time ----------------------------------
_futures: dict[tuple, concurrent.futures.Future] = {}
_pool = concurrent.futures.ThreadPoolExecutor(max_workers=3, thread_name_prefix="exit-matrix")


@pytest.fixture
def case_run(request):
    """Starts every selected matrix case at the first one's test; returns this test's run."""
    if not _futures:
        for item in request.session.items:
            spec = getattr(item, "callspec", None)
            if spec is not None and item.module is request.module:
                c = spec.params["case"]
                if c not in _futures:
                    _futures[c] = _pool.submit(run_case, c)
    case = request.node.callspec.params["case"]
    if case not in _futures:
        _futures[case] = _pool.submit(run_case, case)
    return _futures.pop(case).result()


@pytest.mark.parametrize("case", _slice(), ids=_case_id)
def test_exit(case, case_run):
    check(case_run)


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in _full() if c not in set(_slice())], ids=_case_id)
def test_exit_full(case, case_run):
    check(case_run)


def test_slice_covers_every_case_and_dimension_value():
    cases = _slice()
    assert 30 <= len(cases) <= 40
    for dim, values in enumerate((STYLES, WORKERS, METHODS, PERSISTENT, CASES)):
        assert {c[dim] for c in cases} == set(values)
    for what in CASES:
        assert {c[2] for c in cases if c[4] == what} >= {"fork"}
        assert {c[2] for c in cases if c[4] == what} - {"fork"}


def test_a_hung_case_fails_with_its_whole_output_and_every_process_stacks(monkeypatch):
    """A case still running after its signal (make test-matrix once saw one, whose report
    pytest cut to one line) fails with its stdout, stderr and the Python stacks of the
    script and of each worker, taken before the kill; nothing of the message is cut."""
    monkeypatch.setattr(sys.modules[__name__], "SIGNAL_BOUND_S", 2)
    monkeypatch.setattr(sys.modules[__name__], "RUN_BOUND_S", 12)
    run = run_case(("iter", 2, "forkserver", True, "sigint_lost"))
    assert run.failure == "still running 2 s after the signal"
    stacks = "\n".join(run.stacks)
    for when in ("2 s after the signal", "before the kill"):  # then it ran on to RUN_BOUND_S
        taken = [s for s in run.stacks if when in s.splitlines()[0]]
        script = [s for s in taken if "_exit_case.py iter" in s.splitlines()[0]]
        assert len(script) == 1 and "in main" in script[0] and "Thread 0x" in script[0], stacks
        workers = [s for s in taken if "in run_worker" in s]  # each under its own pid's line
        pids = {int(re.search(r": pid (\d+) ", s).group(1)) for s in workers}
        assert pids == set(run.reports["workers"]), stacks
    with pytest.raises(pytest.fail.Exception) as failed:
        check(run)
    text = str(failed.value)
    assert text.startswith("iter-2w-forkserver-persistent-sigint_lost: still running 2 s after the signal")
    assert stacks in text and run.stdout in text and "--- stderr" in text
