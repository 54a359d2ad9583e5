"""`fmq-loader regrid` / regrid_folder: a lossless, restart-gridded copy of an image folder
(NOTE [ restart grid ] in fmq_loader/images/_jpegregion.c)."""

from __future__ import annotations

import io
import os
import random
import re
import signal
import subprocess
import time

import numpy as np
import pytest
import torch
from PIL import Image

from _images import encode, image_folder, photo
from fmq_loader import ImageFolder
from fmq_loader import transforms as T
from fmq_loader.images.decode import DecodeError, region_decoder_available
from fmq_loader.images.regrid import regrid_bytes, regrid_folder

pytestmark = pytest.mark.skipif(not region_decoder_available(),
                                reason="fmq_loader.images._jpegregion not built")


def _pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _mixed_folder(root):
    """Two classes: JPEGs of three subsamplings and gray, a PNG, a truncated JPEG, a text file."""
    for c, cls in enumerate(("cat", "dog")):
        (root / cls).mkdir(parents=True)
        for i, sub in enumerate((0, 1, 2)):
            (root / cls / f"{i}.jpg").write_bytes(
                encode(photo((300 + 17 * i, 200), seed=10 * c + i), quality=90,
                       subsampling=sub))
        (root / cls / "gray.jpg").write_bytes(encode(photo((150, 100), seed=c).convert("L")))
    (root / "cat" / "p.png").write_bytes(encode(photo((60, 40)), "PNG"))
    (root / "dog" / "cut.jpg").write_bytes(encode(photo((300, 200)))[:1500])
    (root / "dog" / "notes.txt").write_text("not an image")
    return root


def test_the_copy_has_the_same_files_pixels_and_samples(tmp_path):
    src = _mixed_folder(tmp_path / "src")
    out = tmp_path / "out"
    counts = regrid_folder(src, out, workers=2, progress=False)
    assert counts["files"] == 11 and counts["regridded"] == 8
    assert counts["copied"] == 2 and counts["refused"] == 1 and counts["kept"] == 0
    for folder, _, files in os.walk(src):
        for name in files:
            rel = os.path.relpath(os.path.join(folder, name), src)
            before, after = (src / rel).read_bytes(), (out / rel).read_bytes()
            if name.endswith(".jpg") and name != "cut.jpg":
                assert before != after and b"\xff\xdd" in after  # a restart interval
                np.testing.assert_array_equal(_pixels(out / rel), _pixels(src / rel))
            else:
                assert before == after, rel  # copied unchanged
    assert not [n for _, _, fs in os.walk(out) for n in fs if "partial" in n]
    a = ImageFolder(src, is_valid_file=lambda p: p.endswith((".jpg", ".png")))
    b = ImageFolder(out, is_valid_file=lambda p: p.endswith((".jpg", ".png")))
    assert [os.path.relpath(p, src) for p, _ in a.samples] == \
        [os.path.relpath(p, out) for p, _ in b.samples]
    assert a.targets == b.targets and a.classes == b.classes


def test_random_resized_crops_of_the_copy_equal_the_originals(tmp_path):
    """The training pipeline gives the same tensors from both folders (the gridded crops
    are cut from only their intervals, and are bit-identical)."""
    src = image_folder(tmp_path / "src", classes=2, per_class=6, size=(640, 480))
    out = tmp_path / "out"
    regrid_folder(src, out, workers=0, progress=False)
    crop = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.PILToTensor()])
    for root in (src, out):
        ds = ImageFolder(root, transform=crop)
        with T.use_rng(random.Random(3)):
            tensors = [ds[i][0] for i in range(len(ds))]
        if root == src:
            expected = tensors
    for got, want in zip(tensors, expected):
        assert torch.equal(got, want)


def test_bad_arguments_are_refused_with_what_to_do(tmp_path):
    src = image_folder(tmp_path / "src", classes=1, per_class=2)
    with pytest.raises(ValueError, match="SRC must be a folder, got"):
        regrid_folder(tmp_path / "missing", tmp_path / "o")
    with pytest.raises(ValueError, match="OUT must not be SRC or inside it"):
        regrid_folder(src, src / "inner")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(ValueError, match="is not empty; pass --resume"):
        regrid_folder(src, tmp_path / "full")
    with pytest.raises(ValueError, match="interval must be an int from 1 to 65535"):
        regrid_folder(src, tmp_path / "o", interval=0)
    with pytest.raises(ValueError, match="workers must be an int >= 0"):
        regrid_folder(src, tmp_path / "o", workers=-1)
    with pytest.raises(DecodeError, match="'x.jpg' could not be regridded: libjpeg"):
        regrid_bytes(b"\xff\xd8\xff\xe0 nonsense", path="x.jpg")


