"""The classic container-runtime escapes, each tried from inside a container against Cricket (issue 13).

Every test is an attack: it sets up what a published exploit set up, runs it from a container
(a sibling in a shared PID namespace, the container itself, a pod on the host's PID namespace)
and asserts that it fails. Each also asserts that the attack really was tried — the process
was in sight, the symlink was in place — so that none can pass by proving nothing.

- CVE-2019-5736 (runc): a container process opens /proc/<pid>/exe of a process that came into
  the container from the host and writes the host's binary through it. Under Cricket such a
  process is a child of a shim before its execve (a held container's first process, an exec
  process), whose exe is the host's Python interpreter; a script run by exec whose interpreter
  is "/proc/self/exe" (the exploit's own trick) makes that interpreter run inside the container;
  under the host's PID namespace the shim, the zygote and cricketd are in sight too.
- CVE-2024-21626 (runc): a descriptor of a host directory leaked into the container's process,
  reached as its working directory (/proc/self/fd/N), or a working directory that leads out
  through a magic link (/proc/<pid>/cwd) at exec time; and a container's /dev/null swapped for
  a link to a host file, opened as an exec's stdin.
- Masked and read-only /proc and /sys paths under every PID namespace mode, also by the other
  ways to them a shared or the host's PID namespace opens (/proc/<pid>/root/...).
- Symlinked volume sources: a host path that is a symlink is resolved on the host once, when
  the container is created; a symlink a container plants in a volume it shares is never
  followed out of that volume by a later CreateContainer, nor swapped in between cricketd's
  resolving and the shim's mounting.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import struct
import threading
import time

import grpc
import pytest

from api.runtime.v1 import api_pb2 as pb
from cri import oci_spec
from linux import libc, mounts
from tests.daemon import need_root
from tests.pods import Pods, rpc_error


@pytest.fixture
def pods(daemon, tmp_path):
    p = Pods(daemon, str(tmp_path / "logs"))
    yield p
    p.remove_all()


@pytest.fixture
def busybox(registry, test_images):
    return test_images["busybox"].reference(registry)


def _info(pods: Pods, cid: str) -> dict:
    return json.loads(pods.status(cid, verbose=True).info["info"])


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line.split()[1] for line in f if line.startswith("PPid:")))


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except FileNotFoundError:
        return []


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


# -- CVE-2019-5736: the host's binary through /proc/<pid>/exe ------------------------------


def _host_binaries(daemon) -> dict[str, tuple[int, int]]:
    """The host's files every process that comes from the zygote runs: the interpreter and the
    libpython it maps (path -> (st_dev, st_ino))."""
    pid = daemon.proc.pid
    paths = {os.path.realpath(f"/proc/{pid}/exe")}
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and "libpython" in fields[5]:
                paths.add(fields[5].strip())
    return {p: (os.stat(p).st_dev, os.stat(p).st_ino) for p in paths}


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def _unchanged(files):
    before = {p: _sha256(p) for p in files}
    yield
    after = {p: _sha256(p) for p in files}
    assert after == before, f"the host's binaries changed: {before} -> {after}"


# A busybox sh function: attack PID tries to open /proc/PID/exe for writing (appending, and read-write,
# neither of which changes a byte), to open it for reading and reopen that descriptor for writing
# through /proc/self/fd (the exploit's two steps, which outlive the process), and to open each of
# its /proc/PID/map_files (where libpython is) for writing. One line per try:
#   OPENED PID HOW DEV:INO   what was opened (stat -L of the new descriptor)
#   REFUSED PID HOW REASON
ATTACK = r'''
opened() {  # $1 pid, $2 how: the descriptor 3 of this subshell was opened
  echo "OPENED $1 $2 $(stat -L -c %d:%i /proc/self/fd/3)"
}
try() {  # $1 pid, $2 how, $3 path, $4 redirection
  if msg=$( ( case $4 in
              append) exec 3>>"$3";; rdwr) exec 3<>"$3";; read) exec 3<"$3";; esac
            opened "$1" "$2" ) 2>&1 ); then
    echo "$msg"
  else
    echo "REFUSED $1 $2 ${msg##*: }"
  fi
}
attack() {
  exe=/proc/$1/exe
  try "$1" write "$exe" append
  try "$1" read-write "$exe" rdwr
  try "$1" read "$exe" read
  if msg=$( ( exec 4<"$exe" && try "$1" reopen-write /proc/self/fd/4 append ) 2>&1 ); then
    echo "$msg"
  else
    echo "REFUSED $1 reopen-write ${msg##*: }"
  fi
  for f in /proc/$1/map_files/*; do
    [ -e "$f" ] && try "$1" map-file-write "$f" append
  done
}
'''
WRITES = ("write", "read-write", "reopen-write", "map-file-write")


def _attack_lines(out: pb.ExecSyncResponse) -> list[list[str]]:
    text = out.stdout.decode(errors="replace")
    return [line.split(maxsplit=3) for line in text.splitlines() if line.startswith(("OPENED ", "REFUSED "))]


def _attack(pods: Pods, attacker: str, pids, timeout: int = 30) -> list[list[str]]:
    script = ATTACK + "".join(f"attack {p}\n" for p in pids)
    return _attack_lines(pods.exec(attacker, ["sh", "-c", script], timeout=timeout))


def _host_binary_written(lines, binaries) -> list[str]:
    """Lines of a write open that reached one of the host's binaries."""
    ids = {f"{dev}:{ino}" for dev, ino in binaries.values()}
    return [" ".join(line) for line in lines
            if line[0] == "OPENED" and line[2] in WRITES and line[3].strip() in ids]


