"""Build datasets, transforms and loaders from a LoaderConfig (YAML alone is enough).

``loader_from_config`` is also ``FMQLoader.from_config`` (attached at the end of this
module, so loader.py does not import the config machinery)::

    with FMQLoader.from_config(dataset, "configs/default.yaml", num_workers=4) as loader:
        for images, labels in loader: ...

    loader = build_from_config("configs/imagenet_like.yaml")   # ImageFolder + transforms too
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import ConfigError
from ..loading.arguments import is_iterable_dataset
from ..loading.loader import FMQLoader
from .config import _LOADER_KEYS, LoaderConfig, load_config

__all__ = ["build_dataset", "build_from_config", "build_transform", "check_dataset_root",
           "loader_from_config", "torch_loader_from_config"]


def _as_config(config, overrides=None) -> LoaderConfig:
    if isinstance(config, LoaderConfig) and not overrides:
        return config
    return load_config(config, overrides)


def build_transform(config) -> Any:
    """The ``dataset.transforms`` pipeline as one ``transforms.Compose`` (None if empty)."""
    from ..images import transforms as T

    cfg = _as_config(config)
    steps = [getattr(T, t.name)(**t.kwargs()) for t in cfg.dataset.transforms]
    return T.Compose(steps) if steps else None


def check_dataset_root(config, root: str | os.PathLike | None = None) -> str:
    """Refuse what ``build_dataset`` would refuse about ``dataset.root``, without reading it.

    ``fmq-loader check-config`` calls this too, so it says what ``train`` would refuse.

    Args:
        config: a LoaderConfig, a YAML path or a mapping.
        root: the folder to check instead of ``dataset.root``.

    Returns:
        "exists" (a folder) or "generate" (missing, and ``generate_if_missing`` is true).

    Raises:
        ConfigError: no root set, root is a file, or root missing and
            ``generate_if_missing`` false; the message points at ``dataset.root``.
    """
    cfg = _as_config(config)
    where = cfg.locate("dataset.root")
    root = os.fspath(root) if root is not None else cfg.dataset.root
    if root is None:
        raise ConfigError(f"{where}: dataset.root is not set; set dataset.root: data/demo in "
                          "the config, or pass --data DIR / --set dataset.root=DIR")
    if os.path.isdir(root):
        return "exists"
    if os.path.exists(root):
        raise ConfigError(f"{where}: dataset.root {root!r} is not a folder; point it at "
                          "the folder holding one sub-folder per class")
    if not cfg.dataset.generate_if_missing:
        raise ConfigError(f"{where}: dataset.root {root!r} does not exist; create it with "
                          f"`fmq-loader make-dataset {root}`, or set "
                          "dataset.generate_if_missing: true")
    return "generate"


def build_dataset(config, *, progress: bool = False, root: str | os.PathLike | None = None):
    """An ImageFolder from the ``dataset`` section, generating it first if configured.

    Args:
        config: a LoaderConfig, a YAML path or a mapping.
        progress: show make_dataset's progress bar when a folder is generated.
        root: use this folder instead of ``dataset.root``.

    Raises:
        ConfigError: what ``check_dataset_root`` refuses, or a root that ImageFolder
            cannot read; the message points at ``dataset.root``.
    """
    from ..images.datasets import ImageFolder
    from ..images.synth import make_dataset

    cfg = _as_config(config)
    ds = cfg.dataset
    where = cfg.locate("dataset.root")
    root = os.fspath(root) if root is not None else ds.root
    if check_dataset_root(cfg, root) == "generate":
        s = cfg.synth
        try:
            make_dataset(root, classes=s.classes, per_class=s.per_class, size=s.size,
                         seed=s.seed, quality=s.quality, progress=progress)
        except OSError as exc:
            raise ConfigError(f"{where}: cannot generate dataset.root {root!r}: "
                              f"{exc.strerror or exc}; choose a writable folder") from None
    kwargs = dict(transform=build_transform(cfg), on_error=ds.on_error, decoder=ds.decoder,
                  exif_transpose=ds.exif_transpose, seed=ds.seed)
    if ds.extensions is not None:
        kwargs["extensions"] = ds.extensions
    try:
        return ImageFolder(root, **kwargs)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{where}: dataset.root {root!r}: {exc}") from None


def _split(dataset, overrides: dict) -> tuple[dict, dict]:
    """Config keys (validated like --set) vs. pass-through keywords (collate_fn, sampler...)."""
    known = {f"{_LOADER_KEYS[k]}.{k}": v for k, v in overrides.items() if k in _LOADER_KEYS}
    rest = {k: v for k, v in overrides.items() if k not in _LOADER_KEYS}
    # Like torch, a sampler/batch_sampler or an iterable dataset excludes shuffle and
    # batch_sampler excludes batch_size/drop_last: the config's values yield unless given.
    if ("sampler" in rest or "batch_sampler" in rest or is_iterable_dataset(dataset)) \
            and "shuffle" not in overrides:
        known["loader.shuffle"] = False
    if "batch_sampler" in rest:
        known.setdefault("loader.batch_size", 1)
        known.setdefault("loader.drop_last", False)
    return known, rest


def loader_from_config(dataset, config, **overrides) -> FMQLoader:
    """``FMQLoader.from_config``: an FMQLoader over ``dataset`` with the config's keywords.

    Args:
        dataset: any map-style or iterable dataset.
        config: a LoaderConfig, a YAML path, or a mapping shaped like the YAML.
        **overrides: FMQLoader keywords. Config keys (``num_workers``, ``batch_size``,
            ``extra_slabs``, ...) are validated like the file; others (``collate_fn``,
            ``sampler``, ``worker_init_fn``, ``generator``) are passed through.

    Raises:
        ConfigError: a bad config or override.
    """
    known, rest = _split(dataset, overrides)
    _check_keywords(rest)
    cfg = load_config(config, known) if known or not isinstance(config, LoaderConfig) else config
    return FMQLoader(dataset, **{**cfg.loader_kwargs(), **rest})


def _check_keywords(rest: dict) -> None:
    """A misspelt keyword gets the nearest FMQLoader keyword, as a misspelt config key does."""
    import difflib
    import inspect

    valid = [k for k in inspect.signature(FMQLoader.__init__).parameters if k not in ("self", "dataset")]
    for key in rest:
        if key not in valid:
            close = difflib.get_close_matches(key, valid + list(_LOADER_KEYS), n=1)
            raise TypeError(f"FMQLoader.from_config() got an unexpected keyword argument {key!r}"
                            + (f"; did you mean {close[0]!r}?" if close else "")
                            + f" Valid keywords: {', '.join(sorted(set(valid) | set(_LOADER_KEYS)))}")


def torch_loader_from_config(dataset, config, **overrides):
    """The torch.utils.data.DataLoader the same config describes (for comparisons)."""
    from torch.utils.data import DataLoader

    known, rest = _split(dataset, {k: v for k, v in overrides.items()
                                   if k not in ("extra_slabs", "seed")})
    cfg = load_config(config, known) if known or not isinstance(config, LoaderConfig) else config
    return DataLoader(dataset, **{**cfg.torch_loader_kwargs(), **rest})


def build_from_config(config, overrides=None, *, progress: bool = False) -> FMQLoader:
    """ImageFolder + transforms + FMQLoader from a config alone.

    Args:
        config: a YAML path, a mapping or a LoaderConfig.
        overrides: as for ``load_config`` (``["loader.num_workers=4"]`` or a mapping).
        progress: show a progress bar if the folder has to be generated.

    Returns:
        the FMQLoader; its ``.dataset`` is the ImageFolder. Close it (or use ``with``).
    """
    cfg = _as_config(config, overrides)
    return loader_from_config(build_dataset(cfg, progress=progress), cfg)


def _from_config(cls, dataset, config, **overrides) -> FMQLoader:
    return loader_from_config(dataset, config, **overrides)


_from_config.__doc__ = loader_from_config.__doc__
FMQLoader.from_config = classmethod(_from_config)
