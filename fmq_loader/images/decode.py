"""Image decoding: file bytes -> RGB ``PIL.Image``, at reduced scale when the output allows.

Everything here returns a ``PIL.Image.Image`` in mode ``"RGB"``; transforms and
``ImageFolder`` build on that. Two decoders exist:

- ``"pillow"``: every format Pillow reads (JPEG, PNG, WebP, BMP, GIF first frame, TIFF, ...).
- ``"simplejpeg"``: libjpeg-turbo called directly, JPEG only (``pip install "fmq-loader[fast]"``).
  Non-JPEG data, CMYK/YCCK JPEGs and JPEGs it rejects fall back to Pillow.
- ``"turbo"``: our C extension ``fmq_loader.images._jpegregion`` (built at install where
  libjpeg-turbo's headers are; setup.py), for crops: NOTE [ region decoding ]. Whole
  images, and JPEGs it does not take (CMYK/YCCK, EXIF-rotated, corrupt or truncated),
  go to simplejpeg or Pillow.

``decoder="auto"`` (the default) uses the region decoder for crops of JPEGs when it is
built, simplejpeg for other JPEG decodes when it is installed, and Pillow otherwise.

NOTE [ region decoding ]
A crop (RandomResizedCrop, Resize's whole-image box) of a JPEG is decoded by
``_jpegregion.decode``: at the reduced scale below, only the rows of the crop (the rows
above it are skipped with ``jpeg_skip_scanlines``, which still entropy-decodes them but
does no IDCT, upsampling or colour conversion; decoding stops after its last row) and
only its columns widened to iMCU boundaries (``jpeg_crop_scanline``), straight into one
buffer that numpy and torch view without a copy. Its pixels are bit-identical to
Pillow's decode of the same region at the same scale (both libjpeg-turbo, ISLOW IDCT,
fancy upsampling; checked in ``tests/test_decode.py``). It is strict: any libjpeg
warning (corrupt data, extraneous bytes before a marker, a truncated file), a CMYK or
YCCK file, an EXIF-rotated one, and 4:1:0-style sampling at reduced scale (which
libjpeg-turbo 2.1 crops wrongly) go to simplejpeg or Pillow, which decide as before. A RandomResizedCrop of a
1000x750 photo-like JPEG: 1.8 ms for a 300x300 crop against 3.1 ms for the whole image
(2026-12-05, 2-core dev VM). The size a transform needs to draw its crop comes from
``_jpegregion.header`` (libjpeg's marker parser, ~1 us; Pillow's open took ~16 us).

What is left is entropy decoding: in a JPEG without restart markers every row above the
crop's last one must be Huffman-decoded to find the next, and that is 85-95% of a region
decode on photo-like files (``python -m fmq_loader.bench images --steps``;
docs/benchmarks.md, "Where a worker's time goes on a photo"). A JPEG whose restart
markers tile its rows is cut instead: only the intervals covering the crop are decoded
(NOTE [ restart grid ] in _jpegregion.c; ``fmq-loader regrid`` writes such copies
losslessly), 2/3 of the time on 1600x1200 photos. Decoding straight into
the slab's row would save the 3 us copy of a 224x224 result, and libjpeg-turbo's M/8
scales (M other than 1, 2, 4, 8) are slower than 8/8 (no SIMD IDCT): neither was done.

NOTE [ reduced-scale decoding ]
A JPEG can be decoded at 1/2, 1/4 or 1/8 scale inside the IDCT, which cuts decode work
2-8x. ``EncodedImage.decode_region(box, size)`` picks the largest such factor for which
the crop ``box`` still covers at least ``size`` pixels after reduction, so the final
resample is always a downscale (or identity), never an upscale. On ~500x375 sources and a
224 target this means no reduction (it needs >= 2x the target); on larger photos it is the
main speed-up. The pixels differ slightly from a full decode followed by the same resize:
on synthetic photo-like JPEGs the mean absolute difference is below 1.5 levels (of 255)
and PSNR above 33 dB (checked in ``tests/test_decode.py`` and, for the whole
RandomResizedCrop path, ``tests/test_transforms.py``). Measured on 40 generated 1000x750
JPEGs, RandomResizedCrop(224) of the encoded file vs full decode + crop + Pillow resize:
mean 0.42 levels (worst image 1.10), max 18 on single pixels, PSNR >= 44.5 dB.

Decoder tolerance: on a full-size decode of the same JPEG, simplejpeg and Pillow (both
libjpeg-turbo, ISLOW DCT, fancy upsampling) agree within a mean absolute difference of
0.5 levels and a maximum of 8 levels per channel (checked in ``tests/test_decode.py``);
with simplejpeg 1.9 and Pillow 13 wheels they were bit-identical on our test images.

Conversion to RGB: L, LA, P, PA, RGBA, CMYK, YCbCr, 1 go through ``Image.convert("RGB")``
(alpha is dropped, as torchvision's loader does); 16-bit grayscale (I;16*, and I with
values above 255) is scaled by 1/257; F is clipped to [0, 255].

A little over the ~400-line guide: EncodedImage (~200 lines) is one class choosing among
three decoders and reduced scales.
"""

