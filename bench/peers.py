"""The daemons a benchmark compares: Cricket and containerd, each started in its own
temporary directories, driven over CRI through the same generated stubs, and torn down
(process, mounts, directories) whatever happens."""
from __future__ import annotations

import atexit
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import grpc

from api.runtime.v1 import api_pb2 as pb
from api.runtime.v1 import api_pb2_grpc as pb_grpc
from linux.cgroups import Cgroup
from tests.daemon import Cricketd, registry_config

START_TIMEOUT = 30
STOP_TIMEOUT = 15

# Peers made and not yet stopped: stopped at exit if an error skipped their `finally`.
_live: set[Peer] = set()


@atexit.register
def _stop_all() -> None:
    for peer in list(_live):
        peer.stop()


class Peer:
    """What a benchmark needs of a daemon: a name, a pid, the CRI stubs."""

    name: str
    pid: int
    runtime: pb_grpc.RuntimeServiceStub
    images: pb_grpc.ImageServiceStub
    root_dir: str
    # Each daemon's own start-up and tear-down, defined by the subclass.
    _start: Callable[[], None]
    _stop: Callable[[], None]

    def pull(self, image: str, timeout: float = 300) -> str:
        req = pb.PullImageRequest(image=pb.ImageSpec(image=image))
        return self.images.PullImage(req, timeout=timeout).image_ref

    def remove(self, image: str, timeout: float = 120) -> None:
        self.images.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=image)), timeout=timeout)

    def memory(self) -> dict:
        return memory(self.pid)

    def stored_bytes(self) -> int:
        """Bytes of files under the daemon's root dir: near zero once it holds no image."""
        return tree_bytes(self.root_dir)

    def _make_workdir(self) -> str:
        # From here on the peer owns a directory that must go, so it is tracked.
        _live.add(self)
        return tempfile.mkdtemp(prefix=f"bench-{self.name}-")

    def start(self) -> Peer:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the daemon; again is harmless (a failed start stops it, then the bench's clean-up
        does, and a second removal over the closed channel would hide the start's error)."""
        _live.discard(self)
        if getattr(self, "runtime", None) is not None:
            self.remove_pods()
            del self.runtime
        self._stop()

    def remove_pods(self) -> None:
        """Remove every pod sandbox (and so container) the daemon has, so stopping it leaves no
        process, mount or cgroup behind even when a benchmark failed half-way."""
        try:
            for pod in self.runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=30).items:
                self.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod.id), timeout=60)
                self.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod.id), timeout=60)
        except grpc.RpcError as e:
            print(f"bench: could not remove the pods of {self.name}: {e.details()}", file=sys.stderr)


class Cricket(Peer):
    name = "cricket"

    def __init__(self, registries=(), extra_config: str = ""):
        self.workdir = self._make_workdir()
        config = (registry_config(*registries) if registries else "") + extra_config
        self.daemon = _QuietCricketd(self.workdir, config)
        self.root_dir = self.daemon.root

    def _start(self) -> None:
        self.daemon.start()
        # Cricketd.start() set them all.
        assert self.daemon.proc is not None and self.daemon.runtime is not None and self.daemon.images is not None
        self.pid = self.daemon.proc.pid
        self.runtime, self.images = self.daemon.runtime, self.daemon.images

    def _stop(self) -> None:
        self.daemon.stop()
        cleanup_dir(self.workdir)


class _QuietCricketd(Cricketd):
    # The test harness logs at debug level; the peer logs at its default (info), so
    # Cricket gets the same, lest formatting log lines count against it.
    def command(self) -> list[str]:
        cmd = super().command()
        cmd[cmd.index("--log-level") + 1] = "info"
        return cmd


