"""Configuration: ``configs/default.yaml`` <- experiment yaml <- dotted ``key=value`` overrides.

Every key exists in ``default.yaml`` with a typed comment; anything else is an error that names the
key and suggests the closest real one. Values given on the command line are parsed as YAML scalars
or flow collections (``yaml.safe_load``: never ``eval``), and must match the default's type.
A key whose default is an empty mapping (``{}``, e.g. ``det.train_args``) is open: it takes any
sub-keys, passed through to the library it configures.

From a notebook::

    from pipeline.config import load_config
    cfg = load_config("configs/demo.yaml", ["det.epochs=3"])
    cfg.det.epochs  # 3
"""
from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from pipeline.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_PATH = CONFIG_DIR / "default.yaml"


class Config(dict):
    """A nested dict with attribute access (``cfg.det.epochs``) and dotted lookup (``cfg.get_path``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no key {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def get_path(self, dotted: str) -> Any:
        node: Any = self
        for part in dotted.split("."):
            node = node[part]
        return node

    def to_dict(self) -> dict:
        return _plain(self)


def _wrap(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return Config({k: _wrap(v) for k, v in obj.items()})
    if isinstance(obj, list):
        return [_wrap(v) for v in obj]
    return obj


def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    return obj


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}. Pass an existing YAML, e.g. configs/demo.yaml.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


def _all_keys(tree: Mapping, prefix: str = "") -> list[str]:
    keys = []
    for k, v in tree.items():
        dotted = f"{prefix}{k}"
        keys.append(dotted)
        if isinstance(v, Mapping) and v:
            keys.extend(_all_keys(v, dotted + "."))
    return keys


def _unknown_key(dotted: str, defaults: Mapping, source: str) -> ConfigError:
    known = _all_keys(defaults)
    close = difflib.get_close_matches(dotted, known, n=1, cutoff=0.5)
    if not close:  # a typo in the last part only: compare leaf names within the same section
        leaf = dotted.rsplit(".", 1)[-1]
        leaves = {k.rsplit(".", 1)[-1]: k for k in known}
        hit = difflib.get_close_matches(leaf, list(leaves), n=1, cutoff=0.6)
        close = [leaves[hit[0]]] if hit else []
    hint = f" Did you mean '{close[0]}'?" if close else " See configs/default.yaml for every key."
    return ConfigError(f"{source}: unknown config key '{dotted}'.{hint}")


def _check_type(dotted: str, default: Any, value: Any, source: str) -> Any:
    """Value must have the default's type (an int is accepted for a float; None only where default is None)."""
    if default is None:
        return value
    if value is None:
        raise ConfigError(f"{source}: '{dotted}' cannot be null (default: {default!r}).")
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            value = float(value)
    elif isinstance(default, str):
        ok = isinstance(value, str)
        if not ok and isinstance(value, (int, float)) and not isinstance(value, bool):
            value, ok = str(value), True  # e.g. device=0 means the string "0"
    elif isinstance(default, list):
        ok = isinstance(value, list)
    elif isinstance(default, Mapping):
        ok = isinstance(value, Mapping)
    else:
        ok = True
    if not ok:
        raise ConfigError(
            f"{source}: '{dotted}' must be {type(default).__name__} like the default {default!r}, "
            f"got {value!r} ({type(value).__name__})."
        )
    return value


def _merge(base: dict, update: Mapping, defaults: Mapping, source: str, prefix: str = "",
           root: Mapping | None = None) -> None:
    root = defaults if root is None else root
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if key not in defaults:
            raise _unknown_key(dotted, root, source)
        default = defaults[key]
        if isinstance(default, Mapping) and default:  # a section: merge key by key
            if not isinstance(value, Mapping):
                raise ConfigError(f"{source}: '{dotted}' is a section; give its keys, e.g. {dotted}.<key>=...")
            _merge(base[key], value, default, source, dotted + ".", root)
        elif isinstance(default, Mapping):  # open mapping (default {}): anything goes, merged
            if not isinstance(value, Mapping):
                raise ConfigError(f"{source}: '{dotted}' must be a mapping, got {value!r}.")
            base[key] = {**(base.get(key) or {}), **copy.deepcopy(dict(value))}
        else:
            base[key] = _check_type(dotted, default, copy.deepcopy(value), source)


def resolve_workers(value, key: str = "run.workers") -> int:
    """A worker-count setting -> processes to use: ``0`` means every core; negative is an error."""
    import os

    n = int(value)
    if n < 0:
        raise ConfigError(f"{key} must be >= 0 (0 = all cores), got {n}.")
    return n or (os.cpu_count() or 1)


def parse_override(text: str) -> tuple[str, Any]:
    """``"det.epochs=3"`` -> ``("det.epochs", 3)``; the value is parsed with ``yaml.safe_load``."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not key=value (e.g. det.epochs=3).")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key.")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw  # not YAML: take it as a plain string
    return key, value


def _nest(dotted: str, value: Any) -> dict:
    out: Any = value
    for part in reversed(dotted.split(".")):
        out = {part: out}
    return out


_DEFAULTS: dict | None = None


def load_defaults() -> dict:
    """Every key with its default value, read once per process from ``configs/default.yaml``."""
    global _DEFAULTS
    if _DEFAULTS is None:
        _DEFAULTS = _read_yaml(DEFAULT_PATH)
    return copy.deepcopy(_DEFAULTS)


def load_config(path: str | Path | None = None, overrides: Iterable[str] | Mapping[str, Any] = ()) -> Config:
    """Resolve defaults <- ``path`` (an experiment YAML) <- overrides (``"a.b=1"`` strings or a dict)."""
    defaults = load_defaults()
    cfg = copy.deepcopy(defaults)
    if path is not None:
        _merge(cfg, _read_yaml(Path(path)), defaults, str(path))
    items = overrides.items() if isinstance(overrides, Mapping) else (parse_override(o) for o in overrides)
    for key, value in items:
        _merge(cfg, _nest(key, value), defaults, "command line")
    return _wrap(cfg)


def save_config(cfg: Mapping, path: str | Path) -> Path:
    """Write the resolved config (what this invocation ran with) as YAML, atomically."""
    from pipeline.io import write_text_atomic

    return write_text_atomic(Path(path), yaml.safe_dump(_plain(cfg), sort_keys=False))
