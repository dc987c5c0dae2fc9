"""Layer unpacking: every entry type, whiteouts under a real overlayfs, hostile and corrupt layers."""
import contextlib
import gzip
import hashlib
import io
import os
import stat
import subprocess
import tarfile
import tempfile

import pytest
import zstandard

from image.compression import GZIP, NONE, ZSTD, compression_of, open_decompressed, sniff
from image.limits import HEADER_LIMIT
from image.unpack import (
    ImageLimits,
    LayerError,
    LimitExceeded,
    UnpackResult,
    UnsafeLayerError,
    unpack_layer,
)
from tests.fixtures.layers import MTIME, compress, entry, gnu_sparse_tar, pax_sparse, tar_bytes

OCI_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
MEDIA_TYPES = {NONE: OCI_TAR, GZIP: OCI_GZIP, ZSTD: OCI_ZSTD}


@pytest.fixture
def layer_file(tmp_path):
    counter = iter(range(1000))

    def write(data: bytes) -> str:
        path = tmp_path / f"layer{next(counter)}.blob"
        path.write_bytes(data)
        return str(path)

    return write


@pytest.fixture
def dest(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("unpacking needs root: chown, mknod, trusted.* xattrs")
    # Two levels below tmp_path, so that an escape lands somewhere the test can look.
    d = tmp_path / "root" / "dest"
    d.mkdir(parents=True)
    return str(d)


def unpack(layer_file, dest, tar: bytes, kind=NONE, media_type=None) -> UnpackResult:
    return unpack_layer(layer_file(compress(tar, kind)), media_type or MEDIA_TYPES[kind], dest)


def xattr(path, name):
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError:
        return None


# --- entry types and attributes -------------------------------------------------


@pytest.mark.parametrize("kind", [NONE, GZIP, ZSTD])
def test_every_entry_type_lands_with_its_attributes(layer_file, dest, kind):
    content = os.urandom(3 * 1024 * 1024 + 17)  # spans several 1 MiB copy buffers
    tar = tar_bytes(
        entry("./", tarfile.DIRTYPE, mode=0o755, mtime=MTIME - 5),
        entry("./etc/", tarfile.DIRTYPE, mode=0o751, uid=1000, gid=2000, mtime=MTIME + 1,
              xattrs={"user.dir": b"d"}),
        entry("./etc/file", data=b"hello", mode=0o640, uid=1000, gid=1001, mtime=MTIME + 2,
              xattrs={"user.plain": b"value", "user.binary": b"\x00\xff\xfe caps"}),
        entry("bin/su", data=b"#!", mode=0o4755, uid=0, gid=0),
        entry("bin/sgid", data=b"#!", mode=0o2711, uid=5, gid=6),
        entry("tmp/", tarfile.DIRTYPE, mode=0o1777),
        entry("big", data=content, mode=0o600),
        entry("empty", mode=0o000),
        entry("etc/link", tarfile.SYMTYPE, link="../big", uid=7, gid=8, mtime=MTIME + 3),
        entry("etc/hard", tarfile.LNKTYPE, link="./etc/file"),
        entry("dev/null", tarfile.CHRTYPE, mode=0o666, dev=(1, 3)),
        entry("dev/loop0", tarfile.BLKTYPE, mode=0o660, gid=6, dev=(7, 0)),
        entry("run/fifo", tarfile.FIFOTYPE, mode=0o620, mtime=MTIME + 4),
    )
    result = unpack(layer_file, dest, tar, kind)

    assert result.diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()
    assert result.size == 5 + 2 + 2 + len(content)
    # root is not new; etc bin tmp dev run + 4 files + empty + symlink + 2 devices + fifo
    assert result.inodes == 5 + 5 + 1 + 2 + 1

    def st(rel):
        return os.lstat(os.path.join(dest, rel))

    root, etc = os.lstat(dest), st("etc")
    assert stat.S_IMODE(root.st_mode) == 0o755 and root.st_mtime_ns == (MTIME - 5) * 10**9
    assert stat.S_ISDIR(etc.st_mode) and stat.S_IMODE(etc.st_mode) == 0o751
    assert (etc.st_uid, etc.st_gid) == (1000, 2000)
    # written into after its own entry, yet it keeps the mtime of the header
    assert etc.st_mtime_ns == (MTIME + 1) * 10**9
    assert xattr(os.path.join(dest, "etc"), "user.dir") == b"d"

    f = st("etc/file")
    assert stat.S_ISREG(f.st_mode) and stat.S_IMODE(f.st_mode) == 0o640
    assert (f.st_uid, f.st_gid, f.st_mtime_ns) == (1000, 1001, (MTIME + 2) * 10**9)
    assert open(os.path.join(dest, "etc/file"), "rb").read() == b"hello"
    assert xattr(os.path.join(dest, "etc/file"), "user.plain") == b"value"
    assert xattr(os.path.join(dest, "etc/file"), "user.binary") == b"\x00\xff\xfe caps"

    assert stat.S_IMODE(st("bin/su").st_mode) == 0o4755
    sgid = st("bin/sgid")
    assert stat.S_IMODE(sgid.st_mode) == 0o2711 and (sgid.st_uid, sgid.st_gid) == (5, 6)
    assert stat.S_IMODE(st("tmp").st_mode) == 0o1777
    assert stat.S_IMODE(st("bin").st_mode) == 0o755  # made for its children, as containerd does
    assert open(os.path.join(dest, "big"), "rb").read() == content
    assert stat.S_IMODE(st("empty").st_mode) == 0 and st("empty").st_size == 0

    link = st("etc/link")
    assert stat.S_ISLNK(link.st_mode) and os.readlink(os.path.join(dest, "etc/link")) == "../big"
    assert (link.st_uid, link.st_gid, link.st_mtime_ns) == (7, 8, (MTIME + 3) * 10**9)

    hard = st("etc/hard")
    assert hard.st_ino == f.st_ino and hard.st_nlink == 2

    null, loop = st("dev/null"), st("dev/loop0")
    assert stat.S_ISCHR(null.st_mode) and os.major(null.st_rdev) == 1 and os.minor(null.st_rdev) == 3
    assert stat.S_IMODE(null.st_mode) == 0o666
    assert stat.S_ISBLK(loop.st_mode) and (os.major(loop.st_rdev), os.minor(loop.st_rdev)) == (7, 0)
    assert stat.S_IMODE(loop.st_mode) == 0o660 and loop.st_gid == 6
    fifo = st("run/fifo")
    assert stat.S_ISFIFO(fifo.st_mode) and stat.S_IMODE(fifo.st_mode) == 0o620
    assert fifo.st_mtime_ns == (MTIME + 4) * 10**9


def test_libarchive_xattrs_are_decoded(layer_file, dest):
    info, _ = entry("f")
    # libarchive URL-encodes the name and base64-encodes the value without padding
    info.pax_headers = {"LIBARCHIVE.xattr.user.a%3Db": "AAE", "LIBARCHIVE.xattr.user.plain": "aGk="}
    unpack(layer_file, dest, tar_bytes((info, b"")))
    assert xattr(os.path.join(dest, "f"), "user.a=b") == b"\x00\x01"
    assert xattr(os.path.join(dest, "f"), "user.plain") == b"hi"


def test_sub_second_mtime_from_pax(layer_file, dest):
    info, _ = entry("f")
    info.pax_headers = {"mtime": f"{MTIME}.123456789"}  # as Go's archive/tar writes it
    unpack(layer_file, dest, tar_bytes((info, b"")))
    assert os.lstat(os.path.join(dest, "f")).st_mtime_ns == MTIME * 10**9 + 123_456_789


def test_gnu_sparse_file(tmp_path, layer_file, dest):
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "sparse", "wb") as f:
        f.seek(5 * 1024 * 1024)
        f.write(b"tail")
        f.seek(1000)
        f.write(b"head")
    archive = tmp_path / "sparse.tar"
    subprocess.run(["tar", "--sparse", "--format=gnu", "-cf", str(archive), "-C", str(src), "sparse"], check=True)
    unpack_layer(str(archive), None, dest)
    assert open(os.path.join(dest, "sparse"), "rb").read() == open(src / "sparse", "rb").read()


