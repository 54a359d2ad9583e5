"""`bench --plot` (issue 7): a valid PNG of images/s against num_workers; without matplotlib,
a one-line error naming the package to install."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml

from fmq_loader.tools.plot import PNG_SIGNATURE, plot_workers
from fmq_loader.tools.cli import main

from _images import image_folder

# Runs a command with matplotlib made unimportable, as on an install without the extra.
_WITHOUT_MATPLOTLIB = ("import sys; sys.modules['matplotlib'] = None; "
                       "from {module} import main; sys.exit(main(sys.argv[1:]))")


def _read_png(path):
    mpimg = pytest.importorskip("matplotlib.image")
    with open(path, "rb") as fh:
        assert fh.read(8) == PNG_SIGNATURE
    return mpimg.imread(path)


def test_plot_workers_writes_a_png_that_reads_back(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "w.png"
    plot_workers({"FMQLoader": {1: 610.0, 2: 1190.0, 3: 1210.0},
                  "torch DataLoader": {1: 520.0, 2: 880.0, 3: 900.0}}, path,
                 title="images/s against num_workers", note="2 cores\ncommand")
    pixels = _read_png(path)
    assert pixels.shape[:2] == (400, 640) and pixels.std() > 0.05  # drawn, not blank


def test_plot_workers_refuses_empty_results(tmp_path):
    pytest.importorskip("matplotlib")
    with pytest.raises(ValueError, match="nothing to plot"):
        plot_workers({"FMQLoader": {}}, tmp_path / "x.png")


@pytest.fixture
def tiny_config(tmp_path):
    root = image_folder(tmp_path / "imgs", classes=2, per_class=12, size=(48, 36))
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({
        "loader": {"batch_size": 4, "num_workers": 1, "persistent_workers": True},
        "dataset": {"root": str(root), "transforms": [{"Resize": {"size": 16}}, "ToTensor"]},
        "bench": {"batches": 3},
    }))
    return str(path)


def test_bench_plot_sweeps_workers_for_both_loaders(tiny_config, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "sweep.png"
    assert main(["bench", "-c", tiny_config, "--plot", str(out), "--workers", "1,2",
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"num_workers +FMQLoader +torch DataLoader", printed), printed
    assert re.search(r"^ +2 +\d+\.\d +\d+\.\d$", printed, re.M), printed
    _read_png(out)


@pytest.mark.parametrize("module,argv", [
    ("fmq_loader.tools.cli", ["bench", "-c", "{config}", "--plot", "{png}"]),
    ("fmq_loader.bench.loader", ["--plot", "{png}", "--root", "{tmp}"]),
])
def test_plot_without_matplotlib_names_the_package_to_install(tiny_config, tmp_path, module,
                                                              argv):
    argv = [a.format(config=tiny_config, png=tmp_path / "x.png", tmp=tmp_path) for a in argv]
    done = subprocess.run([sys.executable, "-c", _WITHOUT_MATPLOTLIB.format(module=module),
                           *argv], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert "Traceback" not in done.stderr
    assert "pip install matplotlib" in last and "fmq-loader[plot]" in last, last
    assert not (tmp_path / "x.png").exists()


def test_bench_workers_without_plot_is_a_usage_error(tiny_config, capsys):
    assert main(["bench", "-c", tiny_config, "--workers", "1,2"]) == 2
    assert "--workers is for the --plot sweep" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_loader_plot_end_to_end(tmp_path):
    """The chart command in docs/observability.md, small: both loaders at 1 and 2 workers."""
    pytest.importorskip("matplotlib")
    out = tmp_path / "w.png"
    done = subprocess.run([sys.executable, "-m", "fmq_loader.bench", "loader", "--plot",
                           str(out), "--workers", "1,2", "--images", "320", "--batch-size",
                           "16", "--runs", "1"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert re.search(r"^ +2 +\d+ +\d+ +\d+\.\d\dx$", done.stdout, re.M), done.stdout
    _read_png(out)
