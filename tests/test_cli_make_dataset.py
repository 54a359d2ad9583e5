"""`fmq-loader make-dataset`: writes the folder; user mistakes are one stderr line, exit 2."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from fmq_loader.tools.cli import main


def test_make_dataset_writes_classes_times_per_class_images(tmp_path, capsys):
    rc = main(["make-dataset", str(tmp_path / "d"), "--classes", "2", "--per-class", "3",
               "--size", "32x24", "--seed", "4", "--quality", "80", "--no-progress"])
    assert rc == 0
    assert len(list((tmp_path / "d").glob("class_*/img_*.jpg"))) == 6
    assert "wrote 6 images (2 classes x 3, 32x24)" in capsys.readouterr().out


@pytest.mark.parametrize("args,pattern", [
    (["--size", "500by375"], "size must be WIDTHxHEIGHT, got '500by375'"),
    (["--size", "4x4"], r"size must be \(width, height\), two ints >= 8, got \(4, 4\)"),
    (["--classes", "0"], "--classes: must be an int >= 1, got '0'"),
    (["--quality", "0"], r"quality must be an int in \[1, 95\], got 0"),
])
def test_user_mistakes_print_one_error_line_and_exit_2(tmp_path, capsys, args, pattern):
    rc = main(["make-dataset", str(tmp_path / "d"), "--no-progress", *args])
    err = capsys.readouterr().err
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert re.search(pattern, err)


def test_unwritable_folder_is_a_usage_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc = main(["make-dataset", str(blocker / "d"), "--classes", "1", "--per-class", "1",
               "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot write dataset to" in err and "Traceback" not in err


def test_missing_subcommand_exits_2(capsys):
    assert main([]) == 2
    assert "required: COMMAND" in capsys.readouterr().err


def test_python_dash_m_help_lists_the_options():
    out = subprocess.run([sys.executable, "-m", "fmq_loader", "make-dataset", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--per-class" in out.stdout and "WxH" in out.stdout
