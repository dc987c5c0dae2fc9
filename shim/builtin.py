"""The built-in executor: runs an OCI runtime spec with namespaces, mounts, pivot_root,
cgroups and capabilities, in the shim's own forked children.

Creating a container takes two forks, as runc's does. The first child joins the
container's cgroup and namespaces and unshares the new ones; a new PID
namespace only takes effect for its children, so it forks the container's
first process and exits at once (the shim, a child subreaper, inherits it).
That process builds the container's filesystem, pivots into it, becomes the
configured user with the configured capabilities, says "ready" and then waits:
StartContainer releases it into execve. Exec processes take the same two forks
into the running container's namespaces.

Children talk to the shim over a report pipe, one line each: "pid N", "ready",
or "error MESSAGE". The pipe is close-on-exec, so after a release, end of file
with no message means execve succeeded.
"""
from __future__ import annotations

import errno
import fcntl
import os
import resource
import select
import termios

from linux import caps, libc, mounts, openat2, seccomp
from linux.cgroups import Cgroup, v1_mount_sources
from shim.executor import ExecutorError, Held, StartError, Stdio

REPORT_TIMEOUT = 30.0  # a child that says nothing this long is stuck
_PR_SET_DUMPABLE = 4  # prctl(2)
_RLIMITS = {name: getattr(resource, name) for name in dir(resource) if name.startswith("RLIMIT_")}
# Namespaces an exec joins, in an order that works: mnt last, since joining it
# changes what /proc/<pid>/ns paths would resolve to (the fds are opened first anyway).
# The user namespace first: the others are its, and joining it is what makes the exec its root
# rather than the host's.
# Where a container in a user namespace has its rootfs attached, in its own mount namespace.
_USERNS_ROOTFS = "/tmp"
_EXEC_NAMESPACES = ("user", "ipc", "uts", "net", "pid", "cgroup", "mnt")


