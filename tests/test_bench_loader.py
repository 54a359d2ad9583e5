"""python -m fmq_loader.bench loader: one run of each loader on a tiny real JPEG folder."""

from __future__ import annotations

import math

import pytest

from fmq_loader.bench import loader as bench

from _images import image_folder


@pytest.mark.parametrize("kind", ["torch", "fmq"])
def test_one_run_reports_every_figure(tmp_path, kind):
    dataset = bench.PlainJPEGDataset(str(image_folder(tmp_path, classes=2, per_class=48)), size=32)
    # 96 images, batch 8: 12 batches an epoch (the probe epoch steps at batch 3 only)
    res = bench._one_run(kind, dataset, batch_size=8, num_workers=2, epochs=2, ctx="fork")
    assert set(res) == {"images_per_s", "cpu_ms_per_batch_median", "cpu_ms_per_batch_mean",
                        "ready_next_us", "first_batch_ms", "epoch2_start_ms",
                        "slack_epoch_start_ms", "worker_peak_rss_mib"}
    assert all(math.isfinite(v) and v >= 0 for v in res.values()), res
    # 192 images in well under the 2 x 0.5 s of training steps, which are not counted
    assert res["images_per_s"] > 0 and res["ready_next_us"] < 0.5e6
