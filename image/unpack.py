"""Unpacking of image layers into overlayfs lower directories.

A layer is a tar of the changes it makes to its parents. It is unpacked into an
empty directory in the form overlayfs reads, so that the directory can be
stacked directly above its parents' directories as a lowerdir: a whiteout entry
``dir/.wh.NAME`` becomes a 0:0 character device ``dir/NAME``, and an opaque
marker ``dir/.wh..wh..opq`` becomes the ``trusted.overlay.opaque=y`` xattr on
``dir`` (as containerd's overlay applier does).

Tar members are trusted with nothing outside the destination: absolute names,
names that climb out with ``..``, and names whose parent path passes through a
symlink are refused with :class:`UnsafeLayerError` before anything is written.

Nor with the node's disk and memory: a layer's entries, its files' apparent sizes and
each entry's tar headers are bounded (image/limits.py), and a sparse file keeps its
holes as holes, so a few hundred bytes of layer cannot become gigabytes of zeros.
"""

from __future__ import annotations

import base64
import binascii
import errno
import hashlib
import logging
import os
import posixpath
import shutil
import stat
import tarfile
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import BinaryIO, cast
from urllib.parse import unquote

from image.compression import LayerError, open_decompressed
from image.limits import HEADER_LIMIT, ImageLimits, LimitExceeded
from image.space import NO_SPACE, out_of_space

__all__ = ["ImageLimits", "LayerError", "LimitExceeded", "UnpackResult", "UnsafeLayerError", "unpack_layer"]

log = logging.getLogger(__name__)

_BLOCK = tarfile.BLOCKSIZE
_ZERO_BLOCK = bytes(_BLOCK)
_CHUNK = 1 << 20

_WHITEOUT = ".wh."
_WHITEOUT_META = ".wh..wh."
_OPAQUE = ".wh..wh..opq"
_OPAQUE_XATTR = "trusted.overlay.opaque"

_CREATE_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_NODE_TYPES = {tarfile.CHRTYPE: stat.S_IFCHR, tarfile.BLKTYPE: stat.S_IFBLK, tarfile.FIFOTYPE: stat.S_IFIFO}
# What setxattr answers for a name or value that is itself wrong (an invalid value for the
# name, a name over 255 bytes, a value over 64 KiB).
_BAD_XATTR = {errno.EINVAL, errno.ERANGE, errno.E2BIG}
# What the system calls answer for an entry that is the layer's own fault, not the filesystem's:
# a path too long as a whole, too many hard links to one file.
_LAYERS_FAULT = {errno.ENAMETOOLONG, errno.EMLINK}
_NAME_MAX = 255
_NO_ID = (1 << 32) - 1  # uid_t's -1 means "unchanged" to chown: no id
_NS_MIN, _NS_MAX = -(1 << 63), (1 << 63) - 1


class UnsafeLayerError(LayerError):
    """An entry of the layer would land outside the destination; the message names the entry."""


@dataclass
class UnpackResult:
    diff_id: str  # "sha256:<hex>" of the uncompressed tar stream
    size: int  # bytes of file content written (a sparse file's data, not its holes)
    inodes: int  # inodes created (hard links create none)


