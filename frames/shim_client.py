"""cricketd's clients of the shim protocol (api/shim/v1/shim.proto): the zygote's and each shim's."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
import time

from api.shim.v1 import shim_pb2 as pb
from frames import channel
from frames.client import call

log = logging.getLogger(__name__)

ZYGOTE_START_TIMEOUT = 30.0


class ShimError(RuntimeError):
    """A shim or the zygote refused a request; the message is its reason."""


class ShimGone(ShimError):
    """The shim is not there to answer: it exited, or it died."""


class ShimSilent(ShimError):
    """The shim is there but did not answer in time (still setting its container up, say)."""


class ZygoteClient:
    """Starts the zygote (shim/zygote.py), the template process shims are forked from, and asks it for forks."""

    def __init__(self, state_dir: str):
        self.socket = os.path.join(state_dir, "zygote.sock")
        self._proc: subprocess.Popen | None = None
        self._lifeline: int | None = None
        self._restarting: asyncio.Lock | None = None

    @property
    def pid(self) -> int:
        """The zygote's pid; 0 when none is running."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else 0

    def start(self) -> None:
        if self._lifeline is not None:  # a zygote that died: its lifeline goes with it
            os.close(self._lifeline)
            self._lifeline = None
        r, w = os.pipe2(os.O_CLOEXEC)
        os.set_inheritable(r, True)
        try:
            os.unlink(self.socket)
        except FileNotFoundError:
            pass
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "shim.zygote", "--socket", self.socket, "--lifeline", str(r)],
            pass_fds=(r,), stdin=subprocess.DEVNULL,
        )
        os.close(r)
        self._lifeline = w  # never written: its closing, with cricketd, is the message
        deadline = time.monotonic() + ZYGOTE_START_TIMEOUT
        while not os.path.exists(self.socket):
            if self._proc.poll() is not None:
                raise RuntimeError(f"the zygote exited at start with status {self._proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the zygote did not listen on {self.socket} within {ZYGOTE_START_TIMEOUT}s")
            time.sleep(0.01)

    def stop(self) -> None:
        """Let the zygote go: it serves no more and exits once its shims have."""
        if self._lifeline is not None:
            os.close(self._lifeline)
            self._lifeline = None
        # It lingers while containers run; it is no longer ours to wait for.
        self._proc = None

    async def _alive(self) -> None:
        """Start another zygote if ours died (killed, or the OOM killer's pick): without one no
        container could be created until cricketd restarted. Its shims live on without it."""
        if self._proc is None or self._proc.poll() is None:
            return
        if self._restarting is None:
            self._restarting = asyncio.Lock()
        async with self._restarting:
            if self._proc is not None and self._proc.poll() is not None:
                log.warning("the zygote (pid %d) died with status %s; starting another",
                            self._proc.pid, self._proc.returncode)
                await asyncio.to_thread(self.start)

    async def _call(self, req: pb.ZygoteRequest) -> pb.ZygoteResponse:
        await self._alive()
        try:
            answer = await call(self.socket, req.SerializeToString())
        except (ConnectionError, FileNotFoundError) as e:
            raise ShimError(f"the zygote at {self.socket} did not answer: {e}") from None
        resp = pb.ZygoteResponse.FromString(answer)
        if resp.error:
            raise ShimError(resp.error)
        return resp

    async def spawn_shim(self, spawn: pb.SpawnShim) -> int:
        return (await self._call(pb.ZygoteRequest(spawn_shim=spawn))).pid

    async def pin_namespaces(self, net: str, ipc: str, uts: str, hostname: str, sysctls: dict[str, str],
                             user: str = "", uid_map: str = "", gid_map: str = "") -> None:
        pin = pb.PinNamespaces(net=net, ipc=ipc, uts=uts, hostname=hostname, sysctls=sysctls, user=user,
                               uid_map=uid_map, gid_map=gid_map)
        await self._call(pb.ZygoteRequest(pin_namespaces=pin))

    async def spawn_pod_init(self, sandbox_id: str, user: str = "") -> int:
        spawn = pb.SpawnPodInit(sandbox_id=sandbox_id, user=user)
        return (await self._call(pb.ZygoteRequest(spawn_pod_init=spawn))).pid


