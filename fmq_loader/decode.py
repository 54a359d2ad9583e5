"""``fmq_loader.decode``, the public path of the image decoders (``DecodeError``, docs/install.md).

The code is in images/decode.py; this module only re-exports it.
"""

from .images.decode import (DECODERS, UNDECODED, DecodeError, EncodedImage, RawImage, decode,
                            fast_decoder_available, region_decoder_available, to_rgb)

__all__ = ["DECODERS", "DecodeError", "EncodedImage", "RawImage", "UNDECODED", "decode",
           "fast_decoder_available", "region_decoder_available", "to_rgb"]