def unpack_layer(path: str, media_type: str | None, dest: str, limits: ImageLimits | None = None,
                 source: BinaryIO | None = None) -> UnpackResult:
    """Unpack the layer blob at ``path`` into the existing empty directory ``dest``.

    The result can be used as an overlayfs lowerdir above the directories of the
    layer's parents. Raises :class:`UnsafeLayerError` for an entry that would
    escape ``dest``, :class:`LayerError` for a corrupt or malformed layer,
    :class:`LimitExceeded` for a layer over one of ``limits`` (checked before the
    entry that crosses it is written), OutOfSpace (an OSError) naming the entry and ``dest``
    when the destination is full, and OSError (with a note naming the entry) when the
    destination filesystem fails otherwise. On any error ``dest`` holds partial
    output for the caller to delete. Nothing is fsynced: the caller syncs the
    whole snapshot once (linux.libc.syncfs). ``source``, if given, is the blob
    open already (a download still arriving); ``path`` then only names it.
    """
    limits = limits or ImageLimits()
    with open_decompressed(path, media_type, source) as blob:
        stream = _TarStream(blob)
        writer = _Writer(dest, limits.max_layer_size)
        entry = None
        count = 0
        try:
            for archive, entry in _entries(stream):
                count += 1
                if count > limits.max_layer_entries:
                    raise LimitExceeded(
                        f"layer {path} has more than {limits.max_layer_entries} entries, the limit "
                        f"([image] max_layer_entries); {entry.name!r} is one too many"
                    )
                writer.apply(entry, archive, stream)
            entry = None
            writer.finish()
        except tarfile.TarError as e:
            raise LayerError(f"layer {path} is not a valid tar: {e}") from e
        except OSError as e:
            if e.errno in _LAYERS_FAULT:
                raise LayerError(f"entry {entry.name if entry else '?'!r} of layer {path} can not be made: "
                                 f"{e.strerror}") from None
            if e.errno in NO_SPACE:  # an OSError still, with its errno: the destination's fault
                raise out_of_space(e, f"unpacking {entry.name if entry else 'directory times'!r}", dest) from e
            e.add_note(f"while unpacking {entry.name if entry else 'directory times'!r} of layer {path} into {dest}")
            raise
        # The diff ID covers the whole stream, including anything after the
        # end-of-archive blocks, exactly as the image config recorded it.
        stream.drain()
    return UnpackResult(f"sha256:{stream.hexdigest()}", writer.size, writer.inodes)


def _entries(stream: _TarStream):
    """Yield (archive, member) for each tar member.

    tarfile stops silently at a bad header after the first one, which would
    pass a damaged layer off as a shorter one; so before each header we peek at
    it ourselves and only the end-of-archive block (or the end of the data, as
    Go's archive/tar allows) may end the walk.
    """
    if not stream.peek(_BLOCK):
        return  # an empty blob is an empty layer to Go's archive/tar too
    # tarfile reads an entry's headers (pax records, GNU long names, sparse maps) whole
    # into memory, however long the layer says they are: each entry's get a budget.
    stream.limit_reads(HEADER_LIMIT)
    try:
        # typeshed's _Fileobj also wants write() and close(), which reading never calls.
        archive = tarfile.open(fileobj=stream, mode="r:", errors="surrogateescape")  # type: ignore[call-overload]
    except RecursionError:
        raise _chained(0) from None
    except _TARFILE_SLIPS as e:
        raise _malformed(0, e) from None
    member = _next(archive)
    stream.limit_reads(None)
    while member is not None:
        yield archive, member
        stream.skip_to(archive.offset)
        archive.members.clear()  # tarfile keeps every member otherwise
        head = stream.peek(_BLOCK)
        if not head or head == _ZERO_BLOCK:
            return
        if len(head) < _BLOCK:
            raise LayerError(f"tar is truncated inside the header at byte {archive.offset}")
        stream.limit_reads(HEADER_LIMIT)
        member = _next(archive)
        stream.limit_reads(None)
        if member is None:
            raise LayerError(f"invalid tar header at byte {archive.offset}")


# What tarfile (3.11) lets out of its header parsing for some malformed headers, beside TarError:
# a pax record whose length overflows (OverflowError), numbers that are not (ValueError), a
# truncated sparse map (IndexError).
_TARFILE_SLIPS = (OverflowError, ValueError, IndexError)


def _next(archive: tarfile.TarFile) -> tarfile.TarInfo | None:
    """archive.next(), every failure of a malformed header a LayerError."""
    offset = archive.offset
    try:
        return archive.next()
    except RecursionError:
        raise _chained(offset) from None
    except _TARFILE_SLIPS as e:
        raise _malformed(offset, e) from None


def _malformed(offset: int, e: Exception) -> LayerError:
    return LayerError(f"malformed tar header at byte {offset}: {e}")


def _chained(offset: int) -> LayerError:
    # tarfile reads each pax or GNU header that precedes an entry by calling itself again;
    # a few hundred of them in a row (a few hundred KiB, within HEADER_LIMIT) exhaust Python's
    # recursion limit. Writers put one or two before an entry.
    return LayerError(f"the entry at byte {offset} is preceded by hundreds of chained tar headers")


