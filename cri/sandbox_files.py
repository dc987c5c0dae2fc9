"""The files a pod's containers share: /etc/hostname, /etc/hosts and /etc/resolv.conf."""
from __future__ import annotations

import os
import shutil
import socket

from api.runtime.v1 import api_pb2 as pb
from cri.errors import InvalidArgument

HOST_RESOLV_CONF = "/etc/resolv.conf"
HOST_HOSTS = "/etc/hosts"


def resolv_conf(dns: pb.DNSConfig) -> str:
    """resolv.conf from the pod's DNS config (kubelet has already merged in the cluster's)."""
    lines = []
    if dns.searches:
        lines.append("search " + " ".join(dns.searches))
    lines += [f"nameserver {s}" for s in dns.servers]
    if dns.options:
        lines.append("options " + " ".join(dns.options))
    return "\n".join(lines) + "\n"


def write_sandbox_files(directory: str, config: pb.PodSandboxConfig) -> str:
    """Write hostname, hosts and resolv.conf into `directory`; return the pod's hostname."""
    hostname = config.hostname or socket.gethostname()
    if "\n" in hostname or "/" in hostname:
        raise InvalidArgument(f"hostname {hostname!r} is not a valid host name")
    _write(os.path.join(directory, "hostname"), hostname + "\n")
    # As containerd does: the host's hosts file; kubelet mounts its own managed one over it for pods.
    hosts = os.path.join(directory, "hosts")
    if os.path.exists(HOST_HOSTS):
        shutil.copyfile(HOST_HOSTS, hosts)
    else:
        _write(hosts, f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n")
    resolv = os.path.join(directory, "resolv.conf")
    if config.HasField("dns_config") and (config.dns_config.servers or config.dns_config.searches
                                          or config.dns_config.options):
        _write(resolv, resolv_conf(config.dns_config))
    elif os.path.exists(HOST_RESOLV_CONF):
        shutil.copyfile(HOST_RESOLV_CONF, resolv)
    else:
        _write(resolv, "")
    return hostname


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o644)
