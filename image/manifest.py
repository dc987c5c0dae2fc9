"""Image manifests and indexes: parsing, validation and platform selection.

Pure functions over bytes. Both the OCI formats and Docker's schema 2 formats
(which the OCI ones were copied from) are read into the same classes; Docker's
schema 1 is refused, as containerd 2 and CRI-O refuse it.
"""
from __future__ import annotations

import json
import platform as _platform
import re
from dataclasses import dataclass, field
from typing import cast

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"

OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"

OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_NONDISTRIBUTABLE = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_LAYER_NONDISTRIBUTABLE_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_LAYER_NONDISTRIBUTABLE_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_ZSTD = "application/vnd.docker.image.rootfs.diff.tar.zstd"
DOCKER_FOREIGN_LAYER_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
CONFIG_TYPES = frozenset({OCI_CONFIG, DOCKER_CONFIG})
LAYER_TYPES = frozenset(
    {
        OCI_LAYER,
        OCI_LAYER_GZIP,
        OCI_LAYER_ZSTD,
        OCI_LAYER_NONDISTRIBUTABLE,
        OCI_LAYER_NONDISTRIBUTABLE_GZIP,
        OCI_LAYER_NONDISTRIBUTABLE_ZSTD,
        DOCKER_LAYER,
        DOCKER_LAYER_GZIP,
        DOCKER_LAYER_ZSTD,
        DOCKER_FOREIGN_LAYER_GZIP,
    }
)
# What a client asks a registry for, in order of preference.
ACCEPTED_MANIFEST_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST)

_SCHEMA1_TYPES = frozenset({DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED})
# Content types that say nothing about which manifest a body is.
_GENERIC_TYPES = frozenset({"", "application/json", "text/plain", "application/octet-stream"})
_DIGESTS = {"sha256": re.compile(r"[a-f0-9]{64}"), "sha512": re.compile(r"[a-f0-9]{128}")}


class ManifestError(Exception):
    """A manifest or index that cannot be used; the message says what is wrong with it."""


@dataclass
class Platform:
    os: str
    architecture: str
    variant: str = ""
    os_version: str = ""
    os_features: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


@dataclass
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    annotations: dict[str, str] = field(default_factory=dict)
    urls: list[str] = field(default_factory=list)


@dataclass
class Manifest:
    media_type: str
    config: Descriptor
    layers: list[Descriptor]
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass
class Index:
    media_type: str
    manifests: list[Descriptor]
    annotations: dict[str, str] = field(default_factory=dict)


def detect_media_type(doc: dict, content_type: str | None) -> str:
    """Which manifest type a decoded body is: the Content-Type, else its mediaType, else its shape.

    A Content-Type and a body mediaType that disagree are refused: trusting either
    one lets a registry pass off an index as a manifest or the reverse.
    """
    header = (content_type or "").split(";", 1)[0].strip().lower()
    body = doc.get("mediaType")
    if body is not None and not isinstance(body, str):
        raise ManifestError("manifest mediaType is not a string")
    if header in _GENERIC_TYPES:
        header = ""
    if header and body and header != body:
        raise ManifestError(f"registry says the manifest is {header} but its mediaType says {body}")
    if header or body:
        return header or cast(str, body)  # a non-empty str when the header is empty
    if doc.get("schemaVersion") == 1 or "fsLayers" in doc:
        return DOCKER_SCHEMA1
    if "manifests" in doc:
        return OCI_INDEX
    if "config" in doc or "layers" in doc:
        return OCI_MANIFEST
    raise ManifestError("document is neither an image manifest nor an index (no config, layers or manifests)")


