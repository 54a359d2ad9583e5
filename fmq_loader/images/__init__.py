"""Images: ImageFolder, PackedImages, decoding, transforms, and synthetic image folders.

Independent of the loader stack (a dataset is just what workers call); imports only the base
modules (errors, progress). See docs/design.md for the layers.
"""
