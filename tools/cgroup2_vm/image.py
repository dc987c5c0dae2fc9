"""The guest's disk image: Debian bookworm by debootstrap, Debian's kernel, the tests' packages.

Built once into CACHE/image/ (rootfs.qcow2, vmlinuz, initrd.img) and kept while its stamp holds
the hash of what it was built from: the package lists, the apt sources it was fetched from and
this file's own text. Every mount the build makes is made in a private mount namespace
(`unshare --mount`), so none outlives the build, even one killed half-way; no loop device is
used (mke2fs -d fills the file system from the directory).
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

from tools.cgroup2_vm import disks

SUITE = "bookworm"
# On this machine, to build and boot the image.
HOST_DEBS = ("qemu-system-x86", "qemu-utils", "debootstrap", "debian-archive-keyring", "e2fsprogs", "util-linux")
# What debootstrap lays down beside the minimal base: an init that mounts cgroup2 as a v2 host's does.
BASE_INCLUDE = ("systemd-sysv", "udev", "kmod")
# The guest's packages, installed by apt in the new root: the kernel, Python for the venv, and
# what `make deps-test` installs for the tests (registry, skopeo, busybox, runc and crun, CNI).
GUEST_DEBS = ("linux-image-amd64", "python3", "python3-venv", "iproute2", "iptables", "libseccomp2",
              "busybox-static", "docker-registry", "skopeo", "runc", "crun", "containernetworking-plugins",
              "openssl", "curl", "apache2-utils", "procps")
# Units that would only cost boot time (under TCG a boot is minutes of them), or (the registry)
# hold a port the tests may want. No udev: the guest's disks are mounted by label through libblkid,
# the 9p modules are loaded by name, and /dev is the kernel's devtmpfs.
MASKED_UNITS = ("docker-registry.service", "apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer",
                "e2scrub_reap.service", "fstrim.timer", "getty@.service", "serial-getty@.service",
                "systemd-timesyncd.service", "systemd-udevd.service", "systemd-udevd-control.socket",
                "systemd-udevd-kernel.socket", "systemd-udev-trigger.service", "systemd-udev-settle.service",
                "systemd-update-utmp.service", "systemd-update-utmp-runlevel.service", "systemd-binfmt.service",
                "proc-sys-fs-binfmt_misc.automount", "dpkg-db-backup.timer", "systemd-tmpfiles-clean.timer",
                "systemd-random-seed.service", "systemd-pstore.service", "modprobe@.service")
FREE_SPACE = 3 << 30  # left free on the guest's root file system for the venv, images and containers
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"

# The guest's side of a run, baked into the image: mount the run directory the host shares and
# hand over to that run's guest.sh, then power off (the disk is a snapshot: nothing to save).
RUNNER = """#!/bin/sh
# Baked into the image by tools/cgroup2_vm/image.py; the run itself is the run share's guest.sh.
modprobe -a 9pnet_virtio 9p
mkdir -p /mnt/run
if mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 run /mnt/run; then
    bash -c 'set -o pipefail; bash /mnt/run/guest.sh 2>&1 | tee /mnt/run/guest.log'
    sync
    umount /mnt/run
else
    echo "cgroup2-vm: the run share did not mount"
fi
echo o > /proc/sysrq-trigger
"""

UNIT = """[Unit]
Description=Cricket's tests on a cgroup v2-only host (tools/cgroup2_vm)
After=local-fs.target systemd-tmpfiles-setup.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/cricket-cgroup2-run
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=infinity

