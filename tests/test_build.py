"""`cricket build`, `commit`, `export` and `import` against a real cricketd: the Dockerfile's steps
run on Cricket's own executor, the images they make run as pods, and hostile input is refused."""
from __future__ import annotations

import functools
import http.server
import io
import json
import os
import stat
import subprocess
import sys
import tarfile
import textwrap
import threading
import time

import pytest

from cri.build.run_step import cgroup_parent
from tests.daemon import registry_config
from tests.pods import Pods, serving


@pytest.fixture(scope="module")
def daemon(registry, tmp_path_factory):
    with serving(str(tmp_path_factory.mktemp("cricketd")), registry_config(registry)) as d:
        yield d


@pytest.fixture
def base(daemon, registry, test_images):
    ref = test_images["busybox"].reference(registry)
    daemon.pull(ref)
    return ref


def cricket(daemon, *args, check=True, timeout=300) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "cli.main", "--socket", daemon.socket, *args],
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def context(tmp_path, dockerfile: str, files: dict[str, str | bytes] | None = None) -> str:
    root = tmp_path / "context"
    root.mkdir(exist_ok=True)
    (root / "Dockerfile").write_text(textwrap.dedent(dockerfile))
    for name, data in (files or {}).items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
    return str(root)


def build(daemon, ctx: str, *args, check=True) -> subprocess.CompletedProcess:
    return cricket(daemon, "build", *args, ctx, check=check)


def inspect(daemon, image: str) -> dict:
    return json.loads(cricket(daemon, "inspect", image).stdout)[0]


def run_in_pod(daemon, tmp_path, image: str) -> str:
    """Run the image's container as the image says, in a pod, until it exits; its output."""
    pods = Pods(daemon, str(tmp_path / "logs"))
    try:
        cid = pods.run(pods.run_pod(), image)
        pods.wait_exited(cid)
        return b"".join(line + (b"\n" if tag == "F" else b"") for _, tag, line in pods.log_lines(cid)).decode()
    finally:
        pods.remove_all()


def test_build_runs_steps_and_the_image_runs_as_a_pod(daemon, base, tmp_path):
    ctx = context(tmp_path, f"""\
        FROM {base}
        ARG GREETING=hello
        ENV APP=/app \\
            MODE=test
        WORKDIR $APP
        COPY greeting.txt data/ ./
        RUN echo "$GREETING from $(pwd) as $(id -u)" > made.txt && rm /etc/motd 2>/dev/null; mkdir -p /var/x
        LABEL org.example.name="built here" version=1
        EXPOSE 8080/tcp 53/udp
        VOLUME /data
        USER 1000:1000
        STOPSIGNAL SIGINT
        ENTRYPOINT ["/bin/sh", "-c"]
        CMD ["cat /app/made.txt /app/greeting.txt /app/inner.txt"]
        """, {"greeting.txt": "from the context\n", "data/inner.txt": "inner\n"})
    out = build(daemon, ctx, "-t", "localhost/built:v1", "--build-arg", "GREETING=hi").stdout
    assert "STEP 1/13: FROM" in out and "STEP 13/13: CMD" in out
    doc = inspect(daemon, "localhost/built:v1")
    config = doc["config"]["config"]
    assert config["WorkingDir"] == "/app"
    assert "APP=/app" in config["Env"] and "MODE=test" in config["Env"]
    assert not any(e.startswith("GREETING=") for e in config["Env"])  # an ARG is no part of the image
    assert config["Labels"] == {"org.example.name": "built here", "version": "1"}
    assert config["ExposedPorts"] == {"8080/tcp": {}, "53/udp": {}}
    assert config["Volumes"] == {"/data": {}}
    assert config["User"] == "1000:1000" and config["StopSignal"] == "SIGINT"
    assert config["Entrypoint"] == ["/bin/sh", "-c"]
    history = json.loads(cricket(daemon, "-o", "json", "history", "--no-trunc", "localhost/built:v1").stdout)
    assert [h["createdBy"] for h in history][:3] == ["CMD [\"cat /app/made.txt /app/greeting.txt /app/inner.txt\"]",
                                                     "ENTRYPOINT [\"/bin/sh\", \"-c\"]", "STOPSIGNAL SIGINT"]
    layers = [h for h in history if not h["emptyLayer"]]
    assert {h["createdBy"].split()[0] for h in layers[:3]} == {"RUN", "COPY", "WORKDIR"}
    logs = run_in_pod(daemon, tmp_path, "localhost/built:v1")
    assert "hi from /app as 0" in logs and "from the context" in logs and "inner" in logs


