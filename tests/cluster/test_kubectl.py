"""kubectl's streaming commands through the API server and kubelet to the runtime: exec (with
and without a terminal), logs (following, and the previous instance's), attach, port-forward
and cp."""
from __future__ import annotations

import os
import pty
import select
import socket
import subprocess
import time

from tests.cluster.kube import HTTPD, Kube, http_get
from tools.cluster import settings as s


def kubectl_in_a_terminal(kube: Kube, *args: str, send: bytes, until: bytes, timeout: float = 30) -> bytes:
    """Run kubectl with a terminal as its stdin and stdout (as a user's shell would), type `send`,
    and read until `until` shows up; everything it printed."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([s.binary("kubectl"), f"--kubeconfig={s.KUBECONFIG}", *args],
                            stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    out = b""

    def read_for(seconds: float, stop: bytes) -> None:
        nonlocal out
        deadline = time.monotonic() + seconds
        while stop not in out and time.monotonic() < deadline:
            if select.select([master], [], [], 0.2)[0]:
                try:
                    out += os.read(master, 4096)
                except OSError:  # the terminal's other side closed: kubectl is done
                    return

    try:
        read_for(5, b"#")  # the shell's prompt: the session is up
        os.write(master, send)
        read_for(timeout, until)
        return out
    finally:
        proc.kill()
        proc.wait()
        os.close(master)


def test_exec_with_and_without_a_terminal(kube, ns):
    kube.run_pod(ns, "shell", ["sleep", "3600"])
    kube.wait_ready(ns, "shell")
    # Without: stdin and stdout are pipes, exit codes come back.
    assert kube.exec(ns, "shell", "sh", "-c", "echo out; echo err >&2").strip() == "out"
    done = kube.kubectl("-n", ns, "exec", "shell", "--", "sh", "-c", "exit 7", check=False)
    assert done.returncode == 7
    piped = kube.kubectl("-n", ns, "exec", "-i", "shell", "--", "cat", input="through stdin\n")
    assert piped.stdout == "through stdin\n"
    # With: a terminal inside the container (tty names it), driven from a terminal outside.
    out = kubectl_in_a_terminal(kube, "-n", ns, "exec", "-it", "shell", "--", "sh",
                                send=b"tty; echo done-$((6*7))\r", until=b"done-42")
    assert b"/dev/pts/" in out and b"done-42" in out, out


def test_logs_follow_and_previous(kube, ns):
    kube.run_pod(ns, "talker", ["sh", "-c", "i=0; while [ $i -lt 3 ]; do echo line $i; i=$((i+1)); sleep 0.3; done; "
                                            "echo instance done; sleep 1; exit 1"])
    kube.wait("a first restart", lambda: kube.container_status(ns, "talker")["restartCount"] >= 1, timeout=90)
    previous = kube.kubectl("-n", ns, "logs", "talker", "--previous").stdout
    assert previous.splitlines() == ["line 0", "line 1", "line 2", "instance done"]
    # -f streams lines as they come and ends with the container.
    follow = kube.kubectl("-n", ns, "logs", "-f", "talker", timeout=60).stdout
    assert "instance done" in follow


def test_attach_reaches_the_containers_stdin_and_stdout(kube, ns):
    kube.run_pod(ns, "reader", ["sh", "-c", "while read line; do echo heard: $line; done"],
                 container={"stdin": True})
    kube.wait_ready(ns, "reader")
    proc = subprocess.Popen([s.binary("kubectl"), f"--kubeconfig={s.KUBECONFIG}", "-n", ns, "attach", "-i", "reader"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        time.sleep(2)  # the attach session up
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"hello attach\n")
        proc.stdin.flush()
        line = kube.wait("the echo through attach", lambda: b"heard" in (got := proc.stdout.readline()) and got,
                         timeout=20)
        assert line.strip() == b"heard: hello attach"
    finally:
        proc.kill()
        proc.wait()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_port_forward(kube, ns):
    kube.run_pod(ns, "web", HTTPD, container={"readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}}})
    kube.wait_ready(ns, "web")
    port = _free_port()
    proc = subprocess.Popen([s.binary("kubectl"), f"--kubeconfig={s.KUBECONFIG}", "-n", ns, "port-forward",
                             "pod/web", f"{port}:8080"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        body = kube.wait("the forwarded port answering", lambda: http_get(f"http://127.0.0.1:{port}/hostname"))
        assert body.strip() == "web"
        # Many connections through one forward.
        assert all(http_get(f"http://127.0.0.1:{port}/healthz").strip() == "ok" for _ in range(5))
    finally:
        proc.kill()
        proc.wait()


def test_cp_both_ways(kube, ns, tmp_path):
    kube.run_pod(ns, "box", ["sleep", "3600"])
    kube.wait_ready(ns, "box")
    src = tmp_path / "up.txt"
    src.write_text("from the host\n")
    kube.kubectl("-n", ns, "cp", str(src), "box:/tmp/up.txt")
    assert kube.exec(ns, "box", "cat", "/tmp/up.txt") == "from the host\n"
    kube.exec(ns, "box", "sh", "-c", "mkdir -p /tmp/d && echo from the pod > /tmp/d/down.txt")
    kube.kubectl("-n", ns, "cp", "box:/tmp/d", str(tmp_path / "d"))
    assert (tmp_path / "d" / "down.txt").read_text() == "from the pod\n"