def test_later_entries_replace_earlier_ones(tmp_path, layer_file, dest):
    outside = tmp_path / "outside"
    outside.mkdir()
    tar = tar_bytes(
        entry("f", data=b"first"),
        entry("f", data=b"second"),
        entry("dir/", tarfile.DIRTYPE),
        entry("dir/child", data=b"x"),
        entry("dir", data=b"now a file"),  # a file replaces the whole tree
        entry("file2dir", data=b"x"),
        entry("file2dir/", tarfile.DIRTYPE, mode=0o700),
        entry("file2dir/in", data=b"y"),
        entry("sym", tarfile.SYMTYPE, link=str(outside)),
        entry("sym", data=b"plain"),  # replaces the symlink, not written through it
        entry("keep/", tarfile.DIRTYPE, mode=0o755),
        entry("keep/a", data=b"a"),
        entry("keep/", tarfile.DIRTYPE, mode=0o711, mtime=MTIME + 9),  # updates, keeps content
    )
    unpack(layer_file, dest, tar)
    read = lambda rel: open(os.path.join(dest, rel), "rb").read()  # noqa: E731
    assert read("f") == b"second"
    assert read("dir") == b"now a file"
    assert read("file2dir/in") == b"y"
    assert read("sym") == b"plain" and not os.path.islink(os.path.join(dest, "sym"))
    assert os.listdir(outside) == []
    keep = os.lstat(os.path.join(dest, "keep"))
    assert stat.S_IMODE(keep.st_mode) == 0o711 and keep.st_mtime_ns == (MTIME + 9) * 10**9
    assert read("keep/a") == b"a"


