"""The pods' network: a bridge of the run's own (random name, private 10.x subnet that no route
of the host's overlaps) wired by Cricket's plugins; removed afterwards with every NAT rule and
chain that names it, and the host's IP forwarding put back as it was."""
from __future__ import annotations

import ipaddress
import json
import os
import random
import secrets
import subprocess

from cni.install import install_plugins

FORWARDING = "/proc/sys/net/ipv4/ip_forward"
# portmap's chains are shared by every network on the host: only our rules in them go.
_SHARED_CHAIN_PREFIX = "CNI-HOSTPORT-"


def _host_networks() -> list[ipaddress.IPv4Network]:
    out = subprocess.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True).stdout
    nets = []
    for line in out.splitlines():
        word = line.split()[0] if line.split() else ""
        if word in ("broadcast", "local", "unreachable", "blackhole"):
            word = line.split()[1]
        try:
            nets.append(ipaddress.ip_network(word, strict=False))
        except ValueError:
            continue  # "default", "multicast" ...
    return [n for n in nets if isinstance(n, ipaddress.IPv4Network)]


def _free_subnet() -> ipaddress.IPv4Network:
    taken = _host_networks()
    for _ in range(100):
        subnet = ipaddress.ip_network(f"10.{random.randint(200, 250)}.{random.randint(0, 255)}.0/24")
        if isinstance(subnet, ipaddress.IPv4Network) and not any(subnet.overlaps(n) for n in taken):
            return subnet
    raise RuntimeError("no free 10.x.y.0/24 subnet for the pods: the host routes them all")


class Network:
    def __init__(self, root: str):
        self.bridge = "crt" + secrets.token_hex(3)
        self.name = "critest-" + self.bridge
        self.subnet = _free_subnet()
        self.conf_dir = os.path.join(root, "net.d")
        self.bin_dir = os.path.join(root, "bin")
        self.data_dir = os.path.join(root, "ipam")
        with open(FORWARDING) as f:
            self._forwarding = f.read()

    def write(self) -> None:
        install_plugins(self.bin_dir)
        os.makedirs(self.conf_dir, exist_ok=True)
        conflist = {
            "cniVersion": "1.0.0", "name": self.name,
            "plugins": [
                {"type": "bridge", "bridge": self.bridge, "isGateway": True, "ipMasq": True, "hairpinMode": True,
                 "ipam": {"type": "host-local", "dataDir": self.data_dir,
                          "ranges": [[{"subnet": str(self.subnet)}]], "routes": [{"dst": "0.0.0.0/0"}]}},
                {"type": "portmap", "capabilities": {"portMappings": True}},
                {"type": "loopback"},
            ],
        }
        with open(os.path.join(self.conf_dir, "10-critest.conflist"), "w") as f:
            json.dump(conflist, f, indent=1)

    def daemon_config(self) -> str:
        return f'[cni]\nconf_dir = "{self.conf_dir}"\nbin_dirs = ["{self.bin_dir}"]\n'

    def _rules(self) -> list[str]:
        dump = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True).stdout
        return [line for line in dump.splitlines() if line.startswith("-A ") and self.name in line]

    def remove(self) -> list[str]:
        """Delete the bridge and what of ours is left in the nat table; what could not be."""
        problems = []
        if os.path.exists(f"/sys/class/net/{self.bridge}"):
            out = subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, text=True)
            if out.returncode:
                problems.append(f"bridge {self.bridge}: {out.stderr.strip()}")
        rules = self._rules()
        chains = {r.split()[1] for r in rules if r.split()[1].startswith("CNI-")
                  and not r.split()[1].startswith(_SHARED_CHAIN_PREFIX)}
        # Rules that jump into our chains first, then the chains' own rules, then the chains.
        for batch in (["-D" + r[2:] for r in rules if r.split()[1] not in chains] + [f"-F {c}" for c in chains],
                      [f"-X {c}" for c in chains]):
            if batch:
                out = subprocess.run(["iptables-restore", "-w", "5", "--noflush"], capture_output=True, text=True,
                                     input="\n".join(["*nat", *batch, "COMMIT", ""]))
                if out.returncode:
                    problems.append(f"iptables: {out.stderr.strip()}")
        if self._rules():
            problems.append(f"nat rules of {self.name} remain")
        with open(FORWARDING) as f:
            now = f.read()
        if now != self._forwarding:  # the bridge plugin turns it on, as a gateway must
            with open(FORWARDING, "w") as f:
                f.write(self._forwarding)
        return problems
