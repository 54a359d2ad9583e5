"""``pin_memory=True``: which batches get pinned, and how, as torch's DataLoader does it.

Pinning needs an accelerator. Without one, the loader warns and yields unpinned
batches, as torch's does. Every tensor in a batch is replaced by its
``pin_memory()`` copy, through mappings, namedtuples, tuples and other sequences,
keeping their types where their constructors allow; an object of any other type
with a ``pin_memory()`` method of its own (a custom batch class) is pinned by it.

Torch with ``torch.accelerator`` (2.6 and later) pins for the current
accelerator and has deprecated ``pin_memory_device`` and ``Tensor.pin_memory``'s
``device`` argument (which warns on every call): there the argument is ignored
with a warning, as torch's DataLoader does. Older torch still gets it passed on.

This runs in the main thread, inside ``next()`` (torch uses a pin thread).
"""

from __future__ import annotations

import collections.abc
import copy
import warnings

import torch

__all__ = ["pin", "pin_settings"]


def pin_settings(pin_memory: bool, pin_memory_device: str, stacklevel: int) -> tuple[bool, str]:
    """``(pin at all, device for Tensor.pin_memory or '')`` for a loader's two arguments."""
    if not pin_memory:
        return False, ""
    accelerator = getattr(torch, "accelerator", None)
    device = pin_memory_device
    if accelerator is not None and device:
        warnings.warn(f"pin_memory_device={device!r} is ignored: batches are pinned for the "
                      "current accelerator, as torch's DataLoader pins them (torch deprecated "
                      "the argument); leave pin_memory_device unset.", UserWarning,
                      stacklevel=stacklevel + 1)
        device = ""
    available = accelerator.is_available() if accelerator is not None else torch.cuda.is_available()
    if not available:
        warnings.warn("'pin_memory' argument is set as true but no accelerator is found, "
                      "then device pinned memory won't be used.", UserWarning,
                      stacklevel=stacklevel + 1)
        return False, ""
    return True, device


def pin(data, device: str = ""):
    """``data`` with every tensor replaced by a pinned copy (see the module's docstring)."""
    if isinstance(data, torch.Tensor):
        return data.pin_memory(device) if device else data.pin_memory()
    if isinstance(data, (str, bytes)):
        return data
    if hasattr(data, "pin_memory"):  # a custom batch type pins itself
        return data.pin_memory()
    if isinstance(data, collections.abc.Mapping):
        pinned = {key: pin(value, device) for key, value in data.items()}
        try:
            if isinstance(data, collections.abc.MutableMapping):
                clone = copy.copy(data)  # keeps a subclass's own attributes
                clone.update(pinned)
                return clone
            return type(data)(pinned)
        except TypeError:  # no copy()/update()/constructor from a dict: a plain dict
            return pinned
    if isinstance(data, tuple):
        if hasattr(data, "_fields"):  # a namedtuple
            return type(data)(*(pin(value, device) for value in data))
        return type(data)(pin(value, device) for value in data)
    if isinstance(data, collections.abc.Sequence):
        try:
            if isinstance(data, collections.abc.MutableSequence):
                clone = copy.copy(data)
                for i, value in enumerate(data):
                    clone[i] = pin(value, device)
                return clone
            return type(data)([pin(value, device) for value in data])
        except TypeError:  # no copy()/item assignment/constructor from a list: a plain list
            return [pin(value, device) for value in data]
    return data
