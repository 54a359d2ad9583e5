"""Mid-epoch resume: what ``FMQLoader.state_dict()`` holds and what ``load_state_dict()`` checks.

An epoch is fixed by its *epoch index* ``k`` (``loader.set_epoch(k)``, or else
the count of epochs begun): with ``seed=S`` the per-sample seeds come from
``(S, k)`` and a loader-owned shuffle from ``S + k`` (see distributed.py). So a
position is just ``(k, batches handed out)``. A resumed loader starts epoch
``k`` again with ``PullEpoch(start=b)``: the first ``b`` batches of the sampler
are skipped, and every later sample keeps its place in the epoch, hence its seed.

Only orders that can be drawn again are accepted: ``SequentialSampler``, the
loader's own (seed, epoch) order (``shuffle=True`` with ``seed`` and no
``generator``, or ``distributed=True``) and ``DistributedSampler``, in a plain
``BatchSampler``. Iterable datasets are refused: each worker iterates its own
copy of the stream, so there is no single position to record.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Protocol

from torch.utils.data import BatchSampler, DistributedSampler, SequentialSampler

from .distributed import EpochOrder

__all__ = ["EpochProgress", "Resume", "loader_state", "parse_state", "unresumable_reason"]


class Resumable(Protocol):
    """What these functions read of an FMQLoader, spelled out so that this module does not
    import loader.py (which imports it)."""

    dataset: Any
    sampler: Any
    batch_sampler: Any
    batch_size: int | None
    drop_last: bool
    auto_collation: bool
    num_workers: int
    in_order: bool
    seed: int | None
    _iterable: bool
    _epoch: int
    _epoch_set: bool
    _iterations: int
    _resume: "Resume | None"
    _progress: "EpochProgress | None"
    _prefetched: Any
    _prefetched_progress: "EpochProgress | None"

    def __len__(self) -> int: ...

FORMAT = "fmq_loader.state/1"


@dataclass
class EpochProgress:
    """How far the epoch that ``iter()`` last started has gone."""

    epoch: int  # its epoch index
    iterations: int  # the loader's epoch count when it was drawn
    start: int  # batches skipped at its start (a resumed epoch)
    sampler_epoch: int | None  # a user DistributedSampler's epoch when it was drawn
    ref: weakref.ref | None = None  # its iterator
    count: int = 0  # batches handed out after ``start`` (num_workers=0 path)
    finished: bool = False  # its iterator raised StopIteration

    def batches(self) -> int | None:
        """Batches handed out so far in this epoch; None once its iterator is gone unfinished."""
        it = self.ref() if self.ref is not None else None
        if it is None:
            return None
        yielded = getattr(it, "_yielded", None)  # a PullEpoch counts its own
        return self.start + (self.count if yielded is None else yielded)


@dataclass
class Resume:
    """A loaded position: the next ``iter()`` resumes epoch ``epoch`` after ``batches``."""

    epoch: int
    batches: int
    iterations: int
    sampler_epoch: int | None

    def check(self, loader: Resumable) -> None:
        """Raise if ``set_epoch`` since the load points at another epoch than the saved one."""
        if loader._epoch_set and loader._epoch != self.epoch:
            raise ValueError(
                f"load_state_dict() restored epoch {self.epoch} after {self.batches} batches, but "
                f"set_epoch({loader._epoch}) was called before iter(); call "
                f"set_epoch({self.epoch}) to finish that epoch first")
        sampler = order_sampler(loader)
        if (isinstance(sampler, DistributedSampler) and self.sampler_epoch is not None
                and sampler.epoch != self.sampler_epoch):
            raise ValueError(
                f"load_state_dict() restored a position in the DistributedSampler's epoch "
                f"{self.sampler_epoch}, but its epoch is now {sampler.epoch}; call "
                f"set_epoch({self.sampler_epoch}) before iter()")


def order_sampler(loader: Resumable):
    """The sampler that orders the samples (inside a plain BatchSampler, if any)."""
    if loader.auto_collation and type(loader.batch_sampler) is BatchSampler:
        return loader.batch_sampler.sampler
    return loader.sampler if not loader.auto_collation else None


def unresumable_reason(loader: Resumable) -> str | None:
    """Why this loader's position cannot be saved and restored, or None if it can."""
    if loader._iterable:
        return ("an iterable dataset has no position FMQLoader can restore (each worker iterates "
                "its own copy of the stream); checkpoint the stream's own position instead")
    if loader.seed is None:
        return ("resuming needs FMQLoader(seed=...): without it the epoch's shuffle and "
                "augmentation seeds come from torch's global RNG and cannot be drawn again")
    if loader.num_workers > 0 and not loader.in_order:
        return ("in_order=False hands batches out as they finish, so no count of batches marks "
                "what was seen; use in_order=True")
    if loader.auto_collation and type(loader.batch_sampler) is not BatchSampler:
        return (f"batch_sampler {type(loader.batch_sampler).__name__} cannot be replayed; pass "
                "batch_size= and a reproducible sampler instead")
    sampler = order_sampler(loader)
    if not isinstance(sampler, (EpochOrder, SequentialSampler, DistributedSampler)):
        return (f"sampler {type(sampler).__name__} gives an order that cannot be drawn again; "
                "for a shuffled order pass shuffle=True with seed= and no generator (the loader "
                "then shuffles from seed + epoch), or use distributed=True or a DistributedSampler")
    return None