def _held_process(pods: Pods, cid: str, host_pid_ns: bool = False) -> tuple[int, int]:
    """(host pid, pid in its PID namespace) of a created container's process, held before execve:
    the shim's child in a PID namespace of its own, or with the host's, its only child once the
    first one (which forks it and exits) is gone."""
    shim = _info(pods, cid)["shimPid"]
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        children = _children(shim)
        for pid in children:
            try:
                with open(f"/proc/{pid}/status") as f:
                    nspid = next(line.split()[1:] for line in f if line.startswith("NSpid:"))
            except (OSError, StopIteration):
                continue
            if len(nspid) == 2 or (host_pid_ns and len(children) == 1):
                time.sleep(0.5)  # past its set-up: it waits for StartContainer
                if pid in _children(shim):
                    return pid, int(nspid[-1])
        time.sleep(0.05)
    raise AssertionError(f"no held process under shim {shim}")


def _ptrace() -> pb.LinuxContainerSecurityContext:
    return pb.LinuxContainerSecurityContext(capabilities=pb.Capability(add_capabilities=["SYS_PTRACE"]))


@pytest.mark.parametrize("ptrace", [False, True], ids=["default-caps", "sys-ptrace"])
def test_a_held_process_exe_can_not_be_written_from_its_pod(pods, busybox, daemon, ptrace):
    binaries = _host_binaries(daemon)
    with _unchanged(binaries):
        pod = pods.run_pod(pid=pb.POD)
        attacker = pods.run(pod, busybox, ["sleep", "1000"], pid=pb.POD, security=_ptrace() if ptrace else None)
        held = pods.create(pod, pods.container_config(busybox, ["sleep", "1000"], pid=pb.POD))
        host_pid, pid = _held_process(pods, held)
        assert os.path.realpath(f"/proc/{host_pid}/exe") in binaries, "the held process is not the host's Python"
        lines = _attack(pods, attacker, [pid])
        assert {line[2] for line in lines} >= {"write", "read-write", "read", "reopen-write"}, lines
        assert not _host_binary_written(lines, binaries), lines
        if not ptrace:
            # Not dumpable until execve: without CAP_SYS_PTRACE its exe is not even readable.
            assert [line for line in lines if line[0] == "OPENED"] == [], lines
        pods.start(held)
        assert pods.sh(held, "echo started") == "started\n"


