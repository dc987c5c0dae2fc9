"""Pod networking through CNI, with Cricket's plugins and with the reference ones.

Every network here is the test's own: a bridge with a random name, a private
subnet, its own host-local store and conf dir. All traffic stays on this
machine: between pods, to the bridge, and to 127.0.0.1. Afterwards no bridge,
veth, iptables rule or address allocation of the test's remains, and the
host's ip_forward is what it was.
"""
from __future__ import annotations

import concurrent.futures
import ipaddress
import json
import os
import random
import re
import secrets
import signal
import socket
import subprocess
import time

import grpc
import pytest

from api.runtime.v1 import api_pb2 as pb
from cni.install import install_plugins
from tests.daemon import Cricketd, need_root, registry_config
from tests.pods import Pods, rpc_error, serving

REFERENCE_PLUGINS = "/usr/lib/cni"


class OwnNetwork:
    """One network of the test's own: its conflist, plugin dir, store and bridge."""

    def __init__(self, root: str, plugins: str = "cricket"):
        self.bridge = "crk" + secrets.token_hex(3)
        self.name = "net-" + self.bridge
        self.subnet = ipaddress.ip_network(f"10.{random.randint(200, 250)}.{random.randint(0, 255)}.0/24")
        self.gateway = str(self.subnet.network_address + 1)
        self.conf_dir = os.path.join(root, "net.d")
        self.data_dir = os.path.join(root, "ipam")
        if plugins == "cricket":
            self.bin_dir = os.path.join(root, "bin")
            install_plugins(self.bin_dir)
        else:
            self.bin_dir = REFERENCE_PLUGINS
        os.makedirs(self.conf_dir, exist_ok=True)

    def conflist(self, extra_plugins=()) -> dict:
        return {
            "cniVersion": "1.0.0", "name": self.name,
            "plugins": [
                {"type": "bridge", "bridge": self.bridge, "isGateway": True, "ipMasq": True, "hairpinMode": True,
                 "ipam": {"type": "host-local", "dataDir": self.data_dir,
                          "ranges": [[{"subnet": str(self.subnet)}]], "routes": [{"dst": "0.0.0.0/0"}]}},
                {"type": "portmap", "capabilities": {"portMappings": True}},
                {"type": "loopback"},
                *extra_plugins,
            ],
        }

    def write(self, extra_plugins=()) -> None:
        with open(os.path.join(self.conf_dir, "10-test.conflist"), "w") as f:
            json.dump(self.conflist(extra_plugins), f)

    def daemon_config(self) -> str:
        return f'[cni]\nconf_dir = "{self.conf_dir}"\nbin_dirs = ["{self.bin_dir}"]\n'

    def allocations(self) -> list[str]:
        d = os.path.join(self.data_dir, self.name)
        return sorted(n for n in os.listdir(d) if n[0].isdigit()) if os.path.isdir(d) else []

    def veths(self) -> list[str]:
        out = subprocess.run(["ip", "-o", "link", "show", "master", self.bridge], capture_output=True, text=True)
        return [line.split(":")[1].strip().split("@")[0] for line in out.stdout.splitlines()]

    def rules(self) -> list[str]:
        dump = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True).stdout
        return [line for line in dump.splitlines() if self.name in line]

    def remove(self) -> None:
        """Delete the bridge, and any NAT rule or chain of this network that a failure left."""
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        rules = [line for line in self.rules() if line.startswith("-A ")]
        chains = {line.split()[1] for line in rules if line.split()[1].startswith("CNI-")
                  and not line.split()[1].startswith("CNI-HOSTPORT-")}
        for batch in (["-D" + line[2:] for line in rules if line.split()[1] not in chains]
                      + [f"-F {c}" for c in chains], [f"-X {c}" for c in chains]):
            if batch:
                subprocess.run(["iptables-restore", "-w", "5", "--noflush"], capture_output=True, text=True,
                               input="\n".join(["*nat", *batch, "COMMIT", ""]))


@pytest.fixture(scope="module", autouse=True)
def host_sysctls():
    """The bridge plugins turn on forwarding, as they must for a gateway: put it back after."""
    need_root()
    with open("/proc/sys/net/ipv4/ip_forward") as f:
        before = f.read()
    yield
    with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
        f.write(before)


@pytest.fixture
def network(tmp_path):
    net = OwnNetwork(str(tmp_path / "cni"))
    net.write()
    yield net
    net.remove()


@pytest.fixture
def daemon(registry, test_images, tmp_path, network):
    with serving(str(tmp_path / "cricketd"), registry_config(registry) + network.daemon_config(),
                 [test_images["busybox"].reference(registry)]) as d:
        yield d


@pytest.fixture
def pods(daemon, tmp_path):
    return Pods(daemon, str(tmp_path / "logs"))


@pytest.fixture
def busybox(registry, test_images):
    return test_images["busybox"].reference(registry)


def pod_ip(pods: Pods, pod: str) -> str:
    return pods.pod_status(pod).status.network.ip