# --- whiteouts ------------------------------------------------------------------


def test_whiteouts_take_the_overlayfs_form(layer_file, dest):
    tar = tar_bytes(
        entry("a/.wh.gone", uid=3, gid=4),
        entry("d/", tarfile.DIRTYPE),
        entry("d/.wh..wh..opq"),
        entry("implicit/.wh..wh..opq"),
        entry("a/.wh..wh.plnk"),  # AUFS bookkeeping, ignored
    )
    result = unpack(layer_file, dest, tar)
    gone = os.lstat(os.path.join(dest, "a/gone"))
    assert stat.S_ISCHR(gone.st_mode) and gone.st_rdev == 0
    assert (gone.st_uid, gone.st_gid) == (3, 4)
    assert xattr(os.path.join(dest, "d"), "trusted.overlay.opaque") == b"y"
    assert xattr(os.path.join(dest, "implicit"), "trusted.overlay.opaque") == b"y"
    assert xattr(os.path.join(dest, "a"), "trusted.overlay.opaque") is None
    assert sorted(os.listdir(os.path.join(dest, "a"))) == ["gone"]
    assert result.inodes == 4  # a, gone, d, implicit


@contextlib.contextmanager
def overlay(lowers, merged):
    """Mount a read-only overlayfs of ``lowers`` (top first) at ``merged``; always unmounted."""
    opts = "lowerdir=" + ":".join(lowers)
    r = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, merged], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"this kernel cannot mount overlayfs here: {r.stderr.strip()}")
    try:
        yield merged
    finally:
        subprocess.run(["umount", merged], check=True)
        assert f" {merged} " not in open("/proc/self/mounts").read()


