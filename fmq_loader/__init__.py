"""fmq_loader: a drop-in torch DataLoader fed through reused shared-memory slabs."""

from .errors import (BatchTooLarge, ConfigError, FMQError, ProducersGone, QueueClosed,
                     QueueTimeout, WorkerError)
from .queue import Queue

__version__ = "0.1.0"

__all__ = [
    "Queue",
    "FMQError", "ConfigError", "BatchTooLarge", "QueueClosed", "QueueTimeout",
    "ProducersGone", "WorkerError",
]
