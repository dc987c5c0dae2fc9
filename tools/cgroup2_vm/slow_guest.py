"""A pytest plugin for the guest (`-p tools.cgroup2_vm.slow_guest`): the tests' own time limits,
stretched by CRICKET_TEST_SLOWDOWN when the guest's CPU is emulated.

Under TCG every instruction of the guest is translated, and what takes a second natively takes
ten or more: the test fixtures' limits (a registry push in 120 s, a daemon answering in 20 s,
pytest-timeout's 300 s a test, which also covers the session fixtures that build and push the
test images) are set for a native machine, and would fail tests for the emulator's slowness
rather than for anything they check. They are bounds against hangs, not measurements, so they
are stretched; nothing a test asserts is changed.
"""
from __future__ import annotations

import os

import pytest

# module -> the names of its time limits, in seconds
LIMITS = {"tests.daemon": ("START_TIMEOUT",), "tests.fixtures.images": ("PUSH_TIMEOUT",),
          "tests.fixtures.registry": ("START_TIMEOUT", "STOP_TIMEOUT")}


def slowdown() -> float:
    try:
        return max(1.0, float(os.environ.get("CRICKET_TEST_SLOWDOWN", "1")))
    except ValueError:
        return 1.0


@pytest.hookimpl(tryfirst=True)  # before pytest-timeout reads its setting
def pytest_configure(config: pytest.Config) -> None:
    factor = slowdown()
    if factor == 1:
        return
    import importlib

    for name, attrs in LIMITS.items():
        module = importlib.import_module(name)
        for attr in attrs:
            if hasattr(module, attr):
                setattr(module, attr, getattr(module, attr) * factor)
    try:
        timeout = config.getoption("timeout", None) or config.getini("timeout")
    except ValueError:  # no pytest-timeout
        return
    if timeout:
        config.option.timeout = float(timeout) * factor


def pytest_report_header(config: pytest.Config) -> str | None:
    factor = slowdown()
    return f"cgroup2-vm: the tests' time limits stretched {factor:g}x (emulated CPU)" if factor > 1 else None