def test_exec_processes_before_execve_can_not_be_written_from_their_pod(pods, busybox, daemon):
    binaries = _host_binaries(daemon)
    # A PATH of many missing directories keeps each exec process in execvpe, still the host's
    # Python, for a while: long enough for the attacker's loop to find it every time.
    path = ":".join(["/n"] * 8000 + ["/bin"])
    with _unchanged(binaries):
        pod = pods.run_pod(pid=pb.POD)
        victim = pods.run(pod, busybox, ["sleep", "1000"], pid=pb.POD, env={"PATH": path})
        attacker = pods.run(pod, busybox, ["sleep", "1000"], pid=pb.POD)
        loop = ATTACK + r'''
seen=" "
end=$(( $(date +%s) + 12 ))
while [ "$(date +%s)" -lt "$end" ] && [ ! -e /tmp/stop ]; do
  for d in /proc/[0-9]*; do
    p=${d#/proc/}
    read -r comm 2>/dev/null < "$d/comm" || continue
    [ "$comm" = cricket-shim ] || continue
    case "$seen" in *" $p "*) continue;; esac
    seen="$seen$p "
    attack "$p"
  done
done
'''
        result: list = []
        thread = threading.Thread(target=lambda: result.append(pods.exec(attacker, ["sh", "-c", loop], timeout=30)))
        thread.start()
        try:
            time.sleep(0.5)
            for _ in range(40):
                assert pods.exec(victim, ["true"]).exit_code == 0
        finally:
            pods.exec(attacker, ["sh", "-c", "touch /tmp/stop"])
            thread.join()
        lines = _attack_lines(result[0])
        caught = {line[1] for line in lines if line[0] == "REFUSED" and line[2] == "read"}
        assert caught, f"no exec process was caught before its execve: the test proves nothing\n{lines}"
        assert not _host_binary_written(lines, binaries), lines
        assert not [line for line in lines if line[0] == "OPENED" and line[1] in caught], lines


def _pause_elf() -> bytes:
    """A 129-byte static x86-64 executable that calls pause(2) for ever."""
    code = bytes.fromhex("b822000000" "0f05" "ebf7")  # mov eax, 34 (pause); syscall; jmp back
    base, size = 0x400000, 64 + 56 + len(code)
    header = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8) + struct.pack(
        "<HHIQQQIHHHHHH", 2, 0x3E, 1, base + 120, 64, 0, 0, 64, 56, 1, 0, 0, 0)
    program = struct.pack("<IIQQQQQQ", 1, 5, 0, base, base, size, size, 0x1000)
    return header + program + code


def test_the_host_interpreter_run_through_proc_self_exe_can_not_be_written(pods, busybox, daemon, tmp_path):
    """The exploit's own trick: the container's program is a script whose interpreter is
    /proc/self/exe. Exec'd by a process that is still the shim's Python, the kernel runs that
    Python — the host's file — inside the container (its ELF interpreter, from the container's
    /lib64, is a program that waits, so it stays there)."""
    if platform.machine() != "x86_64":
        pytest.skip("the waiting ELF interpreter is x86-64 code")
    binaries = _host_binaries(daemon)
    payload = tmp_path / "payload"
    payload.mkdir()
    (payload / "ld.so").write_bytes(_pause_elf())
    (payload / "evil").write_text("#!/proc/self/exe\n")
    for name in ("ld.so", "evil"):
        (payload / name).chmod(0o755)
    with _unchanged(binaries):
        pod = pods.run_pod(pid=pb.POD)
        mount = pb.Mount(container_path="/payload", host_path=str(payload), readonly=True)
        victim = pods.run(pod, busybox, ["sleep", "1000"], pid=pb.POD, mounts=[mount])
        attacker = pods.run(pod, busybox, ["sleep", "1000"], pid=pb.POD)
        pods.sh(victim, "mkdir -p /lib64 && cp /payload/ld.so /lib64/ld-linux-x86-64.so.2 && cp /payload/evil /evil")
        errors: list = []

        def run_evil():
            try:
                pods.exec(victim, ["/evil"], timeout=8)
            except grpc.RpcError as e:
                errors.append(e)

        thread = threading.Thread(target=run_evil)
        thread.start()
        try:
            find = "for p in /proc/[0-9]*; do [ \"$(readlink $p/exe)\" = \"$1\" ] && echo ${p#/proc/}; done; true"
            exe = os.path.realpath(f"/proc/{daemon.proc.pid}/exe")
            deadline, pids = time.monotonic() + 6, []
            while not pids and time.monotonic() < deadline:
                pids = pods.exec(attacker, ["sh", "-c", find, "find", exe]).stdout.split()
            assert pids, "the host's interpreter never ran in the pod: the test proves nothing"
            lines = _attack(pods, attacker, [int(p) for p in pids])
        finally:
            thread.join()
        devino = "{}:{}".format(*binaries[exe])
        assert ["OPENED", pids[0].decode(), "read", devino] in [[*line[:3], line[3].strip()] for line in lines], \
            f"the attacker could not even read the host's interpreter: the test proves nothing\n{lines}"
        assert not _host_binary_written(lines, binaries), lines
        assert {line[3] for line in lines if line[0] == "REFUSED" and line[2] in ("write", "reopen-write")} \
            <= {"Text file busy"}, lines


