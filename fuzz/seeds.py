"""python -m fuzz.seeds: write the seed corpus of every target to fuzz/corpus/<target>/.

Seeds are small valid inputs, and near-valid ones (each one thing wrong), built with the
project's own encoders so that they are what real peers send. The output is deterministic: run
it again and git sees no change. A target's first byte or two choose its mode (see each target);
the seeds here set them.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import struct
import tarfile
from unittest import mock

import zstandard

from api.shim.v1 import shim_pb2
from cri.streaming import spdy
from frames.framing import encode
from fuzz.harness import CORPUS
from image import manifest as m
from tests.fixtures.layers import entry, pax_sparse, realpath_escape, tar_bytes

_ZERO = "0" * 64
# A file capability as setcap writes it (struct vfs_cap_data, revision 2): cap_net_bind_service+ep.
_CAPABILITY = struct.pack("<IIIII", 0x02000001, 1 << 10, 0, 0, 0)


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _json(doc) -> bytes:
    return json.dumps(doc, sort_keys=True).encode()


# -- framing -----------------------------------------------------------------------------------


def framing() -> dict[str, bytes]:
    start = encode(shim_pb2.Request(start=shim_pb2.StartRequest()).SerializeToString())
    execute = encode(shim_pb2.Request(exec=shim_pb2.ExecRequest(
        exec_id="e1", process=_json({"args": ["sh", "-c", "true"], "cwd": "/"}), has_stdout=True)).SerializeToString())
    spawn = encode(shim_pb2.ZygoteRequest(spawn_shim=shim_pb2.SpawnShim(
        container_id="c" * 64, bundle="/run/cricket/containers/c", socket="/run/cricket/c.sock")).SerializeToString())
    return {
        "start-whole": b"\xff" + start,
        "exec-bytewise": b"\x00" + execute,
        "two-frames": b"\x07" + start + spawn,
        "truncated": b"\x03" + execute[:-5],
        "empty-frame": b"\x10" + encode(b""),
        "over-limit": b"\x00" + b"\x01\x00\x00\x01" + b"x" * 8,
        "not-protobuf": b"\x20" + encode(b"\xff\xff\xff\xff\x0f"),
    }


# -- reference ---------------------------------------------------------------------------------


def reference() -> dict[str, bytes]:
    names = {
        "short": "busybox", "tagged": "busybox:1.36", "full": "docker.io/library/busybox:latest",
        "legacy-host": "index.docker.io/library/busybox", "port": "localhost:5000/team/app:v1",
        "digest": "registry.k8s.io/pause@sha256:" + "a" * 64, "tag-and-digest": "quay.io/a/b:t@sha256:" + "b" * 64,
        "ipv6": "[::1]:5000/x:y", "id": "c" * 64, "sha512": "x@sha512:" + "d" * 128, "upper": "Docker.io/Library/x",
        "long": "a/" * 130 + "b", "separators": "a__b.c--d/e", "empty-tag": "busybox:", "space": "busy box",
        "non-ascii": "bücher:latest",
    }
    return {k: v.encode() for k, v in names.items()}


# -- config ------------------------------------------------------------------------------------


def config() -> dict[str, bytes]:
    full = """socket = "/run/cricket/cricket.sock"
root_dir = "/var/lib/cricket"
state_dir = "/run/cricket"
log_level = "info"

[image]
max_concurrent_downloads = 3
pull_retries = 3
pull_timeout_seconds = 30.0
max_layer_size = 68719476736
max_layer_entries = 1000000

[cni]
conf_dir = "/etc/cni/net.d"
bin_dirs = ["/opt/cni/bin", "/usr/lib/cni"]

[streaming]
address = "127.0.0.1"
port = 0

[container_logs]
max_size = 0
max_files = 5

[metrics]
address = ""

[tracing]
endpoint = ""
sampling_ratio = 1.0

[runtimes.runc]
path = "/usr/bin/runc"
root = ""

