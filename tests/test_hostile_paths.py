"""Hostile paths: what an image, or another container sharing a volume, puts where the runtime
works on files (issue 13).

- Seeding an image's VOLUME never reads a special file, never follows a symlink, keeps every
  kind of file and its metadata, and copies no more than the image holds.
- A mount's destination, swapped for a symlink between its check and its use, never takes a
  mount, a mount point or a device's mode out of the rootfs (runc's CVE-2021-30465). The
  swap is made deterministically by a hook on the call that uses the path.
- A container's process is not dumpable until execve, and the pod init gives no way to the host.
- An image's /etc/passwd that is a FIFO or too large neither hangs CreateContainer nor the daemon.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import stat
import subprocess
import threading
import time

import grpc
import pytest

from api.runtime.v1 import api_pb2 as pb
from linux import libc, mounts
from tests.daemon import need_root, registry_config
from tests.fixtures import images
from tests.pods import Pods, rpc_error, serving

CREATE_DEADLINE = 20  # seconds: a CreateContainer that takes longer is taken to hang


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def host_disk(tmp_path_factory):
    """A loop device over a file of HOST_DISK_MARKER: a host disk whose bytes are known. Yields (major, minor)."""
    need_root()
    if not shutil.which("losetup"):
        pytest.skip("needs losetup: apt-get install mount")
    backing = tmp_path_factory.mktemp("host-disk") / "disk.img"
    backing.write_bytes(images.HOST_DISK_MARKER * (65536 // len(images.HOST_DISK_MARKER) + 1))
    run = subprocess.run(["losetup", "--find", "--show", str(backing)], capture_output=True, text=True)
    if run.returncode:
        pytest.skip(f"no loop device to stand for a host disk: {run.stderr.strip()}")
    device = run.stdout.strip()
    try:
        rdev = os.stat(device).st_rdev
        yield os.major(rdev), os.minor(rdev)
    finally:
        subprocess.run(["losetup", "-d", device], check=False)


@pytest.fixture(scope="module")
def hostile(registry, host_disk, tmp_path_factory):
    """name → reference of each image of build_hostile_rootfs_images, pushed to the registry."""
    workdir = tmp_path_factory.mktemp("hostile-images")
    try:
        built = images.build_hostile_rootfs_images(str(workdir), host_disk)
        images.push_all(built, registry)
        yield {name: info.reference(registry) for name, info in built.items()}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def daemon(registry, test_images, hostile, tmp_path_factory):
    refs = [test_images["busybox"].reference(registry), *hostile.values()]
    with serving(str(tmp_path_factory.mktemp("cricketd")), registry_config(registry), refs) as d:
        yield d


@pytest.fixture
def pods(daemon, tmp_path):
    p = Pods(daemon, str(tmp_path / "logs"))
    yield p
    p.remove_all()


@pytest.fixture
def busybox(registry, test_images):
    return test_images["busybox"].reference(registry)


def volume_dir(daemon, cid: str) -> str:
    return os.path.join(daemon.root, "containers", cid, "volumes", "0")


# -- seeding an image's VOLUME ------------------------------------------------------------


def test_seeding_a_volume_never_reads_a_device(pods, daemon, hostile, host_disk):
    pod = pods.run_pod()
    cid = pods.create(pod, pods.container_config(hostile["volume-disk"], ["sleep", "1000"]))
    seeded = volume_dir(daemon, cid)
    st = os.lstat(os.path.join(seeded, "disk"))
    assert stat.S_ISBLK(st.st_mode), f"the volume's disk is {oct(st.st_mode)}: its content was copied"
    assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == host_disk
    for dirpath, _, names in os.walk(seeded):
        for name in names:
            path = os.path.join(dirpath, name)
            if stat.S_ISREG(os.lstat(path).st_mode):
                with open(path, "rb") as f:
                    assert images.HOST_DISK_MARKER not in f.read(), f"{path} holds the host disk's bytes"
    pods.start(cid)  # and the container runs with it
    assert pods.sh(cid, "cat /data/plain") == "plain\n"


def test_seeding_a_volume_keeps_every_kind_of_file(pods, daemon, hostile):
    pod = pods.run_pod()
    cid = pods.create(pod, pods.container_config(hostile["volume-specials"], ["sleep", "1000"]))
    seeded = volume_dir(daemon, cid)

    def st(name):
        return os.lstat(os.path.join(seeded, name) if name else seeded)

    top = st("")
    assert (stat.S_IMODE(top.st_mode), top.st_uid, top.st_gid, int(top.st_mtime)) == (0o750, 1000, 1000, 1234567890)
    null = st("null")
    assert stat.S_ISCHR(null.st_mode) and null.st_rdev == os.makedev(1, 3)
    assert (stat.S_IMODE(null.st_mode), null.st_uid, null.st_gid) == (0o640, 1000, 50)
    fifo = st("fifo")
    assert stat.S_ISFIFO(fifo.st_mode) and (stat.S_IMODE(fifo.st_mode), fifo.st_uid) == (0o620, 1000)
    assert os.readlink(os.path.join(seeded, "abs-out")) == "/etc/passwd"
    assert os.readlink(os.path.join(seeded, "up-out")) == "../../../../etc/shadow"
    a, b = st("a"), st("b")
    assert a.st_ino == b.st_ino and (stat.S_IMODE(a.st_mode), a.st_uid, int(a.st_mtime)) == (0o600, 1000, 1234567890)
    assert open(os.path.join(seeded, "a"), "rb").read() == b"one inode, two names\n"
    setuid = st("setuid")
    assert (stat.S_IMODE(setuid.st_mode), setuid.st_uid) == (0o4755, 1000)  # chown did not clear it
    assert os.getxattr(os.path.join(seeded, "xattr"), "user.cricket") == b"seeded"
    deep, leaf = st("deep"), st("deep/leaf")
    assert (stat.S_IMODE(deep.st_mode), deep.st_uid) == (0o700, 1000)
    assert (stat.S_IMODE(leaf.st_mode), leaf.st_uid, int(leaf.st_mtime)) == (0o640, 1000, 1300000000)
    pods.start(cid)
    assert pods.sh(cid, "cat /data/deep/leaf") == "leaf\n"


def test_a_directory_behind_many_volumes_is_copied_once(pods, daemon, hostile):
    pod = pods.run_pod()
    cid = pods.create(pod, pods.container_config(hostile["volume-fanout"], ["sleep", "1000"]))
    volumes = os.path.join(daemon.root, "containers", cid, "volumes")
    copied = sum(os.lstat(os.path.join(d, n)).st_size for d, _, names in os.walk(volumes) for n in names
                 if stat.S_ISREG(os.lstat(os.path.join(d, n)).st_mode))
    assert copied <= 2**20, f"{copied} bytes copied for an image holding one MiB"
    pods.start(cid)
    assert pods.sh(cid, "busybox wc -c < /v7/blob").strip() == str(2**20)


# -- /etc/passwd that is not a file to read ---------------------------------------------------


def _let_fifo_readers_go(daemon) -> None:
    """A reader blocked opening a FIFO in a rootfs (the unfixed daemon) is let go: opened for
    writing, then closed, the FIFO gives it end of file and the daemon can be stopped."""
    for path in glob.glob(os.path.join(daemon.state, "containers", "*", "rootfs", "etc", "*")):
        if stat.S_ISFIFO(os.lstat(path).st_mode):
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass  # no reader waits


@pytest.mark.parametrize("name,path", [("passwd-fifo", "/etc/passwd"), ("group-fifo", "/etc/group")])
def test_a_fifo_for_etc_passwd_hangs_neither_create_nor_the_daemon(pods, daemon, hostile, name, path):
    pod = pods.run_pod()
    req = pb.CreateContainerRequest(pod_sandbox_id=pod, config=pods.container_config(hostile[name], ["true"]))
    outcome: dict = {}

    def create():
        try:
            outcome["id"] = pods.rt.CreateContainer(req, timeout=CREATE_DEADLINE).container_id
        except grpc.RpcError as e:
            outcome["error"] = e

    creating = threading.Thread(target=create)
    creating.start()
    try:
        for _ in range(10):  # meanwhile, the daemon answers
            pods.rt.Version(pb.VersionRequest(), timeout=3)
            pods.rt.ListContainers(pb.ListContainersRequest(), timeout=3)
            time.sleep(0.05)
        creating.join(CREATE_DEADLINE + 5)
    finally:
        _let_fifo_readers_go(daemon)
        creating.join()
    err = outcome.get("error")
    assert err is not None, "a container was created from users in a FIFO"
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert path in err.details() and "FIFO" in err.details()
    assert pods.rt.ListContainers(pb.ListContainersRequest()).containers == []  # nothing half made


def test_an_oversized_etc_passwd_is_refused_naming_it(pods, hostile):
    pod = pods.run_pod()
    err = rpc_error(pods.create, pod, pods.container_config(hostile["passwd-huge"], ["true"]))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "/etc/passwd" in err.details() and "larger than" in err.details()


# -- ptrace before execve -------------------------------------------------------------------


def _held_process(pods: Pods, cid: str) -> tuple[int, int]:
    """(host pid, pid in its PID namespace) of a created container's process, held before execve."""
    shim = json.loads(pods.status(cid, verbose=True).info["info"])["shimPid"]
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with open(f"/proc/{shim}/task/{shim}/children") as f:
            children = [int(p) for p in f.read().split()]
        for pid in children:
            try:
                with open(f"/proc/{pid}/status") as f:
                    nspid = next(line.split()[1:] for line in f if line.startswith("NSpid:"))
            except (OSError, StopIteration):
                continue
            if len(nspid) == 2:  # in the pod's PID namespace: set up, or nearly
                return pid, int(nspid[1])
        time.sleep(0.05)
    raise AssertionError(f"no held process under shim {shim}")


