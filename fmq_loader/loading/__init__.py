"""Loading: FMQLoader and its epochs, the torch-DataLoader-compatible front over a worker pool.

Built on workers/ and transport/. See docs/design.md for the layers.
"""
