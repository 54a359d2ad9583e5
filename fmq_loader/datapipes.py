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

__all__ = ["is_datapipe", "wrap", "draw_shared_seed", "apply_seed", "shard"]

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


def draw_shared_seed(dataset: Any, generator: torch.Generator | None) -> int | None:
    """One draw from ``generator`` (or torch's global RNG) for an IterDataPipe, as torch's
    iterator makes before its base seed; the same value on every rank under
    ``torch.distributed``. None for anything else (and no draw)."""
    if not is_iter_datapipe(dataset):
        return None
    seed = torch.empty((), dtype=torch.int64).random_(generator=generator)
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.broadcast(seed, src=0)
    return int(seed.item())


def apply_seed(dataset: Any, shared_seed: int | None) -> Any:
    """Seed the random pipes of ``dataset`` from ``shared_seed`` (no-op when None)."""
    if shared_seed is None or not is_iter_datapipe(dataset):
        return dataset
    rng = torch.Generator()
    rng.manual_seed(shared_seed)
    return _graph.apply_random_seed(dataset, rng)


def shard(dataset: Any, num_workers: int, worker_id: int) -> None:
    """Split ``sharding_filter()`` pipes among all loading processes: ``num_workers`` per
    rank (1 with ``num_workers=0``), times the world size under ``torch.distributed``."""
    if not is_datapipe(dataset):
        return
    import torch.distributed as dist

    world, rank = 1, 0
    if dist.is_available() and dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
    _graph.apply_sharding(dataset, num_workers * world, worker_id * world + rank)
