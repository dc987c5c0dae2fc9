"""CRI and image config to OCI spec: the rules, on plain values."""
import pytest

from api.runtime.v1 import api_pb2 as pb
from cri import oci_spec
from cri.errors import InvalidArgument
from linux import caps as caps_module


def config(**kw) -> pb.ContainerConfig:
    return pb.ContainerConfig(**kw)


@pytest.mark.parametrize("command,args,image,want", [
    ([], [], {"Entrypoint": ["/ep"], "Cmd": ["c1"]}, ["/ep", "c1"]),
    (["/cmd"], [], {"Entrypoint": ["/ep"], "Cmd": ["c1"]}, ["/cmd"]),          # command replaces both
    ([], ["a1"], {"Entrypoint": ["/ep"], "Cmd": ["c1"]}, ["/ep", "a1"]),       # args replace Cmd only
    (["/cmd"], ["a1"], {"Entrypoint": ["/ep"], "Cmd": ["c1"]}, ["/cmd", "a1"]),
    ([], [], {"Cmd": ["sh"]}, ["sh"]),
])
def test_process_args_follow_docker(command, args, image, want):
    assert oci_spec.process_args(config(command=command, args=args), image) == want


def test_no_command_anywhere_is_invalid():
    with pytest.raises(InvalidArgument, match="no command"):
        oci_spec.process_args(config(), {})


def test_environment_config_wins_and_path_defaults():
    env = oci_spec.environment(config(envs=[pb.KeyValue(key="A", value=b"config"), pb.KeyValue(key="B", value=b"")]),
                               {"Env": ["A=image", "C=image"]}, "host")
    assert env[:1] == ["HOSTNAME=host"]
    assert "A=config" in env and "C=image" in env and "B=" in env and "A=image" not in env
    assert any(e.startswith("PATH=/usr/local/sbin") for e in env)