def test_unchanged_rebuild_uses_the_cache_and_no_cache_runs_again(daemon, base, tmp_path):
    ctx = context(tmp_path, f"""\
        FROM {base}
        COPY a.txt /a.txt
        RUN date +%s%N > /stamp
        """, {"a.txt": "a\n"})
    first = build(daemon, ctx, "-t", "localhost/cached:1").stdout
    assert "using cache" not in first
    again = build(daemon, ctx, "-t", "localhost/cached:2").stdout
    assert again.count("using cache") == 2
    assert inspect(daemon, "localhost/cached:1")["chainID"] == inspect(daemon, "localhost/cached:2")["chainID"]
    fresh = build(daemon, ctx, "--no-cache", "-t", "localhost/cached:3").stdout
    assert "using cache" not in fresh
    assert inspect(daemon, "localhost/cached:3")["chainID"] != inspect(daemon, "localhost/cached:1")["chainID"]
    (tmp_path / "context" / "a.txt").write_text("changed\n")
    changed = build(daemon, ctx, "-t", "localhost/cached:4").stdout
    assert "using cache" not in changed  # the COPY's content changed, and the RUN after it
    assert build(daemon, ctx, "-t", "localhost/cached:5").stdout.count("using cache") == 2
    cricket(daemon, "prune")  # the cache goes first, then the images no container uses
    assert "using cache" not in build(daemon, ctx, "-t", "localhost/cached:6").stdout


def test_multi_stage_copy_from_and_target(daemon, base, tmp_path):
    ctx = context(tmp_path, f"""\
        FROM {base} AS maker
        RUN mkdir /out && echo made > /out/thing && chmod 0640 /out/thing && chown 7:8 /out/thing
        FROM scratch AS final
        COPY --from=maker /out/thing /thing
        COPY --from=maker /bin/busybox /bin/busybox
        CMD ["/bin/busybox", "cat", "/thing"]
        FROM {base} AS unused
        RUN exit 3
        """)
    build(daemon, ctx, "--target", "final", "-t", "localhost/staged:1")
    assert "localhost/staged" in cricket(daemon, "images").stdout
    doc = inspect(daemon, "localhost/staged:1")
    assert len(doc["config"]["rootfs"]["diff_ids"]) == 2  # scratch, then two COPY layers
    assert "made" in run_in_pod(daemon, tmp_path, "localhost/staged:1")
    failed = build(daemon, ctx, "-t", "localhost/staged:all", check=False)
    assert failed.returncode == 1
    assert "line 8" in failed.stderr and "RUN exit 3" in failed.stderr and "exit code 3" in failed.stderr


def test_a_failing_step_is_reported_and_leaves_nothing(daemon, base, tmp_path):
    ctx = context(tmp_path, f"""\
        FROM {base}
        RUN echo first line; echo to stderr >&2; exit 7
        """)
    before = cricket(daemon, "images", "-q").stdout
    failed = build(daemon, ctx, "-t", "localhost/broken:1", check=False)
    assert failed.returncode == 1
    assert "step 2/2" in failed.stderr and "line 2" in failed.stderr and "exit code 7" in failed.stderr
    assert "first line" in failed.stderr and "to stderr" in failed.stderr
    assert cricket(daemon, "images", "-q").stdout == before
    assert os.listdir(os.path.join(daemon.root, "build")) == []
    syntax = context(tmp_path, f"FROM {base}\nRUN true\nFOO bar\n")
    bad = build(daemon, syntax, check=False)
    assert bad.returncode == 1 and "line 3" in bad.stderr and "FOO" in bad.stderr


def test_run_is_isolated_and_bounded(daemon, base, tmp_path):
    ctx = context(tmp_path, f"""\
        FROM {base}
        RUN echo pid=$$; cat /proc/self/status | grep -E '^(CapEff|NoNewPrivs|Seccomp):'; hostname; ip -o link
        """)
    out = build(daemon, ctx, "--network", "none", "--no-cache").stdout
    assert "pid=1" in out  # its own PID namespace
    assert "NoNewPrivs:\t1" in out and "Seccomp:\t2" in out
    assert "CapEff:\t00000000a80425fb" in out  # the default capabilities, as a pod's container has
    assert "buildsandbox" in out
    assert "lo:" in out and "eth0" not in out  # --network none: a namespace of its own
    bomb = context(tmp_path, f"""\
        FROM {base}
        RUN i=0; while [ $i -lt 1500 ]; do sleep 20 & i=$((i+1)); done; echo all started
        """)
    failed = build(daemon, bomb, "--no-cache", check=False)
    # [build] pids_limit (1024) stops the forks: the shell says so and the step fails.
    assert failed.returncode == 1 and "can't fork" in failed.stderr and "  all started\n" not in failed.stdout
    assert daemon.status(base).image.id  # the daemon serves
    parent = cgroup_parent(daemon.root)
    for top in (f"/sys/fs/cgroup/pids{parent}", f"/sys/fs/cgroup{parent}"):
        if os.path.isdir(top):
            assert [d for d in os.listdir(top) if os.path.isdir(os.path.join(top, d))] == []