def test_resume_keeps_what_is_there_and_overwrite_replaces_it(tmp_path):
    src = image_folder(tmp_path / "src", classes=1, per_class=3)
    out = tmp_path / "out"
    regrid_folder(src, out, workers=0, progress=False)
    first = sorted((out).rglob("*.jpg"))[0]
    first.write_bytes(b"stale")
    counts = regrid_folder(src, out, workers=0, resume=True, progress=False)
    assert counts["kept"] == 3 and counts["regridded"] == 0 and first.read_bytes() == b"stale"
    counts = regrid_folder(src, out, workers=0, overwrite=True, progress=False)
    assert counts["regridded"] == 3 and first.read_bytes() != b"stale"


def test_the_cli_reports_and_ctrl_c_leaves_no_partial_files(tmp_path, python):
    src = image_folder(tmp_path / "src", classes=2, per_class=200, size=(400, 300))
    out = tmp_path / "out"
    cmd = [python, "-m", "fmq_loader", "regrid", str(src), str(out), "--workers", "2",
           "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (out.exists() and any(out.rglob("*.jpg"))):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode in (0, 130), err
    assert "Traceback" not in err
    assert not list(out.rglob("*partial"))
    done = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert re.search(r"regridded \d+ JPEGs, copied 0 other files, kept \d+ already there in "
                     r"[\d.]+ s; written [\d.]+ MB \([01]\.\d+x the sources\)", done.stdout), done.stdout
    assert len(list(out.rglob("*.jpg"))) == 400
    for path in sorted(out.rglob("*.jpg"))[:5]:
        with Image.open(path) as im:
            im.load()
    bad = subprocess.run([python, "-m", "fmq_loader", "regrid", str(src), str(out)],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "is not empty; pass --resume" in bad.stderr


def test_symlinked_and_empty_folders_keep_imagefolders_classes(tmp_path):
    """ImageFolder follows symlinked class folders and lists empty ones (allow_empty): the
    copy must give the same classes and labels."""
    elsewhere = image_folder(tmp_path / "elsewhere", classes=1, per_class=2)
    src = tmp_path / "src"
    (src / "b").mkdir(parents=True)
    (src / "empty").mkdir()
    os.symlink(elsewhere / "class_000", src / "a")
    (src / "b" / "y.jpg").write_bytes(encode(photo((64, 48))))
    out = tmp_path / "out"
    counts = regrid_folder(src, out, workers=0, progress=False)
    assert counts["regridded"] == 3
    a, b = ImageFolder(src, allow_empty=True), ImageFolder(out, allow_empty=True)
    assert a.classes == b.classes == ["a", "b", "empty"]
    assert a.targets == b.targets


def test_an_unreadable_file_stops_the_run_naming_it_and_a_multi_picture_file_is_copied(
        tmp_path, python):
    src = image_folder(tmp_path / "src", classes=1, per_class=2)
    mpo = photo((64, 48)).save(tmp_path / "x.mpo", "MPO", save_all=True,
                              append_images=[photo((64, 48), seed=1)])
    del mpo
    (src / "class_000" / "two.jpg").write_bytes((tmp_path / "x.mpo").read_bytes())
    out = tmp_path / "out"
    counts = regrid_folder(src, out, workers=0, progress=False)
    assert counts["refused"] == 1 and counts["regridded"] == 2
    assert (out / "class_000" / "two.jpg").read_bytes() == (tmp_path / "x.mpo").read_bytes()
    os.symlink(tmp_path / "missing.jpg", src / "class_000" / "broken.jpg")
    with pytest.raises(DecodeError, match="broken.jpg' could not be read"):
        regrid_folder(src, tmp_path / "out2", workers=0, progress=False)
    bad = subprocess.run([python, "-m", "fmq_loader", "regrid", str(src), str(tmp_path / "out3"),
                          "--no-progress"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "broken.jpg' could not be read" in bad.stderr
    assert "Traceback" not in bad.stderr
    assert not list((tmp_path / "out3").rglob("*partial"))
