"""ImageFolder: layout -> labels, compact index, per-sample seeds, corrupt-file policy in workers."""

from __future__ import annotations

import gc
import logging
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from _images import image_folder
from fmq_loader import transforms as T
from fmq_loader.images.datasets import MAX_REPLACEMENTS, ImageFolder
from fmq_loader.images.decode import DecodeError


@pytest.fixture
def folder(tmp_path):
    """64 real JPEGs: class_000 and class_001, 32 each, 64x48."""
    return image_folder(tmp_path / "data")


def _pipeline():
    return T.Compose([T.RandomResizedCrop(24), T.RandomHorizontalFlip(), T.PILToTensor()])


def test_classes_are_sorted_folder_names_and_labels_follow_the_folders(tmp_path):
    for name in ("zebra", "ant", "Moth"):
        (tmp_path / name / "deep").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / name / "a.JPG")
        Image.new("RGB", (8, 8)).save(tmp_path / name / "deep" / "b.png")
        (tmp_path / name / "notes.txt").write_text("ignored")
    ds = ImageFolder(tmp_path)
    assert ds.classes == ["Moth", "ant", "zebra"]
    assert ds.class_to_idx == {"Moth": 0, "ant": 1, "zebra": 2}
    assert len(ds) == 6 and list(ds.targets) == [0, 0, 1, 1, 2, 2]
    assert ds.samples[0] == (str(tmp_path / "Moth" / "a.JPG"), 0)
    assert ds.samples[3] == (str(tmp_path / "ant" / "deep" / "b.png"), 1)
    assert ImageFolder(tmp_path, extensions=(".png",)).targets == [0, 1, 2]


def test_getitem_without_transform_returns_rgb_pil_image_and_int_label(folder):
    img, label = ImageFolder(folder)[40]
    assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (64, 48)
    assert type(label) is int and label == 1


def test_getitem_with_transform_returns_its_output_and_target_transform_applies(folder):
    ds = ImageFolder(folder, transform=_pipeline(), target_transform=lambda y: y + 10)
    x, y = ds[-1]
    assert x.shape == (3, 24, 24) and x.dtype == torch.uint8 and y == 11


def test_index_is_held_in_a_bytes_blob_and_numpy_arrays(folder):
    ds = ImageFolder(folder)
    assert isinstance(ds._blob, bytes)
    assert ds._offsets.dtype == np.int64 and ds._offsets.shape == (65,)
    assert ds._targets.dtype == np.int64
    assert not hasattr(ds, "_samples_list")


def test_empty_root_raises_value_error_naming_root_and_extensions(tmp_path):
    with pytest.raises(ValueError, match=rf"root '{tmp_path}' has no class folders; .*'\.jpg'"):
        ImageFolder(tmp_path)
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "x.txt").write_text("no image")
    with pytest.raises(ValueError, match=rf"root '{tmp_path}' has class folders \['cat'\] but "
                                         r"no files with extensions \('\.jpg'"):
        ImageFolder(tmp_path)


def test_missing_root_raises_file_not_found_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"root '.*nowhere' is not a directory"):
        ImageFolder(tmp_path / "nowhere")


def test_bad_arguments_raise_value_error_naming_the_value(folder):
    with pytest.raises(ValueError, match=r"on_error must be one of .* got 'ignore'"):
        ImageFolder(folder, on_error="ignore")
    with pytest.raises(ValueError, match=r"seed must be None or an int >= 0, got -1"):
        ImageFolder(folder, seed=-1)
    with pytest.raises(ValueError, match=r"epoch must be an int >= 0, got 1\.5"):
        ImageFolder(folder).set_epoch(1.5)


def test_dataset_pickles_with_its_index(folder):
    ds = ImageFolder(folder, transform=_pipeline(), seed=3)
    clone = pickle.loads(pickle.dumps(ds))
    assert list(clone.samples) == list(ds.samples)
    assert torch.equal(clone[5][0], ds[5][0])


def test_same_seed_gives_the_same_augmentations_and_set_epoch_changes_them(folder):
    a = ImageFolder(folder, transform=_pipeline(), seed=7)
    b = ImageFolder(folder, transform=_pipeline(), seed=7)
    first = [a[i][0] for i in range(8)]
    assert all(torch.equal(x, b[i][0]) for i, x in reversed(list(enumerate(first))))
    a.set_epoch(1)
    assert sum(torch.equal(x, a[i][0]) for i, x in enumerate(first)) < 3
    a.set_epoch(0)
    assert all(torch.equal(x, a[i][0]) for i, x in enumerate(first))


def _corrupt(folder, names=("class_000/img_00003.jpg", "class_001/img_00010.jpg")):
    truncated, not_image = (folder / n for n in names)
    data = truncated.read_bytes()
    truncated.write_bytes(data[:len(data) // 2])
    not_image.write_text("this is not a JPEG")
    return truncated, not_image


def test_skip_replaces_a_bad_file_with_the_next_sample_and_counts_it(folder):
    truncated, _ = _corrupt(folder)
    ds = ImageFolder(folder, on_error="skip")
    img, label = ds[3]
    assert np.array_equal(np.asarray(img), np.asarray(ds[4][0])) and label == 0
    assert ds.skipped == 1 and ds.skipped_paths == [str(truncated)]


def test_warn_logs_the_path_and_the_decoder_message(folder, caplog):
    _, not_image = _corrupt(folder)
    ds = ImageFolder(folder, on_error="warn")
    with caplog.at_level(logging.WARNING, logger="fmq_loader.images.datasets"):
        ds[42]
    assert str(not_image) in caplog.text and "UnidentifiedImageError" in caplog.text
    assert ds.skipped == 1


def test_skip_gives_up_with_decode_error_when_every_file_fails(tmp_path):
    (tmp_path / "c").mkdir()
    for i in range(3):
        (tmp_path / "c" / f"{i}.jpg").write_bytes(b"junk")
    ds = ImageFolder(tmp_path, on_error="skip")
    with pytest.raises(DecodeError, match=r"3 consecutive samples from index 1 failed"):
        ds[1]
    assert ds.skipped == 3 and MAX_REPLACEMENTS >= 3


def _drain(loader):
    it = iter(loader)
    try:
        return list(it)
    finally:
        # an exception's traceback keeps the iterator (and its workers) alive: stop them now
        getattr(it, "_shutdown_workers", lambda: None)()
        del it
        gc.collect()


def test_skip_policy_in_spawned_workers_keeps_batches_full_and_deterministic(folder):
    """Real worker processes (spawn pickles the dataset); results match num_workers=0."""
    _corrupt(folder)
    ds = ImageFolder(folder, transform=_pipeline(), on_error="skip", seed=5)
    loader = torch.utils.data.DataLoader(ds, batch_size=16, num_workers=2,
                                         multiprocessing_context="spawn")
    batches = _drain(loader)
    assert [len(y) for _, y in batches] == [16, 16, 16, 16]
    single = _drain(torch.utils.data.DataLoader(ds, batch_size=16, num_workers=0))
    for (x, y), (x0, y0) in zip(batches, single):
        assert torch.equal(x, x0) and torch.equal(y, y0)
    assert ds.skipped == 2  # the main process's copy ran the num_workers=0 pass


def test_raise_policy_in_a_spawned_worker_reraises_with_the_path(folder):
    truncated, _ = _corrupt(folder)
    ds = ImageFolder(folder, transform=_pipeline())
    loader = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=1,
                                         multiprocessing_context="spawn")
    with pytest.raises(DecodeError, match=rf"{truncated.name}' could not be decoded"):
        _drain(loader)
