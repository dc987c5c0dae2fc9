"""How the `cricket` CLI prints: tables, human sizes and ages, JSON, and pull progress."""
from __future__ import annotations

import json
import sys
import time
from typing import TextIO


def human_size(n: float) -> str:
    """Decimal units, as docker prints image sizes: 4.86MB."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.3g}{unit}"
        n /= 1000
    return f"{n}B"


def human_age(unix_seconds: float, now: float | None = None) -> str:
    if not unix_seconds:
        return "unknown"
    seconds = max(0, (now or time.time()) - unix_seconds)
    for span, unit in ((365 * 86400, "year"), (30 * 86400, "month"), (7 * 86400, "week"), (86400, "day"),
                       (3600, "hour"), (60, "minute")):
        if seconds >= span:
            n = int(seconds // span)
            return f"{n} {unit}{'s' if n > 1 else ''} ago"
    return "just now" if seconds < 1 else f"{int(seconds)} seconds ago"


def table(headers: list[str], rows: list[list[str]], out: TextIO = sys.stdout) -> None:
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows)]
    for row in [headers, *rows]:
        out.write("   ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip() + "\n")


def as_json(doc, out: TextIO = sys.stdout) -> None:
    json.dump(doc, out, indent=2, sort_keys=True)
    out.write("\n")


def short_id(digest: str) -> str:
    return digest.split(":", 1)[-1][:12]


class PullDisplay:
    """One line per blob of a pull (or push). On a terminal the lines are redrawn in place with
    each update (bytes, rate, time left); elsewhere only each blob's end is printed, once."""

    def __init__(self, out: TextIO = sys.stdout, pushing: bool = False):
        self.out = out
        self.moving, self.moved = ("Uploading", "Pushed") if pushing else ("Downloading", "Downloaded")
        self.live = out.isatty()
        self.blobs: dict[str, dict] = {}
        self.drawn = 0

    def update(self, digest: str, size: int, done: int, state: str) -> None:
        now = time.monotonic()
        blob = self.blobs.setdefault(digest, {"started": now, "size": size})
        blob.update(done=done, state=state, at=now)
        if self.live:
            self._redraw()
        elif state in ("done", "present"):
            self.out.write(self._line(digest, blob) + "\n")
            self.out.flush()

    def _line(self, digest: str, blob: dict) -> str:
        state, size, done = blob["state"], blob["size"], blob["done"]
        head = f"{short_id(digest)}  "
        if state == "present":
            return head + "Already present"
        if state == "done":
            return head + f"{self.moved}  {human_size(size)}"
        if state == "waiting":
            return head + "Waiting"
        elapsed = max(blob["at"] - blob["started"], 1e-3)
        rate = done / elapsed
        eta = (size - done) / rate if rate > 0 else 0
        return head + (f"{self.moving} {human_size(done)} / {human_size(size)}  "
                       f"{human_size(rate)}/s  ETA {eta:.0f}s")

    def _redraw(self) -> None:
        if self.drawn:
            self.out.write(f"\x1b[{self.drawn}F")  # back to the first line drawn
        for digest, blob in self.blobs.items():
            self.out.write("\x1b[2K" + self._line(digest, blob) + "\n")
        self.drawn = len(self.blobs)
        self.out.flush()
