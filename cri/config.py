"""cricketd's configuration: embedded defaults, a TOML file, then command-line flags.

The daemon must run with no file at all, so every key has a default here, and the
README's config reference lists the same keys and defaults.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

log = logging.getLogger(__name__)

DEFAULT_CONFIG_FILE = "/etc/cricket/config.toml"
# The built-in executor answers to the empty handler name (the CRI's default) and to this one.
BUILTIN_HANDLER = "cricket"
# OCI runtimes offered as handlers, by name, when the config names none and they are installed.
DISCOVERED_RUNTIMES = ("runc", "crun")


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
class RuntimeHandler:
    """An OCI runtime (runc, crun) that pods can pick by RuntimeClass handler name."""

    path: str = ""  # the runtime binary; required
    root: str = ""  # its --root; default state_dir/runtimes/<name>


@dataclass
class CniConfig:
    conf_dir: str = "/etc/cni/net.d"
    bin_dirs: list[str] = field(default_factory=lambda: ["/opt/cni/bin", "/usr/lib/cni"])


@dataclass
class StreamingConfig:
    address: str = "127.0.0.1"  # where the Exec/Attach/PortForward URLs point
    port: int = 0  # 0: a free port, chosen at start


@dataclass
class TracingConfig:
    endpoint: str = ""  # OTLP/HTTP traces URL, e.g. http://127.0.0.1:4318/v1/traces; "": no tracing
    sampling_ratio: float = 1.0  # of the traces that start here (a caller's sampled flag is followed)


@dataclass
class MetricsConfig:
    address: str = ""  # host:port of the Prometheus endpoint (/metrics); "": none


@dataclass
class ContainerLogConfig:
    max_size: int = 0  # bytes of a container's CRI log before the shim rotates it; 0: no rotation
    max_files: int = 5  # files kept per container when rotating, the live one included


@dataclass
class RootfsConfig:
    # Mount each container's overlay "volatile": no sync of its writable layer, not on fsync and
    # not on unmount (which otherwise syncs the whole filesystem under it). Kubernetes never
    # restarts a container on its old writable layer, so nothing is lost that it would keep.
    volatile: bool = True


@dataclass
class BuildConfig:
    # The most processes one RUN step of `cricket build` may have at once: a fork bomb in a
    # Dockerfile ends there, not at the node's limit.
    pids_limit: int = 1024


@dataclass
class ImageConfig:
    max_concurrent_downloads: int = 3
    pull_retries: int = 3
    pull_timeout_seconds: float = 30.0
    # Bounds of one layer (image/limits.py), generous: what a hostile image can make a node hold.
    max_layer_size: int = 64 << 30  # bytes of its files at their apparent size; its blob may not be bigger
    max_layer_entries: int = 1_000_000


@dataclass
class Config:
    socket: str = "/run/cricket/cricket.sock"
    root_dir: str = "/var/lib/cricket"
    state_dir: str = "/run/cricket"
    log_level: str = "info"
    image: ImageConfig = field(default_factory=ImageConfig)
    cni: CniConfig = field(default_factory=CniConfig)
    streaming: StreamingConfig = field(default_factory=StreamingConfig)
    container_logs: ContainerLogConfig = field(default_factory=ContainerLogConfig)
    rootfs: RootfsConfig = field(default_factory=RootfsConfig)
    build: BuildConfig = field(default_factory=BuildConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    tracing: TracingConfig = field(default_factory=TracingConfig)
    registries: dict[str, RegistryHost] = field(default_factory=dict)
    # None: runc and crun, where installed. {} (an empty [runtimes] table): none but the built-in.
    runtimes: dict[str, RuntimeHandler] | None = None

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


_LOG_LEVELS = ("debug", "info", "warning", "error")
# The numbers with a ceiling of their own besides being at least 0: a ratio, a TCP port.
_MAXIMA = {"tracing.sampling_ratio": 1.0, "streaming.port": 65535}


def _build(cls, table: dict, where: str):
    """Make dataclass `cls` from a TOML table, refusing unknown keys and wrong types."""
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in table.items():
        f = known.get(key)
        if f is None:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(known))})")
        # Every config field has a default or a default_factory.
        default = (f.default if f.default is not dataclasses.MISSING
                   else cast(Callable[[], Any], f.default_factory)())
        name = f"{where}.{key}" if where else key
        if isinstance(default, (ImageConfig, CniConfig, StreamingConfig, ContainerLogConfig, MetricsConfig,
                                TracingConfig, RootfsConfig)):
            value = _build(type(default), _table(value, name), name)
        elif key == "registries" and cls is Config:
            value = {
                host: _build(RegistryHost, _table(t, f"{name}.{host}"), f"{name}.{host}")
                for host, t in _table(value, name).items()
            }
        elif key == "runtimes" and cls is Config:
            value = {
                handler: _build(RuntimeHandler, _table(t, f"{name}.{handler}"), f"{name}.{handler}")
                for handler, t in _table(value, name).items()
            }
            for handler, rt in value.items():
                if not rt.path:
                    raise ConfigError(f"{name}.{handler}.path: the runtime binary is required")
                if handler in ("", BUILTIN_HANDLER):
                    raise ConfigError(f"{name}.{handler}: {handler!r} is the built-in executor's name")
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{name}: want true or false, got {value!r}")
        elif isinstance(default, (int, float)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{name}: want a number, got {value!r}")
            if not math.isfinite(value):  # TOML spells inf and nan; no key means either
                raise ConfigError(f"{name}: want a finite number, got {value!r}")
            if isinstance(default, int) and value != int(value):
                # int() would cut 0.5 to 0: a bound of nothing, or no downloads at all.
                raise ConfigError(f"{name}: want a whole number, got {value!r}")
            # 0 means "off" or "any" for the keys whose default is 0; elsewhere it is no value at all.
            if value < 0 or (value == 0 and default != 0):
                raise ConfigError(f"{name}: must be {'at least 0' if default == 0 else 'positive'}, got {value!r}")
            if name in _MAXIMA and value > _MAXIMA[name]:
                raise ConfigError(f"{name}: must be at most {_MAXIMA[name]}, got {value!r}")
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


def _runs_here(name: str) -> bool:
    """Whether a discovered runtime can run containers on this host's cgroups."""
    if name != "crun":
        return True
    # crun refuses a hybrid host (cgroup v1 beside a cgroup2 tree) once any controller sits on
    # the cgroup2 tree, whatever its cgroup manager.
    try:
        with open("/sys/fs/cgroup/unified/cgroup.controllers") as f:
            controllers = f.read().split()
    except OSError:
        return True
    if controllers:
        log.warning("not offering crun as a runtime handler: it refuses this hybrid cgroup host, whose "
                    "cgroup2 tree has the %s controller(s)", ", ".join(controllers))
        return False
    return True


def runtime_handlers(cfg: Config) -> dict[str, RuntimeHandler]:
    """The OCI runtime handlers: those configured, or runc and crun if installed (and able to run
    here); roots filled in."""
    if cfg.runtimes is None:
        found = {name: shutil.which(name) for name in DISCOVERED_RUNTIMES}
        handlers = {name: RuntimeHandler(path=path) for name, path in found.items() if path and _runs_here(name)}
    else:
        handlers = {name: RuntimeHandler(h.path, h.root) for name, h in cfg.runtimes.items()}
    for name, h in handlers.items():
        h.root = h.root or os.path.join(cfg.state_dir, "runtimes", name)
    return handlers


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
        except RecursionError:  # tomllib recurses once per nested array or inline table
            raise ConfigError(f"config file {path}: arrays or tables nested too deeply") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"config file {path} is not UTF-8 text, as TOML must be: {e}") from None
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
