"""Transforms: shapes, dtypes, ranges, torchvision-defined semantics, validation, pickling."""

from __future__ import annotations

import io
import math
import pickle
import random

import numpy as np
import pytest
import torch
from PIL import Image

from _images import encode, photo
from fmq_loader import transforms as T
from fmq_loader.images.decode import EncodedImage


def _reference_rrc_params(width, height, scale, ratio, rng):
    """torchvision's documented RandomResizedCrop.get_params, written out independently."""
    area = height * width
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    if width / height < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif width / height > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


@pytest.mark.parametrize("size,scale,ratio", [
    ((500, 375), (0.08, 1.0), (3 / 4, 4 / 3)),
    ((64, 48), (0.5, 0.9), (1.0, 2.0)),
    ((400, 40), (0.9, 1.0), (1.0, 1.0)),   # mostly falls back to the centre crop
])
def test_random_resized_crop_samples_params_as_torchvision_defines(size, scale, ratio):
    t = T.RandomResizedCrop(32, scale=scale, ratio=ratio)
    ours, ref = random.Random(7), random.Random(7)
    for _ in range(200):
        assert t.get_params(*size, rng=ours) == _reference_rrc_params(*size, scale, ratio, ref)


def test_random_resized_crop_falls_back_to_centre_crop_clamped_to_ratio():
    t = T.RandomResizedCrop(16, scale=(2.0, 3.0), ratio=(1.0, 1.0))  # never fits
    assert t.get_params(100, 40, rng=random.Random(0)) == (0, 30, 40, 40)


def test_random_resized_crop_matches_crop_then_resize_within_two_levels():
    img = photo((120, 90), 1)
    t = T.RandomResizedCrop((40, 50))
    top, left, h, w = t.get_params(120, 90, rng=random.Random(3))
    with T.use_rng(random.Random(3)):
        out = t(img)
    ref = img.crop((left, top, left + w, top + h)).resize((50, 40), Image.BILINEAR)
    assert out.size == (50, 40) and out.mode == "RGB"
    diff = np.abs(np.asarray(out, np.int16) - np.asarray(ref, np.int16))
    assert diff.max() <= 2 and diff.mean() < 0.1


def test_compose_fused_tensor_path_gives_the_same_pixels_as_the_pil_path():
    img = photo((120, 90), 2)
    crop, flip = T.RandomResizedCrop(48), T.RandomHorizontalFlip()
    with T.use_rng(random.Random(5)):
        fused = T.Compose([crop, flip, T.PILToTensor()])(img)
    with T.use_rng(random.Random(5)):
        stepwise = T.PILToTensor()(flip(crop(img)))
    assert fused.dtype == torch.uint8 and fused.shape == (3, 48, 48)
    assert torch.equal(fused, stepwise)


def test_encoded_jpeg_input_gives_the_same_shapes_as_decoded_input():
    data = encode(photo((640, 480), 4), quality=90)
    t = T.Compose([T.RandomResizedCrop(64), T.RandomHorizontalFlip(), T.ToTensor()])
    out = t(EncodedImage(data))
    assert out.shape == (3, 64, 64) and out.dtype == torch.float32
    assert 0.0 <= out.min().item() and out.max().item() <= 1.0


def test_resize_int_matches_shorter_side_and_truncates_longer_side():
    t = T.Resize(32)
    assert t(photo((100, 75))).size == (42, 32)       # 32 * 100 / 75 = 42.67 -> 42
    assert t(photo((75, 100))).size == (32, 42)
    assert T.Resize((20, 30))(photo((100, 75))).size == (30, 20)  # (h, w)
    assert T.Resize(32, max_size=40)(photo((100, 50))).size == (40, 20)


def test_center_crop_takes_the_rounded_centre_and_zero_pads_small_images():
    img = photo((11, 9))
    arr = np.asarray(img)
    out = np.asarray(T.CenterCrop((4, 6))(img))
    assert np.array_equal(out, arr[2:6, 2:8])  # top = round(2.5) = 2, left = round(2.5) = 2
    padded = np.asarray(T.CenterCrop(13)(img))
    assert padded.shape == (13, 13, 3)
    assert np.array_equal(padded[2:11, 1:12], arr) and padded[0].max() == 0


def test_horizontal_flip_mirrors_with_probability_p():
    img = photo((20, 10))
    arr = np.asarray(img)
    assert np.array_equal(np.asarray(T.RandomHorizontalFlip(1.0)(img)), arr[:, ::-1])
    assert np.array_equal(np.asarray(T.RandomHorizontalFlip(0.0)(img)), arr)
    t = torch.arange(6).view(1, 2, 3)
    assert T.RandomHorizontalFlip(1.0)(t).tolist() == [[[2, 1, 0], [5, 4, 3]]]
    with T.use_rng(random.Random(0)):
        flips = sum(T.RandomHorizontalFlip(0.3)(t)[0, 0, 0].item() == 2 for _ in range(2000))
    assert 480 <= flips <= 720