def test_a_held_container_process_can_not_be_read_from_its_pod(pods, busybox):
    pod = pods.run_pod(pid=pb.POD)
    neighbour = pods.run(pod, busybox, ["sleep", "1000"], pid=pb.POD)
    held = pods.create(pod, pods.container_config(busybox, ["sleep", "1000"], pid=pb.POD))
    _, pid = _held_process(pods, held)
    time.sleep(0.5)  # past its set-up: holding the container's user and capabilities, waiting for start
    assert pods.exec(neighbour, ["cat", f"/proc/{pid}/status"]).exit_code == 0  # it is in sight
    for probe in (["cat", f"/proc/{pid}/environ"], ["busybox", "readlink", f"/proc/{pid}/exe"],
                  ["busybox", "dd", f"if=/proc/{pid}/mem", "bs=1", "count=0"]):
        out = pods.exec(neighbour, probe)
        assert out.exit_code != 0, f"{' '.join(probe)} works from the pod: {out.stdout!r}"
    pods.start(held)  # and, released, it runs
    assert pods.sh(held, "echo started") == "started\n"


def test_the_pod_init_gives_no_way_to_the_host(pods, busybox, tmp_path):
    marker = tmp_path / "host-marker"
    marker.write_text("on the host\n")
    pod = pods.run_pod(pid=pb.POD)
    ctx = pb.LinuxContainerSecurityContext(capabilities=pb.Capability(add_capabilities=["SYS_PTRACE"]))
    cid = pods.run(pod, busybox, ["sleep", "1000"], pid=pb.POD, security=ctx)
    assert pods.sh(cid, "cat /proc/1/comm").strip() == "cricket-podinit"
    out = pods.exec(cid, ["cat", f"/proc/1/root{marker}"])
    assert out.exit_code != 0, f"the host's {marker} is read through the pod init's root"
    status = pods.sh(cid, "cat /proc/1/status")
    assert "CapEff:\t0000000000000000" in status, status


