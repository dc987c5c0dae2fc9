"""The libc calls that need no privileges."""
import pytest

from linux import libc


def test_syncfs_flushes_the_filesystem_of_a_directory(tmp_path):
    (tmp_path / "f").write_bytes(b"x" * 4096)
    libc.syncfs(str(tmp_path))  # returns once the filesystem's dirty data is written


def test_syncfs_names_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError):
        libc.syncfs(str(tmp_path / "missing"))
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        libc.syncfs(str(tmp_path / "file"))  # a snapshot is a directory; anything else is a caller's mistake
