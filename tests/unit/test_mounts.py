"""Mount option parsing and symlink-safe joins."""
import os

from linux import libc
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
