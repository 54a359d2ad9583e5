"""`python -m fmq_loader.bench images`: the per-core table and the --steps breakdown run and report."""

from __future__ import annotations

import io

from fmq_loader.bench import images
from fmq_loader.images.decode import region_decoder_available


def test_the_steps_breakdown_times_every_step_on_the_same_files(tmp_path):
    out = io.StringIO()
    rows = images.steps(str(tmp_path), per_class=1, runs=1, out=out, sets=["photo"])
    steps = [r["step"] for r in rows]
    assert steps[0].startswith("plain Pillow") and steps[-1].startswith("fmq pipeline")
    assert len(steps) == (8 if region_decoder_available() else 3)
    assert all(r["size"] == "photo" and r["ms"] > 0 for r in rows)
    text = out.getvalue()
    assert "photo: synthetic photo-like" in text and "ms per image, one thread" in text
    for step in steps:
        assert step in text


def test_the_main_entry_runs_the_table_and_the_steps(tmp_path, capsys):
    assert images.main(["--dir", str(tmp_path), "--per-class", "1", "--runs", "1",
                        "--sets", "photo", "--steps"]) == 0
    assert "fmq pipeline" in capsys.readouterr().out
    assert images.main(["--dir", str(tmp_path), "--per-class", "1", "--runs", "1",
                        "--sets", "photo"]) == 0
    assert "vs plain" in capsys.readouterr().out
