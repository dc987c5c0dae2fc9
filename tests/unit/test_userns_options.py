"""The CRI's userns_options as Cricket reads and refuses them, and the OCI spec it makes of them."""
from __future__ import annotations

import pytest

from api.runtime.v1 import api_pb2 as pb
from cri import oci_spec, security
from cri.errors import InvalidArgument
from linux import mounts, namespaces


def mapping(container_id=0, host_id=100000, length=65536) -> pb.IDMapping:
    return pb.IDMapping(container_id=container_id, host_id=host_id, length=length)


def options(mode=pb.POD, uids=None, gids=None) -> pb.NamespaceOption:
    ns = pb.NamespaceOption()
    uids = [mapping()] if uids is None else uids
    gids = [mapping(host_id=200000)] if gids is None else gids
    ns.userns_options.CopyFrom(pb.UserNamespace(mode=mode, uids=uids, gids=gids))
    return ns


def pod(ns: pb.NamespaceOption, privileged=False) -> pb.PodSandboxConfig:
    config = pb.PodSandboxConfig()
    config.linux.security_context.namespace_options.CopyFrom(ns)
    config.linux.security_context.privileged = privileged
    return config


def test_pod_mode_gives_the_two_mappings():
    assert security.user_namespace(options(), "ns") == ((0, 100000, 65536), (0, 200000, 65536))


def test_no_options_and_node_mode_are_the_hosts():
    assert security.user_namespace(pb.NamespaceOption(), "ns") is None
    assert security.user_namespace(options(pb.NODE, [], []), "ns") is None


@pytest.mark.parametrize("ns,words", [
    (options(uids=[mapping(), mapping(host_id=300000)]), "exactly one uid mapping, got 2"),
    (options(gids=[]), "exactly one gid mapping, got 0"),
    (options(uids=[mapping(container_id=1)]), "container ID 0 must be mapped"),
    (options(pb.CONTAINER, [], []), "mode CONTAINER is not supported"),
    (options(pb.TARGET, [], []), "mode TARGET is not supported"),
    (options(pb.NODE), "mode NODE (the host's user namespace) takes no uid or gid mappings"),
    (options(uids=[mapping(length=0)]), "is empty or goes beyond the last id"),
    (options(uids=[mapping(host_id=2**32 - 2, length=2)]), "is empty or goes beyond the last id"),
])
def test_refusals(ns, words):
    with pytest.raises(InvalidArgument) as e:
        security.user_namespace(ns, "ns")
    assert words in str(e.value)


@pytest.mark.parametrize("kind", ["network", "ipc", "pid"])
def test_a_pod_with_a_user_namespace_shares_no_host_namespace(kind):
    ns = options()
    setattr(ns, kind, pb.NODE)
    with pytest.raises(InvalidArgument, match=f"can not share the host's {kind} namespace"):
        security.check_pod_user_namespace(pod(ns))


def test_a_pod_with_a_user_namespace_is_not_privileged():
    with pytest.raises(InvalidArgument, match="privileged"):
        security.check_pod_user_namespace(pod(options(), privileged=True))


def test_a_container_must_say_what_its_pod_says():
    ctx = pb.LinuxContainerSecurityContext()
    ctx.namespace_options.CopyFrom(options())
    security.check_container_user_namespace(ctx, pod(options()))
    with pytest.raises(InvalidArgument, match="must be its pod's"):
        security.check_container_user_namespace(pb.LinuxContainerSecurityContext(), pod(options()))
    with pytest.raises(InvalidArgument, match="must be its pod's"):
        security.check_container_user_namespace(ctx, pod(pb.NamespaceOption()))
    # NODE said or nothing said: both the host's.
    node = pb.LinuxContainerSecurityContext()
    node.namespace_options.CopyFrom(options(pb.NODE, [], []))
    security.check_container_user_namespace(node, pod(pb.NamespaceOption()))
    ctx.privileged = True
    with pytest.raises(InvalidArgument, match="can not be privileged"):
        security.check_container_user_namespace(ctx, pod(options()))


def test_bind_mounts_are_made_idmapped_with_the_containers_mappings():
    uids, gids = oci_spec.id_mappings((0, 100000, 65536)), oci_spec.id_mappings((0, 200000, 65536))
    assert uids == [{"containerID": 0, "hostID": 100000, "size": 65536}]
    specs = [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid"]},
        {"destination": "/data", "type": "bind", "source": "/v", "options": ["rbind", "rprivate", "rw"]},
        {"destination": "/etc/hosts", "type": "bind", "source": "/h", "options": ["bind", "ro"]},
    ]
    oci_spec.idmap_binds(specs, uids, gids)
    assert "uidMappings" not in specs[0] and "idmap" not in specs[0]["options"]
    assert specs[1]["options"][-1] == "ridmap" and specs[1]["uidMappings"] == uids and specs[1]["gidMappings"] == gids
    assert specs[2]["options"][-1] == "idmap"


def test_idmap_options_are_neither_flags_nor_data():
    flags, _, data = mounts.parse_options(["rbind", "ro", "ridmap", "idmap"])
    assert data == "" and flags == mounts.parse_options(["rbind", "ro"])[0]


def test_id_map_text():
    assert namespaces.id_map([(0, 100000, 65536)]) == "0 100000 65536\n"
