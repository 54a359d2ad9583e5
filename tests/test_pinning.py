"""pin_memory=True: what pin() does to each part of a batch, and the warnings torch gives.

This machine has no accelerator, so no tensor can be pinned here (torch raises);
the tests pin batches made of custom types whose own ``pin_memory()`` records
the call, which is how torch's DataLoader pins a custom batch class too.
"""

from __future__ import annotations

import collections
import warnings

import pytest
import torch
from torch.utils.data import DataLoader

from fmq_loader import FMQLoader
from fmq_loader.loading.pinning import pin, pin_settings

from _loader_data import KindDataset


class Pinnable:
    """A custom batch part: pin_memory() returns a marked copy, as a real one returns pinned memory."""

    def __init__(self, value, pinned: bool = False) -> None:
        self.value, self.pinned = value, pinned

    def pin_memory(self):
        return Pinnable(self.value, pinned=True)


Pair = collections.namedtuple("Pair", "left right")


class Tagged(dict):
    """A dict subclass with an attribute of its own: a copy keeps it."""

    tag = None


class MappingFromPairsOnly(collections.abc.Mapping):
    """A read-only mapping whose constructor does not take a dict."""

    def __init__(self, *, pairs) -> None:
        self._d = dict(pairs)

    def __getitem__(self, key):
        return self._d[key]

    def __iter__(self):
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)


def _pinned(x) -> bool:
    return isinstance(x, Pinnable) and x.pinned


def test_pin_reaches_every_part_and_keeps_container_types():
    tagged = Tagged(a=Pinnable(1))
    tagged.tag = "kept"
    batch = {"pair": Pair(Pinnable(1), [Pinnable(2), "text", b"raw", 3.5]),
             "tuple": (Pinnable(3),), "tagged": tagged, "range": range(2)}
    out = pin(batch)
    assert type(out) is dict and list(out) == list(batch)
    assert type(out["pair"]) is Pair and _pinned(out["pair"].left)
    assert type(out["pair"].right) is list and _pinned(out["pair"].right[0])
    assert out["pair"].right[1:] == ["text", b"raw", 3.5]
    assert type(out["tuple"]) is tuple and _pinned(out["tuple"][0])
    assert type(out["tagged"]) is Tagged and out["tagged"].tag == "kept" and _pinned(out["tagged"]["a"])
    assert out["range"] == [0, 1]  # range() cannot be rebuilt from a list: a plain list, as torch
    assert not batch["pair"].left.pinned and batch["tagged"]["a"] is tagged["a"]  # input untouched


def test_a_mapping_that_cannot_be_rebuilt_becomes_a_plain_dict():
    out = pin(MappingFromPairsOnly(pairs=[("k", Pinnable(1))]))
    assert type(out) is dict and _pinned(out["k"])


def test_a_custom_batch_class_pins_itself():
    assert _pinned(pin(Pinnable(7)))


def test_pin_memory_device_is_ignored_with_a_warning_where_torch_deprecated_it():
    if getattr(torch, "accelerator", None) is None:
        pytest.skip("this torch has no torch.accelerator: pin_memory_device is still passed on")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        enabled, device = pin_settings(True, "cuda", stacklevel=1)
    messages = [str(w.message) for w in caught]
    assert any("pin_memory_device='cuda' is ignored" in m for m in messages), messages
    assert device == ""
    assert enabled == torch.accelerator.is_available()
    assert pin_settings(False, "cuda", stacklevel=1) == (False, "")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without an accelerator")
def test_without_an_accelerator_both_loaders_warn_and_yield_the_same_unpinned_batches():
    def run(cls):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loader = cls(KindDataset(6), batch_size=2, pin_memory=True)
            batches = list(loader)
        return batches, [str(w.message) for w in caught]

    ours, our_warnings = run(FMQLoader)
    theirs, their_warnings = run(DataLoader)
    assert [b.is_pinned() for b in ours] == [False] * 3
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
    assert any("no accelerator is found" in m for m in our_warnings)
    assert any("no accelerator is found" in m for m in their_warnings)
