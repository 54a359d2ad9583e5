"""fmq_loader.Queue with real processes and real shared memory (issue 2).

Child-process targets live at module top level so spawn and forkserver can import them.
Every test joins the processes it starts; conftest's autouse fixture fails a test that
leaves a live child or a /dev/shm/fmq* entry.
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import pickle
import signal
import queue
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import fmq_loader
from fmq_loader import ProducersGone, QueueClosed

from _script_report import session_processes

MB = 1 << 20


# -- helpers ---------------------------------------------------------------------
def _join(procs, timeout: float = 30.0) -> None:
    for p in procs:
        p.join(timeout)
    stuck = [p for p in procs if p.is_alive()]
    for p in stuck:
        p.kill()
        p.join()
    assert not stuck, f"processes did not finish within {timeout} s: {stuck}"
    assert [p.exitcode for p in procs] == [0] * len(procs)


def _filled(value: int, nbytes: int = MB) -> np.ndarray:
    return np.full(nbytes, value % 251, dtype=np.uint8)


# -- child-process targets ---------------------------------------------------------
def _put_numbered(q, producer: int, n: int, nbytes: int) -> None:
    for i in range(n):
        q.put({"producer": producer, "seq": i, "data": _filled(producer * 1000 + i, nbytes)})


def _put_objects(q, objs) -> None:
    # A forked child must not run torch's OpenMP thread pool that the parent already
    # used (it can hang); DataLoader's workers also run with one thread.
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    for obj in objs:
        q.put(obj)


def _try_get(q, result) -> None:
    try:
        q.get(timeout=5)
        result.send(("ok", ""))
    except Exception as exc:  # reported to the parent, which asserts on it
        result.send((type(exc).__name__, str(exc)))


def _put_then_get(q, result) -> None:
    q.put(_filled(4))
    try:
        ok = np.array_equal(q.get(timeout=10), _filled(4))
        result.send(("ok" if ok else "wrong item", ""))
    except Exception as exc:  # reported to the parent, which asserts on it
        result.send((type(exc).__name__, str(exc)))


def _put_good_bad_good(q, result) -> None:
    q.put(("first", _filled(1)))
    try:
        q.put(("bad", threading.Lock()))
        result.send(("no error", ""))
    except TypeError as exc:
        result.send(("TypeError", str(exc)))
    q.put(("second", _filled(2)))


def _put_one_then_exit(q) -> None:
    q.put(("last words", _filled(9)))


def _put_sizes(q, sizes) -> None:
    for i, n in enumerate(sizes):
        q.put(_filled(i, n))


def _put_many_pipe_items_cancel_join(q) -> None:
    q.cancel_join_thread()
    for i in range(12):  # num_slabs=1 and nobody reads: these go through the pipe
        q.put(_filled(i, 4 * MB))


# -- rich items: every dtype and layout the issue names --------------------------------
def _rich_items():
    torch = pytest.importorskip("torch")
    big = np.arange(300_000, dtype=np.float64).reshape(600, 500)
    return [
        ("float64 big", big),
        ("float32 small", np.arange(10, dtype=np.float32)),
        ("float16", np.linspace(-3, 3, 5000, dtype=np.float16)),
        ("int8", np.arange(-128, 128, dtype=np.int8).repeat(40)),
        ("uint16", np.arange(9000, dtype=np.uint16)),
        ("int64", np.arange(-5000, 5000, dtype=np.int64)),
        ("bool", np.arange(10_000) % 3 == 0),
        ("complex64", (np.arange(2000) + 1j * np.arange(2000)).astype(np.complex64)),
        ("nan and inf", np.array([np.nan, np.inf, -np.inf, -0.0] * 2000)),
        ("non-contiguous transpose", big.T),
        ("non-contiguous stride", big[::3, 1::2]),
        ("fortran order", np.asfortranarray(big[:100])),
        ("0-d", np.array(3.25)),
        ("empty", np.empty((0, 7), dtype=np.int32)),
        ("object dtype", np.array([{"a": 1}, None, "s"], dtype=object)),
        ("structured", np.zeros(3000, dtype=[("x", "f4"), ("y", "i2")])),
        ("nested", {"batch": (big[:10], [np.ones((64, 64, 3), np.uint8), {"deep": big[:2]}]),
                    "label": 7, "name": "cat.jpg"}),
        ("tensor float32", torch.arange(100_000, dtype=torch.float32).reshape(100, 1000)),
        ("tensor bfloat16", torch.linspace(-2, 2, 20_000).to(torch.bfloat16)),
        ("tensor bfloat16 small", torch.tensor([1.5, -2.0], dtype=torch.bfloat16)),
        ("tensor bool", torch.arange(9000) % 2 == 0),
        ("tensor float16", torch.randn(70, 70, generator=torch.Generator().manual_seed(0)).half()),
        ("tensor int64", torch.arange(-3000, 3000)),
        ("tensor uint8 image batch", torch.arange(8 * 3 * 32 * 32).remainder(256).to(torch.uint8)
         .reshape(8, 3, 32, 32)),
        ("tensor non-contiguous", torch.arange(40_000.0).reshape(200, 200).t()[::2]),
        ("tensor 0-d", torch.tensor(2.5, dtype=torch.float64)),
        ("tensor empty", torch.empty(0, 3, dtype=torch.bfloat16)),
        ("tensor requires_grad", torch.ones(2000, requires_grad=True)),
        ("tensors in tuple", (torch.zeros(5000), [torch.ones(3, 4000, dtype=torch.int16)],
                              {"m": torch.full((100, 100), 7, dtype=torch.int32)})),
    ]


def _assert_same(got, want, where: str = "item") -> None:
    torch = sys.modules.get("torch")
    if isinstance(want, np.ndarray):
        assert isinstance(got, np.ndarray), f"{where}: {type(got)}"
        assert (got.dtype, got.shape) == (want.dtype, want.shape), where
        if want.dtype.hasobject:
            assert got.tolist() == want.tolist(), where
        else:  # bitwise: NaNs, -0.0 and every dtype compare exactly
            assert np.ascontiguousarray(got).tobytes() == np.ascontiguousarray(want).tobytes(), where
    elif torch is not None and isinstance(want, torch.Tensor):
        assert isinstance(got, torch.Tensor), f"{where}: {type(got)}"
        assert (got.dtype, got.shape) == (want.dtype, want.shape), where
        assert got.requires_grad == want.requires_grad, where
        assert torch.equal(got.detach(), want.detach()), where
    elif isinstance(want, (tuple, list)):
        assert type(got) is type(want) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            _assert_same(g, w, f"{where}[{i}]")
    elif isinstance(want, dict):
        assert got.keys() == want.keys(), where
        for k in want:
            _assert_same(got[k], want[k], f"{where}[{k!r}]")
    else:
        assert got == want, where


# -- mp.Queue API and semantics (one process puts and gets) ----------------------
def test_put_then_get_returns_items_in_fifo_order():
    with fmq_loader.Queue() as q:
        for i in range(20):
            q.put(i if i % 2 else _filled(i))
        for i in range(20):
            got = q.get(timeout=5)
            if i % 2:
                assert got == i
            else:
                assert np.array_equal(got, _filled(i))


def test_get_nowait_on_empty_queue_raises_empty():
    with fmq_loader.Queue() as q:
        with pytest.raises(queue.Empty):
            q.get_nowait()
        with pytest.raises(queue.Empty):
            q.get(block=False)


def test_get_with_timeout_on_empty_queue_raises_empty_after_the_timeout():
    with fmq_loader.Queue() as q:
        t0 = time.monotonic()
        with pytest.raises(queue.Empty):
            q.get(timeout=0.3)
        assert 0.25 <= time.monotonic() - t0 < 3.0


def test_put_nowait_on_full_queue_raises_full():
    with fmq_loader.Queue(2) as q:
        q.put(1)
        q.put_nowait(2)
        with pytest.raises(queue.Full):
            q.put_nowait(3)
        with pytest.raises(queue.Full):
            q.put(3, block=False)
        assert [q.get(timeout=5), q.get(timeout=5)] == [1, 2]


def test_put_with_timeout_on_full_queue_raises_full_after_the_timeout():
    with fmq_loader.Queue(1) as q:
        q.put("a")
        t0 = time.monotonic()
        with pytest.raises(queue.Full):
            q.put("b", timeout=0.3)
        assert 0.25 <= time.monotonic() - t0 < 3.0


def test_blocked_put_proceeds_as_soon_as_the_consumer_takes_an_item():
    with fmq_loader.Queue(1) as q:
        q.put("a")
        taker = threading.Timer(0.3, q.get)
        taker.start()
        t0 = time.monotonic()
        q.put("b", timeout=10)
        assert 0.25 <= time.monotonic() - t0 < 5.0
        taker.join()
        assert q.get(timeout=5) == "b"


def test_qsize_empty_and_full_count_items_in_flight():
    with fmq_loader.Queue(3) as q:
        assert (q.qsize(), q.empty(), q.full(), q.maxsize) == (0, True, False, 3)
        q.put(1)
        q.put(_filled(2))
        assert (q.qsize(), q.empty(), q.full()) == (2, False, False)
        q.put(3)
        assert (q.qsize(), q.full()) == (3, True)
        q.get(timeout=5)
        assert (q.qsize(), q.full()) == (2, False)


def test_maxsize_bound_counts_items_buffered_by_the_stealer():
    """Items the stealer has received but get() has not returned still count against maxsize."""
    with fmq_loader.Queue(2) as q:
        q.put("a")
        q.put("b")
        assert q.get(timeout=5) == "a"  # starts the stealer, which now buffers "b"
        time.sleep(0.2)
        q.put("c")
        with pytest.raises(queue.Full):
            q.put_nowait("d")  # in flight: "b" (in the stealer's buffer) and "c"
        assert q.qsize() == 2
        assert [q.get(timeout=5), q.get(timeout=5)] == ["b", "c"]


def test_maxsize_zero_means_unbounded():
    with fmq_loader.Queue() as q:
        for i in range(500):
            q.put_nowait(i)
        assert not q.full() and q.qsize() == 500
        assert [q.get(timeout=5) for _ in range(500)] == list(range(500))


@pytest.mark.parametrize("bad", [-1, 1.5, "3", None, True, [4]])
def test_bad_maxsize_raises_value_error_naming_maxsize(bad):
    with pytest.raises(ValueError, match=rf"maxsize must be an int >= 0 .*got {bad!r}".replace("[", r"\[")):
        fmq_loader.Queue(bad)


def test_put_after_close_raises_queue_closed():
    q = fmq_loader.Queue()
    q.close()
    with pytest.raises(QueueClosed, match="put.. on a closed Queue"):
        q.put(1)
    with pytest.raises(QueueClosed):
        q.put_nowait(1)


def test_get_after_close_raises_queue_closed():
    q = fmq_loader.Queue()
    q.put(1)
    assert q.get(timeout=5) == 1
    q.close()
    with pytest.raises(QueueClosed, match="get.. on a closed Queue"):
        q.get()
    with pytest.raises(QueueClosed):
        q.get_nowait()


def test_get_on_a_queue_closed_before_any_get_raises_queue_closed():
    q = fmq_loader.Queue()
    q.close()
    with pytest.raises(QueueClosed):
        q.get(timeout=1)


def test_close_wakes_a_get_blocked_in_another_thread_with_queue_closed():
    q = fmq_loader.Queue()
    with pytest.raises(queue.Empty):
        q.get_nowait()  # become the consumer
    errors = []

    def blocked_get():
        try:
            q.get()
        except Exception as exc:
            errors.append(exc)

    t = threading.Thread(target=blocked_get)
    t.start()
    time.sleep(0.2)
    q.close()
    t.join(5)
    assert not t.is_alive() and len(errors) == 1 and isinstance(errors[0], QueueClosed)


def test_close_is_idempotent_and_queue_is_a_context_manager():
    with fmq_loader.Queue(2) as q:
        q.put(1)
    with pytest.raises(QueueClosed):
        q.put(2)
    q.close()
    q.close()
    assert "closed" in repr(q)


def test_join_thread_before_close_raises_value_error():
    with fmq_loader.Queue() as q:
        with pytest.raises(ValueError, match="close.. first"):
            q.join_thread()


def test_join_thread_after_close_returns_once_put_items_are_in_the_pipe():
    q = fmq_loader.Queue()
    for i in range(5):
        q.put(_filled(i, 3 * MB))
    q.close()
    t0 = time.monotonic()
    q.join_thread()
    q.join_thread()  # idempotent
    assert time.monotonic() - t0 < 5.0


def test_items_put_by_a_child_are_flushed_before_it_exits(start_method):
    """Like mp.Queue: a producer process that ends right after put() still delivers."""
    ctx = mp.get_context(start_method)
    with fmq_loader.Queue(ctx=ctx) as q:
        p = ctx.Process(target=_put_sizes, args=(q, [MB, 200_000, 10]))
        p.start()
        _join([p])
        got = [q.get(timeout=10) for _ in range(3)]
        for i, (arr, n) in enumerate(zip(got, [MB, 200_000, 10])):
            assert np.array_equal(arr, _filled(i, n))


def test_cancel_join_thread_lets_a_producer_exit_with_unsent_items(start_method):
    ctx = mp.get_context(start_method)
    q = fmq_loader.Queue(num_slabs=1, ctx=ctx)
    p = ctx.Process(target=_put_many_pipe_items_cancel_join, args=(q,))
    p.start()
    _join([p], timeout=60)
    q.close()


def test_queue_pickles_only_while_spawning_a_child():
    with fmq_loader.Queue() as q:
        with pytest.raises(RuntimeError, match="inheritance"):
            pickle.dumps(q)


def test_stealer_thread_is_named_fmq_stealer():
    with fmq_loader.Queue() as q:
        q.put(1)
        q.get(timeout=5)
        assert "fmq-stealer" in [t.name for t in threading.enumerate()]
    time.sleep(0.1)
    assert "fmq-stealer" not in [t.name for t in threading.enumerate()]


# -- contents: any picklable object; arrays and tensors exactly ---------------------
def test_any_picklable_object_round_trips():
    objs = [None, 0, -(10 ** 40), 2.5, "ünïcode", b"\x00" * 10, b"x" * (3 * MB),
            bytearray(b"y" * 100_000), (1, [2, {"a": frozenset({3})}]), {"k": None},
            ValueError("boom"), slice(1, 2), range(5), complex(1, 2)]
    with fmq_loader.Queue() as q:
        for obj in objs:
            q.put(obj)
        got = [q.get(timeout=5) for _ in objs]
    for g, w in zip(got[:-4], objs[:-4]):
        assert type(g) is type(w) and g == w
    assert isinstance(got[-4], ValueError) and got[-4].args == ("boom",)
    assert got[-3:] == objs[-3:]


def test_arrays_and_tensors_of_every_dtype_and_layout_round_trip_exactly(start_method):
    """Several dtypes incl. bfloat16 and bool, non-contiguous, 0-d, empty, nested; from a child."""
    ctx = mp.get_context(start_method)
    want = _rich_items()
    with fmq_loader.Queue(4, ctx=ctx) as q:
        p = ctx.Process(target=_put_objects, args=(q, want))  # built here, not in the child
        p.start()
        got = [q.get(timeout=30) for _ in want]
        _join([p])
    for (gname, g), (wname, w) in zip(got, want):
        assert gname == wname
        _assert_same(g, w, wname)


def test_received_arrays_and_tensors_are_writable_by_their_owner():
    torch = pytest.importorskip("torch")
    with fmq_loader.Queue() as q:
        q.put((_filled(1), torch.zeros(10_000)))
        arr, ten = q.get(timeout=5)
        arr[:] = 5
        ten += 1
        assert arr.sum() == 5 * MB and float(ten.sum()) == 10_000


# -- several producers, one consumer -------------------------------------------------
def test_several_producer_processes_and_one_consumer_deliver_every_item_in_order(start_method):
    ctx = mp.get_context(start_method)
    n, producers = 25, 3
    with fmq_loader.Queue(4, ctx=ctx) as q:
        procs = [ctx.Process(target=_put_numbered, args=(q, k, n, 300_000), name=f"producer-{k}")
                 for k in range(producers)]
        for p in procs:
            p.start()
        got = [q.get(timeout=30) for _ in range(n * producers)]
        _join(procs)
        assert q.empty()
    for k in range(producers):
        mine = [g for g in got if g["producer"] == k]
        assert [g["seq"] for g in mine] == list(range(n))  # FIFO per producer
        for g in mine:
            assert np.array_equal(g["data"], _filled(k * 1000 + g["seq"], 300_000))


def test_second_consumer_process_gets_a_clear_error(start_method):
    ctx = mp.get_context(start_method)
    with fmq_loader.Queue(ctx=ctx) as q:
        with pytest.raises(queue.Empty):
            q.get_nowait()  # this process is the consumer now
        result, child_end = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_try_get, args=(q, child_end))
        p.start()
        kind, message = result.recv()
        _join([p])
    assert kind == "RuntimeError"
    assert f"already has a consumer, process {os.getpid()}" in message


def test_consumer_can_move_to_another_process_after_close(start_method):
    ctx = mp.get_context(start_method)
    q = fmq_loader.Queue(ctx=ctx)
    with pytest.raises(queue.Empty):
        q.get_nowait()  # this process is the consumer...
    q.close()  # ...until it closes its side; the child gets its own, open side
    result, child_end = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_put_then_get, args=(q, child_end))
    p.start()
    kind, message = result.recv()
    _join([p])
    assert (kind, message) == ("ok", "")


# -- slabs: reuse, growth, fallback ------------------------------------------------------
def test_items_kept_by_the_caller_stay_unchanged_while_many_more_flow(start_method):
    """A slab is reused only after every view of it is gone (kept slices and tensors too)."""
    torch = pytest.importorskip("torch")
    ctx = mp.get_context(start_method)
    n, nbytes = 150, 256 * 1024
    # 5 slabs, 3 kept items: the other 147 items rotate through the 2 remaining slabs
    with fmq_loader.Queue(2, num_slabs=5, ctx=ctx) as q:
        p = ctx.Process(target=_put_numbered, args=(q, 0, n, nbytes))
        p.start()
        kept = {}
        for _ in range(n):
            item = q.get(timeout=30)
            seq = item["seq"]
            assert np.array_equal(item["data"], _filled(seq, nbytes))
            if seq in (10, 60):
                kept[seq] = item["data"]  # the whole array
            elif seq == 25:
                kept[seq] = torch.from_numpy(item["data"][100:200])  # only a derived view
            del item
            if seq % 50 == 0:
                gc.collect()
        _join([p])
    gc.collect()
    assert sorted(kept) == [10, 25, 60]
    for seq, data in kept.items():
        want = _filled(seq, nbytes)
        if seq != 25:
            assert np.array_equal(data, want), f"item {seq} changed after later items arrived"
        else:
            assert np.array_equal(data.numpy(), want[100:200]), f"view of item {seq} changed"


def test_item_larger_than_the_current_slab_grows_it(start_method):
    ctx = mp.get_context(start_method)
    sizes = [MB, 8 * MB + 3, 32 * MB, 2 * MB, 40 * MB + 17]
    with fmq_loader.Queue(1, num_slabs=1, ctx=ctx) as q:
        p = ctx.Process(target=_put_sizes, args=(q, sizes))
        p.start()
        for i, n in enumerate(sizes):
            got = q.get(timeout=30)
            assert got.nbytes == n and np.array_equal(got, _filled(i, n))
            del got
        _join([p])


def test_consumer_holding_every_slab_makes_producers_fall_back_to_the_pipe(start_method):
    """No deadlock: once the consumer keeps every slab, items travel through the pipe."""
    ctx = mp.get_context(start_method)
    n = 12
    with fmq_loader.Queue(3, num_slabs=2, ctx=ctx) as q:
        procs = [ctx.Process(target=_put_numbered, args=(q, k, n, MB)) for k in range(2)]
        for p in procs:
            p.start()
        kept = [q.get(timeout=30) for _ in range(2 * n)]
        _join(procs)
    for item in kept:
        assert np.array_equal(item["data"], _filled(item["producer"] * 1000 + item["seq"]))


# -- bad input ---------------------------------------------------------------------------
@pytest.mark.parametrize("bad, type_name", [
    (lambda x: x, "function"),
    (threading.Lock(), "lock"),
    ((np.zeros(10_000), threading.Lock()), "tuple"),
])
def test_unpicklable_item_raises_type_error_naming_its_type_and_queue_keeps_working(bad, type_name):
    with fmq_loader.Queue(2) as q:
        q.put("before")
        with pytest.raises(TypeError, match=rf"cannot put an object of type .*{type_name}"):
            q.put(bad)
        assert q.qsize() == 1  # the failed put gave its slot back
        q.put(_filled(3))
        assert q.get(timeout=5) == "before"
        assert np.array_equal(q.get(timeout=5), _filled(3))


def test_unpicklable_item_in_a_producer_process_raises_there_and_loses_nothing(start_method):
    ctx = mp.get_context(start_method)
    with fmq_loader.Queue(4, ctx=ctx) as q:
        result, child_end = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_put_good_bad_good, args=(q, child_end))
        p.start()
        kind, message = result.recv()
        first, second = q.get(timeout=10), q.get(timeout=10)
        _join([p])
    assert kind == "TypeError" and "lock" in message
    assert first[0] == "first" and np.array_equal(first[1], _filled(1))
    assert second[0] == "second" and np.array_equal(second[1], _filled(2))


# -- producers gone, program exit ----------------------------------------------------------
def test_get_with_timeout_raises_empty_after_the_producer_died(start_method):
    """timeout=None keeps mp.Queue's behaviour (blocks: the creator holds the write end
    itself, so the pipe never reaches end-of-file); with a timeout, get() raises queue.Empty."""
    ctx = mp.get_context(start_method)
    with fmq_loader.Queue(ctx=ctx) as q:
        p = ctx.Process(target=_put_one_then_exit, args=(q,))
        p.start()
        _join([p])
        assert q.get(timeout=10)[0] == "last words"
        t0 = time.monotonic()
        with pytest.raises(queue.Empty):
            q.get(timeout=0.5)
        assert 0.45 <= time.monotonic() - t0 < 3.0


def test_get_after_pipe_end_of_file_raises_producers_gone():
    """ProducersGone: the stealer reached end-of-file (here: the write end closed directly)."""
    q = fmq_loader.Queue()
    q.put(1)
    assert q.get(timeout=5) == 1
    q._writer.close()  # every writer gone
    with pytest.raises(ProducersGone, match="no more items will arrive"):
        q.get(timeout=5)
    with pytest.raises(ProducersGone):
        q.get_nowait()
    q.close()


_EXIT_SCRIPT = textwrap.dedent("""
    import multiprocessing as mp, sys
    import numpy as np
    import fmq_loader

    def produce(q):
        for i in range(8):
            q.put((i, np.full(2_000_000, i, np.uint8)))

    if __name__ == "__main__":
        ctx = mp.get_context(sys.argv[1])
        q = fmq_loader.Queue(0, ctx=ctx)
        p = ctx.Process(target=produce, args=(q,))
        p.start()
        for i in range(3):
            assert q.get(timeout=30)[0] == i
        # the seed scenario, in this process too: put big items, get some, never close
        for i in range(10):
            q.put((100 + i, np.zeros((10, 256, 256, 3))))
        print("exiting", flush=True)
        # no close(), no join: items in flight in the pipe, the stealer and the slabs
