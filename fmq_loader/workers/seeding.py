"""Worker and per-sample RNG seeds: augmentations that do not depend on which process loads a sample.

Worker seeds, as torch's DataLoader: a worker starts with ``random`` and torch
seeded from ``base_seed + worker_id`` (``torch.initial_seed()`` and
``get_worker_info().seed`` say that number) and numpy with the same 128-bit state
torch gives it, before ``worker_init_fn`` runs: draws there are torch's.

Per-sample seeds, our addition: before it loads the sample at ``position``
(its place in the epoch's index stream, counted from 0 across batches), a
worker -- or the main process with ``num_workers=0`` -- seeds ``random``,
numpy's global RNG and torch's CPU generator from ``sample_seed(base_seed,
position)``. The batch contents of an epoch are then the same for any
``num_workers``, start method, first-batch split or task order; only
``base_seed`` (one per epoch) matters.

NOTE [ a generator worker_init_fn seeds is its own ]: users seed their own
libraries in ``worker_init_fn`` (``np.random.seed(torch.initial_seed() %
2**32)``, ``torch.manual_seed(12345)``), and torch keeps what they set. A
generator whose state ``worker_init_fn`` changed (seeded, or drew from) is
therefore left alone from then on: no per-sample or per-epoch reseeding of it
in that worker. The others are still seeded per sample.

NOTE [ seeding cost ]: per sample, on the 2-core dev VM (2026-12-05, Python 3.11,
numpy 2.4, torch 2.13): ``random.seed`` 3.3 us with a 32-bit seed (4.7 us with 63
bits), numpy's legacy ``seed`` 1.3 us with one 32-bit int (6.6 us with a two-word
tuple: it then runs init_by_array), torch's CPU generator 1.0 us; ~7 us in all with
``sample_seed``, from ~14 us before. ``random`` and numpy therefore get 32 bits each
(the high and the low half of the sample seed, so their streams differ); torch gets
all 63. ``torch.manual_seed`` would add ~110 us because it also visits every
accelerator backend, so only the CPU generator is seeded. With 32-bit seeds, two
samples of an epoch of n share a numpy (or ``random``) stream with probability about
n^2 / 2^33: a handful of pairs in an ImageNet epoch, each still a different image.
"""

from __future__ import annotations

import random
from typing import Callable

import numpy as np

__all__ = ["sample_seed", "seed_sample", "seed_everything", "seed_worker", "rng_snapshot",
           "changed_since", "sample_seeder"]

GENERATORS = ("random", "numpy", "torch")

_GOLDEN = 0x9E3779B97F4A7C15
_MASK63 = (1 << 63) - 1


def sample_seed(base_seed: int, position: int) -> int:
    """A 63-bit seed for the sample at ``position`` of the epoch seeded ``base_seed``."""
    x = (base_seed + (position + 1) * _GOLDEN) & ((1 << 64) - 1)
    # splitmix64 finaliser: neighbouring positions give unrelated seeds
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & ((1 << 64) - 1)
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & ((1 << 64) - 1)
    return (x ^ (x >> 31)) & _MASK63


def seed_sample(seed: int, torch_gen) -> None:
    """Seed ``random`` and numpy's global RNG from 32 bits each of ``seed`` (different ones)
    and ``torch_gen`` (torch's default CPU generator) from all 63. See NOTE [ seeding cost ]."""
    random.seed(seed >> 32)
    np.random.seed(seed & 0xFFFFFFFF)
    torch_gen.manual_seed(seed)


def seed_everything(seed: int) -> None:
    """Seed ``random``, numpy and torch (every device, via ``torch.manual_seed``) once."""
    import torch

    random.seed(seed)
    torch.manual_seed(seed)
    np.random.seed(np.random.SeedSequence(seed % 2**64).generate_state(4))


def seed_worker(base_seed: int, worker_id: int, skip: frozenset = frozenset()) -> int:
    """Seed a worker as torch's DataLoader does (see the module docstring); return its seed.

    ``skip``: generators that are the user's (NOTE [ a generator worker_init_fn seeds
    is its own ]), left as they are.
    """
    import torch

    seed = base_seed + worker_id
    if "random" not in skip:
        random.seed(seed)
    if "torch" not in skip:
        torch.manual_seed(seed)
    if "numpy" not in skip:
        # torch's _generate_state(base_seed, worker_id) is this SeedSequence, word for word
        np.random.seed(np.random.SeedSequence([worker_id, base_seed]).generate_state(4))
    return seed


def rng_snapshot() -> tuple:
    """The state of ``random``, numpy's global RNG and torch's CPU generator."""
    import torch

    return (random.getstate(), np.random.get_state(),
            (torch.initial_seed(), torch.default_generator.get_state()))


def changed_since(before: tuple) -> frozenset:
    """The generators (names from ``GENERATORS``) whose state differs from ``before``."""
    import torch

    after = rng_snapshot()
    changed = set()
    if after[0] != before[0]:
        changed.add("random")
    if not all(np.array_equal(a, b) for a, b in zip(after[1], before[1])):
        changed.add("numpy")
    if after[2][0] != before[2][0] or not torch.equal(after[2][1], before[2][1]):
        changed.add("torch")
    return frozenset(changed)


def sample_seeder(skip: frozenset = frozenset()) -> Callable[[int], None]:
    """A function that seeds every generator but those in ``skip`` from one sample seed."""
    import torch

    torch_gen = torch.default_generator
    if not skip:
        return lambda seed: seed_sample(seed, torch_gen)
    steps = []
    if "random" not in skip:
        steps.append(lambda seed: random.seed(seed >> 32))
    if "numpy" not in skip:
        steps.append(lambda seed: np.random.seed(seed & 0xFFFFFFFF))
    if "torch" not in skip:
        steps.append(torch_gen.manual_seed)

    def seed_some(seed: int) -> None:
        for step in steps:
            step(seed)
    return seed_some