def signature(loader: Resumable) -> dict:
    """What must match between the saved loader and the restoring one."""
    batch_size, drop_last = loader.batch_size, loader.drop_last
    if batch_size is None and loader.auto_collation:  # a user-given BatchSampler
        batch_size = loader.batch_sampler.batch_size
        drop_last = loader.batch_sampler.drop_last
    sampler = order_sampler(loader)
    sig = {"dataset_length": len(loader.dataset), "batch_size": batch_size,
           "drop_last": drop_last, "seed": loader.seed, "sampler": type(sampler).__name__}
    if isinstance(sampler, (EpochOrder, DistributedSampler)):
        sig.update(shuffle=sampler.shuffle, sampler_seed=sampler.seed,
                   world_size=sampler.num_replicas, rank=sampler.rank)
    return sig


def loader_state(loader: Resumable) -> dict:
    """``FMQLoader.state_dict()``: the position of the epoch in progress, or of the next one."""
    reason = unresumable_reason(loader)
    if reason is not None:
        raise ValueError(f"FMQLoader.state_dict(): {reason}")
    epoch = batches = sampler_epoch = None
    pending, progress = loader._resume, loader._progress
    seen = progress.batches() if progress is not None and not progress.finished else None
    if pending is not None:  # loaded, not iterated yet: the same position again
        epoch, batches, iterations = pending.epoch, pending.batches, pending.iterations
        sampler_epoch = pending.sampler_epoch
    elif seen is not None:
        epoch, batches, iterations = progress.epoch, seen, progress.iterations
        sampler_epoch = progress.sampler_epoch
    elif loader._prefetched is not None and loader._prefetched_progress is not None:
        iterations = loader._prefetched_progress.iterations  # drawn early; redrawn at resume
    else:
        iterations = loader._iterations
    return {"format": FORMAT, **signature(loader), "epoch": epoch, "batches_seen": batches or 0,
            "epochs_begun": iterations, "set_epoch": loader._epoch if loader._epoch_set else None,
            "sampler_epoch": sampler_epoch}


def parse_state(loader: Resumable, state) -> Resume | None:
    """Check ``state`` against ``loader``; the position to resume, or None (between epochs)."""
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        got = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"FMQLoader.load_state_dict() expects a dict from state_dict() with "
                         f"format {FORMAT!r}, got {got!r}")
    reason = unresumable_reason(loader)
    if reason is not None:
        raise ValueError(f"FMQLoader.load_state_dict(): {reason}")
    ours = signature(loader)
    wrong = [f"{key} {state.get(key)!r} in the state, {value!r} here"
             for key, value in ours.items() if state.get(key) != value]
    if wrong:
        raise ValueError("FMQLoader.load_state_dict(): the state comes from a different loader: "
                         + "; ".join(wrong) + ". Build the loader with the same dataset, "
                         "batch_size, drop_last, seed, shuffle and world size to resume, or "
                         "start afresh without load_state_dict()")
    epoch, batches = state["epoch"], state["batches_seen"]
    if epoch is None:
        return None
    if not 0 <= batches <= len(loader):
        raise ValueError(f"FMQLoader.load_state_dict(): batches_seen must be within 0..{len(loader)} "
                         f"(batches per epoch), got {batches!r}")
    return Resume(epoch, batches, state["epochs_begun"], state["sampler_epoch"])
