"""What the fuzz targets (fuzz/) found, each with the input that found it: the parser now raises
its documented error for it. The inputs are the fuzzers' own (minimized with fuzz/minimize.py
where they were large, and then kept zlib-compressed and base64-encoded), with the target's
leading mode byte where it has one; each is also kept in fuzz/corpus/<target>/ as a finding-*
file, so every fuzzing run replays it."""
from __future__ import annotations

import base64
import json
import os
import tarfile
import zlib

import pytest

from cri.config import ConfigError
from cri.config import load as load_config
from cri.seccomp_profile import load_localhost
from fuzz import archive as archive_target
from image.archive import ArchiveError, ArchiveSource
from image.unpack import LayerError, unpack_layer
from tests.fixtures.layers import entry, tar_bytes


def _packed(text: str) -> bytes:
    return zlib.decompress(base64.b64decode("".join(text.split())))


def _unpack(tmp_path, blob: bytes):
    tmp_path.mkdir(exist_ok=True)
    layer, dest = tmp_path / "layer", tmp_path / "dest"
    layer.write_bytes(blob)
    dest.mkdir()
    return unpack_layer(str(layer), None, str(dest))


def _need_root():
    if os.geteuid() != 0:
        pytest.skip("unpacking needs root: chown, mknod, trusted.* xattrs")


# -- unpack: a NUL byte in a pax path -------------------------------------------------------------
# tarfile takes any byte in a pax record; os.mkdir refused the name with ValueError ("embedded null
# byte"), which left unpack_layer as no error of a layer's, and a pull failed INTERNAL.

UNPACK_NUL_PATH = """
eNrtmbEOgjAQhuvK4DPwBNBre60OJo6OvkINJhqNMYgJjy+IcUEGBg6Tu78DTZcG6H13f2+R5Vm+3cd6d4zFsVSTSHcaemqnzXf+
XgdtAFRaKwI9H1Usm+0VTxlcpfdYnTYFT+WJYi2Kb9wGdUAcjP92DjaY4KBbt+DAqxQl/ifXf/Af+/x3wn8S/ntIr+fbhXMO4JwC
IsEebVB758bwH7Gp/wzFzxf+z87/EPr1v7HCfwqh9rzrf+a+R+p/4f/M/Idm9PjfWALhP8n9z5o3/w+JWCDeFkju/wjy/yj/h6it
Fv/HJf9b/6P/EyT/UyigE/8n7/1P+pzMpfT7pP8n9J9aL4Yp8ws=
"""


def test_a_nul_byte_in_a_pax_path_is_a_layer_error(tmp_path):
    with pytest.raises(LayerError, match="NUL byte in its name"):
        _unpack(tmp_path, _packed(UNPACK_NUL_PATH)[1:])


def test_a_nul_byte_in_a_symlink_target_or_an_xattr_name_is_a_layer_error(tmp_path):
    _need_root()
    # Long enough for tarfile to write them as pax records, which carry the NUL.
    link = entry("link", tarfile.SYMTYPE, link="a" * 120 + "\0b")
    with pytest.raises(LayerError, match="NUL byte in its target"):
        _unpack(tmp_path / "1", tar_bytes(link))
    named = entry("file", data=b"x", xattrs={"user.a\0b": b"v"})
    with pytest.raises(LayerError, match="xattr with a NUL byte"):
        _unpack(tmp_path / "2", tar_bytes(named))


# -- unpack: a symlink with an empty target --------------------------------------------------------
# symlink(2) refuses an empty target with ENOENT, which escaped unpack_layer as a plain OSError.

def test_a_symlink_with_an_empty_target_is_a_layer_error(tmp_path):
    _need_root()
    with pytest.raises(LayerError, match="symlink 'a' has an empty target"):
        _unpack(tmp_path, tar_bytes(entry("a", tarfile.SYMTYPE, link="")))


# -- unpack: a pax record whose length overflows --------------------------------------------------
# tarfile (3.11.7) let OverflowError ("Python int too large to convert to C ssize_t") out of its pax
# parsing.

