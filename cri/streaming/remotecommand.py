"""Exec and attach over a streaming connection, SPDY or WebSocket, as kubelet serves them.

The transport is reduced to Channels: the client's stdin and resize data in, the
command's stdout and stderr out, and a last word on the error stream. For an
exec, cricketd makes the process's stdio itself (pipes, or a terminal) and hands
it to the shim; for an attach, the shim copies the container's stdio to pipes
cricketd hands it. Either way cricketd relays between those descriptors and the
connection, so the shim never carries a client's traffic for an exec.

The last word, per protocol version: v4 (SPDY and WebSocket) and v5 write a
metav1.Status; v1 to v3 write the error text only when there is an error.
"""
from __future__ import annotations

import asyncio
import errno
import fcntl
import json
import logging
import os
import secrets
import signal
import struct
import termios
from dataclasses import dataclass

from api.runtime.v1 import api_pb2 as pb
from cri.errors import NotFound
from cri.records import RUNNING
from cri.runtime import Container, Runtime
from frames.shim_client import ShimError

log = logging.getLogger(__name__)

# Output still arriving after the process exited (a child it left holding the pipe) gets this long.
DRAIN_SECONDS = 2.0
RESIZE_LIMIT = 4096  # bytes of a resize stream kept while waiting for a whole {"Width", "Height"}
_READ = 64 * 1024


@dataclass
class Options:
    stdin: bool
    stdout: bool
    stderr: bool
    tty: bool


class Channels:
    """What a remote command needs of its connection; subclasses speak SPDY or WebSocket."""

    status_objects = True  # v4 and later: the last word is a metav1.Status

    async def read_stdin(self) -> bytes:
        """The client's next input; b"" at its end (or when it sends none)."""
        raise NotImplementedError

    async def read_resize(self) -> bytes:
        raise NotImplementedError

    async def write(self, stream: str, data: bytes) -> None:
        raise NotImplementedError

    async def end_output(self, stream: str) -> None:
        """Nothing more comes on stdout or stderr."""

    async def write_error(self, data: bytes) -> None:
        raise NotImplementedError

    async def gone(self) -> None:
        """Returns when the client has gone away."""
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


def success_status() -> dict:
    return {"metadata": {}, "status": "Success"}