""")


def test_exit_with_items_in_flight_and_no_close_is_silent_and_leaves_nothing(start_method, tmp_path):
    """The seed's documented bug was an EOFError at exit; here: empty stderr, no /dev/shm
    entries, and no process of the program (same session) still alive."""
    script = tmp_path / "exit_scenario.py"
    script.write_text(_EXIT_SCRIPT)
    shm_before = set(os.listdir("/dev/shm"))
    proc = subprocess.Popen([sys.executable, str(script), start_method], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, err = proc.communicate()
        pytest.fail(f"the program did not exit within 60 s; stderr: {err.decode()[-2000:]}")
    deadline = time.monotonic() + 5.0
    while session_processes(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = session_processes(proc.pid)
    if left:
        os.killpg(proc.pid, 9)
    assert (proc.returncode, out.decode(), err.decode()) == (0, "exiting\n", "")
    assert set(os.listdir("/dev/shm")) - shm_before == set()
    assert not left, f"processes left behind: {left}"


def test_get_of_an_item_that_already_arrived_returns_in_microseconds():
    with fmq_loader.Queue(4) as q:
        q.put(1)
        q.get(timeout=5)  # start the stealer
        q.put(np.ones((64, 224, 224, 3), np.uint8))
        time.sleep(0.3)  # the stealer rebuilds it meanwhile
        t0 = time.perf_counter()
        item = q.get(timeout=5)
        elapsed = time.perf_counter() - t0
        assert item.shape == (64, 224, 224, 3)
        assert elapsed < 0.005, f"get() of a waiting item took {elapsed * 1e3:.2f} ms"


def test_dropping_the_last_item_received_frees_its_slab_at_once():
    """Regression: the stealer thread kept the last item it rebuilt in a local variable
    while it waited for the next message, so that item's slab stayed claimed."""
    with fmq_loader.Queue(num_slabs=2) as q:
        q.put(_filled(1))
        got = q.get(timeout=10)
        assert np.count_nonzero(q._arena._state) == 1
        del got
        gc.collect()
        assert np.count_nonzero(q._arena._state) == 0


