"""`python -m tools.cgroup2_vm [options] [-- pytest args]`: build what is missing, boot, run, report
(see the package's docstring). Exits with pytest's status inside the guest; 2 when the image or
the wheels cannot be built, 3 when the VM ends without a status (it hung and was killed at the
timeout, or crashed): then the serial log says why."""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import sys
import time

from tools.cgroup2_vm import disks, image, vm, wheels

REPO = wheels.REPO
DEFAULT_CACHE = os.path.join(REPO, ".cache", "cgroup2-vm")
GUEST_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "guest.sh")
# The cgroup, device, resource and OOM tests: every one that makes cgroups, limits a container,
# reads its stats from cgroup files or controls its devices.
DEFAULT_TESTS = (
    "tests/test_cgroups.py",
    "tests/test_devices_bpf.py",
    "tests/test_devices_v2.py",
    "tests/test_security.py::test_cpu_and_memory_limits_are_visible_in_the_cgroup",
    "tests/test_security.py::test_update_resources_of_a_running_container",
    "tests/test_security.py::test_out_of_memory_is_reported_oom_killed",
    "tests/test_security.py::test_pids_limit_contains_a_fork_loop",
    "tests/test_security.py::test_negative_oom_score_adj_is_clamped_not_refused",
    "tests/test_security.py::test_bad_security_and_resources_are_refused_naming_the_field",
    "tests/test_security.py::test_what_the_process_sees_is_the_same_under_every_executor",
    "tests/test_containers.py::test_a_pods_own_cgroup_goes_with_it",
    "tests/test_containers.py::test_container_and_pod_stats_come_from_the_cgroups",
    "tests/test_metrics.py",
)
SUMMARY = re.compile(r"^=+ .*\b(passed|failed|error|errors|skipped|deselected|no tests ran)\b.* in [\d.]+s.*=+$")
EXIT_NO_STATUS = 3
KVM_TIMEOUT, TCG_TIMEOUT = 1800, 7200
TCG_SLOWDOWN = 10  # an emulated CPU is ten to thirty times slower than this one
KVM_SILENCE = 60  # seconds of an empty serial console after which a KVM boot is taken as hung


class Stopped(BaseException):
    """SIGTERM or SIGHUP: take the VM down and stop."""


def _stop_on_signal(signum: int, frame) -> None:
    raise Stopped(signal.Signals(signum).name)


def parse_args(argv: list[str]) -> argparse.Namespace:
    own, pytest_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(prog="python -m tools.cgroup2_vm", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--timeout", type=float, default=0,
                   help=f"seconds before the VM is killed (default {KVM_TIMEOUT} under KVM, {TCG_TIMEOUT} under TCG)")
    p.add_argument("--slowdown", type=float, default=0,
                   help=f"factor for the tests' own time limits (default 1 under KVM, {TCG_SLOWDOWN} under TCG)")
    p.add_argument("--memory", type=int, default=4096, help="the guest's memory in MiB (default 4096)")
    p.add_argument("--cpus", type=int, default=2, help="the guest's CPUs (default 2)")
    p.add_argument("--cache", default=DEFAULT_CACHE, help=f"where the image, wheels and runs go ({DEFAULT_CACHE})")
    p.add_argument("--tree", default=REPO, help="the checkout to test (default: this one)")
    p.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto",
                   help="auto (default): KVM where it can run a stock kernel, else TCG")
    p.add_argument("--rebuild", action="store_true", help="build the image even when its stamp is current")
    p.add_argument("--build-only", action="store_true", help="build the image and the wheels, boot nothing")
    args = p.parse_args(own)
    args.pytest_args = pytest_args or ["-q", *DEFAULT_TESTS]
    return args


def _fmt_bytes(n: int) -> str:
    return f"{n / (1 << 20):.0f} MiB" if n < 1 << 30 else f"{n / (1 << 30):.2f} GiB"


def _read_timings(path: str) -> dict[str, float]:
    out = {}
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.strip().partition("=")
                if value:
                    out[key] = float(value)
    except (FileNotFoundError, ValueError):
        pass
    return out


