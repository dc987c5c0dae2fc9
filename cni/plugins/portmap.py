"""portmap: host ports forwarded to the pod (runtimeConfig.portMappings), with iptables NAT.

Rules, in the nat table and in the reference plugin's shape:
- CNI-HOSTPORT-DNAT, jumped to from PREROUTING and OUTPUT for local
  destinations, sends each pod's ports to the pod's own chain CNI-DN-<hash>;
- CNI-DN-<hash> DNATs hostIP:hostPort to podIP:containerPort, and first marks
  connections from the pod itself (hairpin) and from 127.0.0.1;
- marked connections are masqueraded on the way out (CNI-HOSTPORT-MASQ), so
  the pod answers through the host; and the bridge gets route_localnet so a
  connection to 127.0.0.1:hostPort may leave the host's loopback at all.
A pod's DEL removes its chain and its jumps; the last one out removes the
shared chains too, leaving no rule behind. A lock keeps those steps whole.
"""
from __future__ import annotations

import fcntl
import ipaddress
import os
from contextlib import contextmanager

from cni.invoke import Env
from cni.plugins import iptables
from cni.spec import INVALID_CONFIG, CniError, result_from_any

DNAT_CHAIN = "CNI-HOSTPORT-DNAT"
SETMARK_CHAIN = "CNI-HOSTPORT-SETMARK"
MASQ_CHAIN = "CNI-HOSTPORT-MASQ"
POD_CHAIN_PREFIX = "CNI-DN-"
DEFAULT_MARK_BIT = 13
LOCK = "/run/cricket-cni-portmap.lock"
_PROTOCOLS = ("tcp", "udp", "sctp")