UNPACK_PAX_OVERFLOW = """
eNpj1NPX03cISKzwSE1MSS1ioAkwgABctIGJgRGcDRY3NDAyNGRQqGCgAygtLkksAlrPMDKBkamFQkFiSYZtysgE+lwMIxrQI4xB
mdrc1BRn/gexDY3NjcxNDCHixoYmhmYMCqaj+Z/mYHCU/6aY5b/JaPlPl/LfAB2YGSpk2AIAb+m87Q==
"""


def test_a_pax_record_length_that_overflows_is_a_layer_error(tmp_path):
    with pytest.raises(LayerError, match="malformed tar header at byte 1536: Python int too large"):
        _unpack(tmp_path, _packed(UNPACK_PAX_OVERFLOW)[1:])


# -- unpack: a name part longer than a filesystem takes --------------------------------------------------
# A pax linkpath and path of 256 and more bytes: symlink() answered ENAMETOOLONG, an OSError that
# unpack_layer documents only for a failing destination filesystem. The same holds for other
# values a pax record may carry that no system call takes, fixed with it: an mtime of "nan", an
# owner past uid_t.

UNPACK_LONG_NAME = """
eNrtmLEKwjAQhuPap8gTtLkkl7gIjo6+QqQFRRGpFfr4phZcSocOPYW7r0NDlkDLfXd/NmVVVvtj6g9NqptWrYIZmXsbb+x3/dkH
YwGU7hUBr2eX2ny84onFrX6k7ryreVIVijUU33go6og4W//DGly00cO478BDUBql/lfnP/yPU/978T+J/wPo2+V+5dwDOLeARHDG
UNTB+yX+R8zzn6X4+eL/n/s/xun8b534nwI0gff8zzz3yPwv/v+x/yE/E//nSCD+p/A/ML//ORUSgXhHILn/I+j/i/IfonFG8h8F
byAtjSA=
"""


def test_a_name_part_over_255_bytes_is_a_layer_error(tmp_path):
    with pytest.raises(LayerError, match="longer than 255 bytes"):
        _unpack(tmp_path, _packed(UNPACK_LONG_NAME)[1:])


def test_a_path_over_path_max_is_a_layer_error(tmp_path):
    _need_root()
    deep = "/".join(["d" * 200] * 25)  # each part fine, the whole past PATH_MAX
    with pytest.raises(LayerError, match="File name too long"):
        _unpack(tmp_path, tar_bytes(entry(deep + "/f", data=b"x")))


@pytest.mark.parametrize("pax, words", [
    ({"mtime": "nan"}, "mtime that is no time"),
    ({"uid": "99999999999"}, "uid 99999999999, which is no user or group id"),
    ({"gid": "-5"}, "gid -5"),
])
def test_pax_values_no_system_call_takes_are_layer_errors(tmp_path, pax, words):
    _need_root()
    info, data = entry("f", data=b"x")
    info.pax_headers = pax
    with pytest.raises(LayerError, match=words):
        _unpack(tmp_path, tar_bytes((info, data)))


def test_an_mtime_far_in_the_future_is_kept_as_far_as_it_goes(tmp_path):
    _need_root()
    info, data = entry("f", data=b"x")
    info.pax_headers = {"mtime": "99999999999999.5"}
    _unpack(tmp_path, tar_bytes((info, data)))
    assert os.stat(tmp_path / "dest" / "f").st_mtime > 4e9  # past 2106; the filesystem's own limit


# -- unpack: an xattr the kernel refuses (found by a seed) -------------------------------------------
# setxattr answered EINVAL for a malformed security.capability, an OSError that unpack_layer
# documents only for a failing destination filesystem: the pull failed INTERNAL.

def test_a_malformed_file_capability_is_a_layer_error(tmp_path):
    _need_root()
    bad = entry("f", data=b"x", xattrs={"security.capability": b"\x01\x00"})
    with pytest.raises(LayerError, match="'security.capability' the kernel refuses"):
        _unpack(tmp_path, tar_bytes(bad))


