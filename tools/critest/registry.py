"""Debian's docker-registry (distribution v2) on a free loopback port, serving the stand-ins."""
from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.error
import urllib.request

from tools.critest import fixture_images, processes

BINARY = "docker-registry"
START_SECONDS = 15


class RegistryError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(address: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{address}/v2/", timeout=1):
            return True
    except (urllib.error.URLError, OSError):
        return False


class Registry:
    def __init__(self, workdir: str, log_path: str):
        self.workdir = workdir
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.address = ""

    def start(self) -> None:
        # The port is free when chosen and taken a moment later: another process can win it in
        # between, so a registry that does not come up is tried again on another port.
        for _ in range(3):
            self.address = f"127.0.0.1:{free_port()}"
            config = os.path.join(self.workdir, "config.yml")
            with open(config, "w") as f:
                f.write(f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: "
                        f"{self.workdir}/data\n  delete:\n    enabled: true\nhttp:\n  addr: {self.address}\n")
            self.proc = processes.start([BINARY, "serve", config], self.log_path)
            deadline = time.monotonic() + START_SECONDS
            while time.monotonic() < deadline and self.proc.poll() is None:
                if _answers(self.address):
                    return
                time.sleep(0.1)
            processes.stop(self.proc)
        raise RegistryError(f"{BINARY} did not start: {processes.tail(self.log_path, 5)}")

    def fill(self, workdir: str, deb_cache: str) -> int:
        """Build the stand-ins and push them; how many references were pushed."""
        layout, images = fixture_images.build(workdir, deb_cache)
        try:
            return len(fixture_images.push(layout, images, self.address))
        except subprocess.CalledProcessError as e:
            raise RegistryError(f"pushing a stand-in failed: {' '.join(e.cmd)}: {e.stderr.decode().strip()}") from None

    def stop(self) -> None:
        if self.proc is not None:
            processes.stop(self.proc)
