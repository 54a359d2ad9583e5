"""default_collate / concat_batches: torch's rules, and parts joined into the whole batch."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate as torch_collate

from fmq_loader.collate import concat_batches, default_collate

Point = collections.namedtuple("Point", "x y")


def _same(a, b) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert type(a) is type(b) and a.keys() == b.keys()
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            _same(x, y)
    else:
        assert a == b


SAMPLES = {
    "tensor": [torch.full((2, 3), float(i)) for i in range(7)],
    "ndarray": [np.full((4,), i, dtype=np.int16) for i in range(7)],
    "tuple-with-str": [(torch.tensor(i), f"name{i}", i * 0.5) for i in range(7)],
    "dict": [{"img": torch.ones(2) * i, "label": i, "path": f"p{i}"} for i in range(7)],
    "namedtuple": [Point(torch.tensor([i]), np.float32(i)) for i in range(7)],
    "list-of-str": [[f"a{i}", f"b{i}"] for i in range(7)],
}


@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_default_collate_matches_torch(kind):
    _same(default_collate(SAMPLES[kind]), torch_collate(SAMPLES[kind]))


@pytest.mark.parametrize("kind", sorted(SAMPLES))
@pytest.mark.parametrize("cuts", [(0, 3, 7), (0, 2, 4, 7), (0, 1, 2, 3, 4, 5, 6, 7)])
def test_concat_of_collated_slices_equals_collate_of_whole(kind, cuts):
    samples = SAMPLES[kind]
    parts = [default_collate(samples[a:b]) for a, b in zip(cuts, cuts[1:])]
    _same(concat_batches(parts), default_collate(samples))


def test_collate_names_positions_and_shapes_of_ragged_samples():
    with pytest.raises(ValueError, match=r"equal shapes, got \(3,\) at batch position 0 and \(4,\) at batch position 2"):
        default_collate([torch.zeros(3), torch.zeros(3), torch.zeros(4)])


@pytest.mark.parametrize("parts", [
    [torch.randn(3, 4), torch.randn(2, 4)],
    [torch.randint(0, 255, (2, 3, 5), dtype=torch.uint8)] * 3,
    [torch.zeros(2, dtype=torch.bfloat16), torch.ones(1, dtype=torch.bfloat16)],  # no numpy twin
    [torch.zeros(2), torch.ones(1, dtype=torch.float64)],  # promoted, as torch.cat does
    [torch.ones(2, requires_grad=True), torch.ones(1)],
    [torch.randn(4, 3).t(), torch.randn(4, 2).t()],  # non-contiguous parts
    [torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last)] * 2,
], ids=["float", "uint8", "bfloat16", "mixed dtypes", "grad", "strided", "channels_last"])
def test_joined_tensor_parts_equal_torch_cat(parts):
    got, want = concat_batches(parts), torch.cat(parts, 0)
    assert got.dtype == want.dtype and got.shape == want.shape and got.stride() == want.stride()
    assert got.requires_grad == want.requires_grad
    assert torch.equal(got.detach(), want.detach())


def test_joining_parts_of_different_shapes_raises_torchs_error():
    with pytest.raises(RuntimeError, match="Sizes of tensors must match"):
        concat_batches([torch.zeros(2, 3), torch.zeros(2, 4)])