def test_hostile_context_and_archives_are_refused(daemon, base, tmp_path):
    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w:gz") as tar:
        info = tarfile.TarInfo("../../escaped")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    ctx = context(tmp_path, f"FROM {base}\nCOPY ../x /x\n", {"evil.tar.gz": evil.getvalue()})
    os.symlink("/etc", os.path.join(ctx, "out-link"))
    up = build(daemon, ctx, check=False)
    assert up.returncode == 1 and "outside the build context" in up.stderr
    (tmp_path / "context" / "Dockerfile").write_text(f"FROM {base}\nCOPY out-link/passwd /stolen\n")
    link = build(daemon, ctx, check=False)
    assert link.returncode == 1 and "no such file" in link.stderr  # resolved inside the context
    (tmp_path / "context" / "Dockerfile").write_text(f"FROM {base}\nADD evil.tar.gz /unpacked/\n")
    archive = build(daemon, ctx, check=False)
    assert archive.returncode == 1 and "escaped" in archive.stderr
    assert not os.path.exists(os.path.join(daemon.root, "escaped"))
    assert not os.path.exists(os.path.join(daemon.root, "build", "escaped"))


def test_add_unpacks_a_local_archive(daemon, base, tmp_path):
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:gz") as tar:
        info = tarfile.TarInfo("pkg/readme")
        info.size, info.uid, info.gid, info.mode = 6, 12, 34, 0o600
        tar.addfile(info, io.BytesIO(b"hello\n"))
    ctx = context(tmp_path, f"""\
        FROM {base}
        ADD pkg.tar.gz /opt/
        ADD plain.txt /opt/plain.txt
        RUN stat -c '%u:%g %a' /opt/pkg/readme /opt/plain.txt && cat /opt/pkg/readme
        """, {"pkg.tar.gz": data.getvalue(), "plain.txt": "plain\n"})
    out = build(daemon, ctx, "--no-cache").stdout
    assert "12:34 600" in out and "0:0 644" in out and "hello" in out


def test_commit_export_import(daemon, base, tmp_path):
    pods = Pods(daemon, str(tmp_path / "logs"))
    try:
        cid = pods.run(pods.run_pod(), base, ["sh", "-c", "echo changed > /changed; rm /bin/true; sleep 300"])
        for _ in range(200):
            if pods.exec(cid, ["cat", "/changed"]).stdout == b"changed\n":
                break
        image = cricket(daemon, "commit", cid[:12], "localhost/committed:1", "-c", 'CMD ["cat", "/changed"]',
                        "-m", "a change").stdout.strip()
        assert image.startswith("sha256:")
        exported = str(tmp_path / "fs.tar")
        cricket(daemon, "export", cid[:12], "-o", exported)
    finally:
        pods.remove_all()
    assert "changed" in run_in_pod(daemon, tmp_path, "localhost/committed:1")
    history = json.loads(cricket(daemon, "-o", "json", "history", "localhost/committed:1").stdout)
    assert history[0]["comment"] == "a change"
    with tarfile.open(exported) as tar:
        names = set(tar.getnames())
    assert {"changed", "bin/busybox", "bin/sh"} <= names and "bin/true" not in names
    cricket(daemon, "import", exported, "localhost/imported:1", "-c", 'CMD ["/bin/cat", "/changed"]')
    assert "changed" in run_in_pod(daemon, tmp_path, "localhost/imported:1")
    doc = inspect(daemon, "localhost/imported:1")
    assert len(doc["config"]["rootfs"]["diff_ids"]) == 1


