"""The CNI specification's data, as pure functions: errors, versions, results, conflists.

Cricket's plugins build results in the 1.0.0 shape; `result_for_version`
turns one into the shape a network config's older cniVersion expects.
"""
from __future__ import annotations

import ipaddress
import json
import re

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0")
# The spec's well-known error codes.
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11


class CniError(Exception):
    """A CNI error: what a plugin prints as {"code", "msg", "details"} and exits non-zero with."""

    def __init__(self, code: int, msg: str, details: str = ""):
        super().__init__(f"{msg}: {details}" if details else msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_json(self, version: str = "1.0.0") -> dict:
        out = {"cniVersion": version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out

    @classmethod
    def from_json(cls, doc: dict, plugin: str) -> CniError:
        return cls(int(doc.get("code", IO_FAILURE)), f"plugin {plugin}: {doc.get('msg', 'failed')}",
                   str(doc.get("details", "")))


def parse_cni_args(text: str) -> dict[str, str]:
    """CNI_ARGS: "K8S_POD_NAME=x;K8S_POD_NAMESPACE=y"."""
    out = {}
    for pair in filter(None, (text or "").split(";")):
        key, sep, value = pair.partition("=")
        if not sep:
            raise CniError(INVALID_ENVIRONMENT, f"CNI_ARGS entry {pair!r} is not KEY=VALUE")
        out[key] = value
    return out


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in v.split("."))


def result_for_version(result: dict, version: str) -> dict:
    """A 1.0.0-shaped result in the shape of `version` (0.3.x and 0.4.0 give each IP a "version")."""
    out = json.loads(json.dumps(result))
    out["cniVersion"] = version
    if _version_tuple(version) < (1, 0, 0):
        for ip in out.get("ips") or ():
            ip["version"] = "6" if ":" in ip["address"] else "4"
    return out


def result_from_any(result: dict) -> dict:
    """A result of any supported version in the 1.0.0 shape (what a chain passes along), checked
    where Cricket reads it (check_result): raises CniError for one of the wrong shape."""
    out = json.loads(json.dumps(check_result(result)))
    for ip in out.get("ips") or ():
        ip.pop("version", None)
    out["cniVersion"] = "1.0.0"
    return out


def check_result(result, plugin: str = "") -> dict:
    """A plugin's result, if its parts have the types the spec gives them: `interfaces` a list of
    objects with a string `name` (and `sandbox`), `ips` a list of objects with an `address` in CIDR
    form (and an `interface` index), `routes` a list of objects, `dns` an object. A plugin is a
    program of someone else's; what it prints decides the pod's IP. Raises CniError."""
    who = f"plugin {plugin}" if plugin else "a plugin"

    def bad(what: str) -> CniError:
        return CniError(DECODE_FAILURE, f"{who} gave a result whose {what}")

    if not isinstance(result, dict):
        raise bad("JSON is not an object")
    for key in ("interfaces", "ips", "routes"):
        items = result.get(key)
        if items is not None and (not isinstance(items, list) or not all(isinstance(i, dict) for i in items)):
            raise bad(f"{key} is not a list of objects")
    if not isinstance(result.get("dns") or {}, dict):
        raise bad("dns is not an object")
    for i, iface in enumerate(result.get("interfaces") or ()):
        for key in ("name", "sandbox", "mac"):
            if not isinstance(iface.get(key, ""), str):
                raise bad(f"interfaces[{i}].{key} is not a string")
    for i, ip in enumerate(result.get("ips") or ()):
        address = ip.get("address")
        try:
            ipaddress.ip_interface(address if isinstance(address, str) else "")
        except ValueError:
            raise bad(f"ips[{i}].address {address!r} is not an address in CIDR form") from None
        index = ip.get("interface")
        if index is not None and (not isinstance(index, int) or isinstance(index, bool) or index < 0):
            raise bad(f"ips[{i}].interface {index!r} is not an interface index")
        if not isinstance(ip.get("gateway", ""), str):
            raise bad(f"ips[{i}].gateway is not a string")
    return result


# The spec's network names (libcni checks them the same way); the name is part of file names.
_NETWORK_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*")
_PLUGIN_TYPE = re.compile(r"[^/\0]+")


def load_network_config(path: str) -> dict:
    """A .conflist, or a single-plugin .conf/.json wrapped as one, validated."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError, RecursionError) as e:
        raise CniError(DECODE_FAILURE, f"network config {path} is unreadable", str(e)) from None
    if not isinstance(doc, dict):
        raise CniError(INVALID_CONFIG, f"network config {path} is not a JSON object")
    if "plugins" not in doc:
        if not doc.get("type"):
            raise CniError(INVALID_CONFIG, f"network config {path} has neither plugins nor type")
        single = dict(doc)
        doc = {"cniVersion": doc.get("cniVersion", "0.3.1"), "name": doc.get("name", ""), "plugins": [single]}
    name = doc.get("name")
    if not name:
        raise CniError(INVALID_CONFIG, f"network config {path} has no name")
    if not isinstance(name, str) or not _NETWORK_NAME.fullmatch(name):
        # It names the files of the network's cached results: no '/' or '..' may lead elsewhere.
        raise CniError(INVALID_CONFIG, f"network config {path} has name {name!r}: a network name is a letter or "
                                       "digit, then letters, digits, '_', '.' or '-'")
    version = doc.get("cniVersion", "")
    if not isinstance(version, str) or version not in SUPPORTED_VERSIONS:
        raise CniError(INCOMPATIBLE_VERSION, f"network config {path} has cniVersion {version!r}",
                       f"supported: {', '.join(SUPPORTED_VERSIONS)}")
    plugins = doc.get("plugins")
    if not isinstance(plugins, list) or not plugins or not all(isinstance(p, dict) and p.get("type") for p in plugins):
        raise CniError(INVALID_CONFIG, f"network config {path}: plugins must be a list of objects with a type")
    for i, plugin in enumerate(plugins):
        kind = plugin["type"]
        if not isinstance(kind, str) or kind in (".", "..") or not _PLUGIN_TYPE.fullmatch(kind):
            raise CniError(INVALID_CONFIG, f"network config {path}: plugins[{i}].type {kind!r} is not a plugin name")
        if not isinstance(plugin.get("capabilities", {}), dict):
            raise CniError(INVALID_CONFIG, f"network config {path}: plugins[{i}].capabilities is not an object")
    return doc


def plugin_config(netconf: dict, plugin: dict, runtime_config: dict, prev_result: dict | None) -> dict:
    """What one plugin of a chain reads on stdin: its own config, the network's name and version,
    the runtime config for the capabilities it declares, and the result so far."""
    conf = dict(plugin)
    conf["name"] = netconf["name"]
    conf["cniVersion"] = netconf["cniVersion"]
    wanted = {k: v for k, v in runtime_config.items() if plugin.get("capabilities", {}).get(k)}
    conf.pop("capabilities", None)
    if wanted:
        conf["runtimeConfig"] = wanted
    if prev_result is not None:
        conf["prevResult"] = result_for_version(prev_result, netconf["cniVersion"])
    return conf


def result_ips(result: dict, ifname: str) -> list[str]:
    """The addresses a result gives the container's interface `ifname`, IPv4 first."""
    interfaces = result.get("interfaces") or []
    want = {i for i, iface in enumerate(interfaces) if iface.get("name") == ifname and iface.get("sandbox")}
    ips = []
    for ip in result.get("ips") or []:
        # Without interface details every address is the pod's; with them, only its interface's.
        if interfaces and ip.get("interface") not in want:
            continue
        ips.append(str(ipaddress.ip_interface(ip["address"]).ip))  # checked by result_from_any
    return sorted(ips, key=lambda a: ":" in a)
