"""Reading image archives (`cricket load`): hostile archives are refused, naming the member, and
nothing lands outside the extraction directory; sizes, member counts and headers are bounded."""
import asyncio
import bz2
import gzip
import hashlib
import io
import json
import lzma
import os
import tarfile

import pytest

from image.archive import JSON_LIMIT, ArchiveError, ArchiveSource, extract
from image.limits import HEADER_LIMIT
from tests.fixtures.layers import entry, pax_sparse, realpath_escape, tar_bytes


@pytest.fixture
def dest(tmp_path):
    # Three levels below tmp_path, so that an escape lands somewhere the test can look.
    d = tmp_path / "a" / "b" / "dest"
    d.mkdir(parents=True)
    return d


def load(data: bytes, dest, **bounds):
    extract(io.BytesIO(data), str(dest), **bounds)


def everything_under(path) -> set[str]:
    return {os.path.relpath(os.path.join(d, n), path) for d, dirs, files in os.walk(path) for n in dirs + files}


def test_the_realpath_escape_of_cve_2025_4517_is_refused(tmp_path, dest):
    with pytest.raises(ArchiveError, match=r"archive member 'a' is a symlink .*needs no links"):
        load(realpath_escape("../.."), dest)
    assert everything_under(tmp_path) - {"a", "a/b", "a/b/dest"} <= {f"a/b/dest/{'d' * 247}"}
    assert not (tmp_path / "a" / "pwned").exists()


@pytest.mark.parametrize("member, words", [
    (entry("link", tarfile.SYMTYPE, link="/etc/passwd"), "'link' is a symlink to '/etc/passwd'"),
    (entry("link", tarfile.SYMTYPE, link="../../outside"), "'link' is a symlink to '../../outside'"),
    (entry("link", tarfile.SYMTYPE, link="missing.tar"), "'link' is a symlink to 'missing.tar'"),
    (entry("hard", tarfile.LNKTYPE, link="manifest.json"), "'hard' is a hard link"),
    (entry("null", tarfile.CHRTYPE, dev=(1, 3)), "'null' is a device"),
    (entry("disk", tarfile.BLKTYPE, dev=(8, 0)), "'disk' is a device"),
    (entry("pipe", tarfile.FIFOTYPE), "'pipe' is a device, FIFO"),
    (pax_sparse("holes", 1 << 30, [((1 << 30) - 1, b"x")]), "'holes' is a sparse file"),
    (entry("/abs/file", data=b"x"), "'/abs/file' has an absolute path"),
    (entry("../up", data=b"x"), "'../up' climbs out of the archive"),
    (entry("a/../../up", data=b"x"), "'a/../../up' climbs out of the archive"),
])
def test_links_devices_sparse_files_and_escaping_names_are_refused(tmp_path, dest, member, words):
    tar = tar_bytes(entry("manifest.json", data=b"[]"), member)
    with pytest.raises(ArchiveError) as e:
        load(tar, dest)
    assert words in str(e.value)
    assert everything_under(tmp_path) == {"a", "a/b", "a/b/dest", "a/b/dest/manifest.json"}


def test_what_skopeo_writes_loads_and_its_legacy_symlinks_are_never_made(dest):
    # skopeo's docker-archive names each layer twice: <diff ID>.tar, and a legacy
    # <id>/layer.tar symlink to it. The symlink is an alias of a file the archive holds.
    layer = tar_bytes(entry("hello", data=b"hi\n"))
    layer_name = hashlib.sha256(layer).hexdigest() + ".tar"
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": ["sha256:" + layer_name[:-4]]}}).encode()
    manifest = json.dumps([{"Config": "config.json", "RepoTags": ["localhost/x:1"], "Layers": [layer_name]}])
    tar = tar_bytes(entry(layer_name, data=layer), entry("config.json", data=config),
                    entry("legacy/layer.tar", tarfile.SYMTYPE, link=f"../{layer_name}"),
                    entry("legacy/VERSION", data=b"1.0"), entry("manifest.json", data=manifest.encode()))
    load(tar, dest)
    assert not os.path.lexists(dest / "legacy" / "layer.tar")
    assert all(not os.path.islink(os.path.join(d, n)) for d, _, files in os.walk(dest) for n in files)
    source = ArchiveSource(str(dest))
    assert [name for name, _ in source.images] == ["localhost/x:1"]


@pytest.mark.parametrize("second", [
    entry("alias/x", data=b"x"),  # beneath a symlink
    entry("alias", data=b"x"),  # in place of one
    entry("alias", tarfile.DIRTYPE),
])
def test_nothing_goes_where_a_passed_over_symlink_is(tmp_path, dest, second):
    tar = tar_bytes(entry("f", data=b"f"), entry("alias", tarfile.SYMTYPE, link="f"), second)
    with pytest.raises(ArchiveError, match="symlink"):
        load(tar, dest)
    assert everything_under(dest) == {"f"}


def test_a_file_in_place_of_a_directory_and_under_a_file_are_refused(dest):
    with pytest.raises(ArchiveError, match="'d' is a file in place of a directory"):
        load(tar_bytes(entry("d/x", data=b"x"), entry("d", data=b"y")), dest)
    with pytest.raises(ArchiveError, match="'f/x' lies under 'f', which is a file"):
        load(tar_bytes(entry("f", data=b"y"), entry("f/x", data=b"x")), dest)


