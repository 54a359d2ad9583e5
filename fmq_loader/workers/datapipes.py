"""DataPipes (``torch.utils.data.IterDataPipe`` / ``MapDataPipe``) handled as torch's DataLoader does.

torch's DataLoader does three things for a DataPipe that a plain dataset does not get:

- ``shuffle=True/False`` turns the pipe's own shufflers on or off (instead of
  being refused, as it is for other iterable datasets);
- each iterator draws one *shared seed* from ``generator`` (before the workers'
  base seed) and gives every random pipe in the graph the same seeds from it,
  in every worker, so that the workers shuffle alike;
- each worker applies sharding to ``sharding_filter()`` pipes (``num_workers``
  shards, times the world size under ``torch.distributed``), so that every
  element comes out once, not once per worker.

This module does the same with torch's own ``graph_settings`` functions, so a
pipeline behaves under FMQLoader exactly as under DataLoader. torch marks
DataPipes deprecated; without them (``import`` fails) none of this applies.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["is_datapipe", "wrap", "seed_group", "draw_shared_seed", "apply_seed", "shard",
           "world_and_rank"]

try:
    from torch.utils.data import IterDataPipe, MapDataPipe
    from torch.utils.data import graph_settings as _graph
    from torch.utils.data.datapipes.datapipe import (_IterDataPipeSerializationWrapper,
                                                     _MapDataPipeSerializationWrapper)
except ImportError:  # pragma: no cover - a torch without DataPipes
    IterDataPipe = MapDataPipe = None  # type: ignore[assignment,misc]


def is_datapipe(dataset: Any) -> bool:
    """A DataPipe of either kind (False where this torch has none)."""
    return IterDataPipe is not None and isinstance(dataset, (IterDataPipe, MapDataPipe))


def is_iter_datapipe(dataset: Any) -> bool:
    return IterDataPipe is not None and isinstance(dataset, IterDataPipe)


def wrap(dataset: Any, shuffle: bool | None) -> Any:
    """What the loader keeps of ``dataset``: a DataPipe in torch's serialisation wrapper
    (it pickles lambdas with dill where available), with ``shuffle`` applied to its
    shufflers when given; anything else unchanged."""
    if not is_datapipe(dataset):
        return dataset
    if isinstance(dataset, IterDataPipe):
        if shuffle is not None:
            dataset = _graph.apply_shuffle_settings(dataset, shuffle=shuffle)
        if not isinstance(dataset, _IterDataPipeSerializationWrapper):
            dataset = _IterDataPipeSerializationWrapper(dataset)
    elif not isinstance(dataset, _MapDataPipeSerializationWrapper):
        dataset = _MapDataPipeSerializationWrapper(dataset)
    return dataset


def seed_group():
    """The process group shared seeds are broadcast in: a gloo group of all ranks (the
    default group may be NCCL-only, and its collectives are the training loop's), as
    torch's iterator makes one; None without ``torch.distributed``. Every rank must call
    it at the same point (the loader's first iter())."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.new_group(backend="gloo")
    return None


def draw_shared_seed(dataset: Any, generator: torch.Generator | None, group=None) -> int | None:
    """One draw from ``generator`` (or torch's global RNG) for an IterDataPipe, as torch's
    iterator makes before its base seed; rank 0's value on every rank of ``group``
    (``seed_group()``). None for anything else (and no draw)."""
    if not is_iter_datapipe(dataset):
        return None
    seed = torch.empty((), dtype=torch.int64).random_(generator=generator)
    if group is not None:
        import torch.distributed as dist

        dist.broadcast(seed, src=0, group=group)
    return int(seed.item())


def apply_seed(dataset: Any, shared_seed: int | None) -> Any:
    """Seed the random pipes of ``dataset`` from ``shared_seed`` (no-op when None)."""
    if shared_seed is None or not is_iter_datapipe(dataset):
        return dataset
    rng = torch.Generator()
    rng.manual_seed(shared_seed)
    return _graph.apply_random_seed(dataset, rng)


def world_and_rank() -> tuple[int, int]:
    """(world size, rank) under an initialised ``torch.distributed``, else (1, 0). Read in the
    main process: a spawn or forkserver worker has no process group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def shard(dataset: Any, num_workers: int, worker_id: int, world: int = 1, rank: int = 0) -> None:
    """Split ``sharding_filter()`` pipes among all loading processes: ``num_workers`` per
    rank (1 with ``num_workers=0``), times ``world`` ranks (``world_and_rank()``)."""
    if not is_datapipe(dataset):
        return
    _graph.apply_sharding(dataset, num_workers * world, worker_id * world + rank)
