"""FMQLoader behaviour inside and around the workers (issue 3), with real processes."""

from __future__ import annotations

import os
import re
import time

import pytest

torch = pytest.importorskip("torch")
from torch.utils.data import DataLoader, Dataset, DistributedSampler  # noqa: E402

import fmq_loader  # noqa: E402
from fmq_loader import FMQLoader, QueueTimeout  # noqa: E402

from _loader_data import (BigTensorDataset, EpochRecordingSampler, KindDataset,  # noqa: E402
                          RaggedDataset, RandomDrawDataset, RecordWorkerInit, SlowDataset,
                          WorkerInfoDataset)


def test_workers_see_their_worker_info_and_ran_worker_init_fn(start_method, tmp_path):
    """Ours and torch's get_worker_info() give id, num_workers, seed (base + id) and dataset."""
    dataset = WorkerInfoDataset(8)
    expected_base = int(torch.empty((), dtype=torch.int64)
                        .random_(generator=torch.Generator().manual_seed(3)).item())
    with FMQLoader(dataset, batch_size=None, num_workers=2, multiprocessing_context=start_method,
                   worker_init_fn=RecordWorkerInit(tmp_path),
                   generator=torch.Generator().manual_seed(3)) as loader:
        samples = list(loader)
    init_pids = {int(p.name): int(p.read_text()) for p in tmp_path.iterdir()}
    assert sorted(init_pids) == [0, 1], "worker_init_fn did not run once in each worker"
    assert init_pids[0] != init_pids[1]
    assert [s["index"] for s in samples] == list(range(8))
    for s in samples:  # whichever worker served it
        assert s["pid"] == init_pids[s["id"]]
        assert s["num_workers"] == s["torch_num_workers"] == 2
        assert s["torch_id"] == s["id"]
        assert s["seed"] == s["torch_seed"] == expected_base + s["id"]
        assert s["dataset_is_self"] and s["torch_dataset_is_self"]
        assert s["init_ran_for"] == s["id"], "worker_init_fn got another worker's id"
    assert fmq_loader.get_worker_info() is None
    assert torch.utils.data.get_worker_info() is None


@pytest.mark.parametrize("persistent_workers", [False, True], ids=["fresh", "persistent"])
def test_workers_draw_different_random_numbers_across_workers_and_epochs(persistent_workers):
    """No duplicated augmentations: random, numpy and torch draws are distinct everywhere."""
    with FMQLoader(RandomDrawDataset(8), batch_size=None, num_workers=2,
                   multiprocessing_context="fork",
                   persistent_workers=persistent_workers) as loader:
        epochs = [list(loader) for _ in range(2)]
    workers = {s[0] for epoch in epochs for s in epoch}
    assert workers == {0, 1}
    for source, column in (("random", 1), ("numpy", 2), ("torch", 3)):
        draws = [s[column] for epoch in epochs for s in epoch]
        assert len(set(draws)) == len(draws), f"{source} draws repeat: {draws}"
    first_draw = {(e, s[0]): s[1:] for e, epoch in enumerate(epochs) for s in reversed(epoch)}
    assert first_draw[(0, 0)] != first_draw[(1, 0)], "worker 0 repeats its epoch-0 draws"
    assert first_draw[(0, 0)] != first_draw[(0, 1)], "workers 0 and 1 draw the same numbers"


def test_batch_kept_by_user_stays_unchanged_while_30_more_batches_flow():
    """A slab is reused only when no view of it is alive."""
    with FMQLoader(BigTensorDataset(4 * 40), batch_size=4, num_workers=2,
                   multiprocessing_context="fork", extra_slabs=2) as loader:
        it = iter(loader)
        kept = [next(it), next(it)]
        copies = [b.clone() for b in kept]
        for _ in range(30):
            batch = next(it)
            assert batch.shape == (4, 128, 128)
            del batch
        for i, (batch, copy) in enumerate(zip(kept, copies)):
            assert torch.equal(batch, copy), f"kept batch {i} changed under the user"
        rest = list(it)
    assert len(rest) == 40 - 32
    assert torch.equal(kept[0][:, 0, 0], torch.tensor([0.0, 1.0, 2.0, 3.0]))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only fallback")
