"""Driving pods and containers of a real cricketd over CRI, as kubelet and crictl do."""
from __future__ import annotations

import contextlib
import os
import re
import secrets
import time

import grpc

from api.runtime.v1 import api_pb2 as pb
from cri import oci_spec
from tests.daemon import Cricketd, need_root

# A CRI log line: RFC 3339 nanosecond timestamp, stream, P or F, content.
LOG_LINE = re.compile(rb"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z) (stdout|stderr) ([PF]) (.*)$")


class Pods:
    """Pods and containers on one daemon; remove_all() takes down whatever a test left."""

    def __init__(self, daemon: Cricketd, log_dir: str):
        self.d = daemon
        self.log_dir = log_dir

    @property
    def rt(self):
        return self.d.runtime

    def pod_config(self, name: str | None = None, *, pid=pb.CONTAINER, network=pb.POD, ipc=pb.POD,
                   hostname: str = "", labels=None, attempt: int = 0, uid: str | None = None,
                   dns: pb.DNSConfig | None = None) -> pb.PodSandboxConfig:
        name = name or "pod-" + secrets.token_hex(3)
        uid = uid or secrets.token_hex(8)
        config = pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=name, namespace="cricket-test", uid=uid, attempt=attempt),
            hostname=hostname or name, log_directory=os.path.join(self.log_dir, uid), labels=labels or {},
            linux=pb.LinuxPodSandboxConfig(security_context=pb.LinuxSandboxSecurityContext(
                namespace_options=pb.NamespaceOption(network=network, pid=pid, ipc=ipc))),
        )
        if dns is not None:
            config.dns_config.CopyFrom(dns)
        return config

    def run_pod(self, config: pb.PodSandboxConfig | None = None, **kw) -> str:
        config = config or self.pod_config(**kw)
        return self.rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config)).pod_sandbox_id

    def pod_status(self, pod: str, verbose: bool = False) -> pb.PodSandboxStatusResponse:
        return self.rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod, verbose=verbose))

    def container_config(self, image: str, command=(), *, name: str | None = None, args=(), attempt: int = 0,
                         pid=pb.CONTAINER, ipc=pb.POD, env=None, labels=None, mounts=(), tty=False,
                         stdin=False, working_dir: str = "", security=None,
                         proc_mount: str = "Default") -> pb.ContainerConfig:
        """A container as kubelet asks for one. kubelet always sends the masked and read-only
        /proc paths: its default lists for procMount Default (unless privileged or the context
        has its own), none for Unmasked."""
        name = name or "ctr-" + secrets.token_hex(3)
        ctx = security or pb.LinuxContainerSecurityContext()
        if proc_mount == "Default" and not ctx.privileged and not ctx.masked_paths and not ctx.readonly_paths:
            ctx.masked_paths.extend(oci_spec.MASKED_PATHS)
            ctx.readonly_paths.extend(oci_spec.READONLY_PATHS)
        ctx.namespace_options.pid = pid
        ctx.namespace_options.ipc = ipc
        return pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name=name, attempt=attempt), image=pb.ImageSpec(image=image),
            command=list(command), args=list(args), working_dir=working_dir,
            envs=[pb.KeyValue(key=k, value=v.encode()) for k, v in (env or {}).items()], labels=labels or {},
            mounts=list(mounts), log_path=f"{name}_{attempt}.log", tty=tty, stdin=stdin,
            linux=pb.LinuxContainerConfig(security_context=ctx),
        )

    def create(self, pod: str, config: pb.ContainerConfig) -> str:
        sandbox = self.pod_status(pod).status
        sconfig = pb.PodSandboxConfig(metadata=sandbox.metadata)
        req = pb.CreateContainerRequest(pod_sandbox_id=pod, config=config, sandbox_config=sconfig)
        return self.rt.CreateContainer(req).container_id

    def start(self, cid: str) -> None:
        self.rt.StartContainer(pb.StartContainerRequest(container_id=cid))

    def run(self, pod: str, image: str, command=(), **kw) -> str:
        cid = self.create(pod, self.container_config(image, command, **kw))
        self.start(cid)
        return cid

    def status(self, cid: str, verbose: bool = False) -> pb.ContainerStatusResponse:
        return self.rt.ContainerStatus(pb.ContainerStatusRequest(container_id=cid, verbose=verbose))

    def state(self, cid: str) -> int:
        return self.status(cid).status.state

    def wait_exited(self, cid: str, timeout: float = 15) -> pb.ContainerStatus:
        deadline = time.monotonic() + timeout
        while True:
            status = self.status(cid).status
            if status.state == pb.CONTAINER_EXITED:
                return status
            if time.monotonic() > deadline:
                raise AssertionError(f"container {cid} still {pb.ContainerState.Name(status.state)} after {timeout}s")
            time.sleep(0.02)

    def exec(self, cid: str, cmd, timeout: int = 10) -> pb.ExecSyncResponse:
        return self.rt.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=list(cmd), timeout=timeout))

    def sh(self, cid: str, script: str) -> str:
        """Run a shell script in the container; its stdout, after checking it exited 0."""
        out = self.exec(cid, ["sh", "-c", script])
        assert out.exit_code == 0, f"{script!r} exited {out.exit_code}: {out.stderr.decode(errors='replace')}"
        return out.stdout.decode()

    def stop(self, cid: str, timeout: int = 0) -> None:
        self.rt.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=timeout))

    def remove(self, cid: str) -> None:
        self.rt.RemoveContainer(pb.RemoveContainerRequest(container_id=cid))

    def stop_pod(self, pod: str) -> None:
        self.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod))

    def remove_pod(self, pod: str) -> None:
        self.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod))

    def log_lines(self, cid: str) -> list[tuple[str, str, bytes]]:
        """(stream, tag, content) of each line of the container's CRI log, checking the format."""
        path = self.status(cid).status.log_path
        out = []
        with open(path, "rb") as f:
            for line in f.read().splitlines():
                m = LOG_LINE.match(line)
                assert m, f"not a CRI log line: {line!r}"
                out.append((m.group(2).decode(), m.group(3).decode(), m.group(4)))
        return out

    def remove_all(self) -> None:
        """Remove every pod (and so every container) of the daemon, whatever state it is in."""
        if self.d.proc is None:
            return
        try:
            for pod in self.rt.ListPodSandbox(pb.ListPodSandboxRequest()).items:
                self.remove_pod(pod.id)
            for c in self.rt.ListContainers(pb.ListContainersRequest()).containers:
                self.remove(c.id)
        except grpc.RpcError:
            pass


def rpc_error(fn, *args, **kw) -> grpc.RpcError:
    try:
        fn(*args, **kw)
    except grpc.RpcError as e:
        return e
    raise AssertionError(f"{getattr(fn, '__name__', fn)} did not fail")


@contextlib.contextmanager
def serving(workdir: str, config: str = "", images=()):
    """A started cricketd with `images` pulled. Afterwards, even after a failure, its pods are
    removed (it is started again first if a test left it stopped) and it stops."""
    need_root()
    d = Cricketd(workdir, config).start()
    try:
        for ref in images:
            d.pull(ref)
        yield d
    finally:
        try:
            if d.proc is None:
                d.start()
            Pods(d, "").remove_all()
        finally:
            d.stop()
