"""YAML -> frozen dataclasses (LoaderConfig, QueueConfig, ...); all validation here.

A config file has up to six sections, each optional (a missing key takes its default)::

    loader:     FMQLoader / DataLoader keywords (batch_size, num_workers, ...)
    queue:      the shared-memory transport (extra_slabs)
    dataset:    ImageFolder arguments and the transform pipeline
    synth:      the generated folder used when dataset.generate_if_missing is true
    train:      the `fmq-loader train` demo (steps, lr, ...)
    bench:      `fmq-loader bench` (batches timed per loader)

``configs/default.yaml`` lists every key with its default and a one-line comment;
``fmq-loader show-config`` prints the same from ``FIELDS`` below.

YAML is read with ``yaml.SafeLoader`` (``yaml.safe_load`` semantics: no Python tags) in
config_yaml.py; the composed node tree is walked once to record each key's line, so every
error names ``file:line``, the dotted key, the value and what is expected, and an unknown
key gets the closest valid one ("did you mean ...?"). ``ConfigError`` carries ``path``,
``line`` and ``key`` as attributes too.

Longer than the ~400-line guide: every key's default, check and comment stays in this
one module (all config validation in one place); reading the YAML with its line numbers
is in config_yaml.py.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import multiprocessing as mp
import numbers
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import yaml

from ..errors import ConfigError
from .config_yaml import config_error, is_override, parse_override, read_yaml

__all__ = [
    "BenchConfig", "DatasetConfig", "LoaderConfig", "LoaderSection", "QueueConfig",
    "SynthConfig", "TrainConfig", "TransformSpec", "dump_config", "load_config",
    "parse_override",
]

TRANSFORMS = ("CenterCrop", "Normalize", "PILToTensor", "RandomHorizontalFlip",
              "RandomResizedCrop", "Resize", "ToTensor", "ToUint8Tensor")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# -- checks: each returns the normalised value or raises _Bad(expectation[, hint]) ----------
class _Bad(Exception):
    def __init__(self, expected: str, hint: str = ""):
        super().__init__(expected)
        self.expected, self.hint = expected, hint


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _int(low: int, none_ok: bool = False, hint: str = "") -> Callable:
    expected = f"an int >= {low}" + (" or null" if none_ok else "")

    def check(v):
        if v is None and none_ok:
            return None
        if not _is_int(v) or v < low:
            raise _Bad(expected, hint)
        return int(v)
    check.expected = expected
    return check


def _float(low: float, high: float | None = None, strict: bool = False, hint: str = "") -> Callable:
    op = ">" if strict else ">="
    expected = f"a number {op} {low:g}" + (f" and <= {high:g}" if high is not None else "")

    def check(v):
        if (not isinstance(v, numbers.Real) or isinstance(v, bool)
                or (v <= low if strict else v < low) or (high is not None and v > high)):
            raise _Bad(expected, hint)
        return float(v)
    check.expected = expected
    return check


def _bool(v):
    if not isinstance(v, bool):
        raise _Bad("true or false")
    return v


_bool.expected = "true or false"


def _choice(values: Iterable, none_ok: bool = False) -> Callable:
    values = tuple(values)
    expected = "one of " + ", ".join(repr(x) for x in values) + (" or null" if none_ok else "")

    def check(v):
        if v is None and none_ok:
            return None
        if v not in values:
            close = difflib.get_close_matches(str(v), [str(x) for x in values], n=1)
            raise _Bad(expected, f"did you mean {close[0]!r}?" if close else "")
        return v
    check.expected = expected
    return check


def _path(v):
    if v is None:
        return None
    if not isinstance(v, str) or not v:
        raise _Bad("a folder path (string) or null")
    return v


_path.expected = "a folder path or null"


def _str(v):
    if not isinstance(v, str):
        raise _Bad("a string")
    return v


_str.expected = "a string"


def _extensions(v):
    if v is None:
        return None
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, (list, tuple)) or not v or not all(isinstance(e, str) and e for e in v):
        raise _Bad("null or a list of file suffixes such as ['.jpg', '.png']")
    return tuple(v)


_extensions.expected = "null or a list of suffixes"


def _size(v):
    if (not isinstance(v, (list, tuple)) or len(v) != 2
            or not all(_is_int(x) and x >= 8 for x in v)):
        raise _Bad("[width, height], two ints >= 8", "e.g. size: [500, 375]")
    return (int(v[0]), int(v[1]))


_size.expected = "[width, height]"


# -- the dataclasses ---------------------------------------------------------------------
def _f(default, check: Callable, doc: str):
    kw = {"default_factory": default} if callable(default) else {"default": default}
    return field(metadata={"check": check, "doc": doc}, **kw)


@dataclass(frozen=True)
class LoaderSection:
    """``loader:``: FMQLoader keywords, spelled and defaulted as torch's DataLoader."""

    batch_size: int = _f(32, _int(1), "samples per batch")
    num_workers: int = _f(2, _int(0, hint="use num_workers: 0 to load in the main process"),
                          "worker processes; 0 loads in the main process")
    shuffle: bool = _f(True, _bool, "reshuffle the samples every epoch")
    drop_last: bool = _f(False, _bool, "drop the last batch when it is smaller than batch_size")
    prefetch_factor: int | None = _f(None, _int(1, none_ok=True),
                                     "batches in flight per worker; null = 2 with workers "
                                     "(torch's default)")
    persistent_workers: bool = _f(False, _bool, "keep workers alive between epochs")
    pin_memory: bool = _f(False, _bool, "page-lock batches for fast GPU copies (needs CUDA)")
    pin_memory_device: str = _f("", _str, "device to pin for; '' = the current accelerator "
                                "(ignored, with a warning, where torch deprecated it)")
    timeout: float = _f(0.0, _float(0), "seconds to wait for one batch; 0 waits forever")
    in_order: bool = _f(True, _bool, "yield batches in sampler order; false yields whichever "
                                     "is ready first")
    multiprocessing_context: str | None = _f(
        None, _choice(mp.get_all_start_methods(), none_ok=True),
        "start method: fork, spawn or forkserver; null = the platform default")
    seed: int | None = _f(None, _int(0, none_ok=True),
                          "worker seeds derive from this and the epoch; null = torch's RNG")


