"""Mount option parsing, symlink-safe joins, and paths resolved inside a tree by openat2."""
import errno
import os

import pytest

from linux import libc, openat2
from linux.mounts import parse_options, secure_join


def test_options_split_into_flags_propagation_and_data():
    flags, prop, data = parse_options(["nosuid", "noexec", "nodev", "ro", "mode=755", "size=65536k", "rslave"])
    assert flags == libc.MS_NOSUID | libc.MS_NOEXEC | libc.MS_NODEV | libc.MS_RDONLY
    assert prop == libc.MS_SLAVE | libc.MS_REC
    assert data == "mode=755,size=65536k"
    assert parse_options(["ro", "rw"])[0] == 0  # the later word wins
    assert parse_options(["rbind"])[0] == libc.MS_BIND | libc.MS_REC


def test_secure_join_keeps_symlinks_inside_the_root(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    os.symlink("/etc", root / "abs")           # absolute: means root/etc
    os.symlink("../../../..", root / "up")     # climbing: stops at the root
    os.symlink("etc/missing", root / "dangling")
    os.symlink("loop", root / "loop")
    assert secure_join(str(root), "/abs/passwd") == str(root / "etc" / "passwd")
    assert secure_join(str(root), "/up/etc") == str(root / "etc")
    assert secure_join(str(root), "/../../x") == str(root / "x")
    assert secure_join(str(root), "/dangling") == str(root / "etc" / "missing")
    try:
        secure_join(str(root), "/loop")
    except OSError as e:
        assert "too many symlinks" in str(e)
    else:
        raise AssertionError("a symlink loop must fail")


# -- openat2: paths resolved inside a tree (linux/openat2.py) ----------------------------------


def _fd(path) -> int:
    return os.open(path, os.O_PATH | os.O_DIRECTORY)


def _where(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


def test_open_in_root_keeps_symlinks_and_dotdot_inside(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "etc").mkdir(parents=True)
    outside.mkdir()
    os.symlink("/etc", root / "abs")
    os.symlink("../../../..", root / "up")
    os.symlink(str(outside), root / "host")  # an absolute path of the host's means one inside
    fd = _fd(root)
    try:
        assert _where(openat2.open_in_root(fd, "/abs")) == str(root / "etc")
        assert _where(openat2.open_in_root(fd, "up/etc")) == str(root / "etc")
        assert _where(openat2.open_in_root(fd, "/../../etc")) == str(root / "etc")
        with pytest.raises(FileNotFoundError):
            openat2.open_in_root(fd, "host")
    finally:
        os.close(fd)


def test_open_in_root_refuses_magic_links():
    fd = _fd("/")
    try:
        with pytest.raises(OSError) as e:
            openat2.open_in_root(fd, "/proc/self/root/etc")
        assert e.value.errno == errno.ELOOP
    finally:
        os.close(fd)


def test_mkdirs_in_root_makes_what_is_missing_inside_only(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "real").mkdir(parents=True)
    outside.mkdir()
    os.symlink("/real", root / "in")
    os.symlink(str(outside), root / "out")
    fd = _fd(root)
    try:
        assert _where(openat2.mkdirs_in_root(fd, "/in/a/b")) == str(root / "real" / "a" / "b")
        # A symlink whose target is missing is not made through: a name put there can lead anywhere.
        with pytest.raises(OSError):
            openat2.mkdirs_in_root(fd, "/out/x")
        with pytest.raises(OSError):
            openat2.mkdirs_in_root(fd, "/nothing/../x")
    finally:
        os.close(fd)
    assert list(outside.iterdir()) == []


@pytest.mark.timeout(10)
def test_read_in_root_reads_regular_files_only_and_bounded(tmp_path):
    (tmp_path / "etc").mkdir()
    os.mkfifo(tmp_path / "etc" / "fifo")  # an open for reading would wait for a writer
    (tmp_path / "etc" / "big").write_bytes(b"x" * 101)
    (tmp_path / "etc" / "ok").write_bytes(b"root:x:0:0::/:/bin/sh\n")
    (tmp_path / "secret").write_text("outside\n")
    os.symlink(str(tmp_path / "secret"), tmp_path / "etc" / "out")
    fd = _fd(tmp_path / "etc")
    try:
        assert openat2.read_in_root(fd, "/ok", 100) == b"root:x:0:0::/:/bin/sh\n"
        with pytest.raises(openat2.NotRegularFile, match="FIFO"):
            openat2.read_in_root(fd, "/fifo", 100)
        with pytest.raises(openat2.FileTooLarge):
            openat2.read_in_root(fd, "/big", 100)
        with pytest.raises(FileNotFoundError):
            openat2.read_in_root(fd, "/out", 100)
        with pytest.raises(IsADirectoryError):
            openat2.read_in_root(fd, "/", 100)
    finally:
        os.close(fd)


def _mount_points() -> set[str]:
    with open("/proc/self/mountinfo") as f:
        return {line.split()[4] for line in f}


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")
def test_unmount_beneath_takes_every_mount_under_a_path_and_nothing_beside_it(tmp_path):
    from linux.mounts import unmount_beneath

    # A create cut short leaves mounts stacked in a container's directories; a sibling whose
    # name only starts the same is someone else's.
    top, sibling = tmp_path / "c", tmp_path / "c-other"
    inner = top / "idmapped" / "0"
    inner.mkdir(parents=True)
    sibling.mkdir()
    made = []
    try:
        for point in (top / "idmapped", sibling):
            libc.mount("tmpfs", str(point), "tmpfs", 0, "size=1m")
            made.append(str(point))
        (top / "idmapped" / "0").mkdir()
        libc.mount("tmpfs", str(inner), "tmpfs", 0, "size=1m")
        made.append(str(inner))
        unmount_beneath(str(top))
        points = _mount_points()
        assert str(top / "idmapped") not in points and str(inner) not in points
        assert str(sibling) in points
    finally:
        for point in reversed(made):
            if point in _mount_points():
                libc.umount(point, libc.MNT_DETACH)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")
def test_unmount_beneath_takes_several_paths_at_once_and_reads_escaped_names(tmp_path):
    from linux.mounts import unmount_beneath

    # A bundle and a container dir go together; the table escapes a space as \040.
    first, spaced, sibling = tmp_path / "bundle", tmp_path / "dir with space", tmp_path / "bundle2"
    for d in (first, spaced, sibling):
        d.mkdir()
    made = []
    try:
        for point in (first, spaced, sibling):
            libc.mount("tmpfs", str(point), "tmpfs", 0, "size=1m")
            made.append(str(point))
        unmount_beneath(str(first), str(spaced))
        points = _mount_points()
        assert str(first) not in points and str(spaced).replace(" ", "\\040") not in points
        assert str(sibling) in points
        assert not os.path.ismount(spaced)
    finally:
        for point in reversed(made):
            if os.path.ismount(point):
                libc.umount(point, libc.MNT_DETACH)


# -- overlays: the volatile option on kernels without it -----------------------------------------

def test_an_overlay_goes_without_volatile_where_the_kernel_refuses_it(monkeypatch):
    # A kernel before 5.10 refuses "volatile" with EINVAL (this machine's has it, so its refusal
    # is played by a stand-in for mount(2)): the overlay is mounted without it, and so is every
    # later one, without asking again.
    from linux import mounts
    calls: list[str] = []

    def old_kernel_mount(source, target, fstype, flags=0, data=None):
        calls.append(data)
        if "volatile" in data.split(","):
            raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(mounts, "_volatile_refused", False)
    monkeypatch.setattr(mounts.libc, "mount", old_kernel_mount)
    mounts.mount_overlay("/t", ["/l2", "/l1"], "upperdir=/u,workdir=/w,volatile")
    assert calls == ["lowerdir=/l2:/l1,upperdir=/u,workdir=/w,volatile", "lowerdir=/l2:/l1,upperdir=/u,workdir=/w"]
    mounts.mount_overlay("/t", ["/l"], "upperdir=/u,workdir=/w,volatile")
    assert calls[2:] == ["lowerdir=/l,upperdir=/u,workdir=/w"]


def test_an_overlay_refused_for_another_reason_is_not_retried(monkeypatch):
    from linux import mounts
    calls: list[str] = []

    def refusing_mount(source, target, fstype, flags=0, data=None):
        calls.append(data)
        raise OSError(errno.ENOENT, "No such file or directory")

    monkeypatch.setattr(mounts, "_volatile_refused", False)
    monkeypatch.setattr(mounts.libc, "mount", refusing_mount)
    with pytest.raises(OSError):
        mounts.mount_overlay("/t", ["/l"], "upperdir=/u,workdir=/w,volatile")
    assert len(calls) == 1 and mounts._volatile_refused is False
