"""Pickling with out-of-band buffers: numpy arrays and CPU tensors leave the pickle stream.

``encode`` pickles with protocol 5 and a ``buffer_callback``: every contiguous
numpy array and CPU torch tensor of at least ``OUT_OF_BAND_MIN_BYTES``, at any
depth inside tuples, lists, dicts or user objects, becomes a separate buffer
that the caller lays into shared memory; the pickle stream keeps only a small
reference to it. ``decode`` rebuilds the object around the buffers it is given
without copying them, so the arrays and tensors it returns are views of those
buffers.

Tensors have no protocol-5 reduction of their own (torch pickles their storage
in-band), so ``reducer_override`` reduces a plain CPU tensor to its bytes as a
``PickleBuffer`` plus dtype and shape. Non-contiguous arrays and tensors are
made contiguous first (one copy, on the producer).
"""

from __future__ import annotations

import io
import pickle
import struct
import sys

import numpy as np

__all__ = ["encode", "decode", "OUT_OF_BAND_MIN_BYTES"]

OUT_OF_BAND_MIN_BYTES = 4096  # smaller buffers stay in the pickle stream


# Types that can hold no array or tensor: pickled by the C pickler alone (tiny items).
_ATOMIC = frozenset({int, float, complex, bool, str, bytes, type(None)})


class _Pickler(pickle.Pickler):
    def reducer_override(self, obj):
        cls = type(obj)
        if cls is np.ndarray:
            if not (obj.flags.c_contiguous or obj.flags.f_contiguous) and not obj.dtype.hasobject:
                return np.ascontiguousarray(obj).__reduce_ex__(5)
            return NotImplemented
        torch = sys.modules.get("torch")
        if torch is not None and cls is torch.Tensor:
            return _reduce_tensor(obj)
        return NotImplemented


def _reduce_tensor(t):
    torch = sys.modules["torch"]
    if (t.device.type != "cpu" or t.layout != torch.strided or t.is_quantized
            or t.is_nested or t.numel() == 0
            or (t.requires_grad and not t.is_leaf)):
        return NotImplemented
    try:
        flat = t.detach().resolve_conj().resolve_neg().contiguous().reshape(-1)
        raw = flat.view(torch.uint8).numpy()
    except (RuntimeError, TypeError):  # exotic dtypes: let torch pickle it in-band
        return NotImplemented
    dtype = str(t.dtype).rpartition(".")[2]
    return _rebuild_tensor, (pickle.PickleBuffer(raw), dtype, tuple(t.shape), t.requires_grad)


_DTYPES: dict = {}  # dtype name -> (torch dtype, numpy dtype or None), filled on first use


def _lookup_dtype(dtype):
    import torch

    kind = getattr(torch, dtype, None) if isinstance(dtype, str) else None
    if not isinstance(kind, torch.dtype):
        raise ValueError(f"tensor descriptor names dtype {dtype!r}, which is not a torch dtype; "
                         "corrupt message")
    try:
        np_kind = torch.empty(0, dtype=kind).numpy().dtype
    except (TypeError, RuntimeError):  # bfloat16 and friends: no numpy twin
        np_kind = None
    _DTYPES[dtype] = kind, np_kind
    return kind, np_kind


def _dtype_pair(dtype):
    """``(torch dtype, numpy dtype or None)`` for a dtype name, cached: called per tensor."""
    return _DTYPES.get(dtype) or _lookup_dtype(dtype)


def _rebuild_tensor(buf, dtype: str, shape: tuple, requires_grad: bool):
    # Runs in the consumer's stealer thread once per tensor: with a numpy twin of
    # the dtype, numpy types and shapes the bytes and torch is called once.
    kind, np_kind = _dtype_pair(dtype)
    if np_kind is not None:
        arr = np.frombuffer(buf, dtype=np_kind).reshape(shape)
        if not arr.flags.writeable:  # in-band bytes: torch refuses read-only memory
            arr = arr.copy()
        t = sys.modules["torch"].from_numpy(arr)
    else:
        raw = np.frombuffer(buf, dtype=np.uint8)
        if not raw.flags.writeable:
            raw = raw.copy()
        t = sys.modules["torch"].from_numpy(raw).view(kind).reshape(shape)
    if requires_grad:
        t.requires_grad_(True)
    return t


