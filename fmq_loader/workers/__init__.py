"""Workers: the worker processes (worker.py runs in them), their pool, and what they do to a batch.

Built on transport/. See docs/design.md for the layers.
"""
