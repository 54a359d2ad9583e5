"""`fmq-loader pack` and PackedImages: real JPEG folders packed, read back, damaged, resumed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
import torch
from PIL import Image

from _images import encode, image_folder, photo
from fmq_loader import FMQLoader, ImageFolder, PackedImages, PackError
from fmq_loader import transforms as T
from fmq_loader.images.decode import DecodeError
from fmq_loader.images.pack import PackOptions, encode_image, pack, parse_size
from fmq_loader.images.packfile import FORMAT_VERSION, HEADER_SIZE, shard_name


def _crop():
    return T.Compose([T.RandomResizedCrop(32), T.RandomHorizontalFlip(), T.PILToTensor()])


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return image_folder(tmp_path_factory.mktemp("src") / "src", classes=3, per_class=8,
                        size=(120, 90))


def _pack(src, out, workers=0, **kw):
    opts = {k: kw.pop(k) for k in list(kw) if k in PackOptions.__dataclass_fields__}
    opts.setdefault("short_side", 48)
    return pack(src, out, PackOptions(**opts), workers=workers, progress=False, **kw)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)


@pytest.mark.parametrize("record_format", ["jpeg", "raw"])
def test_pack_keeps_labels_classes_and_order_and_resizes_the_short_side(source, tmp_path,
                                                                          record_format):
    meta = _pack(source, tmp_path / "p", record_format=record_format, workers=2)
    folder = ImageFolder(source)
    with PackedImages(tmp_path / "p") as packed:
        assert len(packed) == len(folder) == meta["records"] == 24
        assert packed.classes == folder.classes
        assert list(packed.targets) == list(folder.targets)
        assert packed.sizes.tolist() == [[64, 48]] * 24  # 120x90 -> short side 48
        for i in (0, 9, 23):
            img, label = packed[i]
            assert img.size == (64, 48) and label == folder.targets[i]
            want = Image.open(folder.samples[i][0]).convert("RGB").resize(
                (64, 48), Image.Resampling.LANCZOS)
            assert _psnr(np.asarray(img), np.asarray(want)) > 30


def test_raw_records_hold_exactly_the_resized_pixels(source, tmp_path):
    _pack(source, tmp_path / "p", record_format="raw")
    path = ImageFolder(source).samples[5][0]
    data, width, height = encode_image(path, PackOptions(short_side=48, record_format="raw"))
    with PackedImages(tmp_path / "p") as packed:
        assert np.array_equal(np.asarray(packed[5][0]),
                              np.frombuffer(data, np.uint8).reshape(height, width, 3))


def test_images_are_never_upscaled_and_max_side_bounds_the_long_side(tmp_path):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    photo((30, 20)).save(src / "a" / "small.jpg")
    photo((200, 100)).save(src / "a" / "wide.jpg")
    with PackedImages(_pack(src, tmp_path / "s", short_side=64) and tmp_path / "s") as p:
        assert p.sizes.tolist() == [[30, 20], [128, 64]]
    meta = pack(src, tmp_path / "m", PackOptions(short_side=None, max_side=50), workers=0,
                progress=False)
    assert meta["options"]["max_side"] == 50
    with PackedImages(tmp_path / "m") as p:
        assert p.sizes.tolist() == [[30, 20], [50, 25]]


def test_a_list_file_gives_paths_relative_to_it_and_class_names_sorted(source, tmp_path):
    rows = [(os.path.relpath(p, tmp_path), ["zebra", "ant"][i % 2])
            for i, (p, _) in enumerate(ImageFolder(source).samples[:6])]
    (tmp_path / "list.csv").write_text("path,label\n" + "".join(f"{p},{c}\n" for p, c in rows))
    (tmp_path / "list.json").write_text(json.dumps([{"path": p, "label": i} for i, (p, _) in
                                                    enumerate(rows)]))
    with PackedImages(_pack(tmp_path / "list.csv", tmp_path / "c") and tmp_path / "c") as p:
        assert p.classes == ["ant", "zebra"] and list(p.targets) == [1, 0, 1, 0, 1, 0]
    with PackedImages(_pack(tmp_path / "list.json", tmp_path / "j") and tmp_path / "j") as p:
        assert p.classes == [str(i) for i in range(6)] and list(p.targets) == list(range(6))


def _corrupt_source(tmp_path, bad_at: int):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    for i in range(12):
        photo((80, 60), seed=i).save(src / "a" / f"{i:02d}.jpg", quality=90)
    good = (src / "a" / f"{bad_at:02d}.jpg").read_bytes()
    (src / "a" / f"{bad_at:02d}.jpg").write_bytes(b"not a jpeg at all")
    return src, good


def test_a_corrupt_source_stops_the_pack_naming_it_or_is_skipped_and_listed(tmp_path):
    src, _ = _corrupt_source(tmp_path, 7)
    with pytest.raises(DecodeError, match=r"07\.jpg"):
        _pack(src, tmp_path / "r")
    with pytest.raises(PackError, match=r"no meta\.json.*--resume"):
        PackedImages(tmp_path / "r")
    meta = _pack(src, tmp_path / "s", on_error="skip")
    assert meta["records"] == 11 and [os.path.basename(p) for p in meta["skipped"]] == ["07.jpg"]


def test_an_interrupted_pack_resumes_keeping_its_finished_shards(tmp_path):
    src, good = _corrupt_source(tmp_path, 9)
    out = tmp_path / "out"
    with pytest.raises(DecodeError):
        _pack(src, out, shard_size=3000)  # a few records per shard; stops at source 9
    finished = sorted(n for n in os.listdir(out) if n.endswith(".fmqpack"))
    assert finished and not any(n.endswith(".partial") for n in os.listdir(out))
    stamps = {n: os.stat(out / n).st_mtime_ns for n in finished}
    with pytest.raises(ValueError, match="unfinished pack.*--resume"):
        _pack(src, out, shard_size=3000)
    (src / "a" / "09.jpg").write_bytes(good)
    _pack(src, out, shard_size=3000, resume=True)
    assert {n: os.stat(out / n).st_mtime_ns for n in finished} == stamps
    _pack(src, tmp_path / "fresh", shard_size=3000)
    names = sorted(n for n in os.listdir(out) if n.endswith(".fmqpack"))
    assert names == sorted(n for n in os.listdir(tmp_path / "fresh") if n.endswith(".fmqpack"))
    for n in names:  # the same bytes as a pack that was never interrupted
        assert (out / n).read_bytes() == (tmp_path / "fresh" / n).read_bytes()
    assert not (out / ".pack-progress.json").exists()


def test_resume_with_other_options_and_a_finished_pack_are_refused(source, tmp_path):
    _pack(source, tmp_path / "p")
    with pytest.raises(ValueError, match="already holds a finished pack.*--overwrite"):
        _pack(source, tmp_path / "p")
    _pack(source, tmp_path / "p", short_side=32, overwrite=True)
    with PackedImages(tmp_path / "p") as p:
        assert p.sizes[0].tolist() == [43, 32]  # 120 * 32 / 90 = 42.7
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a pack's.*notes.txt"):
        _pack(source, tmp_path / "other")


def _shard(root) -> str:
    return os.path.join(root, shard_name(0))


def _flip(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_damage_and_other_versions_are_refused_never_misread(source, tmp_path):
    good = tmp_path / "good"
    _pack(source, good)

    def copy(name):
        shutil.copytree(good, tmp_path / name)
        return tmp_path / name

    record = copy("record")
    with PackedImages(good) as p:
        offset = int(p._locate(3)[0].index[3]["offset"])
    _flip(_shard(record), offset + 100)
    with PackedImages(record) as p:
        p[2]  # other records still read
        with pytest.raises(PackError, match=r"record 3 of pack shard .*checksum"):
            p[3]
        with pytest.raises(PackError, match="checksum"):
            p.verify()
    with PackedImages(record, check_records=False) as p:
        p._load_image(0)

    header = copy("header")
    _flip(_shard(header), 20)
    with pytest.raises(PackError, match="header that fails its checksum"):
        PackedImages(header)

    version = copy("version")
    with open(_shard(version), "r+b") as f:
        f.seek(8)
        f.write((FORMAT_VERSION + 1).to_bytes(4, "little"))
    with pytest.raises(PackError, match=f"format version {FORMAT_VERSION + 1}.*reads version"):
        PackedImages(version)

    meta = copy("meta")
    data = json.loads((meta / "meta.json").read_text())
    (meta / "meta.json").write_text(json.dumps({**data, "version": 0}))
    with pytest.raises(PackError, match="format version 0"):
        PackedImages(meta)

    short = copy("short")
    with open(_shard(short), "r+b") as f:
        f.truncate(HEADER_SIZE + 10)
    with pytest.raises(PackError, match="inconsistent header"):
        PackedImages(short)

    missing = copy("missing")
    os.unlink(_shard(missing))
    with pytest.raises(PackError, match="lacks shard"):
        PackedImages(missing)


def test_pack_is_deterministic(source, tmp_path):
    _pack(source, tmp_path / "a", workers=2)
    _pack(source, tmp_path / "b", workers=0)
    assert open(_shard(tmp_path / "a"), "rb").read() == open(_shard(tmp_path / "b"), "rb").read()


@pytest.mark.parametrize("record_format", ["jpeg", "raw"])
def test_fmqloader_over_a_pack_gives_the_same_batches_in_every_start_method(
        source, tmp_path, start_method, record_format):
    _pack(source, tmp_path / "p", record_format=record_format)
    ds = PackedImages(tmp_path / "p", transform=_crop())

    def batches(**kw):
        with FMQLoader(ds, batch_size=5, shuffle=True, seed=7, timeout=60, **kw) as loader:
            return [(x.clone(), y.clone()) for x, y in loader]

    want = batches(num_workers=0)
    got = batches(num_workers=2, multiprocessing_context=start_method)
    assert [y.tolist() for _, y in got] == [y.tolist() for _, y in want]
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(got, want))
    assert want[0][0].shape == (5, 3, 32, 32) and want[0][0].dtype == torch.uint8
    ds.close()


def test_a_pack_resumes_mid_epoch_and_shards_across_ranks(source, tmp_path, monkeypatch):
    _pack(source, tmp_path / "p")
    ds = PackedImages(tmp_path / "p", transform=_crop())

    def make():
        return FMQLoader(ds, batch_size=4, shuffle=True, seed=3, num_workers=2,
                         multiprocessing_context="fork", timeout=60)

    with make() as loader:
        want = [x.clone() for x, _ in loader]
    with make() as loader:
        it = iter(loader)
        first = [next(it)[0].clone() for _ in range(2)]
        state = loader.state_dict()
        del it
    with make() as loader:
        loader.load_state_dict(state)
        rest = [x.clone() for x, _ in loader]
    assert all(torch.equal(a, b) for a, b in zip(first + rest, want)) and len(first + rest) == 6
    seen = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        with FMQLoader(ds, batch_size=4, shuffle=True, seed=3, distributed=True) as loader:
            seen.append(torch.cat([y for _, y in loader]).numel())
    assert seen == [12, 12]
    ds.close()


def test_cli_packs_verifies_and_reports_rates(source, tmp_path, python):
    done = subprocess.run([python, "-m", "fmq_loader", "pack", str(source), str(tmp_path / "p"),
                           "--format", "raw", "--short-side", "40", "--workers", "2", "--verify",
                           "--no-progress"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "packed 24 images (0 skipped) into 1 shard(s)" in done.stdout
    assert "per core; verified" in done.stdout
    again = subprocess.run([python, "-m", "fmq_loader", "pack", str(source), str(tmp_path / "p")],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 2
    assert "already holds a finished pack; pass --overwrite" in again.stderr
    assert "Traceback" not in again.stderr


@pytest.mark.parametrize("text,value", [("1GB", 10**9), ("256MiB", 2**28), ("4096", 4096),
                                        ("1.5 kb", 1500)])
def test_shard_sizes_parse(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("bad", ["0", "-1GB", "lots", "1XB"])
def test_bad_shard_sizes_are_refused(bad):
    with pytest.raises(ValueError, match="shard size must be a positive size"):
        parse_size(bad)


def test_grayscale_cmyk_and_png_sources_are_stored_as_rgb(tmp_path):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    base = photo((80, 60))
    base.convert("L").save(src / "a" / "gray.jpg")
    base.convert("CMYK").save(src / "a" / "cmyk.jpg")
    sixteen = Image.fromarray(np.asarray(base.convert("L")).astype(np.uint16) * 257)
    assert sixteen.mode.startswith("I;16")
    (src / "a" / "png16.png").write_bytes(encode(sixteen, "PNG"))
    _pack(src, tmp_path / "p", short_side=60)
    with PackedImages(tmp_path / "p") as p:
        gray = np.asarray(base.convert("L")).astype(np.float64)
        for i in range(3):  # cmyk.jpg, gray.jpg, png16.png
            img, _ = p[i]
            assert img.mode == "RGB" and img.size == (80, 60)
            if i:
                assert np.abs(np.asarray(img)[:, :, 0] - gray).mean() < 3


def test_ctrl_c_leaves_no_complete_looking_pack_and_resume_finishes_it(tmp_path, python):
    src = image_folder(tmp_path / "src", classes=2, per_class=150, size=(200, 150))
    out = tmp_path / "out"
    cmd = [python, "-m", "fmq_loader", "pack", str(src), str(out), "--shard-size", "30KB",
           "--workers", "2", "--short-side", "150", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (out.exists() and any(n.endswith(".fmqpack") for n in os.listdir(out))):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    names = os.listdir(out)
    assert "meta.json" not in names and not any(n.endswith(".partial") for n in names), names
    with pytest.raises(PackError, match="no meta.json"):
        PackedImages(out)
    done = subprocess.run(cmd + ["--resume", "--verify"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    with PackedImages(out) as packed:
        assert len(packed) == 300 and list(packed.targets) == [0] * 150 + [1] * 150
