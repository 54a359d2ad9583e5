"""`fmq-loader train|bench|show-config|check-config` on tiny generated data; mistakes exit 2."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fmq_loader.tools.cli import main
from fmq_loader.tools.config import load_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.fixture
def tiny_config(tmp_path) -> Path:
    """A config over a 2x8 generated folder (made on first use), 16 px crops, 1 worker."""
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({
        "loader": {"batch_size": 4, "num_workers": 1, "drop_last": True},
        "dataset": {"root": str(tmp_path / "data"), "generate_if_missing": True,
                    "transforms": [{"RandomResizedCrop": {"size": 16}}, "ToTensor"]},
        "synth": {"classes": 2, "per_class": 8, "size": [32, 24]},
        "train": {"steps": 6, "warmup_steps": 2, "log_every": 3, "threads": 1},
        "bench": {"batches": 5},
    }))
    return path


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_train_both_prints_loss_throughput_and_a_side_by_side_table(tiny_config, capsys):
    rc = main(["train", "--config", str(tiny_config), "--loader", "both", "--no-progress",
               "--json"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "steps on the CPU (1 torch thread);" in out  # train.threads: 1
    assert re.search(r"step +6/6 +loss \d+\.\d+ +\d+\.\d img/s +data wait +\d+\.\d%", out)
    assert re.search(r"FMQLoader +\d+\.\d +\d+\.\d% +\d+\.\d\d s", out)
    assert re.search(r"torch DataLoader +\d+\.\d +\d+\.\d%", out)
    assert re.search(r"FMQLoader / torch DataLoader: \d+\.\d\dx images/s", out)
    results = json.loads(out.strip().splitlines()[-1])
    assert set(results) == {"fmq", "torch"}
    assert results["fmq"]["images"] == 4 * 4 and 0 <= results["fmq"]["data_wait_share"] <= 1


def test_train_steps_and_data_flags_override_the_config(tiny_config, tmp_path, capsys):
    rc = main(["train", "-c", str(tiny_config), "--steps", "4", "--data", str(tmp_path / "other"),
               "--set", "loader.num_workers=0", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and "step     4/4" in out and str(tmp_path / "other") in out


def test_bench_json_reports_both_loaders(tiny_config, capsys):
    rc = main(["bench", "-c", str(tiny_config), "--json", "--no-progress", "--batches", "3"])
    report = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert set(report["loaders"]) == {"fmq", "torch"}
    for r in report["loaders"].values():
        assert r["batches"] == 3 and r["images"] == 12 and r["first_batch_s"] > 0
    assert report["fmq_over_torch"] > 0


def test_bench_table_and_progress_bar(tiny_config, capsys):
    rc = main(["bench", "-c", str(tiny_config), "--loaders", "fmq"])
    captured = capsys.readouterr()
    assert rc == 0
    assert re.search(r"FMQLoader +\d+\.\d{3} s +\d+\.\d +5 ", captured.out)
    assert "torch DataLoader" not in captured.out
    assert re.search(r"bench fmq: .*5/5", captured.err)  # tqdm's bar or the plain line


def test_show_config_prints_a_loadable_config_with_overrides(tiny_config, capsys, tmp_path):
    assert main(["show-config", str(tiny_config), "--set", "loader.batch_size=7"]) == 0
    text = capsys.readouterr().out
    assert "  batch_size: 7  # samples per batch" in text
    assert "extra_slabs: 4" in text  # defaults included
    out = tmp_path / "shown.yaml"
    out.write_text(text)
    assert load_config(out).loader.batch_size == 7


def run_cli(*argv: str, cwd=None) -> subprocess.CompletedProcess:
    """`python -m fmq_loader ARGV` as a user runs it: its own process, exit code, stdout, stderr."""
    return subprocess.run([sys.executable, "-m", "fmq_loader", *argv], capture_output=True,
                          text=True, timeout=120, cwd=cwd)


def test_check_config_accepts_the_shipped_configs_that_train_accepts(capsys):
    paths = [str(p) for p in sorted(CONFIGS.glob("*.yaml")) if p.name != "default.yaml"]
    assert main(["check-config", *paths]) == 0
    assert capsys.readouterr().out.count(": ok (") == len(paths)


def test_check_config_checks_every_file_and_reports_each_bad_one(tmp_path):
    """Issue "What a new user hit": check-config A B C stopped at the first bad file."""
    good = tmp_path / "good.yaml"
    good.write_text(f"dataset:\n  root: {tmp_path}\n")
    bad1 = tmp_path / "bad1.yaml"
    bad1.write_text("loader:\n  num_wokers: 2\n")
    bad2 = tmp_path / "bad2.yaml"
    bad2.write_text("loader:\n  batch_size: 0\n")
    out = run_cli("check-config", str(bad1), str(good), str(bad2))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stdout.strip() == f"{good}: ok (batch_size 32, num_workers 2, 4 transforms; " \
                                 f"dataset.root {tmp_path} exists)"
    errors = out.stderr.strip().splitlines()
    assert errors[0].startswith(f"fmq-loader: error: {bad1}:2: unknown key 'loader.num_wokers'")
    assert errors[1].startswith(f"fmq-loader: error: {bad2}:2: loader.batch_size must be an "
                                "int >= 1, got 0")
    assert errors[2:] == ["fmq-loader: 2 of 3 configs failed"]


def test_check_config_refuses_what_train_refuses_with_the_same_message(tmp_path):
    """configs/default.yaml sets no dataset.root: check-config said ok, train exited 2."""
    default = str(CONFIGS / "default.yaml")
    check = run_cli("check-config", default)
    train = run_cli("train", "-c", default, "--no-progress")
    assert check.returncode == train.returncode == 2
    assert check.stderr == train.stderr
    assert re.fullmatch(r"fmq-loader: error: .*default\.yaml:\d+: dataset\.root is not set; "
                        r"set dataset\.root: .*--set dataset\.root=DIR\n", check.stderr)
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    cases = {"file": (f"dataset:\n  root: {afile}\n", r"dataset\.root '.*afile' is not a folder"),
             "generated": (f"dataset:\n  root: {tmp_path / 'new'}\n  generate_if_missing: true\n",
                           None),
             "folder": (f"dataset:\n  root: {tmp_path}\n", None)}
    for name, (text, refused) in cases.items():
        (tmp_path / f"{name}.yaml").write_text(text)
    out = run_cli("check-config", *(str(tmp_path / f"{n}.yaml") for n in cases))
    assert out.returncode == 2
    assert re.search(r"file\.yaml:2: " + cases["file"][1], out.stderr), out.stderr
    assert f"generated.yaml: ok (batch_size 32, num_workers 2, 4 transforms; dataset.root " \
           f"{tmp_path / 'new'} will be generated)" in out.stdout
    assert f"folder.yaml: ok (batch_size 32, num_workers 2, 4 transforms; dataset.root " \
           f"{tmp_path} exists)" in out.stdout
    assert not (tmp_path / "new").exists()  # checking generates nothing


def test_a_conflict_caused_by_a_flag_names_the_flag_not_the_config_line():
    """train -c configs/cpu_small.yaml --steps 5 blamed the file's warmup_steps line."""
    out = run_cli("train", "-c", str(CONFIGS / "cpu_small.yaml"), "--steps", "5", "--no-progress")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert re.fullmatch(r"fmq-loader: error: --steps 5: train\.steps must be > "
                        r"train\.warmup_steps, got 5 with warmup_steps 10 from "
                        r".*cpu_small\.yaml:\d+; use 11 steps or more, or lower "
                        r"train\.warmup_steps\n", out.stderr), out.stderr
    out = run_cli("train", "-c", str(CONFIGS / "cpu_small.yaml"), "--set",
                  "loader.num_workers=0", "--no-progress")
    assert out.returncode == 2
    assert re.fullmatch(r"fmq-loader: error: --set loader\.num_workers=0: loader\.num_workers=0 "
                        r"conflicts with loader\.persistent_workers: true from "
                        r".*cpu_small\.yaml:\d+, which needs num_workers >= 1; .*\n",
                        out.stderr), out.stderr


