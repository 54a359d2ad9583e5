"""default_collate / concat_batches: torch's rules, and parts joined into the whole batch."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate as torch_collate

from fmq_loader.workers.collate import PartsJoin, concat_batches, default_collate, default_convert, own_rows

Point = collections.namedtuple("Point", "x y")


def _same(a, b) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert type(a) is type(b) and a.keys() == b.keys()
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            _same(x, y)
    else:
        assert a == b


SAMPLES = {
    "tensor": [torch.full((2, 3), float(i)) for i in range(7)],
    "ndarray": [np.full((4,), i, dtype=np.int16) for i in range(7)],
    "tuple-with-str": [(torch.tensor(i), f"name{i}", i * 0.5) for i in range(7)],
    "dict": [{"img": torch.ones(2) * i, "label": i, "path": f"p{i}"} for i in range(7)],
    "namedtuple": [Point(torch.tensor([i]), np.float32(i)) for i in range(7)],
    "list-of-str": [[f"a{i}", f"b{i}"] for i in range(7)],
}


@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_default_collate_matches_torch(kind):
    _same(default_collate(SAMPLES[kind]), torch_collate(SAMPLES[kind]))


@pytest.mark.parametrize("kind", sorted(SAMPLES))
@pytest.mark.parametrize("cuts", [(0, 3, 7), (0, 2, 4, 7), (0, 1, 2, 3, 4, 5, 6, 7)])
def test_concat_of_collated_slices_equals_collate_of_whole(kind, cuts):
    samples = SAMPLES[kind]
    parts = [default_collate(samples[a:b]) for a, b in zip(cuts, cuts[1:])]
    _same(concat_batches(parts), default_collate(samples))


def test_collate_names_positions_and_shapes_of_ragged_samples():
    with pytest.raises(ValueError, match=r"equal shapes, got \(3,\) at batch position 0 and \(4,\) at batch position 2"):
        default_collate([torch.zeros(3), torch.zeros(3), torch.zeros(4)])


@pytest.mark.parametrize("parts", [
    [torch.randn(3, 4), torch.randn(2, 4)],
    [torch.randint(0, 255, (2, 3, 5), dtype=torch.uint8)] * 3,
    [torch.zeros(2, dtype=torch.bfloat16), torch.ones(1, dtype=torch.bfloat16)],  # no numpy twin
    [torch.zeros(2), torch.ones(1, dtype=torch.float64)],  # promoted, as torch.cat does
    [torch.ones(2, requires_grad=True), torch.ones(1)],
    [torch.randn(4, 3).t(), torch.randn(4, 2).t()],  # non-contiguous parts
    [torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last)] * 2,
], ids=["float", "uint8", "bfloat16", "mixed dtypes", "grad", "strided", "channels_last"])
def test_joined_tensor_parts_equal_torch_cat(parts):
    got, want = concat_batches(parts), torch.cat(parts, 0)
    assert got.dtype == want.dtype and got.shape == want.shape and got.stride() == want.stride()
    assert got.requires_grad == want.requires_grad
    assert torch.equal(got.detach(), want.detach())


def test_joining_parts_of_different_shapes_raises_torchs_error():
    with pytest.raises(RuntimeError, match="Sizes of tensors must match"):
        concat_batches([torch.zeros(2, 3), torch.zeros(2, 4)])


def _join_as_they_arrive(parts, order):
    join = PartsJoin([len(p) if isinstance(p, torch.Tensor) else len(p[0]) for p in parts])
    for i in order:
        join.add(i, parts[i])
    return join.result(parts)


BIG = torch.randint(0, 255, (7, 3, 64, 64), dtype=torch.uint8)  # 12 KiB a sample


@pytest.mark.parametrize("parts", [
    [BIG[:3], BIG[3:]],
    [BIG[:2], BIG[2:4], BIG[4:]],
    [[BIG[:4], torch.arange(4)], [BIG[4:], torch.arange(4, 7)]],  # [images, labels] parts
    [[BIG[:4].float(), BIG[:4]], [BIG[4:].float(), BIG[4:]]],
    [BIG[:4], BIG[4:].to(torch.int16)],  # promoted, as torch.cat does
    [BIG[:4], BIG[4:, :, :32]],  # shapes differ: torch.cat's error
    [BIG[:4].to(memory_format=torch.channels_last), BIG[4:].to(memory_format=torch.channels_last)],
    [BIG[:4].bfloat16(), BIG[4:].bfloat16()],  # no numpy twin
    [[BIG[:4], ["a"] * 4], [BIG[4:], ["b"] * 3]],  # a column of strings
], ids=["two", "three", "with-labels", "two-big-columns", "mixed-dtypes", "bad-shapes",
        "channels_last", "bfloat16", "with-str"])
@pytest.mark.parametrize("order", ["in-order", "reversed"])
def test_parts_joined_as_they_arrive_equal_concat_batches(parts, order):
    order = range(len(parts)) if order == "in-order" else reversed(range(len(parts)))
    try:
        want = concat_batches(parts)
    except RuntimeError:  # torch.cat's error; the join names the shapes instead
        with pytest.raises(ValueError, match=r"has samples of shape \(3, 64, 64\) in part 0 and "
                                             r"\(3, 32, 64\) in part 1"):
            _join_as_they_arrive(parts, order)
        return
    got = _join_as_they_arrive(parts, order)
    _same(got, want)
    for g, w in ([(got, want)] if isinstance(got, torch.Tensor) else zip(got, want)):
        if isinstance(g, torch.Tensor):
            assert g.stride() == w.stride()


def _roomy(part, total: int):
    """Part 0 as a worker builds it with room for the whole batch (assemble.py): each
    tensor column at the batch's full length, contiguous, its own rows first."""
    def pad(col):
        if not isinstance(col, torch.Tensor) or col.dim() == 0:
            return col
        whole = torch.full((total, *col.shape[1:]), 7, dtype=col.dtype)  # 7: rows not ours yet
        whole[:len(col)] = col
        return whole
    return pad(part) if isinstance(part, torch.Tensor) else [pad(c) for c in part]


