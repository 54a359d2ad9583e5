"""Under torchrun (2 ranks, gloo, CPU) the ranks' samples are disjoint, cover the dataset and repeat (issue 8).

tests/_ddp_indices.py runs on each rank and writes what it saw: once with
``distributed=True`` and once with a ``DistributedSampler`` plus ``set_epoch``.
Two launches take about 28 s on the 2-core dev VM.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
N, WORLD = 21, 2


def _launch(out_dir: Path, script: Path, *args: str, timeout: float = 60) -> str:
    out_dir.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={WORLD}", str(script), *args]
    try:
        done = subprocess.run(cmd, cwd=HERE.parent, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as exc:  # run() has killed torchrun; say where it hung
        pytest.fail(f"torchrun did not finish within {timeout} s:\n{exc.stdout}\n{exc.stderr}")
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _ranks(out_dir: Path) -> list[dict]:
    _launch(out_dir, HERE / "_ddp_indices.py", str(out_dir))
    ranks = [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(WORLD)]
    assert [r["rank"] for r in ranks] == [0, 1] and {r["world"] for r in ranks} == {WORLD}
    return ranks


def test_torchrun_ranks_are_disjoint_cover_the_dataset_and_repeat(tmp_path):
    first, second = _ranks(tmp_path / "run1"), _ranks(tmp_path / "run2")
    assert first == second  # indices and augmentations, every rank, both modes, both epochs
    for mode in ("distributed", "sampler"):
        for epoch in range(2):
            shards = [[int(row[0]) for row in r[mode][epoch]] for r in first]
            assert [len(s) for s in shards] == [11, 11]  # 21 samples padded to 22
            assert set(shards[0]) | set(shards[1]) == set(range(N))
            shared = set(shards[0]) & set(shards[1])
            merged = [shards[p % WORLD][p // WORLD] for p in range(22)]
            assert len(shared) <= 1 and merged[N:] == merged[:1]  # the one padded index
    for r in first:  # a sharded DataPipe under spawn: each rank its share, as torch's
        assert r["datapipe"]["FMQLoader"] == r["datapipe"]["DataLoader"]
    assert sorted(first[0]["datapipe"]["FMQLoader"] + first[1]["datapipe"]["FMQLoader"]) == \
        list(range(N))
    orders = [[int(row[0]) for r in first for row in r["distributed"][e]] for e in range(2)]
    assert orders[0] != orders[1]  # distributed=True advances the epoch by itself
    for r in first:  # and orders samples exactly as DistributedSampler with set_epoch does
        assert [[row[0] for row in e] for e in r["distributed"]] == \
            [[row[0] for row in e] for e in r["sampler"]]


@pytest.mark.slow
def test_ddp_example_trains_under_torchrun(tmp_path):
    out = _launch(tmp_path / "example", HERE.parent / "examples" / "ddp_train.py")
    assert "epoch 2: 32 batches per rank" in out and "done: 2 rank(s), final loss 0.00" in out, out
