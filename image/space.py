"""A full disk under the image store, said plainly.

Writing a blob, unpacking a layer or recording a row can meet a full filesystem (ENOSPC), a
quota (EDQUOT) or, in SQLite, SQLITE_FULL. Each becomes OutOfSpace, whose message names the path
that could not be written and what was being done, so that the pull fails with
RESOURCE_EXHAUSTED and an operator knows which disk to free.
"""
from __future__ import annotations

import contextlib
import errno
import sqlite3

NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


class OutOfSpace(OSError):
    """No room left to write `path`; the message says where and while doing what.

    An OSError with the errno met (ENOSPC or EDQUOT), so that code that handles a full disk
    by its errno handles this one too; str() is the whole message.
    """

    def __init__(self, message: str, path: str, code: int = errno.ENOSPC):
        super().__init__(code, message, path)
        self.message = message
        self.path = path

    def __str__(self) -> str:
        return self.message

    def within(self, prefix: str) -> OutOfSpace:
        """The same error with `prefix` (e.g. "pull REF: ") before its message."""
        return OutOfSpace(f"{prefix}{self.message}", self.path, self.errno or errno.ENOSPC)


def is_out_of_space(e: BaseException) -> bool:
    if isinstance(e, OSError):
        return e.errno in NO_SPACE
    return isinstance(e, sqlite3.OperationalError) and getattr(e, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL


def out_of_space(e: BaseException, doing: str, path: str) -> OutOfSpace:
    """OutOfSpace for the error `e` met while `doing` (e.g. "writing blob sha256:...") at `path`."""
    code = errno.EDQUOT if isinstance(e, OSError) and e.errno == errno.EDQUOT else errno.ENOSPC
    why = "disk quota exceeded" if code == errno.EDQUOT else "no space left on device"
    return OutOfSpace(f"{why} {doing} at {path}; free space on its filesystem and try again", path, code)


@contextlib.contextmanager
def room_for(doing: str, path: str):
    """Turn running out of space inside the block into OutOfSpace naming `path`."""
    try:
        yield
    except OutOfSpace:
        raise  # already says where
    except (OSError, sqlite3.OperationalError) as e:
        if is_out_of_space(e):
            raise out_of_space(e, doing, path) from e
        raise