class _TarStream:
    """The uncompressed tar, hashed as it is read; forward-only, with peek.

    tarfile in seekable mode reads straight from this object, which avoids the
    extra copying of its stream mode and lets _entries peek at headers.
    """

    def __init__(self, src: BinaryIO, hashing: bool = True):
        self._src = src
        self._hash = hashlib.sha256() if hashing else None
        self._buf = b""
        self._at = 0  # read position in _buf
        self._pos = 0  # read position in the whole stream
        self._budget: int | None = None  # bytes read() may still return; None: no bound

    def limit_reads(self, budget: int | None) -> None:
        """Bound what read() returns from now on (tarfile reads headers with it; file data
        goes through readinto), or lift the bound with None."""
        self._budget = budget

    def _pull(self) -> bytes:
        chunk = self._src.read(_CHUNK)
        if chunk and self._hash is not None:
            self._hash.update(chunk)
        return chunk

    def hexdigest(self) -> str:
        assert self._hash is not None  # made with hashing
        return self._hash.hexdigest()

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        if whence != os.SEEK_SET:
            raise OSError(errno.ESPIPE, "layer stream only seeks forward to an absolute position")
        self.skip_to(pos)
        return pos

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            raise OSError(errno.EINVAL, "layer stream reads need a size")
        if self._budget is not None:
            if n > self._budget:
                raise LimitExceeded(f"the tar headers of the entry at byte {self._pos} are over the "
                                    f"{HEADER_LIMIT} byte limit (as Go's archive/tar bounds them)")
            self._budget -= n
        if n <= len(self._buf) - self._at:
            piece = self._buf[self._at:self._at + n]
            self._at += n
            self._pos += n
            return piece
        parts = [self._buf[self._at:]]
        got = len(parts[0])
        self._buf, self._at = b"", 0
        while got < n:
            chunk = self._pull()
            if not chunk:
                break
            take = min(n - got, len(chunk))
            parts.append(chunk[:take])
            self._buf, self._at = chunk, take
            got += take
        self._pos += got
        return b"".join(parts)

    def readinto(self, b) -> int:
        if self._at == len(self._buf):
            self._buf, self._at = self._pull(), 0
        n = min(len(b), len(self._buf) - self._at)
        b[:n] = memoryview(self._buf)[self._at:self._at + n]
        self._at += n
        self._pos += n
        return n

    def peek(self, n: int) -> bytes:
        """Return up to ``n`` coming bytes without consuming them; fewer only at the end."""
        while len(self._buf) - self._at < n:
            chunk = self._pull()
            if not chunk:
                break
            self._buf, self._at = self._buf[self._at:] + chunk, 0
        return self._buf[self._at:self._at + n]

    def skip_to(self, pos: int) -> None:
        if pos < self._pos:
            raise OSError(errno.ESPIPE, f"layer stream cannot seek back from {self._pos} to {pos}")
        left = pos - self._pos
        while left:
            avail = len(self._buf) - self._at
            if not avail:
                self._buf, self._at = self._pull(), 0
                if not self._buf:
                    raise LayerError(f"tar is truncated: data ends at byte {self._pos}")
                continue
            take = min(left, avail)
            self._at += take
            self._pos += take
            left -= take

    def drain(self) -> None:
        self._buf, self._at = b"", 0
        while self._pull():
            pass