@pytest.mark.parametrize("num_workers", [0, 2])
def test_pin_memory_without_accelerator_warns_and_yields_unpinned_batches(num_workers):
    extra = {"multiprocessing_context": "fork"} if num_workers else {}
    with pytest.warns(UserWarning, match=r"'pin_memory' argument is set as true but no "
                                         r"accelerator is found"):
        loader = FMQLoader(KindDataset(6), batch_size=2, pin_memory=True,
                           num_workers=num_workers, **extra)
    with loader:
        batches = list(loader)
    expected = list(DataLoader(KindDataset(6), batch_size=2))
    assert len(batches) == 3
    assert all(torch.equal(a, b) for a, b in zip(batches, expected))


def test_timeout_raises_after_about_timeout_seconds_when_dataset_is_slow():
    with FMQLoader(SlowDataset(1, delay_s=2.5), batch_size=1, num_workers=1,
                   multiprocessing_context="fork", timeout=1) as loader:
        it = iter(loader)
        start = time.monotonic()
        with pytest.raises(QueueTimeout, match=r"timed out after 1 seconds.*1/1 workers alive"):
            next(it)
        elapsed = time.monotonic() - start
    assert 0.5 <= elapsed < 5, f"timeout=1 raised after {elapsed:.2f} s"


def test_timeout_error_is_a_runtime_error_like_torchs():
    """torch raises RuntimeError('DataLoader timed out ...'): `except RuntimeError` must still work."""
    with FMQLoader(SlowDataset(1, delay_s=1.0), batch_size=1, num_workers=1,
                   multiprocessing_context="fork", timeout=0.2) as loader:
        with pytest.raises(RuntimeError, match="timed out"):
            next(iter(loader))


class _Unpicklable:
    """A dataset holding a lambda: spawn cannot send it to a worker."""

    def __init__(self):
        self.transform = lambda x: x

    def __len__(self):
        return 2

    def __getitem__(self, i):
        return self.transform(i)


@pytest.mark.parametrize("what", ["dataset", "collate_fn", "worker_init_fn"])
def test_unpicklable_argument_under_spawn_raises_type_error_naming_it(what):
    kw = {"dataset": KindDataset(2)}
    kw[what] = _Unpicklable() if what == "dataset" else (lambda *a: None)
    loader = FMQLoader(batch_size=1, num_workers=1, multiprocessing_context="spawn", **kw)
    with loader, pytest.raises(TypeError, match=rf"^{what} .* cannot be pickled for a 'spawn' "
                                                r"worker .*must be defined at module top level"):
        next(iter(loader))


class CountingDataset(Dataset):
    """Counts its loads in a multiprocessing.Value: picklable only while a worker starts."""

    def __init__(self, ctx) -> None:
        self.count = ctx.Value("i", 0)

    def __len__(self) -> int:
        return 6

    def __getitem__(self, i: int) -> int:
        with self.count.get_lock():
            self.count.value += 1
        return i


