"""Decoding: formats and modes to RGB, EXIF orientation, reduced-scale JPEG, decoder tolerance."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from PIL import Image

from _images import encode, photo
from fmq_loader.images.decode import DecodeError, EncodedImage, decode, fast_decoder_available

needs_fast = pytest.mark.skipif(not fast_decoder_available(), reason="simplejpeg not installed")
DECODERS = ["pillow"] + (["simplejpeg"] if fast_decoder_available() else [])


@pytest.mark.parametrize("mode,fmt", [
    ("RGB", "JPEG"), ("L", "JPEG"), ("CMYK", "JPEG"), ("P", "PNG"), ("RGBA", "PNG"),
    ("LA", "PNG"), ("RGB", "WEBP"), ("RGB", "BMP"), ("P", "GIF"), ("L", "PNG"),
])
@pytest.mark.parametrize("decoder", DECODERS)
def test_decode_gives_rgb_of_the_same_size_for_every_mode_and_format(tmp_path, mode, fmt,
                                                                     decoder):
    src = photo((40, 30))
    img = src.convert(mode)
    path = tmp_path / f"x.{fmt.lower()}"
    img.save(path, fmt)
    out = decode(path, decoder=decoder)
    assert out.mode == "RGB" and out.size == (40, 30)
    expected = np.asarray(Image.open(path).convert("RGB"), np.int16)
    assert np.abs(np.asarray(out, np.int16) - expected).max() <= 8


def test_gif_decodes_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    out = np.asarray(decode(path))
    assert tuple(out[8, 8]) == (255, 0, 0)


def test_sixteen_bit_grayscale_is_scaled_to_eight_bits(tmp_path):
    arr = np.full((8, 8), 65535, np.uint16)
    arr[:4] = 257 * 100
    path = tmp_path / "g16.png"
    Image.fromarray(arr).save(path)
    out = np.asarray(decode(path))
    assert out[0, 0].tolist() == [100, 100, 100] and out[7, 7].tolist() == [255, 255, 255]


@pytest.mark.parametrize("decoder", DECODERS)
def test_exif_orientation_rotates_only_when_enabled(tmp_path, decoder):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rot.jpg"
    photo((40, 20)).save(path, exif=exif.tobytes())
    assert decode(path, decoder=decoder).size == (40, 20)
    assert decode(path, decoder=decoder, exif_transpose=True).size == (20, 40)
    assert EncodedImage(path.read_bytes(), exif_transpose=True, decoder=decoder).size == (20, 40)


@needs_fast
def test_simplejpeg_and_pillow_agree_within_documented_tolerance():
    """Documented in decode.py: mean |diff| <= 0.5 and max <= 8 levels on a full decode."""
    for seed in range(4):
        data = encode(photo((160, 120), seed), quality=90)
        a = np.asarray(decode(data, decoder="pillow"), np.int16)
        b = np.asarray(decode(data, decoder="simplejpeg"), np.int16)
        assert np.abs(a - b).mean() <= 0.5 and np.abs(a - b).max() <= 8


@pytest.mark.parametrize("decoder", DECODERS)
def test_reduced_scale_decode_stays_within_tolerance_of_full_decode(decoder):
    """Documented in decode.py: mean |diff| < 1.5 levels and PSNR > 33 dB."""
    data = encode(photo((640, 480), 3), quality=90)
    enc = EncodedImage(data, decoder=decoder)
    box, size = (40, 30, 600, 450), (224, 168)
    pixels, scaled = enc.decode_region(box, size)
    reduced_w = pixels.size[0] if isinstance(pixels, Image.Image) else pixels.shape[1]
    assert reduced_w == 320  # 560 / 2 >= 224, 560 / 4 < 224: half scale
    assert scaled == pytest.approx((20, 15, 300, 225))
    reduced = Image.fromarray(np.asarray(pixels)).resize(size, Image.BILINEAR, box=scaled)
    full = decode(data, decoder=decoder).resize(size, Image.BILINEAR, box=box)
    diff = np.asarray(reduced, np.float64) - np.asarray(full, np.float64)
    psnr = 10 * np.log10(255 ** 2 / np.mean(diff ** 2))
    assert np.abs(diff).mean() < 1.5 and psnr > 33


def test_size_hint_reduces_only_when_source_is_at_least_twice_as_large():
    data = encode(photo((500, 376)), quality=90)
    assert decode(data, size_hint=(224, 224)).size == (500, 376)
    assert decode(data, size_hint=(200, 150)).size == (250, 188)
    assert decode(data, size_hint=(120, 90)).size == (125, 94)
    assert decode(data, size_hint=(60, 40)).size == (63, 47)


@pytest.mark.parametrize("decoder", DECODERS)
def test_truncated_jpeg_raises_decode_error_naming_path(tmp_path, decoder):
    path = tmp_path / "cut.jpg"
    data = encode(photo((64, 48)))
    path.write_bytes(data[:len(data) * 2 // 3])
    with pytest.raises(DecodeError, match=r"cut\.jpg' could not be decoded: .*truncated") as info:
        decode(path, decoder=decoder)
    assert info.value.path == str(path)


def test_non_image_raises_decode_error_with_the_decoder_message(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("not an image")
    with pytest.raises(DecodeError, match=r"notes\.jpg' could not be read as an image: "
                                          r"UnidentifiedImageError"):
        decode(path)


def test_missing_file_raises_decode_error(tmp_path):
    with pytest.raises(DecodeError, match=r"gone\.jpg' could not be read: FileNotFoundError"):
        decode(tmp_path / "gone.jpg")


def test_decode_error_survives_pickling_with_its_path():
    err = pickle.loads(pickle.dumps(DecodeError("'/a.jpg' could not be decoded", "/a.jpg")))
    assert str(err) == "'/a.jpg' could not be decoded" and err.path == "/a.jpg"
    assert isinstance(err, OSError)


def test_unknown_decoder_is_rejected_with_the_choices():
    with pytest.raises(ValueError, match=r"decoder must be one of .* got 'nvjpeg'"):
        decode(b"", decoder="nvjpeg")


# -- the C region decoder (NOTE [ region decoding ] in decode.py) --------------------------

def test_the_region_decoder_is_built_where_libjpeg_headers_are():
    """setup.py builds it when libjpeg-turbo's headers are installed; a silent build
    failure would leave every crop on the slower decoders."""
    import os

    from fmq_loader.images.decode import region_decoder_available

    if not os.path.exists("/usr/include/jpeglib.h"):
        pytest.skip("no libjpeg headers on this machine")
    assert region_decoder_available()


needs_region = pytest.mark.skipif(
    not __import__("fmq_loader.images.decode", fromlist=["x"]).region_decoder_available(),
    reason="fmq_loader.images._jpegregion not built")


def _pillow_region(data: bytes, scale: int, box):
    im = Image.open(__import__("io").BytesIO(data))
    if scale > 1:
        im.draft("RGB", (im.width // scale, im.height // scale))
    return np.asarray(im.convert("RGB"))[box[1]:box[3], box[0]:box[2]]


@needs_region
@pytest.mark.parametrize("subsampling", [0, 1, 2])  # 4:4:4, 4:2:2, 4:2:0
@pytest.mark.parametrize("scale", [1, 2, 4, 8])
@pytest.mark.parametrize("box", [(0, 0, 1, 1), (37, 21, 161, 99), (100, 0, 241, 180),
                                 (0, 150, 240, 180), (0, 0, 240, 180)])
def test_region_pixels_are_pillows_bit_for_bit(scale, subsampling, box):
    from fmq_loader.images import _jpegregion

    data = encode(photo((241, 181), seed=3), quality=90, subsampling=subsampling)
    sbox = (box[0] // scale, box[1] // scale, max(box[0] // scale + 1, box[2] // scale),
            max(box[1] // scale + 1, box[3] // scale))
    buf, w, h, x0, y0 = _jpegregion.decode(data, scale, *sbox)
    got = np.frombuffer(buf, np.uint8).reshape(h, w, 3)
    assert y0 == sbox[1] and h == sbox[3] - sbox[1] and x0 <= sbox[0] and x0 + w >= sbox[2]
    expected = _pillow_region(data, scale, sbox)
    np.testing.assert_array_equal(got[:, sbox[0] - x0:sbox[2] - x0], expected)


@needs_region
def test_grayscale_and_progressive_jpegs_take_the_region_path_and_match_pillow():
    from fmq_loader.images import _jpegregion

    for data in (encode(photo((120, 90)).convert("L")),
                 encode(photo((120, 90)), progressive=True, quality=85)):
        buf, w, h, x0, y0 = _jpegregion.decode(data, 1, 10, 20, 90, 70)
        got = np.frombuffer(buf, np.uint8).reshape(h, w, 3)[:, 10 - x0:90 - x0]
        np.testing.assert_array_equal(got, _pillow_region(data, 1, (10, 20, 90, 70)))


@needs_region
@pytest.mark.parametrize("make,reason", [
    (lambda: encode(photo((64, 48)).convert("CMYK")), "colour space"),
    (lambda: encode(photo((64, 48)))[:900], "Premature end"),
    (lambda: b"GIF89a not a jpeg", "Not a JPEG"),
])
def test_region_decoder_refuses_what_it_does_not_handle_with_a_value_error(make, reason):
    from fmq_loader.images import _jpegregion

    with pytest.raises(ValueError, match=reason):
        _jpegregion.decode(make(), 1, 0, 0, 64, 48)
    with pytest.raises(ValueError, match="scale must be 1, 2, 4 or 8, got 3"):
        _jpegregion.decode(encode(photo()), 3, 0, 0, 8, 8)


@needs_region
def test_crops_fall_back_to_pillow_for_cmyk_and_exif_rotated_jpegs(tmp_path):
    """decode_region gives the same pixels through the fallback as Pillow does."""
    from fmq_loader.images.decode import EncodedImage

    cmyk = encode(photo((80, 60)).convert("CMYK"))
    pixels, box = EncodedImage(cmyk, decoder="auto").decode_region((10, 10, 50, 40), (40, 30))
    expected = np.asarray(Image.open(__import__("io").BytesIO(cmyk)).convert("RGB"))
    np.testing.assert_array_equal(np.asarray(pixels), expected)
    assert box == (10, 10, 50, 40)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees
    rotated = encode(photo((80, 60)), exif=exif)
    image = EncodedImage(rotated, decoder="turbo", exif_transpose=True)
    pixels, box = image.decode_region((0, 0, 60, 80), (30, 40))
    assert (np.asarray(pixels).shape[:2] if isinstance(pixels, np.ndarray)
            else pixels.size[::-1]) == (80, 60)


@needs_region
def test_a_random_resized_crop_through_the_region_decoder_equals_the_pillow_decoders():
    """Same transform, same seed, decoder 'turbo' against 'pillow': identical tensors at
    full scale (the region is bit-identical, the resize the same); at reduced scale within
    a level on average (Pillow's draft maps a 375-row side to 94 rows as 94/375, the
    region decoder as the exact 1/4, so the boxes differ by a fraction of a pixel)."""
    import random

    from fmq_loader import transforms as T
    from fmq_loader.images.decode import EncodedImage

    data = encode(photo((500, 375), seed=5), quality=90)
    for size, exact in ((224, True), (64, False)):
        crop = T.Compose([T.RandomResizedCrop(size), T.PILToTensor()])
        for seed in range(20):
            outs = []
            for decoder in ("turbo", "pillow"):
                with T.use_rng(random.Random(seed)):
                    outs.append(crop(EncodedImage(data, decoder=decoder)))
            assert outs[0].shape == (3, size, size)
            if exact:
                assert torch_equal(outs[0], outs[1]), f"seed {seed}"
            else:
                diff = (outs[0].float() - outs[1].float()).abs()
                assert diff.mean() < 1.0, f"seed {seed}: mean {diff.mean():.2f}"


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


@needs_region
def test_a_410_jpeg_is_cropped_exactly_at_full_scale_and_refused_at_reduced_scale():
    """libjpeg-turbo 2.1's jpeg_crop_scanline gives wrong pixels (up to 29 levels) inside
    the crop of a 4:1:0 JPEG at reduced scale; the region decoder refuses those, and
    decode_region falls back to Pillow."""
    import pathlib

    from fmq_loader.images import _jpegregion
    from fmq_loader.images.decode import EncodedImage

    data = (pathlib.Path(__file__).parent / "data" / "subsampling_410.jpg").read_bytes()
    buf, w, h, x0, y0 = _jpegregion.decode(data, 1, 10, 10, 50, 40)
    got = np.frombuffer(buf, np.uint8).reshape(h, w, 3)[:, 10 - x0:50 - x0]
    np.testing.assert_array_equal(got, _pillow_region(data, 1, (10, 10, 50, 40)))
    for scale in (2, 4, 8):
        with pytest.raises(ValueError, match="4:1:0"):
            _jpegregion.decode(data, scale, 0, 0, 96 // scale, 64 // scale)
    pixels, box = EncodedImage(data, decoder="auto").decode_region((0, 0, 96, 64), (40, 30))
    im = Image.open(__import__("io").BytesIO(data))
    im.draft("RGB", (48, 32))
    np.testing.assert_array_equal(np.asarray(pixels), np.asarray(im.convert("RGB")))


@needs_region
def test_the_c_header_reader_gives_pillows_size_and_refuses_what_is_odd():
    """EncodedImage.size reads JPEG headers with libjpeg (markers only); its sizes must
    be Pillow's, and anything libjpeg complains about must go to Pillow, which decides."""
    import io

    from fmq_loader.images import _jpegregion

    cases = [encode(photo((241, 181))), encode(photo((120, 90)).convert("L")),
             encode(photo((97, 63)), progressive=True), encode(photo((64, 48)).convert("CMYK")),
             encode(photo((33, 517)), subsampling=2)]
    for data in cases:
        width, height, components, _ = _jpegregion.header(data)
        with Image.open(io.BytesIO(data)) as im:
            assert (width, height) == im.size
            assert components == len(im.getbands())
        assert EncodedImage(data).size == (width, height)
    for bad in (b"\xff\xd8\xff", encode(photo((64, 48)))[:40], b"GIF89a not a jpeg"):
        with pytest.raises(ValueError, match="libjpeg"):
            _jpegregion.header(bad)
        with pytest.raises(DecodeError, match="could not be read as an image"):
            EncodedImage(bad).size  # noqa: B018 - Pillow's error, naming what it read
    truncated_after_header = encode(photo((241, 181)))[:1500]
    assert EncodedImage(truncated_after_header).size == (241, 181)  # decoding then fails
    with pytest.raises(DecodeError):
        EncodedImage(truncated_after_header).decode()


