"""The libc calls that need no privileges."""
import pytest

from linux import libc


def test_syncfs_of_a_directory_succeeds(tmp_path):
    # Whether the data reached the disk cannot be seen from here; what can fail is the call
    # itself (a wrong prototype or descriptor makes the kernel answer EBADF or EINVAL).
    (tmp_path / "f").write_bytes(b"x" * 4096)
    assert libc.syncfs(str(tmp_path)) is None


def test_syncfs_names_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError):
        libc.syncfs(str(tmp_path / "missing"))
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        libc.syncfs(str(tmp_path / "file"))  # a snapshot is a directory; anything else is a caller's mistake
