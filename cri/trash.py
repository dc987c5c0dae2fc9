"""Directories a removal let go of, deleted after the call has answered (containerd's
snapshotter leaves a removed snapshot's files to its garbage collector the same way).

Removing a container renames its directories into a trash directory on their own filesystem
(one under the root dir, one under the state dir): one syscall, however much the container
wrote, and from then on no path of the container's exists. Deleting them follows in a worker
thread. What a crash leaves in the trash is deleted at the next start.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import secrets
import shutil

log = logging.getLogger(__name__)


class Trash:
    def __init__(self, *parents: str):
        """A trash directory in each of `parents`: what is put in goes to the one on its own
        filesystem, the parent that holds it."""
        self.dirs = [os.path.join(p, "trash") for p in parents]
        for d in self.dirs:
            os.makedirs(d, mode=0o700, exist_ok=True)
        self._emptying: asyncio.Task | None = None
        self._again = False

    def put(self, path: str) -> None:
        """Move the directory `path` into the trash (nothing if it is gone). Where it can not be
        renamed there (another filesystem mounted in between), it is deleted here and now."""
        holders = [d for d in self.dirs if path.startswith(os.path.dirname(d) + "/")]
        if holders:
            into = os.path.join(max(holders, key=len), f"{os.path.basename(path)}-{secrets.token_hex(4)}")
            try:
                os.rename(path, into)
                return
            except FileNotFoundError:
                if not os.path.lexists(path):
                    return  # already gone: a retried removal
                # the trash dir is what is missing (wiped under us): delete in place
            except OSError as e:
                if e.errno != errno.EXDEV:
                    raise
        shutil.rmtree(path, ignore_errors=True)

    def empty(self) -> None:
        """Delete everything in the trash (blocking: a thread's work, or start-up's)."""
        for d in self.dirs:
            for name in os.listdir(d):
                shutil.rmtree(os.path.join(d, name), ignore_errors=True)

    def empty_soon(self) -> None:
        """Empty the trash in a worker thread, once what is being deleted now is done."""
        if self._emptying is None or self._emptying.done():
            self._emptying = asyncio.get_running_loop().create_task(self._empty())
        else:
            self._again = True  # put in after the running pass listed its directory

    async def _empty(self) -> None:
        while True:
            self._again = False
            try:
                await asyncio.to_thread(self.empty)
            except OSError as e:  # a trash dir itself gone: the next start makes it again
                log.warning("emptying the trash: %s", e)
                return
            if not self._again:
                return

    async def drain(self) -> None:
        """Wait until what was put in is deleted (a stopping daemon leaves nothing behind)."""
        while self._emptying is not None and not self._emptying.done():
            await self._emptying
