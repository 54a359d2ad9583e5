"""loader.stats() as users meet it (issue 7): real JPEGs under fork and spawn, the training
demo's summary line, and the training example's data-bound share."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from fmq_loader import FMQLoader, ImageFolder
from fmq_loader import transforms as T
from fmq_loader.tools.cli import main

from _images import image_folder

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _folder(tmp_path, **kw):
    return ImageFolder(image_folder(tmp_path / "imgs", classes=2, per_class=24, size=(64, 48)),
                       transform=T.Compose([T.Resize(32), T.CenterCrop(32), T.PILToTensor()]),
                       **kw)


def _share(a, b) -> float:
    """The data-bound share between two snapshots: waiting in next() over wall time."""
    return (b.wait_s - a.wait_s) / (b.elapsed_s - a.elapsed_s)


# spawn re-imports torch in each worker: seconds on a busy 2-core machine, so `make test-slow`
@pytest.mark.parametrize("ctx", ["fork", pytest.param("spawn", marks=pytest.mark.slow)])
def test_real_jpegs_idle_loop_is_data_bound_and_sleeping_loop_is_not(tmp_path, ctx):
    dataset = _folder(tmp_path, on_error="skip")
    for path in sorted(Path(dataset.root).rglob("*.jpg"))[::10][:3]:  # apart, see test_stats
        path.write_bytes(b"\xff\xd8 truncated")
    # no next-epoch prefetch: the workers' totals below are exactly the two epochs
    with FMQLoader(dataset, batch_size=4, num_workers=2, persistent_workers=True,
                   multiprocessing_context=ctx, prefetch_next_epoch=False) as loader:
        for _ in loader:  # does nothing: every next() waits for decoding
            pass
        idle = loader.stats()
        for _ in loader:  # a 'training step' far longer than a 4-image batch takes to make
            time.sleep(0.05)
        after = loader.stats()
    assert idle.batches == 12 and idle.samples == 48
    assert idle.data_bound > 0.6, idle.format()
    assert _share(idle, after) < 0.2, after.format()
    assert after.data_bound < idle.data_bound
    assert sum(w.samples for w in after.workers) == 96
    for w in after.workers:
        assert 0.0 <= w.busy_share <= 1.0 and w.pid is not None
    # failed loads, counted in the workers' processes, summed over workers and epochs
    assert (idle.skipped_files, after.skipped_files) == (3, 6), after.format()


def test_train_command_prints_the_loader_stats_summary(tmp_path, capsys):
    root = image_folder(tmp_path / "imgs", classes=2, per_class=8, size=(32, 24))
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "loader": {"batch_size": 4, "num_workers": 1, "drop_last": True},
        "dataset": {"root": str(root), "transforms": [{"Resize": {"size": 16}}, "ToTensor"]},
        "train": {"steps": 6, "warmup_steps": 2, "log_every": 3, "threads": 1},
    }))
    assert main(["train", "-c", str(config), "--loader", "both", "--no-progress"]) == 0
    out = capsys.readouterr().out
    # FMQLoader has stats(); torch's DataLoader does not, so one summary line
    lines = re.findall(r"^loader stats: 6 batches, 24 samples, .* data-bound \d+% "
                       r"\(overall \d+%\), workers busy \d+%", out, re.M)
    assert len(lines) == 1, out


@pytest.mark.slow  # ~5-12 s; tests/test_examples.py runs the example by default
def test_training_example_prints_the_data_bound_share_from_stats(tmp_path):
    done = subprocess.run([sys.executable, str(EXAMPLES / "train_imagefolder.py"), "--steps",
                           "12", "--batch-size", "8", "--root", "data/t"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    m = re.search(r"loader\.stats\(\): data-bound share (\d+\.\d)% \(\d+\.\d\d s of "
                  r"\d+\.\d\d s waiting in next\(\)\); workers busy \d+%, \d+%", done.stdout)
    assert m and 0 <= float(m[1]) <= 100, done.stdout
    assert re.search(r"^-> the (model waits for data|loader keeps up)", done.stdout, re.M)