class BuiltinExecutor:
    console: int | None = None  # a tty container's terminal is the shim's own

    def __init__(self, bundle: str, spec: dict):
        self.bundle = bundle
        self.spec = spec
        path = (spec.get("linux") or {}).get("cgroupsPath") or ""
        self.cgroup = Cgroup(path) if path else None
        self._seccomp: seccomp.Filter | None = None
        self._trees: dict[int, int] = {}
        self._rootfs_tree: int | None = None  # idmapped bind mounts made, by their index in the spec's mounts

    def _compile_seccomp(self) -> None:
        """Compile the spec's seccomp filter once, here on the host (see linux/seccomp.py): the
        children that load it have left the host's filesystem by then."""
        profile = (self.spec.get("linux") or {}).get("seccomp")
        if profile and self._seccomp is None:
            try:
                self._seccomp = seccomp.compile(profile)
            except seccomp.SeccompError as e:
                raise ExecutorError(f"seccomp: {e.strerror}") from None

    # -- the shim's side --------------------------------------------------------

    def create(self, stdio: Stdio) -> Held:
        """Set the container up to just before execve and hold it there. Raises ExecutorError."""
        self._compile_seccomp()
        report_r, report_w = os.pipe2(os.O_CLOEXEC)
        start_r, start_w = os.pipe2(os.O_CLOEXEC)
        null = _host_null()
        pid = os.fork()
        if pid == 0:
            _child(lambda: self._intermediate(stdio, report_w, start_r, null), report_w)
        os.close(null)
        os.close(report_w)
        os.close(start_r)
        try:
            _reap(pid)
            messages = _read_report(report_r, until=("pid", "ready"))  # from two processes, in any order
        except BaseException:
            os.close(report_r)
            os.close(start_w)
            raise
        return Held(int(messages["pid"]), start_w, report_r)

    def start(self, held: Held) -> None:
        """Release the held process into execve; raises StartError with execve's error."""
        try:
            os.write(held.start_w, b"go")
            os.close(held.start_w)
            _read_report(held.report_r, until=None)
        except ExecutorError as e:
            raise StartError(str(e)) from None
        finally:
            os.close(held.report_r)

    def abandon(self, held: Held) -> None:
        """Let go of a held process without starting it: it exits."""
        for fd in (held.start_w, held.report_r):
            try:
                os.close(fd)
            except OSError:
                pass

    def delete(self) -> None:
        """Nothing of a built-in container outlives its processes and cgroup (cricketd removes that)."""

    def exec(self, init_pid: int, process: dict, stdio: Stdio) -> int:
        """Run `process` in the namespaces and cgroup of the container whose first process is
        `init_pid`; return its pid. Raises ExecutorError, including for an execve failure."""
        self._compile_seccomp()
        report_r, report_w = os.pipe2(os.O_CLOEXEC)
        null = _host_null()
        pid = os.fork()
        if pid == 0:
            _child(lambda: self._exec_intermediate(init_pid, process, stdio, report_w, null), report_w)
        os.close(null)
        os.close(report_w)
        try:
            _reap(pid)
            messages = _read_report(report_r, until=None)
        finally:
            os.close(report_r)
        return int(messages["pid"])

    # -- the children's side ----------------------------------------------------

    def _intermediate(self, stdio: Stdio, report_w: int, start_r: int, null: int) -> None:
        _not_dumpable()
        # A cgroup namespace is rooted where its creator stands, so joining must come first
        # then; otherwise the container's first process is moved in while it builds its
        # filesystem (the first move after a quiet spell waits for an RCU grace period).
        namespaces = (self.spec.get("linux") or {}).get("namespaces") or ()
        for ns in namespaces:
            if ns["type"] not in libc.NAMESPACES:
                raise ExecutorError(f"unknown namespace type {ns['type']!r}")
        user = next((ns for ns in namespaces if ns["type"] == "user"), None)
        if user is not None and not user.get("path"):
            raise ExecutorError("the built-in executor joins a pod's user namespace (a namespace with a path) "
                                "and makes none of its own")
        # In a user namespace this process has no capability over the host's cgroups: it joins first.
        join_first = user is not None or any(ns["type"] == "cgroup" and not ns.get("path") for ns in namespaces)
        if self.cgroup is not None:
            # Here, not in the shim: what this code touches is copied in a process that exits
            # at once, not in one that lives as long as the container.
            self.cgroup.create()
            resources = (self.spec.get("linux") or {}).get("resources")
            if resources:
                self.cgroup.apply(resources)
        if self.cgroup is not None and join_first:
            self.cgroup.add(os.getpid())
        move = self.cgroup.mover() if self.cgroup is not None and not join_first else None
        # Opened while this process is root on the host: in a user namespace it is not, and the
        # pins' directories are root's.
        joined = [(ns["type"], os.open(ns["path"], os.O_RDONLY | os.O_CLOEXEC))
                  for ns in namespaces if ns.get("path") and ns["type"] != "user"]
        if user is not None:
            self._enter_user_namespace(user["path"])
        flags = 0
        for kind, fd in joined:
            libc.setns(f"/proc/self/fd/{fd}", libc.NAMESPACES[kind][0])
            os.close(fd)
        for ns in namespaces:
            if not ns.get("path"):
                flags |= libc.NAMESPACES[ns["type"]][0]
        if flags:
            libc.unshare(flags)  # owned by the user namespace joined, if any
        pid = os.fork()
        if pid == 0:
            _child(lambda: self._init(stdio, report_w, start_r, null), report_w)
        if move is not None:
            move(pid)
        # The shim waits for this process to exit, so it knows the move is done before any start.
        _say(report_w, f"pid {pid}")

    def _enter_user_namespace(self, path: str) -> None:
        """Join the pod's user namespace, first: the namespaces made or joined after are its, and
        so are this process's capabilities from here on. Its idmapped bind mounts are made before,
        while the host's filesystem and capabilities are at hand (only root on the host can idmap
        a mount of a host filesystem), and attached in the container's mount namespace later."""
        lin = self.spec.get("linux") or {}
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            for i, m in enumerate(self.spec.get("mounts") or ()):
                options = m.get("options") or ()
                if not any(o in mounts.IDMAP_OPTIONS for o in options):
                    if m.get("type") == "bind" or "bind" in options or "rbind" in options:
                        # A bind mapped already (an image mount's idmapped overlay): taken now,
                        # as the rootfs is below, for its path may be out of reach inside.
                        self._trees[i] = mounts.cloned_tree(m["source"], "rbind" in options)
                    continue
                if (m.get("uidMappings") or lin.get("uidMappings")) != lin.get("uidMappings") or \
                        (m.get("gidMappings") or lin.get("gidMappings")) != lin.get("gidMappings"):
                    raise ExecutorError(f"mount {m['destination']}: the built-in executor idmaps a mount only "
                                        "with the container's own mappings")
                self._trees[i] = mounts.idmapped_tree(m["source"], fd, "ridmap" in options)
            # The rootfs too: in the namespace, its path (under cricketd's state dir, whose
            # directories need not be searchable by others) may be out of reach.
            root = self.spec.get("root") or {}
            self._rootfs_tree = libc.open_tree(
                libc.AT_FDCWD, os.path.join(self.bundle, root.get("path") or "rootfs"),
                libc.OPEN_TREE_CLONE | libc.OPEN_TREE_CLOEXEC | libc.AT_RECURSIVE)
            libc.setns(f"/proc/self/fd/{fd}", libc.CLONE_NEWUSER)
        finally:
            os.close(fd)
        # Root of the pod's namespace, not the host's root (unmapped here, and nobody in its files).
        os.setgroups([])
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)

    def _init(self, stdio: Stdio, report_w: int, start_r: int, null: int) -> None:
        spec = self.spec
        proc = spec.get("process") or {}
        lin = spec.get("linux") or {}
        new_ns = {ns["type"] for ns in lin.get("namespaces") or () if not ns.get("path")}
        _become_session_leader(stdio)
        if "mount" in new_ns:
            self._build_rootfs(stdio)
        if "uts" in new_ns and spec.get("hostname"):
            libc.sethostname(spec["hostname"])
        for key, value in (lin.get("sysctl") or {}).items():
            with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
                f.write(value)
        _set_oom_score_adj(proc.get("oomScoreAdj"))
        _set_rlimits(proc.get("rlimits"))
        _install_stdio(stdio, null, keep={report_w, start_r})
        _enter_cwd(proc.get("cwd") or "/")
        confine = _Confinement(proc, self._seccomp)
        confine.before_user()
        _become_user(proc)
        _say(report_w, "ready")
        go = os.read(start_r, 2)
        if go != b"go":
            os._exit(0)  # the container was removed before it started
        confine.before_execve()
        _execve(proc, report_w)

    def _build_rootfs(self, stdio: Stdio) -> None:
        spec = self.spec
        lin = spec.get("linux") or {}
        root = spec.get("root") or {}
        rootfs = os.path.join(self.bundle, root.get("path") or "rootfs")
        propagation = mounts.parse_options([lin.get("rootfsPropagation") or "rslave"])[1]
        libc.mount(None, "/", None, propagation)
        # pivot_root refuses a shared new root or a shared mount under it, which an rshared "/"
        # makes of both: the rootfs mount and its self-bind are made private (/ stays shared).
        if self._rootfs_tree is not None:
            # In a user namespace the rootfs comes as a copy made on the host, attached on a
            # directory every process can reach (the container's mount namespace's own: the
            # host sees nothing of it) and built there.
            if propagation & libc.MS_SHARED:
                raise ExecutorError("a container in a user namespace can not have shared root propagation")
            rootfs = _USERNS_ROOTFS
            libc.move_mount(self._rootfs_tree, rootfs)
            os.close(self._rootfs_tree)
            self._rootfs_tree = None
        else:
            mounts.make_private_if_shared(rootfs)
            libc.mount(rootfs, rootfs, None, libc.MS_BIND | libc.MS_REC)
        mounts.make_private_if_shared(rootfs)
        binds = None
        if self.cgroup is not None:
            binds = v1_mount_sources(self.cgroup.path)
        dev_is_tmpfs = False
        for i, m in enumerate(spec.get("mounts") or ()):
            mounts.mount_one(rootfs, m, binds, self._trees.get(i))
            dev_is_tmpfs |= m["destination"] == "/dev" and m.get("type") == "tmpfs"
        if dev_is_tmpfs:
            in_userns = any(ns["type"] == "user" for ns in lin.get("namespaces") or ())
            mounts.create_devices(rootfs, lin.get("devices"), bind=in_userns)
        if stdio.terminal is not None:
            mounts.bind_console(rootfs, os.ttyname(stdio.terminal))
        # Masks and read-only paths before pivot_root, while /dev/null and /proc/self are the host's.
        mounts.mask(rootfs, lin.get("maskedPaths"))
        mounts.make_readonly(rootfs, lin.get("readonlyPaths"))
        mounts.pivot(rootfs)
        if root.get("readonly"):
            mounts.remount_root_readonly()

    def _exec_intermediate(self, init_pid: int, process: dict, stdio: Stdio, report_w: int, null: int) -> None:
        _not_dumpable()
        if self.cgroup is not None:
            self.cgroup.add(os.getpid())
        fds = []
        for ns in _EXEC_NAMESPACES:
            path = f"/proc/{init_pid}/ns/{ns}"
            if os.readlink(path) != os.readlink(f"/proc/self/ns/{ns}"):
                fds.append((ns, os.open(path, os.O_RDONLY | os.O_CLOEXEC)))
        for ns, fd in fds:
            libc.setns(f"/proc/self/fd/{fd}")
            os.close(fd)
            if ns == "user":
                os.setgroups([])
                os.setresgid(0, 0, 0)
                os.setresuid(0, 0, 0)
        pid = os.fork()
        if pid == 0:
            _child(lambda: self._exec_process(process, stdio, report_w, null), report_w)
        _say(report_w, f"pid {pid}")

    def _exec_process(self, process: dict, stdio: Stdio, report_w: int, null: int) -> None:
        _become_session_leader(stdio)
        _install_stdio(stdio, null, keep={report_w})
        _enter_cwd(process.get("cwd") or "/", create=False)
        _set_rlimits(process.get("rlimits"))
        confine = _Confinement(process, self._seccomp)
        confine.before_user()
        _become_user(process)
        confine.before_execve()
        _execve(process, report_w)


