"""Build a default-collated batch in a slab while its samples load: no stack, no copy after it.

``default_collate`` stacks a batch's samples into new memory, and the queue then
copies the batch into a slab: two passes over every batch's bytes in the
worker, both after its last sample. For the usual sample -- a tensor, or a
tuple or list of tensors and numbers -- a worker instead reserves a slab when
the first sample is loaded and copies each sample into its row of the batch as
it comes; ``Queue.put(..., into=)`` then sends the batch where it already lies.
The result is exactly ``default_collate``'s (same structure, dtypes, shapes and
values). Anything else -- another structure, a sample that differs from the
first in shape, dtype or layout, no free slab -- falls back to
``default_collate`` over the whole list, which also raises its usual errors.
"""

from __future__ import annotations

import torch

from ..errors import BatchTooLarge
from ..transport.codec import OUT_OF_BAND_MIN_BYTES, _dtype_pair
from ..transport.queue import Queue, Reservation
from ..transport.shm import align
from .collate import default_collate

__all__ = ["SlabAssembler"]

_MAX_FIELDS = 16
_NUMBERS = (int, float, bool)


class SlabAssembler:
    """One batch of ``n`` samples, assembled in a reserved slab (see the module docstring).

    Call ``add(k, sample)`` after loading sample ``k``, ``finish(samples)`` for the
    batch, then put it with ``into=reservation()``; ``cancel()`` on any failure.

    ``room`` > ``n``: the large columns get ``room`` rows, the batch's ``n`` first, and
    ``finish`` returns them whole (``roomy``), so that the main process can join the
    other parts of a split batch into this slab (NOTE [ the join in part 0's slab ]
    in epoch.py).
    """

    __slots__ = ("_queue", "_n", "_room", "_reservation", "_rows", "_kind", "_fields", "_seen")

    def __init__(self, queue: Queue, n: int, room: int = 0) -> None:
        self._queue, self._n = queue, n
        self._room = max(n, room)
        self._reservation: Reservation | None = None
        self._rows: list | None = None  # per field: the batch column in the slab, or None
        self._kind = None  # None: a sample is one tensor; else list or tuple
        self._fields: list | None = None  # per slab field: (shape, dtype)
        self._seen: set | None = None  # data_ptr of every sample tensor copied in

    @property
    def active(self) -> bool:
        return self._rows is not None

    @property
    def roomy(self) -> bool:
        """``finish`` returned large columns with ``room`` rows (read before ``reservation()``)."""
        return self._rows is not None and self._room > self._n

    def add(self, k: int, sample) -> None:
        try:
            if k == 0:
                self._start(sample)
            elif self._rows is not None and not self._fill(k, sample):
                self.cancel()
        except BatchTooLarge:  # no slab can take it: say so now, not after the whole batch
            self.cancel()      # was built in ordinary memory and put() said the same
            raise
        except Exception:  # whatever it was, default_collate will meet it (and report it)
            self.cancel()

    def _split(self, sample):
        """The sample's fields and its container type (None for a lone tensor)."""
        cls = sample.__class__
        if cls is torch.Tensor:
            return (sample,), None
        if (cls is tuple or cls is list) and 0 < len(sample) <= _MAX_FIELDS:
            return sample, cls
        return None, None

    def _start(self, sample) -> None:
        fields, kind = self._split(sample)
        if fields is None or self._n < 2:
            return
        plan, total, rest = [], 0, 0
        for value in fields:
            if value.__class__ is torch.Tensor and _plain(value):
                nbytes = value.numel() * value.element_size()
                np_dtype = _dtype_pair(str(value.dtype).rpartition(".")[2])[1]
                if np_dtype is not None and self._n * nbytes >= OUT_OF_BAND_MIN_BYTES:
                    plan.append((tuple(value.shape), value.dtype, np_dtype))
                    total += align(self._room * nbytes)
                    continue
                rest += align(self._n * nbytes)
            elif value.__class__ in _NUMBERS:
                rest += align(self._n * 8)  # an int64 / float64 / bool column
            else:
                return  # strings, arrays, containers, tensor subclasses: default_collate does it all
            plan.append(None)  # collated at the end (small tensors, numbers)
        if total == 0:
            return
        # Room for the columns collated at the end too: past 4 KiB they leave the
        # pickle stream and must fit after the built ones (queue.Queue._encode_into).
        reservation = self._queue.reserve(total + rest)
        if reservation is None:  # every slab is held: the usual path
            return
        self._reservation, self._kind = reservation, kind  # cancel() gives it back from here on
        rows = []
        for field in plan:
            if field is None:
                rows.append(None)
                continue
            shape, _, np_dtype = field
            rows.append(torch.from_numpy(reservation.array((self._room, *shape), np_dtype)))
        self._rows = rows
        self._fields = [None if f is None else f[:2] for f in plan]
        self._seen = set()
        if not self._fill(0, sample):
            self.cancel()

    def _fill(self, k: int, sample) -> bool:
        fields, kind = self._split(sample)
        if kind is not self._kind or fields is None or len(fields) != len(self._rows):
            return False
        seen = self._seen
        for value, row, field in zip(fields, self._rows, self._fields):
            if row is None:
                continue
            if (value.__class__ is not torch.Tensor or value.shape != field[0]
                    or value.dtype is not field[1] or not _plain(value)):
                return False
            # A dataset that refills and returns one tensor: default_collate stacks what
            # it holds at the end (every row alike); copying now would differ from that.
            ptr = value.data_ptr()
            if ptr in seen:
                return False
            seen.add(ptr)
            row[k].copy_(value)
        return True

    def finish(self, samples: list):
        """The batch ``default_collate(samples)`` would give (``samples``: the first
        ``len(samples)`` of the ``n``, for an iterable dataset's last, shorter batch)."""
        if self._rows is None or not samples:
            return default_collate(samples)
        m = len(samples)
        # With room (roomy), the large columns come back whole: room rows, the first m filled.
        rows = self._rows if m == self._n else [None if r is None else r[:m] for r in self._rows]
        if self._kind is None:
            return rows[0]
        # default_collate returns a list of columns for a tuple or a list sample
        return [row if row is not None else default_collate([s[j] for s in samples])
                for j, row in enumerate(rows)]

    def reservation(self) -> Reservation | None:
        """The slab to put the finished batch ``into`` (None: it was built elsewhere)."""
        reservation, self._reservation, self._rows = self._reservation, None, None
        return reservation

    def cancel(self) -> None:
        """Give the slab back; ``finish`` collates the usual way."""
        if self._reservation is not None:
            self._reservation.cancel()
        self._reservation = self._rows = None


def _plain(t: torch.Tensor) -> bool:
    return (t.layout is torch.strided and t.device.type == "cpu" and not t.requires_grad
            and not t.is_quantized and not t.is_nested)
