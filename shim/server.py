"""The shim: one process per container, forked from the zygote, outliving cricketd.

It creates the container through an executor and holds it before execve until
cricketd says start; owns the container's stdio and writes its output to the
CRI log; reaps the container (and its exec processes) as a child subreaper;
records the exit in an exit file written atomically; and answers cricketd on
its own unix socket. Once the container has exited and its output is drained,
the exit file says everything and the shim exits.
"""
from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import signal
import socket
import time

from api.shim.v1 import shim_pb2 as pb
from shim import channel, linux
from shim.builtin import BuiltinExecutor, ExecutorError, Held, StartError, Stdio
from shim.cri_log import DEFAULT_LINE_MAX, LogFormatter

log = logging.getLogger("shim")

# After the container exits, output still in flight (or held by a process that
# escaped into a shared PID namespace) gets this long to drain.
DRAIN_SECONDS = 2.0
# A shim whose container failed to be created waits this long for cricketd to hear why.
CREATE_ERROR_LINGER = 60.0
# Exit status of a container whose process could not be executed (as Docker and containerd report it).
START_ERROR_EXIT_CODE = 128


def write_exit_file(path: str, record: dict) -> None:
    """Write the exit record so that a reader sees the whole of it or nothing."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(record, f)
    os.replace(tmp, path)


class _Output:
    """One stream of the container's output, relayed to the CRI log."""

    def __init__(self, shim: "Shim", fd: int, stream: str, line_max: int):
        self.shim = shim
        self.fd = fd
        self.formatter = LogFormatter(stream, line_max)
        self.open = True

    def on_readable(self) -> None:
        try:
            data = os.read(self.fd, 64 * 1024)
        except BlockingIOError:
            return
        except OSError as e:
            if e.errno != errno.EIO:  # EIO: the terminal's other side is closed
                log.warning("reading container output: %s", e)
            data = b""
        if data:
            self.shim.write_log(self.formatter.feed(data))
            return
        self.close()

    def close(self) -> None:
        if not self.open:
            return
        self.open = False
        asyncio.get_running_loop().remove_reader(self.fd)
        self.shim.write_log(self.formatter.finish())
        os.close(self.fd)
        self.shim.output_closed()