# -- steps of a child's set-up ---------------------------------------------------


def _child(body, report_w: int) -> None:
    """Run `body` in a forked child and exit; an error is reported, never raised into the shim's code."""
    try:
        body()
        code = 0
    except BaseException as e:  # anything that escapes must become a report, not a second shim
        try:
            _say(report_w, f"error {_describe(e)}")
        except OSError:
            pass
        code = 1
    os._exit(code)


def _not_dumpable() -> None:
    """Keep the container's processes from being traced or read (/proc/<pid>/mem, environ, exe)
    until execve, as runc does since CVE-2016-9962. From here to execve they hold the
    container's user and capabilities, a held one for as long as StartContainer takes, and
    they are the shim's Python: a process of the same user in the pod's PID namespace could
    otherwise attach, or reach the host's files through them. Forked children inherit the flag;
    execve sets it back, so the container's own program is as dumpable as under any runtime."""
    libc.prctl(_PR_SET_DUMPABLE, 0)


def _describe(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror and not str(e).startswith("["):
        return str(e)
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}" + (f": {e.filename}" if e.filename else "")
    return str(e) or type(e).__name__


def _say(fd: int, message: str) -> None:
    os.write(fd, message.replace("\n", " ").encode() + b"\n")


def _reap(pid: int) -> None:
    """Wait for an intermediate child, which exits as soon as it has forked."""
    while True:
        try:
            os.waitpid(pid, 0)
            return
        except ChildProcessError:
            return
        except InterruptedError:
            continue