from __future__ import annotations

import io
import os
from typing import Union

import numpy as np
from PIL import Image, ImageOps

from fmq_loader.errors import FMQError

try:  # optional fast decoder
    import simplejpeg as _simplejpeg
except ImportError:  # pragma: no cover - depends on the environment
    _simplejpeg = None

try:  # our optional C extension (setup.py builds it where libjpeg-turbo's headers are)
    from fmq_loader.images import _jpegregion
except ImportError:  # pragma: no cover - depends on the build
    _jpegregion = None

__all__ = [
    "DECODERS",
    "DecodeError",
    "EncodedImage",
    "RawImage",
    "UNDECODED",
    "decode",
    "fast_decoder_available",
    "to_rgb",
]

DECODERS = ("auto", "pillow", "simplejpeg", "turbo")
_JPEG_MAGIC = b"\xff\xd8\xff"
_ORIENTATION_TAG = 0x0112
_SWAPS_AXES = {5, 6, 7, 8}

Source = Union[str, os.PathLike, bytes, bytearray, memoryview]


class DecodeError(FMQError, OSError):
    """A file could not be read or decoded as an image.

    Attributes:
        path: the file's path, or None when decoding bytes.
    """

    def __init__(self, message: str, path: str | None = None):
        super().__init__(message)
        self.path = path

    def __reduce__(self):
        return (type(self), (str(self), self.path))


def fast_decoder_available() -> bool:
    """Return True when the optional simplejpeg decoder is importable."""
    return _simplejpeg is not None


def region_decoder_available() -> bool:
    """Return True when the C region decoder (``decoder="turbo"``) was built."""
    return _jpegregion is not None


def check_decoder(decoder: str) -> str:
    """Validate a decoder name.

    Args:
        decoder: one of ``DECODERS``.

    Returns:
        the decoder name.

    Raises:
        ValueError: unknown name, or "simplejpeg" when it is not installed.
    """
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}; "
                         "use 'auto' to pick the fastest installed one")
    if decoder == "simplejpeg" and _simplejpeg is None:
        raise ValueError("decoder 'simplejpeg' needs the simplejpeg package, got it not "
                         "installed; pip install 'fmq-loader[fast]' or use decoder='pillow'")
    if decoder == "turbo" and _jpegregion is None:
        raise ValueError("decoder 'turbo' needs the C extension fmq_loader.images._jpegregion, got it "
                         "not built (no libjpeg-turbo headers when fmq-loader was installed: "
                         "apt-get install libjpeg62-turbo-dev, then reinstall); or use "
                         "decoder='auto'")
    return decoder


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow image to mode RGB (see the module docstring for the rules)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(img).astype(np.float64)
        if mode.startswith("I;16") or (mode == "I" and arr.size and arr.max() > 255):
            arr = arr / 257.0
        gray = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(gray[:, :, None], 3, axis=2))
    return img.convert("RGB")