def test_whiteouts_and_opaque_dirs_hide_lower_content_in_a_real_overlay(tmp_path, layer_file):
    base_dir, upper_dir, empty, merged = (tmp_path / n for n in ("base", "upper", "empty", "merged"))
    for d in (base_dir, upper_dir, empty, merged):
        d.mkdir()
    base = tar_bytes(
        entry("a/keep", data=b"keep"),
        entry("a/gone", data=b"gone"),
        entry("a/gonedir/inner", data=b"x"),
        entry("d/old", data=b"old"),
        entry("d/sub/older", data=b"older"),
    )
    upper = tar_bytes(
        entry("a/.wh.gone"),
        entry("a/.wh.gonedir"),
        entry("d/", tarfile.DIRTYPE),
        entry("d/.wh..wh..opq"),
        entry("d/new", data=b"new"),
    )
    unpack(layer_file, str(base_dir), base, GZIP)
    unpack(layer_file, str(upper_dir), upper, ZSTD)
    with overlay([str(upper_dir), str(base_dir)], str(merged)):
        assert sorted(os.listdir(merged / "a")) == ["keep"]
        assert (merged / "a" / "keep").read_bytes() == b"keep"
        assert sorted(os.listdir(merged / "d")) == ["new"]
        assert not (merged / "d" / "old").exists()
    # and without the upper layer, the base shows everything (a read-only
    # overlay needs two lowerdirs, hence the empty one)
    with overlay([str(empty), str(base_dir)], str(merged)):
        assert sorted(os.listdir(merged / "a")) == ["gone", "gonedir", "keep"]


# --- hostile layers -------------------------------------------------------------


def raw_name_tar(name: str, data: bytes = b"pwned") -> bytes:
    """A tar whose member name is written byte for byte, leading '/' included."""
    placeholder = "P" * len(name)
    tar = tar_bytes(entry(placeholder, data=data))
    header = bytearray(tar[:512])
    assert header[:len(name)] == placeholder.encode()
    header[:len(name)] = name.encode()
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header) + tar[512:]


def test_absolute_name_is_refused(tmp_path, layer_file, dest):
    target = tmp_path / "abs-escape"
    tar = raw_name_tar(str(target))
    assert tarfile.open(fileobj=io.BytesIO(tar)).getnames() == [str(target)]
    with pytest.raises(UnsafeLayerError, match="abs-escape"):
        unpack(layer_file, dest, tar)
    assert not target.exists()


@pytest.mark.parametrize("name", ["../escape", "./../escape", "a/../../escape", "a/b/../../../escape"])
def test_dotdot_escape_is_refused(tmp_path, layer_file, dest, name):
    with pytest.raises(UnsafeLayerError, match="escape"):
        unpack(layer_file, dest, tar_bytes(entry(name, data=b"pwned")))
    assert not (tmp_path / "root" / "escape").exists()
    assert not (tmp_path / "escape").exists()


def test_dotdot_that_stays_inside_is_fine(layer_file, dest):
    unpack(layer_file, dest, tar_bytes(entry("a/../b", data=b"ok")))
    assert open(os.path.join(dest, "b"), "rb").read() == b"ok"


@pytest.mark.parametrize("link", ["ABS", "../../outside"])
def test_writing_through_a_symlink_is_refused(tmp_path, layer_file, dest, link):
    outside = tmp_path / "outside"
    outside.mkdir()
    tar = tar_bytes(
        entry("link", tarfile.SYMTYPE, link=str(outside) if link == "ABS" else link),
        entry("link/pwned", data=b"pwned"),
    )
    with pytest.raises(UnsafeLayerError, match="link/pwned"):
        unpack(layer_file, dest, tar)
    assert os.listdir(outside) == []


def test_a_directory_replaced_by_a_symlink_is_not_trusted_as_a_parent(tmp_path, layer_file, dest):
    outside = tmp_path / "outside"
    outside.mkdir()
    tar = tar_bytes(
        entry("d/", tarfile.DIRTYPE),
        entry("d/first", data=b"ok"),
        entry("d", tarfile.SYMTYPE, link=str(outside)),
        entry("d/pwned", data=b"pwned"),
    )
    with pytest.raises(UnsafeLayerError, match="d/pwned"):
        unpack(layer_file, dest, tar)
    assert os.listdir(outside) == []


