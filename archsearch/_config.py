"""Strict loading of user-written YAML into typed dataclasses.

YAML here is data: it is parsed with ``yaml.safe_load`` (no tags that build objects), OmegaConf
interpolation (``${...}``, which can call resolvers such as ``oc.env``) is refused, and every key is
checked against the dataclass it fills. OmegaConf validates and converts the scalar fields of each
level; nested dataclasses are converted level by level so that an error always names the full key path
(OmegaConf alone reports ``width`` where the user needs ``stages[2].width``).
"""
from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Sequence, TypeVar, cast

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import ConfigError

T = TypeVar("T")

#: What a key of ours looks like; anything else is shown by its length, never echoed.
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,63}$")


def resolve_relative(path: str, base_dir: str | Path) -> str:
    """A path written in a file that lives in ``base_dir``: beside the file first, then in its parent folders
    (``trials/x.yaml`` names ``search_spaces/y.yaml`` of the project it belongs to), then as written (from
    the working directory). Absolute paths and names that are no path (a reference such as ``fastvithd``)
    are returned as they are when nothing matches."""
    if Path(path).is_absolute():
        return path
    base = Path(base_dir).resolve()
    for folder in (base, *base.parents):
        candidate = folder / path
        if candidate.exists():
            return str(candidate)
    return path


