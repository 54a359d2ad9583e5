"""The README's quick start runs as pasted (issue 5)."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _quick_start() -> str:
    text = README.read_text()
    section = text.split("## Quick start", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    if match is None:
        raise AssertionError("README's Quick start has no ```python block")
    return match.group(1)


def test_readme_quick_start_runs_as_pasted(tmp_path):
    script = tmp_path / "quick_start.py"
    script.write_text(_quick_start())
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "torch.Size([32, 3, 64, 64])" in done.stdout
    assert done.stderr == ""


def test_readme_queue_example_runs_as_pasted(tmp_path):
    section = README.read_text().split("`fmq_loader.Queue` also works on its own", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None, "README's Queue example has no ```python block"
    script = tmp_path / "queue_example.py"
    script.write_text(match.group(1) + "\n    print('frame', item['step'], int(item['frame'][0, 0, 0]))\n")
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "frame 3 7"  # the last item: the one built in its slab
    assert done.stderr == ""


def test_readme_names_exactly_two_setup_commands():
    block = README.read_text().split("## The two commands", 1)[1].split("```")[1]
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]