def parse_manifest(data: bytes, media_type: str | None) -> Manifest | Index:
    """Parse and validate a manifest or index served with Content-Type `media_type`."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ManifestError(f"manifest is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ManifestError("manifest is not a JSON object")
    kind = detect_media_type(doc, media_type)
    if kind in _SCHEMA1_TYPES:
        raise ManifestError(
            "Docker image manifest schema 1 is not supported (it was deprecated in 2017); "
            "push the image again with a current docker, buildah or skopeo to get schema 2 or OCI"
        )
    schema = doc.get("schemaVersion")
    if schema is not None and schema != 2:
        raise ManifestError(f"unsupported manifest schemaVersion {schema!r} (want 2)")
    annotations = _annotations(doc.get("annotations"), "manifest")

    if kind in INDEX_TYPES:
        if "layers" in doc or "config" in doc:
            raise ManifestError(f"{kind} must not have config or layers")
        entries = doc.get("manifests")
        if not isinstance(entries, list):
            raise ManifestError("index has no manifests list")
        return Index(kind, [_descriptor(e, f"manifests[{i}]") for i, e in enumerate(entries)], annotations)

    if kind in MANIFEST_TYPES:
        if "manifests" in doc:
            raise ManifestError(f"{kind} must not have a manifests list")
        if "config" not in doc:
            raise ManifestError("manifest has no config descriptor")
        layers = doc.get("layers")
        if not isinstance(layers, list):
            raise ManifestError("manifest has no layers list")
        return Manifest(
            kind,
            _descriptor(doc["config"], "config"),
            [_descriptor(e, f"layers[{i}]") for i, e in enumerate(layers)],
            annotations,
        )
    raise ManifestError(f"unsupported manifest media type {kind!r}")


def _descriptor(d: object, where: str) -> Descriptor:
    if not isinstance(d, dict):
        raise ManifestError(f"{where} is not a descriptor object")
    media_type = d.get("mediaType", "")
    if not isinstance(media_type, str):
        raise ManifestError(f"{where}.mediaType is not a string")
    digest = d.get("digest")
    check_digest(digest, where)
    size = d.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ManifestError(f"{where}.size {size!r} is not a non-negative integer")
    urls = d.get("urls") or []
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise ManifestError(f"{where}.urls is not a list of strings")
    plat = d.get("platform")
    return Descriptor(
        media_type,
        cast(str, digest),  # check_digest refused anything but a str
        size,
        _platform_of(plat, where) if plat is not None else None,
        _annotations(d.get("annotations"), where),
        urls,
    )


def check_digest(digest: object, where: str = "digest") -> str:
    """Refuse anything but a well-formed sha256 or sha512 digest."""
    if not isinstance(digest, str) or ":" not in digest:
        raise ManifestError(f"{where}: {digest!r} is not a digest (want sha256:<64 hex>)")
    algorithm, _, encoded = digest.partition(":")
    pattern = _DIGESTS.get(algorithm)
    if pattern is None:
        raise ManifestError(f"{where}: digest algorithm {algorithm!r} is not supported")
    if not pattern.fullmatch(encoded):
        raise ManifestError(f"{where}: malformed {algorithm} digest {digest!r}")
    return digest


def _platform_of(p: object, where: str) -> Platform:
    if not isinstance(p, dict):
        raise ManifestError(f"{where}.platform is not an object")
    values = {k: p.get(k, "") for k in ("os", "architecture", "variant", "os.version")}
    for k, v in values.items():
        if not isinstance(v, str):
            raise ManifestError(f"{where}.platform.{k} is not a string")
    features = p.get("os.features") or []
    if not isinstance(features, list):
        raise ManifestError(f"{where}.platform.os.features is not a list")
    return Platform(values["os"], values["architecture"], values["variant"], values["os.version"], features)


def _annotations(a: object, where: str) -> dict[str, str]:
    if a is None:
        return {}
    if not isinstance(a, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in a.items()):
        raise ManifestError(f"{where}.annotations is not a map of strings")
    return dict(a)


# -- image configs ---------------------------------------------------------

# The fields of an image config's "config" that Cricket reads, and the JSON type each must have
# (null is allowed for each): Docker's and the OCI image spec's.
_CONFIG_LISTS = ("Entrypoint", "Cmd", "Env", "OnBuild", "Shell")
_CONFIG_STRINGS = ("User", "WorkingDir", "StopSignal")
_CONFIG_OBJECTS = ("Volumes", "ExposedPorts")


def parse_config(data: bytes) -> dict:
    """An image config (application/vnd.oci.image.config.v1+json or Docker's), checked where
    Cricket reads it: rootfs.diff_ids a list of digests, the container defaults under "config"
    (Entrypoint, Cmd, Env lists of strings; User, WorkingDir, StopSignal strings; Volumes,
    ExposedPorts objects; Labels a map of strings), history a list of objects. Raises
    ManifestError naming the field. The config comes from whoever published the image, and its
    fields end up in every container made of it: one of the wrong type would fail those in
    ways that name nothing."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ManifestError(f"image config is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ManifestError("image config is not a JSON object")
    rootfs = doc.get("rootfs")
    if rootfs is None:
        rootfs = {}  # no layers: the puller checks that the manifest has none either
    if not isinstance(rootfs, dict):
        raise ManifestError("image config rootfs is not an object")
    diff_ids = rootfs.get("diff_ids")
    if diff_ids is None:
        diff_ids = []
    if not isinstance(diff_ids, list):
        raise ManifestError("image config rootfs.diff_ids is not a list")
    for i, diff_id in enumerate(diff_ids):
        check_digest(diff_id, f"image config rootfs.diff_ids[{i}]")
    defaults = doc.get("config")
    if defaults is not None:
        if not isinstance(defaults, dict):
            raise ManifestError("image config field config is not an object")
        for key in _CONFIG_LISTS:
            value = defaults.get(key)
            if value is not None and (not isinstance(value, list) or not all(isinstance(v, str) for v in value)):
                raise ManifestError(f"image config config.{key} is not a list of strings")
        for key in _CONFIG_STRINGS:
            if not isinstance(defaults.get(key, ""), (str, type(None))):
                raise ManifestError(f"image config config.{key} is not a string")
        for key in _CONFIG_OBJECTS:
            if not isinstance(defaults.get(key) or {}, dict):
                raise ManifestError(f"image config config.{key} is not an object")
        _annotations(defaults.get("Labels"), "image config config.Labels")
    history = doc.get("history")
    if history is not None:
        if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
            raise ManifestError("image config history is not a list of objects")
        for i, h in enumerate(history):
            for key in ("created", "created_by", "author", "comment"):
                if not isinstance(h.get(key, ""), (str, type(None))):
                    raise ManifestError(f"image config history[{i}].{key} is not a string")
            if not isinstance(h.get("empty_layer", False), (bool, type(None))):
                raise ManifestError(f"image config history[{i}].empty_layer is not true or false")
    return doc


# -- platforms -------------------------------------------------------------

_MACHINES = {
    "x86_64": ("amd64", ""),
    "amd64": ("amd64", ""),
    "i386": ("386", ""),
    "i686": ("386", ""),
    "aarch64": ("arm64", "v8"),
    "arm64": ("arm64", "v8"),
    "armv8l": ("arm", "v8"),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "armv5tel": ("arm", "v5"),
    "ppc64le": ("ppc64le", ""),
    "s390x": ("s390x", ""),
    "riscv64": ("riscv64", ""),
    "loongarch64": ("loong64", ""),
}


def host_platform() -> Platform:
    """The platform this machine runs, in the GOOS/GOARCH words image indexes use."""
    machine = _platform.machine().lower()
    arch, variant = _MACHINES.get(machine, (machine, ""))
    return Platform("linux", arch, variant)


def normalize_platform(p: Platform) -> Platform:
    """The canonical spelling of a platform, so that equal platforms compare equal.

    arm64's baseline variant v8 is written "", a bare "arm" means v7, and the
    Debian/uname spellings map to Go's.
    """
    os_ = p.os.lower()
    arch, variant = p.architecture.lower(), p.variant.lower()
    if arch in ("x86_64", "x86-64", "amd64"):
        arch = "amd64"
        variant = "" if variant == "v1" else variant
    elif arch == "i386":
        arch, variant = "386", ""
    elif arch in ("aarch64", "arm64"):
        arch = "arm64"
        variant = "" if variant in ("8", "v8") else variant
    elif arch == "armhf":
        arch, variant = "arm", "v7"
    elif arch == "armel":
        arch, variant = "arm", "v6"
    elif arch == "arm":
        if variant in ("", "7"):
            variant = "v7"
        elif variant in ("5", "6", "8"):
            variant = "v" + variant
    return Platform(os_, arch, variant, p.os_version, list(p.os_features))


def compatible_platforms(want: Platform) -> list[Platform]:
    """What a host of platform `want` runs, best first (containerd's platforms.Only).

    An arm64 host also runs 32-bit arm down to v5, an arm/vN host runs every
    lower arm variant, and an amd64 host runs 386.
    """
    want = normalize_platform(want)
    out = [want]
    if want.architecture == "amd64":
        level = _variant_number(want.variant)
        if level and level > 1:
            out += [Platform(want.os, "amd64", f"v{n}" if n > 1 else "") for n in range(level - 1, 0, -1)]
        out.append(Platform(want.os, "386"))
    elif want.architecture == "arm":
        level = _variant_number(want.variant)
        if level:
            out += [Platform(want.os, "arm", f"v{n}") for n in range(level - 1, 4, -1)]
    elif want.architecture == "arm64":
        major, _, minor = (want.variant or "v8").partition(".")
        major_n, minor_n = _variant_number(major), int(minor) if minor.isdigit() else 0
        if major_n == 9:
            out += [Platform(want.os, "arm64", f"v9.{n}" if n else "v9") for n in range(minor_n - 1, -1, -1)]
            # v9.x implements v8.(x+5): the two lines diverged after v8.5.
            major_n, minor_n = 8, minor_n + 5
            out.append(Platform(want.os, "arm64", f"v8.{minor_n}"))
        if major_n == 8:
            out += [Platform(want.os, "arm64", f"v8.{n}" if n else "") for n in range(minor_n - 1, -1, -1)]
        out += [Platform(want.os, "arm", f"v{n}") for n in range(8, 4, -1)]
    return out


def _variant_number(variant: str) -> int | None:
    v = variant[1:] if variant.startswith("v") else variant
    return int(v) if v.isdigit() else None


def _same(a: Platform, b: Platform) -> bool:
    return (a.os, a.architecture, a.variant) == (b.os, b.architecture, b.variant)


def select_platform(index: Index, want: Platform) -> Descriptor:
    """The index entry a host of platform `want` should run.

    Entries are ranked by compatible_platforms(); an entry without a platform is
    a last resort, as in containerd. Only image manifests are chosen: never an
    attestation (platform unknown/unknown) nor a nested index.
    """
    ranked = compatible_platforms(want)
    best, best_rank = None, len(ranked) + 1
    rank: int | None
    for desc in index.manifests:
        if desc.platform is None:
            rank = len(ranked)
        else:
            have = normalize_platform(desc.platform)
            rank = next((i for i, p in enumerate(ranked) if _same(p, have)), None)
            if rank is None:
                continue
        if desc.media_type and desc.media_type not in MANIFEST_TYPES:
            continue
        if rank < best_rank:
            best, best_rank = desc, rank
    if best is None:
        offered = [
            str(d.platform)
            for d in index.manifests
            if d.platform is not None
            and (d.platform.os, d.platform.architecture) != ("unknown", "unknown")
            and (not d.media_type or d.media_type in MANIFEST_TYPES)
        ]
        raise ManifestError(
            f"no image for platform {normalize_platform(want)} in this index; it offers "
            + (", ".join(dict.fromkeys(offered)) if offered else "no platforms at all")
        )
    return best