[registries."docker.io"]
mirrors = ["http://127.0.0.1:5000"]
insecure = false
ca_file = ""
skip_verify = false
"""
    return {
        "full": full.encode(), "empty": b"", "flags-only": b'log_level = "debug"\n',
        "wrong-type": b'[image]\nmax_layer_entries = "many"\n', "fraction": b"[image]\npull_retries = 0.5\n",
        "unknown-key": b"[cni]\nplugins = 1\n", "relative": b'root_dir = "var"\n',
        "runtime-no-path": b"[runtimes.crun]\nroot = \"/x\"\n", "bad-toml": b"[image\n",
        "empty-runtimes": b"[runtimes]\n", "registry-not-table": b'registries = "x"\n',
    }


# -- cni_spec ----------------------------------------------------------------------------------


def cni_spec() -> dict[str, bytes]:
    bridge = {"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": True, "hairpinMode": True,
              "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/16"}]],
                       "routes": [{"dst": "0.0.0.0/0"}]}}
    portmap = {"type": "portmap", "capabilities": {"portMappings": True}}
    conflist = {"cniVersion": "1.0.0", "name": "cricket", "plugins": [bridge, portmap, {"type": "loopback"}]}
    configs = {
        "conflist": _json(conflist),
        "single-conf": _json({"cniVersion": "0.4.0", "name": "net", **bridge}),
        "old-version": _json({**conflist, "cniVersion": "0.3.1"}),
        "unsupported-version": _json({**conflist, "cniVersion": "0.2.0"}),
        "no-name": _json({**conflist, "name": ""}),
        "name-with-slash": _json({**conflist, "name": "../../etc/x"}),
        "plugins-not-list": _json({**conflist, "plugins": {"type": "bridge"}}),
        "plugin-without-type": _json({**conflist, "plugins": [{"bridge": "x"}]}),
        "plugin-type-path": _json({**conflist, "plugins": [{"type": "../../bin/sh"}]}),
        "dns-capability": _json({**conflist, "plugins": [{"type": "x", "capabilities": {"dns": True}}]}),
        "capabilities-list": _json({**conflist, "plugins": [{"type": "x", "capabilities": ["dns"]}]}),
        "not-object": b"[1, 2]",
        "not-json": b"{\"cniVersion\": ",
    }
    result = {"cniVersion": "1.0.0",
              "interfaces": [{"name": "cni0", "mac": "00:11:22:33:44:55"},
                             {"name": "eth0", "sandbox": "/var/run/netns/cni-1", "mac": "66:77:88:99:aa:bb"}],
              "ips": [{"address": "10.88.0.5/16", "gateway": "10.88.0.1", "interface": 1},
                      {"address": "fd00::5/64", "interface": 1}],
              "routes": [{"dst": "0.0.0.0/0"}], "dns": {"nameservers": ["10.96.0.10"]}}
    results = {
        "result": _json(result),
        "result-0.3.1": _json({**result, "cniVersion": "0.3.1",
                               "ips": [{"version": "4", "address": "10.88.0.5/16", "interface": 1}]}),
        "result-no-interfaces": _json({"cniVersion": "1.0.0", "ips": [{"address": "10.1.2.3/24"}]}),
        "result-bad-address": _json({**result, "ips": [{"address": "10.88.0.300/16"}]}),
        "result-ips-object": _json({**result, "ips": {"address": "10.88.0.5/16"}}),
        "result-list": b"[]",
    }
    return {**{k: b"\x00" + v for k, v in configs.items()}, **{k: b"\x01" + v for k, v in results.items()}}


# -- manifest ----------------------------------------------------------------------------------


def manifest() -> dict[str, bytes]:
    types = (None, "", "application/json", m.OCI_MANIFEST, m.OCI_INDEX, m.DOCKER_MANIFEST, m.DOCKER_MANIFEST_LIST,
             m.DOCKER_SCHEMA1_SIGNED, "application/vnd.oci.image.manifest.v1+json; x=y")
    config_choice = len(types)

    def choice(content_type) -> bytes:
        return bytes([types.index(content_type)])

    layer = {"mediaType": m.OCI_LAYER_GZIP, "digest": "sha256:" + "1" * 64, "size": 100}
    oci: dict = {"schemaVersion": 2, "mediaType": m.OCI_MANIFEST, "annotations": {"a": "b"},
           "config": {"mediaType": m.OCI_CONFIG, "digest": "sha256:" + "2" * 64, "size": 50},
           "layers": [layer, {**layer, "mediaType": m.OCI_LAYER_ZSTD, "urls": ["http://x"]}]}
    docker = {**oci, "mediaType": m.DOCKER_MANIFEST,
              "config": {"mediaType": m.DOCKER_CONFIG, "digest": "sha256:" + "2" * 64, "size": 50},
              "layers": [{**layer, "mediaType": m.DOCKER_LAYER_GZIP}]}
    platforms = (("3", "amd64", ""), ("4", "arm64", "v8"), ("5", "arm", "v7"), ("6", "386", ""))
    entries: list[dict] = [{"mediaType": m.OCI_MANIFEST, "digest": "sha256:" + c * 64, "size": 500,
                            "platform": {"os": "linux", "architecture": arch, **({"variant": v} if v else {})}}
                           for c, arch, v in platforms]
    entries.append({"mediaType": m.OCI_MANIFEST, "digest": "sha256:" + "7" * 64, "size": 10,
                    "platform": {"os": "unknown", "architecture": "unknown"}})
    index = {"schemaVersion": 2, "mediaType": m.OCI_INDEX, "manifests": entries}
    image_config = {"architecture": "amd64", "os": "linux",
                    "config": {"Entrypoint": ["/bin/sh"], "Cmd": ["-c", "true"], "Env": ["PATH=/bin"],
                               "WorkingDir": "/", "User": "1000:1000", "Volumes": {"/data": {}},
                               "ExposedPorts": {"80/tcp": {}}, "StopSignal": "SIGTERM", "Labels": {"k": "v"}},
                    "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "8" * 64]},
                    "history": [{"created": "2023-11-14T22:13:20Z", "created_by": "ADD x /"},
                                {"created_by": "ENV", "empty_layer": True}]}
    return {
        "oci-manifest": choice(m.OCI_MANIFEST) + _json(oci),
        "oci-manifest-no-type": choice(None) + _json({k: v for k, v in oci.items() if k != "mediaType"}),
        "docker-manifest": choice(m.DOCKER_MANIFEST) + _json(docker),
        "oci-index": choice(m.OCI_INDEX) + _json(index),
        "docker-list": choice(m.DOCKER_MANIFEST_LIST) + _json({**index, "mediaType": m.DOCKER_MANIFEST_LIST}),
        "index-as-generic": choice("application/json") + _json(index),
        "schema1": choice(m.DOCKER_SCHEMA1_SIGNED) + _json({"schemaVersion": 1, "fsLayers": []}),
        "mismatch": choice(m.OCI_INDEX) + _json(oci),
        "bad-digest": choice(m.OCI_MANIFEST) + _json({**oci, "config": {**oci["config"], "digest": "sha256:xyz"}}),
        "bad-size": choice(m.OCI_MANIFEST) + _json({**oci, "layers": [{**layer, "size": -1}]}),
        "bad-platform": choice(m.OCI_INDEX) + _json({**index, "manifests": [{**entries[0], "platform": {"os": 1}}]}),
        "parameters": choice("application/vnd.oci.image.manifest.v1+json; x=y") + _json(oci),
        "config": bytes([config_choice]) + _json(image_config),
        "config-minimal": bytes([config_choice]) + _json({"rootfs": {"type": "layers", "diff_ids": []}}),
        "config-bad-entrypoint": bytes([config_choice]) + _json({**image_config, "config": {"Entrypoint": "sh"}}),
        "config-bad-diff-id": bytes([config_choice]) + _json({"rootfs": {"diff_ids": ["sha256:1"]}}),
        "not-json": choice(None) + b"{",
    }


# -- spdy --------------------------------------------------------------------------------------


def spdy_seeds() -> dict[str, bytes]:
    def client_bytes(frames) -> bytes:
        compressor = spdy.HeaderCompressor()
        return b"".join(spdy.encode_frame(f, compressor) for f in frames)

    headers = (("streamtype", "error"),)
    exec_session = [
        spdy.SynStream(1, headers=headers),
        spdy.SynStream(3, headers=(("streamtype", "stdin"),)),
        spdy.SynStream(5, headers=(("streamtype", "stdout"),), unidirectional=False),
        spdy.SynStream(7, headers=(("streamtype", "resize"),)),
        spdy.DataFrame(3, b"ls -l\n"),
        spdy.DataFrame(7, b'{"Width":80,"Height":24}'),
        spdy.Ping(1),
        spdy.Settings(((spdy.SettingsId.INITIAL_WINDOW_SIZE, 1 << 20, 0),)),
        spdy.WindowUpdate(0, 1 << 16),
        spdy.WindowUpdate(5, 1 << 16),
        spdy.DataFrame(3, b"", fin=True),
        spdy.Headers(1, (("x", "y"),)),
        spdy.RstStream(7, spdy.CANCEL),
        spdy.GoAway(7),
    ]
    portforward = [spdy.SynStream(1, headers=(("streamtype", "error"), ("port", "80"), ("requestid", "0"))),
                   spdy.SynStream(3, headers=(("streamtype", "data"), ("port", "80"), ("requestid", "0"))),
                   spdy.DataFrame(3, b"GET / HTTP/1.0\r\n\r\n", fin=True)]
    session = client_bytes(exec_session)
    out = {}
    for mode, name in ((0, "parser"), (1, "server"), (2, "server-flow-control")):
        out[f"{name}-exec"] = bytes([mode, 0xFF]) + session
        out[f"{name}-exec-small-pieces"] = bytes([mode, 0]) + session
    out["server-portforward"] = bytes([1, 0xFF]) + client_bytes(portforward)
    out["server-flow-control-overrun"] = bytes([2, 0xFF]) + client_bytes(
        [spdy.SynStream(1, headers=headers), spdy.DataFrame(1, b"x" * 70000)])
    out["server-even-stream"] = bytes([1, 0xFF]) + client_bytes([spdy.SynStream(2, headers=headers)])
    out["server-stream-ids-down"] = bytes([1, 0xFF]) + client_bytes(
        [spdy.SynStream(5, headers=headers), spdy.SynStream(3, headers=headers)])
    out["parser-version-2"] = bytes([0, 0xFF]) + b"\x80\x02\x00\x06\x00\x00\x00\x04\x00\x00\x00\x01"
    out["parser-unknown-type"] = bytes([0, 0xFF]) + b"\x80\x03\x00\x0a\x00\x00\x00\x00"
    out["parser-too-long"] = bytes([0, 0xFF]) + b"\x80\x03\x00\x06\x00\xff\xff\xff"
    block = spdy.HeaderCompressor().compress((("streamtype", "stdout"), ("port", "80"), ("a", "1\x002")))
    out["header-block"] = bytes([3, 0]) + block
    out["header-block-raw-zlib"] = bytes([3, 0]) + zlib_bomb()
    return out


def zlib_bomb() -> bytes:
    import zlib

    c = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS, 9, zlib.Z_DEFAULT_STRATEGY, spdy.HEADER_DICTIONARY)
    return c.compress(b"\x00\x00\x00\x01" + b"\x00" * (1 << 20)) + c.flush(zlib.Z_SYNC_FLUSH)


# -- websocket ---------------------------------------------------------------------------------


def websocket() -> dict[str, bytes]:
    from wsproto.frame_protocol import CloseReason, FrameProtocol

    def client() -> FrameProtocol:
        return FrameProtocol(client=True, extensions=[])

    # Masks are random in wsproto: fixed here, so that the seeds are the same every time.
    masks = random.Random(13)
    with mock.patch("os.urandom", lambda n: masks.randbytes(n)):
        p = client()
        session = (p.send_data(b"\x00ls -l\n") + p.send_data(b'\x04{"Width":80,"Height":24}')
                   + p.ping(b"hi") + p.send_data(b"\x00part one ", fin=False) + p.send_data(b"and two\n", fin=True)
                   + p.send_data("\x00text message\n") + p.send_data(b"\xff\x00") + p.close(CloseReason.NORMAL_CLOSURE))
        big = client().send_data(b"\x00" + b"y" * 70_000)  # over the target's 64 KiB bound of a message
        unmasked = FrameProtocol(client=False, extensions=[]).send_data(b"\x00not masked")
        empty = client().send_data(b"")
        close_bad = client().close(CloseReason.PROTOCOL_ERROR, "bye")
    return {
        "v4-session": b"\x00\xff" + session, "v5-session": b"\x01\xff" + session,
        "v5-session-small-pieces": b"\x01\x00" + session, "v4-big-message": b"\x00\xff" + big,
        "unmasked": b"\x01\xff" + unmasked, "empty-message": b"\x01\xff" + empty,
        "close-with-reason": b"\x00\xff" + close_bad, "garbage": b"\x01\xff" + b"\x82\xfe\xff\xff",
    }


# -- unpack ------------------------------------------------------------------------------------


def unpack() -> dict[str, bytes]:
    plain = tar_bytes(
        entry("bin", tarfile.DIRTYPE, mode=0o755),
        entry("bin/busybox", data=b"\x7fELF not really\n", mode=0o755),
        entry("bin/sh", tarfile.LNKTYPE, link="bin/busybox"),
        entry("bin/ls", tarfile.SYMTYPE, link="busybox"),
        entry("etc", tarfile.DIRTYPE), entry("etc/passwd", data=b"root:x:0:0::/root:/bin/sh\n"),
        entry("dev", tarfile.DIRTYPE), entry("dev/null", tarfile.CHRTYPE, dev=(1, 3)),
        entry("fifo", tarfile.FIFOTYPE), entry("setuid", data=b"#!/bin/sh\n", mode=0o4755, uid=1000, gid=1000),
        entry("xattr", data=b"x", xattrs={"user.cricket": b"yes", "security.capability": _CAPABILITY}),
    )
    whiteouts = tar_bytes(entry("data", tarfile.DIRTYPE), entry("data/.wh.gone"), entry("opq", tarfile.DIRTYPE),
                          entry("opq/.wh..wh..opq"), entry("opq/new", data=b"n\n"), entry(".wh..wh.plnk"))
    sparse = tar_bytes(pax_sparse("sparse", 1 << 20, [(0, b"head"), (1 << 19, b"middle")]),
                       pax_sparse("sparse1", 4096, [(1024, b"x" * 10)], version="1.0"))
    out = {
        "plain": b"\x01" + plain, "no-media-type": b"\x00" + plain,
        "gzip": b"\x02" + gzip.compress(plain, mtime=0), "zstd": b"\x03" + zstandard.ZstdCompressor().compress(plain),
        "whiteouts": b"\x01" + whiteouts, "sparse": b"\x01" + sparse, "empty": b"\x01",
        "dotdot": b"\x01" + tar_bytes(entry("../escape", data=b"x")),
        "absolute": b"\x01" + tar_bytes(entry("/etc/escape", data=b"x")),
        "through-symlink": b"\x01" + tar_bytes(entry("evil", tarfile.SYMTYPE, link="/tmp"), entry("evil/x", data=b"x")),
        "hardlink-out": b"\x01" + tar_bytes(entry("link", tarfile.LNKTYPE, link="../../etc/passwd")),
        "realpath-escape": b"\x01" + realpath_escape("etc"),
        "bad-capability": b"\x01" + tar_bytes(entry("f", data=b"x", xattrs={"security.capability": b"\x01\x00"})),
        "truncated": b"\x01" + plain[:700],
        "replace-dir-with-file": b"\x01" + tar_bytes(entry("d", tarfile.DIRTYPE), entry("d/f", data=b"f"),
                                                     entry("d", data=b"now a file")),
    }
    return out


# -- archive -----------------------------------------------------------------------------------


def archive() -> dict[str, bytes]:
    from fuzz.archive import _CONFIG, _LAYER, _MANIFEST, tar

    config_name, layer_name = _digest(_CONFIG)[7:] + ".json", _digest(_LAYER)[7:] + ".tar"
    docker_manifest = [{"Config": config_name, "RepoTags": ["docker.io/library/app:1", "app:2"],
                        "Layers": [layer_name]}]
    docker = tar({"manifest.json": _json(docker_manifest), config_name: _CONFIG, layer_name: _LAYER})
    index: dict = {"schemaVersion": 2, "manifests": [
        {"mediaType": m.OCI_MANIFEST, "digest": _digest(_MANIFEST), "size": len(_MANIFEST),
         "annotations": {"io.containerd.image.name": "docker.io/library/app:1",
                         "org.opencontainers.image.ref.name": "1"}},
        {"mediaType": m.OCI_MANIFEST, "digest": _digest(_MANIFEST), "size": len(_MANIFEST)}]}
    oci = tar({"oci-layout": b'{"imageLayoutVersion": "1.0.0"}', "index.json": _json(index),
               "blobs/sha256/" + _digest(_MANIFEST)[7:]: _MANIFEST, "blobs/sha256/" + _digest(_CONFIG)[7:]: _CONFIG,
               "blobs/sha256/" + _digest(_LAYER)[7:]: _LAYER})
    return {
        "docker-archive": b"\x00" + docker, "oci-archive": b"\x00" + oci,
        "docker-archive-gzip": b"\x00" + gzip.compress(docker, mtime=0),
        "skopeo-alias": b"\x00" + tar_bytes(entry("x/layer.tar", tarfile.SYMTYPE, link="../" + layer_name)),
        "dotdot": b"\x00" + tar({"../x": b"x"}), "realpath-escape": b"\x00" + realpath_escape("etc"),
        "neither": b"\x00" + tar({"hello": b"x"}),
        "manifest-json": b"\x01" + _json(docker_manifest),
        "manifest-json-by-tag": b"\x01" + _json([{"Config": "config.json", "RepoTags": ["app"],
                                                   "Layers": ["layer.tar"]}]),
        "manifest-json-no-tags": b"\x01" + _json([{"Config": "config.json", "Layers": ["layer.tar"]}]),
        "manifest-json-missing-file": b"\x01" + _json([{"Config": "nope.json"}]),
        "manifest-json-escape": b"\x01" + _json([{"Config": "../../etc/passwd"}]),
        "index-json": b"\x02" + _json(index),
        "index-json-bad-digest": b"\x02" + _json({"manifests": [{"digest": "sha256:" + _ZERO}]}),
        "index-json-bad-name": b"\x02" + _json({"manifests": [{**index["manifests"][0],
                                                             "annotations": {"io.containerd.image.name": "UP/x"}}]}),
    }


# -- seccomp_profile ---------------------------------------------------------------------------


def seccomp_profile() -> dict[str, bytes]:
    oci = {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1, "architectures": ["SCMP_ARCH_X86_64"],
           "syscalls": [{"names": ["read", "write", "exit_group"], "action": "SCMP_ACT_ALLOW"},
                        {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                         "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
                        {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                         "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]}]}
    docker = {"defaultAction": "SCMP_ACT_ERRNO",
              "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
                          {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]}],
              "syscalls": [{"names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
                           {"name": "ptrace", "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "4.8"}},
                           {"names": ["bpf"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
                            "excludes": {"caps": ["CAP_BPF"], "arches": ["s390x"]}}]}
    return {
        "oci": b"\x00" + _json(oci), "docker": b"\x01" + _json(docker), "docker-admin": b"\x02" + _json(docker),
        "docker-arm": b"\x03" + _json(docker), "no-default": b"\x00" + _json({"syscalls": []}),
        "unknown-action": b"\x00" + _json({**oci, "defaultAction": "SCMP_ACT_FLY"}),
        "bad-arg-op": b"\x00" + _json({**oci, "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW",
                                                             "args": [{"index": 9, "op": "SCMP_CMP_EQ"}]}]}),
        "unknown-syscall": b"\x00" + _json({**oci, "syscalls": [{"names": ["no_such_call"],
                                                                  "action": "SCMP_ACT_LOG"}]}),
        "notify": b"\x00" + _json({**oci, "defaultAction": "SCMP_ACT_NOTIFY"}),
        "bad-min-kernel": b"\x01" + _json({**docker, "syscalls": [{"names": ["x"], "includes": {"minKernel": "new"}}]}),
        "not-json": b"\x00{",
    }


SEEDS = {
    "framing": framing, "reference": reference, "config": config, "cni_spec": cni_spec, "manifest": manifest,
    "spdy": spdy_seeds, "websocket": websocket, "unpack": unpack, "archive": archive,
    "seccomp_profile": seccomp_profile,
}


# Inputs that once were findings are kept in the corpus as they were found, beside the seeds
# written here, so that every run replays them first; these are never rewritten.
FINDING_PREFIX = "finding-"


def write(corpus: str = CORPUS) -> dict[str, int]:
    """Write every target's seeds under `corpus`, replacing the seeds there (not the findings);
    the number of seeds of each target."""
    counts = {}
    for target, make in SEEDS.items():
        directory = os.path.join(corpus, target)
        os.makedirs(directory, exist_ok=True)
        for name in os.listdir(directory):
            if not name.startswith(FINDING_PREFIX):
                os.unlink(os.path.join(directory, name))
        seeds = make()
        for name, data in seeds.items():
            with open(os.path.join(directory, name), "wb") as f:
                f.write(data)
        counts[target] = len(seeds)
    return counts


def main() -> None:
    for target, count in write().items():
        print(f"{target}: {count} seeds")


if __name__ == "__main__":
    main()
