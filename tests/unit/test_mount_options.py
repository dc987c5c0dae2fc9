"""Recursive read-only mounts and ProcMount, on plain values: the "rro" option from the CRI's field
to the spec and to mount_setattr(2)'s attributes, the refusals, the /proc paths of a context, and
how a runtime handler's features are worked out."""
import errno
import os
import stat

import pytest

from api.runtime.v1 import api_pb2 as pb
from cri import handler_features, oci_spec, security
from cri.errors import InvalidArgument
from linux import libc
from linux.mounts import parse_options, recursive_attrs


def test_recursive_options_become_attributes_not_data():
    flags, prop, data = parse_options(["rbind", "rprivate", "ro", "rro", "rnosuid", "mode=755"])
    assert flags == libc.MS_BIND | libc.MS_REC | libc.MS_RDONLY
    assert prop == libc.MS_PRIVATE | libc.MS_REC
    assert data == "mode=755"  # "rro" as data would be ignored by a bind: the mount silently writable
    assert recursive_attrs(["rbind", "rro", "rnosuid"]) == (libc.MOUNT_ATTR_RDONLY | libc.MOUNT_ATTR_NOSUID, 0)
    assert recursive_attrs(["rbind", "ro", "rprivate"]) == (0, 0)


def test_a_later_recursive_word_wins():
    assert recursive_attrs(["rro", "rrw"]) == (0, libc.MOUNT_ATTR_RDONLY)
    assert recursive_attrs(["rrw", "rro"]) == (libc.MOUNT_ATTR_RDONLY, 0)
    # An access time is one field: setting a value clears the whole field, as the kernel demands.
    assert recursive_attrs(["rnoatime"]) == (libc.MOUNT_ATTR_NOATIME, libc.MOUNT_ATTR__ATIME)
    assert recursive_attrs(["rnoatime", "rstrictatime"]) == (libc.MOUNT_ATTR_STRICTATIME, libc.MOUNT_ATTR__ATIME)
    assert recursive_attrs(["rnoatime", "ratime", "rro"]) == (libc.MOUNT_ATTR_RDONLY, libc.MOUNT_ATTR__ATIME)


def test_mount_setattr_is_reached_and_names_its_error():
    assert libc.has_mount_setattr() in (True, False)
    if not libc.has_mount_setattr():
        pytest.skip("this kernel has no mount_setattr(2) (Linux 5.12 or later has it)")
    with pytest.raises(OSError) as e:
        libc.mount_setattr(-1, "", libc.AT_EMPTY_PATH | libc.AT_RECURSIVE, libc.MOUNT_ATTR_RDONLY, what="nothing")
    assert e.value.errno == errno.EBADF and "mount_setattr nothing" in str(e.value)


# -- the CRI's recursive_read_only to the spec -------------------------------------------------


def _mounts(*mounts: pb.Mount) -> list[dict]:
    return oci_spec.mounts(pb.ContainerConfig(mounts=list(mounts)), [], [])


def _bind(out: list[dict], destination: str) -> dict:
    return next(m for m in out if m["destination"] == destination)


def test_recursive_read_only_is_rro_beside_ro(tmp_path):
    if not libc.has_mount_setattr():
        pytest.skip("this kernel has no mount_setattr(2): recursive read-only mounts are refused")
    out = _mounts(pb.Mount(container_path="/rro", host_path=str(tmp_path), readonly=True, recursive_read_only=True),
                  pb.Mount(container_path="/ro", host_path=str(tmp_path), readonly=True))
    assert _bind(out, "/rro")["options"] == ["rbind", "rprivate", "ro", "rro"]
    assert _bind(out, "/ro")["options"] == ["rbind", "rprivate", "ro"]


def test_an_rro_bind_is_not_a_writable_directory(tmp_path):
    spec = {"mounts": [{"type": "bind", "source": str(tmp_path / "a"), "options": ["rbind", "rro"]},
                       {"type": "bind", "source": str(tmp_path / "b"), "options": ["rbind", "rw"]}]}
    assert oci_spec.writable_dirs([spec]) == {str(tmp_path / "b")}


