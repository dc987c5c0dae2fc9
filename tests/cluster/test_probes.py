"""Probes as kubelet runs them: exec ones through the runtime's ExecSync, httpGet and tcpSocket
ones against the pod's address; liveness restarts, readiness gates traffic, startup holds the
others back."""
from __future__ import annotations

import pytest

# Serves /www on 8080 from a child of the container's PID 1 (a shell that never ends), so that
# killing httpd closes the port without ending the container.
SERVING = "mkdir -p /www && echo ok > /www/healthz && httpd -f -p 8080 -h /www & "
FOREVER = "while :; do sleep 1; done"

HANDLERS = {
    "exec": {"exec": {"command": ["cat", "/www/healthz"]}},
    "httpGet": {"httpGet": {"path": "/healthz", "port": 8080}},
    "tcpSocket": {"tcpSocket": {"port": 8080}},
}
FAST = {"periodSeconds": 1, "failureThreshold": 1, "timeoutSeconds": 2}


@pytest.mark.parametrize("kind", sorted(HANDLERS))
def test_readiness_follows_the_probe(kube, ns, kind):
    kube.run_pod(ns, "ready", ["sh", "-c", SERVING + FOREVER], container={"readinessProbe": {**HANDLERS[kind], **FAST}})
    kube.wait_ready(ns, "ready")
    # exec and httpGet fail once the file is gone; tcpSocket once nothing listens.
    kube.exec(ns, "ready", "sh", "-c", "rm /www/healthz; killall httpd")
    kube.wait("readiness lost", lambda: not any(
        c["type"] == "Ready" and c["status"] == "True" for c in kube.pod(ns, "ready")["status"]["conditions"]))
    assert kube.container_status(ns, "ready")["restartCount"] == 0  # readiness never restarts


@pytest.mark.parametrize("kind", sorted(HANDLERS))
def test_a_failing_liveness_probe_restarts_the_container_keeping_its_previous_log(kube, ns, kind):
    # Alive for a while, then it stops passing: kubelet must restart it, again and again.
    script = "echo instance $(cat /proc/uptime); " + SERVING + "(sleep 3; rm /www/healthz; killall httpd) & " + FOREVER
    kube.run_pod(ns, "live", ["sh", "-c", script], container={"livenessProbe": {**HANDLERS[kind], **FAST}})
    kube.wait("two restarts", lambda: kube.container_status(ns, "live")["restartCount"] >= 2, timeout=120)
    previous = kube.kubectl("-n", ns, "logs", "live", "--previous").stdout
    assert previous.startswith("instance "), previous
    events = kube.event_messages(ns, "live")
    assert "Liveness probe failed" in events or "Unhealthy" in events, events


@pytest.mark.parametrize("kind", sorted(HANDLERS))
def test_startup_probe_holds_liveness_until_it_passes(kube, ns, kind):
    # Starts slowly (6 s); a liveness probe that would fail meanwhile must not restart it.
    script = "sleep 6; mkdir -p /www && echo ok > /www/healthz && exec httpd -f -p 8080 -h /www"
    kube.run_pod(ns, "slow", ["sh", "-c", script], container={
        "startupProbe": {**HANDLERS[kind], "periodSeconds": 1, "failureThreshold": 30},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, **FAST},
        "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
    })
    kube.wait_ready(ns, "slow", timeout=60)
    status = kube.container_status(ns, "slow")
    assert status["restartCount"] == 0 and status["started"] is True
    events = kube.event_messages(ns, "slow")
    assert "Startup probe failed" in events, events  # it did hold the others back for a while
