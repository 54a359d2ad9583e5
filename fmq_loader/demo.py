"""``fmq_loader.demo``, the public path of the training demo (``from fmq_loader.demo import train``).

The code is in tools/demo.py (examples/, docs/observability.md); this module only re-exports it.
"""

from .tools.demo import LoaderTiming, SmallCNN, TrainResult, time_loader, train

__all__ = ["SmallCNN", "TrainResult", "LoaderTiming", "train", "time_loader"]
