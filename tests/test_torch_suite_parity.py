"""Behaviours that PyTorch's own DataLoader test suite checks, in our words (issue 17).

Run with every ``DataLoader`` swapped for ``FMQLoader``, torch's suite found a
hang, duplicated DataPipe elements, lost worker seeds and a few smaller
differences; each test here fails on the code before its fix.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from fmq_loader import FMQLoader  # noqa: E402

from _loader_data import IndexDataset  # noqa: E402


@pytest.mark.parametrize("batch_size,shuffle,num_workers",
                         [(40960, False, 1), (16384, True, 1), (300_000, True, 2)])
def test_a_task_larger_than_the_board_pipe_is_delivered(batch_size, shuffle, num_workers):
    """A batch whose index list pickles to more than the pipe holds (64 KiB, or the 1 MiB
    the pool asks for) used to hang next() for good: the worker waited for the rest of the
    task, the main process for its batch."""
    n = 2 * batch_size + 7
    loader = FMQLoader(IndexDataset(n), batch_size=batch_size, shuffle=shuffle,
                       num_workers=num_workers, timeout=60)
    seen = []
    for batch in loader:
        assert batch.shape[0] in (batch_size, 7)
        seen.append(batch)
    assert [b.shape[0] for b in seen] == [batch_size, batch_size, 7]
    assert sorted(torch.cat(seen).tolist()) == list(range(n))