def test_add_fetches_a_url_without_unpacking_it(daemon, base, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:gz") as tar:
        info = tarfile.TarInfo("inside")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"x\n"))
    (served / "thing.tar.gz").write_bytes(data.getvalue())
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        ctx = context(tmp_path, f"""\
            FROM {base}
            ADD {url}/thing.tar.gz /fetched/
            RUN stat -c '%a %u' /fetched/thing.tar.gz && ls /fetched
            """)
        out = build(daemon, ctx, "--no-cache").stdout
        assert "600 0" in out and "inside" not in out  # kept as it came: not unpacked
        (tmp_path / "context" / "Dockerfile").write_text(f"FROM {base}\nADD {url}/missing /x\n")
        missing = build(daemon, ctx, check=False)
        assert missing.returncode == 1 and "HTTP 404" in missing.stderr
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_step_can_not_reach_the_host_through_its_own_symlinks(daemon, base, tmp_path):
    victim = tmp_path / "host-dir"
    victim.mkdir()
    (victim / "hosts").write_text("")  # empty, as a mount stub would be
    (victim / "resolv.conf").mkdir()
    ctx = context(tmp_path, f"""\
        FROM scratch
        COPY --from={base} /bin/busybox /bin/busybox
        RUN ["/bin/busybox", "ln", "-s", "{victim}", "/etc"]
        """)
    build(daemon, ctx, "--no-cache")
    assert (victim / "hosts").exists() and (victim / "resolv.conf").is_dir()  # the host's, untouched


def test_a_cancelled_build_ends_its_step(daemon, base, tmp_path):
    ctx = context(tmp_path, f"FROM {base}\nRUN echo running; sleep 60\n")
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "--socket", daemon.socket, "build", "--no-cache", ctx],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started = False
    try:
        for line in proc.stdout:
            if line == "  running\n":
                started = True  # the step runs: the client goes away mid-step
                break
        proc.kill()
    finally:
        proc.wait(timeout=30)
    parent = cgroup_parent(daemon.root)
    tops = [t for t in (f"/sys/fs/cgroup/pids{parent}", f"/sys/fs/cgroup{parent}") if os.path.isdir(t)]
    for _ in range(200):
        left = [d for t in tops for d in os.listdir(t) if os.path.isdir(os.path.join(t, d))]
        if not left and os.listdir(os.path.join(daemon.root, "build")) == []:
            break
        time.sleep(0.05)
    assert started
    assert left == [] and os.listdir(os.path.join(daemon.root, "build")) == []


def test_bad_input_is_refused_by_name(daemon, base, tmp_path):
    cases = {
        "EXPOSE 1-3000000": "ports 1-65535",
        "ENV A=xxxxxxxxxxxxxxxx\n" + "ENV A=$A$A$A$A$A$A$A$A$A$A$A$A$A$A$A$A$A$A$A$A\n" * 8: "expand past",
        "RUN touch /.wh.sneaky": "can not be a layer",
        "RUN --network=host true": "RUN --network=host",
        "COPY a b /dest": "must end with /",
    }
    for text, said in cases.items():
        ctx = context(tmp_path, f"FROM {base}\n{text}\n", {"a": "a", "b": "b"})
        done = build(daemon, ctx, "--no-cache", check=False)
        assert done.returncode == 1 and said in done.stderr, (text, done.stderr)
        assert "internal error" not in done.stderr
    os.mknod(tmp_path / "context" / "tty", 0o600 | stat.S_IFCHR, os.makedev(5, 0))
    ctx = context(tmp_path, f"FROM {base}\nCOPY tty /tty\n")
    done = build(daemon, ctx, "--no-cache", check=False)
    assert done.returncode == 1 and "internal error" not in done.stderr  # a device is never opened


def test_chown_with_a_uid_alone_gives_that_gid(daemon, base, tmp_path):
    ctx = context(tmp_path, f"""\
        FROM {base}
        COPY --chown=1234 a.txt /a.txt
        RUN stat -c '%u:%g' /a.txt
        """, {"a.txt": "a"})
    assert "1234:1234" in build(daemon, ctx, "--no-cache").stdout


def test_onbuild_triggers_run_in_the_child_and_healthcheck_is_recorded(daemon, base, tmp_path):
    parent = context(tmp_path, f"""\
        FROM {base}
        ONBUILD RUN echo triggered > /onbuild
        HEALTHCHECK --interval=5s --retries=2 CMD test -e /onbuild
        """)
    build(daemon, parent, "-t", "localhost/parent:1")
    config = inspect(daemon, "localhost/parent:1")["config"]["config"]
    assert config["OnBuild"] == ["RUN echo triggered > /onbuild"]
    assert config["Healthcheck"] == {"Test": ["CMD-SHELL", "test -e /onbuild"], "Interval": 5_000_000_000,
                                     "Retries": 2}
    (tmp_path / "context" / "Dockerfile").write_text("FROM localhost/parent:1\nRUN cat /onbuild\n")
    out = build(daemon, parent, "-t", "localhost/child:1").stdout
    assert "ONBUILD RUN echo triggered" in out and "  triggered" in out
    assert "OnBuild" not in inspect(daemon, "localhost/child:1")["config"]["config"]  # not inherited twice