class EncodedImage:
    """An image not yet decoded: its bytes, with the header read on demand.

    Our geometric transforms accept an ``EncodedImage`` and call ``decode_region`` so a
    JPEG is decoded at the smallest scale their output allows; anything else calls
    ``decode()``.

    Args:
        data: the file's bytes.
        path: where they came from, for error messages.
        decoder: "auto", "pillow" or "simplejpeg" (see the module docstring).
        exif_transpose: apply the EXIF orientation tag, so ``size`` and the pixels are
            upright. Oriented JPEGs are decoded at full scale.
        size: (width, height) when already known (a packed record's index has it): the
            header is then not parsed for it. Only without ``exif_transpose``.
    """

    __slots__ = ("data", "path", "decoder", "exif_transpose", "_size", "_orientation",
                 "_is_jpeg")

    def __init__(self, data: bytes, path: str | None = None, decoder: str = "auto",
                 exif_transpose: bool = False, size: tuple[int, int] | None = None):
        self.data = data
        self.path = path
        self.decoder = check_decoder(decoder)
        self.exif_transpose = bool(exif_transpose)
        if size is not None and self.exif_transpose:
            raise ValueError("EncodedImage: a known size cannot be combined with "
                             "exif_transpose=True (the orientation tag must be read)")
        self._size: tuple[int, int] | None = size
        self._orientation = 1
        self._is_jpeg = bytes(data[:3]) == _JPEG_MAGIC

    def _fail(self, what: str, exc: BaseException) -> DecodeError:
        where = repr(self.path) if self.path is not None else f"<{len(self.data)} bytes>"
        return DecodeError(f"{where} could not be {what}: {type(exc).__name__}: {exc}; "
                           "check the file, or use on_error='skip' to replace bad samples",
                           self.path)

    def _use_simplejpeg(self) -> bool:
        return self._is_jpeg and _simplejpeg is not None and self.decoder != "pillow"

    def _open_pillow(self) -> Image.Image:
        return Image.open(io.BytesIO(self.data))

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the decoded image, after EXIF orientation if enabled.

        Raises:
            DecodeError: the header is not a readable image header.
        """
        if self._size is None:
            self._read_header()
        return self._size

    def _read_header(self) -> None:
        width = height = None
        if (self._is_jpeg and _jpegregion is not None and not self.exif_transpose
                and self.decoder in ("auto", "turbo")):
            try:  # libjpeg reads the markers only: ~1 us against Pillow's ~16 us
                width, height, _, _ = _jpegregion.header(self.data)
            except ValueError:
                width = None  # anything odd: the others try and report
        if width is None and self._use_simplejpeg() and not self.exif_transpose:
            try:
                height, width, _, _ = _simplejpeg.decode_jpeg_header(self.data)
            except ValueError:
                width = None  # let Pillow try and report
        if width is None:
            try:
                with self._open_pillow() as im:
                    width, height = im.size
                    if self.exif_transpose:
                        self._orientation = int(im.getexif().get(_ORIENTATION_TAG, 1) or 1)
            except MemoryError:
                raise
            except Exception as exc:  # any Pillow failure is a decode failure
                raise self._fail("read as an image", exc) from exc
        if self._orientation in _SWAPS_AXES:
            width, height = height, width
        self._size = (int(width), int(height))

    def _decode_scaled(self, scale: int):
        """Decode at 1/scale (JPEG only; others at full size).

        Returns:
            (pixels, fx, fy): pixels is an RGB ``PIL.Image`` or an HxWx3 uint8 array
            (whichever the decoder made); fx, fy are decoded pixels per original pixel.
        """
        self.size  # noqa: B018 - reads the header and orientation once
        if self._orientation != 1:
            scale = 1  # box mapping under rotation is not worth its complexity
        first_error = None
        if self._use_simplejpeg() and self._orientation == 1:  # Pillow rotates
            try:
                return self._decode_simplejpeg(scale)
            except ValueError as exc:  # CMYK, or data it is strict about: try Pillow
                first_error = exc
        try:
            return self._decode_pillow(scale)
        except MemoryError:
            raise
        except Exception as exc:  # any Pillow failure is a decode failure
            if first_error is not None:
                exc = type(exc)(f"{exc} (simplejpeg: {first_error})")
            raise self._fail("decoded", exc) from exc

    def _decode_simplejpeg(self, scale: int) -> tuple[np.ndarray, float, float]:
        width, height = self._size
        if scale > 1:
            min_w, min_h = -(-width // scale), -(-height // scale)
            arr = _simplejpeg.decode_jpeg(self.data, colorspace="RGB",
                                          min_width=min_w, min_height=min_h)
        else:
            arr = _simplejpeg.decode_jpeg(self.data, colorspace="RGB")
        out_h, out_w = arr.shape[:2]
        # libjpeg output is ceil(size * k / 8); recover k/8 from the width
        fx = fy = 1.0
        if (out_w, out_h) != (width, height):
            k = max(1, min(8, round(out_w * 8 / width)))
            fx = fy = k / 8
        return arr, fx, fy

    def _decode_pillow(self, scale: int) -> tuple[Image.Image, float, float]:
        im = self._open_pillow()
        fx = fy = 1.0
        if scale > 1 and im.format == "JPEG":
            width, height = im.size
            drafted = im.draft("RGB", (max(1, width // scale), max(1, height // scale)))
            if drafted is not None:
                _, dbox = drafted
                fx, fy = dbox[2] / width, dbox[3] / height
        im.load()
        if self._orientation != 1:
            im = ImageOps.exif_transpose(im)
        return to_rgb(im), fx, fy

    def decode(self, min_size: tuple[int, int] | None = None) -> Image.Image:
        """Decode to an RGB image, at reduced scale if ``min_size`` allows.

        Args:
            min_size: (width, height) the result must at least have, or None for full size.

        Returns:
            an RGB ``PIL.Image`` (at least ``min_size`` when given and the source is larger).

        Raises:
            DecodeError: the data cannot be decoded.
        """
        scale = 1
        if min_size is not None:
            width, height = self.size
            scale = _pick_scale(width, height, min_size)
        pixels = self._decode_scaled(scale)[0]
        return pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels, "RGB")

    def decode_region(self, box, size: tuple[int, int]):
        """Decode at the smallest scale at which ``box`` still covers ``size`` pixels.

        Args:
            box: (left, upper, right, lower) in pixels of the full-size (oriented) image.
            size: (width, height) the region will be resampled to.

        Returns:
            (pixels, scaled_box): pixels is an RGB ``PIL.Image`` or HxWx3 uint8 array;
            scaled_box is ``box`` in its coordinates (floats, clamped to the image).

        Raises:
            DecodeError: the data cannot be decoded.
        """
        scale = 1
        if self._is_jpeg:
            scale = _pick_scale(box[2] - box[0], box[3] - box[1], size)
            if _jpegregion is not None and self.decoder in ("auto", "turbo"):
                self.size  # noqa: B018 - reads the header and orientation once
                if self._orientation == 1:
                    try:
                        return self._decode_region_turbo(box, scale)
                    except (ValueError, OverflowError):  # CMYK, corrupt, truncated, 4:1:0
                        pass  # at reduced scale, a box beyond any size: the others decide
        pixels, fx, fy = self._decode_scaled(scale)
        if isinstance(pixels, Image.Image):
            width, height = pixels.size
        else:
            height, width = pixels.shape[:2]
        scaled = (max(0.0, box[0] * fx), max(0.0, box[1] * fy),
                  min(float(width), box[2] * fx), min(float(height), box[3] * fy))
        return pixels, scaled


    def _decode_region_turbo(self, box, scale: int):
        """NOTE [ region decoding ]: (HxWx3 array of a region covering ``box`` at 1/scale,
        ``box`` in that array's coordinates)."""
        f = 1.0 / scale
        left, top = int(box[0] * f), int(box[1] * f)  # floor: box >= 0
        right, bottom = -int(-box[2] * f // 1), -int(-box[3] * f // 1)  # ceil
        buf, width, height, x0, y0 = _jpegregion.decode(self.data, scale, left, top, right,
                                                        bottom)
        pixels = np.frombuffer(buf, np.uint8).reshape(height, width, 3)
        scaled = (min(float(width), max(0.0, box[0] * f - x0)),
                  min(float(height), max(0.0, box[1] * f - y0)),
                  min(float(width), box[2] * f - x0), min(float(height), box[3] * f - y0))
        return pixels, scaled


class RawImage:
    """Decoded uint8 pixels standing in for an ``EncodedImage`` (a raw packed record).

    Transforms treat it as they treat an encoded image: a crop or resize reads the
    region straight from ``pixels`` (no copy, no PIL image); anything else gets
    ``decode()``'s RGB ``PIL.Image`` (a copy).

    Args:
        pixels: HxWx3 uint8 array (may be a read-only view of a memory map).
        path: where it came from, for messages.
    """

    __slots__ = ("pixels", "path")

    def __init__(self, pixels: np.ndarray, path: str | None = None):
        self.pixels, self.path = pixels, path

    @property
    def size(self) -> tuple[int, int]:
        return int(self.pixels.shape[1]), int(self.pixels.shape[0])

    def decode(self, min_size: tuple[int, int] | None = None) -> Image.Image:
        return Image.fromarray(np.array(self.pixels), "RGB")

    def decode_region(self, box, size: tuple[int, int]):
        """(pixels, box clamped to them): the same contract as ``EncodedImage``'s."""
        width, height = self.size
        return self.pixels, (max(0.0, box[0]), max(0.0, box[1]), min(float(width), box[2]),
                             min(float(height), box[3]))


UNDECODED = (EncodedImage, RawImage)  # what transforms may receive before decoding


def _pick_scale(width: float, height: float, size: tuple[int, int]) -> int:
    """The largest JPEG reduction (8, 4, 2, 1) keeping width x height >= size."""
    for scale in (8, 4, 2):
        if width / scale >= size[0] and height / scale >= size[1]:
            return scale
    return 1


def read_bytes(path: str | os.PathLike) -> bytes:
    """Read a whole file; a failure becomes a ``DecodeError`` naming the path."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise DecodeError(f"{os.fspath(path)!r} could not be read: {type(exc).__name__}: "
                          f"{exc}; check that it exists and is readable",
                          os.fspath(path)) from exc


def decode(source: Source, size_hint: tuple[int, int] | None = None, decoder: str = "auto",
           exif_transpose: bool = False) -> Image.Image:
    """Decode an image file or bytes to an RGB ``PIL.Image``.

    Args:
        source: a path, or the encoded bytes.
        size_hint: (width, height) the result must at least have; a JPEG at least twice
            as large is decoded at 1/2, 1/4 or 1/8 scale. None decodes at full size.
        decoder: "auto", "pillow" or "simplejpeg".
        exif_transpose: apply the EXIF orientation tag.

    Returns:
        an RGB ``PIL.Image``; GIF and animated WebP give their first frame.

    Raises:
        DecodeError: the file cannot be read or decoded (the message names the path and
            the decoder's message).
        ValueError: an unknown or unavailable decoder.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, path = bytes(source), None
    else:
        path = os.fspath(source)
        data = read_bytes(path)
    return EncodedImage(data, path, decoder, exif_transpose).decode(size_hint)
