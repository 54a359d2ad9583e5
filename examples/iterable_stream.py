"""An IterableDataset sharded across workers with get_worker_info().

Each worker reads only its own share of the records (here: record i goes to worker
i % num_workers), so every record arrives exactly once. Without sharding, every
worker would replay the whole stream and you would see each record num_workers times.
"""

import torch
from torch.utils.data import IterableDataset

from fmq_loader import FMQLoader, get_worker_info


class RecordStream(IterableDataset):
    """A stream of ``count`` records (say, lines of a log file or rows of a shard)."""

    def __init__(self, count: int = 1000, width: int = 256):
        self.count, self.width = count, width

    def __iter__(self):
        info = get_worker_info()  # None in the main process (num_workers=0)
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        for i in range(worker, self.count, workers):
            yield torch.full((self.width,), float(i)), i


if __name__ == "__main__":
    stream = RecordStream()
    with FMQLoader(stream, batch_size=64, num_workers=2) as loader:
        ids = []
        for features, record_ids in loader:
            ids.extend(record_ids.tolist())
    assert sorted(ids) == list(range(stream.count)), "a record was lost or duplicated"
    print(f"{len(ids)} records, each exactly once, from 2 workers; first ids {ids[:6]}")
