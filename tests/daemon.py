"""Start a real cricketd in temporary directories and talk CRI to it over its socket."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import grpc
import pytest

from api.runtime.v1 import api_pb2 as pb
from api.runtime.v1 import api_pb2_grpc as pb_grpc
from cni.install import install_plugins

START_TIMEOUT = 20


def loopback_network(workdir: str) -> str:
    """The [cni] table of a network with nothing but lo, in workdir: pods get their own network
    namespace, and no test touches the host's /etc/cni/net.d or bridges unless it means to."""
    conf_dir, bin_dir = os.path.join(workdir, "net.d"), os.path.join(workdir, "cni-bin")
    install_plugins(bin_dir)
    os.makedirs(conf_dir, exist_ok=True)
    with open(os.path.join(conf_dir, "10-loopback.conflist"), "w") as f:
        json.dump({"cniVersion": "1.0.0", "name": "lo-only", "plugins": [{"type": "loopback"}]}, f)
    return f'\n[cni]\nconf_dir = "{conf_dir}"\nbin_dirs = ["{bin_dir}"]\n'


class Cricketd:
    """One cricketd process with its own socket, root and state dirs."""

    def __init__(self, workdir: str, config: str = ""):
        self.workdir = workdir
        os.makedirs(workdir, exist_ok=True)
        self.root = os.path.join(workdir, "root")
        self.state = os.path.join(workdir, "state")
        self.socket = os.path.join(workdir, "cricket.sock")
        self.config_path = os.path.join(workdir, "config.toml")
        self.log_path = os.path.join(workdir, "cricketd.log")
        if "[cni]" not in config:
            config += loopback_network(workdir)
        with open(self.config_path, "w") as f:
            f.write(config)
        self.proc: subprocess.Popen | None = None
        self._channel: grpc.Channel | None = None
        self.runtime: pb_grpc.RuntimeServiceStub | None = None
        self.images: pb_grpc.ImageServiceStub | None = None

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "cri.main",
            "--config", self.config_path, "--socket", self.socket,
            "--root", self.root, "--state", self.state, "--log-level", "debug",
        ]

    def start(self) -> Cricketd:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        self._channel = grpc.insecure_channel("unix://" + self.socket)
        self.runtime = pb_grpc.RuntimeServiceStub(self._channel)
        self.images = pb_grpc.ImageServiceStub(self._channel)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"cricketd exited with {self.proc.returncode}:\n{self.log()}")
            try:
                self.runtime.Version(pb.VersionRequest(), timeout=1)
                return self
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"cricketd did not answer within {START_TIMEOUT}s:\n{self.log()}") from None
                time.sleep(0.05)

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int | None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        return code

    def restart(self, sig: int = signal.SIGKILL) -> Cricketd:
        self.stop(sig)
        return self.start()

    def pull(self, image: str, auth: pb.AuthConfig | None = None, timeout: float = 120) -> str:
        req = pb.PullImageRequest(image=pb.ImageSpec(image=image), auth=auth)
        assert self.images is not None  # start() first
        return self.images.PullImage(req, timeout=timeout).image_ref

    def status(self, image: str, verbose: bool = False) -> pb.ImageStatusResponse:
        assert self.images is not None  # start() first
        return self.images.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=image), verbose=verbose))

    def list(self) -> list[pb.Image]:
        assert self.images is not None  # start() first
        return list(self.images.ListImages(pb.ListImagesRequest()).images)

    def remove(self, image: str) -> None:
        assert self.images is not None  # start() first
        self.images.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=image)))


def registry_config(*registries, extra: str = "") -> str:
    """Config text that reaches each test registry: plain HTTP, or HTTPS with its test CA."""
    out = []
    for reg in registries:
        out.append(f'[registries."{reg.host}"]')
        if reg.ca_file:
            out.append(f'ca_file = "{reg.ca_file}"')
        else:
            out.append("insecure = true")
    return "\n".join(out) + "\n" + extra


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: snapshots hold device nodes, ownership and trusted.* xattrs")
