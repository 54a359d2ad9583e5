"""Shared fixtures: leak checks, start methods, small generated data."""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time

import pytest

START_METHODS = [m for m in ("fork", "spawn", "forkserver") if m in mp.get_all_start_methods()]


def _fmq_shm_entries() -> set[str]:
    try:
        return {n for n in os.listdir("/dev/shm") if n.startswith("fmq")}
    except FileNotFoundError:  # pragma: no cover - non-Linux
        return set()


def _live_children() -> list[mp.Process]:
    return [p for p in mp.active_children() if p.is_alive()]


@pytest.fixture(autouse=True)
def no_leaked_shm_or_children():
    """Every test must leave no /dev/shm/fmq* entry and no live child process."""
    before = _fmq_shm_entries()
    yield
    deadline = time.monotonic() + 5.0
    while True:
        leaked = _fmq_shm_entries() - before
        children = _live_children()
        if (not leaked and not children) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for p in children:  # do not poison the next test
        p.kill()
    assert not leaked, f"leftover shared memory: {sorted(leaked)}"
    assert not children, f"live child processes: {[(p.name, p.pid) for p in children]}"


@pytest.fixture(params=START_METHODS)
def start_method(request) -> str:
    """Each start method the platform offers (CPython runs its suite per method)."""
    return request.param


@pytest.fixture
def python() -> str:
    return sys.executable
