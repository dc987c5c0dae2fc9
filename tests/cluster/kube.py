"""What the cluster tests need of Kubernetes: kubectl against the test cluster, JSON reads,
waits, and crictl against the node's runtime. Everything goes through the real tools a user
would type."""
from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request

from tools.cluster import runtimes
from tools.cluster import settings as s

BUSYBOX = "docker.io/library/busybox:1.36.1"
BUSYBOX_V2 = "docker.io/library/busybox:1.37.0"
WAIT_SECONDS = 120.0

# A container that serves files over HTTP on 8080: /www/healthz says ok.
HTTPD = ["sh", "-c", "mkdir -p /www && echo ok > /www/healthz && hostname > /www/hostname && "
         "exec httpd -f -p 8080 -h /www"]


class KubeError(AssertionError):
    pass


class Kube:
    def __init__(self, runtime: str):
        self.runtime = runtime

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = WAIT_SECONDS) -> subprocess.CompletedProcess:
        done = subprocess.run([s.binary("kubectl"), f"--kubeconfig={s.KUBECONFIG}", *args], input=input,
                              capture_output=True, text=True, timeout=timeout, check=False)
        if check and done.returncode:
            raise KubeError(f"kubectl {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
        return done

    def get(self, *args: str) -> dict:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def apply(self, manifest: str, namespace: str = "") -> None:
        self.kubectl(*(["-n", namespace] if namespace else []), "apply", "-f", "-", input=manifest)

    def crictl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        sock = f"unix://{runtimes.socket_of(self.runtime)}"
        done = subprocess.run([s.binary("crictl"), "--runtime-endpoint", sock, "--image-endpoint", sock, *args],
                              capture_output=True, text=True, timeout=60, check=False)
        if check and done.returncode:
            raise KubeError(f"crictl {' '.join(args)} failed: {done.stderr.strip()}")
        return done

    # -- waiting --------------------------------------------------------------------

    @staticmethod
    def wait(what: str, ready, timeout: float = WAIT_SECONDS, interval: float = 0.5):
        """Poll ready() until it returns something truthy; that value."""
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            try:
                value = ready()
                if value:
                    return value
            except (AssertionError, OSError, KeyError, IndexError, ValueError) as e:
                last_error = e
            time.sleep(interval)
        cause = f": {last_error}" if last_error else ""
        raise KubeError(f"timed out after {timeout:.0f}s waiting for {what}{cause}")

    def pod(self, ns: str, name: str) -> dict:
        return self.get("-n", ns, "pod", name)

    def wait_phase(self, ns: str, name: str, *phases: str, timeout: float = WAIT_SECONDS) -> dict:
        return self.wait(f"pod {ns}/{name} in {'/'.join(phases)}",
                         lambda: (p := self.pod(ns, name))["status"].get("phase") in phases and p, timeout)

    def wait_ready(self, ns: str, name: str, timeout: float = WAIT_SECONDS) -> dict:
        def ready():
            p = self.pod(ns, name)
            conditions = {c["type"]: c["status"] for c in p["status"].get("conditions", [])}
            return conditions.get("Ready") == "True" and p
        return self.wait(f"pod {ns}/{name} Ready", ready, timeout)

    def container_status(self, ns: str, pod: str, container: str = "") -> dict:
        statuses = self.pod(ns, pod)["status"].get("containerStatuses", [])
        for c in statuses:
            if not container or c["name"] == container:
                return c
        # KeyError, which wait() takes for "not yet": a pod just made has no statuses until
        # kubelet has seen it.
        raise KeyError(f"pod {ns}/{pod} has no status of container {container or '(any)'} yet")

    def events(self, ns: str, name: str) -> list[dict]:
        items = self.get("-n", ns, "events", "--field-selector", f"involvedObject.name={name}")["items"]
        return items

    def event_messages(self, ns: str, name: str) -> str:
        return "\n".join(f"{e.get('reason')}: {e.get('message')}" for e in self.events(ns, name))

    def exec(self, ns: str, pod: str, *cmd: str, container: str = "", check: bool = True) -> str:
        args = ["-n", ns, "exec", pod, *(["-c", container] if container else []), "--", *cmd]
        return self.kubectl(*args, check=check).stdout

    def run_pod(self, ns: str, name: str, command: list[str], image: str = BUSYBOX, **spec) -> dict:
        """Create a one-container pod from a dict spec (merged over the defaults); its manifest."""
        container = {"name": "main", "image": image, "command": command, **spec.pop("container", {})}
        manifest = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
                    "spec": {"containers": [container], "terminationGracePeriodSeconds": 2, **spec}}
        self.apply(json.dumps(manifest))
        return manifest


def http_get(url: str, timeout: float = 5) -> str:
    """A GET from the host (the test process), as an operator's curl would do it."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.read().decode()


def cgroup_dir(controller: str, *parts: str) -> str:
    """A path in the v1 hierarchy that has `controller` (mounted alone, or with others: cpu,cpuacct)."""
    hierarchy = next((h for h in sorted(os.listdir("/sys/fs/cgroup")) if controller in h.split(",")), controller)
    return os.path.join("/sys/fs/cgroup", hierarchy, *parts)