# -- NOTE [ direct send ] in queue.py ------------------------------------------------
def _put_then_hold_the_gil(q, done_at) -> None:
    q.put(("stamp", 1))
    sum(range(10 ** 8))  # one C call: ~1 s with the GIL held, no switch to another thread
    done_at.value = time.perf_counter()


def test_an_item_arrives_while_its_producer_still_holds_the_gil(start_method):
    """put() writes a small message itself: a feeder thread would need the producer's
    GIL, which a long C call (or Python code, for the 5 ms switch interval) keeps."""
    ctx = mp.get_context(start_method)
    done_at = ctx.Value("d", 0.0)
    with fmq_loader.Queue(ctx=ctx) as q:
        p = ctx.Process(target=_put_then_hold_the_gil, args=(q, done_at))
        p.start()
        assert q.get(timeout=30) == ("stamp", 1)
        arrived = time.perf_counter()  # CLOCK_MONOTONIC: the child's clock too
        _join([p])
    assert done_at.value > arrived, (
        "the item arrived only after its producer's long C call ended: put() left it to a "
        "thread that needed the producer's GIL")


def _put_range_twice(q, n: int, go) -> None:
    for i in range(n):
        q.put(i)
    go.wait(30)  # the consumer starts reading: the feeder drains its backlog meanwhile
    for i in range(n, 2 * n):
        q.put(i)