class _Writer:
    """Applies tar members to the destination directory in overlayfs form."""

    def __init__(self, root: str, max_size: int):
        self.root = root
        self.size = 0
        self.inodes = 0
        self.max_size = max_size
        self.apparent = 0  # the files' sizes as the layer declares them, holes included
        # Directories (relative paths) known to be real directories in root: a
        # parent found here needs no lstat walk to prove it is not a symlink.
        self._dirs = {""}
        # Directory mtimes wait until the end: every entry written into a
        # directory would move its mtime again.
        self._dir_times: dict[str, int] = {}
        self._buf = memoryview(bytearray(_CHUNK))

    def _path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def apply(self, member: tarfile.TarInfo, archive: tarfile.TarFile, stream: _TarStream) -> None:
        rel = _clean(member.name)
        parent, _, base = rel.rpartition("/")
        if base.startswith(_WHITEOUT):
            self._whiteout(member, parent, base)
            return
        self._dir_at(parent, member.name, create=True)
        full = self._path(rel)
        if member.isdir():
            self._directory(member, rel, full)
        elif not rel:
            raise LayerError(f"entry {member.name!r} would replace the layer root with a non-directory")
        elif member.isreg():
            self._file(member, rel, full, archive, stream)
        elif member.issym():
            if "\0" in member.linkname:
                raise LayerError(f"symlink {member.name!r} has a NUL byte in its target")
            if not member.linkname:
                raise LayerError(f"symlink {member.name!r} has an empty target")
            self._create(rel, full, os.symlink, member.linkname, full)
            os.lchown(full, *_owner(member))
            self._set_xattrs(member, full)
            ns = _mtime_ns(member)
            os.utime(full, ns=(ns, ns), follow_symlinks=False)
            self.inodes += 1
        elif member.islnk():
            self._hard_link(member, rel, full)
        elif member.type in _NODE_TYPES:
            device = os.makedev(member.devmajor, member.devminor)
            self._create(rel, full, os.mknod, full, _NODE_TYPES[member.type] | 0o600, device)
            self._set_metadata(member, full)
            self.inodes += 1
        else:
            raise LayerError(f"entry {member.name!r} has unsupported tar type {member.type!r}")

    def finish(self) -> None:
        for rel, ns in self._dir_times.items():
            os.utime(self._path(rel), ns=(ns, ns), follow_symlinks=False)

    def _file(self, member, rel, full, archive, stream) -> None:
        # Counted before anything is made: a layer over the bound writes none of the entry.
        if self.apparent + member.size > self.max_size:
            raise LimitExceeded(
                f"entry {member.name!r} ({member.size} bytes) takes the layer's files past "
                f"{self.max_size} bytes, the limit ([image] max_layer_size)"
            )
        self.apparent += member.size
        regions = _sparse_regions(member, archive.offset - member.offset_data) if member.sparse is not None else None
        fd = self._create(rel, full, os.open, full, _CREATE_FILE, 0o600)
        try:
            written = member.size
            if regions is not None:
                written = self._sparse(regions, fd, member, stream)
            elif member.size:
                stream.skip_to(member.offset_data)
                self._copy(stream.readinto, fd, member.size, member.name)
            # Ownership before mode, since chown clears setuid/setgid; xattrs
            # after both, since chown and writes drop security.capability.
            os.fchown(fd, *_owner(member))
            os.fchmod(fd, member.mode & 0o7777)
            self._set_xattrs(member, fd)
            ns = _mtime_ns(member)
            os.utime(fd, ns=(ns, ns))
        finally:
            os.close(fd)
        self.size += written
        self.inodes += 1

    def _sparse(self, regions: list[tuple[int, int]], fd: int, member, stream: _TarStream) -> int:
        """Write a sparse file's data regions where they belong and leave its holes as holes
        (tarfile's own extraction writes them out as zeros). Returns the bytes written."""
        stream.skip_to(member.offset_data)  # the regions' data, one after the other
        written = 0
        for offset, length in regions:
            os.lseek(fd, offset, os.SEEK_SET)
            self._copy(stream.readinto, fd, length, member.name)
            written += length
        os.ftruncate(fd, member.size)  # a hole at the end too
        return written

    def _copy(self, read, fd: int, size: int, name: str) -> None:
        buf = self._buf
        left = size
        while left:
            n = read(buf[:min(left, len(buf))])
            if not n:
                raise LayerError(f"tar is truncated inside the data of {name!r}")
            done = 0
            while done < n:
                done += os.write(fd, buf[done:n])
            left -= n

    def _directory(self, member, rel, full) -> None:
        if rel not in self._dirs:
            try:
                os.mkdir(full, 0o700)
                self.inodes += 1
            except FileExistsError:
                if not stat.S_ISDIR(os.lstat(full).st_mode):
                    self._remove(rel, full)
                    os.mkdir(full, 0o700)
                    self.inodes += 1
            self._dirs.add(rel)
        os.chown(full, *_owner(member))
        os.chmod(full, member.mode & 0o7777)
        self._set_xattrs(member, full)
        self._dir_times[rel] = _mtime_ns(member)

    def _hard_link(self, member, rel, full) -> None:
        target = _clean(member.linkname, f"hard link {member.name!r} -> {member.linkname!r}")
        if not target:
            raise LayerError(f"hard link {member.name!r} points at the layer root")
        self._dir_at(target.rpartition("/")[0], member.name, create=False)
        target_full = self._path(target)
        try:
            mode = os.lstat(target_full).st_mode
        except FileNotFoundError:
            raise LayerError(
                f"hard link {member.name!r} points to {member.linkname!r}, which the layer has not created"
            ) from None
        if stat.S_ISDIR(mode):
            raise LayerError(f"hard link {member.name!r} points to directory {member.linkname!r}")
        # The link shares the target's inode, whose metadata its own entry set.
        self._create(rel, full, os.link, target_full, full, follow_symlinks=False)

    def _whiteout(self, member, parent, base) -> None:
        self._dir_at(parent, member.name, create=True)
        if base == _OPAQUE:
            os.setxattr(self._path(parent), _OPAQUE_XATTR, b"y")
            return
        if base.startswith(_WHITEOUT_META):
            return  # other AUFS bookkeeping (.wh..wh.plnk, .wh..wh.aufs) means nothing to overlayfs
        hidden = base[len(_WHITEOUT):]
        if hidden in ("", ".", ".."):
            raise UnsafeLayerError(f"whiteout entry {member.name!r} names no file of its directory")
        rel = f"{parent}/{hidden}" if parent else hidden
        full = self._path(rel)
        self._create(rel, full, os.mknod, full, stat.S_IFCHR, 0)
        os.lchown(full, *_owner(member))
        self.inodes += 1

    def _dir_at(self, rel: str, entry: str, create: bool) -> None:
        """Make sure ``rel`` is a real directory, every component of it checked with lstat."""
        if rel in self._dirs:
            return
        self._dir_at(rel.rpartition("/")[0], entry, create)
        full = self._path(rel)
        try:
            mode = os.lstat(full).st_mode
        except FileNotFoundError:
            if not create:
                raise LayerError(f"entry {entry!r} refers into {rel!r}, which the layer has not created") from None
            os.mkdir(full)
            os.chmod(full, 0o755)  # as containerd makes missing parents, whatever the umask
            self.inodes += 1
            mode = stat.S_IFDIR
        if stat.S_ISLNK(mode):
            raise UnsafeLayerError(f"entry {entry!r} would pass through the symlink {rel!r}")
        if not stat.S_ISDIR(mode):
            raise LayerError(f"entry {entry!r} lies under {rel!r}, which is not a directory")
        self._dirs.add(rel)

    def _create(self, rel, full, make, *args, **kwargs):
        """Run ``make``, first removing whatever an earlier entry left at ``full``."""
        try:
            return make(*args, **kwargs)
        except FileExistsError:
            self._remove(rel, full)
            return make(*args, **kwargs)

    def _remove(self, rel, full) -> None:
        if not stat.S_ISDIR(os.lstat(full).st_mode):
            os.unlink(full)
            return
        shutil.rmtree(full)
        inside = rel + "/"
        self._dirs = {d for d in self._dirs if d != rel and not d.startswith(inside)}
        self._dir_times = {d: t for d, t in self._dir_times.items() if d != rel and not d.startswith(inside)}

    def _set_metadata(self, member, full) -> None:
        os.lchown(full, *_owner(member))
        os.chmod(full, member.mode & 0o7777)
        self._set_xattrs(member, full)
        ns = _mtime_ns(member)
        os.utime(full, ns=(ns, ns), follow_symlinks=False)

    def _set_xattrs(self, member, target) -> None:
        if not member.pax_headers:
            return
        by_path = {} if isinstance(target, int) else {"follow_symlinks": False}
        for name, value in _xattrs(member).items():
            try:
                os.setxattr(target, name, value, **by_path)
            except OSError as e:
                # The kernel allows user.* only on regular files and directories.
                user_on_special = (
                    e.errno == errno.EPERM and name.startswith("user.") and not (member.isreg() or member.isdir())
                )
                if e.errno in _BAD_XATTR:
                    # The layer's record, not the destination: a malformed security.capability, a
                    # name too long, a value too big. The pull fails naming it, as a corrupt layer.
                    raise LayerError(f"entry {member.name!r} has an xattr {name!r} the kernel refuses: "
                                     f"{e.strerror}") from None
                if e.errno != errno.ENOTSUP and not user_on_special:
                    raise
                log.warning("ignoring xattr %s of %r: %s", name, member.name, e.strerror)


