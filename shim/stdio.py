"""A container's stdio in its shim: output relayed to the CRI log and to attached clients,
attached clients' input relayed to the container's stdin, and the CRI log file itself
(with optional rotation by size), as containerd's shim keeps its process I/O apart."""
from __future__ import annotations

import errno
import os
import selectors
from typing import TYPE_CHECKING

from shim.cri_log import LogFormatter
from shim.diag import diag

if TYPE_CHECKING:
    from shim.server import Shim

_READ = 64 * 1024


class Output:
    """One stream of the container's output, relayed to the CRI log and to attached clients."""

    def __init__(self, shim: Shim, fd: int, stream: str, line_max: int):
        self.shim = shim
        self.fd = fd
        self.stream = stream
        self.formatter = LogFormatter(stream, line_max)
        self.open = True
        self.sinks: list[int] = []  # attached clients' descriptors, non-blocking

    def _copy(self, data: bytes) -> None:
        # An attached client that does not keep up loses its attachment, never the container
        # its output: the shim does not wait on a client.
        for sink in list(self.sinks):
            try:
                if os.write(sink, data) == len(data):
                    continue
            except OSError:
                pass
            self.sinks.remove(sink)
            os.close(sink)

    def on_readable(self) -> None:
        try:
            data = os.read(self.fd, _READ)
        except BlockingIOError:
            return
        except OSError as e:
            if e.errno != errno.EIO:  # EIO: the terminal's other side is closed
                diag(f"reading container output: {e}")
            data = b""
        if data:
            self.shim.log.write(self.formatter.feed(data))
            self._copy(data)
            return
        self.close()

    def close(self) -> None:
        if not self.open:
            return
        self.open = False
        for sink in self.sinks:
            os.close(sink)  # the attached clients see the end of the output
        self.sinks = []
        self.shim.sel.unregister(self.fd)
        self.shim.log.write(self.formatter.finish())
        os.close(self.fd)
        self.shim.output_closed()


class StdinRelay:
    """An attached client's input, copied to the container's stdin. When the container does
    not read, the client's source is left unread until its stdin has room again."""

    def __init__(self, shim: Shim, source: int):
        self.shim = shim
        self.source = source
        self.pending = b""
        os.set_blocking(source, False)
        shim.sel.register(source, selectors.EVENT_READ, self.on_readable)
        self.reading = True

    def on_readable(self) -> None:
        try:
            data = os.read(self.source, _READ)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close(eof=True)
            return
        self.pending = data
        self.on_writable()

    def on_writable(self) -> None:
        target = self.shim.stdin_w
        if target is None:
            self.close(eof=False)
            return
        try:
            written = os.write(target, self.pending)
        except BlockingIOError:
            written = 0
        except OSError:
            self.close(eof=False)
            return
        self.pending = self.pending[written:]
        if self.pending and self.reading:  # wait for room: stop reading the client, watch the stdin
            self.shim.sel.unregister(self.source)
            self.reading = False
            self.shim.watch_stdin(self.on_writable)
        elif not self.pending and not self.reading:
            self.shim.watch_stdin(None)
            self.shim.sel.register(self.source, selectors.EVENT_READ, self.on_readable)
            self.reading = True

    def close(self, eof: bool) -> None:
        self.shim.watch_stdin(None)
        if self.reading:
            self.shim.sel.unregister(self.source)
        os.close(self.source)
        self.shim.stdin_relays.remove(self)
        if eof and self.shim.args.stdin_once:
            self.shim.close_stdin()  # the first client's end is the container's end of input


class LogWriter:
    """The container's CRI log file: appended to, reopened when kubelet has rotated it, and
    rotated here by size when configured."""

    def __init__(self, path: str, max_size: int, max_files: int):
        self.path = path
        self.max_size = max_size
        self.max_files = max_files
        self.fd: int | None = None

    def open(self) -> None:
        if self.path:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)

    def reopen(self) -> None:
        self.close()
        self.open()

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def write(self, data: bytes) -> None:
        if not data or self.fd is None:
            return
        if self.max_size <= 0:
            self._write(data)
            return
        # With rotation on, whole CRI lines are grouped so that no file grows past the limit
        # (a line longer than the limit gets a file of its own) and no line is split.
        try:
            size = os.fstat(self.fd).st_size
        except OSError:
            size = 0
        batch = b""
        for line in data.splitlines(keepends=True):
            if size + len(batch) + len(line) > self.max_size and size + len(batch) > 0:
                self._write(batch)
                self._rotate()
                size, batch = 0, b""
            batch += line
        self._write(batch)

    def _write(self, data: bytes) -> None:
        if data and self.fd is not None:
            try:
                os.write(self.fd, data)
            except OSError as e:
                diag(f"writing the container log: {e}")  # keep draining the container's output

    def _rotate(self) -> None:
        """A safety net for when no kubelet rotates: <log> becomes <log>.1, <log>.1 becomes
        <log>.2 ..., and what is beyond max_files goes."""
        keep = max(1, self.max_files)
        try:
            for n in range(keep - 1, 0, -1):
                older = f"{self.path}.{n - 1}" if n > 1 else self.path
                if os.path.exists(older):
                    os.replace(older, f"{self.path}.{n}")
            if keep == 1:
                os.truncate(self.path, 0)  # nothing kept: the one file starts over
        except OSError as e:
            diag(f"rotating the container log: {e}")
        self.reopen()
