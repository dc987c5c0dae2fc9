"""bridge: a Linux bridge on the host and a veth pair per pod, its far end as the pod's interface.

ADD makes the bridge if it is missing, asks the IPAM plugin for addresses,
makes a veth pair in the pod's namespace under the asked name with its other
end in the host's, gives the pod's end the addresses and routes, and plugs
the host's end into the bridge. isGateway puts the gateway address on the bridge (and turns on
forwarding); ipMasq masquerades what the pod sends outside its subnet, with
the pod's rules in a chain of its own. DEL undoes it; every step tolerates
what is already gone.
"""
from __future__ import annotations

import errno
import ipaddress
import os
import secrets

from cni import invoke
from cni.invoke import Env
from cni.plugins import iptables
from cni.spec import INVALID_CONFIG, IO_FAILURE, CniError, result_from_any
from linux.namespaces import run_in

DEFAULT_BRIDGE = "cni0"
MASQ_CHAIN_PREFIX = "CNI-"
MULTICAST = "224.0.0.0/4"


def _iproute():
    # pyroute2 costs 20 MB when imported: only the network worker and the plugin
    # executables load it, never cricketd or the shims.
    from pyroute2 import IPRoute
    return IPRoute()


def _netlink_error():
    from pyroute2 import NetlinkError
    return NetlinkError


def _config(conf: dict) -> dict:
    mtu = conf.get("mtu")
    if mtu is not None and (not isinstance(mtu, int) or not 68 <= mtu <= 65535):
        raise CniError(INVALID_CONFIG, f"bridge: mtu {mtu!r} must be a number from 68 to 65535")
    if not conf.get("ipam", {}).get("type"):
        raise CniError(INVALID_CONFIG, "bridge: an ipam section with a type is required")
    name = conf.get("bridge") or DEFAULT_BRIDGE
    if len(name) > 15 or "/" in name:
        raise CniError(INVALID_CONFIG, f"bridge: name {name!r} is not a valid interface name")
    return {"bridge": name, "mtu": mtu, "gateway": bool(conf.get("isGateway") or conf.get("isDefaultGateway")),
            "default_gateway": bool(conf.get("isDefaultGateway")), "masq": bool(conf.get("ipMasq")),
            "hairpin": bool(conf.get("hairpinMode"))}


def _ipam(conf: dict, env: Env, command: str) -> dict | None:
    ipam_conf = {"cniVersion": conf.get("cniVersion", "1.0.0"), "name": conf["name"], "ipam": conf["ipam"]}
    sub = Env(command, env.container_id, env.netns, env.ifname, env.path, env.args)
    return invoke.run(conf["ipam"]["type"], ipam_conf, sub)


def _mac(ip, index: int) -> str:
    return ip.get_links(index)[0].get_attr("IFLA_ADDRESS")


def _ensure_bridge(ip, name: str, mtu: int | None) -> int:
    found = ip.link_lookup(ifname=name)
    if not found:
        try:
            ip.link("add", ifname=name, kind="bridge")
        except _netlink_error() as e:
            if e.code != errno.EEXIST:  # made meanwhile by a concurrent ADD
                raise
        found = ip.link_lookup(ifname=name)
    index = found[0]
    link = ip.get_links(index)[0]
    if link.get_attr("IFLA_LINKINFO") and link.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_KIND") != "bridge":
        raise CniError(IO_FAILURE, f"bridge: {name} exists and is not a bridge")
    if mtu:
        ip.link("set", index=index, mtu=mtu)
    ip.link("set", index=index, state="up")
    return index


