"""The cluster's certificates and kubeconfigs, made fresh for each cluster.

One CA signs everything, as hack/local-up-cluster.sh does: the API server's and kubelet's
serving certificates, and a client certificate per component whose common name is its
user and whose organization is its group, which the default RBAC roles already bind
(system:kube-controller-manager, system:kube-scheduler, system:kube-proxy, system:nodes …).
"""
from __future__ import annotations

import base64
import os

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.fixtures import pki
from tools.cluster import settings as s

DAYS = 30

# name -> (user, groups): the client certificates, and the kubeconfigs made from them.
CLIENTS = {
    "admin": ("kubernetes-admin", ["system:masters"]),
    "kubelet": (f"system:node:{s.NODE_NAME}", ["system:nodes"]),
    "controller-manager": ("system:kube-controller-manager", []),
    "scheduler": ("system:kube-scheduler", []),
    "kube-proxy": ("system:kube-proxy", []),
    # The API server's identity towards kubelets (exec, logs, port-forward).
    "apiserver-kubelet-client": ("kube-apiserver-kubelet-client", ["system:masters"]),
}


def pki_dir(*parts: str) -> str:
    return s.path("pki", *parts)


def make() -> None:
    """Write the CA, the serving and client certificates, the service account keys and a
    kubeconfig for each client."""
    os.makedirs(pki_dir(), mode=0o700, exist_ok=True)
    os.makedirs(s.path("kubeconfig"), mode=0o700, exist_ok=True)
    ca_key = pki.new_key()
    ca = pki.self_signed("cricket-cluster-ca", ca_key, days=DAYS)
    pki.write(pki_dir("ca.crt"), pki.pem(ca))
    pki.write(pki_dir("ca.key"), pki.key_pem(ca_key), 0o600)

    def leaf(name: str, common_name: str, **kw) -> None:
        key = pki.new_key()
        cert = pki.issue(ca, ca_key, key, common_name, days=DAYS, **kw)
        pki.write(pki_dir(f"{name}.crt"), pki.pem(cert))
        pki.write(pki_dir(f"{name}.key"), pki.key_pem(key), 0o600)

    leaf("apiserver", "kube-apiserver", server=True,
         ips=[s.NODE_IP, "127.0.0.1", s.API_SERVICE_IP],
         dns_names=["kubernetes", "kubernetes.default", "kubernetes.default.svc",
                    f"kubernetes.default.svc.{s.CLUSTER_DOMAIN}", "localhost", s.NODE_NAME])
    leaf("kubelet-serving", s.NODE_NAME, server=True, ips=[s.NODE_IP, "127.0.0.1"], dns_names=[s.NODE_NAME])
    for name, (user, groups) in CLIENTS.items():
        leaf(name, user, organizations=groups, client=True)
        write_kubeconfig(name, s.path("kubeconfig", f"{name}.kubeconfig"))

    # Service account tokens are signed with RSA: the API server's JWKS wants it.
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pki.write(pki_dir("sa.key"), pki.key_pem(sa_key), 0o600)
    pki.write(pki_dir("sa.pub"), sa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


def _b64(path: str) -> str:
    with open(path, "rb") as f:
        return base64.b64encode(f.read()).decode()


def write_kubeconfig(client: str, dest: str, server: str = s.API_URL) -> None:
    """A kubeconfig for `client`'s certificate, with everything embedded."""
    text = f"""apiVersion: v1
kind: Config
clusters:
- name: cricket
  cluster:
    server: {server}
    certificate-authority-data: {_b64(pki_dir("ca.crt"))}
users:
- name: {client}
  user:
    client-certificate-data: {_b64(pki_dir(f"{client}.crt"))}
    client-key-data: {_b64(pki_dir(f"{client}.key"))}
contexts:
- name: cricket
  context:
    cluster: cricket
    user: {client}
current-context: cricket
"""
    pki.write(dest, text.encode(), 0o600)