@contextmanager
def _locked():
    fd = os.open(LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _mappings(conf: dict) -> list[dict]:
    out = []
    for m in (conf.get("runtimeConfig") or {}).get("portMappings") or ():
        proto = (m.get("protocol") or "tcp").lower()
        host_port, container_port = m.get("hostPort"), m.get("containerPort")
        if proto not in _PROTOCOLS:
            raise CniError(INVALID_CONFIG, f"portmap: protocol {m.get('protocol')!r} is not tcp, udp or sctp")
        for port, what in ((host_port, "hostPort"), (container_port, "containerPort")):
            if not isinstance(port, int) or not 0 < port < 65536:
                raise CniError(INVALID_CONFIG, f"portmap: {what} {port!r} is not a port number")
        host_ip = m.get("hostIP") or ""
        if host_ip in ("0.0.0.0", "::"):
            host_ip = ""
        if host_ip:
            try:
                ipaddress.ip_address(host_ip)
            except ValueError:
                raise CniError(INVALID_CONFIG, f"portmap: hostIP {host_ip!r} is not an address") from None
        out.append({"proto": proto, "host_port": host_port, "container_port": container_port, "host_ip": host_ip})
    return out


def _mark(conf: dict) -> str:
    bit = conf.get("markMasqBit", DEFAULT_MARK_BIT)
    if not isinstance(bit, int) or not 0 <= bit <= 31:
        raise CniError(INVALID_CONFIG, f"portmap: markMasqBit {bit!r} must be 0..31")
    value = 1 << bit
    return f"{value:#x}/{value:#x}"


_LOCAL = ["-m", "addrtype", "--dst-type", "LOCAL", "-j", DNAT_CHAIN]


def _shared_chains(nat: iptables.Table, mark: str) -> None:
    """The chains all pods share, and the jumps into them, made where missing."""
    nat.ensure_chain(DNAT_CHAIN)
    for hook in ("PREROUTING", "OUTPUT"):
        if not nat.jumps(hook, DNAT_CHAIN):
            nat.append(hook, _LOCAL)
    # These two hold one rule each, Cricket's: rewritten whole, so the mark is the config's.
    nat.reset_chain(SETMARK_CHAIN)
    nat.append(SETMARK_CHAIN, ["-j", "MARK", "--set-xmark", mark])
    nat.reset_chain(MASQ_CHAIN)
    nat.append(MASQ_CHAIN, ["-m", "mark", "--mark", mark, "-j", "MASQUERADE"])
    if not nat.jumps("POSTROUTING", MASQ_CHAIN):
        nat.append("POSTROUTING", ["-j", MASQ_CHAIN])


def _drop_shared_chains(nat: iptables.Table) -> None:
    """Remove the shared chains; called when the last pod's jump goes in the same batch."""
    for hook in ("PREROUTING", "OUTPUT"):
        for rule in nat.jumps(hook, DNAT_CHAIN):
            nat.delete(hook, rule)
    for rule in nat.jumps("POSTROUTING", MASQ_CHAIN):
        nat.delete("POSTROUTING", rule)
    for chain in (DNAT_CHAIN, MASQ_CHAIN, SETMARK_CHAIN):
        nat.delete_chain(chain)


def _route_localnet(prev: dict) -> None:
    # The host side of the pod's network (the bridge): where a DNAT'd 127.0.0.1 connection leaves.
    for iface in prev.get("interfaces") or ():
        if not iface.get("sandbox"):
            path = f"/proc/sys/net/ipv4/conf/{iface['name']}/route_localnet"
            if os.path.exists(path):
                with open(path, "w") as f:
                    f.write("1")
            return


def add(conf: dict, env: Env) -> dict:
    prev = result_from_any(conf.get("prevResult") or {})
    mappings = _mappings(conf)
    if not mappings:
        return prev
    pod_ip = next((ipaddress.ip_interface(ip["address"]) for ip in prev.get("ips") or ()
                   if ":" not in ip["address"]), None)
    if pod_ip is None:
        raise CniError(INVALID_CONFIG, "portmap: the result so far gives the pod no IPv4 address to forward to")
    mark = _mark(conf)
    chain = iptables.chain_name(POD_CHAIN_PREFIX, conf["name"], env.container_id)
    tag = iptables.comment(conf["name"], env.container_id)
    with _locked():
        nat = iptables.Table("nat")
        _shared_chains(nat, mark)
        for rule in nat.jumps(DNAT_CHAIN, chain):  # a retried ADD starts from nothing
            nat.delete(DNAT_CHAIN, rule)
        nat.reset_chain(chain)
        for m in mappings:
            if m["host_ip"] and ":" in m["host_ip"]:
                continue  # IPv6 host addresses would need ip6tables
            where = ["-p", m["proto"], "--dport", str(m["host_port"])]
            if m["host_ip"]:
                where = ["-d", m["host_ip"], *where]
            nat.append(chain, ["-s", str(pod_ip.network), *where, "-j", SETMARK_CHAIN, *tag])
            nat.append(chain, ["-s", "127.0.0.1", *where, "-j", SETMARK_CHAIN, *tag])
            nat.append(chain, [*where, "-j", "DNAT", "--to-destination", f"{pod_ip.ip}:{m['container_port']}", *tag])
        for proto in sorted({m["proto"] for m in mappings}):
            ports = ",".join(sorted({str(m["host_port"]) for m in mappings if m["proto"] == proto}))
            nat.append(DNAT_CHAIN, ["-p", proto, "-m", "multiport", "--destination-ports", ports, "-j", chain, *tag])
        nat.commit()
        _route_localnet(prev)
    return prev


def delete(conf: dict, env: Env) -> None:
    chain = iptables.chain_name(POD_CHAIN_PREFIX, conf["name"], env.container_id)
    with _locked():
        nat = iptables.Table("nat")
        mine = nat.jumps(DNAT_CHAIN, chain)
        for rule in mine:
            nat.delete(DNAT_CHAIN, rule)
        nat.delete_chain(chain)
        if nat.has_chain(DNAT_CHAIN) and len(nat.rules(DNAT_CHAIN)) == len(mine):
            _drop_shared_chains(nat)  # this pod was the last with host ports
        nat.commit()


def check(conf: dict, env: Env) -> None:
    if not _mappings(conf):
        return
    chain = iptables.chain_name(POD_CHAIN_PREFIX, conf["name"], env.container_id)
    if not iptables.Table("nat").rules(chain):
        raise CniError(INVALID_CONFIG, f"portmap: the pod's chain {chain} is missing or empty")