def test_whiteout_through_a_symlink_is_refused(tmp_path, layer_file, dest):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_bytes(b"keep me")
    tar = tar_bytes(entry("link", tarfile.SYMTYPE, link=str(outside)), entry("link/.wh.victim"))
    with pytest.raises(UnsafeLayerError, match="victim"):
        unpack(layer_file, dest, tar)
    assert (outside / "victim").read_bytes() == b"keep me"


@pytest.mark.parametrize("name", ["a/.wh..", "a/.wh..."])
def test_whiteout_of_dot_or_dotdot_is_refused(layer_file, dest, name):
    with pytest.raises(UnsafeLayerError):
        unpack(layer_file, dest, tar_bytes(entry(name)))


@pytest.mark.parametrize("target", ["../../etc/passwd", "/etc/passwd", "sym/passwd"])
def test_hard_link_outside_is_refused(layer_file, dest, target):
    tar = tar_bytes(entry("sym", tarfile.SYMTYPE, link="/etc"), entry("x", tarfile.LNKTYPE, link=target))
    with pytest.raises(UnsafeLayerError, match="x"):
        unpack(layer_file, dest, tar)
    assert not os.path.lexists(os.path.join(dest, "x"))


def test_hard_link_to_a_symlink_links_the_symlink_itself(tmp_path, layer_file, dest):
    secret = tmp_path / "secret"
    secret.write_bytes(b"secret")
    tar = tar_bytes(entry("sym", tarfile.SYMTYPE, link=str(secret)), entry("h", tarfile.LNKTYPE, link="sym"))
    unpack(layer_file, dest, tar)
    h = os.lstat(os.path.join(dest, "h"))
    assert stat.S_ISLNK(h.st_mode) and h.st_ino == os.lstat(os.path.join(dest, "sym")).st_ino
    assert os.stat(secret).st_nlink == 1


def test_hard_link_to_a_missing_target_is_a_layer_error(layer_file, dest):
    with pytest.raises(LayerError, match="not created") as e:
        unpack(layer_file, dest, tar_bytes(entry("x", tarfile.LNKTYPE, link="nothing/here")))
    assert type(e.value) is LayerError


# --- corrupt layers and compression ---------------------------------------------


def sample_tar() -> bytes:
    return tar_bytes(*(entry(f"f{i}", data=os.urandom(3000)) for i in range(20)))


