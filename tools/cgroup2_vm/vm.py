"""Booting the image under qemu-system-x86_64: the command line, and a VM that is always killed.

No network device at all: the tests talk to 127.0.0.1 inside the guest only. The disk is a
snapshot (nothing a run does is written back to the image); the checkout and the Python packages
come as two more disks. The serial console goes to a log file; the guest's run writes into the
read-write run share (9p), which the host follows.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

from tools.cgroup2_vm.image import Image

KERNEL_ARGS = ("root=/dev/vda", "rw", "console=ttyS0", "cgroup_no_v1=all", "systemd.unified_cgroup_hierarchy=1",
               "quiet", "loglevel=4", "systemd.show_status=false", "panic=-1")
_KVM_GET_API_VERSION = 0xAE00


def kernel_args(kvm: bool) -> list[str]:
    # Under TCG the speculation mitigations only cost emulated instructions: the guest's CPU is
    # an emulator, and nothing in it is secret.
    return [*KERNEL_ARGS] if kvm else [*KERNEL_ARGS, "mitigations=off"]


def kvm_works() -> bool:
    """KVM can run a stock kernel here: /dev/kvm answers (its API version is 12 wherever it
    exists) and the CPU has hardware virtualisation (vmx or svm). A /dev/kvm without it, as in a
    VM that offers nested KVM through PVM (kvm_pvm), runs only guest kernels built for that,
    and hangs a stock Debian kernel before its first line."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        flags = []
    if "vmx" not in flags and "svm" not in flags:
        return False
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return fcntl.ioctl(fd, _KVM_GET_API_VERSION) == 12
    except OSError:
        return False
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Share:
    tag: str
    path: str
    readonly: bool = True


@dataclass(frozen=True)
class Disk:
    path: str
    readonly: bool = False


def command(image: Image, disks: list[Disk], shares: list[Share], serial_log: str, *, memory_mib: int, cpus: int,
            kvm: bool) -> list[str]:
    # -cpu host but IA32_ARCH_CAPABILITIES: QEMU 7.2 asserts on hosts whose KVM refuses that MSR.
    accel = (["-accel", "kvm", "-cpu", "host,-arch-capabilities"] if kvm
             else ["-accel", "tcg,thread=multi,tb-size=512", "-cpu", "max"])
    cmd = ["qemu-system-x86_64", "-name", "cricket-cgroup2", "-machine", "q35", *accel,
           "-smp", str(cpus), "-m", str(memory_mib), "-nodefaults", "-no-user-config", "-display", "none",
           "-no-reboot", "-nic", "none", "-serial", f"file:{serial_log}", "-monitor", "none",
           "-kernel", image.kernel, "-initrd", image.initrd, "-append", " ".join(kernel_args(kvm)),
           "-drive", f"file={image.disk},if=virtio,format=qcow2,snapshot=on,cache=unsafe",
           "-device", "virtio-rng-pci"]
    for disk in disks:  # raw ext4 images, mounted by label in the guest
        cmd += ["-drive", f"file={disk.path},if=virtio,format=raw{',readonly=on' if disk.readonly else ''}"]
    for share in shares:
        ro = ",readonly=on" if share.readonly else ""
        cmd += ["-fsdev", f"local,id={share.tag},path={share.path},security_model=none{ro}",
                "-device", f"virtio-9p-pci,fsdev={share.tag},mount_tag={share.tag}"]
    return cmd


@contextlib.contextmanager
def running(cmd: list[str], log_path: str) -> Iterator[subprocess.Popen]:
    """qemu started with `cmd` (its own output to log_path); afterwards, whatever happened, it is
    stopped: SIGTERM to its pid, then SIGKILL if it lingers."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # a ^C at the terminal is ours to handle, not qemu's
    try:
        yield proc
    finally:
        stop(proc)


def stop(proc: subprocess.Popen, grace: float = 10) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