def _ensure_gateway_address(ip, bridge: int, ips: list[dict]) -> None:
    present = {(a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in ip.get_addr(index=bridge)}
    for entry in ips:
        if not entry.get("gateway"):
            continue
        prefix = ipaddress.ip_interface(entry["address"]).network.prefixlen
        if (entry["gateway"], prefix) in present:
            continue
        try:
            ip.addr("add", index=bridge, address=entry["gateway"], prefixlen=prefix)
        except _netlink_error() as e:
            if e.code != errno.EEXIST:
                raise


def _enable_forwarding(ips: list[dict]) -> None:
    for entry in ips:
        path = "/proc/sys/net/ipv6/conf/all/forwarding" if ":" in entry["address"] else "/proc/sys/net/ipv4/ip_forward"
        with open(path) as f:
            if f.read().strip() == "1":
                continue
        with open(path, "w") as f:
            f.write("1")


def _make_pod_side(ifname: str, host_ns_fd: int, mtu: int | None, ips: list[dict],
                   routes: list[tuple[str, str | None]]) -> tuple[str, str]:
    """In the pod's namespace: a veth pair made there, its far end born in the host's namespace
    (moving a device between namespaces waits out an RCU grace period, tens of ms, making it
    in place does not); the pod's end gets the addresses and routes. (host end name, pod MAC)."""
    with _iproute() as ip:
        for _ in range(10):
            host = "veth" + secrets.token_hex(4)
            peer = {"ifname": host, "net_ns_fd": host_ns_fd, **({"mtu": mtu} if mtu else {})}
            try:
                ip.link("add", ifname=ifname, kind="veth", peer=peer, **({"mtu": mtu} if mtu else {}))
                break
            except _netlink_error() as e:
                if e.code != errno.EEXIST or ip.link_lookup(ifname=ifname):
                    raise  # a clash of the host end's random name is retried; one of ifname is not
        else:
            raise CniError(IO_FAILURE, "bridge: no free veth name after 10 tries")
        index = ip.link_lookup(ifname=ifname)[0]
        ip.link("set", index=index, state="up")
        for entry in ips:
            iface = ipaddress.ip_interface(entry["address"])
            ip.addr("add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
        for dst, gw in routes:
            net = ipaddress.ip_network(dst, strict=False)
            spec = {"dst": str(net.network_address), "dst_len": net.prefixlen, "oif": index}
            if gw:
                spec["gateway"] = gw
            try:
                ip.route("add", **spec)
            except _netlink_error() as e:
                if e.code != errno.EEXIST:
                    raise
        return host, _mac(ip, index)


def _routes_for(ips: list[dict], routes: list[dict], default_gateway: bool) -> list[tuple[str, str | None]]:
    """(destination, gateway) of each route the pod gets: the IPAM's, plus the default route via
    the gateway with isDefaultGateway; a route without a gateway goes via its family's."""
    gateways: dict[bool, str] = {}  # is IPv6 -> gateway
    for entry in ips:
        if entry.get("gateway"):
            gateways.setdefault(":" in entry["gateway"], entry["gateway"])
    out = []
    for rt in routes:
        dst = rt["dst"]
        out.append((dst, rt.get("gw") or gateways.get(":" in dst)))
    if default_gateway:
        for v6, gw in gateways.items():
            dst = "::/0" if v6 else "0.0.0.0/0"
            if all(d != dst for d, _ in out):
                out.append((dst, gw))
    return out


def _masquerade(network: str, container_id: str, ips: list[dict]) -> None:
    """The pod's chain: its own subnet as is, anything else but multicast masqueraded;
    POSTROUTING sends the pod's traffic there. A repeated ADD rebuilds both."""
    chain = iptables.chain_name(MASQ_CHAIN_PREFIX, network, container_id)
    tag = iptables.comment(network, container_id)
    nat = iptables.Table("nat")
    for rule in nat.jumps("POSTROUTING", chain):
        nat.delete("POSTROUTING", rule)
    nat.reset_chain(chain)
    for entry in ips:
        if ":" in entry["address"]:
            continue  # iptables is IPv4; IPv6 masquerade would need ip6tables
        iface = ipaddress.ip_interface(entry["address"])
        nat.append(chain, ["-d", str(iface.network), "-j", "ACCEPT", *tag])
        nat.append(chain, ["!", "-d", MULTICAST, "-j", "MASQUERADE", *tag])
        nat.append("POSTROUTING", ["-s", str(iface.ip), "-j", chain, *tag])
    nat.commit()


def _unmasquerade(network: str, container_id: str) -> None:
    chain = iptables.chain_name(MASQ_CHAIN_PREFIX, network, container_id)
    nat = iptables.Table("nat")
    for rule in nat.jumps("POSTROUTING", chain):
        nat.delete("POSTROUTING", rule)
    nat.delete_chain(chain)
    nat.commit()


def add(conf: dict, env: Env) -> dict:
    cfg = _config(conf)
    ipam = _ipam(conf, env, "ADD")
    ipam = result_from_any(ipam or {})
    ips = ipam.get("ips") or []
    if not ips:
        raise CniError(IO_FAILURE, "bridge: the IPAM plugin gave no address")
    try:
        routes = _routes_for(ips, ipam.get("routes") or [], cfg["default_gateway"])
        with _iproute() as ip:
            bridge = _ensure_bridge(ip, cfg["bridge"], cfg["mtu"])
            if cfg["gateway"]:
                _ensure_gateway_address(ip, bridge, ips)
            host_ns = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            try:
                host, pod_mac = run_in(env.netns, lambda: _make_pod_side(env.ifname, host_ns, cfg["mtu"], ips, routes))
            finally:
                os.close(host_ns)
            host_index = ip.link_lookup(ifname=host)[0]
            ip.link("set", index=host_index, master=bridge, state="up")
            if cfg["hairpin"]:
                # By netlink, not /sys/class/net: sysfs lists the links of the namespace that
                # mounted it, which is not this one when the node is a namespace of its own.
                ip.brport("set", index=host_index, mode=1)
            bridge_mac, host_mac = _mac(ip, bridge), _mac(ip, host_index)
        if cfg["gateway"]:
            _enable_forwarding(ips)
        if cfg["masq"]:
            _masquerade(conf["name"], env.container_id, ips)
    except BaseException as e:
        # Nothing half-made: the addresses go back, the pod side of a veth goes with the host side.
        try:
            delete(conf, env)
        except CniError:
            pass
        if isinstance(e, CniError):
            raise
        raise CniError(IO_FAILURE, f"bridge: setting up {env.ifname} in {env.netns}", str(e)) from None
    interfaces = [{"name": cfg["bridge"], "mac": bridge_mac}, {"name": host, "mac": host_mac},
                  {"name": env.ifname, "mac": pod_mac, "sandbox": env.netns}]
    result_ips = [{**entry, "interface": 2} for entry in ips]
    result = {"cniVersion": "1.0.0", "interfaces": interfaces, "ips": result_ips,
              "routes": [{"dst": d, **({"gw": g} if g else {})} for d, g in routes]}
    if ipam.get("dns"):
        result["dns"] = ipam["dns"]
    return result


def delete(conf: dict, env: Env) -> None:
    cfg = _config(conf)
    failures = []
    try:
        _ipam(conf, env, "DEL")
    except CniError as e:
        failures.append(str(e))
    if env.netns and os.path.exists(env.netns):
        def remove_pod_side() -> None:
            with _iproute() as ip:
                found = ip.link_lookup(ifname=env.ifname)
                if found:
                    ip.link("del", index=found[0])  # its host end goes with it
        try:
            run_in(env.netns, remove_pod_side)
        except OSError as e:
            failures.append(f"removing {env.ifname}: {e}")
    if cfg["masq"]:
        try:
            _unmasquerade(conf["name"], env.container_id)
        except CniError as e:
            failures.append(str(e))
    if failures:
        raise CniError(IO_FAILURE, "bridge: DEL left work undone", "; ".join(failures))


def check(conf: dict, env: Env) -> None:
    cfg = _config(conf)
    prev = result_from_any(conf.get("prevResult") or {})
    with _iproute() as ip:
        if not ip.link_lookup(ifname=cfg["bridge"]):
            raise CniError(IO_FAILURE, f"bridge: {cfg['bridge']} is missing")

    def pod_addresses() -> set[str]:
        with _iproute() as ip:
            found = ip.link_lookup(ifname=env.ifname)
            if not found:
                raise CniError(IO_FAILURE, f"bridge: {env.ifname} is missing in {env.netns}")
            return {f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}" for a in ip.get_addr(index=found[0])}

    have = run_in(env.netns, pod_addresses)
    for entry in prev.get("ips") or []:
        if entry["address"] not in have:
            raise CniError(IO_FAILURE, f"bridge: {env.ifname} lost its address {entry['address']}")
    _ipam(conf, env, "CHECK")
