"""User namespaces (kubelet's `hostUsers: false`): a pod of its own user namespace, with kubelet's
mappings, seen from inside its containers and from the host.

The pod's user namespace owns its network, IPC and UTS namespaces; every container (and every
exec) joins it. Image layers and bind mounts are idmapped (mount_setattr(MOUNT_ATTR_IDMAP)), so no
file is chowned: the image's files, owned by 0 on disk, show as root inside. What the container's
root writes through an idmapped mount (a volume) lands on disk as 0, as without a user namespace;
what it writes to its own upper dir (not idmapped: only the image's layers are, as containerd's
overlay snapshotter does) lands as the host id its root is mapped to.
"""
from __future__ import annotations

import fcntl
import json
import os

import grpc
import pytest

from api.runtime.v1 import api_pb2 as pb
from cri.config import Config, runtime_handlers
from tests.pods import Pods, rpc_error

HOST_UID, HOST_GID, LENGTH = 200000, 300000, 65536
OCI_RUNTIMES = runtime_handlers(Config())
_NS_GET_USERNS = 0xB701  # ioctl(2) on a namespace file: its owning user namespace (linux/nsfs.h)


@pytest.fixture
def pods(daemon, tmp_path):
    p = Pods(daemon, str(tmp_path / "logs"))
    yield p
    p.remove_all()


@pytest.fixture
def busybox(registry, test_images):
    return test_images["busybox"].reference(registry)


@pytest.fixture(autouse=True)
def _userns_works(daemon):
    features = {h.name: h.features for h in daemon.runtime.Status(pb.StatusRequest()).runtime_handlers}
    if not features[""].user_namespaces:
        pytest.skip("the built-in executor says user_namespaces: false here (see cricketd's log for why)")


def userns(mode=pb.POD, uids=None, gids=None) -> pb.UserNamespace:
    if mode == pb.POD and uids is None:
        uids = [pb.IDMapping(container_id=0, host_id=HOST_UID, length=LENGTH)]
        gids = [pb.IDMapping(container_id=0, host_id=HOST_GID, length=LENGTH)]
    return pb.UserNamespace(mode=mode, uids=uids or [], gids=gids or [])


def userns_pod(pods: Pods, options: pb.UserNamespace | None = None, **kw) -> tuple[str, pb.PodSandboxConfig]:
    config = pods.pod_config(**kw)
    config.linux.security_context.namespace_options.userns_options.CopyFrom(options or userns())
    return pods.run_pod(config), config


def in_pod(pods: Pods, config: pb.PodSandboxConfig, image: str, command, **kw) -> pb.ContainerConfig:
    ctx = kw.pop("security", None) or pb.LinuxContainerSecurityContext()
    ctx.namespace_options.userns_options.CopyFrom(config.linux.security_context.namespace_options.userns_options)
    return pods.container_config(image, command, security=ctx, **kw)


def run_in_pod(pods: Pods, pod: str, config: pb.PodSandboxConfig, image: str, command, **kw) -> str:
    cid = pods.create(pod, in_pod(pods, config, image, command, **kw))
    pods.start(cid)
    return cid


def pid_of(pods: Pods, cid: str) -> int:
    return json.loads(pods.status(cid, verbose=True).info["info"])["pid"]


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def ns_inode(path: str) -> int:
    return os.stat(path).st_ino