@pytest.mark.parametrize("ptrace", [False, True], ids=["default-caps", "sys-ptrace"])
def test_host_pid_pods_can_not_write_the_shim_zygote_or_daemon(pods, busybox, daemon, ptrace):
    binaries = _host_binaries(daemon)
    with _unchanged(binaries):
        pod = pods.run_pod(pid=pb.NODE)
        attacker = pods.run(pod, busybox, ["sleep", "1000"], pid=pb.NODE, security=_ptrace() if ptrace else None)
        held = pods.create(pod, pods.container_config(busybox, ["sleep", "1000"], pid=pb.NODE))
        held_pid, _ = _held_process(pods, held, host_pid_ns=True)
        shim = _info(pods, attacker)["shimPid"]
        targets = {"shim": shim, "zygote": _ppid(shim), "cricketd": daemon.proc.pid, "held": held_pid}
        assert _comm(targets["zygote"]) == "cricket-zygote"
        lines = _attack(pods, attacker, targets.values())
        assert {line[1] for line in lines} == {str(p) for p in targets.values()}, lines
        assert not _host_binary_written(lines, binaries), lines
        if not ptrace:
            # Their capabilities are no subset of the container's: not even readable.
            assert [line for line in lines if line[0] == "OPENED"] == [], lines


# -- CVE-2024-21626: leaked descriptors, a working directory outside the container ------------


def _inside(pid: int) -> bool:
    """Whether the working directory of host process `pid` lies inside its root: walking up by
    ".." from it (from the host, so nothing clamps the walk at the container's root) meets its root."""
    root = os.stat(f"/proc/{pid}/root")
    fd = os.open(f"/proc/{pid}/cwd", os.O_PATH | os.O_DIRECTORY)
    try:
        for _ in range(4096):
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) == (root.st_dev, root.st_ino):
                return True
            up = os.open("..", os.O_PATH | os.O_DIRECTORY, dir_fd=fd)
            if (os.fstat(up).st_dev, os.fstat(up).st_ino) == (st.st_dev, st.st_ino):
                os.close(up)
                return False  # the top of the host's tree, never having met the container's root
            os.close(fd)
            fd = up
        return False
    finally:
        os.close(fd)


def _fds(pods: Pods, cid: str, pid: str) -> dict[str, str]:
    """fd -> what it is, of process `pid` as the container sees it, by ls -l /proc/PID/fd."""
    out = pods.sh(cid, f"ls -l /proc/{pid}/fd")
    fds = {}
    for line in out.splitlines():
        if "->" in line:
            left, _, target = line.partition(" -> ")
            fds[left.split()[-1]] = target
    return fds


