"""Soak: many short epochs leave open fds, threads, children, RSS and shared memory flat.

The default run does 30 persistent epochs and 12 with a pool per epoch; the ``slow`` run does 200 (80 for a
spawned pool per epoch) and prints the figures (also ``python -m fmq_loader.bench soak``).
"""

from __future__ import annotations

import pytest

from fmq_loader.bench.soak import growth, measure
from fmq_loader.transport.shm import GROW_STEP_BYTES

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


# A pool per epoch under spawn starts two fresh interpreters (each imports torch) every epoch:
# ~1.7 s an epoch on a quiet 2-core machine, so 200 epochs took 345 s, over pytest's 300 s timeout.
# 80 epochs (~140 s) still catch a leak: fds, threads and children must not grow at all, so one
# per epoch shows after the warm-up; and RSS is compared over the 78 epochs after it, where a leak
# of one 256 KiB batch per epoch adds 19.5 MiB, over RSS_SLACK_MIB (it would need > 66 epochs).
LONG_EPOCHS = {("fork", True): 200, ("fork", False): 200, ("spawn", True): 200, ("spawn", False): 80}


def test_long_soak_epochs_still_show_a_batch_leak_in_rss():
    """Each long soak compares RSS over enough epochs that 256 KiB lost per epoch exceeds the slack."""
    assert all((epochs - 2) * 0.25 > RSS_SLACK_MIB for epochs in LONG_EPOCHS.values())


@pytest.mark.slow
@pytest.mark.parametrize("persistent", [True, False], ids=["persistent", "pool-per-epoch"])
@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_long_soak_is_flat(persistent, context):
    """200 epochs (80 for a spawned pool per epoch: LONG_EPOCHS) leave everything flat."""
    epochs = LONG_EPOCHS[context, persistent]
    rows = measure(epochs, persistent, num_workers=NUM_WORKERS, context=context)
    print(f"\n{context} {'persistent' if persistent else 'per epoch'}: after epoch 2 {rows[1]}, "
          f"after epoch {epochs} {rows[-1]}")
    check_flat(rows, persistent)