[Install]
WantedBy=multi-user.target
"""


@dataclass(frozen=True)
class Source:
    """One apt source: a URI with its suites and components."""
    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]
    signed_by: str = ""


@dataclass(frozen=True)
class Image:
    directory: str
    disk: str
    kernel: str
    initrd: str

    def exists(self) -> bool:
        return all(os.path.isfile(p) for p in (self.disk, self.kernel, self.initrd))


def image_at(cache: str) -> Image:
    d = os.path.join(cache, "image")
    return Image(d, os.path.join(d, "rootfs.qcow2"), os.path.join(d, "vmlinuz"), os.path.join(d, "initrd.img"))


# -- this machine ---------------------------------------------------------------------------------


def ensure_host_packages(names=HOST_DEBS) -> None:
    """apt-get install the Debian packages that are missing, without a question asked."""
    missing = []
    for name in names:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Status}", name], capture_output=True, text=True)
        if "ok installed" not in out.stdout:
            missing.append(name)
    if not missing:
        return
    print(f"cgroup2-vm: installing Debian packages: {' '.join(missing)}", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], check=True, env=env,
                   stdout=subprocess.DEVNULL)


def parse_one_line_sources(text: str) -> list[Source]:
    """`deb [options] uri suite components...` lines of a sources.list."""
    out = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue
        words = line[4:].split()
        signed_by = ""
        if words and words[0].startswith("["):
            options = []
            while words:
                word = words.pop(0)
                options.append(word.strip("[]"))
                if word.endswith("]"):
                    break
            signed_by = next((o.split("=", 1)[1] for o in options if o.startswith("signed-by=")), "")
        if len(words) >= 2:
            out.append(Source(words[0], (words[1],), tuple(words[2:]), signed_by))
    return out


def parse_deb822_sources(text: str) -> list[Source]:
    """The stanzas of a .sources file (deb822) whose Types include deb and that are not disabled."""
    out = []
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = ""
        for line in stanza.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0] in " \t" and key:
                fields[key] += " " + line.strip()
                continue
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes").lower() == "no":
            continue
        for uri in fields.get("uris", "").split():
            out.append(Source(uri, tuple(fields.get("suites", "").split()), tuple(fields.get("components", "").split()),
                              fields.get("signed-by", "")))
    return out


def host_sources(etc: str = "/etc/apt") -> list[Source]:
    """The Debian sources of this machine's apt for SUITE and its updates and security suites."""
    found: list[Source] = []
    paths = [os.path.join(etc, "sources.list"), *sorted(glob.glob(os.path.join(etc, "sources.list.d", "*")))]
    for path in paths:
        if not os.path.isfile(path) or not path.endswith((".list", ".sources")):
            continue  # apt reads no other names (a "*.disabled" file is off)
        with open(path) as f:
            text = f.read()
        found += parse_deb822_sources(text) if path.endswith(".sources") else parse_one_line_sources(text)
    out = []
    for s in found:
        suites = tuple(x for x in s.suites if x == SUITE or x.startswith((SUITE + "-", SUITE + "/")))
        if suites and "main" in s.components:
            out.append(Source(s.uri, suites, ("main",), s.signed_by))
    if not any(SUITE in s.suites for s in out):
        raise SystemExit(f"cgroup2-vm: no apt source for Debian {SUITE} main in {etc}/sources.list*: "
                         "the image is fetched from the mirror this machine uses")
    return out


def guest_sources_list(sources: list[Source]) -> str:
    lines = []
    for s in sources:
        # The guest has Debian's keyring (debootstrap installs it); another key file is the host's alone.
        option = f"[signed-by={KEYRING}] " if s.signed_by == KEYRING else ""
        lines += [f"deb {option}{s.uri} {suite} {' '.join(s.components)}" for suite in s.suites]
    return "\n".join(lines) + "\n"


def inputs_hash(sources: list[Source]) -> str:
    """What the image is made of: the packages, where they come from, and how it is built."""
    with open(__file__, "rb") as f:
        source = f.read()
    doc = {"suite": SUITE, "base": BASE_INCLUDE, "debs": GUEST_DEBS, "masked": MASKED_UNITS,
           "sources": [asdict(s) for s in sources], "builder": hashlib.sha256(source).hexdigest()}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def is_current(image: Image, digest: str) -> bool:
    try:
        with open(os.path.join(image.directory, "stamp")) as f:
            return f.read().strip() == digest and image.exists()
    except FileNotFoundError:
        return False


# -- the build ------------------------------------------------------------------------------------


