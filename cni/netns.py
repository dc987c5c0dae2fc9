"""Working inside a pod's network namespace without leaving the process's own.

Namespaces belong to threads: a thread that joins a network namespace creates
its sockets (netlink ones included) there, and the rest of the process does
not notice. So work for a pod's namespace runs in a fresh thread that joins it
and ends with the work.
"""
from __future__ import annotations

import threading
from typing import Callable, TypeVar

from shim import linux

T = TypeVar("T")


def run_in(netns: str, fn: Callable[[], T]) -> T:
    """Run fn() in a new thread inside the network namespace at `netns` (a pinned file or
    /proc/<pid>/ns/net); its result, or its exception raised here."""
    outcome: dict = {}

    def body() -> None:
        try:
            linux.setns(netns, linux.CLONE_NEWNET)
            outcome["value"] = fn()
        except BaseException as e:  # carried back to the caller's thread
            outcome["error"] = e

    worker = threading.Thread(target=body, name="in-netns")
    worker.start()
    worker.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
