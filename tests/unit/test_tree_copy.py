"""Copying an image's directory into a volume (linux/tree_copy.py): what is kept, what is never
opened or followed, and the budget. Device nodes need root: tests/test_hostile_paths.py has them."""
import errno
import os
import stat

import pytest

from linux import tree_copy

PLENTY = tree_copy.Budget(bytes=1 << 30, inodes=1000)


def copy(src, dst, budget=PLENTY, skip=frozenset()):
    dst.mkdir()
    s = os.open(src, os.O_RDONLY | os.O_DIRECTORY)
    d = os.open(dst, os.O_RDONLY | os.O_DIRECTORY)
    try:
        tree_copy.copy_tree(s, d, tree_copy.Budget(budget.bytes, budget.inodes, budget.depth), skip)
    finally:
        os.close(s)
        os.close(d)


@pytest.mark.timeout(10)  # opening the FIFO for reading would wait for a writer forever
def test_every_kind_is_copied_as_itself(tmp_path):
    src, outside = tmp_path / "src", tmp_path / "outside"
    (src / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret").write_text("not to be copied\n")
    (src / "file").write_bytes(b"content\n")
    os.chmod(src / "file", 0o640)
    os.utime(src / "file", ns=(1_000_000_000_123, 1_234_567_890_000_000_000))
    os.link(src / "file", src / "sub" / "link")
    os.symlink(str(outside), src / "out")  # a symlink out of the tree: copied, never followed
    os.symlink("../../secret", src / "sub" / "up")
    os.mkfifo(src / "fifo")
    os.chmod(src / "fifo", 0o620)
    os.chmod(src / "sub", 0o705)
    os.chmod(src, 0o750)
    copy(src, tmp_path / "dst")
    dst = tmp_path / "dst"
    assert (dst / "file").read_bytes() == b"content\n"
    st = os.stat(dst / "file")
    assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (0o640, 1_234_567_890_000_000_000)
    assert os.stat(dst / "sub" / "link").st_ino == st.st_ino
    assert os.readlink(dst / "out") == str(outside) and os.readlink(dst / "sub" / "up") == "../../secret"
    assert stat.S_ISFIFO(os.lstat(dst / "fifo").st_mode) and stat.S_IMODE(os.lstat(dst / "fifo").st_mode) == 0o620
    assert stat.S_IMODE(os.stat(dst / "sub").st_mode) == 0o705
    assert stat.S_IMODE(os.stat(dst).st_mode) == 0o750  # the top directory's own metadata too


def test_extended_attributes_are_kept_but_selinux_labels(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x\n")
    try:
        os.setxattr(src / "f", "user.cricket", b"kept")
    except OSError as e:
        if e.errno == errno.ENOTSUP:
            pytest.skip(f"{tmp_path} holds no user xattrs")
        raise
    copy(src, tmp_path / "dst")
    assert os.getxattr(tmp_path / "dst" / "f", "user.cricket") == b"kept"


def test_holes_stay_holes(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "sparse", "wb") as f:
        f.seek(64 << 20)
        f.write(b"end")
    if os.stat(src / "sparse").st_blocks * 512 > 1 << 20:
        pytest.skip(f"{tmp_path} does not keep holes")
    copy(src, tmp_path / "dst", tree_copy.Budget(bytes=1 << 20, inodes=10))
    st = os.stat(tmp_path / "dst" / "sparse")
    assert st.st_size == (64 << 20) + 3 and st.st_blocks * 512 <= 1 << 20
    with open(tmp_path / "dst" / "sparse", "rb") as f:
        f.seek(64 << 20)
        assert f.read() == b"end"


@pytest.mark.parametrize("budget,what", [
    (tree_copy.Budget(bytes=10, inodes=100), "more data"),
    (tree_copy.Budget(bytes=1 << 20, inodes=3), "more files"),
    (tree_copy.Budget(bytes=1 << 20, inodes=100, depth=2), "deeper than 2"),
])
def test_the_budget_bounds_the_copy(tmp_path, budget, what):
    src = tmp_path / "src"
    (src / "a" / "b" / "c").mkdir(parents=True)
    for i in range(5):
        (src / f"f{i}").write_bytes(b"0123456789" * 10)
    with pytest.raises(tree_copy.CopyError, match=what):
        copy(src, tmp_path / "dst", budget)


def test_hard_links_cost_no_data(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "big").write_bytes(b"x" * 4096)
    for i in range(50):
        os.link(src / "big", src / f"link{i}")
    copy(src, tmp_path / "dst", tree_copy.Budget(bytes=4096, inodes=1))
    assert os.stat(tmp_path / "dst" / "link49").st_nlink == 51


def test_skipped_directories_are_made_empty(tmp_path):
    src = tmp_path / "src"
    (src / "nested" / "deep").mkdir(parents=True)
    (src / "nested" / "deep" / "f").write_text("copied with the nested volume, not here\n")
    os.chmod(src / "nested", 0o711)
    copy(src, tmp_path / "dst", skip={"nested"})
    assert list((tmp_path / "dst" / "nested").iterdir()) == []
    assert stat.S_IMODE(os.stat(tmp_path / "dst" / "nested").st_mode) == 0o711
