"""The walk of a container's writable layer for its stats (cri/stats.py): by descriptor, never out
of the tree, bounded, cached, and off the event loop."""
from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

from cri import stats
from cri.stats import DiskUsageCache, disk_usage


def _files(directory, n: int, size: int = 4096) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (directory / f"f{i}").write_bytes(b"x" * size)


@pytest.fixture
def layer(tmp_path):
    """upper/ with 3 files and a directory of 2, and outside/ (the host) with 50 files."""
    upper, outside = tmp_path / "upper", tmp_path / "outside"
    _files(upper, 3)
    _files(upper / "dir", 2)
    _files(outside, 50)
    return upper, outside


def test_counts_blocks_and_inodes_as_du_does(layer):
    upper, _ = layer
    usage = disk_usage(str(upper))
    assert usage.inodes == 6  # 5 files and the directory
    assert usage.used == sum(os.lstat(p).st_blocks * 512 for p in [*upper.rglob("*")])
    assert usage.complete


def test_a_hard_linked_file_counts_once(layer):
    upper, _ = layer
    before = disk_usage(str(upper))
    os.link(upper / "f0", upper / "dir" / "again")
    after = disk_usage(str(upper))
    assert (after.used, after.inodes) == (before.used, before.inodes)


def test_a_symlink_is_counted_as_itself_never_followed(layer):
    upper, outside = layer
    (upper / "out").symlink_to(outside)
    (upper / "dir" / "up").symlink_to("../../outside")
    usage = disk_usage(str(upper))
    assert usage.inodes == 8  # the two symlinks, not the 50 files they point at


class _SwapWhenListed:
    """os.scandir's iterator, which swaps `name` for a symlink to `target` once it has listed it
    (as a directory): what a walk by path would then enter is the symlink's target."""

    def __init__(self, it, name, swap):
        self.it, self.name, self.swap = it, name, swap

    def __iter__(self):
        return self

    def __next__(self):
        entry = next(self.it)
        if entry.name == self.name:
            self.swap()
        return entry

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.it.close()

    def close(self):
        self.it.close()


def test_a_directory_swapped_for_a_symlink_once_listed_is_not_entered(layer, monkeypatch):
    upper, outside = layer
    real_scandir = os.scandir
    swapped = []

    def swap():
        if not swapped:
            os.rename(upper / "dir", upper / "dir-aside")
            (upper / "dir").symlink_to(outside)
            swapped.append(True)

    monkeypatch.setattr(stats.os, "scandir", lambda arg: _SwapWhenListed(real_scandir(arg), "dir", swap))
    usage = disk_usage(str(upper))
    assert swapped, "the swap never happened: the test proves nothing"
    assert usage.inodes <= 7, usage  # never the 50 files outside


def test_a_directory_swapped_for_a_symlink_mid_walk_is_not_entered(layer, monkeypatch):
    """The container renames dir away and puts a symlink to the host in its place between the
    walk's stat of it (a directory) and its open."""
    upper, outside = layer
    real_open = os.open
    swapped = []

    def open_(path, flags, mode=0o777, *, dir_fd=None):
        if path == "dir" and dir_fd is not None and not swapped:
            os.rename(upper / "dir", upper / "dir-aside")
            (upper / "dir").symlink_to(outside)
            swapped.append(True)
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(stats.os, "open", open_)
    usage = disk_usage(str(upper))
    assert swapped, "the swap never happened: the test proves nothing"
    # The directory as stat'd, the three files and (if listed after the swap) the aside copy's
    # two files and itself: never the 50 files outside.
    assert usage.inodes <= 7, usage


def test_the_root_itself_a_symlink_counts_nothing(layer, tmp_path):
    _, outside = layer
    (tmp_path / "link").symlink_to(outside)
    assert disk_usage(str(tmp_path / "link")) == (0, 0, True)


def test_a_missing_layer_counts_nothing(tmp_path):
    assert disk_usage(str(tmp_path / "gone")) == (0, 0, True)


def test_entries_past_the_bound_are_not_counted_and_it_says_so(tmp_path, caplog):
    _files(tmp_path / "upper", 100, size=0)
    usage = disk_usage(str(tmp_path / "upper"), max_entries=10)
    assert (usage.inodes, usage.complete) == (10, False)
    assert "stopped at 10 entries" in caplog.text


def test_directories_past_the_depth_bound_are_not_entered(tmp_path):
    deep = tmp_path / "upper"
    for i in range(20):
        deep = deep / f"d{i}"
    _files(deep, 5, size=0)
    usage = disk_usage(str(tmp_path / "upper"), max_depth=8)
    assert (usage.inodes, usage.complete) == (8, False)  # d0 .. d7, each counted, d7 not entered
    full = disk_usage(str(tmp_path / "upper"))
    assert (full.inodes, full.complete) == (25, True)


def test_the_walk_keeps_no_descriptor_open(layer):
    upper, _ = layer
    before = len(os.listdir("/proc/self/fd"))
    disk_usage(str(upper))
    disk_usage(str(upper), max_entries=2)
    assert len(os.listdir("/proc/self/fd")) == before


def test_the_cache_reuses_a_walk_for_its_ttl(layer):
    upper, _ = layer
    walks = []
    cache = DiskUsageCache(ttl=0.3, walk=lambda p: walks.append(p) or disk_usage(p))
    first = cache.get(str(upper))
    assert cache.get(str(upper)) == first and len(walks) == 1
    time.sleep(0.35)
    cache.get(str(upper))
    assert len(walks) == 2


def test_callers_at_once_share_one_walk(layer):
    upper, _ = layer
    started, release, walks = threading.Event(), threading.Event(), []

    def slow(path):
        walks.append(path)
        started.set()
        release.wait(5)
        return disk_usage(path)

    cache = DiskUsageCache(walk=slow)
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(cache.get(str(upper)))) for _ in range(4)]
    for t in threads:
        t.start()
    started.wait(5)
    time.sleep(0.1)
    release.set()
    for t in threads:
        t.join(5)
    assert len(walks) == 1 and len(results) == 4 and len(set(results)) == 1


def test_a_failed_walk_lets_the_next_caller_walk(layer):
    upper, _ = layer
    calls = []

    def flaky(path):
        calls.append(path)
        if len(calls) == 1:
            raise OSError("EIO")
        return disk_usage(path)

    cache = DiskUsageCache(walk=flaky)
    with pytest.raises(OSError):
        cache.get(str(upper))
    assert cache.get(str(upper)).inodes == 6


def test_the_async_walk_runs_off_the_event_loop(layer):
    upper, _ = layer
    threads = []

    def walk(path):
        threads.append(threading.current_thread())
        return disk_usage(path)

    async def main():
        return await DiskUsageCache(walk=walk).aget(str(upper))

    assert asyncio.run(main()).inodes == 6
    assert threads and threads[0] is not threading.main_thread()


def test_a_fresh_answer_is_given_without_a_thread(layer, monkeypatch):
    upper, _ = layer
    walks = []
    cache = DiskUsageCache(walk=lambda p: walks.append(p) or disk_usage(p))

    async def main():
        first = await cache.aget(str(upper))

        def no_thread(*args, **kw):
            raise AssertionError("a fresh answer went to a worker thread")

        monkeypatch.setattr(asyncio, "to_thread", no_thread)
        return first, await cache.aget(str(upper))

    first, again = asyncio.run(main())
    assert first == again and len(walks) == 1
    assert cache.fresh(str(upper)) == first and cache.fresh(str(upper / "elsewhere")) is None