@dataclass(frozen=True)
class QueueConfig:
    """``queue:``: the shared-memory transport. Slab size follows the largest batch."""

    extra_slabs: int = _f(4, _int(0), "slabs beyond prefetch_factor * num_workers, for "
                                      "batches your loop still holds")


@dataclass(frozen=True)
class TransformSpec:
    """One transform: a class name from fmq_loader.transforms and its keyword arguments."""

    name: str
    params: tuple[tuple[str, Any], ...] = ()

    def kwargs(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.params}


def _default_transforms() -> tuple[TransformSpec, ...]:
    return (TransformSpec("RandomResizedCrop", (("size", 224),)),
            TransformSpec("RandomHorizontalFlip", (("p", 0.5),)),
            TransformSpec("ToTensor"),
            TransformSpec("Normalize", (("mean", IMAGENET_MEAN), ("std", IMAGENET_STD))))


@dataclass(frozen=True)
class DatasetConfig:
    """``dataset:``: an ImageFolder and its transform pipeline."""

    root: str | None = _f(None, _path, "folder with one sub-folder per class; relative to "
                                       "the current directory")
    generate_if_missing: bool = _f(False, _bool, "write a synthetic folder (see synth:) when "
                                                 "root does not exist")
    extensions: tuple[str, ...] | None = _f(None, _extensions,
                                            "file suffixes to read; null = common image types")
    on_error: str = _f("raise", _choice(("raise", "skip", "warn")),
                       "unreadable image: raise, skip (load the next one) or warn (skip + log)")
    decoder: str = _f("auto", _choice(("auto", "pillow", "simplejpeg", "turbo")),
                      "JPEG decoder; auto = the C region decoder (turbo) for crops, simplejpeg "
                      "when installed, else Pillow")
    exif_transpose: bool = _f(False, _bool, "rotate images upright by their EXIF tag")
    seed: int | None = _f(None, _int(0, none_ok=True),
                          "transform seeds from this, the epoch and the index; null = the "
                          "global RNG, which the loader seeds per sample")
    transforms: tuple[TransformSpec, ...] = _f(
        _default_transforms, None, "applied in order; each item is {Name: {param: value}}")


@dataclass(frozen=True)
class SynthConfig:
    """``synth:``: the folder ``generate_if_missing`` writes (fmq_loader.make_dataset)."""

    classes: int = _f(10, _int(1), "class folders")
    per_class: int = _f(100, _int(1), "images per class")
    size: tuple[int, int] = _f((500, 375), _size, "[width, height] in pixels")
    seed: int = _f(0, _int(0), "images depend only on this seed")
    quality: int = _f(90, _int(1), "JPEG quality 1-95")