@pytest.mark.parametrize("parts,adopted", [
    pytest.param([BIG[:3], BIG[3:]], True, id="two"),
    pytest.param([BIG[:2], BIG[2:4], BIG[4:]], True, id="three"),
    pytest.param([[BIG[:4], torch.arange(4)], [BIG[4:], torch.arange(4, 7)]], True, id="with-labels"),
    pytest.param([[BIG[:4].float(), BIG[:4]], [BIG[4:].float(), BIG[4:]]], True, id="two-big-columns"),
    # the slab's uint8 column cannot take int16 rows: concat_batches promotes, as torch.cat
    pytest.param([BIG[:4], BIG[4:].to(torch.int16)], False, id="mixed-dtypes"),
    pytest.param([BIG[:4], BIG[4:, :, :32]], False, id="bad-shapes"),
    pytest.param([[BIG[:4], ["a"] * 4], [BIG[4:], ["b"] * 3]], False, id="with-str"),
])
@pytest.mark.parametrize("order", ["roomy-first", "roomy-last"])
def test_the_join_takes_the_batch_in_part_0s_slab_when_part_0_has_room(parts, adopted, order):
    """NOTE [ the join in part 0's slab ]: part 0 comes with room for the whole batch;
    the join copies the other parts into it (no new batch memory), whichever comes
    first, and falls back to concat_batches's result or error otherwise."""
    rows = [len(p) if isinstance(p, torch.Tensor) else len(p[0]) for p in parts]
    whole = _roomy(parts[0], sum(rows))
    own = [own_rows(whole, rows[0])] + list(parts[1:])
    join = PartsJoin(rows, room_in=0)
    order = range(len(parts)) if order == "roomy-first" else reversed(range(len(parts)))
    try:
        want = concat_batches(parts)
    except RuntimeError:
        with pytest.raises(ValueError, match=r"shape \(3, 64, 64\) in part 0 and \(3, 32, 64\) in part 1"):
            for i in order:
                join.add(i, own[i], whole if i == 0 else None)
            join.result(own)
        return
    for i in order:
        join.add(i, own[i], whole if i == 0 else None)
    got = join.result(own)
    _same(got, want)
    first = got if isinstance(got, torch.Tensor) else got[0]
    slab = whole if isinstance(whole, torch.Tensor) else whole[0]
    assert (first.data_ptr() == slab.data_ptr()) is adopted


def test_the_join_allocates_as_before_when_part_0_came_without_room():
    parts = [BIG[:4], BIG[4:]]
    join = PartsJoin([4, 3], room_in=0)
    join.add(1, parts[1])  # waits for part 0
    join.add(0, parts[0])  # built the usual way (e.g. no free slab): no whole
    got = join.result(parts)
    _same(got, BIG)
    assert got.data_ptr() not in (parts[0].data_ptr(), parts[1].data_ptr())


