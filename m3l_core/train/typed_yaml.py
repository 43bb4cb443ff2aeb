"""A small typed-YAML engine: dataclass trees read from YAML files and ``key=value`` overrides.

Generic: nothing here knows the training schema (that is :mod:`m3l_core.train.config`).

* ``base: other.yaml`` (relative to the including file, or a list) inherits another file first.
* Every key is checked against the dataclass annotations; an unknown key or a value of the
  wrong type raises :class:`ConfigError` naming the key and the file (or ``--set``) it came from.
* Values are parsed as YAML, so ``--set data.crop_size=[64,64]`` and ``--set optim.lr=1e-3`` work.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import yaml

Layer = tuple[str, dict[str, Any]]  # (source, nested mapping)


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key and its source."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


def make_checker(obj: Any) -> Callable[[str, bool, str], None]:
    """``check(key, ok, expected)`` raising :class:`ConfigError` with the value at dotted ``key`` of ``obj``."""
    def check(key: str, ok: bool, expected: str) -> None:
        if not ok:
            value = obj
            for part in key.split("."):
                value = getattr(value, part)
            raise ConfigError(f"'{key}' must be {expected}, got {value!r}", key=key)
    return check


def plain(v: Any) -> Any:
    """Tuples -> lists, recursively, for YAML/JSON."""
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    return v


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def flatten(data: Any, source: str, cls: type, prefix: str = "") -> dict[str, Any]:
    """A (nested) config mapping -> ``{"data.crop_size": value, ...}``; unknown keys raise naming ``source``."""
    if not isinstance(data, dict):
        where = f"section '{prefix[:-1]}'" if prefix else "the top level"
        raise ConfigError(f"{source}: {where} must be a mapping of keys to values, got {type(data).__name__}")
    hints = _hints(cls)
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if key not in hints or key.startswith("_"):
            known = ", ".join(sorted(k for k in hints if not k.startswith("_")))
            raise ConfigError(f"{source}: unknown config key '{name}' (known keys{' in ' + prefix[:-1] if prefix else ''}: {known})")
        if _is_section(hints[key]):
            out.update(flatten(value if value is not None else {}, source, hints[key], f"{name}."))
        else:
            out[name] = value
    return out


def coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check ``value`` against the annotation ``tp``; returns it in canonical form."""
    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{source}: '{key}' must be {expected}, got {value!r} ({type(value).__name__})")

    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        errors = []
        for a in rest:
            try:
                return coerce(value, a, key, source)
            except ConfigError as e:
                errors.append(e)
        raise errors[0] if len(rest) == 1 else bad(" or ".join(map(_type_name, args)))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad("true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise bad("an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise bad("a number")
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad("a string")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise bad(f"a list ({_type_name(tp)})")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value))
        if len(value) != len(args):
            raise bad(f"a list of {len(args)} values ({_type_name(tp)})")
        return tuple(coerce(v, a, f"{key}[{i}]", source) for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict or tp is dict:
        if isinstance(value, dict):
            return dict(value)
        raise bad("a mapping")
    raise ConfigError(f"{source}: '{key}' has an unsupported type {tp!r}")  # pragma: no cover - schema bug


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def leaf_types(cls: type, prefix: str = "") -> dict[str, Any]:
    """``{"data.crop_size": annotation, ...}`` for every leaf field of the dataclass tree ``cls``."""
    out = {}
    for key, tp in _hints(cls).items():
        if _is_section(tp):
            out.update(leaf_types(tp, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = tp
    return out


def read_yaml(path: Path, stack: tuple[Path, ...] = ()) -> list[Layer]:
    """``path`` and its ``base`` files as ``[(source, mapping), ...]``, bases first."""
    path = Path(path).resolve()
    if path in stack:
        chain = " -> ".join(str(p) for p in (*stack, path))
        raise ConfigError(f"{path}: 'base' files form a cycle: {chain}")
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found" + (f" (base of {stack[-1]})" if stack else ""))
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot parse YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    bases = data.pop("base", None)
    out: list[Layer] = []
    if bases is not None:
        for b in [bases] if isinstance(bases, str) else bases:
            if not isinstance(b, str):
                raise ConfigError(f"{path}: 'base' must be a file name or a list of file names, got {b!r}")
            out += read_yaml(path.parent / b, (*stack, path))
    out.append((str(path), data))
    return out


def parse_override(text: str) -> Layer:
    """``"optim.lr=1e-3"`` -> ``("--set optim.lr", {"optim": {"lr": 0.001}})`` (the value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. --set optim.lr=3e-4")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {text!r}: cannot parse the value as YAML: {e}") from e
    nested: dict[str, Any] = {}
    node = nested
    *sections, leaf = key.split(".")
    for s in sections:
        node = node.setdefault(s, {})
    node[leaf] = value
    return f"--set {key}", nested


def build(cls: type, layers: Iterable[Layer]) -> Any:
    """Merge layers (later wins) into a checked instance of the dataclass ``cls``."""
    leaves = leaf_types(cls)
    values: dict[str, tuple[Any, str]] = {}
    for source, mapping in layers:
        for key, value in flatten(mapping, source, cls).items():
            values[key] = (coerce(value, leaves[key], key, source), source)
    nested: dict[str, Any] = {}
    for key, (value, _) in values.items():
        *sections, leaf = key.split(".")
        node = nested
        for s in sections:
            node = node.setdefault(s, {})
        node[leaf] = value
    try:
        return _construct(cls, nested)
    except (TypeError, ValueError) as e:
        # Name the file that set the offending key (or every file, if the key cannot be told).
        key = getattr(e, "key", None) or next((k for k in values if k in str(e)), None)
        if key in values:
            where = values[key][1]
        elif key is not None:
            where = f"default value of '{key}'"
        else:
            where = ", ".join(sorted({s for _, s in values.values()})) or "defaults"
        raise ConfigError(f"{where}: {e}", key=key) from e


def _construct(cls: type, d: dict[str, Any]) -> Any:
    hints = _hints(cls)
    kw = {k: (_construct(hints[k], v) if _is_section(hints[k]) else v) for k, v in d.items()}
    return cls(**kw)


def load(
    cls: type,
    path: str | Path | None,
    overrides: Sequence[str] = (),
    *,
    extra: dict[str, Any] | None = None,
) -> Any:
    """Read ``path`` (with its ``base`` chain), then ``extra`` (e.g. from CLI flags), then ``key=value`` overrides."""
    layers: list[Layer] = read_yaml(Path(path)) if path is not None else []
    if extra:
        layers.append(("command line", extra))
    layers += [parse_override(text) for text in overrides]
    return build(cls, layers)


def dump(obj: Any) -> str:
    """A dataclass tree as YAML (loadable by :func:`load`)."""
    return yaml.safe_dump(plain(dataclasses.asdict(obj)), sort_keys=False, default_flow_style=None)