@pytest.mark.parametrize("tty", [False, True], ids=["pipes", "tty"])
def test_a_container_holds_only_its_stdio_and_stands_inside(pods, busybox, tty):
    pod = pods.run_pod()
    cid = pods.run(pod, busybox, ["sleep", "1000"], tty=tty, working_dir="/tmp")
    init = _fds(pods, cid, "1")
    assert set(init) == {"0", "1", "2"}, f"the container's first process holds {init}"
    # An exec process: the shell's own descriptors ($$), not those of the ls it runs.
    out = pods.sh(cid, "ls -l /proc/$$/fd; echo cwd=$(readlink /proc/$$/cwd) init=$(readlink /proc/1/cwd)")
    fds = {line.split(" -> ")[0].split()[-1]: line.split(" -> ")[1] for line in out.splitlines() if " -> " in line}
    assert set(fds) == {"0", "1", "2"}, f"an exec process holds {fds}"
    assert "cwd=/tmp init=/tmp" in out, out
    host_pid = _info(pods, cid)["pid"]
    assert _inside(host_pid)
    for fd in os.listdir(f"/proc/{host_pid}/fd"):
        target = os.readlink(f"/proc/{host_pid}/fd/{fd}")
        assert target.startswith(("pipe:", "socket:", "/dev/null", "/dev/pts/")), f"fd {fd} is {target}"


def _proc_targets(daemon, pid_mode) -> list[str]:
    """Working directories that lead out of the container if followed as magic links: leaked
    descriptors, and under the host's PID namespace the cwd and root of the host's processes."""
    targets = [f"/proc/self/fd/{n}" for n in range(3, 16)] + ["/proc/1/cwd", "/proc/1/root"]
    if pid_mode == pb.NODE:
        targets += [f"/proc/{daemon.proc.pid}/cwd", f"/proc/{daemon.proc.pid}/root", f"/proc/{os.getpid()}/cwd"]
    return targets


@pytest.mark.parametrize("pid_mode", [pb.CONTAINER, pb.POD, pb.NODE], ids=["pid-container", "pid-pod", "pid-node"])
def test_a_working_dir_through_proc_never_leads_out(pods, busybox, daemon, pid_mode):
    pod = pods.run_pod(pid=pid_mode)
    for target in _proc_targets(daemon, pid_mode):
        for working_dir in (target, target + "/tmp"):
            config = pods.container_config(busybox, ["sleep", "1000"], pid=pid_mode, working_dir=working_dir)
            try:
                cid = pods.create(pod, config)
                pods.start(cid)
            except grpc.RpcError as e:
                assert "working directory" in e.details(), e.details()
                continue
            host_pid = _info(pods, cid)["pid"]
            assert _inside(host_pid), f"working_dir {working_dir} put the container's process outside it"
            pods.remove(cid)
    assert pods.sh(pods.run(pod, busybox, ["sleep", "1000"], pid=pid_mode), "echo still") == "still\n"


@contextlib.contextmanager
def _while_exec(pods: Pods, cid: str, cmd, timeout: int = 20):
    """Run cmd by ExecSync in a thread; yield (host pid of the exec process once it has exec'd,
    or None if the exec failed, the error). The exec process is the shim's child that is not the
    container's first process."""
    shim, init = _info(pods, cid)["shimPid"], _info(pods, cid)["pid"]
    result: list = []

    def run():
        try:
            result.append(pods.exec(cid, cmd, timeout=timeout))
        except grpc.RpcError as e:
            result.append(e)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        pid = None
        while pid is None and thread.is_alive():
            found = [p for p in _children(shim) if p != init and _comm(p) not in ("", "cricket-shim")]
            pid = found[0] if found else None
            time.sleep(0.01)
        yield pid, (result[0] if result and isinstance(result[0], grpc.RpcError) else None)
    finally:
        thread.join()


