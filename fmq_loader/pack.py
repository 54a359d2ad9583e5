"""``fmq_loader.pack``, the public path of ``pack`` (``from fmq_loader.pack import PackOptions, pack``).

The code is in images/pack.py (docs/packed.md); this module only re-exports it.
"""

from .images.pack import PackOptions, list_sources, pack, parse_size

__all__ = ["PackOptions", "list_sources", "pack", "parse_size"]
