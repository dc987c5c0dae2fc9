"""Fuzz target: cricketd's TOML config file (cri/config.py), whose every key has a type and a bound."""
from __future__ import annotations

import os

from fuzz.harness import instrumented, run, scratch

with instrumented(__name__ == "__main__"):
    from cri.config import ConfigError, load

EXPECTED = (ConfigError,)


def check(data: bytes) -> None:
    path = os.path.join(scratch(), "config.toml")
    with open(path, "wb") as f:
        f.write(data)
    load(path)


if __name__ == "__main__":
    run(check, EXPECTED)
