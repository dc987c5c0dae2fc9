"""The shim: one process per container, forked from the zygote, outliving cricketd.

It creates the container through an executor and holds it before execve until
cricketd says start; owns the container's stdio and writes its output to the
CRI log; reaps the container (and its exec processes) as a child subreaper;
records the exit in an exit file written atomically; and answers cricketd on
its own unix socket. Once the container has exited and its output is drained,
the exit file says everything and the shim exits.

There is one shim per container, so its memory counts many times over: it is a
plain selectors loop, not asyncio, and writes its few diagnostics itself, not
through logging (each would cost a forked shim over half a megabyte of pages
of its own).
"""
from __future__ import annotations

import fcntl
import json
import os
import selectors
import signal
import socket
import struct
import termios
import time
import traceback

from api.shim.v1 import shim_pb2 as pb
from frames.channel import MAX_FDS
from frames.framing import FrameError, FrameReader, encode
from linux import libc
from linux.crash_points import crash_point
from shim.builtin import BuiltinExecutor
from shim.cri_log import DEFAULT_LINE_MAX
from shim.diag import diag
from shim.executor import Executor, ExecutorError, Held, StartError, Stdio
from shim.oci_runtime import OciRuntimeExecutor
from shim.stdio import LogWriter, Output, StdinRelay

# After the container exits, output still in flight (or held by a process that
# escaped into a shared PID namespace) gets this long to drain.
DRAIN_SECONDS = 2.0
# A shim whose container failed to be created waits this long for cricketd to hear why.
CREATE_ERROR_LINGER = 60.0
# How long answers in flight get when the shim is done.
ANSWER_SECONDS = 1.0
_READ = 64 * 1024


def write_exit_file(path: str, record: dict) -> None:
    """Write the exit record so that a reader sees the whole of it or nothing."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(record, f)
    os.replace(tmp, path)


class _Conn:
    """One request from cricketd: its bytes and descriptors until a whole frame is in."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.reader = FrameReader()
        self.fds: list[int] = []

    def close(self) -> None:
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = []
        self.sock.close()


