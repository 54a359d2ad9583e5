"""Every script in examples/ runs as printed (small arguments) and prints what it promises."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

CASES = {
    "train_imagefolder.py": (["--steps", "30", "--batch-size", "16", "--root", "data/t"],
                             r"done: \d+ images/s, data wait \d+\.\d% of loop time, loss"),
    "train_packed.py": (["--steps", "30", "--batch-size", "16", "--root", "data/p"],
                        r"loss every 50 steps +folder: [\d. ]+\n +pack: [\d. ]+\n"
                        r"folder: \d+ images/s.*\n +pack: \d+ images/s, data wait"),
    "minimal_loop.py": ([], r"1 \(16, 3, 64, 64\) \["),
    "custom_dataset.py": ([], r"2048 signals in 16 batches; last batch \(128, 4096\)"),
    "iterable_stream.py": ([], r"1000 records, each exactly once, from 2 workers"),
    # alone, a world of one (~7 s); under torchrun in tests/test_distributed.py (slow)
    "ddp_train.py": ([], r"epoch 2: 64 batches per rank, .*\ndone: 1 rank\(s\), final loss 0\.00"),
    # ~11 s and ~3.6 GB of RAM on 2 cores (ten 150 MB arrays per queue): `make test-slow`
    "seed_speed.py": ([], r"first get\(\): fmq_loader\.Queue .* vs mp\.Queue"),
}
SLOW = {"seed_speed.py"}


def test_every_example_is_covered():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(CASES)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in sorted(CASES)])
def test_example_runs_and_prints_its_result(name, tmp_path):
    args, pattern = CASES[name]
    # cwd=tmp_path: generated data/ folders land in the temporary directory
    out = subprocess.run([sys.executable, str(EXAMPLES / name), *args], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(pattern, out.stdout), out.stdout
