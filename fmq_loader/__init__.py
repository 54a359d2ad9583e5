"""fmq_loader: a drop-in torch DataLoader fed through reused shared-memory slabs.

Workers decode and collate batches into shared-memory slabs; a stealer thread in
your process rebuilds them as zero-copy tensors before your loop asks.
"""

from . import transforms  # the public path; the code is in images/transforms.py
from . import _version
from .decode import DecodeError
from .errors import (BatchTooLarge, CollateError, ConfigError, FMQError, ProducersGone,
                     QueueClosed, QueueTimeout, WorkerError)
from .images.datasets import ImageFolder
from .images.packed import PackedImages
from .images.packfile import PackError
from .images.regrid import regrid_folder
from .images.synth import make_dataset
from .loading.loader import FMQLoader
from .tools.build import build_from_config  # also attaches FMQLoader.from_config
from .tools.config import LoaderConfig, load_config
from .transport.queue import Queue
from .workers.pool import ProducerPool
from .workers.worker import WorkerInfo, get_worker_info

__version__ = _version.__version__

__all__ = [
    "FMQLoader", "ProducerPool", "Queue", "ImageFolder", "PackedImages", "regrid_folder",
    "make_dataset", "transforms",
    "LoaderConfig", "load_config", "build_from_config",
    "get_worker_info", "WorkerInfo",
    "FMQError", "ConfigError", "BatchTooLarge", "CollateError", "QueueClosed", "QueueTimeout",
    "ProducersGone", "WorkerError", "DecodeError", "PackError",
]
