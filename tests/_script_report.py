"""Shared by the scripts the exit tests run in a subprocess, and by the tests that check them.

In a script: ``report(tag, value)`` prints one ``<tag> <json>`` line; ``name_semaphores()``
makes every POSIX semaphore the script creates print its name as a ``sem`` line, so a
test can tell the script's /dev/shm entries from other programs'. In a test:
``session_processes(sid)`` lists the live processes of a script's session.
"""

from __future__ import annotations

import json
import os
import time

__all__ = ["report", "error_report", "name_semaphores", "session_processes"]


def report(tag: str, value) -> None:
    print(tag, json.dumps(value), flush=True)


def error_report(exc: BaseException, t0: float | None = None) -> dict:
    return {"types": [c.__name__ for c in type(exc).__mro__], "message": str(exc),
            "elapsed_s": None if t0 is None else time.monotonic() - t0}


def name_semaphores() -> None:
    import multiprocessing.synchronize as sync

    make_name = sync.SemLock._make_name

    def reporting_make_name():
        name = make_name()
        report("sem", name)
        return name

    sync.SemLock._make_name = staticmethod(reporting_make_name)


def session_processes(sid: int) -> list[tuple[int, str]]:
    """Live (non-zombie) processes of session ``sid``: (pid, "pid N state S command line")."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")[:100]
        except OSError:
            continue
        state, session = fields[0], int(fields[3])
        if session == sid and state not in ("Z", "X"):
            out.append((int(name), f"pid {name} state {state} {cmd}"))
    return out