def _sparse_regions(member: tarfile.TarInfo, stored: int) -> list[tuple[int, int]]:
    """A sparse member's data regions (offset, length), checked as Go's archive/tar checks
    them: in order, not overlapping, inside the file, and no more data than the entry holds."""
    regions = []
    end = total = 0
    # typeshed has sparse as bytes; tarfile makes it a list of (offset, length) pairs.
    sparse = cast(list[tuple[int, int]], member.sparse or [])
    for offset, length in sparse:
        if offset < 0 or length < 0:
            raise LayerError(f"sparse entry {member.name!r} has a negative offset or length in its map")
        if not length:
            continue  # GNU tar pads its map with empty regions
        if offset < end:
            raise LayerError(f"sparse entry {member.name!r} has regions out of order or overlapping at byte {offset}")
        end = offset + length
        if end > member.size:
            raise LayerError(f"sparse entry {member.name!r} has a region ending at byte {end}, "
                             f"past its size of {member.size}")
        total += length
        regions.append((offset, length))
    if total > stored:
        raise LayerError(f"sparse entry {member.name!r} maps {total} bytes of data but holds {stored}")
    return regions


def _clean(name: str, what: str | None = None, root: str = "the layer root") -> str:
    """Return the member name relative to the root ("" for the root), or refuse it."""
    what = what or f"entry {name!r}"
    if "\0" in name:
        # A pax record may hold any byte; no path can hold this one (the system calls refuse it).
        raise LayerError(f"{what} has a NUL byte in its name")
    if any(len(part.encode("utf-8", "surrogateescape")) > _NAME_MAX for part in name.split("/")):
        raise LayerError(f"{what} has a name part longer than {_NAME_MAX} bytes, which no filesystem takes")
    if name.startswith("/"):
        raise UnsafeLayerError(f"{what} has an absolute path")
    norm = posixpath.normpath(name) if name else "."
    if norm == ".." or norm.startswith("../"):
        raise UnsafeLayerError(f"{what} climbs out of {root}")
    return "" if norm == "." else norm


