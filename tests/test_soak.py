"""Soak: many short epochs leave open fds, threads, children, RSS and shared memory flat.

The default run does 30 persistent epochs and 12 with a pool per epoch; the ``slow`` run does 200 and prints the
figures (also ``python -m fmq_loader.bench soak``).
"""

from __future__ import annotations

import pytest

from fmq_loader.bench.soak import growth, measure
from fmq_loader.shm import GROW_STEP_BYTES

pytest.importorskip("torch")

NUM_WORKERS, PREFETCH, EXTRA_SLABS = 2, 2, 4
SLAB_BOUND = (PREFETCH * NUM_WORKERS + EXTRA_SLABS) * GROW_STEP_BYTES  # 4-sample batches < 1 MiB
RSS_SLACK_MIB = 16  # allocator noise; a leak of one 256 KiB batch per epoch would exceed it


def check_flat(rows: list[dict], persistent: bool) -> None:
    g = growth(rows, warmup=2)
    assert g["fds"] == 0, (g, rows[1], rows[-1])
    assert g["threads"] == 0, (g, rows[1], rows[-1])
    assert g["children"] == 0, (g, rows[1], rows[-1])
    assert g["rss_mib"] < RSS_SLACK_MIB, (g, rows[1], rows[-1])
    assert max(r["slab_bytes"] for r in rows) <= SLAB_BOUND, rows
    # slab descriptors and their mappings' duplicates: more as more slabs come into use, at most
    # 2 per slab and control block (the process may hold others' from earlier tests: count growth)
    assert (max(r["slab_fds"] for r in rows) - rows[0]["slab_fds"]
            <= 2 * (PREFETCH * NUM_WORKERS + EXTRA_SLABS + 1)), rows
    if persistent:
        assert rows[-1]["children"] == NUM_WORKERS
    else:  # a pool per epoch: nothing of it is left after the epoch
        assert rows[-1]["children"] == 0


@pytest.mark.parametrize("persistent, epochs", [(True, 30), (False, 12)],
                         ids=["persistent", "pool-per-epoch"])
def test_short_soak_is_flat(persistent, epochs):
    """(A pool per epoch costs two worker starts and joins per epoch: 12 epochs by default.)"""
    check_flat(measure(epochs, persistent, num_workers=NUM_WORKERS), persistent)


@pytest.mark.slow
@pytest.mark.parametrize("persistent", [True, False], ids=["persistent", "pool-per-epoch"])
@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_200_epoch_soak_is_flat(persistent, context):
    rows = measure(200, persistent, num_workers=NUM_WORKERS, context=context)
    print(f"\n{context} {'persistent' if persistent else 'per epoch'}: after epoch 2 {rows[1]}, "
          f"after epoch 200 {rows[-1]}")
    check_flat(rows, persistent)