@pytest.mark.parametrize("pid_mode", [pb.CONTAINER, pb.POD, pb.NODE], ids=["pid-container", "pid-pod", "pid-node"])
def test_a_working_dir_swapped_for_a_magic_link_never_takes_an_exec_out(pods, busybox, daemon, pid_mode):
    """The container makes its own working directory a symlink to /proc/...: every later exec
    starts there (runc's attack 2 of CVE-2024-21626, by the container itself)."""
    pod = pods.run_pod(pid=pid_mode)
    targets = _proc_targets(daemon, pid_mode)
    plant = "mkdir -p /w; while [ ! -e /go ]; do sleep 0.1; done; rm -rf /w; ln -s \"$TARGET\" /w; touch /planted; " \
            "sleep 1000"
    for target in targets:
        cid = pods.run(pod, busybox, ["sh", "-c", plant], pid=pid_mode, working_dir="/w", env={"TARGET": target})
        pods.sh(cid, "touch /go")
        deadline = time.monotonic() + 10
        while not os.path.exists(os.path.join(daemon.root, "containers", cid, "upper", "planted")):
            assert time.monotonic() < deadline, "the symlink was never planted: the test proves nothing"
            time.sleep(0.05)
        with _while_exec(pods, cid, ["sleep", "2"]) as (pid, error):
            if pid is None:
                assert error is not None and "working directory" in error.details(), error
            else:
                assert _inside(pid), f"an exec in {target} (through the symlink /w) stands outside the container"
        pods.remove(cid)


@pytest.mark.parametrize("pid_mode", [pb.CONTAINER, pb.NODE], ids=["pid-container", "pid-node"])
def test_dev_null_swapped_for_a_link_never_gives_an_exec_a_host_file(pods, busybox, daemon, pid_mode, tmp_path):
    """An exec without stdin gets /dev/null as its standard input. The container may make its
    /dev/null a symlink to a descriptor its exec processes hold before execve (the shim's log),
    or under the host's PID namespace to a host file through /proc/<pid>/root."""
    marker = tmp_path / "host-file"
    marker.write_text("the host's\n")
    pod = pods.run_pod(pid=pid_mode)
    targets = [f"/proc/self/fd/{n}" for n in range(2, 16)]
    if pid_mode == pb.NODE:
        targets.append(f"/proc/{daemon.proc.pid}/root{marker}")
    for target in targets:
        cid = pods.run(pod, busybox, ["sleep", "1000"], pid=pid_mode)
        pods.sh(cid, f"rm /dev/null && ln -s {target} /dev/null")
        out = pods.exec(cid, ["sh", "-c", "stat -L -c %F:%t:%T /proc/self/fd/0; echo overwritten >&0"])
        kind = out.stdout.decode().split("\n")[0]
        assert kind in ("character special file:1:3", ""), f"/dev/null -> {target} gave the exec's stdin: {kind}"
        pods.remove(cid)
    assert marker.read_text() == "the host's\n"


# -- /proc and /sys masks under every PID namespace mode -------------------------------------


MASK_CHECK = r'''
for p in $MASKED; do
  [ -e "$p" ] || { echo "ABSENT $p"; continue; }
  if [ -d "$p" ]; then
    [ -z "$(ls -A "$p")" ] && echo "MASKED $p" || echo "VISIBLE $p"
    ( : > "$p/x" ) 2>/dev/null && echo "WRITABLE $p"
  else
    [ "$(stat -c %t:%T "$p")" = 1:3 ] && [ -z "$(head -c 1 "$p")" ] && echo "MASKED $p" || echo "VISIBLE $p"
  fi
done
for p in $READONLY; do
  [ -e "$p" ] || { echo "ABSENT $p"; continue; }
  grep -q " $p [^ ]*ro[, ]" /proc/self/mountinfo && echo "READONLY $p" || echo "WRITABLE $p"
done
v=$(cat /proc/sys/kernel/panic)
if msg=$( ( echo "$v" > /proc/sys/kernel/panic ) 2>&1 ); then echo "WRITABLE /proc/sys/kernel/panic"
else echo "REFUSED /proc/sys/kernel/panic ${msg##*: }"; fi
# Every other way to the same files: the root of each process in sight.
for d in /proc/[0-9]*; do
  for p in $MASKED; do
    f="$d/root$p"
    if [ -d "$f" ]; then
      [ -n "$(ls -A "$f" 2>/dev/null)" ] && echo "LEAK $f"
    elif [ -n "$(head -c 1 "$f" 2>/dev/null)" ]; then
      echo "LEAK $f"
    fi
  done
  f="$d/root/proc/sys/kernel/panic"
  [ -e "$f" ] && ( echo "$v" > "$f" ) 2>/dev/null && echo "LEAK-WRITE $f"
done
echo DONE
'''


