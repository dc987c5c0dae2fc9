""".dockerignore: which files of a build context the builder leaves out.

The rules are Docker's: one pattern a line, filepath.Match wildcards plus `**` for any number
of directories, a pattern covering everything under a directory it matches, and `!` patterns
taking files back in. Patterns are read in order and the last one that matches a path decides.
"""
from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class _Pattern:
    text: str
    exception: bool  # a "!" pattern: what it matches is kept
    regex: re.Pattern[str]


class Patterns:
    """The patterns of one .dockerignore, ready to match context paths against."""

    def __init__(self, lines: list[str]):
        self._patterns = [p for p in map(_pattern, lines) if p is not None]

    def ignored(self, path: str) -> bool:
        """Whether `path` (relative to the context root, "/"-separated) is left out."""
        # A pattern matching a directory matches all that is in it, so the path's ancestors count.
        parts = path.strip("/").split("/")
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        ignored = False
        for pattern in self._patterns:
            # A pattern can only change the answer when it is of the other kind than the answer.
            if pattern.exception == ignored and any(pattern.regex.fullmatch(c) for c in candidates):
                ignored = not pattern.exception
        return ignored

    def may_reinclude_under(self, directory: str) -> bool:
        """Whether some "!" pattern could take back a path inside `directory`: a walker that
        finds `directory` ignored must then look inside it rather than skip it whole."""
        parts = [p for p in directory.strip("/").split("/") if p]
        return any(p.exception and _could_reach(p.text.split("/"), parts) for p in self._patterns)


def load(text: str) -> Patterns:
    return Patterns(text.removeprefix("\ufeff").splitlines())


def _pattern(line: str) -> _Pattern | None:
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    exception = text.startswith("!")
    if exception:
        text = text[1:].strip()
        if not text:
            raise ValueError('bad .dockerignore pattern "!": it excepts nothing')
    # Patterns are cleaned as paths and taken relative to the context: "/a/../b/" is "b".
    text = posixpath.normpath(text)
    text = text.lstrip("/") or "/"
    return _Pattern(text, exception, re.compile(_regex(text), re.DOTALL))


def _could_reach(pattern: list[str], directory: list[str]) -> bool:
    """Whether a pattern of these segments could match a path under `directory`, the directory
    itself or one of its ancestors (each of which would take the directory's content back)."""
    for i, name in enumerate(directory):
        if i == len(pattern) or "**" in pattern[i]:
            return True
        try:
            segment = _regex(pattern[i])
        except ValueError:  # a "/" inside a class or after "\" split the pattern badly: assume yes
            return True
        if not re.fullmatch(segment, name, re.DOTALL):
            return False
    return True


def _regex(pattern: str) -> str:
    """A regular expression for a pattern: filepath.Match's syntax, and `**` for any directories."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")  # any directories, none included: "**/a" matches "a" too
            i += 3
            continue
        ch = pattern[i]
        i += 1
        if pattern.startswith("*", i) and ch == "*":
            out.append(".*")  # "a/**" is everything below a, "**.txt" any .txt at any depth
            i += 1
        elif ch == "*":
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "[":
            cls, i = _char_class(pattern, i)
            out.append(cls)
        elif ch == "\\":
            if i == len(pattern):
                raise ValueError(f"bad .dockerignore pattern {pattern!r}: it ends in an escape")
            out.append(re.escape(pattern[i]))
            i += 1
        else:
            out.append(re.escape(ch))
    return "".join(out)


def _char_class(pattern: str, i: int) -> tuple[str, int]:
    """The regex for the class that starts after the "[" at i - 1, and the index past its "]"."""
    negate = pattern[i : i + 1] in ("^", "!")
    i += negate
    ranges: list[str] = []
    while pattern[i : i + 1] != "]" or not ranges:
        lo, i = _class_char(pattern, i)
        hi = lo
        if pattern[i : i + 1] == "-":
            hi, i = _class_char(pattern, i + 1)
            if hi < lo:
                raise ValueError(f"bad .dockerignore pattern {pattern!r}: range {lo}-{hi} is backwards")
        ranges.append(re.escape(lo) if lo == hi else f"{re.escape(lo)}-{re.escape(hi)}")
    return "[" + "^" * negate + "".join(ranges) + "]", i + 1


def _class_char(pattern: str, i: int) -> tuple[str, int]:
    """One character of a class, perhaps escaped; an unescaped "-" or "]" here is malformed."""
    ch = pattern[i : i + 1]
    if ch == "\\":
        i += 1
        ch = pattern[i : i + 1]
    elif ch in ("-", "]"):
        ch = ""
    if not ch:
        raise ValueError(f"bad .dockerignore pattern {pattern!r}: malformed character class")
    return ch, i + 1
