"""Run under torchrun by test_distributed.py: each rank writes the indices it saw, per epoch.

Usage: torchrun --standalone --nproc_per_node=2 tests/_ddp_indices.py OUT_DIR
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler

from fmq_loader import FMQLoader

N = 21  # not a multiple of the world size: DistributedSampler pads one index


class Augmented(Dataset):
    def __len__(self) -> int:
        return N

    def __getitem__(self, i):
        return torch.tensor([float(i), float(torch.rand(()))], dtype=torch.float64)


def main(out_dir: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    seen = {}
    # distributed=True, epochs numbered by the loader itself
    with FMQLoader(Augmented(), batch_size=4, shuffle=True, seed=3, distributed=True,
                   num_workers=2, multiprocessing_context="fork") as loader:
        seen["distributed"] = [torch.cat(list(loader)).tolist() for _ in range(2)]
    # a DistributedSampler and set_epoch, as with torch's DataLoader
    sampler = DistributedSampler(Augmented(), shuffle=True, seed=3)
    with FMQLoader(Augmented(), batch_size=4, sampler=sampler, seed=3) as loader:
        seen["sampler"] = []
        for epoch in range(2):
            loader.set_epoch(epoch)
            seen["sampler"].append(torch.cat(list(loader)).tolist())
    # a sharded, shuffled DataPipe under spawn: the workers have no process group, so the
    # loader passes them world size and rank (they read 1 and 0 themselves before)
    from torch.utils.data import DataLoader
    from torch.utils.data.datapipes.iter import IterableWrapper

    seen["datapipe"] = {}
    for cls in (DataLoader, FMQLoader):
        pipe = IterableWrapper(range(N)).shuffle().sharding_filter()
        loader = cls(pipe, batch_size=None, num_workers=1, multiprocessing_context="spawn",
                     shuffle=True, generator=torch.Generator().manual_seed(5))
        seen["datapipe"][cls.__name__] = [int(x) for x in loader]
        if cls is FMQLoader:
            loader.close()
    dist.barrier()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"rank": rank, "world": dist.get_world_size(), **seen}, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
