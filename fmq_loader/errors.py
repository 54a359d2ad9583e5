"""The exception hierarchy of fmq_loader; nothing else.

Every error subclasses ``FMQError`` and the built-in exception it refines, so
``except ValueError`` (or ``TimeoutError``, ``RuntimeError``) keeps working.
"""

from __future__ import annotations

__all__ = [
    "FMQError",
    "ConfigError",
    "BatchTooLarge",
    "CollateError",
    "QueueClosed",
    "QueueTimeout",
    "ProducersGone",
    "WorkerError",
]


class FMQError(Exception):
    """Base class of every error raised by fmq_loader."""


class ConfigError(FMQError, ValueError):
    """A configuration value or argument is invalid."""


class BatchTooLarge(FMQError, ValueError):
    """A batch does not fit the shared memory the configuration allows."""


class CollateError(FMQError, ValueError, RuntimeError):
    """Samples of one batch cannot be collated together (different shapes or lengths).

    Also a ``RuntimeError``, the type torch's ``default_collate`` raises for them
    (from ``torch.stack``), so ``except RuntimeError`` keeps working.
    """


class QueueClosed(FMQError, ValueError):
    """The queue was closed by *this* process; no more put() or get()."""


class QueueTimeout(FMQError, TimeoutError, RuntimeError):
    """No item arrived within the timeout.

    Also a ``RuntimeError``, like the error torch's DataLoader raises on its
    ``timeout``, so ``except RuntimeError`` keeps working.
    """


class ProducersGone(FMQError, RuntimeError):
    """The other side of the queue died or went away."""


class WorkerError(FMQError, RuntimeError):
    """A worker process raised an exception or died.

    Attributes:
        worker_id: the worker's index, or None when unknown.
        pid: the worker's process id, or None when unknown.
    """

    def __init__(self, message: str, *, worker_id: int | None = None, pid: int | None = None):
        super().__init__(message)
        self.worker_id = worker_id
        self.pid = pid
