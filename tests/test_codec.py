"""codec: protocol-5 pickling with numpy arrays and CPU tensors out of band, rebuilt as views."""

from __future__ import annotations

import pickle
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fmq_loader.transport import codec


def _round_trip(obj):
    stream, buffers = codec.encode(obj)
    # as the queue does: each buffer copied into (here: fresh) writable memory
    return codec.decode(stream, [bytearray(b) for b in buffers]), stream, buffers


def test_large_array_leaves_the_stream_as_one_buffer():
    a = np.arange(100_000, dtype=np.float64)
    got, stream, buffers = _round_trip({"x": a})
    assert [b.nbytes for b in buffers] == [a.nbytes]
    assert len(stream) < 1000
    assert np.array_equal(got["x"], a)


def test_small_array_stays_in_the_stream():
    stream, buffers = codec.encode(np.arange(10))
    assert buffers == [] and len(stream) > 80


def test_decode_returns_views_of_the_given_buffers_without_copying():
    a = np.arange(50_000, dtype=np.int32)
    stream, buffers = codec.encode(a)
    memory = np.frombuffer(bytearray(buffers[0]), np.uint8)
    got = codec.decode(stream, [memory])
    assert np.shares_memory(got, memory)


def test_non_contiguous_array_is_made_contiguous_once():
    a = np.arange(200_000, dtype=np.float32).reshape(400, 500)[::2, ::3]
    got, _, buffers = _round_trip(a)
    assert [b.nbytes for b in buffers] == [a.size * 4]
    assert np.array_equal(got, a)


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16", "bool", "int8",
                                   "uint8", "int16", "int32", "int64", "complex64"])
def test_tensors_of_each_dtype_go_out_of_band_and_round_trip_exactly(dtype):
    torch = pytest.importorskip("torch")
    t = (torch.arange(6000) % 7 - 3).to(getattr(torch, dtype)).reshape(60, 100)
    got, _, buffers = _round_trip(t)
    assert len(buffers) == 1
    assert got.dtype == t.dtype and got.shape == t.shape and torch.equal(got, t)


@pytest.mark.parametrize("make", [
    lambda torch: torch.tensor(1.5, dtype=torch.bfloat16),
    lambda torch: torch.empty(0, 4),
    lambda torch: torch.arange(12.0).reshape(3, 4).t(),
    lambda torch: torch.ones(5, requires_grad=True),
    lambda torch: torch.tensor([True, False]),
], ids=["0-d bfloat16", "empty", "transposed", "requires_grad leaf", "small bool"])
def test_small_odd_and_non_contiguous_tensors_round_trip(make):
    torch = pytest.importorskip("torch")
    t = make(torch)
    got, _, _ = _round_trip(t)
    assert (got.dtype, got.shape, got.requires_grad) == (t.dtype, t.shape, t.requires_grad)
    assert torch.equal(got.detach(), t.detach())


@pytest.mark.parametrize("bad, name", [(threading.Lock(), "lock"), (lambda: 0, "function"),
                                       ([1, {"k": threading.Lock()}], "list")])
def test_unpicklable_object_raises_type_error_naming_its_type(bad, name):
    with pytest.raises(TypeError, match=rf"cannot put an object of type {name}\b.*not picklable"):
        codec.encode(bad)


def test_non_leaf_tensor_requiring_grad_round_trips_through_torch_pickling():
    torch = pytest.importorskip("torch")
    t = torch.arange(3000.0, requires_grad=True) * 2
    got, _, buffers = _round_trip(t)
    assert buffers == []  # left to torch's own (in-band) reduction
    assert torch.equal(got.detach(), t.detach())


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(dtype=st.one_of(hnp.scalar_dtypes(), hnp.byte_string_dtypes()),
                  shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=40)))
def test_any_numpy_array_round_trips_as_plain_pickle_would(a):
    """Oracle: pickle itself (numpy's own pickling drops the byte order of '>M8' arrays)."""
    got, _, _ = _round_trip((a, [a.T]))
    want = pickle.loads(pickle.dumps((a, [a.T]), protocol=5))
    for g, w in ((got[0], want[0]), (got[1][0], want[1][0])):
        assert (g.dtype, g.shape) == (w.dtype, w.shape)
        assert np.ascontiguousarray(g).tobytes() == np.ascontiguousarray(w).tobytes()


