"""A Cricket plugin as a CNI executable: CNI_* environment and config on stdin, result on stdout.

Installed launchers (see `cricket-cni-install`) call main() with their plugin's
type, so containerd, CRI-O or any CNI runtime can run Cricket's plugins.
"""
from __future__ import annotations

import json
import os
import sys

from cni import invoke
from cni.spec import (
    DECODE_FAILURE,
    INCOMPATIBLE_VERSION,
    INVALID_ENVIRONMENT,
    IO_FAILURE,
    SUPPORTED_VERSIONS,
    CniError,
    parse_cni_args,
    result_for_version,
)


def _env() -> invoke.Env:
    command = os.environ.get("CNI_COMMAND", "")
    if command not in ("ADD", "DEL", "CHECK", "VERSION"):
        raise CniError(INVALID_ENVIRONMENT, f"CNI_COMMAND {command!r} is not ADD, DEL, CHECK or VERSION")
    env = invoke.Env(command, os.environ.get("CNI_CONTAINERID", ""), os.environ.get("CNI_NETNS", ""),
                     os.environ.get("CNI_IFNAME", ""), [p for p in os.environ.get("CNI_PATH", "").split(":") if p],
                     parse_cni_args(os.environ.get("CNI_ARGS", "")))
    if command in ("ADD", "CHECK") and not (env.container_id and env.netns and env.ifname):
        raise CniError(INVALID_ENVIRONMENT, "CNI_CONTAINERID, CNI_NETNS and CNI_IFNAME are required")
    return env


def main(kind: str) -> int:
    version = "1.0.0"
    try:
        env = _env()
        if env.command == "VERSION":
            print(json.dumps({"cniVersion": version, "supportedVersions": list(SUPPORTED_VERSIONS)}))
            return 0
        try:
            conf = json.load(sys.stdin)
        except ValueError as e:
            raise CniError(DECODE_FAILURE, "the network config on stdin is not JSON", str(e)) from None
        version = conf.get("cniVersion", "0.3.1")
        if version not in SUPPORTED_VERSIONS:
            raise CniError(INCOMPATIBLE_VERSION, f"cniVersion {version!r} is not supported",
                           f"supported: {', '.join(SUPPORTED_VERSIONS)}")
        result = invoke.call_own(kind, conf, env)
        if result is not None:
            print(json.dumps(result_for_version(result, version)))
        return 0
    except CniError as e:
        print(json.dumps(e.to_json(version)))
        return 1
    except Exception as e:  # a plugin must answer in JSON whatever happens
        print(json.dumps(CniError(IO_FAILURE, f"{kind} failed", repr(e)).to_json(version)))
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
