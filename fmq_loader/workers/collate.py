"""Pack samples into a batch: torch's ``default_collate`` / ``default_convert`` semantics.

Why not call ``torch.utils.data.default_collate``? Inside a process where
``get_worker_info()`` is set (our workers set it, so user datasets that shard by
worker keep working), torch's version stacks into a *new* shared-memory segment
for every batch -- the per-batch page-fault cost DESIGN.md measures (~9 ms per
9.6 MB batch). Ours stacks into ordinary memory, which the worker's allocator
reuses; the queue then lays it into an already-touched slab.

Rules (as torch): tensors are stacked; numpy arrays and numpy scalars become
tensors and are stacked; Python floats -> float64 tensor, ints -> int64 tensor,
bools -> bool tensor; str and bytes stay a list; mappings, namedtuples and
sequences are collated field by field, keeping their type where it can be
rebuilt.
"""

from __future__ import annotations

import collections.abc
import copy
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import CollateError

__all__ = ["default_collate", "default_convert", "concat_batches", "part_mismatch", "PartsJoin"]


def _is_namedtuple(x) -> bool:
    return isinstance(x, tuple) and hasattr(x, "_fields")


def _like(template: collections.abc.Mapping, values: dict) -> collections.abc.Mapping:
    """``values`` in a mapping like ``template``, as torch's collate builds it: a copy of a
    mutable mapping, updated (a defaultdict keeps its factory, a subclass its attributes);
    else its type built from a dict; else a plain dict."""
    if type(template) is dict:
        return values
    try:
        if isinstance(template, collections.abc.MutableMapping):
            clone = copy.copy(template)
            clone.update(values)
            return clone
        return type(template)(values)
    except TypeError:  # no copy()/update(), or no constructor from a dict
        return values