def test_a_dataset_holding_a_multiprocessing_value_works_under_spawn_as_in_torch():
    """Plain pickle refuses a multiprocessing.Value; a worker's start carries it. The
    up-front check refused what torch's DataLoader accepts."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    for cls in (DataLoader, FMQLoader):
        dataset = CountingDataset(ctx)
        loader = cls(dataset, batch_size=2, num_workers=1, multiprocessing_context=ctx)
        assert [b.tolist() for b in loader] == [[0, 1], [2, 3], [4, 5]]
        assert dataset.count.value == 6  # the worker's increments reach this process
        if cls is FMQLoader:
            loader.close()


@pytest.mark.parametrize("num_workers", [0, 2])
def test_samples_of_different_shapes_raise_error_naming_the_shapes(num_workers):
    extra = {"multiprocessing_context": "fork"} if num_workers else {}
    loader = FMQLoader(RaggedDataset(8, odd_index=2), batch_size=4, sampler=[7, 6, 5, 4, 3, 2, 1, 0],
                       num_workers=num_workers, **extra)
    expected = r"equal shapes, got \(3,\) at batch position 0 and \(5,\) at batch position 1"
    if num_workers:  # the worker's error also names the worker and the dataset indices
        expected = r"(?s)Caught CollateError in worker \d .*fetching indices \[3, 2, 1, 0\].*" + expected
    with loader, pytest.raises(ValueError, match=expected):
        list(loader)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_set_epoch_reaches_distributed_sampler_and_changes_the_order(num_workers):
    extra = {"multiprocessing_context": "fork"} if num_workers else {}
    dataset = KindDataset(12, "number")
    sampler = DistributedSampler(dataset, num_replicas=2, rank=0, shuffle=True, seed=1)
    reference = DistributedSampler(dataset, num_replicas=2, rank=0, shuffle=True, seed=1)
    with FMQLoader(dataset, batch_size=3, sampler=sampler, num_workers=num_workers,
                   **extra) as loader:
        orders = []
        for epoch in (0, 1):
            loader.set_epoch(epoch)
            assert sampler.epoch == epoch
            reference.set_epoch(epoch)
            orders.append(torch.cat(list(loader)).tolist())
            assert orders[-1] == list(reference)
    assert orders[0] != orders[1]


def test_set_epoch_reaches_the_sampler_inside_a_batch_sampler():
    sampler = EpochRecordingSampler(4)
    batch_sampler = torch.utils.data.BatchSampler(sampler, 2, drop_last=False)
    loader = FMQLoader(KindDataset(4), batch_sampler=batch_sampler)
    loader.set_epoch(5)
    assert sampler.epochs == [5]


def test_iterating_a_closed_loader_raises_runtime_error():
    loader = FMQLoader(KindDataset(4), batch_size=2, num_workers=1, multiprocessing_context="fork")
    assert len(list(loader)) == 2
    loader.close()
    loader.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed; create a new one"):
        iter(loader)


@pytest.mark.parametrize("kw, error, words", [
    (dict(num_workers=2, prefetch_factor=0), ValueError, "prefetch_factor must be an int >= 1"),
    (dict(num_workers=2, prefetch_factor=1.5), ValueError, "got 1.5"),
    (dict(num_workers=2.0), TypeError, "num_workers must be an int"),
    (dict(extra_slabs=-1), ValueError, "extra_slabs must be an int >= 0"),
    (dict(extra_slabs="x"), ValueError, "got 'x'"),
    (dict(log_every_s="x"), ValueError, "log_every_s must be a positive number"),
], ids=["prefetch-0", "prefetch-float", "workers-float", "extra-slabs-negative", "extra-slabs-str",
        "log-every-str"])
def test_bad_values_torch_lets_through_or_fmq_adds_are_refused_at_construction(kw, error, words):
    """prefetch_factor=0 with workers made next() wait for good (torch: an AssertionError at
    iter()); the others failed later with an error naming an internal parameter, or not at all."""
    with pytest.raises(error, match=re.escape(words)):
        FMQLoader(KindDataset(8), **kw)


def _first_worker_exits_3(worker_id: int) -> None:
    if worker_id == 0:
        os._exit(3)


def test_a_worker_that_exits_with_a_nonzero_code_is_reported_though_the_others_deliver():
    """Worker 0 ends itself in worker_init_fn; worker 1 could load every batch, and did,
    with nothing said. torch raises for it too (its SIGCHLD handler)."""
    from fmq_loader.errors import WorkerError

    with FMQLoader(KindDataset(64), batch_size=2, num_workers=2, multiprocessing_context="fork",
                   worker_init_fn=_first_worker_exits_3) as loader:
        with pytest.raises(WorkerError, match=r"DataLoader worker \(pid \d+\) exited unexpectedly: fmq worker 0 exited with exit code 3"):
            for _ in loader:
                time.sleep(0.01)


# A script run as users run theirs: `python script.py`, the loader at its top level.
_NO_GUARD = """\
import sys
from fmq_loader import FMQLoader

