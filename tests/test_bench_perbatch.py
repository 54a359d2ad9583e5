"""python -m fmq_loader.bench perbatch: per-thread CPU per batch, hot and cold decode."""

from __future__ import annotations

import subprocess
import sys


def test_perbatch_bench_prints_per_thread_cpu_and_hot_cold_decode():
    done = subprocess.run([sys.executable, "-m", "fmq_loader.bench", "perbatch", "--batches", "4",
                           "--delay-ms", "0"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "MainThread" in done.stdout and "fmq-stealer" in done.stdout, done.stdout
    assert "ms CPU per batch" in done.stdout and "after a 10 ms sleep" in done.stdout
    assert "wake-up floor, read in the waiting thread" in done.stdout
    assert "wake-up floor, read by a thread, handed over" in done.stdout


def test_bench_help_lists_every_benchmark():
    done = subprocess.run([sys.executable, "-m", "fmq_loader.bench", "--help"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    for name in ("queue", "loader", "images", "soak", "perbatch"):
        assert name in done.stdout