def _read_status(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (FileNotFoundError, ValueError):
        return None


class _Follower:
    """Copies what the guest appends to a file to our stdout as it comes."""

    def __init__(self, path: str):
        self.path = path
        self.offset = 0
        self.first_seen: float | None = None

    def poll(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return
        if data:
            if self.first_seen is None:
                self.first_seen = time.monotonic()
            self.offset += len(data)
            sys.stdout.buffer.write(data)
            sys.stdout.flush()


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0


def _prepare_run_dir(run_dir: str, pytest_args: list[str], slowdown: float) -> None:
    if os.path.isdir(run_dir):
        shutil.rmtree(run_dir)
    os.makedirs(run_dir)
    shutil.copyfile(GUEST_SCRIPT, os.path.join(run_dir, "guest.sh"))
    with open(os.path.join(run_dir, "pytest-args"), "w") as f:
        f.write("".join(a + "\n" for a in pytest_args))
    with open(os.path.join(run_dir, "slowdown"), "w") as f:
        f.write(f"{slowdown:g}\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if os.geteuid() != 0:
        print("cgroup2-vm: needs root (debootstrap, chroot, mke2fs -d with owners kept)", file=sys.stderr)
        return 2
    tree = os.path.realpath(args.tree)
    if not os.path.isfile(os.path.join(tree, "api", "runtime", "v1", "api_pb2.py")):
        print(f"cgroup2-vm: {tree} has no generated CRI stubs: run `make proto` first", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _stop_on_signal)
    signal.signal(signal.SIGHUP, _stop_on_signal)
    cache = os.path.realpath(args.cache)
    os.makedirs(cache, exist_ok=True)

    image.ensure_host_packages()
    sources = image.host_sources()
    digest = image.inputs_hash(sources)
    img = image.image_at(cache)
    built = None
    if args.rebuild or not image.is_current(img, digest):
        built = image.build(cache, sources, digest, os.path.join(cache, "build.log"))
    on_disk, virtual = image.size_of(img)
    print(f"cgroup2-vm: image {img.directory}: {_fmt_bytes(on_disk)} on disk (root file system of "
          f"{_fmt_bytes(virtual)}){'' if built is None else f', built in {built:.0f} s'}", flush=True)
    try:
        wheels.build_wheels(os.path.join(cache, "wheels"))
        deps = wheels.deps_disk(cache)
    except Exception as e:  # a failed pip, mostly: its own output says more
        print(f"cgroup2-vm: building the guest's Python packages failed: {e}", file=sys.stderr)
        return 2
    if args.build_only:
        return 0

    run_dir = os.path.join(cache, "run")
    kvm = vm.kvm_works() if args.accel == "auto" else args.accel == "kvm"
    try:
        outcome = _boot(args, img, tree, deps, run_dir, kvm)
        if outcome is None and kvm and args.accel == "auto":
            print("cgroup2-vm: KVM booted nothing (no line on the serial console): again under TCG", flush=True)
            outcome = _boot(args, img, tree, deps, run_dir, kvm=False)
    except (KeyboardInterrupt, Stopped) as e:
        print(f"\ncgroup2-vm: stopped ({type(e).__name__} {e}); the VM was killed", file=sys.stderr)
        return 130
    if outcome is None:
        return EXIT_NO_STATUS
    follower, started, total, timed_out = outcome
    return _report(run_dir, follower, started, total, timed_out, os.path.join(run_dir, "serial.log"))


def _boot(args: argparse.Namespace, img: image.Image, tree: str, deps: str, run_dir: str,
          kvm: bool) -> tuple[_Follower, float, float, bool] | None:
    """One boot, followed to its end; None when KVM's guest printed nothing in KVM_SILENCE
    seconds (and was killed) or qemu itself failed to start."""
    slowdown = args.slowdown or (1 if kvm else TCG_SLOWDOWN)
    timeout = args.timeout or (KVM_TIMEOUT if kvm else TCG_TIMEOUT)
    _prepare_run_dir(run_dir, args.pytest_args, slowdown)
    src = disks.checkout_disk(tree, os.path.dirname(run_dir))
    serial_log = os.path.join(run_dir, "serial.log")
    qemu_log = os.path.join(run_dir, "qemu.log")
    cmd = vm.command(img, [vm.Disk(src), vm.Disk(deps, readonly=True)], [vm.Share("run", run_dir, readonly=False)],
                     serial_log, memory_mib=args.memory, cpus=args.cpus, kvm=kvm)
    print(f"cgroup2-vm: booting ({'KVM' if kvm else 'TCG, no KVM for a stock kernel here: slower'}, {args.cpus} "
          f"CPUs, {args.memory} MiB; serial console: {serial_log}; timeout {timeout:.0f} s; the tests' time "
          f"limits x{slowdown:g})", flush=True)
    follower = _Follower(os.path.join(run_dir, "guest.log"))
    started = time.monotonic()
    timed_out = False
    try:
        with vm.running(cmd, qemu_log) as proc:
            print(f"cgroup2-vm: qemu pid {proc.pid}", flush=True)
            while proc.poll() is None:
                follower.poll()
                elapsed = time.monotonic() - started
                if kvm and elapsed > KVM_SILENCE and not _size(serial_log):
                    return None
                if elapsed > timeout:
                    timed_out = True
                    print(f"\ncgroup2-vm: the VM outlived the timeout of {timeout:.0f} s: killing it "
                          f"(pid {proc.pid})", file=sys.stderr, flush=True)
                    break
                time.sleep(0.2)
    finally:
        os.unlink(src)
    follower.poll()
    total = time.monotonic() - started
    if proc.returncode not in (0, None) and not timed_out and follower.first_seen is None:
        with open(qemu_log, errors="replace") as f:
            print(f"cgroup2-vm: qemu exited {proc.returncode}:\n{f.read()}", file=sys.stderr)
        return None
    return follower, started, total, timed_out


def _report(run_dir: str, follower: _Follower, started: float, total: float, timed_out: bool,
            serial_log: str) -> int:
    status = _read_status(os.path.join(run_dir, "status"))
    t = _read_timings(os.path.join(run_dir, "timings"))
    summary = ""
    try:
        with open(follower.path, errors="replace") as f:
            summary = next((line.strip() for line in reversed(f.readlines()) if SUMMARY.match(line.strip())), "")
    except FileNotFoundError:
        pass
    print("\ncgroup2-vm: ---- summary ----")
    if follower.first_seen is not None:
        print(f"cgroup2-vm: boot: {follower.first_seen - started:.1f} s from qemu's start to the run service"
              + (f" (guest uptime {t['booted']:.1f} s)" if "booted" in t else ""))
    if "booted" in t and "venv" in t:
        print(f"cgroup2-vm: set-up in the guest (checks, disks, venv): {t['venv'] - t['booted']:.1f} s")
    if "venv" in t and "tested" in t:
        print(f"cgroup2-vm: tests: {t['tested'] - t['venv']:.1f} s")
    print(f"cgroup2-vm: whole VM run: {total:.1f} s")
    if summary:
        print(f"cgroup2-vm: pytest: {summary.strip('= ')}")
    if status is None:
        why = "it was killed at the timeout" if timed_out else "it ended without writing its status"
        print(f"cgroup2-vm: no result from the guest: {why}; see {serial_log} and {follower.path}", file=sys.stderr)
        return EXIT_NO_STATUS
    print(f"cgroup2-vm: exit status {status}; logs in {run_dir}")
    return status
