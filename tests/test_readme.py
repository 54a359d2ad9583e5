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


def test_readme_names_exactly_two_setup_commands():
    block = README.read_text().split("## The two commands", 1)[1].split("```")[1]
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]