# NOTE [ tensor-list fast path ]
# A batch from the default collate is most often a list or tuple of plain CPU
# tensors ([images, labels]), and the loader's workers send it tagged with two
# ints: (task id, worker id, batch). Such an item -- lists and tuples, up to
# three deep, of plain CPU tensors and ints -- skips pickle: the stream is a
# magic header (never the start of a pickle stream, which is 0x80 from protocol
# 2 on), then the tree in prefix order: a kind byte per node, a count per
# container, the value of each int, dtype/shape/placement of each tensor.
# Rebuilding it touches far less code than pickle.loads plus a reducer per
# tensor, which matters because the stealer runs it cold, once per batch, after
# sleeping in poll().
_FAST_MAGIC = b"\xfeFQ2"
_FAST_MAX_TENSORS = 16
_FAST_MAX_DEPTH = 3
_K_LIST, _K_TUPLE, _K_INT, _K_TENSOR = 0, 1, 2, 3
_FAST_HEAD = struct.Struct("<BB")  # container: kind (list or tuple), number of children
_FAST_INT = struct.Struct("<Bq")  # kind, value
_FAST_TENSOR = struct.Struct("<BBBBQ")  # kind, dtype code, ndim, in-band flag, byte count
_FAST_DTYPE_NAMES = ("uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64",
                     "bool", "complex64", "complex128", "uint16", "uint32", "uint64")
_FAST_CODES: dict = {}  # torch dtype -> code, filled on first use
_FAST_NUMPY: list = []  # code -> numpy dtype (None: no twin), filled on first decode
_SHAPES = [struct.Struct(f"<{n}q") for n in range(65)]  # shape of an n-dim tensor
_INT64 = (-(1 << 63), (1 << 63) - 1)


def _fast_codes() -> dict:
    if not _FAST_CODES:
        torch = sys.modules["torch"]
        for code, name in enumerate(_FAST_DTYPE_NAMES):
            kind = getattr(torch, name, None)
            if isinstance(kind, torch.dtype) and _dtype_pair(name)[1] is not None:
                _FAST_CODES[kind] = code
    return _FAST_CODES


class _NotFast(Exception):
    """Raised inside ``_encode_fast``: the item has something the fast path cannot carry."""


def _encode_fast(obj):
    """``encode`` for lists/tuples of plain contiguous CPU tensors and ints; None otherwise."""
    cls = obj.__class__
    torch = sys.modules.get("torch")
    if (cls is not list and cls is not tuple) or torch is None:
        return None
    stream = bytearray(_FAST_MAGIC)
    buffers: list = []
    try:
        _encode_node(obj, stream, buffers, _fast_codes(), torch, [0], 1)
    except _NotFast:
        return None
    return bytes(stream), buffers


def _encode_node(obj, stream: bytearray, buffers: list, codes: dict, torch, tensors: list,
                 depth: int) -> None:
    cls = obj.__class__
    if cls is list or cls is tuple:
        if depth > _FAST_MAX_DEPTH or not 0 < len(obj) <= 255:
            raise _NotFast
        stream += _FAST_HEAD.pack(_K_TUPLE if cls is tuple else _K_LIST, len(obj))
        for child in obj:
            _encode_node(child, stream, buffers, codes, torch, tensors, depth + 1)
        return
    if cls is int:  # exactly int: a bool would come back as an int
        if not _INT64[0] <= obj <= _INT64[1]:
            raise _NotFast
        stream += _FAST_INT.pack(_K_INT, obj)
        return
    tensors[0] += 1
    if cls is not torch.Tensor or tensors[0] > _FAST_MAX_TENSORS:
        raise _NotFast
    code = codes.get(obj.dtype)
    if (code is None or obj.device.type != "cpu" or obj.layout != torch.strided
            or obj.is_nested or obj.requires_grad or obj.is_conj() or obj.is_neg()
            or not obj.is_contiguous()
            or obj.dim() > 64):
        raise _NotFast
    raw = obj.numpy().reshape(-1).view(np.uint8)
    inband = raw.nbytes < OUT_OF_BAND_MIN_BYTES
    stream += _FAST_TENSOR.pack(_K_TENSOR, code, obj.dim(), inband, raw.nbytes)
    stream += _SHAPES[obj.dim()].pack(*obj.shape)
    if inband:
        stream += raw.tobytes()
    else:
        buffers.append(memoryview(raw))