# -- mount destinations raced out of the rootfs ------------------------------------------------


def _in_own_mount_namespace(body) -> dict:
    """Run body() in a forked child in a mount namespace of its own (nothing propagates to the
    host, and its mounts go with it); its result (a dict) comes back as JSON."""
    need_root()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(r)
            libc.unshare(libc.CLONE_NEWNS)
            libc.mount(None, "/", None, libc.MS_PRIVATE | libc.MS_REC)
            result = body()
        except BaseException as e:
            result, code = {"crash": repr(e)}, 1
        os.write(w, json.dumps(result).encode())
        os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    result = json.loads(data)
    assert "crash" not in result, result["crash"]
    return result


def _mounts_under(path: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p == path or p.startswith(path + "/")]


class _Swap:
    """The attacker: `name`, a directory of a volume shared into the rootfs, swapped for a symlink
    to `outside` (a host directory) — once, at the moment `hook` of the module `owner` is called.
    Made in the forked child only, which exits without undoing it."""

    def __init__(self, name: str, outside: str, owner, hook: str, when=lambda *a, **kw: True):
        self.name, self.outside, self.fired = name, outside, False
        real = getattr(owner, hook)

        def hooked(*args, **kw):
            if not self.fired and when(*args, **kw):
                self.fired = True
                os.rename(self.name, self.name + "-aside")
                os.symlink(self.outside, self.name)
            return real(*args, **kw)

        setattr(owner, hook, hooked)


@pytest.fixture
def tree(tmp_path):
    """rootfs/vol/dir (a shared volume's directory), outside/ (the host), src/ (a mount's source)."""
    rootfs, outside, src = tmp_path / "rootfs", tmp_path / "outside", tmp_path / "src"
    (rootfs / "vol" / "dir").mkdir(parents=True)
    outside.mkdir()
    src.mkdir()
    (src / "payload").write_text("mounted\n")
    return str(rootfs), str(outside), str(src)


def _bind(destination: str, source: str) -> dict:
    return {"destination": destination, "type": "bind", "source": source, "options": ["rbind", "rprivate", "rw"]}