def serve_hello(pods: Pods, pod: str, busybox: str, port: int = 8080) -> str:
    """A container that answers every TCP connection on `port` with hello."""
    return pods.run(pod, busybox, ["busybox", "nc", "-ll", "-p", str(port), "-e", "/bin/echo", "hello"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_pods_reach_each_other_and_the_gateway(pods, network, busybox):
    a, b = pods.run_pod(), pods.run_pod()
    ip_a, ip_b = pod_ip(pods, a), pod_ip(pods, b)
    assert ip_a != ip_b and {ipaddress.ip_address(ip_a), ipaddress.ip_address(ip_b)} <= set(network.subnet)
    serve_hello(pods, a, busybox)
    client = pods.run(b, busybox, ["sleep", "1000"])
    time.sleep(0.3)
    assert pods.sh(client, f"busybox nc -w 3 {ip_a} 8080 </dev/null") == "hello\n"
    assert "1 packets received" in pods.sh(client, f"busybox ping -c 1 -W 3 {network.gateway}")
    routes = pods.sh(client, "busybox ip route")
    assert f"default via {network.gateway} dev eth0" in routes
    assert len(network.veths()) == 2


def nat_chains() -> set[str]:
    dump = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True).stdout
    return {line[1:].split()[0] for line in dump.splitlines() if line.startswith(":")}


def test_host_port_is_reachable_on_the_hosts_loopback(pods, network, busybox):
    chains_before = nat_chains()
    port = free_port()
    config = pods.pod_config()
    config.port_mappings.append(pb.PortMapping(protocol=pb.TCP, container_port=8080, host_port=port))
    config.port_mappings.append(pb.PortMapping(protocol=pb.UDP, container_port=5353, host_port=port))
    pod = pods.run_pod(config)
    serve_hello(pods, pod, busybox)
    time.sleep(0.3)
    # from the host's own loopback, and at one of the host's addresses (the bridge's)
    for host in ("127.0.0.1", network.gateway):
        with socket.create_connection((host, port), timeout=5) as s:
            assert s.recv(100) == b"hello\n"
    assert any("-p udp" in rule and f"--dport {port}" in rule for rule in network.rules())
    pods.remove_pod(pod)
    assert network.rules() == []
    assert nat_chains() == chains_before  # the last pod with host ports takes the shared chains along
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_fifty_pods_at_once_get_fifty_addresses_and_leave_nothing(pods, network):
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        ids = list(pool.map(lambda _: pods.run_pod(), range(50)))
    ips = [pod_ip(pods, p) for p in ids]
    assert len(set(ips)) == 50 and all(ipaddress.ip_address(ip) in network.subnet for ip in ips)
    assert len(network.allocations()) == 50 and len(network.veths()) == 50
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        list(pool.map(pods.remove_pod, ids))
    assert network.allocations() == [] and network.veths() == [] and network.rules() == []


def test_a_failing_plugin_fails_the_pod_and_undoes_the_network(pods, network):
    network.write(extra_plugins=[{"type": "no-such-plugin"}])
    err = rpc_error(pods.run_pod)
    assert "no-such-plugin" in err.details()
    assert pods.rt.ListPodSandbox(pb.ListPodSandboxRequest()).items == []
    assert network.allocations() == [] and network.veths() == [] and network.rules() == []


def test_network_ready_follows_the_conf_dir_without_a_restart(pods, network):
    os.unlink(os.path.join(network.conf_dir, "10-test.conflist"))

    def ready():
        conditions = {c.type: c for c in pods.rt.Status(pb.StatusRequest()).status.conditions}
        return conditions["NetworkReady"]

    assert ready().status is False and network.conf_dir in ready().message
    assert rpc_error(pods.run_pod).code() != grpc.StatusCode.OK
    network.write()
    assert ready().status is True
    assert pod_ip(pods, pods.run_pod())


def test_teardown_after_a_daemon_restart(pods, daemon, network):
    pod = pods.run_pod()
    assert len(network.allocations()) == 1
    daemon.stop(signal.SIGKILL)
    daemon.start()
    pods.stop_pod(pod)
    assert network.allocations() == [] and network.veths() == []
    pods.stop_pod(pod)  # again: nothing left to tear down, and no error
    pods.remove_pod(pod)


def test_host_network_pods_skip_cni(pods, network):
    pod = pods.run_pod(network=pb.NODE)
    assert pod_ip(pods, pod) == "" and network.allocations() == []


def test_pod_stats_count_the_pods_traffic(pods, network, busybox):
    pod = pods.run_pod()
    cid = pods.run(pod, busybox, ["sleep", "1000"])
    pods.sh(cid, f"busybox ping -c 3 -i 0.2 -W 2 {network.gateway}")
    stats = pods.rt.PodSandboxStats(pb.PodSandboxStatsRequest(pod_sandbox_id=pod)).stats
    eth0 = stats.linux.network.default_interface
    assert eth0.name == "eth0" and eth0.rx_bytes.value > 0 and eth0.tx_bytes.value > 0


def run_plugin(bin_dir: str, kind: str, command: str, conf: dict, netns: str = "", within: str = "") -> dict:
    """Execute a plugin as a runtime would; `within`: from inside that network namespace."""
    env = {"PATH": os.environ["PATH"], "CNI_COMMAND": command, "CNI_CONTAINERID": "exec-test",
           "CNI_NETNS": netns, "CNI_IFNAME": "eth0", "CNI_PATH": bin_dir}
    prefix = ["nsenter", f"--net={within}"] if within else []
    out = subprocess.run([*prefix, os.path.join(bin_dir, kind)], input=json.dumps(conf), env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout) if out.stdout.strip() else {}


def test_plugins_are_cni_executables_any_runtime_can_run(network):
    """What containerd or CRI-O would do: execute the installed plugins, with a 0.4.0 config."""
    assert "0.4.0" in run_plugin(network.bin_dir, "bridge", "VERSION", {})["supportedVersions"]
    conf = {"cniVersion": "0.4.0", "name": network.name, **network.conflist()["plugins"][0]}
    netns = "crkexec" + secrets.token_hex(3)
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        result = run_plugin(network.bin_dir, "bridge", "ADD", conf, f"/run/netns/{netns}")
        assert result["cniVersion"] == "0.4.0" and result["ips"][0]["version"] == "4"
        address = result["ips"][0]["address"]
        assert ipaddress.ip_interface(address).ip in network.subnet
        shown = subprocess.run(["ip", "-n", netns, "-o", "addr", "show", "eth0"], capture_output=True, text=True)
        assert address in shown.stdout
        run_plugin(network.bin_dir, "bridge", "CHECK", {**conf, "prevResult": result}, f"/run/netns/{netns}")
        run_plugin(network.bin_dir, "bridge", "DEL", {**conf, "prevResult": result}, f"/run/netns/{netns}")
        assert network.allocations() == [] and network.veths() == []
    finally:
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)


