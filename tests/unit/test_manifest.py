"""Manifest and index parsing, validation, and platform selection."""
import json
from unittest import mock

import pytest

from image import manifest as m
from image.manifest import (
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    Index,
    Manifest,
    ManifestError,
    Platform,
    host_platform,
    parse_manifest,
    select_platform,
)


def dg(c: str) -> str:
    return "sha256:" + c * 64


def image_manifest(media_type=OCI_MANIFEST, config_type=OCI_CONFIG, layer_type=OCI_LAYER_GZIP, with_type=True):
    doc = {
        "schemaVersion": 2,
        "config": {"mediaType": config_type, "digest": dg("c"), "size": 1469},
        "layers": [
            {"mediaType": layer_type, "digest": dg("1"), "size": 2000},
            {"mediaType": layer_type, "digest": dg("2"), "size": 32, "annotations": {"k": "v"}},
        ],
    }
    if with_type:
        doc["mediaType"] = media_type
    return doc


def entry(plat, c, media_type=OCI_MANIFEST):
    os_, arch, *variant = plat.split("/")
    p = {"os": os_, "architecture": arch}
    if variant:
        p["variant"] = variant[0]
    return {"mediaType": media_type, "digest": dg(c), "size": 500, "platform": p}


def index(*entries, media_type=OCI_INDEX):
    return {"schemaVersion": 2, "mediaType": media_type, "manifests": list(entries)}


def raw(doc) -> bytes:
    return json.dumps(doc).encode()


# -- the four kinds ------------------------------------------------------------


def test_oci_manifest():
    got = parse_manifest(raw(image_manifest()), OCI_MANIFEST)
    assert isinstance(got, Manifest)
    assert got.media_type == OCI_MANIFEST
    assert (got.config.media_type, got.config.digest, got.config.size) == (OCI_CONFIG, dg("c"), 1469)
    assert [(d.digest, d.size) for d in got.layers] == [(dg("1"), 2000), (dg("2"), 32)]
    assert got.layers[1].annotations == {"k": "v"}
    assert got.layers[0].platform is None


def test_docker_schema2_manifest():
    doc = image_manifest(DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER_GZIP)
    got = parse_manifest(raw(doc), "application/vnd.docker.distribution.manifest.v2+json; charset=utf-8")
    assert isinstance(got, Manifest) and got.media_type == DOCKER_MANIFEST
    assert got.config.media_type == DOCKER_CONFIG
    assert {d.media_type for d in got.layers} == {DOCKER_LAYER_GZIP}


def test_oci_index():
    doc = index(entry("linux/amd64", "a"), entry("linux/arm64/v8", "b"))
    doc["annotations"] = {"org.opencontainers.image.ref.name": "x"}
    got = parse_manifest(raw(doc), OCI_INDEX)
    assert isinstance(got, Index) and got.media_type == OCI_INDEX
    assert [str(d.platform) for d in got.manifests] == ["linux/amd64", "linux/arm64/v8"]
    assert got.annotations == {"org.opencontainers.image.ref.name": "x"}


def test_docker_manifest_list():
    doc = index(
        entry("linux/amd64", "a", DOCKER_MANIFEST), entry("linux/arm/v7", "b", DOCKER_MANIFEST),
        media_type=DOCKER_MANIFEST_LIST,
    )
    got = parse_manifest(raw(doc), DOCKER_MANIFEST_LIST)
    assert isinstance(got, Index) and got.media_type == DOCKER_MANIFEST_LIST
    assert got.manifests[1].platform == Platform("linux", "arm", "v7")


def test_platform_optional_fields():
    e = entry("windows/amd64", "a")
    e["platform"].update({"os.version": "10.0.17763.1", "os.features": ["win32k"]})
    got = parse_manifest(raw(index(e)), OCI_INDEX)
    assert got.manifests[0].platform == Platform("windows", "amd64", "", "10.0.17763.1", ["win32k"])


# -- which type a body is --------------------------------------------------------


@pytest.mark.parametrize("header", [None, "", "application/json", "text/plain; charset=utf-8"])
def test_type_falls_back_to_body_media_type(header):
    assert parse_manifest(raw(image_manifest(DOCKER_MANIFEST)), header).media_type == DOCKER_MANIFEST
    assert parse_manifest(raw(index(media_type=DOCKER_MANIFEST_LIST)), header).media_type == DOCKER_MANIFEST_LIST


def test_type_falls_back_to_shape():
    # OCI made mediaType optional in early versions; the fields tell which it is.
    assert isinstance(parse_manifest(raw(image_manifest(with_type=False)), None), Manifest)
    doc = index(entry("linux/amd64", "a"))
    del doc["mediaType"]
    assert parse_manifest(raw(doc), "application/octet-stream").media_type == OCI_INDEX


def test_header_without_body_type():
    got = parse_manifest(raw(image_manifest(with_type=False)), DOCKER_MANIFEST)
    assert got.media_type == DOCKER_MANIFEST