@pytest.mark.parametrize("pid_mode", [pb.CONTAINER, pb.POD, pb.NODE, pb.TARGET],
                         ids=["pid-container", "pid-pod", "pid-node", "pid-target"])
def test_masked_and_read_only_paths_hold_in_every_pid_namespace(pods, busybox, pid_mode):
    pod = pods.run_pod(pid=pb.POD if pid_mode == pb.POD else pb.NODE if pid_mode == pb.NODE else pb.CONTAINER)
    ctx = pb.LinuxContainerSecurityContext()
    if pid_mode == pb.TARGET:
        ctx.namespace_options.target_id = pods.run(pod, busybox, ["sleep", "1000"])
    cid = pods.run(pod, busybox, ["sleep", "1000"], pid=pid_mode, security=ctx)
    if pid_mode == pb.POD:
        pods.run(pod, busybox, ["sleep", "1000"], pid=pb.POD)  # a sibling, whose root is in sight
    env = f"MASKED='{' '.join(oci_spec.MASKED_PATHS)}' READONLY='{' '.join(oci_spec.READONLY_PATHS)}'; "
    out = pods.exec(cid, ["sh", "-c", env + MASK_CHECK], timeout=60).stdout.decode()
    lines = out.splitlines()
    assert lines and lines[-1] == "DONE", out
    on_host = [p for p in oci_spec.MASKED_PATHS if os.path.exists(p)]
    assert on_host, "none of the masked paths exists on this host: the test proves nothing"
    for p in on_host:
        assert f"MASKED {p}" in lines, out
    for p in oci_spec.READONLY_PATHS:
        if os.path.exists(p):
            assert f"READONLY {p}" in lines, out
    assert "REFUSED /proc/sys/kernel/panic Read-only file system" in lines, out
    assert not [line for line in lines if line.startswith(("VISIBLE", "WRITABLE", "LEAK"))], out


# -- symlinked volume sources -----------------------------------------------------------------


def _bind(container_path: str, host_path, readonly: bool = False) -> pb.Mount:
    return pb.Mount(container_path=container_path, host_path=str(host_path), readonly=readonly)


def test_a_symlinked_source_is_what_it_pointed_to_at_create(pods, busybox, tmp_path):
    """Absolute, relative and out-of-its-directory symlinks the host holds are followed on the host,
    once: pointed elsewhere after CreateContainer, the container still has what they pointed to."""
    host = tmp_path / "host"
    for name in ("a", "b"):
        (host / name).mkdir(parents=True)
        (host / name / "which").write_text(name + "\n")
    links = host / "links"
    links.mkdir()
    (links / "absolute").symlink_to(host / "a")
    (links / "relative").symlink_to("../a")
    (host / "a" / "up").symlink_to("../../host/a")  # a chain through another directory
    pod = pods.run_pod()
    # Read-only: a directory bound writable is one the container could plant symlinks in (see below).
    config = pods.container_config(busybox, ["sleep", "1000"], mounts=[
        _bind("/m/absolute", links / "absolute", True), _bind("/m/relative", links / "relative", True),
        _bind("/m/chain", host / "a" / "up", True)])
    cid = pods.create(pod, config)
    for link in (links / "absolute", links / "relative"):
        link.unlink()
        link.symlink_to(host / "b")
    pods.start(cid)
    for name in ("absolute", "relative", "chain"):
        assert pods.sh(cid, f"cat /m/{name}/which") == "a\n", name
    sources = {m["destination"]: m["source"] for m in _info(pods, cid)["runtimeSpec"]["mounts"]}
    assert {sources[f"/m/{n}"] for n in ("absolute", "relative", "chain")} == {str(host / "a")}


