"""Transport: shared-memory slabs, the pickling codec, the stealer thread and the Queue built on them.

The lowest layer; it imports only fmq_loader.errors. See docs/design.md for the layers.
"""
