"""``fmq_loader.transforms``, the public path of the image transforms (``from fmq_loader import transforms as T``).

The code is in images/transforms.py; this module only re-exports it, so user code and
pickles that name ``fmq_loader.transforms`` keep working.
"""

from .images.transforms import (CenterCrop, Compose, Normalize, PILToTensor, RandomHorizontalFlip,
                                RandomResizedCrop, Resize, ToTensor, ToUint8Tensor, get_rng,
                                use_rng)

__all__ = ["CenterCrop", "Compose", "Normalize", "PILToTensor", "RandomHorizontalFlip",
           "RandomResizedCrop", "Resize", "ToTensor", "ToUint8Tensor", "get_rng", "use_rng"]