def test_to_tensor_gives_float_chw_in_unit_range_and_pil_to_tensor_uint8():
    img = photo((5, 4))
    arr = np.asarray(img)
    f = T.ToTensor()(img)
    u = T.PILToTensor()(img)
    assert f.dtype == torch.float32 and f.shape == (3, 4, 5)
    assert torch.allclose(f, torch.from_numpy(arr.transpose(2, 0, 1) / 255.0).float())
    assert u.dtype == torch.uint8 and torch.equal(u, torch.from_numpy(arr.transpose(2, 0, 1).copy()))
    assert T.ToUint8Tensor is T.PILToTensor


def test_normalize_subtracts_mean_and_divides_by_std_per_channel():
    x = torch.ones(3, 2, 2)
    out = T.Normalize([0.5, 0.0, 1.0], [0.5, 2.0, 1.0])(x)
    assert out[:, 0, 0].tolist() == [1.0, 0.5, 0.0]
    assert torch.equal(x, torch.ones(3, 2, 2))  # not in place by default


@pytest.mark.parametrize("make,pattern", [
    (lambda: T.Resize(0), r"size must be .* got 0"),
    (lambda: T.Resize(-3), r"size must be .* got -3"),
    (lambda: T.Resize(2.5), r"size must be .* got 2\.5"),
    (lambda: T.CenterCrop((4, 0)), r"size must be .* got \(4, 0\)"),
    (lambda: T.RandomResizedCrop("224"), r"size must be .* got '224'"),
    (lambda: T.RandomResizedCrop(224, scale=(0.0, 1.0)), r"scale must be .* got \(0\.0, 1\.0\)"),
    (lambda: T.RandomResizedCrop(224, ratio=(2, 1)), r"ratio must be .* got \(2, 1\)"),
    (lambda: T.RandomResizedCrop(224, interpolation="fancy"), r"interpolation must .* 'fancy'"),
    (lambda: T.RandomHorizontalFlip(1.5), r"p must be .* got 1\.5"),
    (lambda: T.Normalize([0.5], [0.0]), r"std must not contain zero, got \[0\.0\]"),
    (lambda: T.Resize(10, max_size=5), r"max_size must be .* got max_size=5"),
])
def test_impossible_arguments_raise_value_error_naming_argument_and_value(make, pattern):
    with pytest.raises(ValueError, match=pattern):
        make()


def test_transforms_pickle_and_give_the_same_output_for_the_same_rng():
    t = T.Compose([T.RandomResizedCrop(24), T.RandomHorizontalFlip(),
                   T.ToTensor(), T.Normalize([0.5] * 3, [0.25] * 3)])
    clone = pickle.loads(pickle.dumps(t))
    img = photo((64, 48), 9)
    with T.use_rng(random.Random(1)):
        a = t(img)
    with T.use_rng(random.Random(1)):
        b = clone(img)
    assert torch.equal(a, b) and a.shape == (3, 24, 24)


def test_random_transforms_use_the_global_random_state_by_default():
    t = T.RandomResizedCrop(8)
    random.seed(11)
    a = [t.get_params(100, 80) for _ in range(5)]
    random.seed(11)
    assert [t.get_params(100, 80) for _ in range(5)] == a
    assert T.get_rng() is random


def test_compose_exposes_the_output_size_for_the_decoder():
    assert T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor()]).output_size == (224, 224)
    assert T.RandomResizedCrop((100, 200)).output_size == (100, 200)
    assert T.Compose([T.Resize(256)]).output_size is None


def test_crop_of_an_encoded_jpeg_stays_within_tolerance_of_full_decode_crop_resize():
    """Reduced-scale decode + fused crop vs torchvision-style full decode, crop, resize."""
    data = encode(photo((800, 600), 6), quality=90)
    t = T.RandomResizedCrop(224, scale=(0.5, 1.0))
    for seed in range(4):
        top, left, h, w = t.get_params(800, 600, rng=random.Random(seed))
        with T.use_rng(random.Random(seed)):
            out = np.asarray(t(EncodedImage(data)), np.float64)
        ref = Image.open(io.BytesIO(data)).convert("RGB").crop((left, top, left + w, top + h))
        diff = out - np.asarray(ref.resize((224, 224), Image.BILINEAR), np.float64)
        assert np.abs(diff).mean() < 1.5
        assert 10 * np.log10(255 ** 2 / np.mean(diff ** 2)) > 33