def _decode_fast(payload, buffers):
    torch = sys.modules.get("torch")
    if torch is None:
        import torch
    pending = iter(buffers)
    if not _FAST_NUMPY:
        _FAST_NUMPY[:] = [_dtype_pair(name)[1] for name in _FAST_DTYPE_NAMES]
    try:
        obj, pos = _decode_node(payload, len(_FAST_MAGIC), pending, torch.from_numpy, 1)
        if pos != len(payload) or next(pending, None) is not None:
            raise ValueError("stream or buffers left over after the last node")
    except (struct.error, IndexError, StopIteration, TypeError, ValueError) as exc:
        raise ValueError(f"corrupt tensor-list descriptor ({type(exc).__name__}: {exc})") from None
    return obj


def _decode_node(payload, pos: int, pending, from_numpy, depth: int):
    """One container node at ``pos``: its value and the position after it. Its int and
    tensor children are read here, inline: this runs once per batch, cold."""
    container, count = _FAST_HEAD.unpack_from(payload, pos)
    if container > _K_TUPLE or depth > _FAST_MAX_DEPTH:
        raise ValueError(f"node kind {container} at depth {depth} where a list or tuple belongs")
    pos += _FAST_HEAD.size
    out = []
    for _ in range(count):
        kind = payload[pos]
        if kind == _K_TENSOR:
            _, code, ndim, inband, nbytes = _FAST_TENSOR.unpack_from(payload, pos)
            pos += _FAST_TENSOR.size
            shape = _SHAPES[ndim].unpack_from(payload, pos)
            pos += 8 * ndim
            np_kind = _FAST_NUMPY[code]
            if np_kind is None:
                raise ValueError(f"dtype code {code} has no numpy twin in this torch")
            if inband:
                raw = bytearray(payload[pos:pos + nbytes])  # a copy: torch wants writable memory
                pos += nbytes
            else:
                raw = next(pending)
            if len(raw) != nbytes:
                raise ValueError(f"tensor announces {nbytes} bytes, has {len(raw)}")
            out.append(from_numpy(np.frombuffer(raw, np_kind).reshape(shape)))
        elif kind == _K_INT:
            out.append(_FAST_INT.unpack_from(payload, pos)[1])
            pos += _FAST_INT.size
        else:
            child, pos = _decode_node(payload, pos, pending, from_numpy, depth + 1)
            out.append(child)
    return (tuple(out) if container == _K_TUPLE else out), pos


def encode(obj) -> tuple[bytes, list[memoryview]]:
    """Pickle ``obj``; return the stream and its out-of-band buffers as byte views.

    Raises:
        TypeError: ``obj`` (or something inside it) cannot be pickled; the message
            names the type.
    """
    if obj.__class__ in _ATOMIC:  # nothing to take out of band: skip the Python-level pickler
        return pickle.dumps(obj, 5), []
    fast = _encode_fast(obj)  # NOTE [ tensor-list fast path ]
    if fast is not None:
        return fast
    buffers: list[memoryview] = []

    def keep(buf: pickle.PickleBuffer):
        raw = buf.raw()
        if raw.nbytes < OUT_OF_BAND_MIN_BYTES:
            return True  # in-band
        buffers.append(raw)
        return False

    out = io.BytesIO()
    try:
        _Pickler(out, protocol=5, buffer_callback=keep).dump(obj)
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        raise TypeError(f"cannot put an object of type {type(obj).__qualname__} on the queue: "
                        f"it is not picklable ({exc}); define classes and functions at module "
                        "top level, or convert the object to plain data first") from exc
    return out.getvalue(), buffers


def decode(payload, buffers):
    """Rebuild an object from ``encode``'s stream and (views of) its buffers."""
    if payload[:len(_FAST_MAGIC)] == _FAST_MAGIC:
        return _decode_fast(payload, buffers)
    return pickle.loads(payload, buffers=buffers)
