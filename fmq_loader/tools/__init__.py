"""Tools: YAML configs, building loaders from them, the fmq-loader command line, tune and the demo.

The top layer; it may import every other. See docs/design.md for the layers.
"""
