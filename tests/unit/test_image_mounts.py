"""Mount.image (image volumes) on plain values: what is refused, how the spec binds an image, and
what ContainerStatus reports. The mounting itself is tested on the kernel in tests/test_image_mounts.py."""
import pytest

from api.runtime.v1 import api_pb2 as pb
from cri import image_mounts, oci_spec
from cri.errors import InvalidArgument

IMAGE = "registry.example/tools:1"


def image_mount(path="/mnt/tools", **kw) -> pb.Mount:
    kw.setdefault("readonly", True)
    return pb.Mount(container_path=path, image=pb.ImageSpec(image=IMAGE), **kw)


def test_a_read_only_image_mount_and_host_paths_pass():
    image_mounts.check([image_mount(), image_mount("/mnt/etc", image_sub_path="etc"),
                        pb.Mount(container_path="/data", host_path="/srv/data")])


@pytest.mark.parametrize("mount, words", [
    (image_mount(host_path="/srv/data"), "host_path '/srv/data' and image 'registry.example/tools:1' are both set"),
    (image_mount(readonly=False), "can only be mounted read-only"),
    (pb.Mount(container_path="/mnt/etc", host_path="/srv", image_sub_path="etc"), "image_sub_path 'etc' is set but"),
], ids=["host-path-too", "writable", "sub-path-without-image"])
def test_refusals_name_the_mount_and_the_field(mount, words):
    with pytest.raises(InvalidArgument, match=f"mount {mount.container_path}: .*{words}"):
        image_mounts.check([pb.Mount(container_path="/ok", host_path="/srv"), mount])


def test_the_spec_binds_the_mounted_image_read_only_and_private(tmp_path):
    source = str(tmp_path / "image-mounts" / "0" / "etc")
    cfg = pb.ContainerConfig(mounts=[
        image_mount("/mnt/etc", image_sub_path="etc", propagation=pb.PROPAGATION_HOST_TO_CONTAINER),
    ])
    [bind] = [m for m in oci_spec.mounts(cfg, [], [], {"/mnt/etc": source}) if m["type"] == "bind"]
    assert bind == {"destination": "/mnt/etc", "type": "bind", "source": source,
                    "options": ["rbind", "rprivate", "ro"]}
    assert not (tmp_path / "image-mounts").exists()  # an image's source is never made, as a host path is


def test_status_reports_the_image_id_each_mount_resolved_to():
    mounts = [image_mount("/a"), pb.Mount(container_path="/b", host_path="/srv"), image_mount("/c")]
    image_mounts.report([{"container_path": "/a", "image_id": "sha256:" + "a" * 64, "chain_id": ""},
                         {"container_path": "/c", "image_id": "sha256:" + "c" * 64, "chain_id": ""}], mounts)
    assert [m.image.image_ref for m in mounts] == ["sha256:" + "a" * 64, "", "sha256:" + "c" * 64]
    assert mounts[0].image.image == IMAGE  # as the config named it