def test_order_is_kept_when_the_pipe_fills_and_put_hands_over_to_the_feeder(start_method):
    """Nobody reads at first: the first items are written by put(), then the pipe is
    full and the rest queue behind the feeder. More puts while the consumer drains
    must queue behind the feeder too, never overtake it through the pipe."""
    ctx = mp.get_context(start_method)
    n = 6000  # ~30 bytes each: the first ~2000 fill a 64 KiB pipe
    go = ctx.Event()
    with fmq_loader.Queue(ctx=ctx) as q:
        p = ctx.Process(target=_put_range_twice, args=(q, n, go))
        p.start()
        deadline = time.monotonic() + 30
        while q.qsize() < n and time.monotonic() < deadline:  # the first n put() calls returned
            time.sleep(0.01)
        go.set()
        got = [q.get(timeout=30) for _ in range(2 * n)]
        _join([p])
    assert got == list(range(2 * n))


def _put_with_interrupts(q, ready, stop, report) -> None:
    """Puts small items while SIGINT storms in; KeyboardInterrupt only inside put()."""
    armed = [False]

    def handler(signum, frame):
        if armed[0]:
            armed[0] = False
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    ready.set()
    sent = interrupted = 0
    while not stop.is_set():
        try:
            armed[0] = True
            q.put(sent)
            armed[0] = False
        except KeyboardInterrupt:
            interrupted += 1
        sent += 1
        for _ in range(200):
            pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    q.put("end")
    report.send((sent, interrupted))