def test_corrupt_gzip_is_a_layer_error(layer_file, dest):
    blob = bytearray(gzip.compress(sample_tar()))
    blob[len(blob) // 2:len(blob) // 2 + 16] = bytes(16)
    path = layer_file(bytes(blob))
    with pytest.raises(LayerError, match="corrupt"):
        unpack_layer(path, OCI_GZIP, dest)
    with open_decompressed(path, OCI_GZIP) as f, pytest.raises(LayerError, match="corrupt"):
        while f.readinto(bytearray(65536)):
            pass


def test_truncated_gzip_is_a_layer_error(layer_file, dest):
    blob = gzip.compress(sample_tar())
    with pytest.raises(LayerError):
        unpack_layer(layer_file(blob[:-6]), OCI_GZIP, dest)


@pytest.mark.parametrize("cut", [-3, 0.5, 6])
def test_truncated_zstd_is_a_layer_error(layer_file, dest, cut):
    blob = zstandard.ZstdCompressor(write_checksum=True).compress(sample_tar())
    end = int(len(blob) * cut) if isinstance(cut, float) else cut if cut > 0 else len(blob) + cut
    with pytest.raises(LayerError, match="truncated|corrupt"):
        unpack_layer(layer_file(blob[:end]), OCI_ZSTD, dest)


def test_garbage_zstd_is_a_layer_error(layer_file, dest):
    with pytest.raises(LayerError, match="corrupt"):
        unpack_layer(layer_file(b"\x28\xb5\x2f\xfd" + os.urandom(4000)), OCI_ZSTD, dest)


def test_truncated_plain_tar_is_a_layer_error(layer_file, dest):
    tar = sample_tar()  # members of 3000 bytes: a header block and 6 data blocks each
    member = 7 * 512
    for end in (700, member + 100, 20 * member - 7):
        with pytest.raises(LayerError, match="truncated"):
            unpack(layer_file, tempfile.mkdtemp(dir=os.path.dirname(dest)), tar[:end])


def test_bad_header_in_the_middle_is_a_layer_error(layer_file, dest):
    tar = bytearray(tar_bytes(entry("a", data=b"x" * 10), entry("b", data=b"y")))
    second = 2 * 512  # a's header and its one data block come first
    assert tar[second:second + 2] == b"b\0"
    tar[second + 148:second + 150] = b"99"  # breaks its checksum
    with pytest.raises(LayerError, match="invalid tar header"):
        unpack(layer_file, dest, bytes(tar))


def test_garbage_that_is_not_a_tar_is_a_layer_error(layer_file, dest):
    with pytest.raises(LayerError, match="not a valid tar"):
        unpack_layer(layer_file(b"not a tar at all " * 100), OCI_GZIP, dest)


def test_unreadable_blob_is_a_layer_error(tmp_path, dest):
    with pytest.raises(LayerError, match="cannot open"):
        unpack_layer(str(tmp_path / "missing"), OCI_GZIP, dest)


def test_diff_id_covers_trailing_bytes_after_the_archive(layer_file, dest):
    tar = tar_bytes(entry("f", data=b"data")) + b"\0" * 10240 + b"trailing junk"
    result = unpack(layer_file, dest, tar, GZIP)
    assert result.diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()
    assert os.listdir(dest) == ["f"]


def test_empty_blob_is_an_empty_layer(layer_file, dest):
    result = unpack_layer(layer_file(b""), OCI_TAR, dest)
    assert result == UnpackResult("sha256:" + hashlib.sha256(b"").hexdigest(), 0, 0)


def test_multi_member_gzip_and_multi_frame_zstd(layer_file, dest):
    tar = sample_tar()
    half = len(tar) // 2
    for blob, media_type in [
        (gzip.compress(tar[:half]) + gzip.compress(tar[half:]), OCI_GZIP),
        (b"".join(zstandard.ZstdCompressor().compress(tar[i:i + 5000]) for i in range(0, len(tar), 5000)), OCI_ZSTD),
    ]:
        out = tempfile.mkdtemp(dir=os.path.dirname(dest))
        result = unpack_layer(layer_file(blob), media_type, out)
        assert result.diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()
        assert len(os.listdir(out)) == 20


@pytest.mark.parametrize("kind,media_type", [
    (GZIP, OCI_TAR),  # gzip bytes labeled as a plain tar
    (NONE, OCI_GZIP),  # a plain tar labeled gzip
    (ZSTD, OCI_GZIP),
    (GZIP, "application/x-unknown"),
    (ZSTD, None),
])
def test_mislabeled_layers_unpack_by_their_magic_bytes(layer_file, dest, kind, media_type):
    tar = tar_bytes(entry("f", data=b"data"))
    result = unpack(layer_file, dest, tar, kind, media_type)
    assert result.diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()
    assert open(os.path.join(dest, "f"), "rb").read() == b"data"


def test_compression_of_media_types():
    assert compression_of("application/vnd.oci.image.layer.v1.tar") == NONE
    assert compression_of("application/vnd.oci.image.layer.v1.tar+gzip") == GZIP
    assert compression_of("application/vnd.oci.image.layer.v1.tar+zstd") == ZSTD
    assert compression_of("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip") == GZIP
    assert compression_of("application/vnd.oci.image.layer.nondistributable.v1.tar+zstd") == ZSTD
    assert compression_of("application/vnd.docker.image.rootfs.diff.tar.gzip") == GZIP
    assert compression_of("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip") == GZIP
    assert compression_of("application/vnd.oci.image.config.v1+json") is None


def test_sniff_and_open_decompressed(layer_file):
    assert sniff(gzip.compress(b"x")[:4]) == GZIP
    assert sniff(zstandard.ZstdCompressor().compress(b"x")[:4]) == ZSTD
    assert sniff(b"etc/") == NONE and sniff(b"") == NONE
    with open_decompressed(layer_file(gzip.compress(b"payload")), OCI_TAR) as f:
        assert f.read() == b"payload"


# --- sparse files ---------------------------------------------------------------

SPARSE_SIZE = 256 << 20
SPARSE_REGIONS = [(4096, b"head"), (100 << 20, os.urandom(3 << 20)), (SPARSE_SIZE - 4, b"tail")]


def sparse_layer(tmp_path, fmt: str) -> bytes:
    if fmt == "gnu":
        return gnu_sparse_tar(str(tmp_path), SPARSE_SIZE, SPARSE_REGIONS)
    return tar_bytes(pax_sparse("sparse", SPARSE_SIZE, SPARSE_REGIONS, fmt), entry("after", data=b"next entry"))


@pytest.mark.parametrize("fmt", ["gnu", "0.1", "1.0"])
def test_sparse_files_keep_their_holes(tmp_path, layer_file, dest, fmt):
    # A few MiB of data in a 256 MiB file: it must land as the same few MiB, its holes as
    # holes, not as 253 MiB of zeros (a 235-byte layer became 1 GiB that way).
    result = unpack(layer_file, dest, sparse_layer(tmp_path, fmt), GZIP)
    path = os.path.join(dest, "sparse")
    st = os.stat(path)
    assert st.st_size == SPARSE_SIZE
    data_bytes = sum(len(chunk) for _, chunk in SPARSE_REGIONS)
    assert st.st_blocks * 512 < data_bytes + (1 << 20), f"{st.st_blocks * 512} bytes on disk"
    with open(path, "rb") as f:
        for offset, chunk in SPARSE_REGIONS:
            assert os.pread(f.fileno(), len(chunk), offset) == chunk
        for hole in (0, 4100, 50 << 20, (100 << 20) - 1, SPARSE_SIZE - 5):
            assert os.pread(f.fileno(), 1, hole) == b"\0"
    assert result.size < data_bytes + (64 << 10)  # usage is its data (GNU tar rounds to blocks), not holes
    if fmt != "gnu":
        assert open(os.path.join(dest, "after"), "rb").read() == b"next entry"


@pytest.mark.parametrize("regions, words", [
    ([(100, b"a" * 10), (105, b"b" * 10)], "overlapping"),
    ([(500, b"a" * 10), (100, b"b" * 10)], "out of order"),
    ([(1020, b"a" * 10)], "past its size"),
])
def test_a_hostile_sparse_map_is_a_layer_error(layer_file, dest, regions, words):
    with pytest.raises(LayerError, match=words):
        unpack(layer_file, dest, tar_bytes(pax_sparse("f", 1024, regions)))


def test_a_sparse_map_naming_more_data_than_the_entry_holds_is_a_layer_error(layer_file, dest):
    info, data = pax_sparse("f", 1 << 20, [(0, b"x" * 100)])
    info.pax_headers["GNU.sparse.map"] = "0,100,4096,100000"  # the second region's data is not there
    with pytest.raises(LayerError, match="maps 100100 bytes of data but holds 512"):
        unpack(layer_file, dest, tar_bytes((info, data), entry("next", data=b"y" * 100000)))


# --- bounds ---------------------------------------------------------------------


def test_a_layer_over_max_layer_size_fails_before_the_entry_that_crosses_it(layer_file, dest):
    tar = tar_bytes(entry("a", data=b"a" * 600), entry("b", data=b"b" * 600))
    with pytest.raises(LimitExceeded, match=r"'b'.* 1000 bytes, the limit \(\[image\] max_layer_size\)"):
        unpack_layer(layer_file(tar), OCI_TAR, dest, ImageLimits(max_layer_size=1000))
    assert os.listdir(dest) == ["a"]
    # At the bound exactly is fine.
    result = unpack_layer(layer_file(tar), OCI_TAR, dest, ImageLimits(max_layer_size=1200))
    assert result.size == 1200


def test_a_sparse_file_counts_at_its_apparent_size(tmp_path, layer_file, dest):
    blob = gzip.compress(tar_bytes(pax_sparse("bomb", 1 << 30, [((1 << 30) - 4, b"tail")])))
    assert len(blob) < 400  # the whole layer
    with pytest.raises(LimitExceeded, match="'bomb' \\(1073741824 bytes\\).*max_layer_size"):
        unpack_layer(layer_file(blob), OCI_GZIP, dest, ImageLimits(max_layer_size=512 << 20))
    assert os.listdir(dest) == []


def test_a_layer_over_max_layer_entries_fails_at_the_entry_past_it(layer_file, dest):
    tar = tar_bytes(*(entry(f"f{i}") for i in range(11)))
    with pytest.raises(LimitExceeded, match=r"more than 10 entries.*max_layer_entries.*'f10'"):
        unpack_layer(layer_file(tar), OCI_TAR, dest, ImageLimits(max_layer_entries=10))
    assert "f10" not in os.listdir(dest)
    assert len(os.listdir(dest)) == 10
    unpack_layer(layer_file(tar), OCI_TAR, dest, ImageLimits(max_layer_entries=11))


def test_default_bounds_are_generous():
    assert ImageLimits() == ImageLimits(max_layer_size=64 << 30, max_layer_entries=1_000_000)


@pytest.mark.parametrize("kind", ["pax record", "long name"])
def test_tar_headers_over_the_header_limit_are_refused_unread(layer_file, dest, kind):
    # tarfile would read the whole header into memory: a small blob could ask for gigabytes.
    info, data = entry("f", data=b"x")
    huge = "y" * (HEADER_LIMIT + 1)
    if kind == "pax record":
        info.pax_headers = {"comment": huge}
        tar = tar_bytes((info, data))
    else:
        info.name = "d/" + huge
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
            t.addfile(info, io.BytesIO(data))
        tar = buf.getvalue()
    with pytest.raises(LimitExceeded, match=f"over the {HEADER_LIMIT} byte limit"):
        unpack(layer_file, dest, tar, GZIP)
    assert os.listdir(dest) == []


def test_a_sparse_map_of_endless_regions_is_refused(layer_file, dest):
    # A PAX 1.0 map is read from the data by tarfile; one that claims a billion regions must
    # not be read (and held) to the end of the layer.
    info, _ = pax_sparse("f", 1 << 40, [(0, b"x")], "1.0")
    endless = b"1000000000\n" + b"1\n" * (4 << 20)
    info.size = len(endless)
    with pytest.raises(LimitExceeded, match="byte limit"):
        unpack(layer_file, dest, tar_bytes((info, endless)), GZIP)


@pytest.mark.parametrize("first", [True, False])
def test_endless_chains_of_pax_headers_are_a_layer_error(layer_file, dest, first):
    # tarfile recurses once per chained header: without a bound this is a RecursionError,
    # an internal error rather than a refused layer.
    chain = tarfile.TarInfo.create_pax_global_header({"comment": "x"}) * 3000
    head = b"" if first else tar_bytes(entry("before", data=b"b"))[:1024]  # its header and data, no end
    with pytest.raises(LayerError, match="chained tar headers"):
        unpack(layer_file, dest, head + chain + tar_bytes(entry("f", data=b"x")))