def _pillow_pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(__import__("io").BytesIO(data)))


@needs_region
@pytest.mark.parametrize("make", [
    lambda: encode(photo((241, 181), seed=1), quality=90),                 # 4:2:0
    lambda: encode(photo((241, 181), seed=2), quality=90, subsampling=0),  # 4:4:4
    lambda: encode(photo((241, 181), seed=3), quality=90, subsampling=1),  # 4:2:2
    lambda: encode(photo((130, 97)).convert("L")),
    lambda: encode(photo((130, 97)), progressive=True),
    lambda: encode(photo((64, 48)).convert("CMYK")),
])
def test_regrid_is_lossless_and_keeps_exif(make):
    """NOTE [ restart grid ]: the same coefficients, so the same pixels, with EXIF kept."""
    from fmq_loader.images import _jpegregion

    data = make()
    out, k = _jpegregion.regrid(data, 2)
    assert k in (1, 2) and out[:2] == b"\xff\xd8" and b"\xff\xdd" in out  # a DRI segment
    np.testing.assert_array_equal(_pillow_pixels(out), _pillow_pixels(data))
    exif = Image.Exif()
    exif[0x0112] = 6
    tagged = encode(photo((80, 60)), exif=exif)
    with Image.open(__import__("io").BytesIO(_jpegregion.regrid(tagged, 2)[0])) as im:
        assert im.getexif().get(0x0112) == 6