@pytest.mark.slow
def test_a_put_interrupted_by_ctrl_c_never_leaves_the_pipe_write_lock_taken(start_method):
    """The write lock is shared by every producer process: a KeyboardInterrupt raised
    right after put() took it must not leave it taken (every producer would stop).

    Slow target (``make test-slow``): under this storm (~7000 SIGINTs in 1.5 s at a
    producer that catches them) the spawn case still hangs now and then, in a way not
    found yet (about 4 runs in 14, 2026-12-03); the code before direct send failed it
    every time."""
    ctx = mp.get_context(start_method)
    ready, stop = ctx.Event(), ctx.Event()
    report, child_end = ctx.Pipe(duplex=False)
    with fmq_loader.Queue(ctx=ctx) as q:
        p = ctx.Process(target=_put_with_interrupts, args=(q, ready, stop, child_end))
        p.start()
        got = []
        reader = threading.Thread(target=lambda: got.extend(iter(lambda: q.get(timeout=20), "end")))
        reader.start()
        assert ready.wait(60), "the producer did not start"
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            os.kill(p.pid, signal.SIGINT)
            time.sleep(0.0002)
        stop.set()
        reader.join(30)
        assert report.poll(30), "the producer did not finish"
        sent, interrupted = report.recv()
        _join([p])
        free = q._wlock.acquire(False)
        if free:
            q._wlock.release()
    assert free and not reader.is_alive()
    assert len(got) == len(set(got)) and got == sorted(got)  # no duplicate, per-producer order
    assert len(got) >= sent - interrupted  # an interrupted put() may or may not have sent


