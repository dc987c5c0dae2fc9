"""cricketd's configuration: embedded defaults, a TOML file, then command-line flags.

The daemon must run with no file at all, so every key has a default here, and the
README's config reference lists the same keys and defaults.
"""
from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field

DEFAULT_CONFIG_FILE = "/etc/cricket/config.toml"


class ConfigError(ValueError):
    """The config file or a flag holds something cricketd cannot use."""


@dataclass
class RegistryHost:
    """How to reach one registry host (keyed by its domain, e.g. "docker.io")."""

    mirrors: list[str] = field(default_factory=list)
    insecure: bool = False
    ca_file: str = ""
    skip_verify: bool = False


@dataclass
class ImageConfig:
    max_concurrent_downloads: int = 3
    pull_retries: int = 3
    pull_timeout_seconds: float = 30.0


@dataclass
class Config:
    socket: str = "/run/cricket/cricket.sock"
    root_dir: str = "/var/lib/cricket"
    state_dir: str = "/run/cricket"
    log_level: str = "info"
    image: ImageConfig = field(default_factory=ImageConfig)
    registries: dict[str, RegistryHost] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


_LOG_LEVELS = ("debug", "info", "warning", "error")


def _build(cls, table: dict, where: str):
    """Make dataclass `cls` from a TOML table, refusing unknown keys and wrong types."""
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in table.items():
        f = known.get(key)
        if f is None:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(known))})")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        name = f"{where}.{key}" if where else key
        if isinstance(default, ImageConfig):
            value = _build(ImageConfig, _table(value, name), name)
        elif key == "registries" and cls is Config:
            value = {
                host: _build(RegistryHost, _table(t, f"{name}.{host}"), f"{name}.{host}")
                for host, t in _table(value, name).items()
            }
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{name}: want true or false, got {value!r}")
        elif isinstance(default, (int, float)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{name}: want a number, got {value!r}")
            if value <= 0:
                raise ConfigError(f"{name}: must be positive, got {value!r}")
            value = type(default)(value)
        elif isinstance(default, list):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{name}: want a list of strings, got {value!r}")
        elif isinstance(default, str):
            if not isinstance(value, str):
                raise ConfigError(f"{name}: want a string, got {value!r}")
        kwargs[key] = value
    return cls(**kwargs)


def _table(value, name: str) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{name}: want a table, got {value!r}")
    return value


def load(path: str | None, overrides: dict | None = None) -> Config:
    """Load the config: defaults, then `path` if it exists, then `overrides`.

    An explicitly named file that is missing is an error; the default file
    may be absent.
    """
    table: dict = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                table = tomllib.load(f)
        except FileNotFoundError:
            if path != DEFAULT_CONFIG_FILE:
                raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path}: {e}") from None
    for key, value in (overrides or {}).items():
        if value is not None:
            table[key] = value
    cfg = _build(Config, table, "")
    if cfg.log_level not in _LOG_LEVELS:
        raise ConfigError(f"log_level: want one of {', '.join(_LOG_LEVELS)}, got {cfg.log_level!r}")
    for key in ("socket", "root_dir", "state_dir"):
        if not os.path.isabs(getattr(cfg, key)):
            raise ConfigError(f"{key}: want an absolute path, got {getattr(cfg, key)!r}")
    return cfg