def _read_report(fd: int, until: tuple[str, ...] | None) -> dict[str, str]:
    """Read report lines until every key in `until` has arrived (or end of file when None).

    An "error" line raises ExecutorError; end of file before `until` too.
    """
    got: dict[str, str] = {}
    buf = b""
    while True:
        ready, _, _ = select.select([fd], [], [], REPORT_TIMEOUT)
        if not ready:
            raise ExecutorError(f"the container's process said nothing for {REPORT_TIMEOUT:.0f}s")
        chunk = os.read(fd, 4096)
        if not chunk:
            if until is not None:
                raise ExecutorError("the container's process exited during set-up without saying why")
            return got
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            key, _, value = line.decode(errors="replace").partition(" ")
            if key == "error":
                raise ExecutorError(value)
            got[key] = value
            if until is not None and all(k in got for k in until):
                return got


def _become_session_leader(stdio: Stdio) -> None:
    os.setsid()
    if stdio.terminal is not None:
        fcntl.ioctl(stdio.terminal, termios.TIOCSCTTY, 0)


def _host_null() -> int:
    """The host's /dev/null, opened by the shim before it forks. A container's own /dev/null is
    whatever the container made it: a symlink to /proc/self/fd/N (a descriptor of the shim's
    that the child still holds before close_range, such as its log) or, in the host's PID
    namespace, to /proc/<pid>/root/<any host file>, opened read-write as an exec's stdin by a
    process that still has every capability."""
    return os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)


def _install_stdio(stdio: Stdio, null: int, keep: set[int]) -> None:
    """Make 0, 1 and 2 the process's stdio (the host's /dev/null where it has none) and close
    every other descriptor but `keep` (close-on-exec pipes to the shim): nothing of the shim's
    reaches the container, neither through execve nor through /proc/self/fd before it."""
    targets: tuple[int | None, ...]
    if stdio.terminal is not None:
        targets = (stdio.terminal,) * 3
    else:
        targets = (stdio.stdin, stdio.stdout, stdio.stderr)
    for target, fd in zip(targets, (0, 1, 2)):
        os.dup2(null if target is None else target, fd)
    libc.close_range(3, keep)


