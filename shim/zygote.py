"""The zygote: a pre-imported, single-threaded template that shims are forked from.

cricketd is multi-threaded (gRPC), and forking a threaded process is unsafe;
starting a fresh interpreter per container costs a hundred milliseconds and
ten megabytes. So cricketd starts this process once: it imports everything a
shim needs, freezes those objects out of the garbage collector's reach (so
children share their pages instead of copying them), and then forks on request:
a shim per container, a short-lived child to pin a pod's namespaces, a pod init.

It is a child subreaper and reaps all of them. cricketd holds the write end of
a "lifeline" pipe; when cricketd goes, the zygote stops taking requests but
stays until its last child has exited, so running containers keep their shims
and no shim is left a zombie.
"""
from __future__ import annotations

import gc
import os
import selectors
import signal
import socket
import sys

from api.shim.v1 import shim_pb2 as pb
from frames import channel
from linux import cgroups, libc, namespaces
from linux.crash_points import armed, crash_point, die
from shim import pod_init
from shim.diag import diag
from shim.server import Shim

REQUEST_TIMEOUT = 10.0  # a caller that does not finish sending its request this fast is dropped


class Zygote:
    def __init__(self, socket_path: str, lifeline: int):
        self.socket_path = socket_path
        self.lifeline = lifeline
        self.listener = _listen(socket_path)
        self.socket_inode = os.stat(socket_path).st_ino
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.draining = False
        self.cricketd = os.getppid()

    def _kill_cricketd_at(self, step: str) -> None:
        # Only while cricketd is still our parent: once it is gone, the parent is someone else's.
        if armed(step) and os.getppid() == self.cricketd:
            die(step, self.cricketd)

    def serve(self) -> None:
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # the wakeup fd does the work
        sel = selectors.DefaultSelector()
        sel.register(self.listener, selectors.EVENT_READ, "accept")
        sel.register(self.lifeline, selectors.EVENT_READ, "lifeline")
        sel.register(self.wake_r, selectors.EVENT_READ, "signal")
        while True:
            for key, _ in sel.select():
                if key.data == "accept":
                    self._accept()
                elif key.data == "lifeline":
                    if not os.read(self.lifeline, 64):
                        diag("cricketd is gone: serving no more, staying while shims run")
                        sel.unregister(self.lifeline)
                        sel.unregister(self.listener)
                        self._unlink_own_socket()
                        self.listener.close()
                        self.draining = True
                else:
                    try:
                        while os.read(self.wake_r, 512):
                            pass
                    except BlockingIOError:
                        pass
                if not self._reap():
                    return

    def _unlink_own_socket(self) -> None:
        # A restarted cricketd's new zygote may already listen on the same path.
        try:
            if os.stat(self.socket_path).st_ino == self.socket_inode:
                os.unlink(self.socket_path)
        except FileNotFoundError:
            pass

    def _reap(self) -> bool:
        """Reap exited children; False once draining and none is left."""
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return not self.draining
            if pid == 0:
                return True

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except BlockingIOError:
            return
        with conn:
            conn.settimeout(REQUEST_TIMEOUT)
            try:
                req = pb.ZygoteRequest.FromString(channel.read_frame_blocking(conn))
                resp = self._dispatch(req, conn)
                channel.write_frame_blocking(conn, resp.SerializeToString())
            except (OSError, ValueError) as e:
                diag(f"dropping a request: {e}")

    def _dispatch(self, req: pb.ZygoteRequest, conn: socket.socket) -> pb.ZygoteResponse:
        call = req.WhichOneof("call")
        try:
            if call == "spawn_shim":
                return pb.ZygoteResponse(pid=self._spawn_shim(req.spawn_shim, conn))
            if call == "pin_namespaces":
                p = req.pin_namespaces
                self._run_child(
                    lambda: namespaces.pin_namespaces(p.net, p.ipc, p.uts, p.hostname, dict(p.sysctls),
                                                      p.user, p.uid_map, p.gid_map), conn
                )
                crash_point("zygote.pin_namespaces")  # pinned, unanswered
                return pb.ZygoteResponse()
            if call == "spawn_pod_init":
                return pb.ZygoteResponse(pid=self._spawn_pod_init(conn, req.spawn_pod_init.user))
        except OSError as e:
            return pb.ZygoteResponse(error=str(e))
        except ChildFailed as e:
            return pb.ZygoteResponse(error=str(e))
        return pb.ZygoteResponse(error=f"unknown request {call!r}")

    def _in_child(self, conn: socket.socket) -> None:
        """What a forked child drops of the zygote's before doing its own work."""
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in (self.wake_r, self.wake_w, self.lifeline):
            os.close(fd)
        self.listener.close()
        conn.close()

    def _spawn_shim(self, req: pb.SpawnShim, conn: socket.socket) -> int:
        # Steps of cricketd's CreateContainer that only the zygote sees: cricketd (our parent) is
        # killed with the rootfs and config.json made but no shim, or with a shim it never heard of.
        self._kill_cricketd_at("container_create.before_spawn")
        # Bound here, before the fork: the socket exists by the time cricketd hears the pid.
        _unlink(req.socket)
        shim_socket = _listen(req.socket)
        pid = os.fork()
        if pid == 0:
            self._in_child(conn)
            Shim(req, shim_socket).run()  # never returns
        shim_socket.close()
        self._kill_cricketd_at("container_create.shim_spawned")
        crash_point("zygote.spawn_shim")  # the zygote itself dies with the shim forked, unanswered
        return pid

    def _run_child(self, body, conn: socket.socket) -> None:
        """Run `body` in a child and wait for it; raise ChildFailed with its error."""
        r, w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:
            os.close(r)
            self._in_child(conn)
            _exit_after(body, w)
        os.close(w)
        try:
            message = _read_all(r)
        finally:
            os.close(r)
        _, status = os.waitpid(pid, 0)
        if status:
            raise ChildFailed(message.decode(errors="replace") or f"child exited with status {status}")

    def _spawn_pod_init(self, conn: socket.socket, user: str = "") -> int:
        r, w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:
            os.close(r)
            self._in_child(conn)

            def body():
                if user:
                    # The PID namespace is then the pod's user namespace's, which its containers
                    # (in that namespace, with no capability over the host's) can join; the init
                    # is root in the pod, nobody on the host.
                    libc.setns(user, libc.CLONE_NEWUSER)
                    os.setgroups([])
                    os.setresgid(0, 0, 0)
                    os.setresuid(0, 0, 0)
                libc.unshare(libc.CLONE_NEWPID)
                init = os.fork()
                if init == 0:
                    os.close(w)
                    pod_init.run()
                os.write(w, b"pid %d" % init)

            _exit_after(body, w)
        os.close(w)
        try:
            message = _read_all(r).decode(errors="replace")
        finally:
            os.close(r)
        os.waitpid(pid, 0)
        if not message.startswith("pid "):
            raise ChildFailed(message or "the pod init's parent exited without a word")
        crash_point("zygote.spawn_pod_init")  # the pod init runs, unanswered
        return int(message[4:])


