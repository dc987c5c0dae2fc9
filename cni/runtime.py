"""cricketd's CNI runtime: the network config, the plugin chain for each pod, the result cache.

The network is the first .conflist, .conf or .json of the conf dir in lexical
order, re-read whenever the directory changes (a config written after start
is picked up). ADD runs the chain in order, each plugin getting the result so
far; a failing ADD is undone with DEL before the error goes back. DEL runs the
chain backwards with the config and result cached at ADD, so it works after a
config change or a daemon restart. Cricket's own plugins run in the network
worker; any other plugin is executed as the spec says.
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
    def __init__(self, conf_dir: str, bin_dirs: list[str], state_dir: str):
        self.conf_dir = conf_dir
        self.bin_dirs = bin_dirs
        self.cache_dir = os.path.join(state_dir, "cni", "results")
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
        result: dict | None = None
        try:
            for plugin in netconf["plugins"]:
                conf = plugin_config(netconf, plugin, runtime_config, result)
                out = await self._run(plugin["type"], conf, env)
                if out is not None:
                    result = result_from_any(out)
        except BaseException:
            await self._delete_chain(netconf, sandbox_id, netns, ifname, args, runtime_config, result)
            raise
        result = result or {"cniVersion": "1.0.0"}
        cache = {"kind": "cricketCniCacheV1", "config": netconf, "result": result, "ifName": ifname,
                 "args": args, "runtimeConfig": runtime_config}
        path = self._cache_path(netconf["name"], sandbox_id, ifname)
        with open(path + ".tmp", "w") as f:
            json.dump(cache, f)
        os.replace(path + ".tmp", path)
        return result

    async def delete(self, sandbox_id: str, netns: str, ifname: str) -> None:
        """Tear the pod's network down; fine to repeat, and after a restart or a config change."""
        with _tracer.start_as_current_span("cni.del", attributes={"cri.pod_sandbox_id": sandbox_id}):
            await self._delete(sandbox_id, netns, ifname)

    async def _delete(self, sandbox_id: str, netns: str, ifname: str) -> None:
        cached = self._cached(sandbox_id, ifname)
        if cached is None:
            return  # never set up, or torn down already
        path, doc = cached
        await self._delete_chain(doc["config"], sandbox_id, netns, ifname, doc.get("args") or {},
                                 doc.get("runtimeConfig") or {}, doc.get("result"))
        os.unlink(path)

    async def check(self, sandbox_id: str, netns: str, ifname: str) -> None:
        cached = self._cached(sandbox_id, ifname)
        if cached is None:
            raise CniError(IO_FAILURE, f"pod sandbox {sandbox_id} has no network to check")
        _, doc = cached
        netconf = doc["config"]
        env = invoke.Env("CHECK", sandbox_id, netns, ifname, self.bin_dirs, doc.get("args") or {})
        for plugin in netconf["plugins"]:
            await self._run(plugin["type"], plugin_config(netconf, plugin, doc.get("runtimeConfig") or {},
                                                          doc["result"]), env)

    def _cached(self, sandbox_id: str, ifname: str) -> tuple[str, dict] | None:
        suffix = f"-{sandbox_id}-{ifname}.json"
        for name in os.listdir(self.cache_dir):
            if name.endswith(suffix):
                path = os.path.join(self.cache_dir, name)
                try:
                    with open(path) as f:
                        return path, json.load(f)
                except (OSError, ValueError):
                    continue
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
        if failures:
            raise CniError(IO_FAILURE, "CNI DEL did not finish", "; ".join(failures))

    def close(self) -> None:
        self.worker.stop()