def test_bridge_works_from_a_node_that_is_a_network_namespace_of_its_own(network):
    """As on a kind-style node: the runtime, and so the plugins, run in a namespace that is not
    the one /sys was mounted for. The bridge and hairpin mode must be set up there all the same."""
    conf = {"cniVersion": "1.0.0", "name": network.name, **network.conflist()["plugins"][0]}
    node, pod = "crknode" + secrets.token_hex(3), "crkpod" + secrets.token_hex(3)
    for ns in (node, pod):
        subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        result = run_plugin(network.bin_dir, "bridge", "ADD", conf, f"/run/netns/{pod}", within=f"/run/netns/{node}")
        veth = result["interfaces"][1]["name"]
        shown = subprocess.run(["ip", "-n", node, "-d", "link", "show", veth], capture_output=True, text=True)
        assert f"master {network.bridge}" in shown.stdout and "hairpin on" in shown.stdout, shown.stdout
        assert not os.path.exists(f"/sys/class/net/{network.bridge}")  # nothing of it on the host
        run_plugin(network.bin_dir, "bridge", "DEL", {**conf, "prevResult": result}, f"/run/netns/{pod}",
                   within=f"/run/netns/{node}")
        assert network.allocations() == []
    finally:
        for ns in (pod, node):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


# -- the same network through the reference plugins -------------------------------------------


def _observe(pods: Pods, busybox: str) -> dict:
    pod = pods.run_pod()
    cid = pods.run(pod, busybox, ["sleep", "1000"])
    gateway_ok = "1 packets received" in pods.sh(cid, "busybox ping -c 1 -W 3 $(busybox ip route | "
                                                      "busybox awk '/default/ {print $3}')")
    # An IPv6 link-local address comes from the random MAC: only its presence compares.
    addrs = sorted(line.split()[1] + " " + re.sub(r"^fe80:[0-9a-f:]+/", "fe80::/", line.split()[3]) for line in
                   pods.sh(cid, "busybox ip -o addr").splitlines())
    links = sorted(line.split(":")[1].split("@")[0].strip() + " " + line.split("mtu")[1].split()[0]
                   for line in pods.sh(cid, "busybox ip -o link").splitlines())
    routes = sorted(pods.sh(cid, "busybox ip route").splitlines())
    ip = pod_ip(pods, pod)
    pods.remove_pod(pod)
    return {"addrs": addrs, "links": links, "routes": routes, "gateway_reachable": gateway_ok, "ip": ip}


def test_cricket_plugins_set_up_what_the_reference_ones_do(registry, test_images, busybox, tmp_path):
    seen = {}
    for plugins in ("reference", "cricket"):
        net = OwnNetwork(str(tmp_path / plugins), plugins)
        net.bridge, net.name = "crkdiff0", "net-diff"  # the same names for both, so the views compare
        net.subnet, net.gateway = ipaddress.ip_network("10.249.7.0/24"), "10.249.7.1"
        net.write()
        d = Cricketd(str(tmp_path / f"d-{plugins}"), registry_config(registry) + net.daemon_config()).start()
        try:
            d.pull(busybox)
            seen[plugins] = _observe(Pods(d, str(tmp_path / f"logs-{plugins}")), busybox)
            assert net.allocations() == [] and net.veths() == [] and net.rules() == []
        finally:
            Pods(d, "").remove_all()
            d.stop()
            net.remove()
    assert seen["cricket"] == seen["reference"]
    assert seen["cricket"]["gateway_reachable"]
