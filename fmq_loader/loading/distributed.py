"""Rank detection and the loader's own sample order: shuffled from (seed, epoch), sharded by rank.

``FMQLoader(..., distributed=True)`` asks :func:`detect_rank` for this process's
``(rank, world_size)`` -- from an initialised ``torch.distributed`` process group,
else from torchrun's ``RANK`` / ``WORLD_SIZE`` environment variables -- and
orders samples with an :class:`EpochOrder`. So does ``FMQLoader(seed=S,
shuffle=True)`` without a sampler or generator, as a world of one.

``EpochOrder`` reuses ``torch.utils.data.DistributedSampler`` for the order
itself: the permutation of epoch ``e`` comes from ``seed + e`` (not from the
world size), is padded by repeating its first indices (or cut, with
``drop_last``) to a multiple of the world size, and rank ``r`` takes every
``world_size``-th index from ``r``. Interleaving the ranks' shards therefore
gives back the same global order for any world size. Unlike a plain
DistributedSampler, the epoch is bound when an epoch starts (see
:meth:`EpochOrder.for_epoch`), so the loader can number epochs itself when
``set_epoch`` is never called, and a prefetched epoch cannot see a later epoch
number.
"""

from __future__ import annotations

import os
import weakref
from typing import Callable, Iterator

from torch.utils.data import DistributedSampler, Sampler

__all__ = ["EpochOrder", "detect_rank"]


def detect_rank() -> tuple[int, int]:
    """``(rank, world_size)`` of this process for ``distributed=True``.

    An initialised default process group wins; otherwise torchrun's ``RANK``
    and ``WORLD_SIZE`` environment variables (set before your script calls
    ``init_process_group``).

    Raises:
        RuntimeError: neither is there; the message says what to set.
        ValueError: ``RANK`` / ``WORLD_SIZE`` are not integers with 0 <= RANK < WORLD_SIZE.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
    if rank is None or world is None:
        missing = [name for name, v in (("RANK", rank), ("WORLD_SIZE", world)) if v is None]
        raise RuntimeError(
            "FMQLoader(distributed=True) found no initialised torch.distributed process group "
            f"and no {' / '.join(missing)} environment variable; launch with "
            "`torchrun --nproc_per_node=N your_script.py` (it sets RANK and WORLD_SIZE), or call "
            "torch.distributed.init_process_group() before building the loader, or set RANK and "
            "WORLD_SIZE yourself; for a single process, use distributed=False")
    try:
        rank_i, world_i = int(rank), int(world)
    except ValueError:
        raise ValueError("FMQLoader(distributed=True): RANK and WORLD_SIZE must be integers, got "
                         f"RANK={rank!r}, WORLD_SIZE={world!r}") from None
    if world_i < 1 or not 0 <= rank_i < world_i:
        raise ValueError("FMQLoader(distributed=True): need 0 <= RANK < WORLD_SIZE, got "
                         f"RANK={rank_i}, WORLD_SIZE={world_i}")
    return rank_i, world_i


class EpochOrder(Sampler[int]):
    """This rank's sample indices, epoch by epoch, as ``DistributedSampler`` orders them.

    Args:
        dataset: a map-style dataset (only its ``len()`` is used).
        shuffle: permute from ``seed + epoch``; else ``0..n-1``.
        seed: the shuffle seed (DistributedSampler's ``seed``; 0 when the loader has none).
        num_replicas: the world size; 1 outside distributed training.
        rank: this process's rank, ``0 <= rank < num_replicas``.
        drop_last: cut the tail to a multiple of ``num_replicas`` instead of padding
            by repeating the first indices.
        on_set_epoch: called by :meth:`set_epoch` (the loader passes its own
            ``set_epoch``, so ``loader.sampler.set_epoch(e)`` works as with torch).
    """

    def __init__(self, dataset, *, shuffle: bool, seed: int, num_replicas: int = 1,
                 rank: int = 0, drop_last: bool = False,
                 on_set_epoch: Callable[[int], None] | None = None) -> None:
        self._sampler = DistributedSampler(dataset, num_replicas=num_replicas, rank=rank,
                                           shuffle=shuffle, seed=seed, drop_last=drop_last)
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0
        # Weakly: the loader holds this order, and a cycle would keep its workers
        # alive until the cyclic garbage collector runs.
        self._on_set_epoch = (weakref.WeakMethod(on_set_epoch)
                              if hasattr(on_set_epoch, "__self__") else
                              (lambda f=on_set_epoch: f) if on_set_epoch is not None else None)

    def indices(self, epoch: int) -> list[int]:
        """This rank's indices in epoch ``epoch``."""
        self._sampler.set_epoch(epoch)
        return list(iter(self._sampler))  # DistributedSampler.__iter__ builds the list eagerly

    def for_epoch(self, epoch: int) -> "_BoundOrder":
        """A sampler that yields epoch ``epoch``'s indices whenever it is iterated."""
        return _BoundOrder(self, epoch)

    def set_epoch(self, epoch: int) -> None:
        """Number the next epoch ``epoch`` (through the loader when it owns this order)."""
        self.epoch = epoch
        callback = self._on_set_epoch() if self._on_set_epoch is not None else None
        if callback is not None:
            callback(epoch)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices(self.epoch))

    def __len__(self) -> int:
        return len(self._sampler)

    def __getstate__(self):  # the loader callback stays behind (workers never need it)
        state = self.__dict__.copy()
        state["_on_set_epoch"] = None
        return state

    def __repr__(self) -> str:
        return (f"EpochOrder(n={len(self._sampler.dataset)}, shuffle={self.shuffle}, "
                f"seed={self.seed}, rank={self.rank}/{self.num_replicas}, "
                f"drop_last={self.drop_last})")


class _BoundOrder(Sampler[int]):
    """One epoch of an EpochOrder: the epoch number is fixed when it is made."""

    def __init__(self, order: EpochOrder, epoch: int) -> None:
        self._order, self.epoch = order, epoch

    def __iter__(self) -> Iterator[int]:
        return iter(self._order.indices(self.epoch))

    def __len__(self) -> int:
        return len(self._order)