# NOTE [ tensor-list fast path ]: a list/tuple of plain CPU tensors skips pickle.

@pytest.mark.parametrize("container", [list, tuple])
def test_tensor_list_takes_the_fast_path_and_round_trips_exactly(container):
    import torch

    batch = container([torch.randint(0, 255, (8, 3, 32, 32), dtype=torch.uint8),
                       torch.arange(8), torch.tensor(2.5), torch.zeros(0, 4),
                       torch.tensor([True, False]), torch.randn(64, 64, dtype=torch.float16)])
    got, stream, buffers = _round_trip(batch)
    assert stream.startswith(codec._FAST_MAGIC)
    assert len(buffers) == 2  # the uint8 images and the float16 matrix; the rest are small
    assert type(got) is container
    for a, b in zip(got, batch):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    got[0][0, 0, 0, 0] = 7  # writable, as torch's DataLoader batches are
    got[1][0] = 7


def test_tensor_lists_the_fast_path_cannot_carry_still_round_trip_through_pickle():
    import torch

    for batch in ([torch.randn(4, 4).t()], [torch.zeros(3, dtype=torch.bfloat16)],
                  [torch.zeros(2, requires_grad=True)], [torch.zeros(2), "label"],
                  [torch.zeros(2)] * 17):
        got, stream, _ = _round_trip(batch)
        assert not stream.startswith(codec._FAST_MAGIC)
        assert all(torch.equal(a, b) for a, b in zip(got, batch) if isinstance(a, torch.Tensor))


def test_tagged_batches_take_the_fast_path_with_their_ints_and_nesting_intact():
    """The loader's workers send (task id, worker id, batch): that must skip pickle too."""
    import torch

    images, labels = torch.randint(0, 255, (4, 3, 64, 64), dtype=torch.uint8), torch.arange(4)
    for item in [(7, 1, [images, labels]), (-1, 0, (images, (labels, 2 ** 62)))]:
        got, stream, _ = _round_trip(item)
        assert stream.startswith(codec._FAST_MAGIC)
        assert type(got) is tuple and got[:2] == item[:2] and type(got[2]) is type(item[2])
        assert torch.equal(got[2][0], images) and torch.equal(got[2][1] if item[0] == 7 else
                                                              got[2][1][0], labels)
    assert got[2][1][1] == 2 ** 62


@pytest.mark.parametrize("item", [(True, [1]), (np.int64(3), [1]), (2 ** 63, [1]), ([[[[1]]]],),
                                  ("label", [1]), ([], [1])],
                         ids=["bool", "numpy int", "past int64", "four deep", "str", "empty"])
def test_items_the_fast_path_cannot_carry_exactly_round_trip_through_pickle(item):
    got, stream, _ = _round_trip(item)
    assert not stream.startswith(codec._FAST_MAGIC)
    assert got == item and type(got[0]) is type(item[0])


def _corrupt_streams():
    import torch

    stream, buffers = codec.encode([torch.zeros(64, 16), torch.arange(3)])
    head = len(codec._FAST_MAGIC) + codec._FAST_HEAD.size
    bad_dtype = bytearray(stream)
    bad_dtype[head + 1] = 200  # after the tensor's kind byte
    bad_shape = bytearray(stream)
    bad_shape[head + codec._FAST_TENSOR.size] = 99  # first dim 99: shape no longer fits the bytes
    return {
        "truncated": (stream[:-5], buffers),
        "dtype code out of range": (bytes(bad_dtype), buffers),
        "node kind unknown": (stream[:head] + b"\x09" + stream[head + 1:], buffers),
        "an int where the top container belongs": (
            codec._FAST_MAGIC + codec._FAST_INT.pack(codec._K_INT, 5), []),
        "shape does not match the bytes": (bytes(bad_shape), buffers),
        "a buffer missing": (stream, []),
        "a buffer too many": (stream, buffers + buffers),
        "trailing bytes": (stream + b"x", buffers),
    }


@pytest.mark.parametrize("case", sorted(_corrupt_streams()))
def test_corrupt_fast_path_stream_raises_value_error(case):
    stream, buffers = _corrupt_streams()[case]
    with pytest.raises(ValueError, match="corrupt tensor-list descriptor"):
        codec.decode(stream, [bytearray(b) for b in buffers])