@pytest.fixture
def rootfs(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\nweb:x:33:33::/:/bin/sh\n")
    (tmp_path / "etc" / "group").write_text("root:x:0:\napp:x:1000:\nwww:x:33:\nextra:x:500:app,web\n")
    return str(tmp_path)


@pytest.mark.parametrize("user,group,supp,want", [
    ("0", None, [], {"uid": 0, "gid": 0, "additionalGids": [0]}),
    ("app", None, [], {"uid": 1000, "gid": 1000, "additionalGids": [500, 1000]}),
    ("1000", None, [], {"uid": 1000, "gid": 1000, "additionalGids": [500, 1000]}),  # a uid finds its entry
    ("4242", None, [], {"uid": 4242, "gid": 0, "additionalGids": [0]}),             # unknown uid: group 0
    ("app:www", None, [], {"uid": 1000, "gid": 33, "additionalGids": [33, 500]}),
    ("web:7", None, [9], {"uid": 33, "gid": 7, "additionalGids": [7, 9, 500]}),
    ("app", 20, [], {"uid": 1000, "gid": 20, "additionalGids": [20, 500]}),         # run_as_group wins
])
def test_users_are_resolved_in_the_containers_own_files(rootfs, user, group, supp, want):
    assert oci_spec.resolve_user(rootfs, user, group, supp) == want


def test_unknown_user_or_group_name_is_invalid(rootfs):
    with pytest.raises(InvalidArgument, match="nobody"):
        oci_spec.resolve_user(rootfs, "nobody", None, [])
    with pytest.raises(InvalidArgument, match="staff"):
        oci_spec.resolve_user(rootfs, "app:staff", None, [])


def test_user_string_prefers_the_security_context():
    ctx = pb.LinuxContainerSecurityContext()
    assert oci_spec.user_string(ctx, {"User": "app:www"}) == ("app:www", None)
    ctx.run_as_group.value = 5
    with pytest.raises(InvalidArgument, match="run_as_group is set without run_as_user"):
        oci_spec.user_string(ctx, {"User": "app:www"})
    ctx.run_as_user.value = 7
    assert oci_spec.user_string(ctx, {"User": "app"}) == ("7", 5)
    ctx.run_as_username = "web"
    assert oci_spec.user_string(ctx, {}) == ("web", 5)
    assert oci_spec.user_string(pb.LinuxContainerSecurityContext(), {}) == ("0", None)


def caps(add=(), drop=()):
    ctx = pb.LinuxContainerSecurityContext(capabilities=pb.Capability(add_capabilities=add, drop_capabilities=drop))
    return oci_spec.capabilities(ctx)


def test_capabilities_in_containerds_order():
    assert caps() == list(oci_spec.DEFAULT_CAPS)
    assert "CAP_NET_ADMIN" in caps(add=["NET_ADMIN"]) and "CAP_CHOWN" not in caps(drop=["CHOWN"])
    assert caps(drop=["ALL"], add=["NET_BIND_SERVICE"]) == ["CAP_NET_BIND_SERVICE"]
    everything = caps(add=["ALL"], drop=["SYS_ADMIN"])
    assert "CAP_SYS_ADMIN" not in everything and "CAP_SYS_MODULE" in everything
    assert set(everything) <= set(caps_module.bounding())  # "all" is what the runtime holds
    assert caps(drop=["ALL"]) == []
    with pytest.raises(InvalidArgument, match="FLY"):
        caps(add=["FLY"])


def test_mounts_shallow_first_and_cri_mounts_win(tmp_path):
    host = tmp_path / "h"
    cfg = config(mounts=[pb.Mount(container_path="/a/b/c", host_path=str(host / "c")),
                         pb.Mount(container_path="/etc/hosts", host_path=str(host / "kubelet-hosts"), readonly=True),
                         pb.Mount(container_path="/a", host_path=str(host / "a"))])
    sandbox = [pb.Mount(container_path="/etc/hosts", host_path=str(host / "sandbox-hosts")),
               pb.Mount(container_path="/etc/hostname", host_path=str(host / "hostname"))]
    out = oci_spec.mounts(cfg, sandbox, [("/data", str(host / "vol"))])
    binds = [m for m in out if m["type"] == "bind"]
    assert [m["destination"] for m in binds] == ["/a", "/data", "/etc/hosts", "/etc/hostname", "/a/b/c"]
    hosts = next(m for m in binds if m["destination"] == "/etc/hosts")
    assert hosts["source"].endswith("kubelet-hosts") and "ro" in hosts["options"]
    assert (host / "c").is_dir()  # a missing host path is made, as kubelet expects
    assert oci_spec.root_propagation(out) is None
    assert oci_spec.root_propagation([{"options": ["rbind", "rslave"]}]) == "rslave"
    assert oci_spec.root_propagation([{"options": ["rslave"]}, {"options": ["rshared"]}]) == "rshared"
    assert [m["destination"] for m in out[:2]] == ["/proc", "/dev"]


def test_a_cri_dev_mount_replaces_every_default_under_dev(tmp_path):
    cfg = config(mounts=[pb.Mount(container_path="/dev", host_path=str(tmp_path))])
    out = oci_spec.mounts(cfg, [], [])
    assert not [m for m in out if m["destination"].startswith("/dev/")]


def test_relative_container_path_is_invalid(tmp_path):
    with pytest.raises(InvalidArgument, match="absolute"):
        oci_spec.mounts(config(mounts=[pb.Mount(container_path="rel", host_path=str(tmp_path))]), [], [])


@pytest.mark.parametrize("propagation", [pb.PROPAGATION_BIDIRECTIONAL, pb.PROPAGATION_HOST_TO_CONTAINER])
def test_propagation_from_a_private_mount_is_refused(tmp_path, propagation):
    # tmp_path sits on a private mount on this host (the root is private here).
    cfg = config(mounts=[pb.Mount(container_path="/p", host_path=str(tmp_path), propagation=propagation)])
    point, optional = oci_spec.mount_of(str(tmp_path))
    if any(o.startswith(("shared:", "master:")) for o in optional):
        pytest.skip(f"{point} propagates on this host")
    with pytest.raises(InvalidArgument, match="propagation needs"):
        oci_spec.mounts(cfg, [], [])