class Shim:
    def __init__(self, args: pb.SpawnShim, listener: socket.socket):
        self.args = args
        self.listener = listener
        self.sel = selectors.DefaultSelector()
        self.state = pb.State(status=pb.CREATING, created_at=time.time_ns())
        self.create_error = ""
        self.start_error = ""
        self.held: Held | None = None
        self.executor: Executor  # made by _create, before the shim serves
        self.outputs: list[Output] = []
        self.stdin_w: int | None = None
        self.stdin_relays: list[StdinRelay] = []
        self._stdin_watched = False
        self.log = LogWriter(args.log_path, args.log_max_size, args.log_max_files)
        self.exec_pids: dict[str, int] = {}
        self.statuses: dict[int, int] = {}  # reaped pid -> exit code
        self.exec_waiters: dict[int, list[_Conn]] = {}  # pid -> connections waiting for it
        self.exit_waiters: list[_Conn] = []  # connections waiting for the container
        self.init_status: int | None = None
        self.done = False  # the exit file is written: nothing is left to do
        self.deadline: float | None = None  # when the loop ends regardless
        self.drain_at: float | None = None

    # -- start-up ---------------------------------------------------------------

    def run(self) -> None:
        """Create the container, then serve until it has exited. Never returns."""
        code = 0
        try:
            self._become_shim()
            self._create()
            self._serve()
        except BaseException:
            diag(f"failed: {traceback.format_exc()}")
            code = 1
        os._exit(code)

    def _become_shim(self) -> None:
        os.setsid()  # no terminal, no process group of cricketd's to be signalled with
        libc.prctl(libc.PR_SET_CHILD_SUBREAPER, 1)
        libc.set_name("cricket-shim")
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        null = os.open("/dev/null", os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        if self.args.shim_log:
            diagnostics = os.open(self.args.shim_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.dup2(diagnostics, 2)
            os.close(diagnostics)
        else:
            os.dup2(null, 2)
        os.close(null)

    def _create(self) -> None:
        args = self.args
        with open(os.path.join(args.bundle, "config.json")) as f:
            spec = json.load(f)
        if args.runtime:
            self.executor = OciRuntimeExecutor(args.bundle, spec, args.container_id, args.runtime, args.runtime_root)
        else:
            self.executor = BuiltinExecutor(args.bundle, spec)
        theirs: list[int] = []
        line_max = args.log_line_max or DEFAULT_LINE_MAX
        if args.tty and args.runtime:
            stdio = Stdio()  # the runtime makes the terminal and hands its master back
        elif args.tty:
            master, slave = os.openpty()
            stdio = Stdio(terminal=slave)
            theirs.append(slave)
            self.outputs.append(Output(self, master, "stdout", line_max))
            if args.stdin:
                self.stdin_w = os.dup(master)
        else:
            stdio = Stdio()
            if args.stdin:
                stdio.stdin, self.stdin_w = os.pipe()
                theirs.append(stdio.stdin)
            for stream in ("stdout", "stderr"):
                r, w = os.pipe()
                setattr(stdio, stream, w)
                theirs.append(w)
                self.outputs.append(Output(self, r, stream, line_max))
        self.log.open()
        try:
            self.held = self.executor.create(stdio)
            self.state.pid = self.held.pid
            self.state.status = pb.CREATED
            if self.executor.console is not None:
                self.outputs.append(Output(self, self.executor.console, "stdout", line_max))
                if args.stdin:
                    self.stdin_w = os.dup(self.executor.console)
        except ExecutorError as e:
            self.create_error = str(e)
            diag(f"creating {args.container_id} failed: {e}")
        finally:
            for fd in theirs:
                os.close(fd)
        for out in self.outputs:
            os.set_blocking(out.fd, False)
        if self.stdin_w is not None:
            os.set_blocking(self.stdin_w, False)

    # -- the loop ---------------------------------------------------------------

    def _serve(self) -> None:
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # the wakeup fd does the work
        self.listener.setblocking(False)
        self.sel.register(self.listener, selectors.EVENT_READ, self._accept)
        self.sel.register(wake_r, selectors.EVENT_READ, lambda: self._on_signal(wake_r))
        if self.create_error:
            self.deadline = time.monotonic() + CREATE_ERROR_LINGER
        else:
            for out in self.outputs:
                self.sel.register(out.fd, selectors.EVENT_READ, out.on_readable)
            self._reap()  # the container may have died before the handler was in place
        while not self.done:
            now = time.monotonic()
            if self.deadline is not None and now >= self.deadline:
                break
            if self.drain_at is not None and now >= self.drain_at:
                self.drain_at = None
                for out in self.outputs:
                    out.close()
                continue
            timeouts = [t - now for t in (self.deadline, self.drain_at) if t is not None]
            for key, _ in self.sel.select(min(timeouts) if timeouts else None):
                key.data()

    def _on_signal(self, wake_r: int) -> None:
        try:
            while os.read(wake_r, 512):
                pass
        except BlockingIOError:
            pass
        self._reap()

    def _accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except BlockingIOError:
            return
        sock.setblocking(False)
        conn = _Conn(sock)
        self.sel.register(sock, selectors.EVENT_READ, lambda: self._on_request_bytes(conn))

    def _on_request_bytes(self, conn: _Conn) -> None:
        try:
            data, fds, _, _ = socket.recv_fds(conn.sock, _READ, MAX_FDS)
        except BlockingIOError:
            return
        except OSError:
            data, fds = b"", []
        conn.fds.extend(fds)
        try:
            frames = conn.reader.feed(data) if data else []
        except FrameError as e:
            diag(f"dropping a request: {e}")
            frames, data = [], b""
        if not frames:
            if not data:
                self.sel.unregister(conn.sock)
                conn.close()
            return
        self.sel.unregister(conn.sock)
        try:
            resp = self._dispatch(pb.Request.FromString(frames[0]), conn)
        except Exception:
            diag(f"handling a request: {traceback.format_exc()}")
            resp = pb.Response(error="the shim failed to handle the request; see its log")
        if resp is not None:
            self._answer(conn, resp)

    def _answer(self, conn: _Conn, resp: pb.Response) -> None:
        try:
            conn.sock.settimeout(ANSWER_SECONDS)  # a frame this small fits the socket's buffer at once
            conn.sock.sendall(encode(resp.SerializeToString()))
        except OSError as e:
            diag(f"answering cricketd: {e}")
        conn.close()

    def _dispatch(self, req: pb.Request, conn: _Conn) -> pb.Response | None:
        """The answer, or None when it comes later (a wait)."""
        call = req.WhichOneof("call")
        if self.create_error:
            if call in ("state", "shutdown"):
                self.done = True  # cricketd has heard why, or no longer cares: the shim's work is done
            return pb.Response(error=self.create_error)
        if call == "state":
            return pb.Response(state=self.state)
        if call == "start":
            return self._start()
        if call == "kill":
            return self._kill(req.kill)
        if call == "wait":
            return self._wait(req.wait, conn)
        if call == "exec":
            return self._exec(req.exec, conn.fds)
        if call == "reopen_log":
            self.log.reopen()
            return pb.Response()
        if call == "shutdown":
            return self._shutdown()
        if call == "attach":
            return self._attach(req.attach, conn)
        if call == "resize":
            return self._resize(req.resize)
        return pb.Response(error=f"unknown request {call!r}")

    # -- requests ---------------------------------------------------------------

    def _start(self) -> pb.Response:
        if self.state.status != pb.CREATED or self.held is None:
            return pb.Response(error=f"container is {pb.Status.Name(self.state.status).lower()}, not created")
        held, self.held = self.held, None
        self.state.started_at = time.time_ns()
        try:
            self.executor.start(held)
        except StartError as e:
            self.start_error = str(e)
            self.state.status = pb.EXITED
            return pb.Response(error=self.start_error, state=self.state)
        self.state.status = pb.RUNNING
        crash_point("shim.after_start")  # the process runs; cricketd has not heard
        return pb.Response(state=self.state)

    def _kill(self, req: pb.KillRequest) -> pb.Response:
        if req.all and self.executor.cgroup is not None:
            self.executor.cgroup.kill_all(req.signal)
            return pb.Response()
        pid = self.exec_pids.get(req.exec_id) if req.exec_id else self.state.pid
        if pid is None:
            return pb.Response(error=f"no exec {req.exec_id!r} in this container")
        if pid in self.statuses:
            return pb.Response()  # already gone
        try:
            os.kill(pid, req.signal)
        except ProcessLookupError:
            pass
        return pb.Response()

    def _wait(self, req: pb.WaitRequest, conn: _Conn) -> pb.Response | None:
        if req.exec_id:
            pid = self.exec_pids.get(req.exec_id)
            if pid is None:
                return pb.Response(error=f"no exec {req.exec_id!r} in this container")
            if pid in self.statuses:
                return pb.Response(exit_code=self.statuses[pid])
            self.exec_waiters.setdefault(pid, []).append(conn)
            return None
        if self.done:
            return pb.Response(state=self.state)
        self.exit_waiters.append(conn)
        return None

    def _exec(self, req: pb.ExecRequest, fds: list[int]) -> pb.Response:
        if self.state.status != pb.RUNNING:
            return pb.Response(error=f"container is {pb.Status.Name(self.state.status).lower()}, not running")
        if req.exec_id in self.exec_pids:
            return pb.Response(error=f"exec {req.exec_id!r} already exists")
        process = json.loads(req.process)
        stdio = Stdio()
        if process.get("terminal"):
            if len(fds) != 1:
                return pb.Response(error=f"a terminal exec takes one descriptor, got {len(fds)}")
            stdio.terminal = fds[0]
        else:
            wanted = [name for name, flag in (("stdin", req.has_stdin), ("stdout", req.has_stdout),
                                              ("stderr", req.has_stderr)) if flag]
            if len(fds) != len(wanted):
                return pb.Response(error=f"exec wants {len(wanted)} descriptors, got {len(fds)}")
            for name, fd in zip(wanted, fds):
                setattr(stdio, name, fd)
        try:
            pid = self.executor.exec(self.state.pid, process, stdio)
        except ExecutorError as e:
            return pb.Response(error=str(e))
        self.exec_pids[req.exec_id] = pid
        return pb.Response(pid=pid)

    def _attach(self, req: pb.AttachRequest, conn: _Conn) -> pb.Response:
        wanted = [name for name, flag in (("stdin", req.has_stdin), ("stdout", req.has_stdout),
                                          ("stderr", req.has_stderr)) if flag]
        if len(conn.fds) != len(wanted):
            return pb.Response(error=f"attach wants {len(wanted)} descriptors, got {len(conn.fds)}")
        if req.has_stdin and self.stdin_w is None:
            return pb.Response(error="the container's stdin is not open: it was created without stdin, "
                                     "or its stdin was closed (stdin_once)")
        fds, conn.fds = dict(zip(wanted, conn.fds)), []  # the shim keeps them now
        for name in ("stdout", "stderr"):
            if name not in fds:
                continue
            os.set_blocking(fds[name], False)
            # A tty container's output is all on its terminal: stdout.
            out = next((o for o in self.outputs if o.open and o.stream == name), None)
            if out is None:
                os.close(fds[name])  # that output has ended (or a tty has no stderr): EOF at once
            else:
                out.sinks.append(fds[name])
        if "stdin" in fds:
            self.stdin_relays.append(StdinRelay(self, fds["stdin"]))
        return pb.Response()

    def _resize(self, req: pb.ResizeRequest) -> pb.Response:
        if not self.args.tty:
            return pb.Response(error="the container has no terminal to resize")
        terminal = next((o.fd for o in self.outputs if o.open), None)
        if terminal is None:
            return pb.Response()  # the container's terminal is gone with it
        fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", req.height, req.width, 0, 0))
        return pb.Response()

    def watch_stdin(self, on_writable) -> None:
        """Call on_writable when the container's stdin has room (None: stop watching)."""
        if self._stdin_watched:
            assert self.stdin_w is not None  # close_stdin has its relays stop watching first
            self.sel.unregister(self.stdin_w)
            self._stdin_watched = False
        if on_writable is not None and self.stdin_w is not None:
            self.sel.register(self.stdin_w, selectors.EVENT_WRITE, on_writable)
            self._stdin_watched = True

    def close_stdin(self) -> None:
        for relay in list(self.stdin_relays):
            relay.close(eof=False)
        if self.stdin_w is not None:
            os.close(self.stdin_w)
            self.stdin_w = None

    def _shutdown(self) -> pb.Response:
        if self.held is not None:
            # Created, never started: the held process exits when let go.
            self.executor.abandon(self.held)
            self.held = None
        if self.state.status != pb.EXITED:
            try:
                os.kill(self.state.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return pb.Response()

    # -- exits ------------------------------------------------------------------

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            code = os.waitstatus_to_exitcode(status)
            self.statuses[pid] = 128 - code if code < 0 else code
            for conn in self.exec_waiters.pop(pid, ()):
                self._answer(conn, pb.Response(exit_code=self.statuses[pid]))
            if pid == self.state.pid and self.init_status is None:
                self.init_status = self.statuses[pid]
                self._container_exited()

    def _container_exited(self) -> None:
        self.state.finished_at = time.time_ns()
        self.state.status = pb.EXITED
        if self.start_error:
            self.state.exit_code = pb.START_ERROR
            self.state.reason = "StartError"
            self.state.message = self.start_error
        else:
            assert self.init_status is not None  # _reap sets it before calling this
            self.state.exit_code = self.init_status
            if self._oom_killed():
                self.state.reason = "OOMKilled"
                self.state.message = "the kernel's OOM killer ended a process of the container at its memory limit"
        self.close_stdin()
        if not any(out.open for out in self.outputs):
            self._finish()
        else:
            self.drain_at = time.monotonic() + DRAIN_SECONDS

    def _oom_killed(self) -> bool:
        cgroup = self.executor.cgroup
        if cgroup is None:
            return False
        try:
            return cgroup.oom_kills() > 0  # the cgroup is the container's own, made for it
        except OSError:
            return False

    def output_closed(self) -> None:
        if self.init_status is not None and not any(out.open for out in self.outputs):
            self._finish()

    def _finish(self) -> None:
        if self.done:
            return
        self.executor.delete()
        write_exit_file(self.args.exit_file, {
            "pid": self.state.pid,
            "exit_code": self.state.exit_code,
            "started_at": self.state.started_at,
            "finished_at": self.state.finished_at,
            "reason": self.state.reason,
            "message": self.state.message,
        })
        self.log.close()
        for conn in self.exit_waiters:
            self._answer(conn, pb.Response(state=self.state))
        self.exit_waiters = []
        self.done = True
