"""Pods on the network as a cluster uses it: pod to pod, Services through kube-proxy (ClusterIP
from a pod, NodePort from the host), names through the DNS add-on, and hostPorts."""
from __future__ import annotations

import json

from tests.cluster.kube import HTTPD, Kube, http_get
from tools.cluster import settings as s


def serve(kube: Kube, ns: str, name: str, **spec) -> str:
    """A pod serving HTTP on 8080 (labelled app=name); its IP once Ready."""
    kube.apply(json.dumps({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
            "name": "web", "image": "docker.io/library/busybox:1.36.1", "command": HTTPD,
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1},
            **spec,
        }]},
    }), ns)
    return kube.wait_ready(ns, name)["status"]["podIP"]


def client(kube: Kube, ns: str) -> str:
    kube.run_pod(ns, "client", ["sleep", "3600"])
    kube.wait_ready(ns, "client")
    return "client"


def fetch(kube: Kube, ns: str, pod: str, host: str, port: int, path: str = "/hostname") -> str:
    """An HTTP GET from inside `pod` (busybox's wget crashes resolving names, so: nc)."""
    request = f"GET {path} HTTP/1.0\\r\\nHost: {host}\\r\\n\\r\\n"
    out = kube.exec(ns, pod, "sh", "-c", f"printf '{request}' | nc -w 5 {host} {port}")
    head, _, body = out.replace("\r\n", "\n").partition("\n\n")  # kubectl's text: line ends may be either
    assert head.startswith("HTTP/1.") and " 200 " in head.splitlines()[0], out
    return body.strip()


def service(kube: Kube, ns: str, name: str, **spec) -> dict:
    kube.apply(json.dumps({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
        "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 8080}], **spec},
    }), ns)
    return kube.get("-n", ns, "service", name)


def test_pod_to_pod_and_clusterip_service(kube, ns):
    ip = serve(kube, ns, "web")
    client(kube, ns)
    assert fetch(kube, ns, "client", ip, 8080) == "web"
    svc = service(kube, ns, "web")
    # kube-proxy's rules may land a moment after the Service: retry until they do.
    answer = kube.wait("the ClusterIP answering", lambda: fetch(kube, ns, "client", svc["spec"]["clusterIP"], 80))
    assert answer == "web"


def test_service_names_resolve_through_cluster_dns(kube, ns):
    serve(kube, ns, "named")
    svc = service(kube, ns, "named")
    client(kube, ns)
    fqdn = f"named.{ns}.svc.{s.CLUSTER_DOMAIN}"
    answer = kube.wait("the Service's name in DNS",
                       lambda: svc["spec"]["clusterIP"] in (out := kube.exec(ns, "client", "nslookup", fqdn)) and out)
    assert fqdn in answer
    # The pod asks the cluster's DNS, with the search path for short names (busybox's nslookup
    # does not search, so the path is checked as kubelet and the runtime wrote it).
    resolv = kube.exec(ns, "client", "cat", "/etc/resolv.conf")
    assert f"nameserver {s.DNS_SERVICE_IP}" in resolv and f"search {ns}.svc.{s.CLUSTER_DOMAIN}" in resolv


def test_nodeport_from_the_host(kube, ns):
    serve(kube, ns, "np")
    svc = service(kube, ns, "np", type="NodePort")
    port = svc["spec"]["ports"][0]["nodePort"]
    assert kube.wait("the NodePort answering", lambda: http_get(f"http://{s.NODE_IP}:{port}/hostname")).strip() == "np"


def test_host_port_from_the_host(kube, ns):
    serve(kube, ns, "hp", ports=[{"containerPort": 8080, "hostPort": 30123, "protocol": "TCP"}])
    assert kube.wait("the hostPort answering", lambda: http_get(f"http://{s.NODE_IP}:30123/hostname")).strip() == "hp"