class Containerd(Peer):
    """Debian's containerd with its CRI plugin, in its own root, state and socket.

    The config is containerd's defaults except for where it keeps things and how it
    reaches the loopback registry: crippling plugins would make the comparison unfair
    in one direction or the other."""

    name = "containerd"

    def __init__(self, registries=(), sandbox_image: str = "", cni_conf_dir: str = "", cni_bin_dir: str = ""):
        self.workdir = self._make_workdir()
        self.socket = os.path.join(self.workdir, "containerd.sock")
        self.log_path = os.path.join(self.workdir, "containerd.log")
        self.config_path = os.path.join(self.workdir, "config.toml")
        self.root_dir = os.path.join(self.workdir, "root")
        self.proc: subprocess.Popen | None = None
        self._channel: grpc.Channel | None = None
        with open(self.config_path, "w") as f:
            f.write(containerd_config(self.workdir, self.root_dir, self.socket, registries, sandbox_image,
                                      cni_conf_dir, cni_bin_dir))

    def _start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                ["containerd", "--config", self.config_path],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent,
            )
        self.pid = self.proc.pid
        self._channel = grpc.insecure_channel("unix://" + self.socket)
        self.runtime = pb_grpc.RuntimeServiceStub(self._channel)
        self.images = pb_grpc.ImageServiceStub(self._channel)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"containerd exited with {self.proc.returncode}:\n{self.log()}")
            try:
                # The CRI plugin answers "not initialized" until it is ready to work, so
                # an image call, not just Version, tells us it is up.
                self.runtime.Version(pb.VersionRequest(), timeout=1)
                self.images.ListImages(pb.ListImagesRequest(), timeout=1)
                return
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"containerd's CRI did not answer within {START_TIMEOUT}s:\n{self.log()}"
                    ) from None
                time.sleep(0.05)

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def _stop(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None
        cleanup_dir(self.workdir)
        # containerd puts pods without a cgroup parent under /k8s.io and leaves that parent behind.
        try:
            Cgroup("/k8s.io").remove(wait=False)
        except OSError as e:
            print(f"bench: left cgroup /k8s.io in place: {e}", file=sys.stderr)


def containerd_config(
    workdir: str,
    root_dir: str,
    socket: str,
    registries,
    sandbox_image: str = "",
    cni_conf_dir: str = "",
    cni_bin_dir: str = "",
    mirrors: dict[str, str] | None = None,
    state_dir: str = "",
) -> str:
    """containerd 1.6 config: everything it writes lives under workdir; each registry is
    reached over plain HTTP through a hosts.toml (the non-deprecated way), and each host in
    `mirrors` through its mirror's URL first."""
    hosts_dir = os.path.join(workdir, "certs.d")
    hosts = {reg.host: (f"http://{reg.host}", f"http://{reg.host}") for reg in registries}
    for host, mirror in (mirrors or {}).items():
        upstream = "https://registry-1.docker.io" if host == "docker.io" else f"https://{host}"
        hosts[host] = (upstream, mirror)
    for host, (server, first) in hosts.items():
        d = os.path.join(hosts_dir, host)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "hosts.toml"), "w") as f:
            f.write(f'server = "{server}"\n\n[host."{first}"]\n  capabilities = ["pull", "resolve"]\n')
    # Unless a benchmark brings a network, an empty CNI dir: the host's network config is
    # none of the benchmark's business.
    cni_dir = cni_conf_dir or os.path.join(workdir, "cni")
    os.makedirs(cni_dir, exist_ok=True)
    cni_bin = f'    bin_dir = "{cni_bin_dir}"\n' if cni_bin_dir else ""
    sandbox = f'  sandbox_image = "{sandbox_image}"\n' if sandbox_image else ""
    return f"""\
version = 2
root = "{root_dir}"
state = "{state_dir or workdir + '/state'}"
temp = "{workdir}/tmp"

[grpc]
  address = "{socket}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{workdir}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  # Adjusting OOM scores above the daemon's needs CAP_SYS_RESOURCE, which this machine lacks.
  restrict_oom_score_adj = true
{sandbox}  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
  [plugins."io.containerd.grpc.v1.cri".cni]
    conf_dir = "{cni_dir}"
{cni_bin}  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{hosts_dir}"
"""


# Looked up now, not in the forked child: gRPC's threads may hold the loader's lock at fork.
_prctl = ctypes.CDLL(None, use_errno=True).prctl
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # A benchmark killed outright (no atexit) must not leave containerd running.
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM the process we started (by its pid), SIGKILL it if it lingers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def mounts_under(path: str) -> list[str]:
    """Mount points at or below path, deepest (most recent) first."""
    path = os.path.realpath(path)
    found = []
    with open("/proc/self/mounts") as f:
        for line in f:
            # Mount points escape space, tab, newline and backslash as octal.
            point = line.split()[1].encode().decode("unicode_escape")
            if point == path or point.startswith(path + "/"):
                found.append(point)
    return found[::-1]


def cleanup_dir(path: str) -> None:
    """Unmount whatever a daemon left mounted under path, then remove it."""
    for point in mounts_under(path):
        if subprocess.run(["umount", point], capture_output=True, check=False).returncode != 0:
            # Busy: detach it now; the kernel finishes when the last user goes.
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    left = mounts_under(path)
    if left:
        print(f"bench: still mounted, not removing {path}: {left}", file=sys.stderr)
        return
    shutil.rmtree(path, ignore_errors=True)


def tree_bytes(path: str) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:
                pass
    return total


def memory(pid: int) -> dict:
    """Resident and proportional set size of one process, in KiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                out["rss_kib"] = int(line.split()[1])
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                out["pss_kib"] = int(line.split()[1])
    return out
