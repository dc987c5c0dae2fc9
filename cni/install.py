"""`cricket-cni-install`: put Cricket's plugins in a CNI bin dir and a default network in place.

Each plugin is a launcher running this installation's interpreter; its marker
line lets cricketd recognise it and call the plugin in-process instead. The
default network (a bridge cni0 on 10.88.0.0/16 with host-local addresses and
masquerading, then portmap, then loopback) is written only where no network
config exists.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from cni.invoke import MARKER, OWN

DEFAULT_NETWORK = {
    "cniVersion": "1.0.0",
    "name": "cricket",
    "plugins": [
        {"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": True, "hairpinMode": True,
         "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/16"}]],
                  "routes": [{"dst": "0.0.0.0/0"}]}},
        {"type": "portmap", "capabilities": {"portMappings": True}},
        {"type": "loopback"},
    ],
}


def launcher(kind: str) -> str:
    return (f"#!{sys.executable}\n# {MARKER.decode()}: {kind}, from Cricket\n"
            f"import sys\nfrom cni.plugins.main import main\nsys.exit(main({kind!r}))\n")


def install_plugins(bin_dir: str) -> list[str]:
    os.makedirs(bin_dir, mode=0o755, exist_ok=True)
    written = []
    for kind in OWN:
        path = os.path.join(bin_dir, kind)
        with open(path + ".tmp", "w") as f:
            f.write(launcher(kind))
        os.chmod(path + ".tmp", 0o755)
        os.replace(path + ".tmp", path)
        written.append(path)
    return written


def install_default_network(conf_dir: str) -> str | None:
    os.makedirs(conf_dir, mode=0o755, exist_ok=True)
    if any(n.endswith((".conflist", ".conf", ".json")) for n in os.listdir(conf_dir)):
        return None
    path = os.path.join(conf_dir, "10-cricket.conflist")
    with open(path, "w") as f:
        json.dump(DEFAULT_NETWORK, f, indent=2)
        f.write("\n")
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cricket-cni-install", description=__doc__.splitlines()[0])
    p.add_argument("--bin-dir", default="/opt/cni/bin")
    p.add_argument("--conf-dir", default="/etc/cni/net.d")
    args = p.parse_args(argv)
    for path in install_plugins(args.bin_dir):
        print(f"installed {path}")
    written = install_default_network(args.conf_dir)
    print(f"wrote {written}" if written else f"kept the network config already in {args.conf_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