class ChildFailed(Exception):
    pass


def _exit_after(body, report_w: int) -> None:
    try:
        body()
        code = 0
    except BaseException as e:  # a child must never return into the zygote's loop
        os.write(report_w, str(e).encode() or type(e).__name__.encode())
        code = 1
    os._exit(code)


def _read_all(fd: int) -> bytes:
    chunks: list[bytes] = []
    while True:
        chunk = os.read(fd, 4096)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _listen(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old = os.umask(0o077)  # only root talks to the zygote and the shims
    try:
        with channel.reachable(path) as name:
            sock.bind(name)
    finally:
        os.umask(old)
    sock.listen(socket.SOMAXCONN)  # a burst of pods and containers connects at once
    return sock


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def main(argv: list[str] | None = None) -> int:
    # Two options, parsed by hand: argparse would sit in every shim's memory for nothing.
    args = dict(zip(*[iter(sys.argv[1:] if argv is None else argv)] * 2))
    if set(args) != {"--socket", "--lifeline"}:
        print("usage: python -m shim.zygote --socket PATH --lifeline FD", file=sys.stderr)
        return 2
    lifeline = int(args["--lifeline"])
    os.setsid()  # a Ctrl-C meant for cricketd must not reach the zygote and its shims
    libc.set_name("cricket-zygote")
    libc.prctl(libc.PR_SET_CHILD_SUBREAPER, 1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.set_blocking(lifeline, False)
    zygote = Zygote(args["--socket"], lifeline)
    zygote.listener.setblocking(False)
    cgroups.hierarchies() if cgroups.mode() == "v1" else None  # found once, shared by every shim
    gc.collect()
    gc.freeze()
    zygote.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
