"""Train a small model with DDP (gloo backend, CPU) on FMQLoader(distributed=True).

    torchrun --nproc_per_node=2 examples/ddp_train.py

Each rank reads its own shard of every epoch (DistributedSampler's order and padding).
Run alone (`python examples/ddp_train.py`), it is a world of one process.
"""

import os
import socket

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset

from fmq_loader import FMQLoader

TRUE_W = torch.tensor([3.0, -2.0, 0.5, 0.0, 1.0, -1.0, 2.0, 0.25])


class NoisyLine(Dataset):
    """4096 points of y = x . TRUE_W, with noise drawn in __getitem__ (a seeded augmentation)."""

    def __len__(self):
        return 4096

    def __getitem__(self, i):
        x = torch.randn(8, generator=torch.Generator().manual_seed(i))
        return x, x @ TRUE_W + 0.05 * torch.randn(())


def main():
    if "RANK" not in os.environ:  # not under torchrun: a world of one
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # the same initial weights on every rank
    model = DistributedDataParallel(torch.nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with FMQLoader(NoisyLine(), batch_size=64, shuffle=True, seed=0, distributed=True,
                   num_workers=2, persistent_workers=True) as loader:
        for epoch in range(3):
            loader.set_epoch(epoch)  # optional here: the loader counts epochs by itself
            for x, y in loader:
                loss = F.mse_loss(model(x).squeeze(1), y)
                opt.zero_grad()
                loss.backward()  # DDP averages the gradients across ranks
                opt.step()
            mean = torch.tensor([loss.item() / world])
            dist.all_reduce(mean)
            if rank == 0:
                print(f"epoch {epoch}: {len(loader)} batches per rank, last loss {mean.item():.4f}")
    if rank == 0:
        print(f"done: {world} rank(s), final loss {mean.item():.4f}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
