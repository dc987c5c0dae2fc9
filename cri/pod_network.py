"""A pod's network: CNI ADD when its sandbox is made, CNI DEL when it stops."""
from __future__ import annotations

from api.runtime.v1 import api_pb2 as pb
from cni.spec import CniError, result_ips
from cri.errors import RuntimeFailure
from cri.records import SandboxRecord
from cri.runtime import Runtime

POD_INTERFACE = "eth0"


def _runtime_config(config: pb.PodSandboxConfig) -> dict:
    """The CNI capability arguments: the pod's host ports and DNS."""
    out: dict = {}
    ports = [{"hostPort": m.host_port, "containerPort": m.container_port,
              "protocol": pb.Protocol.Name(m.protocol).lower(), "hostIP": m.host_ip}
             for m in config.port_mappings if m.host_port > 0]
    if ports:
        out["portMappings"] = ports
    dns = config.dns_config
    if dns.servers or dns.searches or dns.options:
        out["dns"] = {"servers": list(dns.servers), "searches": list(dns.searches), "options": list(dns.options)}
    return out


def _cni_args(rec: SandboxRecord, config: pb.PodSandboxConfig) -> dict[str, str]:
    # What kubelet's runtimes pass, for plugins that tell pods apart by name.
    meta = config.metadata
    return {"IgnoreUnknown": "1", "K8S_POD_NAMESPACE": meta.namespace, "K8S_POD_NAME": meta.name,
            "K8S_POD_INFRA_CONTAINER_ID": rec.id, "K8S_POD_UID": meta.uid}


async def attach_network(rt: Runtime, rec: SandboxRecord, config: pb.PodSandboxConfig) -> list[str]:
    try:
        result = await rt.network.add(rec.id, rec.netns, POD_INTERFACE, _runtime_config(config),
                                      _cni_args(rec, config))
    except CniError as e:
        raise RuntimeFailure(f"setting up the network of pod sandbox {rec.id}: {e}") from None
    return result_ips(result, POD_INTERFACE)


async def detach_network(rt: Runtime, rec: SandboxRecord) -> None:
    """CNI DEL for the pod; a no-op when it has no network set up (or had it torn down)."""
    try:
        await rt.network.delete(rec.id, rec.netns, POD_INTERFACE)
    except CniError as e:
        raise RuntimeFailure(f"tearing down the network of pod sandbox {rec.id}: {e}") from None