def _in_private_mounts(script: str, env: dict[str, str], log) -> None:
    """Run a shell script in a mount namespace of its own: its mounts die with it. It leads a
    process group of its own, so that an interrupted build (^C, SIGTERM) ends debootstrap, apt
    and dpkg under it too, and none goes on writing into the tree that is being removed."""
    cmd = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-euc", script]
    proc = subprocess.Popen(cmd, env={**os.environ, **env, "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C.UTF-8"},
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        code = proc.wait()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the group this build started, by its id
        proc.wait()
        raise
    if code != 0:
        raise RuntimeError(f"exited {code}")


DEBOOTSTRAP = """
debootstrap --variant=minbase --include="$INCLUDE" --components=main --keyring="$KEYRING" \
    "$SUITE" "$ROOT" "$MIRROR"
"""

# /dev is left as debootstrap made it (its own nodes): binding the host's /dev into a tree that is
# removed afterwards is how hosts lose their /dev.
APT_INSTALL = """
mount -t proc proc "$ROOT/proc"
mount -t sysfs sysfs "$ROOT/sys"
mount -t tmpfs tmpfs "$ROOT/run"
chroot "$ROOT" apt-get update -q
chroot "$ROOT" apt-get install -y -q --no-install-recommends $DEBS
chroot "$ROOT" apt-get clean
"""


def _mounts_under(path: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p == path or p.startswith(path + "/")]


def _remove_tree(path: str) -> None:
    if not os.path.lexists(path):
        return
    busy = _mounts_under(os.path.realpath(path))
    if busy:  # cannot happen (every mount is in a namespace that is gone), and must not be deleted through
        raise RuntimeError(f"cgroup2-vm: {path} has mounts ({', '.join(busy)}); unmount them, then remove it")
    shutil.rmtree(path)


def _write(path: str, text: str, mode: int = 0o644) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def _configure(root: str) -> None:
    """What makes the root a guest that boots straight into the run and nothing else."""
    # The kernel mounts the root read-write (`rw`); an fstab line for it would have systemd wait
    # for a device unit that, without udev, never comes.
    _write(os.path.join(root, "etc/fstab"), "# / is mounted by the kernel (root=/dev/vda rw)\n")
    _write(os.path.join(root, "etc/hostname"), "cricket-cgroup2\n")
    _write(os.path.join(root, "etc/hosts"), "127.0.0.1 localhost cricket-cgroup2\n::1 localhost ip6-localhost\n")
    # A machine ID now, so that no boot is a "first boot" (which would apply presets to every unit).
    _write(os.path.join(root, "etc/machine-id"), secrets.token_hex(16) + "\n", 0o444)
    _write(os.path.join(root, "usr/local/sbin/cricket-cgroup2-run"), RUNNER, 0o755)
    units = os.path.join(root, "etc/systemd/system")
    _write(os.path.join(units, "cricket-cgroup2.service"), UNIT)
    os.makedirs(os.path.join(units, "multi-user.target.wants"), exist_ok=True)
    os.symlink("../cricket-cgroup2.service", os.path.join(units, "multi-user.target.wants/cricket-cgroup2.service"))
    for unit in MASKED_UNITS:
        link = os.path.join(units, unit)
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink("/dev/null", link)


def build(cache: str, sources: list[Source], digest: str, log_path: str) -> float:
    """Build the image into CACHE/image (replacing any), logging to log_path; seconds taken."""
    started = time.monotonic()
    image = image_at(cache)
    work = os.path.join(cache, "build.tmp")
    _remove_tree(work)  # a build cut short before
    root = os.path.join(work, "root")
    os.makedirs(root)
    mirror = next(s.uri for s in sources if SUITE in s.suites)
    env = {"ROOT": root, "SUITE": SUITE, "MIRROR": mirror, "KEYRING": KEYRING, "INCLUDE": ",".join(BASE_INCLUDE),
           "DEBS": " ".join(GUEST_DEBS)}
    steps = 5
    try:
        with open(log_path, "w") as log:
            print(f"cgroup2-vm: building the image (log: {log_path})", flush=True)
            print(f"cgroup2-vm: [1/{steps}] debootstrap {SUITE} from {mirror}", flush=True)
            _in_private_mounts(DEBOOTSTRAP, env, log)
            _write(os.path.join(root, "etc/apt/sources.list"), guest_sources_list(sources))
            _write(os.path.join(root, "usr/sbin/policy-rc.d"), "#!/bin/sh\nexit 101\n", 0o755)  # start nothing
            print(f"cgroup2-vm: [2/{steps}] apt-get install {' '.join(GUEST_DEBS)}", flush=True)
            _in_private_mounts(APT_INSTALL, env, log)
            os.unlink(os.path.join(root, "usr/sbin/policy-rc.d"))
            for lists in glob.glob(os.path.join(root, "var/lib/apt/lists/*")):
                if os.path.isfile(lists):
                    os.unlink(lists)
            _configure(root)
            kernels = sorted(glob.glob(os.path.join(root, "boot/vmlinuz-*")))
            initrds = sorted(glob.glob(os.path.join(root, "boot/initrd.img-*")))
            if not kernels or not initrds:
                raise RuntimeError("no kernel or initrd under /boot of the new root")
            print(f"cgroup2-vm: [3/{steps}] kernel {os.path.basename(kernels[-1])[len('vmlinuz-'):]}", flush=True)
            os.makedirs(work, exist_ok=True)
            shutil.copyfile(kernels[-1], os.path.join(work, "vmlinuz"))
            shutil.copyfile(initrds[-1], os.path.join(work, "initrd.img"))
            print(f"cgroup2-vm: [4/{steps}] ext4 file system of the root", flush=True)
            raw = os.path.join(work, "rootfs.raw")
            disks.make_ext4(root, raw, "cricket-root", FREE_SPACE, log)
            print(f"cgroup2-vm: [5/{steps}] qcow2 disk image", flush=True)
            subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw,
                            os.path.join(work, "rootfs.qcow2")], check=True, stdout=log, stderr=subprocess.STDOUT)
            os.unlink(raw)
        _remove_tree(image.directory)
        os.makedirs(image.directory)
        for name in ("rootfs.qcow2", "vmlinuz", "initrd.img"):
            os.replace(os.path.join(work, name), os.path.join(image.directory, name))
        _write(os.path.join(image.directory, "stamp"), digest + "\n")
    except (RuntimeError, subprocess.CalledProcessError, OSError) as e:
        print(f"cgroup2-vm: the image build failed: {e}; the end of {log_path}:", file=sys.stderr)
        with open(log_path, errors="replace") as f:
            sys.stderr.writelines(f.readlines()[-30:])
        raise SystemExit(2) from None
    finally:
        _remove_tree(work)
    return time.monotonic() - started


def size_of(image: Image) -> tuple[int, int]:
    """Bytes on this machine's disk of the image's files, and the guest disk's virtual size."""
    on_disk = sum(os.stat(p).st_blocks * 512 for p in (image.disk, image.kernel, image.initrd))
    info = subprocess.run(["qemu-img", "info", "--output=json", image.disk], capture_output=True, text=True, check=True)
    return on_disk, int(json.loads(info.stdout)["virtual-size"])
