"""Your own map-style dataset with FMQLoader: anything with __len__ and __getitem__.

Each item may be a tensor, a numpy array, a number, or a dict/tuple of them; the
default collate stacks them like torch's. Workers lay each batch's arrays into a
shared-memory slab, so large tensors cross the process boundary without pickling.
"""

import numpy as np
import torch

from fmq_loader import FMQLoader


class NoisySignals:
    """1-D signals: class k is a sine of frequency k+1 plus noise; made on demand."""

    def __init__(self, n: int = 2048, length: int = 4096, classes: int = 4):
        self.n, self.length, self.classes = n, length, classes

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng(i)  # deterministic per index, whichever worker loads it
        label = i % self.classes
        t = np.linspace(0, 2 * np.pi, self.length, dtype=np.float32)
        signal = np.sin((label + 1) * t) + rng.normal(0, 0.3, self.length).astype(np.float32)
        return {"signal": torch.from_numpy(signal), "label": label, "index": i}


if __name__ == "__main__":
    dataset = NoisySignals()
    with FMQLoader(dataset, batch_size=128, shuffle=True, num_workers=2, seed=0) as loader:
        seen = 0
        for batch in loader:
            x, y = batch["signal"], batch["label"]  # float32 [128, 4096], int64 [128]
            seen += len(y)
        print(f"{seen} signals in {len(loader)} batches; last batch {tuple(x.shape)} "
              f"{x.dtype}, labels {y[:8].tolist()}...")