class Shim:
    def __init__(self, args: pb.SpawnShim, listener: socket.socket):
        self.args = args
        self.listener = listener
        self.state = pb.State(status=pb.CREATING, created_at=time.time_ns())
        self.create_error = ""
        self.start_error = ""
        self.held: Held | None = None
        self.executor: BuiltinExecutor | None = None
        self.outputs: list[_Output] = []
        self.stdin_w: int | None = None
        self.log_fd: int | None = None
        self.exited: asyncio.Event | None = None  # made inside the loop
        self.exec_pids: dict[str, int] = {}
        self.statuses: dict[int, int] = {}  # reaped pid -> exit code
        self.exit_waiters: dict[int, list[asyncio.Future]] = {}
        self.init_status: int | None = None
        self.finished = False

    # -- start-up ---------------------------------------------------------------

    def run(self) -> None:
        """Create the container, then serve until it has exited. Never returns."""
        code = 0
        try:
            self._become_shim()
            self._create()
            asyncio.run(self._serve())
        except BaseException:
            log.exception("shim for %s failed", self.args.container_id)
            code = 1
        finally:
            logging.shutdown()
            os._exit(code)

    def _become_shim(self) -> None:
        os.setsid()  # no terminal, no process group of cricketd's to be signalled with
        linux.prctl(linux.PR_SET_CHILD_SUBREAPER, 1)
        linux.set_name("cricket-shim")
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        null = os.open("/dev/null", os.O_RDWR)
        os.dup2(null, 0)
        if self.args.shim_log:
            diag = os.open(self.args.shim_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.dup2(diag, 1)
            os.dup2(diag, 2)
            os.close(diag)
        else:
            os.dup2(null, 1)
            os.dup2(null, 2)
        os.close(null)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s shim %(process)d: %(message)s", force=True)

    def _create(self) -> None:
        args = self.args
        with open(os.path.join(args.bundle, "config.json")) as f:
            spec = json.load(f)
        self.executor = BuiltinExecutor(args.bundle, spec)
        theirs: list[int] = []
        line_max = args.log_line_max or DEFAULT_LINE_MAX
        if args.tty:
            master, slave = os.openpty()
            stdio = Stdio(terminal=slave)
            theirs.append(slave)
            self.outputs.append(_Output(self, master, "stdout", line_max))
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
                self.outputs.append(_Output(self, r, stream, line_max))
        self._open_log()
        try:
            self.held = self.executor.create(stdio)
            self.state.pid = self.held.pid
            self.state.status = pb.CREATED
        except ExecutorError as e:
            self.create_error = str(e)
            log.warning("creating %s failed: %s", args.container_id, e)
        finally:
            for fd in theirs:
                os.close(fd)
        for out in self.outputs:
            os.set_blocking(out.fd, False)

    def _open_log(self) -> None:
        if self.args.log_path:
            self.log_fd = os.open(self.args.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)

    def write_log(self, data: bytes) -> None:
        if data and self.log_fd is not None:
            try:
                os.write(self.log_fd, data)
            except OSError as e:
                log.warning("writing the container log: %s", e)  # keep draining the container's output

    # -- the loop ---------------------------------------------------------------

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        self.exited = asyncio.Event()
        self.listener.setblocking(False)
        loop.add_reader(self.listener.fileno(), self._accept)
        loop.add_signal_handler(signal.SIGCHLD, self._reap)
        if self.create_error:
            await asyncio.sleep(CREATE_ERROR_LINGER)
            return
        for out in self.outputs:
            loop.add_reader(out.fd, out.on_readable)
        self._reap()  # the container may have died before the handler was in place
        await self.exited.wait()
        loop.remove_reader(self.listener.fileno())
        # Let answers to waits already in flight go out before the process ends.
        await asyncio.sleep(0.05)

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except BlockingIOError:
            return
        conn.setblocking(False)
        asyncio.get_running_loop().create_task(self._handle(conn))

    async def _handle(self, conn: socket.socket) -> None:
        fds: list[int] = []
        try:
            payload, fds = await channel.read_frame(conn)
            req = pb.Request.FromString(payload)
            resp = await self._dispatch(req, fds)
            await channel.write_frame(conn, resp.SerializeToString())
        except (ConnectionError, OSError) as e:
            log.info("a connection from cricketd ended early: %s", e)
        except Exception:
            log.exception("handling a request")
        finally:
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
            conn.close()

    async def _dispatch(self, req: pb.Request, fds: list[int]) -> pb.Response:
        call = req.WhichOneof("call")
        if call == "state":
            if self.create_error:
                asyncio.get_running_loop().call_later(0.1, self.exited.set)
                return pb.Response(error=self.create_error)
            return pb.Response(state=self.state)
        if self.create_error:
            return pb.Response(error=f"the container was never created: {self.create_error}")
        if call == "start":
            return self._start()
        if call == "kill":
            return self._kill(req.kill)
        if call == "wait":
            return await self._wait(req.wait)
        if call == "exec":
            return self._exec(req.exec, fds)
        if call == "reopen_log":
            if self.log_fd is not None:
                os.close(self.log_fd)
                self.log_fd = None
            self._open_log()
            return pb.Response()
        if call == "shutdown":
            return self._shutdown()
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

    async def _wait(self, req: pb.WaitRequest) -> pb.Response:
        if req.exec_id:
            pid = self.exec_pids.get(req.exec_id)
            if pid is None:
                return pb.Response(error=f"no exec {req.exec_id!r} in this container")
            if pid not in self.statuses:
                fut = asyncio.get_running_loop().create_future()
                self.exit_waiters.setdefault(pid, []).append(fut)
                await fut
            return pb.Response(exit_code=self.statuses[pid])
        await self.exited.wait()
        return pb.Response(state=self.state)

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
            for fut in self.exit_waiters.pop(pid, ()):
                if not fut.done():
                    fut.set_result(None)
            if pid == self.state.pid and self.init_status is None:
                self.init_status = self.statuses[pid]
                self._container_exited()

    def _container_exited(self) -> None:
        self.state.finished_at = time.time_ns()
        self.state.status = pb.EXITED
        if self.start_error:
            self.state.exit_code = START_ERROR_EXIT_CODE
            self.state.reason = "StartError"
            self.state.message = self.start_error
        else:
            self.state.exit_code = self.init_status
        if self.stdin_w is not None:
            os.close(self.stdin_w)
            self.stdin_w = None
        if not any(out.open for out in self.outputs):
            self._finish()
        else:
            asyncio.get_running_loop().call_later(DRAIN_SECONDS, self._drain_timeout)

    def _drain_timeout(self) -> None:
        for out in self.outputs:
            out.close()

    def output_closed(self) -> None:
        if self.init_status is not None and not any(out.open for out in self.outputs):
            self._finish()

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        write_exit_file(self.args.exit_file, {
            "pid": self.state.pid,
            "exit_code": self.state.exit_code,
            "started_at": self.state.started_at,
            "finished_at": self.state.finished_at,
            "reason": self.state.reason,
            "message": self.state.message,
        })
        if self.log_fd is not None:
            os.close(self.log_fd)
            self.log_fd = None
        self.exited.set()