def _put_also_from_a_signal_handler(q, ready, stop) -> None:
    signal.signal(signal.SIGUSR1, lambda signum, frame: q.put(-1))
    ready.set()
    i = 0
    while not stop.is_set():
        q.put(i)
        i += 1
        for _ in range(200):
            pass
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    q.put("end")


def test_a_signal_handler_may_put_while_its_thread_is_inside_put(start_method):
    ctx = mp.get_context(start_method)
    ready, stop = ctx.Event(), ctx.Event()
    with fmq_loader.Queue(ctx=ctx) as q:
        p = ctx.Process(target=_put_also_from_a_signal_handler, args=(q, ready, stop))
        p.start()
        got = []
        reader = threading.Thread(target=lambda: got.extend(iter(lambda: q.get(timeout=20), "end")))
        reader.start()
        assert ready.wait(60), "the producer did not start"
        end, signals = time.monotonic() + 1.5, 0
        while time.monotonic() < end:
            os.kill(p.pid, signal.SIGUSR1)
            signals += 1
            time.sleep(0.0005)
        stop.set()
        reader.join(30)
        _join([p])
    assert not reader.is_alive()
    mine = [g for g in got if g != -1]
    assert mine == list(range(len(mine)))
    assert 0 < got.count(-1) <= signals  # pending signals of one kind coalesce
