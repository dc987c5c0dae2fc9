"""The pod and container securityContext as kubelet turns it into CRI and the runtime enforces
it: users, runAsNonRoot, a read-only root, capabilities, seccomp RuntimeDefault, privileged."""
from __future__ import annotations

CAP_NET_ADMIN, CAP_CHOWN, CAP_SYS_ADMIN = 12, 0, 21


def status_field(kube, ns: str, pod: str, field: str) -> str:
    for line in kube.exec(ns, pod, "cat", "/proc/self/status").splitlines():
        if line.startswith(field + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {field} in /proc/self/status")


def test_run_as_user_and_group(kube, ns):
    kube.run_pod(ns, "user", ["sleep", "3600"],
                 securityContext={"runAsUser": 1234, "runAsGroup": 5678, "supplementalGroups": [4242]})
    kube.wait_ready(ns, "user")
    assert kube.exec(ns, "user", "id", "-u").strip() == "1234"
    assert kube.exec(ns, "user", "id", "-g").strip() == "5678"
    assert "4242" in kube.exec(ns, "user", "id", "-G").split()


def test_run_as_non_root_refuses_a_root_image(kube, ns):
    kube.run_pod(ns, "rooty", ["sleep", "3600"], container={"securityContext": {"runAsNonRoot": True}})
    reason = kube.wait("the refusal", lambda: (kube.container_status(ns, "rooty")["state"].get("waiting") or {})
                       .get("reason") == "CreateContainerConfigError" and kube.event_messages(ns, "rooty"))
    assert "non-root" in reason or "runAsNonRoot" in reason, reason
    # With a user, the same is fine.
    kube.run_pod(ns, "nonroot", ["sleep", "3600"], container={"securityContext": {"runAsNonRoot": True,
                                                                                  "runAsUser": 1000}})
    kube.wait_ready(ns, "nonroot")


def test_read_only_root_filesystem(kube, ns):
    kube.run_pod(ns, "ro", ["sleep", "3600"], volumes=[{"name": "tmp", "emptyDir": {}}],
                 container={"securityContext": {"readOnlyRootFilesystem": True},
                            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}]})
    kube.wait_ready(ns, "ro")
    denied = kube.kubectl("-n", ns, "exec", "ro", "--", "touch", "/x", check=False)
    assert denied.returncode != 0 and "Read-only file system" in denied.stderr + denied.stdout
    kube.exec(ns, "ro", "touch", "/tmp/x")  # a volume stays writable


def test_capabilities_added_and_dropped(kube, ns):
    kube.run_pod(ns, "caps", ["sleep", "3600"], container={"securityContext": {
        "capabilities": {"add": ["NET_ADMIN"], "drop": ["CHOWN"]}}})
    kube.run_pod(ns, "nocaps", ["sleep", "3600"], container={"securityContext": {"capabilities": {"drop": ["ALL"]}}})
    kube.wait_ready(ns, "caps")
    kube.wait_ready(ns, "nocaps")
    effective = int(status_field(kube, ns, "caps", "CapEff"), 16)
    assert effective & (1 << CAP_NET_ADMIN) and not effective & (1 << CAP_CHOWN)
    assert not effective & (1 << CAP_SYS_ADMIN)
    assert int(status_field(kube, ns, "nocaps", "CapEff"), 16) == 0
    assert kube.kubectl("-n", ns, "exec", "nocaps", "--", "chown", "1", "/tmp", check=False).returncode != 0


def test_seccomp_runtime_default(kube, ns):
    kube.run_pod(ns, "filtered", ["sleep", "3600"], securityContext={"seccompProfile": {"type": "RuntimeDefault"}})
    kube.run_pod(ns, "unconfined", ["sleep", "3600"], securityContext={"seccompProfile": {"type": "Unconfined"}})
    kube.wait_ready(ns, "filtered")
    kube.wait_ready(ns, "unconfined")
    assert status_field(kube, ns, "filtered", "Seccomp") == "2"  # SECCOMP_MODE_FILTER
    assert status_field(kube, ns, "unconfined", "Seccomp") == "0"
    # The default profile refuses what it must (a user namespace, for one) where unconfined allows it.
    refused = kube.kubectl("-n", ns, "exec", "filtered", "--", "unshare", "-U", "true", check=False)
    assert refused.returncode != 0 and "Operation not permitted" in refused.stderr + refused.stdout
    kube.exec(ns, "unconfined", "unshare", "-U", "true")


def test_privileged(kube, ns):
    kube.run_pod(ns, "priv", ["sleep", "3600"], container={"securityContext": {"privileged": True}})
    kube.run_pod(ns, "plain", ["sleep", "3600"])
    kube.wait_ready(ns, "priv")
    kube.wait_ready(ns, "plain")
    assert int(status_field(kube, ns, "priv", "CapEff"), 16) & (1 << CAP_SYS_ADMIN)
    # The host's devices are there.
    assert len(kube.exec(ns, "priv", "ls", "/dev").split()) > len(kube.exec(ns, "plain", "ls", "/dev").split())
    if kube.runtime == "cricket":
        # And /sys is writable, as Docker gives a privileged container. (containerd 1.6 with runc
        # mounts it read-only in a pod network namespace; Kubernetes promises neither.)
        assert "rw" in next(line for line in kube.exec(ns, "priv", "cat", "/proc/mounts").splitlines()
                            if line.split()[1] == "/sys").split()[3].split(",")