@pytest.fixture
def shared(pods, busybox, tmp_path):
    """(pod, planter, volume, secret): a container with the host directory `volume` shared
    read-write at /v, and `secret`, a host directory outside it with a file in it."""
    volume, secret = tmp_path / "shared" / "volume", tmp_path / "secret"
    volume.mkdir(parents=True)
    secret.mkdir()
    (secret / "file").write_text("the host's secret\n")
    pod = pods.run_pod()
    planter = pods.run(pod, busybox, ["sleep", "1000"], mounts=[_bind("/v", volume)])
    return pod, planter, volume, secret


def test_a_symlink_planted_in_a_shared_volume_is_not_followed_out_of_it(pods, busybox, shared):
    pod, planter, volume, secret = shared
    pods.sh(planter, f"ln -s {secret} /v/absolute; ln -s ../../secret /v/relative; mkdir /v/real; "
                     "echo inside > /v/real/which; ln -s real /v/inside; ln -s /v/real /v/own-view")
    for planted in ("absolute", "relative", "absolute/deeper", "relative/deeper", "own-view"):
        config = pods.container_config(busybox, ["sleep", "1000"], mounts=[_bind("/m", volume / planted)])
        err = rpc_error(pods.create, pod, config)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (planted, err.details())
        assert str(volume / planted) in err.details() and "leads out" in err.details(), err.details()
    assert sorted(os.listdir(secret)) == ["file"], "a directory was made through the planted symlink"
    # A symlink that stays inside the volume is followed, within it.
    cid = pods.run(pod, busybox, ["sleep", "1000"], mounts=[_bind("/m", volume / "inside")])
    assert pods.sh(cid, "cat /m/which") == "inside\n"
    # So is one in a directory no container can write, even into a shared volume.
    (volume.parent / "host-link").symlink_to(volume / "real")
    cid = pods.run(pod, busybox, ["sleep", "1000"], mounts=[_bind("/m", volume.parent / "host-link")])
    assert pods.sh(cid, "cat /m/which") == "inside\n"


def test_a_container_can_not_redirect_its_own_later_mounts(pods, busybox, tmp_path):
    """A container's own writable volume counts too: what it planted there leads its next
    attempt nowhere, though no other container shares the volume."""
    volume, secret = tmp_path / "volume", tmp_path / "secret"
    volume.mkdir()
    secret.mkdir()
    pod = pods.run_pod()
    mounts_ = [_bind("/v", volume), _bind("/m", volume / "sub", readonly=True)]
    cid = pods.run(pod, busybox, ["sleep", "1000"], mounts=mounts_)
    pods.sh(cid, f"rmdir /v/sub 2>/dev/null; rm -rf /v/sub; ln -s {secret} /v/sub")
    pods.remove(cid)
    err = rpc_error(pods.create, pod, pods.container_config(busybox, ["sleep", "1000"], mounts=mounts_, attempt=1))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "leads out" in err.details(), err.details()


def _in_own_mount_namespace(body) -> dict:
    """Run body() in a forked child in a mount namespace of its own; its result (a dict) comes back."""
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


def test_a_source_swapped_for_a_symlink_after_create_is_not_bound(tmp_path):
    """Between cricketd resolving a source (at CreateContainer) and the shim mounting it, a
    container sharing the directory above it swaps it for a symlink out: the shim resolves
    nothing again, so the mount fails instead of binding what the symlink points to."""
    rootfs, volume, secret = tmp_path / "rootfs", tmp_path / "volume", tmp_path / "secret"
    rootfs.mkdir()
    (volume / "sub").mkdir(parents=True)
    secret.mkdir()
    (secret / "file").write_text("the host's secret\n")
    source = str(volume / "sub")
    m = {"destination": "/m", "type": "bind", "source": source, "options": ["rbind", "rprivate", "ro"]}

    def body():
        os.rename(source, source + "-aside")  # the swap, just before the shim's mount_one
        os.symlink(str(secret), source)
        error = None
        try:
            mounts.mount_one(str(rootfs), m, None)
        except OSError as e:
            error = str(e)
        target = rootfs / "m"
        return {"error": error, "seen": sorted(os.listdir(target)) if target.is_dir() else []}

    seen = _in_own_mount_namespace(body)
    assert seen["seen"] != ["file"], f"the secret was bound: {seen}"
    assert seen["error"] and source in seen["error"], seen
