"""Fuzz target: CNI network configs and plugin results (cni/spec.py).

The first byte picks which: a network config as the CNI runtime reads it from conf_dir (which
must then give every plugin of its chain its stdin, as an ADD does), or a plugin's result as the
runtime reads it from the plugin's stdout (in the 1.0.0 shape, in every older version's, and the
pod's addresses from it). The JSON decoding of a result is the runtime's, not the parser's: an
input that is no JSON is passed over."""
from __future__ import annotations

import json
import os

from fuzz.harness import instrumented, run, scratch

with instrumented(__name__ == "__main__"):
    from cni.spec import (
        SUPPORTED_VERSIONS,
        CniError,
        load_network_config,
        plugin_config,
        result_for_version,
        result_from_any,
        result_ips,
    )

EXPECTED = (CniError,)
_RUNTIME_CONFIG = {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
                   "dns": {"servers": ["10.96.0.10"]}}
_RESULT = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/x"}],
           "ips": [{"address": "10.88.0.2/16", "interface": 0}]}


def _config(body: bytes) -> None:
    path = os.path.join(scratch(), "10-net.conflist")
    with open(path, "wb") as f:
        f.write(body)
    netconf = load_network_config(path)
    prev = None
    for plugin in netconf["plugins"]:
        conf = plugin_config(netconf, plugin, _RUNTIME_CONFIG, prev)
        json.dumps(conf)  # what the plugin gets on stdin
        prev = _RESULT


def _result(body: bytes) -> None:
    try:
        doc = json.loads(body)
    except ValueError:
        return
    result = result_from_any(doc)
    for version in SUPPORTED_VERSIONS:
        assert result_from_any(result_for_version(result, version)) == result
    for ip in result_ips(result, "eth0"):
        assert isinstance(ip, str)


def check(data: bytes) -> None:
    if not data:
        return
    (_config if data[0] % 2 == 0 else _result)(data[1:])


if __name__ == "__main__":
    run(check, EXPECTED)