@pytest.mark.parametrize("readonly,propagation,words", [
    (False, pb.PROPAGATION_PRIVATE, "needs readonly"),
    (True, pb.PROPAGATION_HOST_TO_CONTAINER, "PROPAGATION_HOST_TO_CONTAINER"),
    (True, pb.PROPAGATION_BIDIRECTIONAL, "PROPAGATION_BIDIRECTIONAL"),
    (False, pb.PROPAGATION_BIDIRECTIONAL, "needs readonly"),
], ids=["read-write", "host-to-container", "bidirectional", "both"])
def test_recursive_read_only_refusals_name_the_mount_and_make_nothing(tmp_path, readonly, propagation, words):
    missing = tmp_path / "not-made"
    m = pb.Mount(container_path="/data", host_path=str(missing), readonly=readonly, recursive_read_only=True,
                 propagation=propagation)
    with pytest.raises(InvalidArgument, match=words) as e:
        _mounts(m)
    assert "mount /data" in str(e.value) and str(missing) in str(e.value)
    assert not missing.exists()  # refused before the missing host path is made


def test_recursive_read_only_of_an_image_mount_is_rro_too(tmp_path):
    if not libc.has_mount_setattr():
        pytest.skip("this kernel has no mount_setattr(2): recursive read-only mounts are refused")
    m = pb.Mount(container_path="/img", image=pb.ImageSpec(image="x"), readonly=True, recursive_read_only=True)
    out = oci_spec.mounts(pb.ContainerConfig(mounts=[m]), [], [], {"/img": str(tmp_path)})
    assert _bind(out, "/img")["options"] == ["rbind", "rprivate", "ro", "rro"]


# -- ProcMount: the /proc paths of a context --------------------------------------------------


def test_proc_paths_are_the_contexts_exactly():
    default = pb.LinuxContainerSecurityContext(masked_paths=list(oci_spec.MASKED_PATHS),
                                               readonly_paths=list(oci_spec.READONLY_PATHS))
    assert security.proc_paths(default) == (list(oci_spec.MASKED_PATHS), list(oci_spec.READONLY_PATHS))
    # kubelet's procMount Unmasked: both lists empty, nothing masked or read-only.
    assert security.proc_paths(pb.LinuxContainerSecurityContext()) == ([], [])
    own = pb.LinuxContainerSecurityContext(masked_paths=["/bin/ls"], readonly_paths=["/etc"])
    assert security.proc_paths(own) == (["/bin/ls"], ["/etc"])
    default.privileged = True
    assert security.proc_paths(default) == ([], [])


# -- handler features ------------------------------------------------------------------------


def _runtime(tmp_path, name: str, script: str) -> str:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_a_runtime_that_lists_rro_in_its_features_has_it(tmp_path):
    listing = _runtime(tmp_path, "lists", """[ "$1" = features ] && echo '{"mountOptions": ["ro", "rro"]}'\n""")
    lacking = _runtime(tmp_path, "lacks", """[ "$1" = features ] && echo '{"mountOptions": ["ro"]}'\n""")
    assert handler_features.oci_runtime(listing).recursive_read_only_mounts is libc.has_mount_setattr()
    assert handler_features.oci_runtime(lacking).recursive_read_only_mounts is False


@pytest.mark.parametrize("version,want", [
    ("crun version 1.8.1\ncommit: f8a096b", True),  # Debian 12's: rro since 1.4, `features` since 1.9
    ("crun version 1.3", False),
    ("runc version 1.0.3", False),
    ("runc version 1.1.5+ds1", True),
    ("youki version 0.3.0", False),  # unknown: not assumed
])
def test_a_runtime_without_features_is_judged_by_its_version(tmp_path, version, want):
    script = (f"""[ "$1" = --version ] && printf '%s\\n' '{version}' && exit 0\n"""
              """echo unknown command "$1" >&2\nexit 1\n""")
    path = _runtime(tmp_path, f"rt-{abs(hash(version))}", script)
    assert handler_features.oci_runtime(path).recursive_read_only_mounts is (want and libc.has_mount_setattr())


def test_a_missing_runtime_has_no_features(tmp_path):
    assert handler_features.oci_runtime(str(tmp_path / "gone")) == handler_features.HandlerFeatures()
    assert not os.path.exists(tmp_path / "gone")