data = list(range(16))
loader = FMQLoader(data, batch_size=4, num_workers=2, multiprocessing_context=sys.argv[1])
for batch in loader:
    pass
print("all batches")
"""


def _run_script(tmp_path, text: str, *args: str):
    import subprocess
    import sys

    script = tmp_path / "train.py"
    script.write_text(text)
    return script, subprocess.run([sys.executable, str(script), *args], capture_output=True,
                                  text=True, timeout=120, cwd=tmp_path)


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_a_script_without_the_main_guard_is_told_to_add_it(tmp_path, method):
    """Each worker runs the script again and fails to start workers of its own: the main process
    raised "exited with exit code 1" chained to an internal WatchedFdReady ("What a new user hit")."""
    script, done = _run_script(tmp_path, _NO_GUARD, method)
    assert done.returncode == 1 and "all batches" not in done.stdout
    last = done.stderr.rstrip().splitlines()[-1]
    assert last.startswith("fmq_loader.errors.WorkerError: DataLoader worker (pid "), done.stderr
    assert (f"a {method!r} worker first runs the main script again (as __mp_main__), and "
            f"{str(script)!r} line 6 ('for batch in loader:') runs outside "
            '`if __name__ == "__main__":`') in last
    assert "use multiprocessing_context='fork'" in last
    assert "WatchedFdReady" not in done.stderr
    # each worker says the same on its way out, in multiprocessing's words and ours
    assert ("RuntimeError: An attempt has been made to start a new process before the current "
            "process has finished its bootstrapping phase: FMQLoader cannot start workers in "
            "fmq-worker-") in done.stderr
    # the fix the message gives works
    guarded = _NO_GUARD.replace("data = ", 'if __name__ == "__main__":\n    data = ')
    guarded = guarded.replace("\nloader", "\n    loader").replace("\nfor", "\n    for")
    guarded = guarded.replace("\n    pass", "\n        pass").replace("\nprint", "\n    print")
    _, done = _run_script(tmp_path, guarded, method)
    assert (done.returncode, done.stdout) == (0, "all batches\n"), done.stderr


_GUARDED_WORKER_EXITS = """\
import os
from fmq_loader import FMQLoader


class ExitsInWorker:
    def __len__(self):
        return 8

    def __getitem__(self, i):
        os._exit(1)


if __name__ == "__main__":
    for batch in FMQLoader(ExitsInWorker(), batch_size=2, num_workers=1,
                           multiprocessing_context="spawn"):
        pass
"""


def test_a_guarded_script_whose_worker_exits_with_code_1_is_not_told_about_the_guard(tmp_path):
    _, done = _run_script(tmp_path, _GUARDED_WORKER_EXITS)
    last = done.stderr.rstrip().splitlines()[-1]
    assert "exited with exit code 1: a call to sys.exit() or os._exit()" in last, done.stderr
    assert "__name__" not in last


class _UnprintableError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


class _RaisesUnprintable(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int):
        raise _UnprintableError()


def test_an_exception_whose_str_raises_still_reaches_the_main_process_with_its_type():
    """Its __str__ raised inside the worker's report: the worker died, traceback on stderr."""
    with FMQLoader(_RaisesUnprintable(), batch_size=2, num_workers=1,
                   multiprocessing_context="fork") as loader:
        with pytest.raises(_UnprintableError) as info:
            next(iter(loader))
    text = info.value.args[0]  # (its str() raises here too: the same class)
    assert "Caught _UnprintableError in worker 0" in text and "raise _UnprintableError()" in text