def test_parts_too_small_to_copy_early_are_joined_at_the_end():
    parts = [torch.arange(3), torch.arange(3, 5)]
    _same(_join_as_they_arrive(parts, [1, 0]), torch.arange(5))


class _ShapeChangesAt(torch.utils.data.Dataset):
    """Sample i is (3, 4) before ``at`` and (3, 5) from it on; in a dict with its index."""

    def __init__(self, at: int, n: int = 16) -> None:
        self.at, self.n = at, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        return {"x": torch.zeros(3, 4 if i < self.at else 5), "i": i}


def test_a_split_first_batch_whose_parts_differ_in_shape_names_the_parts_and_goes_on():
    """The parts of the first batch (two workers) meet only in the join: the error names the
    field, both shapes and each part's indices, like default_collate's within one part,
    and the epoch goes on with the next batch, as after a worker's error."""
    from fmq_loader import FMQLoader

    with FMQLoader(_ShapeChangesAt(4), batch_size=8, num_workers=2,
                   multiprocessing_context="fork") as loader:
        it = iter(loader)
        with pytest.raises(ValueError) as info:
            next(it)
        message = str(info.value)
        assert "batch['x'] has samples of shape (3, 4) in part 0 and (3, 5) in part 1" in message
        assert "[0, 1, 2, 3] and [4, 5, 6, 7]" in message
        assert next(it)["i"].tolist() == list(range(8, 16))


def test_bools_then_ints_collate_to_int64_as_torchs_default_collate():
    """A bool first forced dtype=bool: [True, 1, 2, 3] became all True."""
    from torch.utils.data import default_collate as torch_collate

    for batch in ([True, 1, 2, 3], [True, False], [1, True], [False, 2.5]):
        ours, theirs = default_collate(batch), torch_collate(batch)
        assert ours.dtype == theirs.dtype and torch.equal(ours, theirs), batch


def test_collate_errors_are_also_runtime_errors_as_torchs_are():
    from fmq_loader import CollateError

    for batch in ([torch.zeros(2), torch.zeros(3)], [[1, 2], [1, 2, 3]]):
        with pytest.raises(RuntimeError) as info:
            default_collate(batch)
        assert isinstance(info.value, (CollateError, ValueError))


class _RaggedLists(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i):
        return [i, i + 1, i + 2] if i == 1 else [i, i + 1]


def test_a_split_first_batch_of_ragged_lists_raises_instead_of_dropping_a_column():
    """Its parts (one per worker) were joined column by column with zip(), which
    dropped the longer sample's extra column: a batch of wrong data, where torch raises."""
    from fmq_loader import FMQLoader

    with FMQLoader(_RaggedLists(), batch_size=4, num_workers=2,
                   multiprocessing_context="fork") as loader:
        it = iter(loader)
        with pytest.raises(RuntimeError, match="each sequence in a batch must have the same length"):
            next(it)
        assert [c.tolist() for c in next(it)] == [[4, 5, 6, 7], [5, 6, 7, 8]]


class _Tagged(dict):
    """A dict subclass with an instance attribute of its own."""


def test_mapping_samples_keep_their_type_and_attributes_as_torchs_collate_keeps_them():
    """A defaultdict came back a plain dict, and a dict subclass lost its attributes:
    torch copies the first sample's mapping and updates it."""
    import collections

    from torch.utils.data import default_collate as torch_collate
    from torch.utils.data import default_convert as torch_convert

    def samples():
        tagged = _Tagged(x=torch.zeros(2))
        tagged.origin = "disk"
        counts = collections.defaultdict(int, x=torch.ones(2))
        return tagged, counts

    for ours_fn, theirs_fn in ((default_collate, torch_collate), (default_convert, torch_convert)):
        for sample in samples():
            batch = [sample, sample] if ours_fn is default_collate else sample
            ours, theirs = ours_fn(batch), theirs_fn(batch)
            assert type(ours) is type(theirs) is type(sample)
            assert getattr(ours, "origin", None) == getattr(theirs, "origin", None)
            if isinstance(sample, collections.defaultdict):
                assert ours.default_factory is int
            assert torch.equal(ours["x"], theirs["x"])