@dataclass(frozen=True)
class TrainConfig:
    """``train:``: the `fmq-loader train` demo (a small CNN on the CPU)."""

    steps: int = _f(200, _int(1), "optimizer steps (batches) to train")
    warmup_steps: int = _f(5, _int(0), "first steps left out of images/s and data-wait share")
    lr: float = _f(0.05, _float(0, strict=True), "SGD learning rate")
    momentum: float = _f(0.9, _float(0, 1), "SGD momentum")
    log_every: int = _f(50, _int(1), "print the loss every this many steps")
    threads: int | None = _f(None, _int(1, none_ok=True),
                             "torch.set_num_threads for the model; null = torch's default")


@dataclass(frozen=True)
class BenchConfig:
    """``bench:``: `fmq-loader bench`."""

    batches: int = _f(50, _int(1), "batches timed per loader (after the first)")


@dataclass(frozen=True)
class LoaderConfig:
    """A validated configuration; build it with ``load_config``.

    Attributes:
        loader, queue, dataset, synth, train, bench: the sections.
        source: the file it came from, or a description ("<mapping>").
    """

    loader: LoaderSection = field(default_factory=LoaderSection)
    queue: QueueConfig = field(default_factory=QueueConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    source: str = field(default="<defaults>", compare=False)
    where: tuple[tuple[str, str], ...] = field(default=(), repr=False, compare=False)

    def locate(self, key: str) -> str:
        """Where ``key`` (dotted, e.g. "dataset.root") was set: "file:line", or the source."""
        return dict(self.where).get(key, self.source)

    def loader_kwargs(self) -> dict:
        """FMQLoader keywords from the loader and queue sections."""
        kw = {f.name: getattr(self.loader, f.name) for f in dataclasses.fields(LoaderSection)}
        kw["extra_slabs"] = self.queue.extra_slabs
        return kw

    def torch_loader_kwargs(self) -> dict:
        """torch.utils.data.DataLoader keywords (no fmq-only ones)."""
        kw = self.loader_kwargs()
        for name in ("extra_slabs", "seed"):
            kw.pop(name)
        return kw


SECTIONS: dict[str, type] = {"loader": LoaderSection, "queue": QueueConfig,
                             "dataset": DatasetConfig, "synth": SynthConfig,
                             "train": TrainConfig, "bench": BenchConfig}
# keyword overrides of from_config(): bare name -> section
_LOADER_KEYS = {f.name: "loader" for f in dataclasses.fields(LoaderSection)}
_LOADER_KEYS["extra_slabs"] = "queue"


def _fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _as_raw(cfg: LoaderConfig) -> dict:
    raw = {}
    for sec in SECTIONS:
        part = {}
        for name, f in _fields(SECTIONS[sec]).items():
            value = getattr(getattr(cfg, sec), name)
            if name == "transforms":
                value = [{t.name: t.kwargs()} for t in value]
            elif isinstance(value, tuple):
                value = list(value)
            part[name] = value
        raw[sec] = part
    return raw


def load_config(path_or_mapping: str | os.PathLike | Mapping | LoaderConfig | None = None,
                overrides: Mapping[str, Any] | Iterable[str] | None = None, *,
                flags: Mapping[str, tuple[Any, str]] | None = None) -> LoaderConfig:
    """Read, merge and validate a configuration.

    Args:
        path_or_mapping: a YAML file, a mapping with the same shape, an existing
            LoaderConfig (to apply overrides), or None for the defaults.
        overrides: dotted keys and values, ``{"loader.num_workers": 4}``, or strings as
            given to ``--set``: ``["loader.num_workers=4"]`` (values parsed as YAML).
        flags: values a command-line flag set, applied before ``overrides``: dotted key
            -> (value, the flag as typed), e.g. ``{"train.steps": (5, "--steps 5")}``;
            an error about the key names the flag.

    Returns:
        a frozen ``LoaderConfig``; keys not given take their defaults.

    Raises:
        ConfigError: unreadable file, invalid YAML, unknown key, wrong type or range;
            the message starts with ``file:line`` (or the override) and names the key.
    """
    where: dict[str, str] = {}
    if path_or_mapping is None:
        source, data, lines = "<defaults>", {}, {}
    elif isinstance(path_or_mapping, LoaderConfig):
        source, data, lines = path_or_mapping.source, _as_raw(path_or_mapping), {}
        where.update(path_or_mapping.where)
    elif isinstance(path_or_mapping, Mapping):
        source, data, lines = "<mapping>", path_or_mapping, {}
    elif isinstance(path_or_mapping, (str, os.PathLike)):
        source = os.fspath(path_or_mapping)
        data, lines = read_yaml(source)
        if data is None:
            data = {}
    else:
        raise ConfigError(f"config must be a YAML path, a mapping or a LoaderConfig, got "
                          f"{type(path_or_mapping).__name__}; "
                          "e.g. load_config('configs/default.yaml')")
    if not isinstance(data, Mapping):
        raise config_error(f"{source}:1" if lines else source,
                     f"a config must be a mapping of sections ({', '.join(SECTIONS)}), got "
                     f"{type(data).__name__} {data!r:.40}")
    for at, line in lines.items():
        where[".".join(str(p) for p in at)] = f"{source}:{line}"
    raw = {sec: dict(val) if isinstance(val, Mapping) else val for sec, val in data.items()}
    for key, (value, flag) in (flags or {}).items():
        _apply_override(raw, key, value, where, flag)
    if overrides:
        if isinstance(overrides, Mapping):
            items = [(k, v, f"override {k}={v!r}") for k, v in overrides.items()]
        elif isinstance(overrides, str):
            raise ConfigError(f"overrides must be a list of KEY=VALUE strings or a mapping, "
                              f"got the string {overrides!r}; wrap it in a list")
        else:
            items = [(*parse_override(o), f"--set {o}") for o in overrides]
        for key, value, label in items:
            _apply_override(raw, key, value, where, label)
    return _validate(raw, source, where)


def _apply_override(raw: dict, key: str, value, where: dict, label: str) -> None:
    parts = key.split(".")
    if len(parts) != 2:
        if len(parts) == 3 and parts[0] == "dataset" and parts[1] == "transforms":
            raise config_error(label, "set the whole list, e.g. dataset.transforms='[{ToTensor: {}}]'")
        valid = [f"{s}.{k}" for s, c in SECTIONS.items() for k in _fields(c)]
        close = difflib.get_close_matches(key, valid, n=1)
        raise config_error(label, f"override key must be SECTION.KEY, got {key!r}"
                            + (f"; did you mean {close[0]!r}?" if close else ""), key=key)
    section, name = parts
    _check_known(section, list(SECTIONS), label, "section", "")
    _check_known(name, list(_fields(SECTIONS[section])), label, "key", section)
    part = raw.get(section)
    if not isinstance(part, dict):
        part = raw[section] = {}
    part[name] = value
    where[key] = label


def _check_known(name, valid: list[str], where: str, what: str, prefix: str,
                 context: str = "") -> None:
    """Raise "unknown <what> 'prefix.name'; did you mean 'prefix.close'?" unless valid."""
    if name in valid:
        return
    dot = f"{prefix}." if prefix else ""
    close = difflib.get_close_matches(str(name), valid, n=1, cutoff=0.5)
    hint = (f"did you mean {dot + close[0]!r}?" if close
            else f"valid {what}s: {', '.join(valid)}")
    raise config_error(where, f"unknown {what} {dot + str(name)!r}{context}; {hint}",
                 key=dot + str(name))


def _validate(raw: dict, source: str, where: dict[str, str]) -> LoaderConfig:
    def loc(key: str) -> str:
        return where.get(key, source)

    sections = {}
    for sec, part in raw.items():
        _check_known(sec, list(SECTIONS), loc(str(sec)), "section", "")
        if part is None:
            part = {}
        if not isinstance(part, Mapping):
            raise config_error(loc(sec), f"section {sec} must be a mapping of keys, got "
                                   f"{part!r} ({type(part).__name__})", key=sec)
        cls, kwargs = SECTIONS[sec], {}
        fields = _fields(cls)
        for name, value in part.items():
            key = f"{sec}.{name}"
            _check_known(name, list(fields), loc(key), "key", sec)
            if name == "transforms":
                kwargs[name] = _check_transforms(value, key, where, source)
                continue
            check = fields[name].metadata["check"]
            try:
                kwargs[name] = check(value)
            except _Bad as bad:
                hint = f"; {bad.hint}" if bad.hint else ""
                raise config_error(loc(key), f"{key} must be {bad.expected}, got {value!r} "
                                       f"({type(value).__name__}){hint}", key=key) from None
        sections[sec] = cls(**kwargs)
    cfg = LoaderConfig(**sections, source=source, where=tuple(sorted(where.items())))
    _check_combinations(cfg)
    return cfg


def _blame(cfg: LoaderConfig, usual: str, other: str) -> str:
    """Which of two conflicting keys an error points at: one a flag or override set (the
    file line the user never touched is not the cause), else one the file set, else
    ``usual``."""
    where = dict(cfg.where)

    def rank(key: str) -> int:
        return 2 if key in where and is_override(where[key]) else 1 if key in where else 0
    return other if rank(other) > rank(usual) else usual


def _check_combinations(cfg: LoaderConfig) -> None:
    def origin(key: str) -> str:
        return dict(cfg.where).get(key, "the default")

    ld = cfg.loader
    if ld.num_workers == 0:
        for name in ("prefetch_factor", "persistent_workers", "multiprocessing_context"):
            if getattr(ld, name) not in (None, False):
                key = f"loader.{name}"
                off = "false" if name == "persistent_workers" else "null"
                value = getattr(ld, name)
                if _blame(cfg, key, "loader.num_workers") != key:
                    raise config_error(cfg.locate("loader.num_workers"), "loader.num_workers=0 "
                                 f"conflicts with {key}: {_scalar(value)} from "
                                 f"{origin(key)}, which needs num_workers >= 1; use "
                                 f"num_workers >= 1, or set {key} to {off} as well",
                                 key="loader.num_workers")
                raise config_error(cfg.locate(key), f"{key} needs loader.num_workers >= 1, got "
                             f"{name}={value!r} with num_workers=0; set "
                             f"num_workers: 2, or {name}: {off}", key=key)
    if cfg.synth.quality > 95:
        raise config_error(cfg.locate("synth.quality"), f"synth.quality must be an int in [1, 95], "
                     f"got {cfg.synth.quality}", key="synth.quality")
    tr = cfg.train
    if tr.warmup_steps >= tr.steps:
        if _blame(cfg, "train.warmup_steps", "train.steps") == "train.steps":
            raise config_error(cfg.locate("train.steps"), f"train.steps must be > "
                         f"train.warmup_steps, got {tr.steps} with warmup_steps "
                         f"{tr.warmup_steps} from {origin('train.warmup_steps')}; use "
                         f"{tr.warmup_steps + 1} steps or more, or lower train.warmup_steps",
                         key="train.steps")
        raise config_error(cfg.locate("train.warmup_steps"), "train.warmup_steps must be < "
                     f"train.steps, got {tr.warmup_steps} >= {tr.steps}; lower "
                     "warmup_steps or raise steps", key="train.warmup_steps")


def _check_transforms(value, key: str, where: dict[str, str],
                      source: str) -> tuple[TransformSpec, ...]:
    from ..images import transforms as T

    def loc(k: str) -> str:
        return where.get(k, source)

    if not isinstance(value, (list, tuple)):
        raise config_error(loc(key), f"{key} must be a list such as [{{Resize: {{size: 64}}}}, "
                               f"{{ToTensor: {{}}}}], got {value!r}", key=key)
    specs = []
    for i, item in enumerate(value):
        ikey = f"{key}.{i}"
        if isinstance(item, str):
            item = {item: {}}
        if not isinstance(item, Mapping) or len(item) != 1:
            raise config_error(loc(ikey), f"{key}[{i}] must be one {{Name: {{param: value}}}} or a "
                                    f"bare name, got {item!r}", key=ikey)
        (name, params), = item.items()
        _check_known(name, list(TRANSFORMS), where.get(f"{ikey}.{name}", loc(ikey)),
                     "transform", "", f" in {key}[{i}]")
        if params is None:
            params = {}
        if not isinstance(params, Mapping):
            raise config_error(loc(ikey), f"{key}[{i}] {name} parameters must be a mapping, got "
                                    f"{params!r}; e.g. {{size: 224}}", key=ikey)
        cls = getattr(T, name)
        accepted = [p for p in inspect.signature(cls).parameters if p != "self"]
        for p in params:
            _check_known(p, accepted or ["(none)"], loc(f"{ikey}.{name}.{p}"),
                         "parameter", "", f" of {name} in {key}[{i}]")
        try:
            cls(**params)
        except (TypeError, ValueError) as exc:
            raise config_error(loc(f"{ikey}.{name}"), f"{key}[{i}] {name}: {exc}",
                         key=ikey) from None
        frozen = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in params.items())
        specs.append(TransformSpec(name, frozen))
    return tuple(specs)


# -- writing -------------------------------------------------------------------------------
def _scalar(value) -> str:
    if isinstance(value, tuple):
        value = list(value)
    text = yaml.safe_dump(value, default_flow_style=True, width=1000, sort_keys=False)
    return text.strip().removesuffix("...").strip()


def dump_config(cfg: LoaderConfig, comments: bool = True) -> str:
    """The config as YAML that ``load_config`` reads back to an equal config."""
    out = []
    for sec, cls in SECTIONS.items():
        out.append(f"{sec}:")
        for name, f in _fields(cls).items():
            value = getattr(getattr(cfg, sec), name)
            doc = f"  # {f.metadata['doc']}" if comments else ""
            if name == "transforms":
                out.append(f"  {name}:{doc}")
                for t in value:
                    out.append(f"    - {t.name}: {_scalar(t.kwargs())}")
            else:
                out.append(f"  {name}: {_scalar(value)}{doc}")
    return "\n".join(out) + "\n"