class ShimClient:
    """Requests to one container's shim over its socket."""

    def __init__(self, socket_path: str):
        self.socket = socket_path

    def listening(self) -> bool:
        """Whether a shim listens on the socket. Only the shim holds it once forked (the zygote
        binds it and lets go), so this is the shim's liveness when its pid was never learned."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(1.0)
        try:
            with channel.reachable(self.socket) as name:
                sock.connect(name)
            return True
        except (FileNotFoundError, ConnectionRefusedError):
            return False
        except OSError:
            return True  # a full backlog, a timeout: someone is there
        finally:
            sock.close()

    def _call_blocking(self, req: pb.Request, timeout: float) -> pb.Response:
        """One request without an event loop: for recovery, before cricketd serves."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(timeout)
        try:
            with channel.reachable(self.socket) as name:
                sock.connect(name)
            channel.write_frame_blocking(sock, req.SerializeToString())
            resp = pb.Response.FromString(channel.read_frame_blocking(sock))
        except (FileNotFoundError, ConnectionError) as e:
            raise ShimGone(f"the shim at {self.socket} is gone: {e}") from None
        except OSError as e:  # a timeout: alive, but not answering
            raise ShimSilent(f"the shim at {self.socket} did not answer within {timeout:.0f}s: {e}") from None
        finally:
            sock.close()
        if resp.error:
            raise ShimError(resp.error)
        return resp

    def state_blocking(self, timeout: float) -> pb.State:
        return self._call_blocking(pb.Request(state=pb.StateRequest()), timeout).state

    def shutdown_blocking(self, timeout: float) -> None:
        self._call_blocking(pb.Request(shutdown=pb.ShutdownRequest()), timeout)

    async def _call(self, req: pb.Request, fds=()) -> pb.Response:
        try:
            answer = await call(self.socket, req.SerializeToString(), fds)
        except (ConnectionError, FileNotFoundError) as e:
            raise ShimGone(f"the shim at {self.socket} is gone: {e}") from None
        return pb.Response.FromString(answer)

    async def _ok(self, req: pb.Request, fds=()) -> pb.Response:
        resp = await self._call(req, fds)
        if resp.error:
            raise ShimError(resp.error)
        return resp

    async def wait_created(self) -> pb.State:
        return (await self._ok(pb.Request(state=pb.StateRequest(wait_created=True)))).state

    async def state(self) -> pb.State:
        return (await self._ok(pb.Request(state=pb.StateRequest()))).state

    async def start(self) -> pb.State:
        return (await self._ok(pb.Request(start=pb.StartRequest()))).state

    async def kill(self, signal: int, exec_id: str = "", all: bool = False) -> None:
        await self._ok(pb.Request(kill=pb.KillRequest(signal=signal, exec_id=exec_id, all=all)))

    async def wait(self) -> pb.State:
        """Wait for the container to exit; its final state."""
        return (await self._ok(pb.Request(wait=pb.WaitRequest()))).state

    async def exec(self, exec_id: str, process: dict, stdin: int | None, stdout: int | None,
                   stderr: int | None) -> int:
        fds = [fd for fd in (stdin, stdout, stderr) if fd is not None]
        req = pb.Request(exec=pb.ExecRequest(
            exec_id=exec_id, process=json.dumps(process).encode(),
            has_stdin=stdin is not None, has_stdout=stdout is not None, has_stderr=stderr is not None,
        ))
        return (await self._ok(req, fds)).pid

    async def wait_exec(self, exec_id: str) -> int:
        return (await self._ok(pb.Request(wait=pb.WaitRequest(exec_id=exec_id)))).exit_code

    async def attach(self, stdin: int | None, stdout: int | None, stderr: int | None) -> None:
        """Hand the shim a stdin source and output sinks for the container's stdio (see shim.proto)."""
        fds = [fd for fd in (stdin, stdout, stderr) if fd is not None]
        await self._ok(pb.Request(attach=pb.AttachRequest(
            has_stdin=stdin is not None, has_stdout=stdout is not None, has_stderr=stderr is not None)), fds)

    async def resize(self, width: int, height: int) -> None:
        await self._ok(pb.Request(resize=pb.ResizeRequest(width=width, height=height)))

    async def reopen_log(self) -> None:
        await self._ok(pb.Request(reopen_log=pb.ReopenLogRequest()))

    async def shutdown(self) -> None:
        await self._ok(pb.Request(shutdown=pb.ShutdownRequest()))