@needs_region
def test_regrid_picks_the_largest_divisor_of_a_rows_mcus_and_rejects_bad_input():
    from fmq_loader.images import _jpegregion

    data = encode(photo((500, 60)), quality=90)  # 4:2:0: 32 MCUs of 16 px a row
    assert _jpegregion.regrid(data, 5)[1] == 4
    assert _jpegregion.regrid(data, 100)[1] == 32
    assert _jpegregion.regrid(encode(photo((31 * 16, 32))), 4)[1] == 1  # 31 MCUs: prime
    with pytest.raises(ValueError, match="interval must be 1 to 65535 MCUs, got 0"):
        _jpegregion.regrid(data, 0)
    with pytest.raises(ValueError, match="libjpeg"):
        _jpegregion.regrid(data[:700], 2)


@needs_region
@pytest.mark.parametrize("subsampling", [0, 1, 2])
@pytest.mark.parametrize("scale", [1, 2, 4, 8])
@pytest.mark.parametrize("box", [(0, 0, 1, 1), (37, 21, 161, 99), (100, 0, 241, 180),
                                 (0, 150, 240, 180), (130, 90, 131, 91), (200, 140, 241, 181),
                                 (0, 0, 240, 180)])
@pytest.mark.parametrize("writer", ["regrid", "pillow"])
def test_crops_of_gridded_jpegs_are_pillows_bit_for_bit(scale, subsampling, box, writer):
    """Crops cut from the restart grid (regrid's files, and Pillow's own
    restart_marker_blocks ones, as cameras write) equal Pillow's decode of the region."""
    from fmq_loader.images import _jpegregion

    img = photo((241, 181), seed=4)
    if writer == "regrid":
        data = _jpegregion.regrid(encode(img, quality=90, subsampling=subsampling), 1)[0]
    else:
        blocks = {0: 1, 1: 2, 2: 1}[subsampling]  # a row has 31, 16 or 16 MCUs
        data = encode(img, quality=90, subsampling=subsampling, restart_marker_blocks=blocks)
    sbox = (box[0] // scale, box[1] // scale, max(box[0] // scale + 1, box[2] // scale),
            max(box[1] // scale + 1, box[3] // scale))
    buf, w, h, x0, y0 = _jpegregion.decode(data, scale, *sbox)
    got = np.frombuffer(buf, np.uint8).reshape(h, w, 3)
    assert y0 == sbox[1] and h == sbox[3] - sbox[1] and x0 <= sbox[0] and x0 + w >= sbox[2]
    np.testing.assert_array_equal(got[:, sbox[0] - x0:sbox[2] - x0],
                                  _pillow_region(data, scale, sbox))


def _intervals(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each restart interval's entropy bytes."""
    import re

    sos = data.index(b"\xff\xda")
    start = sos + 2 + int.from_bytes(data[sos + 2:sos + 4], "big")
    out = []
    for m in re.finditer(rb"\xff[\xd0-\xd7\xd9]", data[start:]):
        out.append((start, start + m.start()))
        start = start + m.end()
    return out


@needs_region
def test_a_crop_of_a_gridded_jpeg_reads_only_its_intervals():
    """Garbage in an interval above and left of the crop: the crop is still exact (its
    intervals were never read), while the whole image is refused (bad Huffman code), and
    EncodedImage falls back to Pillow for it."""
    from fmq_loader.images import _jpegregion

    data, k = _jpegregion.regrid(encode(photo((320, 240), seed=6), quality=90), 1)
    first = _intervals(data)[0]
    broken = bytearray(data)
    broken[first[0]:first[1]] = (b"\xff\x00" * (first[1] - first[0]))[:first[1] - first[0]]
    if (first[1] - first[0]) % 2:
        broken[first[1] - 1] = 0x00
    broken = bytes(broken)
    box = (160, 120, 300, 230)
    buf, w, h, x0, y0 = _jpegregion.decode(broken, 1, *box)
    got = np.frombuffer(buf, np.uint8).reshape(h, w, 3)[:, box[0] - x0:box[2] - x0]
    np.testing.assert_array_equal(got, _pillow_region(data, 1, box))
    with pytest.raises(ValueError, match="libjpeg"):
        _jpegregion.decode(broken, 1, 0, 0, 320, 240)
    pixels, _ = EncodedImage(broken, decoder="auto").decode_region((0, 0, 320, 240), (64, 48))
    assert np.asarray(pixels).shape[:2] == (60, 80)  # Pillow decided: it decodes it at 1/4


@needs_region
def test_restart_markers_out_of_sequence_send_the_crop_to_pillow():
    from fmq_loader.images import _jpegregion

    data = bytearray(_jpegregion.regrid(encode(photo((320, 240), seed=7)), 1)[0])
    first = _intervals(bytes(data))[0]
    data[first[1] + 1] = 0xD3  # the first marker should be RST0
    with pytest.raises(ValueError, match="out of sequence"):
        _jpegregion.decode(bytes(data), 1, 200, 150, 300, 230)


@needs_region
def test_a_huge_box_on_a_gridded_jpeg_is_clamped_not_wrapped():
    from fmq_loader.images import _jpegregion

    data = _jpegregion.regrid(encode(photo((320, 240))), 2)[0]
    for right in (10**6, 2**61):
        buf, w, h, x0, y0 = _jpegregion.decode(data, 8, 0, 0, right, right)
        assert (w, h, x0, y0) == (40, 30, 0, 0)
        buf, w, h, x0, y0 = _jpegregion.decode(data, 1, 200, 150, right, right)
        assert (x0 + w, y0, h) == (320, 150, 90)