def _stack(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    first = tensors[0].shape
    for i, t in enumerate(tensors):
        if t.shape != first:
            raise CollateError(f"samples in one batch must have equal shapes, got {tuple(first)} at "
                             f"batch position 0 and {tuple(t.shape)} at batch position {i}; resize "
                             "or crop samples to one size in the dataset's transform, or pass a "
                             "collate_fn that pads them")
    return torch.stack(list(tensors), 0)


def default_collate(batch: Sequence[Any]) -> Any:
    """Collate a list of samples into a batch, with ``torch.utils.data.default_collate``'s rules.

    Raises:
        ValueError: samples have different shapes (positions and shapes named).
        TypeError: a sample holds a type that cannot be collated.
    """
    elem = batch[0]
    if isinstance(elem, torch.Tensor):
        if elem.is_nested:  # torch's message, word for word
            raise RuntimeError("Batches of nested tensors are not currently supported by the "
                               "default collate_fn; please provide a custom collate_fn to handle "
                               "them appropriately.")
        return _stack(batch)
    if isinstance(elem, np.ndarray) and type(elem).__module__ == "numpy":
        if elem.dtype.kind in "OSUV":
            raise TypeError(f"default_collate: numpy arrays of dtype {elem.dtype} cannot become "
                            "tensors; convert them in the dataset or pass a collate_fn")
        return _stack([torch.as_tensor(b) for b in batch])
    if isinstance(elem, np.generic):
        if elem.dtype.kind in "OSUV":
            return list(batch)
        return torch.as_tensor(np.asarray(batch))
    if isinstance(elem, float):
        return torch.tensor(batch, dtype=torch.float64)
    if isinstance(elem, int):  # bools too: all bools give bool, bools and ints int64, as torch
        return torch.tensor(batch)
    if isinstance(elem, (str, bytes)):
        return batch  # as torch: the list (or, inside a sample, the tuple) as given
    if isinstance(elem, collections.abc.Mapping):
        return _like(elem, {key: default_collate([d[key] for d in batch]) for key in elem})
    if _is_namedtuple(elem):
        return type(elem)(*(default_collate(field) for field in zip(*batch)))
    if isinstance(elem, collections.abc.Sequence):
        size = len(elem)
        for i, sample in enumerate(batch):
            if len(sample) != size:
                raise CollateError(f"each sequence in a batch must have the same length, got {size} "
                                 f"at batch position 0 and {len(sample)} at batch position {i}")
        columns = [default_collate(c) for c in zip(*batch)]
        if isinstance(elem, tuple):
            return columns  # torch returns a list for tuples as well
        try:
            return type(elem)(columns)
        except TypeError:
            return columns
    raise TypeError(f"default_collate: batch must contain tensors, numpy arrays, numbers, dicts "
                    f"or lists, got {type(elem).__qualname__}; pass a collate_fn for this type")


def default_convert(data: Any) -> Any:
    """Turn numpy arrays (at any depth) into tensors, like ``torch.utils.data.default_convert``."""
    if isinstance(data, torch.Tensor):
        return data
    if isinstance(data, np.ndarray) and type(data).__module__ == "numpy":
        return data if data.dtype.kind in "OSUV" else torch.as_tensor(data)
    if isinstance(data, np.generic) and data.dtype.kind not in "OSUV":
        return torch.as_tensor(data)
    if isinstance(data, collections.abc.Mapping):
        return _like(data, {k: default_convert(v) for k, v in data.items()})
    if _is_namedtuple(data):
        return type(data)(*(default_convert(d) for d in data))
    if isinstance(data, tuple):
        return [default_convert(d) for d in data]
    if isinstance(data, collections.abc.Sequence) and not isinstance(data, (str, bytes)):
        try:
            return type(data)([default_convert(d) for d in data])
        except TypeError:
            return [default_convert(d) for d in data]
    return data


def _cat_one_thread(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """``torch.cat(parts, 0)``, copied by this thread alone.

    The join runs while the workers are already decoding the next batches on every
    core. torch.cat splits a large copy over its intra-op threads and then waits for
    all of them; a helper thread that cannot get a core holds the join up by whole
    scheduler slices (5-20 ms measured against 2 ms uncontended). numpy copies in
    the calling thread. Anything else (bfloat16, grad, mixed dtypes or shapes,
    non-contiguous parts, whose memory format torch.cat may keep) goes to
    torch.cat, which also raises torch's errors.
    """
    first = parts[0]
    rest = first.shape[1:]
    if first.dim() == 0 or any(p.dtype != first.dtype or p.shape[1:] != rest
                               or not p.is_contiguous() for p in parts):
        return torch.cat(list(parts), 0)
    try:
        arrays = [p.numpy() for p in parts]
    except (RuntimeError, TypeError):  # not a plain CPU tensor numpy can view
        return torch.cat(list(parts), 0)
    out = torch.empty((sum(a.shape[0] for a in arrays), *rest), dtype=first.dtype)
    np.concatenate(arrays, axis=0, out=out.numpy())
    return out


class PartsJoin:
    """``concat_batches`` of a batch's parts, copied part by part as the parts arrive.

    The first batch of an epoch is split over the workers, whose parts arrive a few
    ms apart; the main process waits for the last one anyway. Each part's large
    tensors are copied into the batch when the part arrives (the batch's memory
    faulted in at the first one), so after the last part only its own copy is
    left. Parts that are not a tensor or a list of tensors (default_collate's
    shapes for the usual samples), or that do not match, are joined by
    ``concat_batches`` at the end, with its results and errors.

    Args:
        rows: the number of samples in each part, in order.
        indices: each part's dataset indices, named in an error.
        room_in: the part built in a slab with rows for the whole batch (NOTE [ the
            join in part 0's slab ] in epoch.py): the batch is joined there, and parts
            that come first wait for it.
    """

    _MIN_BYTES = 1 << 16  # smaller columns are joined at the end (the copy is too small to matter)

    def __init__(self, rows: Sequence[int], indices: Sequence[Sequence[Any]] | None = None,
                 room_in: int | None = None) -> None:
        self.indices = indices  # each part's dataset indices, for an error that names them
        self._starts = [sum(rows[:i]) for i in range(len(rows) + 1)]
        self._outs: list | None = None  # per field: the joined column, or None (joined at the end)
        self._lone = False  # the parts are single tensors, not lists of them
        self._added: set[int] = set()
        self._ok = True
        self._room_in = room_in
        self._waiting: dict[int, Any] = {}  # parts that came before the roomy one
        self._fresh = False  # the columns were allocated here (not a part's slab)

    @staticmethod
    def _fields(part):
        if part.__class__ is torch.Tensor:
            return [part], True
        if part.__class__ is list and part and all(f.__class__ is torch.Tensor for f in part):
            return part, False
        return None, False

    def add(self, i: int, part, whole=None) -> None:
        """Part ``i`` arrived: copy its large tensors into the batch. ``whole``: the same
        part with its large columns at the batch's full length (built with room)."""
        if not self._ok:
            return
        try:
            if self._outs is None and self._room_in is not None and i != self._room_in:
                self._waiting[i] = part  # the batch may live in the roomy part's slab
                return
            if self._outs is None and whole is not None:
                self._adopt(whole)
            self._ok = self._add(i, part)
            waiting, self._waiting = self._waiting, {}
            for k in sorted(waiting):
                if self._ok:
                    self._ok = self._add(k, waiting[k])
        except Exception:  # whatever it is, concat_batches meets it at the end
            self._ok = False

    def _adopt(self, whole) -> None:
        """Take the roomy part's full-length columns as the batch's (no copy)."""
        fields, lone = self._fields(whole)
        if fields is None:
            return
        outs = [f if (f.dim() > 0 and f.shape[0] == self._starts[-1] and f.is_contiguous()
                      and not f.requires_grad) else None for f in fields]
        if any(out is not None for out in outs):
            self._lone, self._outs = lone, outs

    def _add(self, i: int, part) -> bool:
        fields, lone = self._fields(part)
        start, end = self._starts[i], self._starts[i + 1]
        if fields is None:
            return False
        if self._outs is None:
            self._lone, self._outs, self._fresh = lone, [], True
            for f in fields:
                big = (f.dim() > 0 and f.is_contiguous() and not f.requires_grad
                       and f.numel() * f.element_size() >= self._MIN_BYTES)
                self._outs.append(torch.empty((self._starts[-1], *f.shape[1:]), dtype=f.dtype)
                                  if big else None)
        if lone is not self._lone or len(fields) != len(self._outs):
            return False
        for f, out in zip(fields, self._outs):
            if out is None:
                continue
            if (f.dtype != out.dtype or f.shape[0] != end - start or f.shape[1:] != out.shape[1:]
                    or not f.is_contiguous() or f.requires_grad):
                return False
            if f.data_ptr() != out[start].data_ptr():  # (the roomy part is in place already)
                np.copyto(out.numpy()[start:end], f.numpy())  # this thread only: see _cat_one_thread
            if not self._added and self._fresh:  # fault the rest of the batch in now
                for lo, hi in ((0, start), (end, self._starts[-1])):
                    if hi > lo:
                        out.numpy()[lo:hi].fill(0)
        self._added.add(i)
        return True

    def result(self, parts: Sequence[Any]) -> Any:
        """The joined batch: ``concat_batches(parts)``.

        Raises:
            ValueError: the parts' samples differ in shape (parts and indices named), as
                ``default_collate`` raises for samples of one part.
        """
        try:
            return self._result(parts)
        except (RuntimeError, TypeError, ValueError) as exc:
            where = part_mismatch(parts)
            if where is None:
                raise
            path, k, first, other = where
            named = ("" if self.indices is None else
                     f" (dataset indices {_short(self.indices[0])} and {_short(self.indices[k])})")
            raise CollateError(
                f"samples in one batch must have equal shapes: this epoch's first batch was "
                f"loaded in {len(parts)} parts by different workers, and batch{path} has samples "
                f"of shape {first} in part 0 and {other} in part {k}{named}; resize or crop "
                "samples to one size in the dataset's transform, or pass a collate_fn that pads "
                "them") from exc

    def _result(self, parts: Sequence[Any]) -> Any:
        if not self._ok or len(self._added) != len(parts) or all(o is None for o in self._outs):
            return concat_batches(parts)
        if self._lone:
            return self._outs[0]
        return [out if out is not None else concat_batches([p[j] for p in parts])
                for j, out in enumerate(self._outs)]


def own_rows(batch, n: int):
    """A roomy part's own batch: every column's first ``n`` rows (NOTE [ the join in
    part 0's slab ] in epoch.py); columns are tensors, as assemble.py builds them."""
    if batch.__class__ is torch.Tensor:
        return batch[:n]
    return [f[:n] if f.__class__ is torch.Tensor else f for f in batch]


def _short(indices) -> str:
    text = repr(list(indices))
    return text if len(text) <= 60 else text[:57] + "..."


def part_mismatch(parts: Sequence[Any], path: str = "") -> tuple[str, int, tuple, tuple] | None:
    """Where batch parts disagree in the shape of one sample: ``(path, part, shape in part
    0, shape in that part)``, sample shapes without the batch dimension; None if nowhere."""
    first = parts[0]
    if isinstance(first, torch.Tensor):
        for k, p in enumerate(parts):
            if isinstance(p, torch.Tensor) and p.shape[1:] != first.shape[1:]:
                return path, k, tuple(first.shape[1:]), tuple(p.shape[1:])
        return None
    if isinstance(first, collections.abc.Mapping):
        for key in first:
            if all(isinstance(p, collections.abc.Mapping) and key in p for p in parts):
                found = part_mismatch([p[key] for p in parts], f"{path}[{key!r}]")
                if found is not None:
                    return found
        return None
    if isinstance(first, (list, tuple)) and not all(isinstance(x, (str, bytes)) for x in first):
        for j in range(len(first)):
            if all(isinstance(p, (list, tuple)) and len(p) > j for p in parts):
                found = part_mismatch([p[j] for p in parts], f"{path}[{j}]")
                if found is not None:
                    return found
    return None


def concat_batches(parts: Sequence[Any]) -> Any:
    """Join batches that ``default_collate`` made from consecutive slices of one batch.

    The result equals ``default_collate`` of the whole list of samples: tensors
    are concatenated along dim 0, lists of strings are chained, and dicts,
    namedtuples and lists of columns are joined field by field.
    """
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return _cat_one_thread(parts)
    if isinstance(first, collections.abc.Mapping):
        return _like(first, {key: concat_batches([p[key] for p in parts]) for key in first})
    if _is_namedtuple(first):
        return type(first)(*(concat_batches(list(f)) for f in zip(*parts)))
    if isinstance(first, tuple) or (isinstance(first, list)
                                     and all(isinstance(x, (str, bytes)) for x in first)):
        return type(first)(x for p in parts for x in p)  # a column of strings
    if isinstance(first, list):
        for k, part in enumerate(parts):
            if len(part) != len(first):  # zip() would drop the extra columns without a word
                raise CollateError(
                    f"each sequence in a batch must have the same length, got {len(first)} in "
                    f"part 0 of this epoch's first batch and {len(part)} in part {k} (its parts "
                    "were loaded by different workers); make the dataset return sequences of "
                    "one length, or pass a collate_fn")
        columns = [concat_batches(list(c)) for c in zip(*parts)]
        try:
            return columns if type(first) is list else type(first)(columns)
        except TypeError:
            return columns
    raise TypeError(f"cannot join batch parts of type {type(first).__qualname__}")
