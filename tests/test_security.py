"""Security: forged descriptors cannot read outside a slab; YAML is safe; slabs are nameless memfds.

The forged messages are written straight into the queue's pipe, as a buggy or
hostile process holding the pipe would; the consumer must raise a clear
``ValueError`` for each and keep delivering the real items that follow.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import stat
import struct

import numpy as np
import pytest

from fmq_loader import Queue
from fmq_loader.errors import ConfigError
from fmq_loader.transport.queue import INLINE, PIPE, SLAB
from fmq_loader.transport.shm import GROW_STEP_BYTES

HEADER = struct.Struct("<BiIQ")
ENTRY = struct.Struct("<QQ")


def _forge(q: Queue, msg: bytes) -> None:
    """Write ``msg`` into the pipe as a put() would, slot included."""
    assert q._slots.acquire(False)
    q._writer.send_bytes(msg)


def _slab_msg(slab: int, table, stream: bytes = b"") -> bytes:
    return (HEADER.pack(SLAB, slab, len(table), len(stream))
            + b"".join(ENTRY.pack(o, n) for o, n in table) + stream)


@pytest.fixture
def q():
    queue = Queue(8, num_slabs=2, ctx="fork")
    yield queue
    queue.close()
    queue.release_shared_memory()


def _claimed_slab(q: Queue) -> int:
    """A slab claimed as a producer would, 1 MiB large: a forged message may name it."""
    slab = q._arena.claim(100)
    assert slab is not None
    return slab


def _expect_corrupt(q: Queue, msg: bytes, *words: str) -> str:
    _forge(q, msg)
    with pytest.raises(ValueError) as info:
        q.get(timeout=10)
    text = str(info.value)
    assert "corrupt" in text, text
    for w in words:
        assert w in text, text
    # the queue keeps working: a real item put after the forgery arrives intact
    real = np.arange(5000, dtype=np.int64)
    q.put(real)
    assert np.array_equal(q.get(timeout=10), real)
    return text


def test_slab_index_outside_the_arena_is_refused(q):
    _expect_corrupt(q, _slab_msg(7, [(0, 4096)]), "slab 7", "2 slabs")


def test_negative_slab_index_is_refused(q):
    _expect_corrupt(q, _slab_msg(-3, [(0, 4096)]), "slab -3")


def test_offset_plus_length_past_the_slab_is_refused(q):
    slab = _claimed_slab(q)
    text = _expect_corrupt(q, _slab_msg(slab, [(GROW_STEP_BYTES - 10, 4096)]), "holds")
    assert f"{GROW_STEP_BYTES:,} bytes" in text


def test_huge_offset_is_refused_without_overflow(q):
    slab = _claimed_slab(q)
    _expect_corrupt(q, _slab_msg(slab, [(2**64 - 1, 2**64 - 1)]))


def test_descriptor_naming_a_free_slab_is_refused(q):
    _expect_corrupt(q, _slab_msg(1, [(0, 64)]), "free")


def test_repeated_descriptor_of_a_slab_still_held_is_refused(q):
    item = np.arange(10_000, dtype=np.float64)
    q.put(item)
    held = q.get(timeout=10)
    slab = next(s for s in range(2) if s in q._arena._leased)
    _expect_corrupt(q, _slab_msg(slab, [(0, held.nbytes)]), "already held")
    assert np.array_equal(held, item)


@pytest.mark.parametrize("msg, words", [
    (b"\x01\x02", ["header"]),
    (HEADER.pack(9, -1, 0, 0), ["kind must be 0, 1 or 2, got 9"]),
    (HEADER.pack(INLINE, -1, 0, 1000) + b"x", ["1,000-byte stream"]),
    (HEADER.pack(SLAB, 0, 5, 0), ["5 buffers"]),
    (HEADER.pack(SLAB, 0, 0, 0), ["0 buffers"]),
    (HEADER.pack(INLINE, 0, 0, 0), ["slab 0"]),
    (HEADER.pack(PIPE, -1, 1, 0) + ENTRY.pack(0, 100) + b"x" * 50, ["past its data"]),
], ids=["short", "kind", "stream-length", "table-length", "slab-without-buffers",
        "inline-with-slab", "pipe-table"])
def test_malformed_headers_are_refused(q, msg, words):
    _expect_corrupt(q, msg, *words)


def test_forged_tensor_dtype_is_refused():
    torch = pytest.importorskip("torch")
    from fmq_loader.transport.codec import _rebuild_tensor

    with pytest.raises(ValueError, match="'manual_seed', which is not a torch dtype"):
        _rebuild_tensor(bytearray(8), "manual_seed", (8,), False)
    assert torch.equal(_rebuild_tensor(bytearray(8), "uint8", (2, 4), False),
                       torch.zeros(2, 4, dtype=torch.uint8))


def test_forged_array_shape_larger_than_its_buffer_is_refused(q):
    """numpy checks the buffer against dtype and shape when it rebuilds an array."""
    from fmq_loader.transport import codec

    stream, buffers = codec.encode(np.zeros(1024, np.float64))
    # the shape (1024,) is pickled as BININT2 1024, TUPLE1: make it (4096,)
    assert stream.count(b"M\x00\x04\x85") == 1
    forged = stream.replace(b"M\x00\x04\x85", b"M\x00\x10\x85")
    slab = _claimed_slab(q)
    _forge(q, _slab_msg(slab, [(0, buffers[0].nbytes)], forged))
    with pytest.raises(ValueError):
        q.get(timeout=10)


def test_yaml_python_tags_are_refused(tmp_path):
    from fmq_loader.tools.config import load_config

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(f"loader: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError):
        load_config(path)
    path.write_text("loader:\n  num_workers: !!python/object:collections.OrderedDict {}\n")
    with pytest.raises(ConfigError):
        load_config(path)
    assert not marker.exists()


def test_config_override_values_are_read_safely(tmp_path):
    from fmq_loader.tools.config import load_config

    marker = tmp_path / "pwned"
    with pytest.raises(ConfigError):
        load_config(None, [f"loader.num_workers=!!python/object/apply:os.system ['touch {marker}']"])
    assert not marker.exists()


def _fd_links() -> dict[int, str]:
    links = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            links[int(fd)] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass
    return links


def test_slabs_are_anonymous_memfds_private_to_the_queue_processes():
    """No name in any filesystem: /proc/<pid>/fd shows memfd:, and only our own processes hold them."""
    before = _fd_links()
    q = Queue(8, num_slabs=2, ctx="fork")
    try:
        q.put(np.zeros(100_000))
        item = q.get(timeout=10)
        new = {fd: t for fd, t in _fd_links().items() if before.get(fd) != t}
        slabs = {fd: t for fd, t in new.items() if t.startswith("/memfd:fmq_")}
        # 2 slabs + the control block, plus the mappings' own duplicates (mmap dups its fd)
        assert {t.split()[0] for t in slabs.values()} == {
            f"/memfd:fmq_{os.getpid()}_{n}" for n in ("ctrl", "0", "1")}, new
        for fd, target in slabs.items():
            st = os.fstat(fd)
            assert stat.S_ISREG(st.st_mode)
            assert st.st_uid == os.getuid()
            assert target.endswith("(deleted)"), target  # no name from birth: nothing to open
        assert not [n for n in os.listdir("/dev/shm") if n.startswith(f"fmq_{os.getpid()}")]
        del item
    finally:
        q.close()
        q.release_shared_memory()


def _child_fds(conn) -> None:
    conn.send(sorted(os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
                     if os.path.exists(f"/proc/self/fd/{fd}")))


def test_an_unrelated_child_does_not_inherit_slab_descriptors(q):
    """Slabs are created close-on-exec and not inheritable: only children handed the queue get them."""
    ctx = mp.get_context("spawn")
    r, w = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_child_fds, args=(w,))
    p.start()
    fds = r.recv()
    p.join(30)
    assert not [f for f in fds if "memfd:fmq" in f], fds
