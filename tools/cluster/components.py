"""The cluster's components: their command lines and configuration files, written the way
hack/local-up-cluster.sh configures them, on the node's address and the runtime's socket."""
from __future__ import annotations

import json
import os
from typing import Any

from tools.cluster import settings as s
from tools.cluster.pki import pki_dir


def _write(path: str, text: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return path


def registry() -> list[str]:
    """Debian's docker-registry on the node: 127.0.0.1:5001 to the runtime, NODE_IP:5001 to the host."""
    config = _write(s.path("registry", "config.yml"), f"""version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {s.path("registry", "data")}
  delete:
    enabled: true
http:
  addr: 0.0.0.0:{s.REGISTRY_PORT}
""")
    return ["docker-registry", "serve", config]


def etcd() -> list[str]:
    peer = "http://127.0.0.1:2380"
    return [
        s.binary("etcd"), "--name", s.NODE_NAME, "--data-dir", s.path("etcd"),
        "--listen-client-urls", f"http://127.0.0.1:{s.ETCD_PORT}",
        "--advertise-client-urls", f"http://127.0.0.1:{s.ETCD_PORT}",
        "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
        "--initial-cluster", f"{s.NODE_NAME}={peer}",
        # A test cluster on one disk shared with its workloads: no fsync per write.
        "--unsafe-no-fsync", "--log-level", "warn",
    ]


def kube_apiserver() -> list[str]:
    return [
        s.binary("kube-apiserver"),
        f"--etcd-servers=http://127.0.0.1:{s.ETCD_PORT}",
        "--bind-address=0.0.0.0", f"--secure-port={s.API_PORT}", f"--advertise-address={s.NODE_IP}",
        f"--service-cluster-ip-range={s.SERVICE_CIDR}",
        f"--tls-cert-file={pki_dir('apiserver.crt')}", f"--tls-private-key-file={pki_dir('apiserver.key')}",
        f"--client-ca-file={pki_dir('ca.crt')}",
        f"--kubelet-client-certificate={pki_dir('apiserver-kubelet-client.crt')}",
        f"--kubelet-client-key={pki_dir('apiserver-kubelet-client.key')}",
        f"--kubelet-certificate-authority={pki_dir('ca.crt')}",
        "--kubelet-preferred-address-types=InternalIP",
        f"--service-account-key-file={pki_dir('sa.pub')}",
        f"--service-account-signing-key-file={pki_dir('sa.key')}",
        "--service-account-issuer=https://kubernetes.default.svc",
        "--authorization-mode=Node,RBAC", "--allow-privileged=true",
        f"--cert-dir={pki_dir('generated')}",
        "--v=1",
    ]


def kube_controller_manager() -> list[str]:
    kubeconfig = s.path("kubeconfig", "controller-manager.kubeconfig")
    return [
        s.binary("kube-controller-manager"),
        f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        f"--service-account-private-key-file={pki_dir('sa.key')}", f"--root-ca-file={pki_dir('ca.crt')}",
        f"--cluster-signing-cert-file={pki_dir('ca.crt')}", f"--cluster-signing-key-file={pki_dir('ca.key')}",
        "--use-service-account-credentials=true", "--leader-elect=false", "--bind-address=127.0.0.1",
        f"--service-cluster-ip-range={s.SERVICE_CIDR}",
        "--v=1",
    ]


def kube_scheduler() -> list[str]:
    kubeconfig = s.path("kubeconfig", "scheduler.kubeconfig")
    return [
        s.binary("kube-scheduler"), f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}", "--leader-elect=false", "--bind-address=127.0.0.1", "--v=1",
    ]


def kubelet_config(socket: str, overrides: dict | None = None) -> dict:
    """KubeletConfiguration for the node (overrides merge over it: tests turn features on)."""
    config: dict[str, Any] = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": s.NODE_IP,
        "port": s.KUBELET_PORT,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "containerRuntimeEndpoint": f"unix://{socket}",
        "imageServiceEndpoint": f"unix://{socket}",
        # cgroupfs, as Cricket drives cgroups itself; this hybrid host still has v1 controllers.
        "cgroupDriver": "cgroupfs",
        "failCgroupV1": False,
        "failSwapOn": False,
        "clusterDNS": [s.DNS_SERVICE_IP],
        "clusterDomain": s.CLUSTER_DOMAIN,
        "resolvConf": s.path("config", "resolv.conf"),
        "podLogsDir": s.path("pod-logs"),
        "tlsCertFile": pki_dir("kubelet-serving.crt"),
        "tlsPrivateKeyFile": pki_dir("kubelet-serving.key"),
        "authentication": {"x509": {"clientCAFile": pki_dir("ca.crt")}, "webhook": {"enabled": True},
                           "anonymous": {"enabled": False}},
        "authorization": {"mode": "Webhook"},
        "serializeImagePulls": False,
        "maxPods": 110,
        # The host's disk is shared with everything else on it: evict only when it is truly full.
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%",
                         "nodefs.inodesFree": "1%"},
        "imageGCHighThresholdPercent": 99,
        "imageGCLowThresholdPercent": 98,
        "runtimeRequestTimeout": "2m",
        "featureGates": {},
    }
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


def kubelet(socket: str, overrides: dict | None = None) -> list[str]:
    # A KubeletConfiguration is YAML, and JSON is YAML.
    config = _write(s.path("config", "kubelet.yaml"), json.dumps(kubelet_config(socket, overrides), indent=2))
    # Pods with dnsPolicy Default get this: no server past the machine to ask.
    _write(s.path("config", "resolv.conf"), f"nameserver {s.HOST_IP}\n")
    return [
        s.binary("kubelet"), f"--config={config}",
        f"--kubeconfig={s.path('kubeconfig', 'kubelet.kubeconfig')}",
        f"--root-dir={s.path('kubelet')}", f"--hostname-override={s.NODE_NAME}", f"--node-ip={s.NODE_IP}",
        "--v=2",
    ]


def kube_proxy() -> list[str]:
    config = _write(s.path("config", "kube-proxy.yaml"), json.dumps({
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": s.path("kubeconfig", "kube-proxy.kubeconfig")},
        "hostnameOverride": s.NODE_NAME,
        "mode": "iptables",
        "clusterCIDR": s.POD_CIDR,
        "bindAddress": s.NODE_IP,
        "healthzBindAddress": "127.0.0.1:10256",
        "metricsBindAddress": "127.0.0.1:10249",
        # Leave the host's conntrack table size alone (its sysctl is not the node's to set).
        "conntrack": {"maxPerCore": 0, "min": 0},
    }, indent=2))
    return [s.binary("kube-proxy"), f"--config={config}", "--v=1"]


def pod_network() -> str:
    """The node's CNI network: a bridge on the pod CIDR, then portmap, then loopback. The same
    conflist runs Cricket's plugins and, for containerd, the reference plugins."""
    conf = {
        "cniVersion": "1.0.0",
        "name": "cricket-cluster",
        "plugins": [
            {"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": True, "hairpinMode": True,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": s.POD_CIDR}]],
                      "routes": [{"dst": "0.0.0.0/0"}], "dataDir": s.path("cni", "ipam")}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
            {"type": "loopback"},
        ],
    }
    conf_dir = s.path("cni", "net.d")
    _write(os.path.join(conf_dir, "10-cluster.conflist"), json.dumps(conf, indent=2) + "\n")
    return conf_dir
