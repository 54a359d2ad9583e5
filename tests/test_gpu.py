"""pin_memory=True on a machine with CUDA: run with `make test-gpu` (skipped elsewhere).

The default run deselects these (marker ``gpu``); CPU-only machines check pin()'s
dispatch in test_pinning.py instead.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from fmq_loader import FMQLoader

from _loader_data import KindDataset

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _tensors(batch):
    if isinstance(batch, torch.Tensor):
        yield batch
    elif isinstance(batch, dict):
        for value in batch.values():
            yield from _tensors(value)
    elif isinstance(batch, (list, tuple)):
        for value in batch:
            yield from _tensors(value)


@pytest.mark.parametrize("kind", ["tensor", "dict", "namedtuple"])
@pytest.mark.parametrize("num_workers", [0, 2])
def test_batches_are_pinned_and_equal_torchs(num_workers, kind):
    extra = {"multiprocessing_context": "fork"} if num_workers else {}
    kw = dict(batch_size=4, pin_memory=True, num_workers=num_workers, **extra)
    with FMQLoader(KindDataset(16, kind), **kw) as loader:
        ours = list(loader)
    theirs = list(DataLoader(KindDataset(16, kind), **kw))
    assert len(ours) == len(theirs) == 4
    for a, b in zip(ours, theirs):
        pairs = list(zip(_tensors(a), _tensors(b)))
        assert pairs
        for x, y in pairs:
            assert x.is_pinned() and y.is_pinned()
            assert torch.equal(x, y)
            on_gpu = x.to("cuda", non_blocking=True)
            torch.cuda.synchronize()
            assert torch.equal(on_gpu.cpu(), y)
