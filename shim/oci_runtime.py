"""The OCI runtime executor: runc or crun, driven through their command line from the shim.

The same contract as the built-in executor: `create` leaves the container's
process held before execve (an OCI runtime's `create` does exactly that),
`start` releases it, `exec` adds a process, and the processes are the shim's
to reap (it is a child subreaper, and the runtime's own processes exit). A
terminal comes back from the runtime over a console socket.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile

from linux.cgroups import Cgroup
from shim.executor import ExecutorError, Held, StartError, Stdio

COMMAND_TIMEOUT = 60.0


class OciRuntimeExecutor:
    def __init__(self, bundle: str, spec: dict, container_id: str, runtime: str, root: str):
        self.bundle = bundle
        self.spec = spec
        self.id = container_id
        self.runtime = runtime
        self.root = root
        path = (spec.get("linux") or {}).get("cgroupsPath") or ""
        self.cgroup = Cgroup(path) if path else None
        self.console: int | None = None  # the terminal's master side, for a tty container
        self._log = os.path.join(bundle, "runtime.log")

    def _run(self, args: list[str], stdio: Stdio | None = None, what: str = "") -> None:
        fds = {}
        if stdio is not None and stdio.terminal is None:
            fds = {"stdin": stdio.stdin, "stdout": stdio.stdout, "stderr": stdio.stderr}
        cmd = [self.runtime, "--root", self.root, "--log", self._log, "--log-format", "json", *args]
        try:
            done = subprocess.run(
                cmd, stdin=fds.get("stdin") or subprocess.DEVNULL,
                stdout=fds.get("stdout") or subprocess.PIPE, stderr=fds.get("stderr") or subprocess.PIPE,
                timeout=COMMAND_TIMEOUT, close_fds=True,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise ExecutorError(f"{os.path.basename(self.runtime)} {args[0]}: {e}") from None
        if done.returncode != 0:
            raise ExecutorError(f"{os.path.basename(self.runtime)} {what or args[0]} failed: {self._last_error(done)}")

    def _last_error(self, done: subprocess.CompletedProcess) -> str:
        """The runtime's own words: the last error in its JSON log, else what it printed."""
        words = ""
        try:
            with open(self._log) as f:
                for line in f:
                    try:
                        entry = json.loads(line)
                    except ValueError:
                        continue
                    if entry.get("level") in ("error", "fatal"):
                        words = entry.get("msg", "")
        except OSError:
            pass
        if not words and isinstance(done.stderr, bytes):
            words = done.stderr.decode(errors="replace").strip()
        return words or f"exit status {done.returncode}"

    def _console_socket(self, directory: str) -> tuple[socket.socket, str]:
        path = os.path.join(directory, "console.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.bind(path)
        sock.listen(1)
        return sock, path

    @staticmethod
    def _receive_console(sock: socket.socket) -> int:
        sock.settimeout(COMMAND_TIMEOUT)
        conn, _ = sock.accept()
        with conn:
            _, fds, _, _ = socket.recv_fds(conn, 1024, 1)
        if not fds:
            raise ExecutorError("the runtime sent no terminal over the console socket")
        return fds[0]

    def _with_console(self, args: list[str], stdio: Stdio, terminal: bool, what: str) -> int | None:
        """Run a runtime command; for a terminal, hand it a console socket and return the master it sends."""
        if not terminal:
            self._run(args, stdio, what)
            return None
        with tempfile.TemporaryDirectory(prefix="console-", dir=self.bundle) as tmp:
            sock, path = self._console_socket(tmp)
            with sock:
                proc = subprocess.Popen([self.runtime, "--root", self.root, "--log", self._log, "--log-format",
                                         "json", *args[:1], "--console-socket", path, *args[1:]],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                assert proc.stderr is not None  # stderr=PIPE
                try:
                    master = self._receive_console(sock)
                except (OSError, ExecutorError) as e:
                    proc.kill()
                    done = subprocess.CompletedProcess(args, proc.wait(), b"", proc.stderr.read())
                    raise ExecutorError(f"{os.path.basename(self.runtime)} {what} failed: "
                                        f"{self._last_error(done) if done.returncode else e}") from None
                out, err = proc.communicate(timeout=COMMAND_TIMEOUT)
                if proc.returncode != 0:
                    os.close(master)
                    done = subprocess.CompletedProcess(args, proc.returncode, out, err)
                    raise ExecutorError(f"{os.path.basename(self.runtime)} {what} failed: {self._last_error(done)}")
                return master

    @staticmethod
    def _read_pid(path: str) -> int:
        with open(path) as f:
            return int(f.read().strip())

    # -- the executor's contract ------------------------------------------------------

    def create(self, stdio: Stdio) -> Held:
        pid_file = os.path.join(self.bundle, "init.pid")
        terminal = bool((self.spec.get("process") or {}).get("terminal"))
        master = self._with_console(["create", "--bundle", self.bundle, "--pid-file", pid_file, self.id],
                                    stdio, terminal, "create")
        self.console = master
        return Held(self._read_pid(pid_file), -1, -1)

    def start(self, held: Held) -> None:
        try:
            self._run(["start", self.id])
        except ExecutorError as e:
            raise StartError(str(e)) from None

    def abandon(self, held: Held) -> None:
        self.delete()

    def delete(self) -> None:
        """Let the runtime forget the container (and kill what is left of it)."""
        try:
            self._run(["delete", "--force", self.id])
        except ExecutorError:
            pass  # already gone

    def exec(self, init_pid: int, process: dict, stdio: Stdio) -> int:
        with tempfile.NamedTemporaryFile("w", dir=self.bundle, prefix="exec-", suffix=".json", delete=False) as f:
            json.dump(process, f)
        pid_file = f.name[:-5] + ".pid"
        try:
            terminal = bool(process.get("terminal"))
            args = ["exec", "--detach", "--pid-file", pid_file, "--process", f.name, self.id]
            if terminal:
                # The runtime would make its own terminal and send its master back, while the
                # caller brings a terminal of its own: relaying between the two comes with the
                # streaming calls. Until then it is refused.
                raise ExecutorError(f"{os.path.basename(self.runtime)}: exec with a terminal is not supported yet")
            self._run(args, stdio, "exec")
            return self._read_pid(pid_file)
        finally:
            for path in (f.name, pid_file):
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