def _set_oom_score_adj(value) -> None:
    if value is None:
        return
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(str(value))
    except PermissionError:
        # Lowering the score needs CAP_SYS_RESOURCE; without it the container
        # keeps the score it inherited, as containerd's restrict_oom_score_adj does.
        pass


def _set_rlimits(rlimits) -> None:
    for r in rlimits or ():
        kind = _RLIMITS.get(r["type"])
        if kind is None:
            raise ExecutorError(f"unknown rlimit {r['type']!r}")
        resource.setrlimit(kind, (r["soft"], r["hard"]))


def _enter_cwd(cwd: str, create: bool = True) -> None:
    """Enter the working directory, made if missing (`create`), resolved inside the container's
    root: the process stands in it (after pivot_root, or setns into its mount namespace) and has
    closed every descriptor but its stdio. The container chose every name on the path, and this
    process still has every capability, so a plain chdir would follow /proc/self/fd/N to a
    descriptor it inherited, or /proc/<pid>/cwd to any process's directory, and execve would
    start the container's program outside it (runc's CVE-2024-21626). openat2 resolves the path
    with "/" as the container's root and refuses magic links; a missing part is made under the
    descriptor of its parent."""
    try:
        root = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            if create:
                fd = openat2.mkdirs_in_root(root, cwd)
            else:
                fd = openat2.open_in_root(root, cwd, os.O_PATH | os.O_DIRECTORY)
        finally:
            os.close(root)
        try:
            os.fchdir(fd)
        finally:
            os.close(fd)
        os.getcwd()  # ENOENT if, however, it is not beneath the root
    except OSError as e:
        why = e.strerror
        if e.errno == errno.ELOOP:
            why = "it leads through a /proc magic link or a symlink loop, and must stay inside the container"
        raise ExecutorError(f"cannot enter working directory {cwd}: {why}") from None


def _become_user(proc: dict) -> None:
    """Switch to the process's user and groups keeping exactly the capabilities the spec names."""
    user = proc.get("user") or {}
    capabilities = proc.get("capabilities")
    if capabilities is not None:
        bounding = caps.mask(capabilities.get("bounding"))
        for cap in range(libc.last_cap() + 1):
            if not bounding & (1 << cap):
                libc.prctl(libc.PR_CAPBSET_DROP, cap)
    libc.prctl(libc.PR_SET_KEEPCAPS, 1)
    os.setgroups([int(g) for g in user.get("additionalGids") or ()])
    os.setgid(int(user.get("gid", 0)))
    os.setuid(int(user.get("uid", 0)))
    libc.prctl(libc.PR_SET_KEEPCAPS, 0)
    if capabilities is not None:
        libc.capset(caps.mask(capabilities.get("effective")), caps.mask(capabilities.get("permitted")),
                     caps.mask(capabilities.get("inheritable")))
        for name in capabilities.get("ambient") or ():
            libc.prctl(libc.PR_CAP_AMBIENT, libc.PR_CAP_AMBIENT_RAISE, caps.number(name))
    if user.get("umask") is not None:
        os.umask(int(user["umask"]))
    if proc.get("noNewPrivileges"):
        libc.prctl(libc.PR_SET_NO_NEW_PRIVS, 1)


class _Confinement:
    """When to load the seccomp filter, as runc does: with no_new_privs, just before execve (so
    the set-up's own system calls are not filtered); without it, while the process still has
    CAP_SYS_ADMIN, which loading a filter then needs (so the filter must allow the rest)."""

    def __init__(self, proc: dict, filter: seccomp.Filter | None):
        self.filter = filter
        self.late = bool(proc.get("noNewPrivileges"))

    def before_user(self) -> None:
        if self.filter and not self.late:
            self.filter.load()

    def before_execve(self) -> None:
        if self.filter and self.late:
            self.filter.load()


def _execve(proc: dict, report_w: int) -> None:
    args = proc.get("args") or []
    if not args:
        raise ExecutorError("the process has no args: nothing to execute")
    env = dict(e.split("=", 1) if "=" in e else (e, "") for e in proc.get("env") or ())
    try:
        os.execvpe(args[0], args, env)
    except FileNotFoundError:
        where = "" if "/" in args[0] else " in $PATH"
        raise ExecutorError(f'exec: "{args[0]}": executable file not found{where}') from None
    except PermissionError:
        raise ExecutorError(f'exec: "{args[0]}": permission denied') from None
    except OSError as e:
        raise ExecutorError(f'exec: "{args[0]}": {e.strerror}') from None
