"""Pods and containers on the real kernel, through a real cricketd: isolation, files, logs, exits."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time

import grpc
import pytest

from api.runtime.v1 import api_pb2 as pb
from linux.cgroups import Cgroup
from tests.daemon import registry_config
from tests.pods import Pods, rpc_error, serving


@pytest.fixture(scope="module")
def daemon(registry, test_images, tmp_path_factory):
    images = [test_images[name].reference(registry) for name in ("busybox", "user-name", "volume", "stopsignal")]
    with serving(str(tmp_path_factory.mktemp("cricketd")), registry_config(registry), images) as d:
        yield d


@pytest.fixture
def pods(daemon, tmp_path):
    p = Pods(daemon, str(tmp_path / "logs"))
    yield p
    p.remove_all()


@pytest.fixture
def busybox(registry, test_images):
    return test_images["busybox"].reference(registry)


def ns_inode(pods: Pods, cid: str, kind: str) -> str:
    return pods.exec(cid, ["busybox", "readlink", f"/proc/self/ns/{kind}"]).stdout.decode().strip()


def host_inode(path: str) -> str:
    st = os.stat(path)
    return str(st.st_ino)


# -- pods --------------------------------------------------------------------------------


def test_two_containers_share_the_pods_ipc_uts_and_network(pods, busybox):
    pod = pods.run_pod(hostname="shared-pod")
    a = pods.run(pod, busybox, ["sleep", "1000"])
    b = pods.run(pod, busybox, ["sleep", "1000"])
    for kind in ("ipc", "uts", "net"):
        assert ns_inode(pods, a, kind) == ns_inode(pods, b, kind)
        assert ns_inode(pods, a, kind) != os.readlink(f"/proc/self/ns/{kind}")  # not the host's
    info = pods.pod_status(pod, verbose=True).info["info"]
    net = json.loads(info)["netNamespace"]
    assert ns_inode(pods, a, "net") == f"net:[{host_inode(net)}]"
    assert pods.sh(a, "hostname").strip() == pods.sh(b, "cat /etc/hostname").strip() == "shared-pod"
    # Each has its own PID and mount namespace.
    assert ns_inode(pods, a, "pid") != ns_inode(pods, b, "pid")
    assert ns_inode(pods, a, "mnt") != ns_inode(pods, b, "mnt")
    # IPC really is shared: a file in one's /dev/shm is in the other's.
    pods.sh(a, "echo hi > /dev/shm/note")
    assert pods.sh(b, "cat /dev/shm/note") == "hi\n"


def test_pid_one_is_the_containers_own_process(pods, busybox):
    pod = pods.run_pod()
    cid = pods.run(pod, busybox, ["sh", "-c", "echo pid=$$; exec sleep 1000"])
    assert pods.sh(cid, "cat /proc/1/cmdline | tr '\\0' ' '").strip() == "sleep 1000"
    listed = [line.split(None, 1) for line in pods.sh(cid, "busybox ps -o pid,args").splitlines()[1:]]
    assert ["1", "sleep 1000"] in listed
    assert all(int(pid) < 20 for pid, _ in listed)  # nothing of the host's: only this exec's few
    time.sleep(0.2)
    assert (b"stdout", b"F", b"pid=1") in [(s.encode(), t.encode(), c) for s, t, c in pods.log_lines(cid)]


def test_pod_sharing_one_pid_namespace_has_an_init_reaping_it(pods, busybox):
    pod = pods.run_pod(pid=pb.POD)
    a = pods.run(pod, busybox, ["sleep", "1000"], pid=pb.POD)
    b = pods.run(pod, busybox, ["sleep", "2000"], pid=pb.POD)
    assert ns_inode(pods, a, "pid") == ns_inode(pods, b, "pid")
    seen = pods.sh(a, "for p in /proc/[0-9]*; do cat $p/cmdline 2>/dev/null | tr '\\0' ' '; echo; done")
    assert "sleep 1000" in seen and "sleep 2000" in seen
    # An orphan in the pod is reaped by the pod's init: no zombie stays.
    pods.sh(a, "sh -c 'sleep 0.1 &' ; sleep 0.5")
    states = pods.sh(a, "cat /proc/[0-9]*/stat 2>/dev/null | busybox awk '{print $3}'")
    assert "Z" not in states.split()


def test_host_network_pod_uses_the_hosts_network(pods, busybox):
    pod = pods.run_pod(network=pb.NODE)
    cid = pods.run(pod, busybox, ["sleep", "1000"])
    assert ns_inode(pods, cid, "net") == os.readlink("/proc/self/ns/net")
    assert ns_inode(pods, cid, "uts") == os.readlink("/proc/self/ns/uts")


def test_pod_loopback_is_up_and_alone(pods, busybox):
    pod = pods.run_pod()
    cid = pods.run(pod, busybox, ["sleep", "1000"])
    links = pods.sh(cid, "ls /sys/class/net").split()
    assert links == ["lo"]
    assert pods.sh(cid, "cat /sys/class/net/lo/operstate").strip() in ("unknown", "up")


def test_dns_config_becomes_resolv_conf(pods, busybox):
    dns = pb.DNSConfig(servers=["10.96.0.10"], searches=["ns.svc.cluster.local", "svc.cluster.local"],
                       options=["ndots:5"])
    pod = pods.run_pod(pods.pod_config(dns=dns))
    cid = pods.run(pod, busybox, ["sleep", "1000"])
    assert pods.sh(cid, "cat /etc/resolv.conf") == (
        "search ns.svc.cluster.local svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n")


def test_stop_pod_is_idempotent_and_keeps_the_record(pods, busybox):
    pod = pods.run_pod()
    cid = pods.run(pod, busybox, ["sleep", "1000"])
    pods.stop_pod(pod)
    pods.stop_pod(pod)
    assert pods.pod_status(pod).status.state == pb.SANDBOX_NOTREADY
    assert pods.status(cid).status.state == pb.CONTAINER_EXITED
    err = rpc_error(pods.create, pod, pods.container_config(busybox, ["true"]))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    pods.remove_pod(pod)
    assert rpc_error(pods.pod_status, pod).code() == grpc.StatusCode.NOT_FOUND
    assert rpc_error(pods.status, cid).code() == grpc.StatusCode.NOT_FOUND


def test_list_pods_filters(pods):
    a = pods.run_pod(labels={"app": "a"})
    b = pods.run_pod(labels={"app": "b"})
    pods.stop_pod(b)

    def listed(**f):
        return {p.id for p in pods.rt.ListPodSandbox(pb.ListPodSandboxRequest(filter=pb.PodSandboxFilter(**f))).items}

    assert {a, b} <= listed()
    assert listed(id=a) == {a}
    assert listed(label_selector={"app": "b"}) == {b}
    assert a in listed(state=pb.PodSandboxStateValue(state=pb.SANDBOX_READY))
    assert b not in listed(state=pb.PodSandboxStateValue(state=pb.SANDBOX_READY))


# -- containers --------------------------------------------------------------------------


def snapshot_digest(root: str) -> str:
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(root)):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            h.update(path.encode())
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as f:
                    h.update(f.read())
    return h.hexdigest()


def test_writes_land_only_in_the_upper_dir(pods, daemon, busybox):
    layers = os.path.join(daemon.root, "snapshots")
    before = snapshot_digest(layers)
    pod = pods.run_pod()
    cid = pods.run(pod, busybox, ["sleep", "1000"])
    pods.sh(cid, "echo new > /newfile && echo 'x:x:7:7::/:/bin/sh' >> /etc/passwd && rm /bin/true")
    upper = os.path.join(daemon.root, "containers", cid, "upper")
    assert open(os.path.join(upper, "newfile")).read() == "new\n"
    assert "x:x:7:7" in open(os.path.join(upper, "etc", "passwd")).read()
    assert os.stat(os.path.join(upper, "bin", "true")).st_rdev == 0  # a whiteout
    assert snapshot_digest(layers) == before
    other = pods.run(pod, busybox, ["sleep", "1000"])
    assert pods.exec(other, ["cat", "/newfile"]).exit_code != 0


def test_log_lines_are_timestamped_and_tagged(pods, busybox):
    pod = pods.run_pod()
    script = "echo out; echo err >&2; printf 'a\\r\\n'; head -c 20000 /dev/zero | tr '\\0' x; echo; printf tail"
    cid = pods.run(pod, busybox, ["sh", "-c", script])
    status = pods.wait_exited(cid)
    assert status.exit_code == 0 and status.reason == "Completed"
    lines = pods.log_lines(cid)
    assert ("stdout", "F", b"out") in lines and ("stderr", "F", b"err") in lines
    assert ("stdout", "F", b"a") in lines  # "\r\n" is a line end
    long = [(t, c) for s, t, c in lines if c.startswith(b"x")]
    assert [t for t, _ in long] == ["P", "F"] and b"".join(c for _, c in long) == b"x" * 20000
    assert lines[-1] == ("stdout", "P", b"tail")  # no newline at the end: a partial line


@pytest.mark.parametrize("script,code,reason", [("exit 0", 0, "Completed"), ("exit 3", 3, "Error")])
def test_exit_codes(pods, busybox, script, code, reason):
    pod = pods.run_pod()
    cid = pods.run(pod, busybox, ["sh", "-c", script])
    status = pods.wait_exited(cid)
    assert (status.exit_code, status.reason) == (code, reason)
    assert status.finished_at >= status.started_at > status.created_at > 0


def test_stop_sends_the_images_stop_signal_then_kill(pods, registry, test_images, busybox):
    pod = pods.run_pod()
    graceful = pods.run(pod, test_images["stopsignal"].reference(registry),
                        ["sh", "-c", "trap 'echo got USR1; exit 0' USR1; while :; do sleep 0.05; done"])
    time.sleep(0.3)
    pods.stop(graceful, timeout=10)
    status = pods.status(graceful).status
    assert status.state == pb.CONTAINER_EXITED and status.exit_code == 0
    assert ("stdout", "F", b"got USR1") in pods.log_lines(graceful)
    # PID 1 ignores SIGTERM it has no handler for: the timeout runs out and SIGKILL ends it.
    stubborn = pods.run(pod, busybox, ["sleep", "1000"])
    started = time.monotonic()
    pods.stop(stubborn, timeout=1)
    assert time.monotonic() - started >= 1
    assert pods.status(stubborn).status.exit_code == 137


def test_user_from_the_image_and_from_the_security_context(pods, registry, test_images, busybox):
    pod = pods.run_pod()
    by_name = pods.run(pod, test_images["user-name"].reference(registry), ["sleep", "1000"])
    assert pods.sh(by_name, "id").strip() == "uid=1000(cricket) gid=1000(cricket) groups=50(staff),1000(cricket)"
    ctx = pb.LinuxContainerSecurityContext(run_as_user=pb.Int64Value(value=65534),
                                           run_as_group=pb.Int64Value(value=1000), supplemental_groups=[4242])
    by_ctx = pods.run(pod, busybox, ["sleep", "1000"], security=ctx)
    assert pods.sh(by_ctx, "id").strip() == "uid=65534(nobody) gid=1000(cricket) groups=1000(cricket),4242"
    named = pods.run(pod, busybox, ["sleep", "1000"],
                     security=pb.LinuxContainerSecurityContext(run_as_username="cricket"))
    assert pods.sh(named, "id -u").strip() == "1000"
    status = pods.status(by_ctx).status
    assert (status.user.linux.uid, status.user.linux.gid) == (65534, 1000)


def test_command_args_env_and_working_dir(pods, busybox):
    pod = pods.run_pod()
    cid = pods.run(pod, busybox, ["sh", "-c"], args=['echo "$GREETING from $(pwd) as $HOSTNAME"; sleep 1000'],
                   env={"GREETING": "hello"}, working_dir="/made/for/me")
    time.sleep(0.3)
    lines = pods.log_lines(cid)
    hostname = pods.sh(cid, "hostname").strip()
    assert ("stdout", "F", f"hello from /made/for/me as {hostname}".encode()) in lines
    assert "PATH=/usr/local/sbin" in pods.sh(cid, "env")


def test_host_path_mounts_and_read_only(pods, busybox, tmp_path):
    rw, ro = tmp_path / "rw", tmp_path / "ro"
    rw.mkdir()
    ro.mkdir()
    (ro / "file").write_text("from the host\n")
    pod = pods.run_pod()
    cid = pods.run(pod, busybox, ["sleep", "1000"], mounts=[
        pb.Mount(container_path="/rw", host_path=str(rw)),
        pb.Mount(container_path="/ro", host_path=str(ro), readonly=True),
    ])
    pods.sh(cid, "echo written > /rw/out")
    assert (rw / "out").read_text() == "written\n"
    assert pods.sh(cid, "cat /ro/file") == "from the host\n"
    assert pods.exec(cid, ["sh", "-c", "echo x > /ro/file"]).exit_code != 0


def test_image_volume_is_per_container_and_seeded(pods, daemon, registry, test_images):
    pod = pods.run_pod()
    cid = pods.run(pod, test_images["volume"].reference(registry), ["sleep", "1000"])
    assert pods.sh(cid, "cat /data/seed") == "from the image\n"
    pods.sh(cid, "echo mine > /data/new")
    own = os.path.join(daemon.root, "containers", cid)
    assert not os.path.exists(os.path.join(own, "upper", "data", "new"))
    assert open(os.path.join(own, "volumes", "0", "new")).read() == "mine\n"


def test_tty_container(pods, busybox):
    pod = pods.run_pod()
    cid = pods.run(pod, busybox, ["sh", "-c", "busybox tty; sleep 1000"], tty=True)
    time.sleep(0.3)
    assert ("stdout", "F", b"/dev/console") in pods.log_lines(cid)


def test_container_status_verbose_and_list_filters(pods, busybox):
    pod = pods.run_pod()
    cid = pods.run(pod, busybox, ["sleep", "1000"], labels={"role": "web"})
    created = pods.create(pod, pods.container_config(busybox, ["true"]))
    info = json.loads(pods.status(cid, verbose=True).info["info"])
    assert info["pid"] > 0 and info["runtimeSpec"]["process"]["args"] == ["sleep", "1000"]
    assert info["sandboxID"] == pod

    def listed(**f):
        listing = pods.rt.ListContainers(pb.ListContainersRequest(filter=pb.ContainerFilter(**f)))
        return {c.id for c in listing.containers}

    assert listed(pod_sandbox_id=pod) == {cid, created}
    assert listed(label_selector={"role": "web"}) == {cid}
    assert listed(state=pb.ContainerStateValue(state=pb.CONTAINER_CREATED), pod_sandbox_id=pod) == {created}
    assert listed(id=cid[:12]) == {cid}


def test_status_names_the_image_as_the_user_did(pods, busybox):
    """kubelet creates containers from the image's ID and shows ContainerStatus's image in the pod's
    status: that must be the name the pod spec gave, else a tag of the image, never the bare ID."""
    pod = pods.run_pod()
    image_id = pods.d.status(busybox).image.id
    by_id = pods.container_config(image_id, ["true"], name="by-id")
    as_typed = pods.container_config(image_id, ["true"], name="as-typed")
    as_typed.image.user_specified_image = "busybox-as-typed"
    cids = {pods.create(pod, config): config for config in (by_id, as_typed)}
    shown = {cid: pods.status(cid).status.image.image for cid in cids}
    listed = {c.id: c.image.image for c in pods.rt.ListContainers(pb.ListContainersRequest()).containers}
    for cid, config in cids.items():
        want = "busybox-as-typed" if config is as_typed else busybox
        assert shown[cid] == listed[cid] == want
        assert pods.status(cid).status.image_id == image_id


# -- exec --------------------------------------------------------------------------------


def test_exec_sync_output_exit_code_and_context(pods, registry, test_images):
    pod = pods.run_pod()
    cid = pods.run(
        pod,
        test_images["user-name"].reference(registry),
        ["sleep", "1000"],
        env={"FROM_CONFIG": "yes"},
        working_dir="/tmp",
    )
    out = pods.exec(cid, ["sh", "-c", "echo $FROM_CONFIG; pwd; id -u; echo oops >&2; exit 7"])
    assert (out.stdout, out.stderr, out.exit_code) == (b"yes\n/tmp\n1000\n", b"oops\n", 7)
    assert (
        pods.sh(cid, "readlink /proc/self/ns/pid")
        == pods.exec(cid, ["busybox", "readlink", "/proc/1/ns/pid"]).stdout.decode()
    )


def test_exec_sync_returns_when_a_background_child_keeps_the_output_open(pods, busybox):
    pod = pods.run_pod()
    cid = pods.run(pod, busybox, ["sleep", "1000"])
    # A hang here ends in DEADLINE_EXCEEDED from the client's own deadline.
    out = pods.rt.ExecSync(
        pb.ExecSyncRequest(container_id=cid, cmd=["sh", "-c", "sleep 30 & echo started"], timeout=10), timeout=20
    )
    assert (out.exit_code, out.stdout) == (0, b"started\n")


def test_exec_sync_timeout_kills_the_command(pods, busybox):
    pod = pods.run_pod()
    cid = pods.run(pod, busybox, ["sleep", "1000"])
    started = time.monotonic()
    err = rpc_error(pods.exec, cid, ["sleep", "60"], timeout=1)
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 30
    assert "sleep 60" not in pods.sh(cid, "busybox ps -o args")


def test_exec_of_a_missing_command_and_in_a_stopped_container(pods, busybox):
    pod = pods.run_pod()
    cid = pods.run(pod, busybox, ["sleep", "1000"])
    err = rpc_error(pods.exec, cid, ["no-such-command"])
    assert "no-such-command" in err.details() and "not found" in err.details()
    pods.stop(cid)
    assert rpc_error(pods.exec, cid, ["true"]).code() == grpc.StatusCode.FAILED_PRECONDITION


# -- bad input ----------------------------------------------------------------------------


def test_container_in_an_unknown_pod_is_not_found(pods, busybox):
    err = rpc_error(
        pods.rt.CreateContainer,
        pb.CreateContainerRequest(pod_sandbox_id="0" * 64, config=pods.container_config(busybox, ["true"])),
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND


def test_a_name_and_attempt_used_twice_names_the_holder(pods, busybox):
    pod = pods.run_pod()
    first = pods.create(pod, pods.container_config(busybox, ["true"], name="twice"))
    err = rpc_error(pods.create, pod, pods.container_config(busybox, ["true"], name="twice"))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS and first in err.details()
    pods.create(pod, pods.container_config(busybox, ["true"], name="twice", attempt=1))
    config = pods.pod_config()
    pods.run_pod(config)
    err = rpc_error(pods.run_pod, config)
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS


def test_unknown_image_is_not_found(pods):
    pod = pods.run_pod()
    err = rpc_error(pods.create, pod, pods.container_config("127.0.0.1:1/never/pulled:1", ["true"]))
    assert err.code() == grpc.StatusCode.NOT_FOUND and "never/pulled" in err.details()


def test_missing_command_fails_start_and_leaves_nothing_running(pods, busybox):
    pod = pods.run_pod()
    cid = pods.create(pod, pods.container_config(busybox, ["/no/such/binary"]))
    pid = int(json.loads(pods.status(cid, verbose=True).info["info"])["shimPid"])
    err = rpc_error(pods.start, cid)
    assert "/no/such/binary" in err.details()
    status = pods.status(cid).status
    assert (status.state, status.exit_code, status.reason) == (pb.CONTAINER_EXITED, 128, "StartError")
    assert "/no/such/binary" in status.message
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not os.path.exists(f"/proc/{pid}"), "the shim stayed"


def test_start_of_removed_and_stop_remove_of_gone(pods, busybox):
    pod = pods.run_pod()
    cid = pods.create(pod, pods.container_config(busybox, ["sleep", "1000"]))
    pods.remove(cid)
    assert rpc_error(pods.start, cid).code() == grpc.StatusCode.NOT_FOUND
    pods.stop(cid)
    pods.remove(cid)
    pods.remove_pod(pod)
    pods.stop_pod(pod)
    pods.remove_pod(pod)


def test_start_twice_is_refused(pods, busybox):
    pod = pods.run_pod()
    cid = pods.run(pod, busybox, ["sleep", "1000"])
    assert rpc_error(pods.start, cid).code() == grpc.StatusCode.FAILED_PRECONDITION


def test_a_dead_shim_shows_as_an_exited_container(pods, busybox):
    pod = pods.run_pod()
    cid = pods.run(pod, busybox, ["sleep", "1000"])
    info = json.loads(pods.status(cid, verbose=True).info["info"])
    os.kill(info["shimPid"], signal.SIGKILL)
    status = pods.wait_exited(cid, timeout=10)
    assert status.reason == "Unknown" and status.exit_code == 255
    assert "shim" in status.message
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{info['pid']}") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not os.path.exists(f"/proc/{info['pid']}"), "the container's process outlived its shim"
    pods.remove(cid)


def test_a_pods_own_cgroup_goes_with_it(pods, busybox):
    pod = pods.run_pod()
    cid = pods.run(pod, busybox, ["sleep", "1000"])
    parent = Cgroup(f"/cricket/{pod}")
    assert parent.exists() and Cgroup(f"/cricket/{pod}/{cid}").exists()
    pods.remove_pod(pod)
    assert not parent.exists()


# -- stats ----------------------------------------------------------------------------------


def test_container_and_pod_stats_come_from_the_cgroups(pods, busybox):
    pod = pods.run_pod()
    cid = pods.run(pod, busybox, ["sh", "-c", "head -c 5000000 /dev/zero > /big; while :; do :; done"])
    idle = pods.run(pod, busybox, ["sleep", "1000"])
    time.sleep(0.5)

    def stats(c):
        return pods.rt.ContainerStats(pb.ContainerStatsRequest(container_id=c)).stats

    first = stats(cid)
    time.sleep(0.5)
    second = stats(cid)
    assert second.attributes.id == cid and second.attributes.metadata.name
    assert second.cpu.usage_core_nano_seconds.value > first.cpu.usage_core_nano_seconds.value > 0
    assert second.cpu.usage_nano_cores.value > 0  # a rate, from the two samples
    assert second.memory.working_set_bytes.value > 0
    assert second.memory.usage_bytes.value >= second.memory.working_set_bytes.value
    assert second.writable_layer.used_bytes.value >= 5_000_000
    assert second.writable_layer.inodes_used.value >= 1

    pod_stats = pods.rt.PodSandboxStats(pb.PodSandboxStatsRequest(pod_sandbox_id=pod)).stats
    assert {c.attributes.id for c in pod_stats.linux.containers} == {cid, idle}
    assert pod_stats.linux.cpu.usage_core_nano_seconds.value >= second.cpu.usage_core_nano_seconds.value
    assert pod_stats.linux.process.process_count.value >= 2

    listed = pods.rt.ListContainerStats(
        pb.ListContainerStatsRequest(filter=pb.ContainerStatsFilter(pod_sandbox_id=pod))
    ).stats
    assert {s.attributes.id for s in listed} == {cid, idle}
    pods_listed = pods.rt.ListPodSandboxStats(
        pb.ListPodSandboxStatsRequest(filter=pb.PodSandboxStatsFilter(id=pod))
    ).stats
    assert [s.attributes.id for s in pods_listed] == [pod]
    pods.stop(cid)
    err = rpc_error(pods.rt.ContainerStats, pb.ContainerStatsRequest(container_id=cid))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_reopen_container_log(pods, busybox):
    pod = pods.run_pod()
    cid = pods.run(
        pod, busybox, ["sh", "-c", "echo before; while [ ! -e /tmp/go ]; do sleep 0.05; done; echo after; sleep 1000"]
    )
    time.sleep(0.3)
    path = pods.status(cid).status.log_path
    os.rename(path, path + ".1")
    pods.rt.ReopenContainerLog(pb.ReopenContainerLogRequest(container_id=cid))
    pods.sh(cid, "touch /tmp/go")
    time.sleep(0.3)
    assert [c for _, _, c in pods.log_lines(cid)] == [b"after"]
    assert b"before" in open(path + ".1", "rb").read()


def test_a_set_up_failure_fails_start_naming_the_mount(pods, busybox, tmp_path):
    plain = tmp_path / "a-file"
    plain.write_text("not a directory\n")
    pod = pods.run_pod()
    # A file bound over a directory of the image cannot be mounted.
    cid = pods.create(
        pod,
        pods.container_config(
            busybox, ["sleep", "1000"], mounts=[pb.Mount(container_path="/bin", host_path=str(plain))]
        ),
    )
    err = rpc_error(pods.start, cid)
    assert "/bin" in err.details()
    status = pods.status(cid).status
    assert (status.state, status.reason, status.exit_code) == (pb.CONTAINER_EXITED, "StartError", 128)
    pods.remove(cid)


def test_bidirectional_mount_propagates_both_ways(pods, busybox, tmp_path):
    src = tmp_path / "shared"
    src.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "cricket-test", str(src)], check=True)
    try:
        subprocess.run(["mount", "--make-shared", str(src)], check=True)
        config = pods.pod_config()
        config.linux.security_context.privileged = True
        pod = pods.run_pod(config)
        ctx = pb.LinuxContainerSecurityContext(privileged=True)
        cid = pods.run(
            pod,
            busybox,
            ["sleep", "1000"],
            security=ctx,
            mounts=[pb.Mount(container_path="/shared", host_path=str(src), propagation=pb.PROPAGATION_BIDIRECTIONAL)],
        )
        (src / "from-host").mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "host-made", str(src / "from-host")], check=True)
        (src / "from-host" / "seen").write_text("yes\n")
        assert pods.sh(cid, "cat /shared/from-host/seen") == "yes\n"
        pods.sh(
            cid, "mkdir /shared/from-ctr && mount -t tmpfs ctr-made /shared/from-ctr && echo hi > /shared/from-ctr/x"
        )
        assert (src / "from-ctr" / "x").read_text() == "hi\n"
        pods.remove_pod(pod)
    finally:
        subprocess.run(["umount", "-R", "-l", str(src)], check=False)