def exit_status(cmd: list[str], code: int) -> dict:
    """What kubelet reports for a command that exited non-zero (its remotecommand's shape)."""
    cause = f"error executing command [{' '.join(cmd)}], exit code {code}"
    return {"metadata": {}, "status": "Failure", "message": f"command terminated with non-zero exit code: {cause}",
            "reason": "NonZeroExitCode", "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}}


def internal_error(message: str) -> dict:
    return {"metadata": {}, "status": "Failure", "message": f"Internal error occurred: {message}",
            "reason": "InternalError", "details": {"causes": [{"message": message}]}, "code": 500}


async def finish(ch: Channels, status: dict) -> None:
    """The last word, then the connection's end."""
    try:
        if ch.status_objects:
            await ch.write_error(json.dumps(status).encode())
        elif status["status"] != "Success":
            await ch.write_error(status["message"].encode())
    except (ConnectionError, OSError):
        pass
    await ch.close()


# -- descriptors in the event loop -------------------------------------------------------


async def read_fd(fd: int) -> bytes:
    """The next bytes from a non-blocking descriptor; b"" at its end (EIO: a terminal's far side closed)."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            return os.read(fd, _READ)
        except BlockingIOError:
            ready = loop.create_future()
            loop.add_reader(fd, ready.set_result, None)
            try:
                await ready
            finally:
                loop.remove_reader(fd)
        except OSError as e:
            if e.errno == errno.EIO:
                return b""
            raise


async def write_fd(fd: int, data: bytes) -> None:
    loop = asyncio.get_running_loop()
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            ready = loop.create_future()
            loop.add_writer(fd, ready.set_result, None)
            try:
                await ready
            finally:
                loop.remove_writer(fd)


def _close(fds) -> None:
    for fd in fds:
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass


async def _pump_out(fd: int, ch: Channels, stream: str) -> None:
    """A descriptor's output to the client, to its end."""
    try:
        while data := await read_fd(fd):
            await ch.write(stream, data)
    except (ConnectionError, OSError):
        return
    await ch.end_output(stream)


async def _pump_in(ch: Channels, fd: int, close_at_end: bool) -> None:
    """The client's input to a descriptor; at its end the descriptor is closed, so the process
    reads EOF (not for a terminal, whose master is also its output)."""
    try:
        while data := await ch.read_stdin():
            await write_fd(fd, data)
    except OSError:
        # The process closed its stdin; what the client still sends is read and dropped, since
        # data left unread holds up the client's whole connection.
        while await ch.read_stdin():
            pass
    finally:
        if close_at_end:
            _close([fd])


async def _pump_resize(ch: Channels, resize) -> None:
    """Terminal sizes from the client: a stream of {"Width": w, "Height": h} objects."""
    decoder, buffered = json.JSONDecoder(), ""
    while data := await ch.read_resize():
        buffered += data.decode(errors="replace")
        if len(buffered) > RESIZE_LIMIT:
            # A size is some twenty bytes; this much without one whole is no size at all.
            log.info("streaming: dropped %d bytes of resize data that hold no terminal size", len(buffered))
            buffered = ""
        while buffered.strip():
            try:
                size, end = decoder.raw_decode(buffered.lstrip())
            except ValueError:
                break  # the rest of the object is still on its way
            buffered = buffered.lstrip()[end:]
            try:
                await resize(int(size.get("Width", 0)), int(size.get("Height", 0)))
            except (OSError, ShimError, ValueError, AttributeError) as e:
                log.debug("streaming: resize failed: %s", e)


_TIOCSPTLCK = 0x40045431  # unlock a pty's slave
_TIOCGPTPEER = 0x5441  # open a pty's slave from its master, with no path lookup


def open_terminal(c: Container) -> tuple[int, int]:
    """A terminal (master, slave) from the container's own devpts, as runc makes an exec's: so
    the slave has a name inside the container (/dev/pts/N; tty(1) and ssh-like tools need one).
    A container without its own devpts gets one of the host's."""
    try:
        master = os.open(f"/proc/{c.rec.pid}/root/dev/pts/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return os.openpty()
    try:
        fcntl.ioctl(master, _TIOCSPTLCK, struct.pack("i", 0))
        slave = fcntl.ioctl(master, _TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY)
    except OSError:
        os.close(master)
        return os.openpty()
    return master, slave


def _set_size(fd: int, width: int, height: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))


def _running(rt: Runtime, container_id: str) -> tuple[Container | None, str]:
    try:
        c = rt.container(container_id)
    except NotFound as e:
        return None, str(e)
    if c.rec.state != RUNNING or rt.observe_exit(c):
        return None, f"container {c.id} is not running"
    return c, ""


async def _cancel(tasks) -> None:
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _stdio_pipes(ch: Channels, opts: Options):
    """Pipes for stdio without a terminal: the ends the process gets (stdin, stdout, stderr;
    None where not asked for), the write end of its stdin (or None), the read ends of its
    outputs, and the tasks copying those outputs to the client."""
    theirs: list[int | None] = [None, None, None]
    stdin_w = None
    reads: list[int] = []
    outputs: list[asyncio.Task] = []
    if opts.stdin:
        theirs[0], stdin_w = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(stdin_w, False)
    for i, (name, wanted) in enumerate((("stdout", opts.stdout), ("stderr", opts.stderr)), start=1):
        if wanted:
            r, theirs[i] = os.pipe2(os.O_CLOEXEC)
            os.set_blocking(r, False)
            reads.append(r)
            outputs.append(asyncio.create_task(_pump_out(r, ch, name)))
    return theirs, stdin_w, reads, outputs


# -- exec --------------------------------------------------------------------------------


async def serve_exec(rt: Runtime, req: pb.ExecRequest, ch: Channels) -> None:
    c, problem = _running(rt, req.container_id)
    if c is None:
        await finish(ch, internal_error(problem))
        return
    opts = Options(req.stdin, req.stdout, req.stderr, req.tty)
    process = dict(c.rec.spec.get("process") or {})
    process["args"] = list(req.cmd)
    process["terminal"] = opts.tty
    exec_id = secrets.token_hex(8)
    ours: list[int] = []  # our ends, closed when done
    tasks: list[asyncio.Task] = []
    if opts.tty:
        master, slave = open_terminal(c)
        os.set_blocking(master, False)
        ours.append(master)
        theirs = [slave, None, None]
        tasks.append(asyncio.create_task(_pump_out(master, ch, "stdout")))
        if opts.stdin:
            tasks.append(asyncio.create_task(_pump_in(ch, master, close_at_end=False)))
        tasks.append(asyncio.create_task(_pump_resize(ch, lambda w, h: _async(_set_size, master, w, h))))
        outputs = tasks[:1]
    else:
        theirs, stdin_w, ours, outputs = _stdio_pipes(ch, opts)
        tasks += outputs
        if stdin_w is not None:
            tasks.append(asyncio.create_task(_pump_in(ch, stdin_w, close_at_end=True)))
    gone = asyncio.create_task(ch.gone())
    try:
        try:
            await c.shim.exec(exec_id, process, *theirs)
        finally:
            _close(theirs)
        waiting = asyncio.create_task(c.shim.wait_exec(exec_id))
        await asyncio.wait([waiting, gone], return_when=asyncio.FIRST_COMPLETED)
        if not waiting.done():  # the client left: so does its command
            await _kill(c, exec_id)
            await _cancel([waiting])
            return
        code = waiting.result()
        if outputs:
            await asyncio.wait(outputs, timeout=DRAIN_SECONDS)
        await finish(ch, success_status() if code == 0 else exit_status(list(req.cmd), code))
    except ShimError as e:
        await finish(ch, internal_error(f"exec in container {c.id}: {e}"))
    finally:
        await _cancel(tasks + [gone])
        _close(ours)


async def _async(fn, *args) -> None:
    fn(*args)


async def _kill(c: Container, exec_id: str) -> None:
    try:
        await c.shim.kill(signal.SIGKILL, exec_id=exec_id)
    except (ShimError, OSError) as e:
        log.debug("streaming: killing exec %s: %s", exec_id, e)


# -- attach ------------------------------------------------------------------------------


async def serve_attach(rt: Runtime, req: pb.AttachRequest, ch: Channels) -> None:
    c, problem = _running(rt, req.container_id)
    if c is None:
        await finish(ch, internal_error(problem))
        return
    opts = Options(req.stdin, req.stdout, req.stderr and not req.tty, req.tty)
    theirs, stdin_w, ours, outputs = _stdio_pipes(ch, opts)
    if stdin_w is not None:
        ours.append(stdin_w)  # ours to close until the client's input is being copied
    tasks = list(outputs)
    gone = asyncio.create_task(ch.gone())
    try:
        try:
            await c.shim.attach(*theirs)
        finally:
            _close(theirs)
        if stdin_w is not None:
            # The pipe's write end is closed when the client's input ends: the shim then
            # closes the container's stdin if it is stdin_once.
            ours.remove(stdin_w)
            tasks.append(asyncio.create_task(_pump_in(ch, stdin_w, close_at_end=True)))
        if opts.tty:
            tasks.append(asyncio.create_task(_pump_resize(ch, c.shim.resize)))
        # The attachment lasts until the container's output ends (it exited) or the client leaves;
        # with no output asked for, until the client leaves.
        ended = asyncio.gather(*outputs) if outputs else asyncio.get_running_loop().create_future()
        await asyncio.wait([ended, gone], return_when=asyncio.FIRST_COMPLETED)
        if not gone.done():
            await finish(ch, success_status())
        else:
            ended.cancel()
    except ShimError as e:
        await finish(ch, internal_error(f"attach to container {c.id}: {e}"))
    finally:
        await _cancel(tasks + [gone])
        _close(ours)