# -- archive: an image name that is no reference -------------------------------------------------------
# ArchiveSource let the ReferenceError of a RepoTags entry out; Load caught only ArchiveError, so
# `cricket load` of such an archive failed with no status of its own.

ARCHIVE_BAD_TAG = (
    b'\x01[{"Config": "8ba1c3aa89c78ac00729c99eb1c08ce0edc4dbde311c74587512d5eb3aa84811.json", "Layers": '
    b'["0f1c60820d2de1eda87c94ea0a2ca6650de023caf00a3d3585f9b3244c0068f7.tar"], "RepoTags": '
    b'["docker.io/library/app:1@", "app:2"]}]'
)


def test_an_archive_image_name_that_is_no_reference_is_an_archive_error(tmp_path):
    archive_target._docker_dir(str(tmp_path), ARCHIVE_BAD_TAG[1:])
    with pytest.raises(ArchiveError, match=r"names an image 'docker.io/library/app:1@'"):
        ArchiveSource(str(tmp_path))


# -- archive: a digest spelled with a trailing slash --------------------------------------------------
# The blob path was made from the digest as written, and normpath dropped the slash: the index's
# manifest was read under a digest no hash gives, and the image recorded under that spelling.

def _oci_index(digest: str) -> bytes:
    return json.dumps({"manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                      "digest": digest, "size": len(archive_target._MANIFEST)}]}).encode()


ARCHIVE_DIGEST_SLASH = b"\x02" + _oci_index(archive_target._digest(archive_target._MANIFEST) + "/")


@pytest.mark.parametrize("spelling", ["{}/", "{}/.", "SHA256:{}", "sha256:./{}"])
def test_a_digest_in_another_spelling_is_an_archive_error(tmp_path, spelling):
    hex_part = archive_target._digest(archive_target._MANIFEST)[7:]
    digest = spelling.format("sha256:" + hex_part if spelling.startswith("{") else hex_part)
    archive_target._oci_dir(str(tmp_path), _oci_index(digest))
    with pytest.raises(ArchiveError, match=r"bad digest .* \(want sha256:<64 hex>\)"):
        ArchiveSource(str(tmp_path))


def test_the_fuzzers_trailing_slash_input_is_an_archive_error(tmp_path):
    archive_target._oci_dir(str(tmp_path), ARCHIVE_DIGEST_SLASH[1:])
    with pytest.raises(ArchiveError, match="bad digest"):
        ArchiveSource(str(tmp_path))


# -- seccomp_profile: an action that is an object ---------------------------------------------------------
# linux/seccomp.py looked the action up in a dict: TypeError (unhashable type: 'dict').

SECCOMP_ACTION_OBJECT = (
    b'\x03{"archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", '
    b'"SCMP_ARCH_X32"]}, {"architecture": "SCMP_ARCH_AARCH64", "subArchitercutes": ["SCMP_ARCH_ARM"]}], '
    b'"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"action": {"arches": ["s390x"], "caps": ["CAP_BPF"]}, '
    b'"names": ["bpf"]}]}'
)


@pytest.mark.parametrize("profile, words", [
    (SECCOMP_ACTION_OBJECT[1:], "syscalls[0].action: unknown action {'arches'"),
    (b'{"defaultAction": "SCMP_ACT_ERRNO", "architectures": [["SCMP_ARCH_X86"]]}', "architectures: unknown"),
    (b'{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", '
     b'"args": [{"index": 0, "op": {}}]}]}', "unknown op {}"),
    (b'{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", '
     b'"includes": {"caps": [7]}}]}', "includes.caps: want a list of strings"),
    (b'{"defaultAction": "SCMP_ACT_ERRNO", "archMap": [{"architecture": "SCMP_ARCH_X86_64", '
     b'"subArchitectures": 5}]}', "subArchitectures of SCMP_ARCH_X86_64: want a list"),
], ids=["action-object", "arch-list", "op-object", "cap-number", "sub-architectures-number"])
def test_seccomp_profile_values_of_the_wrong_type_are_value_errors(tmp_path, profile, words):
    path = tmp_path / "profile.json"
    path.write_bytes(profile)
    with pytest.raises(ValueError) as e:
        load_localhost(str(path), (), kernel=(5, 15), machine="x86_64")
    assert words in str(e.value) and str(path) in str(e.value)


# -- config: a file that is not UTF-8 ----------------------------------------------------------------------
# tomllib decodes the file itself and let UnicodeDecodeError out: cricketd died at start with a
# traceback instead of naming the file.

CONFIG_NOT_UTF8 = b"[image]\n\x90\x8a\x93\x93\xa0\x8d\x9a\x83ries = 0.5\n"


def test_a_config_file_that_is_not_utf8_is_a_config_error(tmp_path):
    path = tmp_path / "config.toml"
    path.write_bytes(CONFIG_NOT_UTF8)
    with pytest.raises(ConfigError, match=f"config file {path} is not UTF-8"):
        load_config(str(path))


# -- config: numbers that are not finite, arrays nested past the recursion limit -------------------
# TOML spells inf and nan: int() of them let OverflowError and ValueError out of load(); tomllib
# recurses once per nested array, so a deep one was a RecursionError. Found by CI's fuzzing.

@pytest.mark.parametrize("text, words", [
    ("image = { max_concurrent_downloads = inf }", "image.max_concurrent_downloads: want a finite number, got inf"),
    ("image = { pull_retries = nan }", "image.pull_retries: want a finite number, got nan"),
    ("tracing = { sampling_ratio = -inf }", "tracing.sampling_ratio: want a finite number, got -inf"),
    ("tracing = { sampling_ratio = 1.5 }", "tracing.sampling_ratio: must be at most 1.0, got 1.5"),
    ("streaming = { port = 65536 }", "streaming.port: must be at most 65535, got 65536"),
    ("socket = " + "[" * 1200 + "]" * 1200, "nested too deeply"),
])
def test_a_config_number_out_of_range_or_nesting_too_deep_is_a_config_error(tmp_path, text, words):
    path = tmp_path / "config.toml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError, match=words):
        load_config(str(path))


# -- JSON nested past the recursion limit ---------------------------------------------------------
# json.loads raises RecursionError, no ValueError, for some thousand nested arrays: a manifest, an
# image config or an archive's manifest.json of a kilobyte failed a pull or a load as INTERNAL.

DEEP_JSON = b"[" * 5000 + b"]" * 5000


def test_json_nested_too_deeply_is_each_parsers_own_error(tmp_path):
    from image.manifest import ManifestError, parse_config, parse_manifest
    with pytest.raises(ManifestError, match="manifest is not valid JSON"):
        parse_manifest(DEEP_JSON, None)
    with pytest.raises(ManifestError, match="image config is not valid JSON"):
        parse_config(DEEP_JSON)
    profile = tmp_path / "profile.json"
    profile.write_bytes(DEEP_JSON)
    with pytest.raises(ValueError, match="not valid JSON"):
        load_localhost(str(profile), (), kernel=(5, 15), machine="x86_64")
    from image.auth import AuthError, parse_token_response
    with pytest.raises(AuthError, match="not JSON"):
        parse_token_response(DEEP_JSON, 0.0)


# -- cni: a result whose ips is null -----------------------------------------------------------
# check_result takes a null list as an absent one, but result_from_any then iterated the null:
# TypeError, where a plugin printing {"ips": null} should give a pod no address, not a crash.

def test_a_cni_result_with_null_ips_reads_as_one_without_addresses():
    from cni.spec import result_for_version, result_from_any, result_ips
    result = result_from_any({"ips": None})
    assert result["cniVersion"] == "1.0.0" and result_ips(result, "eth0") == []
    assert result_from_any(result_for_version(result, "0.4.0")) == result
