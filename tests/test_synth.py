"""make_dataset: layout, determinism, photo-like compression, argument checks, progress."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from fmq_loader.images.datasets import ImageFolder
from fmq_loader.images.synth import make_dataset


def test_make_dataset_writes_an_image_folder_of_jpegs_of_the_given_size(tmp_path):
    root = make_dataset(tmp_path / "d", classes=3, per_class=4, size=(40, 30), progress=False)
    assert root == tmp_path / "d"
    ds = ImageFolder(root)
    assert ds.classes == ["class_000", "class_001", "class_002"] and len(ds) == 12
    with Image.open(ds.samples[0][0]) as im:
        assert im.format == "JPEG" and im.size == (40, 30)


def test_same_seed_gives_identical_files_and_another_seed_different_ones(tmp_path):
    a = make_dataset(tmp_path / "a", classes=1, per_class=2, size=(32, 24), progress=False)
    b = make_dataset(tmp_path / "b", classes=1, per_class=2, size=(32, 24), progress=False)
    c = make_dataset(tmp_path / "c", classes=1, per_class=2, size=(32, 24), seed=1,
                     progress=False)
    name = "class_000/img_00001.jpg"
    assert (a / name).read_bytes() == (b / name).read_bytes() != (c / name).read_bytes()


def test_images_compress_like_photos_not_flat_colour_or_noise(tmp_path):
    root = make_dataset(tmp_path, classes=2, per_class=2, size=(500, 375), progress=False)
    for path in sorted(root.glob("*/*.jpg")):
        arr = np.asarray(Image.open(path), np.float64)
        flat = io.BytesIO()
        Image.new("RGB", (500, 375), (120, 90, 60)).save(flat, "JPEG", quality=90)
        noise = io.BytesIO()
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 256, (375, 500, 3), np.uint8)).save(noise, "JPEG",
                                                                           quality=90)
        size = path.stat().st_size
        assert 8 * len(flat.getvalue()) < size < len(noise.getvalue()) / 1.4
        assert arr.std() > 15  # visible structure
        # smooth: neighbouring pixels correlate strongly, unlike noise
        g = arr.mean(axis=2)
        assert np.corrcoef(g[:, :-1].ravel(), g[:, 1:].ravel())[0, 1] > 0.8


@pytest.mark.parametrize("kwargs,pattern", [
    (dict(classes=0), r"classes must be an int >= 1, got 0"),
    (dict(per_class=-2), r"per_class must be an int >= 1, got -2"),
    (dict(size=(4, 100)), r"size must be \(width, height\), two ints >= 8, got \(4, 100\)"),
    (dict(quality=101), r"quality must be an int in \[1, 95\], got 101"),
    (dict(realism="real"), r"realism must be one of \('photo', 'simple'\), got 'real'"),
])
def test_bad_arguments_raise_value_error_naming_the_value(tmp_path, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        make_dataset(tmp_path, progress=False, **kwargs)


def test_progress_goes_to_stderr_only_when_enabled(tmp_path, capsys):
    make_dataset(tmp_path / "quiet", classes=1, per_class=2, size=(16, 16), progress=False)
    assert capsys.readouterr().err == ""
    make_dataset(tmp_path / "loud", classes=1, per_class=2, size=(16, 16), progress=True)
    assert "2/2" in capsys.readouterr().err


def _bits_per_pixel(root) -> float:
    paths = sorted(root.glob("*/*.jpg"))
    with Image.open(paths[0]) as im:
        pixels = im.width * im.height
    return 8 * sum(p.stat().st_size for p in paths) / len(paths) / pixels


def test_photo_realism_compresses_like_photographs_and_simple_like_before(tmp_path):
    """The benchmarks' default images: 4-6 bits per pixel at quality 90 (ImageNet-like);
    "simple" stays the easy ~2."""
    photo = make_dataset(tmp_path / "p", classes=2, per_class=3, progress=False)
    simple = make_dataset(tmp_path / "s", classes=2, per_class=3, progress=False, realism="simple")
    assert 4.0 <= _bits_per_pixel(photo) <= 6.0
    assert 1.5 <= _bits_per_pixel(simple) <= 3.0


def test_real_photo_set_is_cut_from_scikit_images_photographs(tmp_path):
    pytest.importorskip("skimage")
    from fmq_loader.images.photos import PHOTOS, make_photo_dataset

    root = make_photo_dataset(tmp_path / "r", per_class=2, size=(120, 90), progress=False)
    ds = ImageFolder(root)
    assert len(ds.classes) == len(PHOTOS) and len(ds) == 2 * len(PHOTOS)
    with Image.open(ds.samples[0][0]) as im:
        assert im.format == "JPEG" and im.size == (120, 90)
    again = make_photo_dataset(tmp_path / "again", per_class=2, size=(120, 90), progress=False)
    name = "chelsea/img_00001.jpg"
    assert (root / name).read_bytes() == (again / name).read_bytes()


def test_bench_image_sets_describe_their_files(tmp_path):
    from fmq_loader.bench.imagesets import describe, prepare

    folder = prepare("photo", 10, root=str(tmp_path / "set"), progress=False)
    line = describe(folder, "photo")
    assert line.startswith("photo: synthetic photo-like, 10 JPEGs 500x375")
    assert "bits/pixel" in line
    with pytest.raises(ValueError, match="unknown image set 'jpegs'"):
        prepare("jpegs", 10)
