"""The node's container runtime: Cricket (the subject) or containerd with runc (the peer),
each configured with the node's pod network and the node's registry as the mirror of every
public registry, and each emptied of pods over CRI when the cluster goes."""
from __future__ import annotations

import os
import sys
import time

import grpc

from api.runtime.v1 import api_pb2 as pb
from api.runtime.v1 import api_pb2_grpc as pb_grpc
from bench.peers import containerd_config
from cni.install import install_plugins
from tools.cluster import components, node
from tools.cluster import settings as s

READY_SECONDS = 60.0
LOCAL_REGISTRY = f"127.0.0.1:{s.REGISTRY_PORT}"


def socket_of(runtime: str) -> str:
    return s.state(runtime, f"{runtime}.sock")


def cricket_config() -> str:
    bin_dir = s.path("cni", "bin")
    install_plugins(bin_dir)  # launchers that the network worker recognises and runs in-process
    lines = [
        f'socket = "{socket_of("cricket")}"',
        f'root_dir = "{s.path("cricket")}"',
        f'state_dir = "{s.state("cricket")}"',
        "",
        "[cni]",
        f'conf_dir = "{components.pod_network()}"',
        f'bin_dirs = ["{bin_dir}"]',
        "",
    ]
    for host in s.MIRRORED:
        lines += [f'[registries."{host}"]', f'mirrors = ["http://{LOCAL_REGISTRY}"]', ""]
    for host in (LOCAL_REGISTRY, s.REGISTRY_HOST):
        lines += [f'[registries."{host}"]', "insecure = true", ""]
    path = s.path("config", "cricket.toml")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path


class _Host:
    def __init__(self, host: str):
        self.host = host


def start(runtime: str) -> None:
    os.makedirs(s.state(runtime), exist_ok=True)
    if runtime == "cricket":
        config = cricket_config()
        node.start("runtime", [sys.executable, "-m", "cri.main", "--config", config, "--log-level", "info"],
                   cwd=s.REPO)
    elif runtime == "containerd":
        workdir = s.path("containerd")
        os.makedirs(workdir, exist_ok=True)
        config = s.path("config", "containerd.toml")
        os.makedirs(os.path.dirname(config), exist_ok=True)
        with open(config, "w") as f:
            f.write(containerd_config(
                workdir, os.path.join(workdir, "root"), socket_of("containerd"),
                [_Host(LOCAL_REGISTRY), _Host(s.REGISTRY_HOST)],
                sandbox_image="registry.k8s.io/pause:3.10",
                cni_conf_dir=components.pod_network(), cni_bin_dir="/usr/lib/cni",
                mirrors=dict.fromkeys(s.MIRRORED, f"http://{LOCAL_REGISTRY}"),
                state_dir=s.state("containerd", "state"),
            ))
        node.start("runtime", ["containerd", "--config", config])
    else:
        raise ValueError(f"unknown runtime {runtime!r}: choose from {', '.join(s.RUNTIMES)}")
    wait_ready(runtime)


def _stubs(runtime: str) -> tuple[grpc.Channel, pb_grpc.RuntimeServiceStub, pb_grpc.ImageServiceStub]:
    channel = grpc.insecure_channel(f"unix://{socket_of(runtime)}")
    return channel, pb_grpc.RuntimeServiceStub(channel), pb_grpc.ImageServiceStub(channel)


def wait_ready(runtime: str) -> str:
    """Wait until the runtime answers CRI; its name and version as kubelet will report them."""
    channel, rt, images = _stubs(runtime)
    deadline = time.monotonic() + READY_SECONDS
    try:
        while True:
            if not node.running("runtime"):
                raise RuntimeError(f"{runtime} exited at start:\n{node.log_tail('runtime')}")
            try:
                version = rt.Version(pb.VersionRequest(), timeout=2)
                images.ListImages(pb.ListImagesRequest(), timeout=2)  # containerd's CRI is up only then
                return f"{version.runtime_name}://{version.runtime_version}"
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{runtime} did not answer CRI within {READY_SECONDS:.0f}s:\n"
                                       f"{node.log_tail('runtime')}") from None
                time.sleep(0.2)
    finally:
        channel.close()


def remove_all_pods(runtime: str) -> list[str]:
    """Stop and remove every pod sandbox (and so every container) the runtime has; what failed."""
    if not node.running("runtime"):
        return []
    channel, rt, _ = _stubs(runtime)
    problems = []
    try:
        for pod in rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=30).items:
            try:
                rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod.id), timeout=120)
                rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod.id), timeout=120)
            except grpc.RpcError as e:
                problems.append(f"pod {pod.metadata.namespace}/{pod.metadata.name}: {e.details()}")
    except grpc.RpcError as e:
        problems.append(f"listing pods: {e.details()}")
    finally:
        channel.close()
    return problems
