"""Reading a config's YAML with a line for every key: the strict loader behind config.py's errors.

``read_yaml`` parses with ``yaml.SafeLoader`` (no Python tags), refuses a key written
twice in one mapping, and returns ``{key path: line}`` so that every error config.py
raises names ``file:line``; ``config_error`` builds that ``ConfigError`` (with ``path``,
``line`` and ``key`` attributes). ``parse_override`` reads one ``--set KEY=VALUE``.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

import yaml

from ..errors import ConfigError

__all__ = ["config_error", "is_override", "dotted", "read_yaml", "parse_override"]


def is_override(where: str) -> bool:
    """True when ``where`` names a flag, --set or keyword override rather than a file."""
    return where.startswith(("--", "override ", "<"))


def config_error(where: str, message: str, *, key: str | None = None) -> ConfigError:
    """ConfigError("where: message") with .path, .line (None when unknown) and .key."""
    err = ConfigError(f"{where}: {message}")
    m = re.match(r"^(.*?):(\d+)(?::\d+)?$", where)
    is_file = not is_override(where)
    err.path = (m.group(1) if m else where) if is_file else None
    err.line = int(m.group(2)) if m and is_file else None
    err.key = key
    return err


class _DuplicateKey(Exception):
    """A key written twice in one mapping; raised while constructing it."""

    def __init__(self, mapping: yaml.MappingNode, key, first: int, second: int):
        super().__init__(key)
        self.mapping, self.key, self.first, self.second = mapping, key, first, second


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key written twice in one mapping.

    PyYAML keeps the last value and says nothing, so a second ``num_workers:`` further
    down a section silently wins. Merge keys (``<<: *base``) still override: only keys
    written in the mapping itself are compared.
    """

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    if key in seen:
                        raise _DuplicateKey(node, key, seen[key], line)
                    seen[key] = line
                except TypeError:  # unhashable: super() reports it with its mark
                    continue
        return super().construct_mapping(node, deep)


def _node_path(root, target, _seen: set | None = None) -> tuple | None:
    """The keys and indices leading from ``root`` to the node ``target`` (None: not found)."""
    if root is target:
        return ()
    seen = set() if _seen is None else _seen
    if id(root) in seen:  # an alias back to an enclosing anchor
        return None
    seen.add(id(root))
    if isinstance(root, yaml.MappingNode):
        children = [(k.value if isinstance(k, yaml.ScalarNode) else "?", v) for k, v in root.value]
    elif isinstance(root, yaml.SequenceNode):
        children = list(enumerate(root.value))
    else:
        return None
    for at, child in children:
        found = _node_path(child, target, seen)
        if found is not None:
            return (at, *found)
    return None


def dotted(parts: Iterable) -> str:
    """("dataset", "transforms", 0, "Resize") -> "dataset.transforms[0].Resize"."""
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def read_yaml(path: str) -> tuple[Any, dict[tuple, int]]:
    """Parse with SafeLoader; return the data and {key path: line} for every key and item."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise config_error(path, f"cannot read config file: {reason}; check the path "
                           "(e.g. configs/default.yaml)") from None
    try:
        loader = _StrictLoader(text)
    except yaml.YAMLError as exc:  # the reader rejects control characters up front
        raise config_error(path, f"invalid YAML syntax, {exc}") from None
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except _DuplicateKey as dup:
        key = dotted([*(_node_path(node, dup.mapping) or ()), str(dup.key)])
        at = (f"at lines {dup.first} and {dup.second}" if dup.first != dup.second
              else f"both on line {dup.second}")
        raise config_error(f"{path}:{dup.second}", f"key {key!r} appears twice, {at}; YAML would "
                                             "silently keep only the second, so delete one "
                                             "of them", key=key) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = exc.problem or ""
        if exc.context:
            ctx = exc.context_mark
            if ctx is not None and "<stream end>" in what:  # unclosed [ { or ": point at it
                mark, what = ctx, f"{what} (never closed)"
            elif ctx is not None and ctx is not mark:
                what = f"{what} ({exc.context} that started at line {ctx.line + 1})"
            else:
                what = f"{exc.context}: {what}"
        at = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else path
        raise config_error(at, f"invalid YAML syntax, {what}") from None
    except yaml.YAMLError as exc:
        raise config_error(path, f"invalid YAML syntax, {exc}") from None
    finally:
        loader.dispose()
    lines: dict[tuple, int] = {}

    def walk(n, at: tuple) -> None:
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                if isinstance(k, yaml.ScalarNode):
                    lines[at + (k.value,)] = k.start_mark.line + 1
                    walk(v, at + (k.value,))
        elif isinstance(n, yaml.SequenceNode):
            for i, v in enumerate(n.value):
                lines[at + (i,)] = v.start_mark.line + 1
                walk(v, at + (i,))
    if node is not None:
        walk(node, ())
    return data, lines


def parse_override(text: str) -> tuple[str, Any]:
    """``"loader.num_workers=4"`` -> ``("loader.num_workers", 4)``; the value is YAML.

    Raises:
        ConfigError: no ``=``, or a value that is not valid YAML.
    """
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise config_error(f"--set {text}", "expected KEY=VALUE, e.g. --set loader.num_workers=4")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise config_error(f"--set {text}", f"value {raw!r} is not valid YAML ({exc}); quote it "
                                      "or write e.g. [224, 224]") from None
    return key.strip(), value