def test_header_and_body_disagreeing_is_refused():
    with pytest.raises(ManifestError, match="says"):
        parse_manifest(raw(image_manifest(OCI_MANIFEST)), OCI_INDEX)


def test_index_with_layers_or_manifest_with_manifests_is_refused():
    doc = index(entry("linux/amd64", "a"))
    doc["layers"] = []
    with pytest.raises(ManifestError, match="must not have config or layers"):
        parse_manifest(raw(doc), None)
    doc = image_manifest()
    doc["manifests"] = []
    with pytest.raises(ManifestError, match="must not have a manifests list"):
        parse_manifest(raw(doc), None)


@pytest.mark.parametrize(
    "doc,header",
    [
        ({"schemaVersion": 1, "name": "x", "tag": "latest", "fsLayers": [], "history": []}, None),
        ({"schemaVersion": 1, "fsLayers": []}, "application/vnd.docker.distribution.manifest.v1+prettyjws"),
        ({"schemaVersion": 1}, "application/vnd.docker.distribution.manifest.v1+json"),
    ],
)
def test_schema1_is_refused_with_advice(doc, header):
    with pytest.raises(ManifestError) as e:
        parse_manifest(raw(doc), header)
    assert "schema 1 is not supported" in str(e.value)
    assert "push the image again" in str(e.value)


