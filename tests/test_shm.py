"""shm.SlabArena: memfd slabs claimed by producers, leased by the consumer, reused after views die."""

from __future__ import annotations

import ctypes
import gc
import multiprocessing as mp
import os
import pickle
import time
import weakref

import numpy as np
import pytest

from fmq_loader.transport.shm import GROW_STEP_BYTES, SlabArena


def _write_slab(arena, value: int, nbytes: int, result) -> None:
    slab = arena.claim(nbytes)
    arena.writable(slab)[:nbytes] = bytes([value]) * nbytes
    result.send(slab)


def _arena(n: int = 2) -> SlabArena:
    return SlabArena(n, mp.get_context())


def test_claim_hands_out_distinct_slabs_then_none_without_blocking():
    arena = _arena(3)
    slabs = [arena.claim(10) for _ in range(3)]
    assert sorted(slabs) == [0, 1, 2]
    assert arena.claim(10) is None
    arena.release(slabs[1])
    assert arena.claim(10) == slabs[1]
    arena.close()


def test_release_is_idempotent_per_claim():
    arena = _arena(1)
    slab = arena.claim(1)
    arena.release(slab)
    arena.release(slab)  # must not free a second count
    assert arena.claim(1) == slab
    assert arena.claim(1) is None
    arena.close()


def test_claim_grows_a_slab_in_whole_steps_and_never_shrinks_it():
    arena = _arena(1)
    slab = arena.claim(GROW_STEP_BYTES + 1)
    assert arena.nbytes() == 2 * GROW_STEP_BYTES
    arena.release(slab)
    slab = arena.claim(10)
    assert arena.nbytes() == 2 * GROW_STEP_BYTES
    arena.release(slab)
    arena.claim(5 * GROW_STEP_BYTES)
    assert arena.nbytes() == 5 * GROW_STEP_BYTES
    arena.close()


def test_slab_is_released_only_after_the_last_derived_view_is_gone():
    torch = pytest.importorskip("torch")
    arena = _arena(1)
    slab = arena.claim(4096)
    arena.writable(slab)[:4096] = b"\x07" * 4096
    token = arena.lease(slab, 4096)
    view = token[100:200].view(np.uint32)
    tensor = torch.from_numpy(token[:64])
    del token
    gc.collect()
    assert arena.claim(1) is None, "slab freed while a view was alive"
    del view
    gc.collect()
    assert arena.claim(1) is None, "slab freed while a tensor was alive"
    assert int(tensor.sum()) == 7 * 64
    del tensor
    gc.collect()
    assert arena.claim(1) == slab
    arena.close()


@pytest.mark.parametrize("slab, end", [(-1, 10), (2, 10), (0, -5), (0, 10 * GROW_STEP_BYTES)])
def test_lease_rejects_a_descriptor_outside_the_arena(slab, end):
    arena = _arena(2)
    arena.claim(10)
    with pytest.raises(ValueError, match="corrupt message"):
        arena.lease(slab, end)
    arena.close()


@pytest.mark.parametrize("bad", [0, -1, 1.0, "2", True])
def test_bad_num_slabs_raises_value_error(bad):
    with pytest.raises(ValueError, match=r"num_slabs must be an int >= 1, got"):
        SlabArena(bad, mp.get_context())


def test_arena_pickles_only_while_spawning_a_child():
    arena = _arena()
    with pytest.raises(RuntimeError, match="inheritance"):
        pickle.dumps(arena)
    arena.close()


def test_slabs_are_memfds_and_never_appear_in_dev_shm():
    before = set(os.listdir("/dev/shm"))
    arena = _arena(2)
    slab = arena.claim(3 * GROW_STEP_BYTES)
    arena.writable(slab)[:10] = b"x" * 10
    assert not {n for n in set(os.listdir("/dev/shm")) - before if "fmq" in n}
    links = [os.readlink(f"/proc/self/fd/{fd}") for fd in arena._fds]
    assert all(link.startswith("/memfd:fmq_") for link in links), links
    arena.close()


def test_child_process_writes_a_slab_the_parent_reads(start_method):
    ctx = mp.get_context(start_method)
    arena = SlabArena(2, ctx)
    result, child_end = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_write_slab, args=(arena, 42, 3 * GROW_STEP_BYTES + 5, child_end))
    p.start()
    slab = result.recv()
    p.join(30)
    assert p.exitcode == 0
    token = arena.lease(slab, 3 * GROW_STEP_BYTES + 5)
    assert token.size == 3 * GROW_STEP_BYTES + 5 and (token == 42).all()
    assert arena.claim(1) is not None and arena.claim(1) is None  # the child's claim holds one
    del token
    gc.collect()
    assert arena.claim(1) == slab
    arena.close()


def test_close_is_idempotent_and_live_views_stay_readable():
    arena = _arena(1)
    slab = arena.claim(100)
    arena.writable(slab)[:100] = b"\x05" * 100
    token = arena.lease(slab, 100)
    arena.close()
    arena.close()
    assert (token == 5).all()
    del token
    gc.collect()


def test_a_ctrl_c_lost_in_the_release_callback_still_frees_the_slab_and_is_raised_again():
    """A Ctrl-C whose handler runs at the release callback's first instruction raised
    KeyboardInterrupt where Python only prints it: the slab stayed claimed and the
    interrupt was gone (NOTE [ Ctrl-C as a batch is freed ] in shm.py)."""
    arena = _arena(1)
    slab = arena.claim(100)
    token = arena.lease(slab, 100)
    # Called from C as the token dies, before the arena's own callback: sets the flag a
    # SIGINT sets, so that callback's first instruction raises KeyboardInterrupt.
    trip = ctypes.PYFUNCTYPE(None, ctypes.py_object)(("PyErr_SetInterrupt", ctypes.pythonapi))
    ref = weakref.ref(token, trip)  # (kept alive until the token dies, or it is never called)
    with pytest.raises(KeyboardInterrupt):
        del token
        deadline = time.monotonic() + 10  # raised again from another thread, within ms
        while time.monotonic() < deadline:
            time.sleep(0.001)
    assert ref() is None and arena.claim(100) == slab  # given back
    arena.close()