def _mount_and_look(rootfs: str, outside: str, m: dict, swap: _Swap) -> dict:
    error = None
    try:
        mounts.mount_one(rootfs, m, None)
    except OSError as e:
        error = str(e)
    return {"fired": swap.fired, "error": error, "outside_mounts": _mounts_under(outside),
            "outside": sorted(os.listdir(outside))}


def test_a_bind_destination_swapped_at_mount_time_stays_in_the_rootfs(tree):
    rootfs, outside, src = tree
    os.mkdir(os.path.join(rootfs, "vol", "dir", "x"))
    os.mkdir(os.path.join(outside, "x"))

    def body():
        swap = _Swap(os.path.join(rootfs, "vol", "dir"), outside, libc, "mount")
        seen = _mount_and_look(rootfs, outside, _bind("/vol/dir/x", src), swap)
        seen["inside"] = os.path.exists(os.path.join(rootfs, "vol", "dir-aside", "x", "payload"))
        return seen

    seen = _in_own_mount_namespace(body)
    assert seen["fired"], "the swap never happened: the test proves nothing"
    assert seen["outside_mounts"] == [], f"mounted outside the rootfs: {seen}"
    assert seen["inside"] and seen["error"] is None, seen


def test_a_file_mount_point_made_after_a_swap_stays_in_the_rootfs(tree, tmp_path):
    rootfs, outside, _ = tree
    source = tmp_path / "file-source"
    source.write_text("a file\n")

    def body():
        swap = _Swap(os.path.join(rootfs, "vol", "dir"), outside, os, "open",
                     when=lambda path, flags, *a, **kw: bool(flags & os.O_CREAT))
        return _mount_and_look(rootfs, outside, _bind("/vol/dir/f", str(source)), swap)

    seen = _in_own_mount_namespace(body)
    assert seen["fired"], "the swap never happened: the test proves nothing"
    assert (seen["outside"], seen["outside_mounts"]) == ([], []), f"made or mounted outside the rootfs: {seen}"


def test_a_directory_mount_point_made_after_a_swap_stays_in_the_rootfs(tree):
    rootfs, outside, src = tree

    def body():
        swap = _Swap(os.path.join(rootfs, "vol", "dir"), outside, os, "mkdir")
        return _mount_and_look(rootfs, outside, _bind("/vol/dir/new/sub", src), swap)

    seen = _in_own_mount_namespace(body)
    assert seen["fired"], "the swap never happened: the test proves nothing"
    assert (seen["outside"], seen["outside_mounts"]) == ([], []), f"made or mounted outside the rootfs: {seen}"


def test_a_device_swapped_for_a_symlink_lends_its_mode_to_nothing(tmp_path):
    rootfs, victim = tmp_path / "rootfs", tmp_path / "victim"
    (rootfs / "dev" / "vol").mkdir(parents=True)
    victim.write_text("a host file\n")
    os.chmod(victim, 0o600)
    device = {"path": "/dev/vol/tty9", "type": "c", "major": 1, "minor": 3, "fileMode": 0o666, "uid": 1000, "gid": 1000}
    fired = []

    def body():
        real_mknod = os.mknod

        def mknod(path, mode=0o600, device=0, *, dir_fd=None):
            real_mknod(path, mode, device, dir_fd=dir_fd)
            full = path if dir_fd is None else f"/proc/self/fd/{dir_fd}/{path}"
            if not fired and os.path.basename(full) == "tty9":  # the attacker replaces the new node
                fired.append(full)
                os.unlink(full)
                os.symlink(str(victim), full)

        os.mknod = mknod  # in the forked child only
        error = None
        try:
            mounts.create_devices(str(rootfs), [device])
        except OSError as e:
            error = str(e)
        return {"fired": bool(fired), "error": error}

    seen = _in_own_mount_namespace(body)
    assert seen["fired"], "the swap never happened: the test proves nothing"
    st = os.stat(victim)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o600, 0, 0), f"the host file was changed: {seen}"


def test_masking_never_binds_what_a_symlinked_dev_null_points_to(tmp_path):
    rootfs = tmp_path / "rootfs"
    (rootfs / "dev").mkdir(parents=True)
    (rootfs / "secret").write_text("what /dev/null pointed to\n")
    (rootfs / "masked").write_text("to be hidden\n")
    os.symlink("/secret", rootfs / "dev" / "null")  # a /dev that is a volume the container wrote

    def body():
        mounts.mask(str(rootfs), ["/masked"])
        with open(rootfs / "masked") as f:
            return {"masked": f.read()}

    assert _in_own_mount_namespace(body) == {"masked": ""}
