"""The CRI container log format, as pure functions over bytes.

Each line of a CRI log file is

    <RFC 3339 timestamp with nanoseconds> <stream> <tag> <content>\\n

where the stream is stdout or stderr and the tag is F for a full line or P for
a part of one: a line longer than the maximum is cut into P parts and its last
part is F, and output that ends without a newline ends with a P line (kubelet
joins the parts back). A trailing "\\r\\n" is written as a plain line end.
"""
from __future__ import annotations

import time

DEFAULT_LINE_MAX = 16 * 1024  # kubelet's and containerd's default max_container_log_line_size


def timestamp(ns: int) -> bytes:
    """RFC 3339 in UTC with all nine digits of nanoseconds."""
    secs, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)).encode() + b".%09dZ" % frac


class LogFormatter:
    """Turns one stream's raw output into CRI log lines.

    feed() takes bytes as they arrive and returns the complete lines they make;
    an unfinished line waits in the buffer until its newline, until it reaches
    `line_max` (then it is written as P parts), or until finish().
    """

    def __init__(self, stream: str, line_max: int = DEFAULT_LINE_MAX):
        if stream not in ("stdout", "stderr"):
            raise ValueError(f"stream must be stdout or stderr, not {stream!r}")
        self._stream = stream.encode()
        self._max = max(1, line_max)
        self._pending = bytearray()

    def _line(self, now_ns: int, tag: bytes, content: bytes | bytearray) -> bytes:
        return b"%s %s %s %s\n" % (timestamp(now_ns), self._stream, tag, content)

    def feed(self, data: bytes, now_ns: int | None = None) -> bytes:
        now = time.time_ns() if now_ns is None else now_ns
        self._pending += data
        out = []
        start = 0
        buf = self._pending
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                # No line end yet: only whole parts of line_max bytes can go.
                while len(buf) - start > self._max:
                    out.append(self._line(now, b"P", buf[start:start + self._max]))
                    start += self._max
                break
            end = nl - 1 if nl > start and buf[nl - 1] == 0x0D else nl  # "\r\n" ends a line too
            while end - start > self._max:
                out.append(self._line(now, b"P", buf[start:start + self._max]))
                start += self._max
            out.append(self._line(now, b"F", buf[start:end]))
            start = nl + 1
        del buf[:start]
        return b"".join(out)

    def finish(self, now_ns: int | None = None) -> bytes:
        """The rest of the output, which had no newline: a P line, as containerd writes it."""
        now = time.time_ns() if now_ns is None else now_ns
        if not self._pending:
            return b""
        rest = bytes(self._pending)
        self._pending.clear()
        out = []
        for i in range(0, len(rest), self._max):
            out.append(self._line(now, b"P", rest[i:i + self._max]))
        return b"".join(out)
