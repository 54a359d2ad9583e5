"""Progress on long CLI work (issue 7): tqdm when installed, a plain line without it,
nothing with --no-progress."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from fmq_loader.progress import Progress

_WITHOUT_TQDM = ("import sys; sys.modules['tqdm'] = None; "
                 "from fmq_loader.tools.cli import main; sys.exit(main(sys.argv[1:]))")


def test_make_dataset_without_tqdm_prints_a_plain_progress_line(tmp_path):
    done = subprocess.run([sys.executable, "-c", _WITHOUT_TQDM, "make-dataset",
                           str(tmp_path / "d"), "--classes", "2", "--per-class", "3",
                           "--size", "32x24"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().splitlines() == [f"make-dataset {tmp_path / 'd'}: 6/6 (100%)"]
    assert "wrote 6 images" in done.stdout


def test_plain_line_is_periodic_on_a_pipe(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # as without the optional package
    bar = Progress(1000, desc="work", every_s=3600)
    assert not bar.uses_tqdm
    for _ in range(999):
        bar.update()
    bar.close()  # not at the total: close prints the last count
    assert capsys.readouterr().err.splitlines() == ["work: 999/1000 (100%)"]


def test_disabled_progress_prints_nothing(capsys):
    with Progress(10, enabled=False, desc="quiet") as bar:
        for _ in range(10):
            bar.update()
        bar.write("a log line")
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == "a log line\n"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_tqdm_bar_on_a_terminal_when_installed(monkeypatch):
    pytest.importorskip("tqdm")
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with Progress(4, desc="bars", unit="img") as bar:
        assert bar.uses_tqdm
        for _ in range(4):
            bar.update()
    assert "bars: 100%" in terminal.getvalue()


def test_plain_line_instead_of_tqdm_when_stderr_is_not_a_terminal(capsys):
    with Progress(4, desc="bars", unit="img", every_s=0.0) as bar:
        assert not bar.uses_tqdm
        for _ in range(4):
            bar.update()
    err = capsys.readouterr().err
    assert "bars" in err and "\r" not in err


def test_bench_with_no_progress_writes_nothing_to_stderr(tmp_path, capsys):
    from _images import image_folder
    from fmq_loader.tools.cli import main

    root = image_folder(tmp_path / "imgs", classes=1, per_class=8, size=(32, 24))
    assert main(["bench", "--data", str(root), "--batches", "2", "--loaders", "fmq",
                 "--set", "loader.batch_size=2", "--set", "loader.num_workers=1",
                 "--no-progress"]) == 0
    assert capsys.readouterr().err == ""