def join_key(prefix: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{prefix}[{key}]"
    return f"{prefix}.{key}" if prefix else str(key)


#: Bounds on what a YAML file may make us do before anything looks at its keys: a spec, space or
#: experiment file is a few KB and a few hundred nodes. Aliases count as the nodes they expand to, so
#: that an alias bomb (ten levels of ten-fold aliases: 10^10 nodes from 1 KB) is refused at once.
MAX_YAML_BYTES = 1 << 20
MAX_YAML_NODES = 100_000
#: Nesting bound: ours, checked on the event stream before anything is built, so that the answer does
#: not depend on the parser (PyYAML 6.0.4's libyaml refuses 1000 flow levels itself, older ones recurse
#: until Python's limit). Our files nest fewer than 10 levels.
MAX_YAML_DEPTH = 64

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file; a missing file or a syntax error is a one-line :class:`ConfigError`."""
    path = Path(path)
    try:
        # Read with a byte limit, never trusting stat: /dev/zero says 0 bytes and never ends.
        with open(path, "rb") as f:
            raw = f.read(MAX_YAML_BYTES + 1)
        if len(raw) > MAX_YAML_BYTES:
            raise ConfigError("", f"{path}: more than the {MAX_YAML_BYTES} bytes a YAML file here may have")
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise ConfigError("", f"{path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError("", f"{path}: is a directory, expected a YAML file") from None
    except UnicodeDecodeError:
        raise ConfigError("", f"{path}: not a UTF-8 text file") from None
    except PermissionError:
        raise ConfigError("", f"{path}: permission denied") from None
    except OSError as e:
        raise ConfigError("", f"{path}: cannot read ({e.strerror or type(e).__name__})") from None
    return parse_yaml(text, source=str(path))


def _expanded_size(node: yaml.Node, source: str) -> int:
    """Nodes ``node`` stands for once every alias is expanded (shared nodes counted at each use)."""
    sizes: dict[int, int] = {}
    busy: set[int] = set()

    def size(n: yaml.Node) -> int:
        key = id(n)
        if key in sizes:
            return sizes[key]
        if key in busy:
            raise ConfigError("", f"{source}: an alias refers to a node that contains it (recursive YAML)")
        busy.add(key)
        if isinstance(n, yaml.SequenceNode):
            total = 1 + sum(size(c) for c in n.value)
        elif isinstance(n, yaml.MappingNode):
            total = 1 + sum(size(k) + size(v) for k, v in n.value)
        else:
            total = 1
        busy.discard(key)
        sizes[key] = total = min(total, MAX_YAML_NODES + 1)
        return total

    return size(node)


def _check_depth(text: str, source: str) -> None:
    """Refuse a document nested deeper than :data:`MAX_YAML_DEPTH`, reading events only (nothing is built)."""
    depth = 0
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                raise ConfigError("", f"{source}: nested too deeply (more than {MAX_YAML_DEPTH} levels)")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def parse_yaml(text: str, source: str = "<string>") -> Any:
    if len(text) > MAX_YAML_BYTES:
        raise ConfigError("", f"{source}: {len(text)} characters, more than the {MAX_YAML_BYTES} a YAML document here may have")
    try:
        _check_depth(text, source)
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            if _expanded_size(node, source) > MAX_YAML_NODES:
                raise ConfigError("", f"{source}: expands to more than {MAX_YAML_NODES} YAML nodes "
                                      "(aliases count as what they repeat); refusing it")
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except ConfigError:
        raise
    except RecursionError:
        raise ConfigError("", f"{source}: nested too deeply") from None
    except ValueError as e:  # e.g. an integer of 100,000 digits (Python's int limit)
        raise ConfigError("", f"{source}: a value YAML cannot hold ({str(e).splitlines()[0][:80]})") from None
    except yaml.MarkedYAMLError as e:
        if "nesting depth" in str(e.problem):  # libyaml >= 0.2.5 scans ahead and refuses 1000 levels first
            raise ConfigError("", f"{source}: nested too deeply (more than {MAX_YAML_DEPTH} levels)") from None
        mark = e.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError("", f"{source}: malformed YAML{where}: {e.problem}") from None
    except yaml.YAMLError as e:
        raise ConfigError("", f"{source}: malformed YAML: {e}") from None


def _nested_dataclass(tp: Any) -> tuple[Any, Any]:
    """(element dataclass, container) for fields typed ``DC``, ``List[DC]`` or ``Tuple[DC, ...]``."""
    if dataclasses.is_dataclass(tp):
        return tp, None
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union and len(args) == 2 and type(None) in args:  # Optional[DC]
        inner = args[0] if args[1] is type(None) else args[1]
        if dataclasses.is_dataclass(inner):
            return inner, None
    if origin in (list, tuple) and args and dataclasses.is_dataclass(args[0]):
        return args[0], origin
    return None, None


def _is_sequence_type(tp: Any) -> bool:
    return typing.get_origin(tp) in (list, tuple)


def _check_no_interpolation(data: Any, key: str) -> None:
    if isinstance(data, str) and "${" in data:
        raise ConfigError(key, f"interpolation {data!r} is not allowed: YAML here is data")
    if isinstance(data, Mapping):
        for k, v in data.items():
            _check_no_interpolation(v, join_key(key, str(k)))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            _check_no_interpolation(v, join_key(key, i))


def from_data(cls: type[T], data: Any, key: str = "") -> T:
    """Build dataclass ``cls`` from parsed YAML ``data``; every error names its key path."""
    _check_no_interpolation(data, key)
    return _from_data(cls, data, key)


def _from_data(cls: type[T], data: Any, key: str) -> T:
    if not isinstance(data, Mapping):
        where = key or "the document"
        # A whole document that is no mapping (a passwd file given as a space) is named, never echoed.
        shown = "" if not key else f" {_short(data)}"
        raise ConfigError(key, f"expected a mapping for {where}, got {type(data).__name__}{shown}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cast(Any, cls)) if f.init}
    for k in data:
        if k not in fields:
            allowed = ", ".join(fields)
            if not _IDENTIFIER.match(str(k)):  # a text file given as YAML: its first line is no key to echo
                raise ConfigError(key, f"{'the document' if not key else 'this mapping'} has a key that is no "
                                       f"identifier ({len(str(k))} characters); expected one of: {allowed}")
            raise ConfigError(join_key(key, str(k)), f"unknown key; expected one of: {allowed}")

    values: dict[str, Any] = {}
    flat: dict[str, Any] = {}
    for name, value in data.items():
        tp = hints[name]
        elem, container = _nested_dataclass(tp)
        sub = join_key(key, name)
        if elem is not None and container is None:
            values[name] = None if value is None else _from_data(elem, value, sub)
        elif elem is not None:
            if not isinstance(value, list):
                raise ConfigError(sub, f"expected a list, got {type(value).__name__} {_short(value)}")
            items: list[Any] = [_from_data(elem, item, join_key(sub, i)) for i, item in enumerate(value)]
            values[name] = container(items)
        else:
            if _is_sequence_type(tp) and not isinstance(value, list):
                raise ConfigError(sub, f"expected a list, got {type(value).__name__} {_short(value)}")
            flat[name] = value

    try:
        cfg: Any = OmegaConf.merge(OmegaConf.structured(cls), flat)
    except OmegaConfBaseException as e:
        raise ConfigError(join_key(key, str(e.full_key)), _first_line(e)) from None
    missing = [m for m in OmegaConf.missing_keys(cfg) if m.split(".")[0].split("[")[0] not in values]
    if missing:
        raise ConfigError(join_key(key, sorted(missing)[0]), "required key is missing")
    for name in flat:
        values[name] = OmegaConf.to_container(cfg[name]) if OmegaConf.is_config(cfg[name]) else cfg[name]
    try:
        return cls(**values)
    except ConfigError as e:
        raise e.under(key) from None


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _first_line(e: OmegaConfBaseException) -> str:
    msg = getattr(e, "msg", None) or str(e)
    return msg.strip().splitlines()[0]


def apply_overrides(data: Any, overrides: Sequence[str], *, source: str = "overrides") -> Any:
    """Apply OmegaConf dotlist overrides (``resolution=[64]``, ``stages.0.width=[8]``) to parsed YAML.

    Values are parsed as YAML (data only); list items are addressed by index, as in OmegaConf.
    """
    if not overrides:
        return data
    cfg = OmegaConf.create(data if data is not None else {})
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(source, f"{item!r} is not KEY=VALUE")
        value = parse_yaml(text, source=f"override {key}")
        if isinstance(value, dict) and not text.lstrip().startswith("{"):
            value = text  # e.g. sqlite:///:memory: - YAML would read the colons as a mapping
        try:
            OmegaConf.update(cfg, key, value, merge=False)
        except (OmegaConfBaseException, TypeError, ValueError) as e:
            raise ConfigError(key, f"cannot override: {str(e).strip().splitlines()[0]}") from None
    return OmegaConf.to_container(cfg, resolve=False)
