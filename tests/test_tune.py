"""`fmq-loader tune` (issue 7): picks a setting at least as fast as 1 worker, writes a config
that from_config reads, and says what to change when the dataset or budget is too small."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest
import torch
import yaml

import fmq_loader.tools.tune
from fmq_loader import FMQLoader, load_config
from fmq_loader.tools.build import build_dataset
from fmq_loader.tools.cli import main
from fmq_loader.tools.tune import Trial, TuneError, tune, worker_ladder

from _images import image_folder


def _config(tmp_path, root, batch_size=8, **loader) -> str:
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump({
        "loader": {"batch_size": batch_size, "num_workers": 1, "drop_last": True, **loader},
        "dataset": {"root": str(root),
                    "transforms": [{"RandomResizedCrop": {"size": 32}}, "ToTensor"]},
    }))
    return str(path)


def _rows(out: str) -> list[tuple[int, int, float, bool]]:
    """(workers, prefetch, images/s, is best) for each row of tune's printed table."""
    rows = []
    for m in re.finditer(r"^ +(\d+) +(\d+) +\w+ +(\d+\.\d) +\d+\.\d\dx .*$", out, re.M):
        rows.append((int(m[1]), int(m[2]), float(m[3]), m[0].endswith("<- best")))
    return rows


def test_tune_picks_a_setting_at_least_as_fast_as_one_worker_and_writes_a_loadable_config(
        tmp_path, capsys):
    root = image_folder(tmp_path / "imgs", classes=2, per_class=48, size=(96, 72))
    out = tmp_path / "best.yaml"
    rc = main(["tune", _config(tmp_path, root), "--budget-s", "4", "--workers", "1,2",
               "--prefetch", "2,4", "--out", str(out), "--no-progress"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    rows = _rows(printed)
    # prefetch 4 runs at the count the sweep chose: the fewest workers within 3% of the fastest
    swept = max(r[2] for r in rows[:2])
    chosen = next(w for w, _, rate, _ in rows[:2] if rate >= 0.97 * swept)
    assert [(w, p) for w, p, _, _ in rows] == [(1, 2), (2, 2), (chosen, 4)], printed
    (best,) = [r for r in rows if r[3]]
    one_worker = rows[0][2]
    assert best[2] >= one_worker  # figures from this run's own table
    assert re.search(r"bottleneck: (decode|consumer|I/O|shared-memory)-bound: ", printed)
    # the written file is a config from_config accepts, with the best settings
    cfg = load_config(out)
    assert (cfg.loader.num_workers, cfg.loader.prefetch_factor) == best[:2]
    assert cfg.loader.persistent_workers and cfg.loader.batch_size == 8
    with FMQLoader.from_config(build_dataset(cfg), out) as loader:
        images, labels = next(iter(loader))
    assert images.shape == (8, 3, 32, 32) and labels.shape == (8,)


def test_tune_result_api_reports_every_trial(tmp_path):
    root = image_folder(tmp_path / "imgs", classes=2, per_class=32, size=(64, 48))
    res = tune(_config(tmp_path, root, batch_size=4), budget_s=2.0, workers=[1, 2],
               prefetch=[2])
    assert [t.num_workers for t in res.trials] == [1, 2]
    assert res.best.images_per_s == max(t.images_per_s for t in res.trials)
    for t in res.trials:
        assert len(t.window_rates) >= 3 and t.batches >= 6
        assert 0.0 <= t.data_bound <= 1.0 and 0.0 <= t.busy_share <= 1.0
    assert "<- best" in res.table()
    assert load_config(res.config).loader.num_workers == res.best.num_workers
    assert res.as_dict()["bottleneck"] == res.bottleneck


def test_tune_on_a_too_small_dataset_says_how_many_images_it_needs(tmp_path, capsys):
    root = image_folder(tmp_path / "imgs", classes=2, per_class=8, size=(32, 24))
    rc = main(["tune", _config(tmp_path, root, batch_size=4), "--budget-s", "10"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert re.search(r"dataset too small to tune: 16 images make 4 batches of 4 per epoch, "
                     r"and a 2-worker trial needs 11 .*use a folder of at least 44 images "
                     r".*or lower loader\.batch_size to 1", err), err


def test_tune_with_a_budget_under_two_trials_says_what_budget_to_use(tmp_path, capsys):
    root = image_folder(tmp_path / "imgs", classes=1, per_class=16, size=(32, 24))
    rc = main(["tune", _config(tmp_path, root, batch_size=2), "--budget-s", "1"])
    err = capsys.readouterr().err
    assert rc == 2
    assert re.search(r"budget of 1 s is too short to measure: .*use --budget-s 1\.5 or more",
                     err), err


class _SlowSamples(torch.utils.data.Dataset):
    """Each sample takes 25 ms: too slow for the budget below to measure anything."""

    def __len__(self) -> int:
        return 256

    def __getitem__(self, i: int):
        time.sleep(0.025)
        return torch.zeros(3), i % 2


def test_tune_when_trials_measure_too_few_batches_says_to_raise_the_budget():
    with pytest.raises(TuneError, match=r"budget of 1\.5 s is too short to measure: the "
                                        r"1-worker trial's .* raise --budget-s to at least \d+"):
        tune({"loader": {"batch_size": 8}}, budget_s=1.5, workers=[1, 2], prefetch=[2],
             dataset=_SlowSamples())


@pytest.mark.parametrize("argv,pattern", [
    (["--workers", "0,2"], r"--workers: must be a comma-separated list of ints >= 1, got '0,2'"),
    (["--prefetch", "x"], r"--prefetch: must be a comma-separated list of ints >= 1"),
    (["--budget-s", "-3"], r"--budget-s must be a positive number of seconds, got -3"),
    (["--out", "/nonexistent/dir/best.yaml"], r"--out .*folder '/nonexistent/dir' does not "
                                              r"exist"),
])
def test_tune_rejects_bad_arguments_in_one_line(tmp_path, capsys, argv, pattern):
    root = image_folder(tmp_path / "imgs", classes=1, per_class=4, size=(32, 24))
    assert main(["tune", _config(tmp_path, root), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(pattern, err), err


def test_worker_ladder_stops_at_twice_the_cores():
    assert worker_ladder(1) == [1, 2]
    assert worker_ladder(2) == [1, 2, 3, 4]
    assert worker_ladder(8) == [1, 2, 3, 4, 6, 8, 12, 16]
    assert worker_ladder(64)[-1] == 32


def test_tune_with_a_long_training_step_is_consumer_bound_and_keeps_one_worker(tmp_path):
    """A loop that sleeps 80 ms per batch of 4 small images waits for nothing: the model is the
    bottleneck, and among equally fast settings the fewest workers win."""
    root = image_folder(tmp_path / "imgs", classes=2, per_class=32, size=(64, 48))
    res = tune(_config(tmp_path, root, batch_size=4), budget_s=4.0, workers=[1, 2], prefetch=[2],
               step_s=0.08)
    assert res.bottleneck == "consumer-bound", res.table()
    assert "more workers will not help" in res.reason
    assert res.best.num_workers == 1 or res.best.images_per_s > 1.03 * res.baseline.images_per_s


def test_prefetch_trial_runs_at_the_chosen_worker_count_not_the_fastest(monkeypatch):
    """docs/observability.md: the other prefetch factor is tried "at the best count", the
    count tune would write. Here 2 workers measure 2% faster than 1, within the 3% tie, so 1
    is chosen; the prefetch trial ran at 2. The measurement is replaced by fixed figures (the
    sequencing is what is tested; the real runs above measure)."""
    rates = {(1, 2): 1000.0, (2, 2): 1020.0, (1, 4): 990.0, (2, 4): 990.0}

    def measured(cfg, dataset, workers, prefetch, decoder, slice_s, step_s=0.0):
        rate = rates[workers, prefetch]
        return Trial(num_workers=workers, prefetch_factor=prefetch, decoder=decoder,
                     images_per_s=rate, window_rates=(rate,) * 3, batches=6, images=24,
                     seconds=0.1, startup_s=0.01, data_bound=0.9, busy_share=0.9,
                     cpu_share=0.9), {}

    monkeypatch.setattr(fmq_loader.tools.tune, "_run_trial", measured)
    res = tune({"loader": {"batch_size": 4}}, budget_s=3.0, workers=[1, 2], prefetch=[2, 4],
               dataset=list(range(100)))
    assert [(t.num_workers, t.prefetch_factor) for t in res.trials] == [(1, 2), (2, 2), (1, 4)]
    assert (res.best.num_workers, res.best.prefetch_factor) == (1, 2)


def test_written_config_finds_its_dataset_from_any_directory(tmp_path):
    """tune wrote dataset.root as given (relative), and load_config reads a relative root
    from the current directory: best.yaml used from elsewhere pointed at nothing."""
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    elsewhere.mkdir()
    image_folder(here / "imgs", classes=2, per_class=32, size=(64, 48))
    (here / "tune.yaml").write_text(yaml.safe_dump({
        "loader": {"batch_size": 4, "num_workers": 1, "drop_last": True},
        "dataset": {"root": "imgs", "transforms": [{"RandomResizedCrop": {"size": 16}},
                                                   "ToTensor"]}}))

    def run_cli(*argv, cwd):
        return subprocess.run([sys.executable, "-m", "fmq_loader", *argv], cwd=cwd,
                              capture_output=True, text=True, timeout=120)

    out = run_cli("tune", "tune.yaml", "--budget-s", "2", "--workers", "1,2", "--prefetch", "2",
                  "--out", "best.yaml", "--no-progress", cwd=here)
    assert out.returncode == 0, out.stderr
    assert load_config(here / "best.yaml").dataset.root == str(here / "imgs")
    out = run_cli("check-config", "../here/best.yaml", cwd=elsewhere)
    assert out.returncode == 0, out.stderr
    assert f"dataset.root {here / 'imgs'} exists" in out.stdout