@pytest.mark.parametrize(
    "data,why",
    [
        (b"", "not valid JSON"),
        (b"\xff\xfe garbage", "not valid JSON"),
        (b"<html>404</html>", "not valid JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b"{}", "neither an image manifest nor an index"),
        (b'{"mediaType": 5}', "not a string"),
        (b'{"mediaType": "application/vnd.example+json"}', "unsupported manifest media type"),
    ],
)
def test_garbage(data, why):
    with pytest.raises(ManifestError, match=why):
        parse_manifest(data, None)


def test_unsupported_schema_version():
    doc = image_manifest()
    doc["schemaVersion"] = 3
    with pytest.raises(ManifestError, match="schemaVersion"):
        parse_manifest(raw(doc), None)


@pytest.mark.parametrize(
    "change,why",
    [
        (lambda d: d.pop("config"), "no config"),
        (lambda d: d.pop("layers"), "no layers"),
        (lambda d: d.update(layers={}), "no layers"),
        (lambda d: d.update(config="x"), "config is not a descriptor"),
        (lambda d: d["config"].pop("digest"), "config: None is not a digest"),
        (lambda d: d["config"].update(digest="sha256:abc"), "malformed sha256"),
        (lambda d: d["config"].update(digest="sha256:" + "A" * 64), "malformed sha256"),
        (lambda d: d["config"].update(digest="md5:" + "a" * 32), "algorithm 'md5'"),
        (lambda d: d["layers"][1].update(size=-1), r"layers\[1\].size"),
        (lambda d: d["layers"][0].update(size="12"), r"layers\[0\].size"),
        (lambda d: d["layers"][0].update(size=True), r"layers\[0\].size"),
        (lambda d: d["layers"][0].pop("size"), r"layers\[0\].size"),
        (lambda d: d["layers"][0].update(annotations={"a": 1}), "annotations"),
        (lambda d: d["layers"][0].update(urls="http://x"), "urls"),
    ],
)
def test_descriptor_validation(change, why):
    doc = image_manifest()
    change(doc)
    with pytest.raises(ManifestError, match=why):
        parse_manifest(raw(doc), OCI_MANIFEST)


def test_sha512_digests_are_well_formed():
    doc = image_manifest()
    doc["layers"][0]["digest"] = "sha512:" + "b" * 128
    assert parse_manifest(raw(doc), None).layers[0].digest.startswith("sha512:")


def test_index_entry_validation():
    doc = index({"mediaType": OCI_MANIFEST, "digest": dg("a"), "size": 1, "platform": "linux"})
    with pytest.raises(ManifestError, match=r"manifests\[0\].platform"):
        parse_manifest(raw(doc), None)
    with pytest.raises(ManifestError, match="no manifests list"):
        parse_manifest(raw({"mediaType": OCI_INDEX}), None)


# -- platforms -----------------------------------------------------------------

ATTESTATION = {
    "mediaType": OCI_MANIFEST,
    "digest": dg("9"),
    "size": 840,
    "platform": {"os": "unknown", "architecture": "unknown"},
    "annotations": {"vnd.docker.reference.type": "attestation-manifest"},
}


def pick(idx_doc, want: str) -> str:
    os_, arch, *variant = want.split("/")
    got = select_platform(parse_manifest(raw(idx_doc), None), Platform(os_, arch, variant[0] if variant else ""))
    return got.digest[7]


MULTI = index(
    ATTESTATION,
    entry("linux/amd64", "a"),
    entry("linux/arm64/v8", "b"),
    entry("linux/arm/v7", "c"),
    entry("linux/arm/v6", "d"),
    entry("linux/s390x", "e"),
)


@pytest.mark.parametrize(
    "want,digest_char",
    [
        ("linux/amd64", "a"),
        ("linux/x86_64", "a"),
        ("linux/arm64", "b"),
        ("linux/arm64/v8", "b"),
        ("linux/aarch64", "b"),
        ("linux/arm/v7", "c"),
        ("linux/arm", "c"),  # a bare arm means v7
        ("linux/arm/v6", "d"),
        ("linux/s390x", "e"),
    ],
)
def test_select_exact(want, digest_char):
    assert pick(MULTI, want) == digest_char


def test_arm64_entry_without_variant_matches_v8_host():
    doc = index(entry("linux/amd64", "a"), entry("linux/arm64", "b"))
    assert pick(doc, "linux/arm64/v8") == "b"
    assert pick(doc, "linux/arm64") == "b"


def test_arm_falls_back_to_lower_variants_in_order():
    doc = index(entry("linux/arm/v5", "5"), entry("linux/arm/v6", "6"))
    assert pick(doc, "linux/arm/v7") == "6"
    assert pick(doc, "linux/arm/v6") == "6"
    assert pick(index(entry("linux/arm/v5", "5")), "linux/arm/v7") == "5"
    with pytest.raises(ManifestError, match="no image for platform"):
        pick(index(entry("linux/arm/v7", "7")), "linux/arm/v6")  # never upwards


def test_arm64_host_runs_32_bit_arm_as_a_last_resort():
    doc = index(entry("linux/arm/v7", "7"), entry("linux/amd64", "a"))
    assert pick(doc, "linux/arm64") == "7"
    assert pick(index(entry("linux/arm/v7", "7"), entry("linux/arm64", "b")), "linux/arm64") == "b"


def test_amd64_host_runs_386_as_a_last_resort():
    doc = index(entry("linux/386", "3"), entry("linux/arm64", "b"))
    assert pick(doc, "linux/amd64") == "3"
    assert pick(index(entry("linux/386", "3"), entry("linux/amd64", "a")), "linux/amd64") == "a"


def test_amd64_micro_architecture_levels():
    doc = index(entry("linux/amd64/v3", "3"), entry("linux/amd64", "1"))
    assert pick(doc, "linux/amd64") == "1"  # a plain amd64 host cannot run v3 code
    assert pick(doc, "linux/amd64/v3") == "3"
    assert pick(index(entry("linux/amd64/v2", "2"), entry("linux/amd64", "1")), "linux/amd64/v3") == "2"


def test_os_must_match():
    with pytest.raises(ManifestError, match="no image for platform"):
        pick(index(entry("windows/amd64", "f")), "linux/amd64")


def test_entry_without_platform_is_a_last_resort():
    bare = {"mediaType": OCI_MANIFEST, "digest": dg("0"), "size": 3}
    assert pick(index(bare, entry("linux/amd64", "a")), "linux/amd64") == "a"
    assert pick(index(bare, entry("linux/arm64", "b")), "linux/amd64") == "0"


def test_attestations_and_nested_indexes_are_never_chosen():
    nested = entry("linux/amd64", "b", OCI_INDEX)
    with pytest.raises(ManifestError, match="no image for platform") as e:
        pick(index(ATTESTATION, nested), "linux/amd64")
    assert "unknown" not in str(e.value)


def test_nothing_matching_lists_what_is_offered():
    doc = index(ATTESTATION, entry("linux/arm64/v8", "b"), entry("linux/arm/v7", "c"), entry("linux/arm/v7", "d"))
    with pytest.raises(ManifestError) as e:
        pick(doc, "linux/amd64")
    msg = str(e.value)
    assert "linux/amd64" in msg
    assert "offers linux/arm64/v8, linux/arm/v7" in msg
    assert "unknown" not in msg
    with pytest.raises(ManifestError, match="no platforms at all"):
        pick(index(ATTESTATION), "linux/amd64")


@pytest.mark.parametrize(
    "machine,want",
    [
        ("x86_64", Platform("linux", "amd64")),
        ("aarch64", Platform("linux", "arm64", "v8")),
        ("armv7l", Platform("linux", "arm", "v7")),
        ("armv6l", Platform("linux", "arm", "v6")),
        ("i686", Platform("linux", "386")),
        ("ppc64le", Platform("linux", "ppc64le")),
        ("s390x", Platform("linux", "s390x")),
        ("riscv64", Platform("linux", "riscv64")),
    ],
)
def test_host_platform(machine, want):
    with mock.patch.object(m._platform, "machine", return_value=machine):
        assert host_platform() == want


def test_host_platform_here_is_selectable():
    here = host_platform()
    plat = f"{here.os}/{here.architecture}" + (f"/{here.variant}" if here.variant else "")
    assert select_platform(parse_manifest(raw(index(entry(plat, "f"))), None), here).digest == dg("f")