def _xattrs(member: tarfile.TarInfo) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for key, value in member.pax_headers.items():
        if key.startswith(("SCHILY.xattr.", "LIBARCHIVE.xattr.")) and "\0" in key:
            raise LayerError(f"entry {member.name!r} has an xattr with a NUL byte in its name")
        if key.startswith("SCHILY.xattr."):
            # tarfile decoded the raw value with surrogateescape; this restores the bytes.
            found[key[len("SCHILY.xattr."):]] = value.encode("utf-8", "surrogateescape")
        elif key.startswith("LIBARCHIVE.xattr."):
            # libarchive writes the name URL-encoded and the value base64, maybe unpadded.
            try:
                raw = base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
            except (binascii.Error, ValueError) as e:
                raise LayerError(f"entry {member.name!r} has a malformed {key} record: {e}") from e
            found.setdefault(unquote(key[len("LIBARCHIVE.xattr."):]), raw)
    return found


def _mtime_ns(member: tarfile.TarInfo) -> int:
    mtime = member.mtime
    try:
        if isinstance(mtime, int):
            ns = mtime * 1_000_000_000
        else:
            # A pax mtime has sub-second digits; the float tarfile made of it has lost
            # the nanoseconds, the record itself has not.
            try:
                ns = int(Decimal(member.pax_headers["mtime"]) * 1_000_000_000)
            except (KeyError, InvalidOperation):
                ns = round(mtime * 1e9)
    except (ValueError, OverflowError, InvalidOperation):  # a pax "nan" or "inf"
        raise LayerError(f"entry {member.name!r} has an mtime that is no time: {mtime!r}") from None
    # Far past or future: what utimensat takes (the filesystem keeps what it can of it).
    return min(max(ns, _NS_MIN), _NS_MAX)


def _owner(member: tarfile.TarInfo) -> tuple[int, int]:
    """The entry's uid and gid, refused unless they are ids (a pax record may say anything)."""
    for what, value in (("uid", member.uid), ("gid", member.gid)):
        if not isinstance(value, int) or not 0 <= value < _NO_ID:
            raise LayerError(f"entry {member.name!r} has {what} {value!r}, which is no user or group id")
    return member.uid, member.gid
