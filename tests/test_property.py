"""Property tests: random nested items round-trip exactly; random configs load or raise ConfigError."""

from __future__ import annotations

import math
import multiprocessing as mp
import pickle

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fmq_loader import FMQLoader, Queue
from fmq_loader.tools.config import load_config
from fmq_loader.errors import ConfigError

torch = pytest.importorskip("torch")

SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])

NP_DTYPES = ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
             "float16", "float32", "float64", "complex64", "complex128", ">i4", "<f8"]
TORCH_DTYPES = [torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
                torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64]


@st.composite
def arrays(draw):
    dtype = np.dtype(draw(st.sampled_from(NP_DTYPES)))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=48))
    # random bytes (nan payloads and all) rather than drawn values: fast, and exact
    nbytes = int(np.prod(shape)) * dtype.itemsize
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    a = rng.integers(0, 256, nbytes, dtype=np.uint8).view(dtype).reshape(shape) if nbytes else \
        np.zeros(shape, dtype)
    layout = draw(st.sampled_from(["c", "f", "strided", "transposed"]))
    if layout == "f":
        a = np.asfortranarray(a)
    elif layout == "strided" and a.ndim:
        a = a[::2]
    elif layout == "transposed":
        a = a.T
    return a


@st.composite
def tensors(draw):
    dtype = draw(st.sampled_from(TORCH_DTYPES))
    shape = tuple(draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=48)))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    t = torch.randint(0, 2, shape, generator=g).to(dtype) if dtype == torch.bool else \
        (torch.randn(shape, generator=g) * 1000).to(dtype)
    if draw(st.booleans()) and t.ndim >= 2:
        t = t.transpose(0, 1)
    return t


floats = st.floats(allow_nan=True, allow_infinity=True)
leaves = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), floats,
                   st.text(max_size=20), st.binary(max_size=64), arrays(), tensors())
items = st.recursive(leaves, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.tuples(inner, inner),
    st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=8)


def assert_same(a, b, path="item") -> None:
    assert type(a) is type(b), (path, type(a), type(b))
    if isinstance(a, np.ndarray):
        assert (a.dtype, a.shape) == (b.dtype, b.shape), path
        assert np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes(), path
    elif isinstance(a, torch.Tensor):
        assert (a.dtype, tuple(a.shape)) == (b.dtype, tuple(b.shape)), path
        ab, bb = a.contiguous().view(-1), b.contiguous().view(-1)
        if a.dtype != torch.bool and a.numel():
            ab, bb = ab.view(torch.uint8), bb.view(torch.uint8)
        assert torch.equal(ab, bb), path
    elif isinstance(a, float):
        assert (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b)), path
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, dict):
        assert list(a) == list(b), path
        for k in a:
            assert_same(a[k], b[k], f"{path}[{k!r}]")
    else:
        assert a == b, path


def _relay(conn, q) -> None:
    """Producer process: put every item received on ``conn`` on the fmq queue, until an empty message."""
    import torch

    # Forked from a process whose torch thread pool has run: a parallel torch op here
    # (making a tensor contiguous) could wait forever on that pool. Workers do the same.
    torch.set_num_threads(1)
    while True:
        # protocol 5, as the fmq queue uses: older protocols turn a 0-d '>i4' array into 'int32'
        msg = pickle.loads(conn.recv_bytes())  # (item,): items may be None themselves
        if not msg:
            break
        q.put(msg[0])
    q.close()
    q.join_thread()


def codec_round_trip(item):
    from fmq_loader.transport import codec

    payload, buffers = codec.encode(item)
    return codec.decode(payload, [bytearray(b) for b in buffers])


@pytest.fixture
def relay():
    """One producer process for all examples of a test (set up once per test, not per example)."""
    ctx = mp.get_context("fork")
    q = Queue(4, ctx=ctx)
    r, w = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_relay, args=(r, q), daemon=True)
    p.start()
    yield w, q, p
    w.send_bytes(pickle.dumps((), 5))
    p.join(30)
    q.close()
    q.release_shared_memory()


@SETTINGS
@given(item=items)
def test_random_items_round_trip_exactly_through_queue(relay, item):
    w, q, p = relay
    payload = pickle.dumps((item,), 5)
    w.send_bytes(payload)
    # The producer puts what it unpickled: numpy (2.4) pickles a non-contiguous array of
    # non-native byte order as a native one (">i4" -> "int32", same values), so compare
    # with that. The queue itself keeps byte order (contiguous first: codec.py), checked
    # in process by the next assertion.
    sent = pickle.loads(payload)[0]
    assert_same(sent, q.get(timeout=30))
    assert_same(item, codec_round_trip(item))
    assert p.is_alive()


def _identity(x):
    return x


class ListDataset:
    def __init__(self, items) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


@settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck))
@given(batch=st.lists(items, min_size=1, max_size=8))
def test_random_items_round_trip_exactly_through_the_loader(batch):
    loader = FMQLoader(ListDataset(batch), batch_size=None, num_workers=2, collate_fn=_identity,
                       multiprocessing_context="fork")
    try:
        got = list(loader)
    finally:
        loader.close()
    assert len(got) == len(batch)
    for i, (a, b) in enumerate(zip(batch, got)):
        assert_same(a, b, f"item {i}")


# -- configs ---------------------------------------------------------------------
SECTION_KEYS = {
    "loader": ["batch_size", "num_workers", "prefetch_factor", "persistent_workers", "shuffle",
               "drop_last", "timeout", "pin_memory", "multiprocessing_context", "seed", "bogus"],
    "queue": ["extra_slabs", "maxsize", "bogus"],
    "dataset": ["root", "kind", "extensions", "transforms", "bogus"],
    "train": ["epochs", "bogus"],
    "bench": ["runs", "bogus"],
    "bogus": ["x"],
}
yaml_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), floats, st.text(max_size=12)),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=5)


@st.composite
def configs(draw):
    cfg = {}
    for section in draw(st.lists(st.sampled_from(sorted(SECTION_KEYS)), max_size=4, unique=True)):
        if draw(st.integers(0, 9)) == 0:
            cfg[section] = draw(yaml_values)  # not even a mapping
            continue
        keys = draw(st.lists(st.sampled_from(SECTION_KEYS[section]), max_size=4, unique=True))
        cfg[section] = {k: draw(yaml_values) for k in keys}
    return cfg


@settings(max_examples=60, deadline=None)
@given(cfg=configs())
def test_random_configs_load_or_raise_config_error(cfg):
    try:
        load_config(cfg)
    except ConfigError as exc:
        assert str(exc)


@settings(max_examples=40, deadline=None)
@given(text=st.text(max_size=200))
def test_random_yaml_text_loads_or_raises_config_error(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    path.write_text(text)
    try:
        load_config(path)
    except ConfigError as exc:
        assert str(exc)


@settings(max_examples=40, deadline=None)
@given(overrides=st.lists(st.text(max_size=40), max_size=3))
def test_random_overrides_load_or_raise_config_error(overrides):
    try:
        load_config(None, overrides)
    except ConfigError as exc:
        assert str(exc)