def test_data_flag_is_a_folder_name_as_typed_and_errors_name_the_flag(tiny_config, tmp_path):
    """--data 2024 was read as YAML (the int 2024), and errors blamed `--set dataset.root=`."""
    out = run_cli("bench", "-c", str(tiny_config), "--data", "2024", "--loaders", "fmq",
                  "--batches", "1", "--json", "--no-progress", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["root"] == str(tmp_path / "2024")  # ImageFolder: absolute
    out = run_cli("bench", "--data", str(tmp_path / "absent"))
    assert out.returncode == 2
    assert out.stderr.startswith(f"fmq-loader: error: --data {tmp_path / 'absent'}: "
                                 f"dataset.root '{tmp_path / 'absent'}' does not exist"), out.stderr


def test_version_and_top_level_help():
    import fmq_loader

    out = run_cli("--version")
    assert out.returncode == 0 and out.stdout == f"fmq-loader {fmq_loader.__version__}\n"
    out = run_cli("--help")
    assert out.returncode == 0
    assert "fmq-loader train --config configs/cpu_small.yaml" in out.stdout  # an example
    assert "configs/" in out.stdout and "README.md" in out.stdout


@pytest.mark.parametrize("argv,pattern", [
    (["check-config", "{bad}"], r"bad\.yaml:2: unknown key 'loader\.num_wokers'; did you mean"),
    (["check-config", "{missing}"], r"missing\.yaml: cannot read config file"),
    (["show-config", "{syntax}"], r"syntax\.yaml:2:\d+: invalid YAML syntax"),
    (["train", "-c", "{bad}"], r"unknown key 'loader\.num_wokers'"),
    (["bench", "-c", "{range}"], r"range\.yaml:2: loader\.batch_size must be an int >= 1, got 0"),
    (["train", "--set", "loader.num_workers=-1"], r"--set loader\.num_workers=-1: "
                                                   r"loader\.num_workers must be an int >= 0"),
    (["train"], r"<defaults>: dataset\.root is not set; .*--data DIR"),
    (["bench", "-c", "{noroot}"], r"noroot\.yaml:2: dataset\.root '.*absent' does not exist"),
    (["check-config", "{noroot}"], r"noroot\.yaml:2: dataset\.root '.*absent' does not exist"),
    (["check-config", "{dup}"], r"dup\.yaml:4: key 'loader\.num_workers' appears twice, at "
                                r"lines 2 and 4; .*delete one of them"),
    (["show-config", "{dup}"], r"dup\.yaml:4: key 'loader\.num_workers' appears twice"),
    (["train", "-c", "{dup}"], r"dup\.yaml:4: key 'loader\.num_workers' appears twice"),
    (["train", "--loader", "jax"], r"argument --loader: invalid choice: 'jax'"),
    (["bench", "--loaders", "fmq,dali"], r"--loaders: must be fmq, torch or fmq,torch"),
    (["train", "--set", "nokey"], r"--set nokey: expected KEY=VALUE"),
])
def test_user_mistakes_are_one_stderr_line_and_exit_2(tmp_path, capsys, argv, pattern):
    files = {"bad": "loader:\n  num_wokers: 2\n", "syntax": "loader:\n  x: [1\n",
             "range": "loader:\n  batch_size: 0\n",
             "noroot": f"dataset:\n  root: {tmp_path / 'absent'}\n",
             "dup": "loader:\n  num_workers: 1\n  batch_size: 4\n  num_workers: 3\n"}
    for name, text in files.items():
        (tmp_path / f"{name}.yaml").write_text(text)
    argv = [a.format(**{n: str(tmp_path / f"{n}.yaml") for n in [*files, "missing"]})
            for a in argv]
    assert main(argv) == 2
    assert re.search(pattern, one_error_line(capsys))


@pytest.mark.parametrize("command", ["train", "bench", "tune", "show-config", "check-config",
                                     "make-dataset"])
def test_every_command_has_help(command, capsys):
    assert main([command, "--help"]) == 0
    assert f"usage: fmq-loader {command}" in capsys.readouterr().out


def test_console_entry_point_runs_as_python_dash_m(tmp_path):
    out = subprocess.run([sys.executable, "-m", "fmq_loader", "check-config",
                          str(CONFIGS / "cpu_small.yaml")], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and "cpu_small.yaml: ok" in out.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("queue:\n  extra_slab: 1\n")
    out = subprocess.run([sys.executable, "-m", "fmq_loader", "check-config", str(bad)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "bad.yaml:2: unknown key 'queue.extra_slab'; did you mean 'queue.extra_slabs'?" \
        in out.stderr