def test_a_later_copy_of_a_file_wins_and_files_are_private(dest):
    load(tar_bytes(entry("f", data=b"first", mode=0o4777), entry("f", data=b"second")), dest)
    assert (dest / "f").read_bytes() == b"second"
    assert os.stat(dest / "f").st_mode & 0o7777 == 0o600


def test_member_count_is_bounded(tmp_path, dest):
    tar = tar_bytes(*(entry(f"f{i}", data=b"x") for i in range(6)))
    with pytest.raises(ArchiveError, match=r"more than 5 members.*'f5' is one too many"):
        load(tar, dest, max_members=5)
    (tmp_path / "fresh").mkdir()
    load(tar, tmp_path / "fresh", max_members=6)


def test_member_size_and_total_size_are_bounded(tmp_path):
    tar = tar_bytes(entry("a", data=b"a" * 400), entry("b", data=b"b" * 600))
    for name in "xy":
        (tmp_path / name).mkdir()
    with pytest.raises(ArchiveError, match="'b' is 600 bytes, over the 500 byte limit of one member"):
        load(tar, tmp_path / "x", max_member_size=500)
    with pytest.raises(ArchiveError, match="'b' takes the archive past 999 bytes"):
        load(tar, tmp_path / "y", max_size=999)
    assert everything_under(tmp_path) == {"x", "y", "x/a", "y/a"}


@pytest.mark.parametrize("compress", [gzip.compress, bz2.compress, lzma.compress])
def test_a_compressed_archive_is_read_and_its_expansion_bounded(dest, compress):
    tar = tar_bytes(entry("zeros", data=bytes(8 << 20)))
    small = compress(tar)
    assert len(small) < 64 << 10
    with pytest.raises(ArchiveError, match="takes the archive past 1048576 bytes"):
        load(small, dest, max_size=1 << 20)
    assert os.listdir(dest) == []
    load(small, dest)
    assert os.path.getsize(dest / "zeros") == 8 << 20


def test_tar_headers_over_the_limit_are_refused_unread(dest):
    info, data = entry("f", data=b"x")
    info.pax_headers = {"comment": "y" * (HEADER_LIMIT + 1)}
    with pytest.raises(ArchiveError, match=f"over the {HEADER_LIMIT} byte limit"):
        load(gzip.compress(tar_bytes((info, data))), dest)


def test_junk_is_not_a_readable_tar(dest):
    with pytest.raises(ArchiveError, match="not a readable tar archive"):
        load(b"not an archive\n", dest)
    with pytest.raises(ArchiveError, match="not a readable tar archive"):
        load(gzip.compress(b"not an archive either\n" * 100)[:-20], dest)


# -- what an extracted archive says --------------------------------------------------------


def write(dest, name: str, data: bytes) -> None:
    path = dest / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


@pytest.mark.parametrize("doc, words", [
    ({"Config": "c.json"}, "manifest.json is not a JSON array"),
    (["c.json"], "manifest.json: want a list of JSON objects"),
    ([{"Config": 7}], "not a file name"),
    ([{"Config": "../../etc/passwd"}], "no file '../../etc/passwd'"),
    ([{"Config": "c.json", "RepoTags": [5]}], "names an image 5"),
])
def test_a_malformed_docker_manifest_is_an_archive_error(dest, doc, words):
    write(dest, "c.json", b"{}")
    write(dest, "manifest.json", json.dumps(doc).encode())
    with pytest.raises(ArchiveError, match=words):
        ArchiveSource(str(dest))


def test_json_documents_are_bounded_as_manifests_are(dest):
    write(dest, "manifest.json", b"[" + b" " * JSON_LIMIT + b"]")
    with pytest.raises(ArchiveError, match=f"manifest.json in the archive is over the {JSON_LIMIT} byte limit"):
        ArchiveSource(str(dest))
    big = b"{" + b" " * JSON_LIMIT + b"}"
    digest = "sha256:" + hashlib.sha256(big).hexdigest()
    write(dest, "oci-layout", b"{}")
    write(dest, "blobs/" + digest.replace(":", "/"), big)
    write(dest, "index.json", json.dumps({"manifests": [{"digest": digest, "mediaType": "x"}]}).encode())
    with pytest.raises(ArchiveError, match=f"manifest {digest} in the archive is over the {JSON_LIMIT} byte limit"):
        ArchiveSource(str(dest))


def test_a_blob_bigger_than_its_manifest_says_is_not_taken(tmp_path, dest):
    blob = b"x" * 1000
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    write(dest, "oci-layout", b"{}")
    write(dest, "index.json", b'{"manifests": []}')
    write(dest, "blobs/" + digest.replace(":", "/"), blob)
    source = ArchiveSource(str(dest))
    out = tmp_path / "ingest"
    with pytest.raises(ArchiveError, match="does not match its digest and size"):
        asyncio.run(source.fetch_blob(None, digest, 10, str(out)))
    assert not out.exists()
    asyncio.run(source.fetch_blob(None, digest, 1000, str(out)))
    assert out.read_bytes() == blob
