"""loopback: the lo interface of the pod's network namespace, up (and down on DEL)."""
from __future__ import annotations

from cni.invoke import Env
from cni.spec import IO_FAILURE, CniError, result_from_any
from linux.namespaces import run_in


def _set(netns: str, state: str) -> None:
    from pyroute2 import IPRoute  # in the network worker only: see cni/worker.py

    def body() -> None:
        with IPRoute() as ip:
            index = ip.link_lookup(ifname="lo")[0]
            ip.link("set", index=index, state=state)

    try:
        run_in(netns, body)
    except OSError as e:
        raise CniError(IO_FAILURE, f"loopback: setting lo {state} in {netns}", str(e)) from None


def add(conf: dict, env: Env) -> dict:
    _set(env.netns, "up")
    if conf.get("prevResult"):
        return result_from_any(conf["prevResult"])  # in a chain: the pod's result passes through
    return {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "lo", "mac": "00:00:00:00:00:00", "sandbox": env.netns}],
        "ips": [{"address": "127.0.0.1/8", "interface": 0}, {"address": "::1/128", "interface": 0}],
    }


def delete(conf: dict, env: Env) -> None:
    if env.netns:
        try:
            _set(env.netns, "down")
        except CniError:
            pass  # the namespace is gone: so is its lo


def check(conf: dict, env: Env) -> None:
    from pyroute2 import IPRoute

    def up() -> bool:
        with IPRoute() as ip:
            link = ip.get_links(ip.link_lookup(ifname="lo")[0])[0]
            return bool(link["flags"] & 1)

    if not run_in(env.netns, up):
        raise CniError(IO_FAILURE, f"loopback: lo is down in {env.netns}")
