"""cricketd's CNI runtime: the network config, the plugin chain for each pod, the result cache.

The network is the first .conflist, .conf or .json of the conf dir in lexical
order, re-read whenever the directory changes (a config written after start
is picked up). ADD runs the chain in order, each plugin getting the result so
far; a failing ADD is undone with DEL before the error goes back. DEL runs the
chain backwards with the config and result cached at ADD, so it works after a
config change or a daemon restart. Cricket's own plugins run in the network
worker; any other plugin is executed as the spec says.

Before ADD runs a plugin, its intent (the conflist, container ID, ifname, netns,
args and capabilities) is in the cache: a daemon killed in the middle of ADD
leaves an address reserved and rules made, and the spec has DEL clean up after a
partial ADD, so teardown runs DEL from the intent when no result was cached. The
cache is under the root dir, as libcni keeps /var/lib/cni/results: the addresses
host-local reserves are on disk and outlive a reboot, and only DEL frees them.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time

from opentelemetry import trace

from cni import invoke
from cni.spec import (
    IO_FAILURE,
    CniError,
    load_network_config,
    plugin_config,
    result_from_any,
)
from frames.client import call
from linux.crash_points import crash_point

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("cricket.cni")

CONFIG_SUFFIXES = (".conflist", ".conf", ".json")
WORKER_START_SECONDS = 10.0


class NetworkWorker:
    """The process that runs Cricket's own plugins (see cni/worker.py), started on first need."""

    def __init__(self, state_dir: str):
        self.socket = os.path.join(state_dir, "cni-worker.sock")
        self._proc: subprocess.Popen | None = None
        self._starting: asyncio.Lock | None = None

    async def _ensure(self) -> None:
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if os.path.exists(self.socket) and self._proc is not None and self._proc.poll() is None:
                return
            if self._proc is not None:
                self._proc.poll()  # reap a worker that left when idle
            try:
                os.unlink(self.socket)
            except FileNotFoundError:
                pass
            self._proc = subprocess.Popen([sys.executable, "-m", "cni.worker", self.socket],
                                          stdin=subprocess.DEVNULL)
            deadline = time.monotonic() + WORKER_START_SECONDS
            while not os.path.exists(self.socket):
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    raise CniError(IO_FAILURE, "the CNI network worker did not start")
                await asyncio.sleep(0.01)

    async def call(self, kind: str, conf: dict, env: invoke.Env) -> dict | None:
        request = json.dumps({"kind": kind, "conf": conf, "env": vars(env)}).encode()
        for attempt in (0, 1):
            await self._ensure()
            try:
                answer = json.loads(await call(self.socket, request))
                break
            except (ConnectionError, FileNotFoundError):
                if attempt:  # it was leaving when we came: a new one takes the retry
                    raise CniError(IO_FAILURE, "the CNI network worker is not answering") from None
        if "error" in answer:
            e = answer["error"]
            raise CniError(e.get("code", IO_FAILURE), e.get("msg", "failed"), e.get("details", ""))
        return answer.get("result")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


