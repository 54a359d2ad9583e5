"""Batches built in a slab while their samples load (assemble.py): default_collate's result,
sent without another copy, and every slab given back on every path."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from fmq_loader import FMQLoader, Queue
from fmq_loader.workers.assemble import SlabAssembler
from fmq_loader.workers.collate import default_collate

from test_collate import _same


def _image(i: int, shape=(3, 24, 24), dtype=torch.uint8) -> torch.Tensor:
    return torch.arange(int(np.prod(shape)), dtype=torch.int64).add(i).remainder(251).to(dtype).reshape(shape)


SAMPLES = {  # each: 9 samples; built in the slab, or (last ones) handed to default_collate
    "tensor": [_image(i) for i in range(9)],
    "tuple-image-label": [(_image(i), i) for i in range(9)],
    "list-image-float-image": [[_image(i), i / 3, _image(i, (5, 100), torch.float32)] for i in range(9)],
    "small-tensors-only": [(torch.tensor([i, i]), i) for i in range(9)],
    "bool-and-float64": [(_image(i).bool(), _image(i).double(), True) for i in range(9)],
    "channels-last": [_image(i, (1, 3, 24, 24)).contiguous(memory_format=torch.channels_last)[0]
                      for i in range(9)],
    "with-string": [(_image(i), f"path{i}") for i in range(9)],
    "bfloat16": [(_image(i).bfloat16(), i) for i in range(9)],
    "dict": [{"img": _image(i)} for i in range(9)],
    "dtype-changes-at-4": [_image(i, dtype=torch.uint8 if i < 4 else torch.int16) for i in range(9)],
    "tuple-then-list": [(_image(i), i) if i < 5 else [_image(i), i] for i in range(9)],
}


def _assemble(q: Queue, samples):
    assembler = SlabAssembler(q, len(samples))
    for k, s in enumerate(samples):
        assembler.add(k, s)
    return assembler.finish(samples), assembler.reservation()


def _claimed(q: Queue) -> int:
    return int(np.count_nonzero(q._arena._state))


@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_assembled_batch_is_default_collates_and_arrives_unchanged(kind):
    samples = SAMPLES[kind]
    with Queue(num_slabs=2) as q:
        batch, into = _assemble(q, samples)
        _same(batch, default_collate(samples))
        q.put(batch, into=into)
        got = q.get(timeout=10)
        _same(got, default_collate(samples))
        del got, batch, into
        gc.collect()
        assert _claimed(q) == 0


def test_assembled_tensors_are_sent_from_where_they_were_built():
    """Same process: the consumer's mapping of the slab is the producer's, so a batch that
    was not copied again comes back at the very address it was built at."""
    samples = SAMPLES["tuple-image-label"]
    with Queue(num_slabs=2) as q:
        batch, into = _assemble(q, samples)
        assert into is not None, "the image column should have been built in a slab"
        built = batch[0].data_ptr()
        q.put(batch, into=into)
        got = q.get(timeout=10)
        assert got[0].data_ptr() == built
        _same(got, default_collate(samples))


def test_a_sample_of_another_shape_gives_default_collates_error_and_the_slab_back():
    samples = [_image(i) for i in range(6)] + [_image(6, (3, 20, 24))]
    with Queue(num_slabs=2) as q:
        assembler = SlabAssembler(q, len(samples))
        for k, s in enumerate(samples[:6]):
            assembler.add(k, s)
        assert assembler.active and _claimed(q) == 1
        assembler.add(6, samples[6])
        assert not assembler.active and _claimed(q) == 0
        with pytest.raises(ValueError, match=r"\(3, 24, 24\) at batch position 0 and \(3, 20, 24\) "
                                             r"at batch position 6"):
            assembler.finish(samples)


def test_no_free_slab_means_the_usual_collate():
    samples = SAMPLES["tensor"]
    with Queue(num_slabs=1) as q:
        held = q.reserve(1)
        batch, into = _assemble(q, samples)
        assert into is None
        _same(batch, default_collate(samples))
        held.cancel()
        assert _claimed(q) == 0


def test_cancel_and_a_failed_put_give_the_slab_back():
    with Queue(num_slabs=2) as q:
        r = q.reserve(1 << 20)
        assert _claimed(q) == 1
        r.cancel()
        r.cancel()  # idempotent
        assert _claimed(q) == 0
        batch, into = _assemble(q, SAMPLES["tuple-image-label"])
        with pytest.raises(TypeError, match="not picklable"):
            q.put([batch, lambda: 0], into=into)
        assert _claimed(q) == 0


class Images(Dataset):
    def __init__(self, n: int, bad: int | None = None) -> None:
        self.n, self.bad = n, bad

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if i == self.bad:
            raise KeyError(f"no sample {i}")
        return _image(i, (3, 32, 32)), i


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_loader_batches_equal_torchs_and_every_slab_comes_back(method):
    expected = list(DataLoader(Images(50), batch_size=8))
    with FMQLoader(Images(50), batch_size=8, num_workers=2, multiprocessing_context=method,
                   persistent_workers=True, prefetch_next_epoch=False) as loader:
        for _ in range(2):
            got = list(loader)
            assert len(got) == len(expected)
            for a, b in zip(got, expected):
                _same(a, b)
        del got, a
        gc.collect()
        assert _claimed(loader._pool.results) == 0  # list() held every batch: some came by pipe


def test_a_sample_that_fails_mid_batch_gives_its_slab_back():
    with FMQLoader(Images(40, bad=13), batch_size=8, num_workers=2, persistent_workers=True,
                   prefetch_next_epoch=False, multiprocessing_context="fork") as loader:
        it = iter(loader)
        seen = []
        while True:
            try:
                seen.append(next(it)[1].tolist())
            except KeyError as exc:
                assert "no sample 13" in str(exc)
                continue
            except StopIteration:
                break
        assert seen == [list(range(k, k + 8)) for k in (0, 16, 24, 32)]
        del it
        gc.collect()
        assert _claimed(loader._pool.results) == 0


class Stream(torch.utils.data.IterableDataset):
    """Each worker yields its share of 0..n-1 (torch's sharding idiom)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        for i in range(wid, self.n, nw):
            yield _image(i, (3, 32, 32)), i


@pytest.mark.parametrize("drop_last", [False, True])
def test_iterable_batches_equal_torchs_short_last_ones_included_and_every_slab_comes_back(drop_last):
    # 2 workers x 21 items, batch 8: each worker's last batch has 5 items
    expected = list(DataLoader(Stream(42), batch_size=8, num_workers=2, drop_last=drop_last,
                               multiprocessing_context="fork"))
    with FMQLoader(Stream(42), batch_size=8, num_workers=2, drop_last=drop_last,
                   persistent_workers=True, multiprocessing_context="fork") as loader:
        got = list(loader)
        assert [len(b[1]) for b in got] == [len(b[1]) for b in expected]
        for a, b in zip(got, expected):
            _same(a, b)
        del got, a
        gc.collect()
        assert _claimed(loader._pool.results) == 0


def test_a_shorter_last_batch_is_the_first_rows_of_the_slab():
    samples = SAMPLES["tuple-image-label"][:5]
    with Queue(num_slabs=2) as q:
        assembler = SlabAssembler(q, 8)  # an iterable dataset's batch_size; 5 items came
        for k, s in enumerate(samples):
            assembler.add(k, s)
        batch = assembler.finish(samples)
        into = assembler.reservation()
        assert into is not None
        _same(batch, default_collate(samples))
        built = batch[0].data_ptr()
        q.put(batch, into=into)
        got = q.get(timeout=10)
        assert got[0].data_ptr() == built
        _same(got, default_collate(samples))


@pytest.mark.parametrize("num_slabs, through_pipe", [(2, 0), (1, 1)])
def test_what_does_not_fit_after_the_built_part_goes_to_another_slab_or_the_pipe(num_slabs, through_pipe):
    with Queue(num_slabs=num_slabs) as q:
        into = q.reserve(64 << 10)  # slabs grow in 1 MiB steps
        built = torch.from_numpy(into.array((64 << 10,)))
        built.fill_(7)
        extra = torch.full((2 << 20,), 3, dtype=torch.uint8)  # 2 MiB, built elsewhere: no room
        q.put([built, extra], into=into)
        got = q.get(timeout=10)
        assert torch.equal(got[0], built) and torch.equal(got[1], extra)
        assert q.pipe_items() == through_pipe
        del got, built
        gc.collect()
        assert _claimed(q) == 0


def test_what_is_built_elsewhere_is_copied_after_the_built_part():
    with Queue(num_slabs=2) as q:
        into = q.reserve(64 << 10)
        built = torch.from_numpy(into.array((64 << 10,)))
        built.fill_(7)
        extra = torch.full((100 << 10,), 3, dtype=torch.uint8)  # fits in the 1 MiB slab
        q.put([extra, built], into=into)
        got = q.get(timeout=10)
        assert torch.equal(got[0], extra) and torch.equal(got[1], built)
        assert got[1].data_ptr() == built.data_ptr() and q.pipe_items() == 0
        del got, built
        gc.collect()
        assert _claimed(q) == 0


class Cifar(Dataset):
    def __len__(self) -> int:
        return 512 * 3

    def __getitem__(self, i: int):
        return torch.zeros(3, 32, 32), i  # 512 of them: exactly 6 MiB, and 4 KiB of labels


def test_a_batch_whose_images_fill_whole_mebibytes_still_fits_its_labels_in_the_slab():
    """Regression: the reservation had room for the images only; 512 labels (4 KiB, out
    of band) did not fit, so every such batch went through the pipe."""
    with FMQLoader(Cifar(), batch_size=512, num_workers=2, persistent_workers=True,
                   prefetch_next_epoch=False, multiprocessing_context="fork") as loader:
        labels = [b[1] for b in loader]
        assert torch.equal(torch.cat(labels), torch.arange(512 * 3))
        assert loader._pool.results.pipe_items() == 0


class Refilled(Dataset):
    """Returns the same tensor every time, refilled: default_collate stacks what it holds."""

    def __init__(self) -> None:
        self.buf = torch.zeros(3, 32, 32)

    def __len__(self) -> int:
        return 32

    def __getitem__(self, i: int):
        self.buf.fill_(i)
        return self.buf


def test_a_dataset_that_refills_one_tensor_gets_default_collates_batches():
    expected = [b[:, 0, 0, 0].tolist() for b in DataLoader(Refilled(), batch_size=8)][1:]
    with FMQLoader(Refilled(), batch_size=8, num_workers=2, multiprocessing_context="fork") as loader:
        got = [b[:, 0, 0, 0].tolist() for b in loader][1:]  # the split first batch differs, as before
    assert got == expected == [[k + 7.0] * 8 for k in (8, 16, 24)]


# -- NOTE [ the join in part 0's slab ] in epoch.py ------------------------------------
def test_a_part_built_with_room_returns_the_whole_columns_its_rows_first():
    samples = SAMPLES["tuple-image-label"][:4]
    with Queue(4) as q:
        assembler = SlabAssembler(q, 4, room=9)
        for k, s in enumerate(samples):
            assembler.add(k, s)
        batch = assembler.finish(samples)
        assert assembler.roomy
        assert batch[0].shape == (9, 3, 24, 24) and batch[1].shape == (4,)  # labels: its own rows
        _same([batch[0][:4], batch[1]], default_collate(samples))
        assembler.reservation().cancel()


def _slab_holding(loader, t: torch.Tensor):
    import ctypes

    for slab, (mapping, size) in loader._pool.results._arena._maps.items():
        start = ctypes.addressof(ctypes.c_char.from_buffer(mapping))
        if start <= t.data_ptr() < start + size:
            return slab
    return None


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_a_split_first_batch_is_joined_in_a_slab_equals_torchs_and_gives_it_back(method):
    """The first batch's parts (one per worker) are joined in part 0's slab: the batch the
    loop gets is a view of shared memory like every other, torch's batch, and its slab
    is free again once the batch is dropped."""
    gen = torch.Generator().manual_seed(3)
    expected = list(DataLoader(Images(40), batch_size=16, shuffle=True, generator=gen))
    with FMQLoader(Images(40), batch_size=16, shuffle=True, num_workers=2,
                   multiprocessing_context=method, generator=torch.Generator().manual_seed(3),
                   persistent_workers=True, prefetch_next_epoch=False) as loader:
        it = iter(loader)
        first = next(it)
        _same(first, expected[0])
        assert _slab_holding(loader, first[0]) is not None
        rest = list(it)
        for a, b in zip(rest, expected[1:]):
            _same(a, b)
        del first, rest, a, it
        gc.collect()
        assert _claimed(loader._pool.results) == 0
