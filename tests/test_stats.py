"""loader.stats(): the data-bound share, per-worker figures, skipped files, periodic logging."""

from __future__ import annotations

import logging
import time

import pytest

from fmq_loader import FMQLoader, ImageFolder
from fmq_loader.workers.stats import LoaderStats

from _images import image_folder
from _loader_data import SlowDataset


def _drain(loader, step_s: float = 0.0, epochs: int = 1) -> LoaderStats:
    for _ in range(epochs):
        for _batch in loader:
            if step_s:
                time.sleep(step_s)
    return loader.stats()


@pytest.mark.parametrize("num_workers", [0, 2])
def test_data_bound_near_one_for_an_idle_consumer(num_workers):
    kw = {"persistent_workers": True} if num_workers else {}
    with FMQLoader(SlowDataset(n=48, delay_s=0.01), batch_size=4, num_workers=num_workers,
                   **kw) as loader:
        stats = _drain(loader)
    assert stats.batches == 12 and stats.samples == 48
    assert stats.data_bound > 0.8, stats.format()
    assert stats.samples_per_s > 0


def test_data_bound_near_zero_for_a_slow_consumer():
    # a batch takes ~4 x 1 ms to make; the loop sleeps 60 ms per batch
    with FMQLoader(SlowDataset(n=32, delay_s=0.001), batch_size=4, num_workers=2,
                   persistent_workers=True) as loader:
        next(iter(loader))  # workers started and warmed
        stats = _drain(loader, step_s=0.06)
    assert stats.data_bound < 0.2, stats.format()
    assert stats.recent_data_bound < 0.2, stats.format()


def test_worker_rows_and_queue_depth():
    with FMQLoader(SlowDataset(n=40, delay_s=0.002), batch_size=5, num_workers=2) as loader:
        stats = _drain(loader)
    assert [w.worker_id for w in stats.workers] == [0, 1]
    # the epoch's first batch is split across the workers: 2 tasks for it
    assert sum(w.batches for w in stats.workers) == 9
    assert sum(w.samples for w in stats.workers) == 40
    for w in stats.workers:
        assert 0.0 <= w.busy_share <= 1.0 and w.busy_s > 0 and w.pid > 0
    assert stats.queue_depth == 0
    assert set(stats.as_dict()) >= {"data_bound", "workers", "shared_memory_bytes"}
    assert "data-bound" in stats.summary() and "worker" in str(stats)


def test_skipped_files_are_counted_across_workers(tmp_path):
    root = image_folder(tmp_path / "imgs", classes=2, per_class=8)
    bad = sorted(root.rglob("*.jpg"))[::5][:3]  # apart: each failure is replaced by a good file
    for path in bad:
        path.write_bytes(b"not a jpeg")
    dataset = ImageFolder(root, on_error="skip")
    with FMQLoader(dataset, batch_size=4, num_workers=2, collate_fn=list) as loader:
        stats = _drain(loader)
    assert stats.skipped_files == 3


def test_log_every_s_logs_summaries(caplog):
    with caplog.at_level(logging.INFO, logger="fmq_loader.stats"):
        with FMQLoader(SlowDataset(n=16, delay_s=0.0), batch_size=2,
                       log_every_s=0.01) as loader:
            _drain(loader, step_s=0.02)
    lines = [r.getMessage() for r in caplog.records if r.name == "fmq_loader.stats"]
    assert len(lines) >= 3 and "samples/s" in lines[0]


def test_log_every_s_rejects_non_positive():
    with pytest.raises(ValueError, match="log_every_s"):
        FMQLoader(SlowDataset(n=4), log_every_s=0)


def test_batches_kept_beyond_the_slabs_are_counted_as_pipe_batches():
    # every batch kept: once the slabs are all held, later batches come through the pipe
    with FMQLoader(SlowDataset(n=64, delay_s=0.0), batch_size=4, num_workers=1,
                   prefetch_factor=1, extra_slabs=0, collate_fn=_big) as loader:
        kept = list(loader)
        stats = loader.stats()
    assert len(kept) == 16
    assert stats.pipe_batches >= 10, stats.format()
    assert "through the pipe" in stats.format()


def _big(samples):
    import torch

    return torch.zeros(len(samples), 4096)  # 64 KiB: well above the in-band limit


def test_recent_data_bound_counts_only_the_part_of_a_wait_inside_the_window():
    from fmq_loader.workers.stats import Meter

    meter = Meter()
    meter.record(0.0, 8.0, 4)  # one 8 s wait, ending at t = 8
    early = meter.snapshot(now=8.0)
    later = meter.snapshot(now=11.0)  # window [6, 11]: 2 s of that wait are inside
    assert early.recent_data_bound == pytest.approx(1.0)
    assert later.recent_data_bound == pytest.approx(2.0 / 5.0)
    assert later.data_bound == pytest.approx(8.0 / 11.0)