class Network:
    def __init__(self, conf_dir: str, bin_dirs: list[str], state_dir: str, root_dir: str | None = None):
        self.conf_dir = conf_dir
        self.bin_dirs = bin_dirs
        # Where earlier versions kept the cache (lost with a reboot): still read, so an
        # upgrade tears down the pods set up before it.
        state_cache = os.path.join(state_dir, "cni", "results")
        self.cache_dir = os.path.join(root_dir, "cni", "results") if root_dir else state_cache
        self._cache_dirs = [self.cache_dir] + ([state_cache] if state_cache != self.cache_dir else [])
        os.makedirs(self.cache_dir, mode=0o700, exist_ok=True)
        self.worker = NetworkWorker(state_dir)
        self._seen: tuple | None = None
        self._config: dict | None = None
        self._problem = ""

    # -- the config -----------------------------------------------------------------

    def config(self) -> dict | None:
        """The network config in force, or None (then problem() says why)."""
        try:
            names = sorted(n for n in os.listdir(self.conf_dir) if n.endswith(CONFIG_SUFFIXES))
        except FileNotFoundError:
            names = []
        seen = tuple((n, os.stat(os.path.join(self.conf_dir, n)).st_mtime_ns) for n in names)
        if seen != self._seen:
            self._seen = seen
            self._config, self._problem = None, ""
            if not names:
                self._problem = f"no network config in {self.conf_dir}"
            else:
                path = os.path.join(self.conf_dir, names[0])
                try:
                    self._config = load_network_config(path)
                    log.info("CNI network %r from %s", self._config["name"], path)
                except CniError as e:
                    self._problem = str(e)
        return self._config

    def problem(self) -> str:
        self.config()
        return self._problem

    # -- running the chain -----------------------------------------------------------

    async def _run(self, kind: str, conf: dict, env: invoke.Env) -> dict | None:
        with _tracer.start_as_current_span(f"cni.plugin {kind}", attributes={"cni.command": env.command}):
            binary = invoke.find(kind, self.bin_dirs)
            if kind in invoke.OWN and invoke.is_own(binary):
                return await self.worker.call(kind, conf, env)
            return await asyncio.to_thread(invoke.execute, binary, conf, env)

    def _cache_path(self, network: str, sandbox_id: str, ifname: str) -> str:
        return os.path.join(self.cache_dir, f"{network}-{sandbox_id}-{ifname}.json")

    async def add(self, sandbox_id: str, netns: str, ifname: str, runtime_config: dict,
                  args: dict[str, str]) -> dict:
        """Set the pod's network up; the final result (1.0.0 shape). Undone on failure."""
        with _tracer.start_as_current_span("cni.add", attributes={"cri.pod_sandbox_id": sandbox_id}):
            return await self._add(sandbox_id, netns, ifname, runtime_config, args)

    async def _add(self, sandbox_id: str, netns: str, ifname: str, runtime_config: dict,
                   args: dict[str, str]) -> dict:
        netconf = self.config()
        if netconf is None:
            raise CniError(IO_FAILURE, f"no usable network: {self._problem}")
        env = invoke.Env("ADD", sandbox_id, netns, ifname, self.bin_dirs, args)
        path = self._cache_path(netconf["name"], sandbox_id, ifname)
        cache: dict = {"kind": "cricketCniCacheV1", "config": netconf, "result": None, "containerId": sandbox_id,
                 "ifName": ifname, "netns": netns, "args": args, "runtimeConfig": runtime_config}
        _write_json(path, cache)  # the intent, before any plugin makes anything
        crash_point("cni.after_intent")
        result: dict | None = None
        ran = 0  # plugins that may have made something
        try:
            for plugin in netconf["plugins"]:
                invoke.find(plugin["type"], self.bin_dirs)  # one not found has made nothing
                ran += 1
                conf = plugin_config(netconf, plugin, runtime_config, result)
                out = await self._run(plugin["type"], conf, env)
                if out is not None:
                    result = result_from_any(out)
                crash_point("cni.mid_add")  # armed: after the first plugin's ADD, before the rest
        except BaseException:
            # DEL for the plugins that ran. The intent stays until it has finished: if this DEL
            # fails, teardown runs it again, for the whole chain.
            try:
                await self._delete_chain({**netconf, "plugins": netconf["plugins"][:ran]}, sandbox_id, netns,
                                         ifname, args, runtime_config, result)
            except CniError as e:
                log.warning("undoing the failed ADD of pod sandbox %s: %s; teardown will try again", sandbox_id, e)
            else:
                _unlink(path)
            raise  # ADD's error: what the caller needs to hear
        result = result or {"cniVersion": "1.0.0"}
        cache["result"] = result
        _write_json(path, cache)
        return result

    async def delete(self, sandbox_id: str, netns: str, ifname: str) -> None:
        """Tear the pod's network down; fine to repeat, and after a restart or a config change."""
        with _tracer.start_as_current_span("cni.del", attributes={"cri.pod_sandbox_id": sandbox_id}):
            await self._delete(sandbox_id, netns, ifname)

    async def _delete(self, sandbox_id: str, netns: str, ifname: str) -> None:
        suffix = f"-{sandbox_id}-{ifname}.json.tmp"
        for d in self._cache_dirs:  # a cache write a crash cut short; the entry it replaced counts
            for name in os.listdir(d) if os.path.isdir(d) else ():
                if name.endswith(suffix):
                    _unlink(os.path.join(d, name))
        cached = self._cached(sandbox_id, ifname)
        if cached is None:
            return  # never set up, or torn down already
        path, doc = cached
        # A record made before its netns was saved (a crash in between) still has the intent's.
        await self._delete_chain(doc["config"], sandbox_id, netns or doc.get("netns") or "", ifname,
                                 doc.get("args") or {}, doc.get("runtimeConfig") or {}, doc.get("result"))
        _unlink(path)

    async def check(self, sandbox_id: str, netns: str, ifname: str) -> None:
        cached = self._cached(sandbox_id, ifname)
        if cached is None:
            raise CniError(IO_FAILURE, f"pod sandbox {sandbox_id} has no network to check")
        _, doc = cached
        if doc.get("result") is None:
            raise CniError(IO_FAILURE, f"pod sandbox {sandbox_id}: its network was never wholly set up")
        netconf = doc["config"]
        env = invoke.Env("CHECK", sandbox_id, netns, ifname, self.bin_dirs, doc.get("args") or {})
        for plugin in netconf["plugins"]:
            await self._run(plugin["type"], plugin_config(netconf, plugin, doc.get("runtimeConfig") or {},
                                                          doc["result"]), env)

    def _cached(self, sandbox_id: str, ifname: str) -> tuple[str, dict] | None:
        """The pod's cache entry: the result of its ADD, or the intent of an ADD that did not finish."""
        suffix = f"-{sandbox_id}-{ifname}.json"
        for d in self._cache_dirs:
            try:
                names = os.listdir(d)
            except FileNotFoundError:
                continue
            for name in names:
                if name.endswith(suffix):
                    path = os.path.join(d, name)
                    try:
                        with open(path) as f:
                            return path, json.load(f)
                    except (OSError, ValueError):
                        continue  # written whole by rename: damage, not a write in progress
        return None

    async def _delete_chain(self, netconf: dict, sandbox_id: str, netns: str, ifname: str, args: dict,
                            runtime_config: dict, result: dict | None) -> None:
        env = invoke.Env("DEL", sandbox_id, netns if netns and os.path.exists(netns) else "", ifname,
                         self.bin_dirs, args)
        failures = []
        for plugin in reversed(netconf["plugins"]):
            try:
                await self._run(plugin["type"], plugin_config(netconf, plugin, runtime_config, result), env)
            except CniError as e:
                failures.append(str(e))  # the rest still get their DEL
            crash_point("cni.mid_del")  # armed: after the last plugin's DEL, before the others'
        if failures:
            raise CniError(IO_FAILURE, "CNI DEL did not finish", "; ".join(failures))

    def close(self) -> None:
        self.worker.stop()


def _write_json(path: str, doc: dict) -> None:
    """Replace `path` with `doc` whole: a reader sees the old file or the new one."""
    with open(path + ".tmp", "w") as f:
        json.dump(doc, f)
    os.replace(path + ".tmp", path)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