def owner_userns(ns_path: str) -> int:
    """The inode of the user namespace that owns the namespace at `ns_path`."""
    fd = os.open(ns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        owner = fcntl.ioctl(fd, _NS_GET_USERNS)
        try:
            return os.fstat(owner).st_ino
        finally:
            os.close(owner)
    finally:
        os.close(fd)


def sandbox_dir(pods: Pods, pod: str) -> str:
    return os.path.join(pods.d.state, "sandboxes", pod)


# -- the pod's user namespace ----------------------------------------------------------------------


def test_a_containers_mappings_are_kubelets(pods, busybox):
    pod, config = userns_pod(pods)
    cid = run_in_pod(pods, pod, config, busybox, ["sleep", "1000"])
    pid = pid_of(pods, cid)
    # From the host, the container's maps read as kubelet gave them.
    assert read(f"/proc/{pid}/uid_map").split() == ["0", str(HOST_UID), str(LENGTH)]
    assert read(f"/proc/{pid}/gid_map").split() == ["0", str(HOST_GID), str(LENGTH)]
    # Its root is root inside, and the host's id outside.
    assert pods.sh(cid, "id -u; id -g").split() == ["0", "0"]
    status = read(f"/proc/{pid}/status")
    uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    assert uid_line.split()[1:] == [str(HOST_UID)] * 4, uid_line
    # Inside, the same maps (the namespace's own view).
    assert pods.sh(cid, "cat /proc/self/uid_map").split() == ["0", str(HOST_UID), str(LENGTH)]
    # A host file whose owner is outside the mapping is nobody's: the host's /dev/null bound in
    # is root's on the host, root 0 is not mapped.
    assert pods.sh(cid, "stat -c %u:%g /dev/null").strip() == "65534:65534"


def test_the_pods_namespaces_are_owned_by_its_user_namespace(pods, busybox):
    pod, config = userns_pod(pods)
    pins = os.path.join(sandbox_dir(pods, pod), "ns")
    user = ns_inode(os.path.join(pins, "user"))
    assert user != ns_inode("/proc/self/ns/user")
    for kind in ("net", "ipc", "uts"):
        assert owner_userns(os.path.join(pins, kind)) == user, kind
    first = run_in_pod(pods, pod, config, busybox, ["sleep", "1000"])
    second = run_in_pod(pods, pod, config, busybox, ["sleep", "1000"])
    for cid in (first, second):
        pid = pid_of(pods, cid)
        assert ns_inode(f"/proc/{pid}/ns/user") == user
        assert ns_inode(f"/proc/{pid}/ns/net") == ns_inode(os.path.join(pins, "net"))
        # The namespaces the container made of its own (mount, PID, cgroup) are the pod's user namespace's too.
        own = ["mnt", "pid"]
        if os.readlink(f"/proc/{pid}/ns/cgroup") != os.readlink("/proc/self/ns/cgroup"):
            own.append("cgroup")  # on cgroup v2 only
        for kind in own:
            assert owner_userns(f"/proc/{pid}/ns/{kind}") == user, kind
    # The pod's hostname is set in its UTS namespace.
    assert pods.sh(first, "hostname").strip() == config.hostname


def test_an_exec_joins_the_user_namespace(pods, busybox):
    pod, config = userns_pod(pods)
    cid = run_in_pod(pods, pod, config, busybox, ["sleep", "1000"])
    assert pods.sh(cid, "cat /proc/self/uid_map").split() == ["0", str(HOST_UID), str(LENGTH)]
    assert pods.sh(cid, "cat /proc/self/gid_map").split() == ["0", str(HOST_GID), str(LENGTH)]
    exec_userns = pods.sh(cid, "readlink /proc/self/ns/user").strip()
    assert exec_userns == f"user:[{ns_inode(os.path.join(sandbox_dir(pods, pod), 'ns', 'user'))}]"


def test_a_shared_pid_namespace_is_the_pods_user_namespaces(pods, busybox):
    pod, config = userns_pod(pods, pid=pb.POD)
    cid = run_in_pod(pods, pod, config, busybox, ["sleep", "1000"], pid=pb.POD)
    pid = pid_of(pods, cid)
    user = ns_inode(os.path.join(sandbox_dir(pods, pod), "ns", "user"))
    assert owner_userns(f"/proc/{pid}/ns/pid") == user
    # The pod init is PID 1 there, and root of the pod, not of the host.
    assert pods.sh(cid, "cat /proc/1/comm").strip() == "cricket-podinit"
    init_pid = json.loads(pods.pod_status(pod, verbose=True).info["info"])["pid"]
    assert ns_inode(f"/proc/{init_pid}/ns/user") == user


def test_proc_sys_and_dev_work_inside(pods, busybox):
    pod, config = userns_pod(pods)
    cid = run_in_pod(pods, pod, config, busybox, ["sleep", "1000"])
    # A fresh sysfs of the pod's network: its own loopback, not the host's interfaces.
    assert "lo" in pods.sh(cid, "ls /sys/class/net").split()
    assert pods.sh(cid, "cat /proc/self/status | grep ^Uid").split()[1:] == ["0"] * 4
    assert pods.sh(cid, "echo hi > /dev/null && head -c 4 /dev/zero | wc -c").strip() == "4"
    assert pods.sh(cid, "stat -c '%t:%T' /dev/null").strip() == "1:3"
    assert pods.sh(cid, "test -e /dev/pts/ptmx && echo ok").strip() == "ok"
    mounts = pods.sh(cid, "cat /proc/self/mounts")
    for kind in (" proc ", " sysfs ", " devpts ", " mqueue "):
        assert kind in mounts, (kind, mounts)


def test_a_non_root_user_is_mapped_too(pods, busybox, tmp_path):
    volume = tmp_path / "volume"
    volume.mkdir(mode=0o777)
    os.chmod(volume, 0o777)
    pod, config = userns_pod(pods)
    ctx = pb.LinuxContainerSecurityContext()
    ctx.run_as_user.value = 1000
    cid = run_in_pod(pods, pod, config, busybox, ["sleep", "1000"], security=ctx,
                     mounts=[pb.Mount(container_path="/data", host_path=str(volume))])
    assert pods.sh(cid, "id -u").strip() == "1000"
    uid_line = next(line for line in read(f"/proc/{pid_of(pods, cid)}/status").splitlines()
                    if line.startswith("Uid:"))
    assert uid_line.split()[1:] == [str(HOST_UID + 1000)] * 4, uid_line
    pods.sh(cid, "touch /data/by-1000 /tmp/by-1000")
    assert os.stat(volume / "by-1000").st_uid == 1000  # through the idmapped volume: 1000, as inside
    upper = os.path.join(pods.d.root, "containers", cid, "upper", "tmp", "by-1000")
    assert os.stat(upper).st_uid == HOST_UID + 1000  # in the upper dir: the host id


def test_a_terminal_container_runs(pods, busybox):
    pod, config = userns_pod(pods)
    cid = run_in_pod(pods, pod, config, busybox, ["sh", "-c", "tty; cat /proc/self/uid_map"], tty=True)
    assert pods.wait_exited(cid).exit_code == 0
    out = b"".join(content for _, _, content in pods.log_lines(cid)).decode()
    assert "/dev/console" in out and str(HOST_UID) in out, out


# -- files: idmapped, never chowned ------------------------------------------------------------------


def test_the_images_files_are_roots_inside_and_stay_roots_on_disk(pods, busybox):
    pod, config = userns_pod(pods)
    cid = run_in_pod(pods, pod, config, busybox, ["sleep", "1000"])
    assert pods.sh(cid, "stat -c %u:%g /bin/busybox /etc/passwd /").split() == ["0:0"] * 3
    # On the host the image's layers are as unpacked: owned by 0, nothing chowned.
    spec = json.loads(pods.status(cid, verbose=True).info["info"])
    layers = os.path.join(pods.d.root, "snapshots")
    owners = set()
    for top, _, files in os.walk(layers):
        for name in files[:20]:
            st = os.lstat(os.path.join(top, name))
            owners.add((st.st_uid, st.st_gid))
    assert owners == {(0, 0)}, owners
    assert spec["runtimeSpec"]["linux"]["uidMappings"] == [{"containerID": 0, "hostID": HOST_UID, "size": LENGTH}]


def test_writes_land_as_the_container_sees_them_in_volumes_and_as_the_host_id_in_the_upper_dir(
        pods, busybox, tmp_path):
    volume = tmp_path / "volume"
    volume.mkdir()
    pod, config = userns_pod(pods)
    cid = run_in_pod(pods, pod, config, busybox, ["sleep", "1000"],
                     mounts=[pb.Mount(container_path="/data", host_path=str(volume))])
    # The volume is idmapped: the host's root-owned directory is root's inside, and writable by it.
    assert pods.sh(cid, "stat -c %u:%g /data").strip() == "0:0"
    pods.sh(cid, "echo from-root > /data/by-root && echo x > /by-root && "
                 "chown 1000:1000 /data/by-root && touch /data/by-1000 && chown 1000:1000 /data/by-1000")
    st = os.stat(volume / "by-root")
    assert (st.st_uid, st.st_gid) == (1000, 1000)  # chowned inside to 1000: 1000 on disk, through the idmap
    assert (volume / "by-root").read_text() == "from-root\n"
    pods.sh(cid, "touch /data/plain")
    st = os.stat(volume / "plain")
    assert (st.st_uid, st.st_gid) == (0, 0)  # what root inside writes is root's on disk, as with no user namespace
    # The upper dir is not idmapped: the container's root writes there as the host id it is mapped to.
    upper = os.path.join(pods.d.root, "containers", cid, "upper", "by-root")
    st = os.stat(upper)
    assert (st.st_uid, st.st_gid) == (HOST_UID, HOST_GID)
    assert pods.sh(cid, "stat -c %u:%g /by-root").strip() == "0:0"
    # The pod's files (hosts, resolv.conf) are idmapped binds too.
    assert pods.sh(cid, "stat -c %u:%g /etc/hosts /etc/resolv.conf /dev/shm").split() == ["0:0"] * 3



def test_an_image_volume_is_roots_inside_read_only_and_leaves_nothing_mounted(pods, busybox, test_images):
    pod, config = userns_pod(pods)
    volume = pb.Mount(container_path="/image", image=pb.ImageSpec(image=busybox), readonly=True)
    cid = run_in_pod(pods, pod, config, busybox, ["sleep", "1000"], mounts=[volume])
    # The image's layers idmapped as the rootfs's are: its root-owned files are root's inside, not
    # the overflow id an un-mapped mount would show.
    assert pods.sh(cid, "stat -c %u:%g /image/bin/busybox /image/etc/passwd").split() == ["0:0"] * 2
    assert pods.sh(cid, "/image/bin/busybox echo ran-from-the-volume").strip() == "ran-from-the-volume"
    out = pods.exec(cid, ["sh", "-c", "touch /image/x"])
    assert out.exit_code != 0 and b"Read-only file system" in out.stderr
    status = pods.status(cid).status
    assert [m.image.image_ref for m in status.mounts if m.container_path == "/image"] == [
        test_images["busybox"].config_digest]
    bundle = os.path.join(pods.d.state, "containers", cid)
    own = os.path.join(pods.d.root, "containers", cid)
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    assert not [p for p in points if p.startswith(own + "/")], "an idmapped staging bind stayed mounted"
    pods.stop(cid)
    pods.remove(cid)
    with open("/proc/self/mountinfo") as f:
        assert not [line for line in f if bundle in line or own in line]

# -- refusals -------------------------------------------------------------------------------------


@pytest.mark.parametrize("options,words", [
    (userns(pb.POD, [pb.IDMapping(container_id=0, host_id=HOST_UID, length=LENGTH),
                     pb.IDMapping(container_id=0, host_id=HOST_UID + LENGTH, length=LENGTH)],
            [pb.IDMapping(container_id=0, host_id=HOST_GID, length=LENGTH)]), "exactly one uid mapping, got 2"),
    (userns(pb.POD, [pb.IDMapping(container_id=1, host_id=HOST_UID, length=LENGTH)],
            [pb.IDMapping(container_id=1, host_id=HOST_GID, length=LENGTH)]), "container ID 0 must be mapped"),
    (userns(pb.CONTAINER), "mode CONTAINER is not supported"),
    (userns(pb.TARGET), "mode TARGET is not supported"),
    (userns(pb.NODE, [pb.IDMapping(container_id=0, host_id=HOST_UID, length=LENGTH)]), "takes no uid or gid mappings"),
    (userns(pb.POD, [pb.IDMapping(container_id=0, host_id=2**32 - 10, length=LENGTH)],
            [pb.IDMapping(container_id=0, host_id=HOST_GID, length=LENGTH)]), "goes beyond the last id"),
], ids=["two-mappings", "zero-unmapped", "container", "target", "node-with-mappings", "overflow"])
def test_refused_pods(pods, options, words):
    config = pods.pod_config()
    config.linux.security_context.namespace_options.userns_options.CopyFrom(options)
    err = rpc_error(pods.run_pod, config)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    assert words in err.details(), err.details()
    assert not pods.rt.ListPodSandbox(pb.ListPodSandboxRequest()).items  # refused before anything was made


def test_a_pod_of_its_own_user_namespace_on_the_hosts_network_is_refused(pods):
    config = pods.pod_config(network=pb.NODE)
    config.linux.security_context.namespace_options.userns_options.CopyFrom(userns())
    err = rpc_error(pods.run_pod, config)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    assert "can not share the host's network namespace" in err.details(), err.details()


def test_a_container_must_have_its_pods_user_namespace(pods, busybox):
    pod, config = userns_pod(pods)
    other = pods.container_config(busybox, ["sleep", "1000"])  # no userns_options: the host's
    err = rpc_error(pods.create, pod, other)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    assert "must be its pod's" in err.details(), err.details()
    different = in_pod(pods, config, busybox, ["sleep", "1000"])
    different.linux.security_context.namespace_options.userns_options.uids[0].host_id = HOST_UID + LENGTH
    err = rpc_error(pods.create, pod, different)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    plain = pods.run_pod()
    err = rpc_error(pods.create, plain, in_pod(pods, config, busybox, ["sleep", "1000"]))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    assert not pods.rt.ListContainers(pb.ListContainersRequest()).containers


def test_a_bidirectional_mount_is_refused(pods, busybox, tmp_path):
    pod, config = userns_pod(pods)
    bidirectional = in_pod(pods, config, busybox, ["sleep", "1000"], mounts=[
        pb.Mount(container_path="/data", host_path=str(tmp_path), propagation=pb.PROPAGATION_BIDIRECTIONAL)])
    err = rpc_error(pods.create, pod, bidirectional)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    assert "bidirectional propagation" in err.details(), err.details()


@pytest.mark.skipif(not OCI_RUNTIMES, reason="needs an OCI runtime that runs here: apt-get install runc")
def test_a_handler_without_user_namespaces_refuses_such_a_pod(pods):
    features = {h.name: h.features for h in pods.rt.Status(pb.StatusRequest()).runtime_handlers}
    for name in OCI_RUNTIMES:
        if features[name].user_namespaces:
            continue
        config = pods.pod_config()
        config.linux.security_context.namespace_options.userns_options.CopyFrom(userns())
        err = rpc_error(pods.rt.RunPodSandbox, pb.RunPodSandboxRequest(config=config, runtime_handler=name))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
        assert "user_namespaces: false" in err.details(), err.details()


# -- NODE, Status, cleanup --------------------------------------------------------------------------


def test_node_mode_keeps_the_hosts_user_namespace(pods, busybox):
    pod, config = userns_pod(pods, userns(pb.NODE))
    cid = run_in_pod(pods, pod, config, busybox, ["sleep", "1000"])
    pid = pid_of(pods, cid)
    assert ns_inode(f"/proc/{pid}/ns/user") == ns_inode("/proc/self/ns/user")
    assert pods.sh(cid, "cat /proc/self/uid_map").split() == read("/proc/self/uid_map").split()
    assert not os.path.exists(os.path.join(sandbox_dir(pods, pod), "ns", "user"))
    assert "uidMappings" not in json.loads(pods.status(cid, verbose=True).info["info"])["runtimeSpec"]["linux"]


def test_status_says_which_handlers_have_user_namespaces(pods):
    features = {h.name: h.features for h in pods.rt.Status(pb.StatusRequest()).runtime_handlers}
    assert features[""].user_namespaces and features["cricket"].user_namespaces
    for name in OCI_RUNTIMES:
        # runc 1.1 joins a user namespace by path but can not idmap a bind mount: not claimed.
        assert not features[name].user_namespaces, name


def test_removing_the_pod_lets_go_of_its_user_namespace(pods, busybox):
    pod, config = userns_pod(pods, pid=pb.POD)
    run_in_pod(pods, pod, config, busybox, ["sleep", "1000"], pid=pb.POD)
    pin = os.path.join(sandbox_dir(pods, pod), "ns", "user")
    assert os.path.ismount(pin)
    pods.stop_pod(pod)
    pods.remove_pod(pod)
    assert not os.path.exists(sandbox_dir(pods, pod))
    with open("/proc/self/mountinfo") as f:
        assert pod not in f.read()


def test_a_restarted_cricketd_finds_the_pod_and_execs_join_its_user_namespace(daemon, pods, busybox):
    pod, config = userns_pod(pods)
    cid = run_in_pod(pods, pod, config, busybox, ["sleep", "1000"])
    pid = pid_of(pods, cid)
    daemon.restart()
    assert pods.pod_status(pod).status.state == pb.SANDBOX_READY
    assert pid_of(pods, cid) == pid
    assert pods.sh(cid, "cat /proc/self/uid_map").split() == ["0", str(HOST_UID), str(LENGTH)]
    # And a new container still joins the pod's namespace.
    second = run_in_pod(pods, pod, config, busybox, ["sleep", "1000"])
    assert ns_inode(f"/proc/{pid_of(pods, second)}/ns/user") == ns_inode(f"/proc/{pid}/ns/user")
