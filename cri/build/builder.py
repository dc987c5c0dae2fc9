"""`cricket build`: a Dockerfile's stages run step by step on Cricket's own executor.

Each stage starts from an image (pulled through the configured registries when it is not
here), `scratch`, or an earlier stage. Instructions that only change the config (ENV,
LABEL, CMD ...) change it; RUN, COPY, ADD and WORKDIR run on an overlay of the layers so far
(cri/build/workspace.py) and what they change becomes one layer. A layer step is looked up
in the build cache first (image/build_cache.py) by its parent's key, the config it runs
with, the instruction as expanded and the content it copies. The image of the target stage
is recorded with one history entry per instruction. A failure names the step, the
Dockerfile line and the command, and leaves no image behind; the workspace goes in every case.
"""
from __future__ import annotations

import asyncio
import contextlib
import copy as copy_module
import email.utils
import os
import posixpath
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field

from cri.build import copying, run_step
from cri.build.workspace import Workspace, release
from cri.errors import InvalidArgument
from cri.oci_spec import DEFAULT_PATH, resolve_user
from cri.runtime import Runtime
from image import dockerfile as df
from image.build_cache import step_key
from image.layer_diff import LayerTooLarge
from image.manifest import host_platform
from image.metadata import ImageRecord
from image.new_image import base_layers, now_rfc3339, record_image
from image.pull import Puller
from image.reference import parse_reference
from image.registry import RegistryClient, RegistryError
from image.space import is_out_of_space
from image.unpack import unpack_layer

NETWORKS = ("none", "host")
# The most an instruction's variables may expand to: a config field is small, and the image
# config holding them all is bounded as a pulled one is.
MAX_EXPANDED = 1 << 20
_DEFAULT_SHELL = ["/bin/sh", "-c"]


class BuildFailed(Exception):
    """A step failed: the message names the step, its line, the command and its last output."""


@dataclass
class Options:
    dockerfile: str
    dockerfile_name: str = "Dockerfile"
    tags: list[str] = field(default_factory=list)
    build_args: dict[str, str] = field(default_factory=dict)
    target: str = ""
    no_cache: bool = False
    network: str = "none"


@dataclass
class _Stage:
    """Where a stage stands: its image config, layers, chain, cache key and ARGs in scope."""

    config: dict
    layers: list[dict]
    chain_id: str
    key: str
    args: dict[str, str] = field(default_factory=dict)
    cmd_set: bool = False

    @property
    def exec_config(self) -> dict:
        """The image config's execution parameters (Env, Cmd, WorkingDir ...)."""
        return self.config.setdefault("config", {})

    def env(self) -> dict[str, str]:
        """What $NAME expands to: the ARGs in scope, under the ENV (ENV wins, as Docker has it)."""
        out = dict(self.args)
        for item in self.exec_config.get("Env") or []:
            name, _, value = item.partition("=")
            out[name] = value
        return out

    def forked(self) -> _Stage:
        return _Stage(copy_module.deepcopy(self.config), list(self.layers), self.chain_id, self.key)


class Builder:
    def __init__(self, rt: Runtime, puller: Puller, client: RegistryClient, options: Options, ws: Workspace,
                 emit: Callable[[str], None]):
        if options.network not in NETWORKS:
            raise InvalidArgument(f"network {options.network!r}: a build's network is host or none")
        self.rt = rt
        self.store = rt.images
        self.puller = puller
        self.client = client
        self.opts = options
        self.ws = ws
        self.emit = emit
        self.stages: dict[str, _Stage] = {}
        self._held: list[str] = []
        self._step = 0
        self._steps = 0

    async def build(self) -> ImageRecord:
        try:
            names = [str(parse_reference(tag)) for tag in self.opts.tags]
        except ValueError as e:
            raise InvalidArgument(f"tag: {e}") from None  # before anything runs
        try:
            doc = df.parse(self.opts.dockerfile)
        except df.DockerfileError as e:
            raise InvalidArgument(f"{self.opts.dockerfile_name}:{e}") from None
        except RecursionError:
            raise InvalidArgument(f"{self.opts.dockerfile_name}: nested too deep to read") from None
        stages = doc.stages
        if self.opts.target:
            stage_names = [s.name for s in stages]
            if self.opts.target.lower() not in stage_names:
                raise InvalidArgument(f"target stage {self.opts.target!r} is not in {self.opts.dockerfile_name}")
            stages = stages[:stage_names.index(self.opts.target.lower()) + 1]
        self._steps = sum(1 + len(s.instructions) for s in stages)
        self.escape = doc.escape
        self.editor = ConfigEditor(self.opts.dockerfile_name, doc.escape, self.opts.build_args)
        global_args = self.editor.global_args(doc.global_args)
        try:
            state = None
            for stage in stages:
                state = await self._stage(stage, global_args)
                self.stages[str(stage.index)] = state
                if stage.name:
                    self.stages[stage.name] = state
            assert state is not None  # parse() refuses a Dockerfile without FROM
            state.config["created"] = now_rfc3339()
            return await asyncio.to_thread(record_image, self.store, state.config, state.layers, state.chain_id,
                                           names)
        finally:
            release(self.store, self._held)

    def _hold(self, *keys: str) -> None:
        for key in keys:
            if key:
                self.store.leases[key] += 1
                self._held.append(key)

    def _announce(self, text: str) -> None:
        self._step += 1
        self.emit(f"STEP {self._step}/{self._steps}: {text}")

    # -- FROM ----------------------------------------------------------------------------------

    async def _stage(self, stage: df.Stage, global_args: dict[str, str]) -> _Stage:
        self._announce(f"FROM {stage.base}" + (f" AS {stage.name}" if stage.name else ""))
        base = df.expand(stage.base, global_args, self.escape)
        if stage.platform:
            wanted = df.expand(stage.platform, global_args, self.escape)
            here = host_platform()
            if wanted not in (f"{here.os}/{here.architecture}", here.architecture):
                raise InvalidArgument(f"{self.opts.dockerfile_name}:{stage.line}: FROM --platform={wanted}: this "
                                      f"node builds for {here.os}/{here.architecture} only")
        state = await self._base(base, stage.line)
        for trigger in list(state.exec_config.pop("OnBuild", None) or []):
            try:
                inst = df.parse_instruction(trigger, stage.line, self.escape)
            except df.DockerfileError as e:
                raise InvalidArgument(f"{self.opts.dockerfile_name}:{stage.line}: the base image's ONBUILD "
                                      f"{trigger!r}: {e.message}") from None
            self.emit(f"  ONBUILD {trigger}")
            await self._instruction(state, inst)
        for inst in stage.instructions:
            self._announce(inst.text)
            await self._instruction(state, inst)
        return state

    async def _base(self, base: str, line: int) -> _Stage:
        if base.lower() == "scratch":
            config = new_config()
            config["config"]["Env"] = [DEFAULT_PATH]  # as BuildKit and buildah give a stage from scratch
            return _Stage(config, [], "", step_key("", "scratch"))
        if base.lower() in self.stages:
            return self.stages[base.lower()].forked()
        rec = self.store.find(base)
        if rec is None:
            try:
                ref = parse_reference(base)
            except ValueError as e:
                raise InvalidArgument(f"{self.opts.dockerfile_name}:{line}: FROM {base}: {e}") from None
            self.emit(f"  pulling {ref}")
            rec = await self.puller.pull(ref)
        self._hold(rec.chain_id)
        layers = await asyncio.to_thread(base_layers, self.store, rec)
        self._hold(*(layer["digest"] for layer in layers))
        config = copy_module.deepcopy(rec.config)
        _check_base_config(config, base)
        config.setdefault("history", [])
        config.setdefault("rootfs", {"type": "layers", "diff_ids": []})
        return _Stage(config, layers, rec.chain_id, step_key("", rec.id))

    # -- instructions --------------------------------------------------------------------------

    async def _instruction(self, state: _Stage, inst: df.Instruction) -> None:
        if inst.keyword in ("RUN", "COPY", "ADD", "WORKDIR"):
            await self._layer_step(state, inst)
        elif inst.keyword == "ARG":
            self.editor.declare(state, inst)  # an ARG is no part of the image
        else:
            self.editor.apply(state, inst)
            state.key = step_key(state.key, inst.keyword, state.exec_config)
            _history(state, inst.text, empty=True)

    async def _layer_step(self, state: _Stage, inst: df.Instruction) -> None:
        env = state.env()
        work, parts = await self._prepare(state, inst, env)
        key = step_key(state.key, inst.keyword, state.exec_config, parts)
        cache = self.store.build_cache
        entry = None if self.opts.no_cache else await asyncio.to_thread(cache.get, key)
        if entry is not None and await asyncio.to_thread(self._usable, entry):
            self.emit("  using cache")
            self._hold(entry["chain_id"], *(layer["digest"] for layer in entry["layers"]))
            state.layers, state.chain_id = list(entry["layers"]), entry["chain_id"]
            state.config["rootfs"] = {"type": "layers", "diff_ids": list(entry["diff_ids"])}
            state.config.setdefault("history", []).append(entry["history"])
            state.key = key
            return
        step = await asyncio.to_thread(self.ws.new_step)
        rootfs = await asyncio.to_thread(self.ws.mount, step, state.chain_id)
        try:
            await work(rootfs, step)
        finally:
            await asyncio.to_thread(self.ws.unmount, rootfs)
        try:
            layer = await self.ws.layer(step, state.chain_id, self.puller.limits.max_layer_size)
        except (ValueError, LayerTooLarge) as e:  # what the step left can not be a layer: say which step
            raise BuildFailed(f"step {self._step}/{self._steps} ({self.opts.dockerfile_name} line {inst.line}) "
                              f"{inst.text}: its changes can not be a layer: {e}") from None
        await asyncio.to_thread(self.ws.forget, step)
        _history(state, inst.text, empty=layer is None)
        if layer is not None:
            self._held += [layer.descriptor["digest"], layer.chain_id]  # leased by the workspace
            state.layers = [*state.layers, layer.descriptor]
            state.chain_id = layer.chain_id
            rootfs_doc = state.config.setdefault("rootfs", {"type": "layers", "diff_ids": []})
            rootfs_doc["diff_ids"] = [*(rootfs_doc.get("diff_ids") or []), layer.diff_id]
        await asyncio.to_thread(cache.put, key, {
            "layers": state.layers, "chain_id": state.chain_id, "diff_ids": state.config["rootfs"]["diff_ids"],
            "history": state.config["history"][-1]})
        state.key = key

    def _usable(self, entry: dict) -> bool:
        chain = entry.get("chain_id") or ""
        return (all(self.store.content.has(layer["digest"]) for layer in entry.get("layers") or [])
                and (not chain or self.store.snapshots.get(chain) is not None))

    async def _prepare(self, state: _Stage, inst: df.Instruction, env: dict[str, str]):
        """What the step does to its rootfs, and what of its input goes into its cache key."""
        if inst.keyword == "RUN":
            return self._run(state, inst, env)
        if inst.keyword == "WORKDIR":
            self.editor.apply(state, inst)
            path = state.exec_config["WorkingDir"]

            async def make(rootfs: str, step: str) -> None:
                await asyncio.to_thread(copying.make_dir, rootfs, path)
            return make, path
        return await self._copy(state, inst, env)

    def _run(self, state: _Stage, inst: df.Instruction, env: dict[str, str]):
        argv = inst.exec_form if inst.exec_form is not None else [*_shell(state), inst.args]
        network = inst.flags.get("network", "default")
        if network == "default":
            network = self.opts.network
        elif network not in NETWORKS or (network == "host" and self.opts.network != "host"):
            raise InvalidArgument(f"{self.opts.dockerfile_name}:{inst.line}: RUN --network={network}: want none, "
                                  "default, or host in a build run with --network host")
        image_env = list(state.exec_config.get("Env") or [])
        names = {e.partition("=")[0] for e in image_env}
        run_env = image_env + [f"{k}={v}" for k, v in state.args.items() if k not in names]
        if "PATH" not in names:
            run_env.append(DEFAULT_PATH)
        cwd = state.exec_config.get("WorkingDir") or "/"

        async def work(rootfs: str, step: str) -> None:
            await asyncio.to_thread(copying.make_dir, rootfs, cwd)
            outcome = await run_step.run(self.rt, run_step.Step(
                bundle=step, argv=argv, env=run_env, cwd=cwd, user=state.exec_config.get("User") or "",
                network=network, hosts_files=await asyncio.to_thread(self._hosts_files, network)),
                lambda line: self.emit("  " + line))
            if outcome.exit_code != 0:
                tail = "".join(f"\n  | {line}" for line in outcome.last_lines)
                why = f"exit code {outcome.exit_code}" + (f" ({outcome.reason})" if outcome.reason else "")
                raise BuildFailed(f"step {self._step}/{self._steps} ({self.opts.dockerfile_name} line {inst.line}) "
                                  f"failed: {inst.text}: {why}" + (f"; its last output:{tail}" if tail else ""))
        return work, [argv, run_env, network]

    def _hosts_files(self, network: str) -> dict[str, str]:
        hosts = os.path.join(self.ws.root, "hosts")
        if not os.path.exists(hosts):
            with open(hosts, "w") as f:
                f.write("127.0.0.1\tlocalhost buildsandbox\n::1\tlocalhost ip6-localhost ip6-loopback\n")
        files = {"/etc/hosts": hosts}
        if network == "host" and os.path.isfile("/etc/resolv.conf"):
            files["/etc/resolv.conf"] = os.path.realpath("/etc/resolv.conf")
        return files

    async def _copy(self, state: _Stage, inst: df.Instruction, env: dict[str, str]):
        what = f"{self.opts.dockerfile_name}:{inst.line}: {inst.keyword}"
        if inst.exec_form is not None:
            args = [df.expand(a, env, self.escape) for a in inst.exec_form]
        else:
            args = self.editor.parsed(inst, df.words, inst.args, env, self.escape)
        if len(args) < 2:
            raise InvalidArgument(f"{what}: needs a source and a destination")
        patterns, dest = args[:-1], args[-1]
        urls = [p for p in patterns if p.startswith(("http://", "https://"))]
        if urls and (inst.keyword != "ADD" or len(urls) != len(patterns)):
            raise InvalidArgument(f"{what}: only ADD takes URLs, and then only URLs")
        if not dest.startswith("/"):
            workdir = state.exec_config.get("WorkingDir") or "/"
            dest = posixpath.join(workdir, dest) + ("/" if dest.endswith("/") else "")
        src_root = self.ws.context
        if urls:
            src_root, patterns = await self._download(urls, what)
        if "from" in inst.flags:
            if inst.keyword != "COPY":
                raise InvalidArgument(f"{what}: --from is COPY's, not ADD's")
            source = self.editor.parsed(inst, df.expand, inst.flags["from"], env, self.escape)
            src_root = await self._from_root(source, what)
        try:
            sources = await asyncio.to_thread(copying.expand_sources, src_root, patterns)
            digest = await asyncio.to_thread(copying.digest, src_root, sources)
        except copying.CopyRefused as e:
            raise InvalidArgument(f"{what}: {e}") from None
        chown = self.editor.parsed(inst, df.expand, inst.flags.get("chown", ""), env, self.escape)
        chmod = inst.flags.get("chmod", "")
        try:
            mode = int(chmod, 8) if chmod else None
        except ValueError:
            raise InvalidArgument(f"{what}: --chmod={chmod}: want an octal mode") from None
        from_context = src_root == self.ws.context
        limits = self.puller.limits

        async def work(rootfs: str, step: str) -> None:
            owner = None
            if chown:
                user = await asyncio.to_thread(resolve_user, rootfs, chown, None, [])
                # A user without a group: its uid is the gid too, as Docker documents it.
                owner = (user["uid"], user["gid"] if ":" in chown else user["uid"])
            own = copying.Ownership(owner or ((0, 0) if from_context else None), mode)
            budget = copying.Budget(limits.max_layer_size, limits.max_layer_entries)
            try:
                if inst.keyword == "ADD" and not urls:
                    await self._add(sources, rootfs, dest, own, owner is not None, budget, step)
                else:
                    # A download is copied as it came, never unpacked (as Docker has it).
                    await asyncio.to_thread(copying.copy, src_root, sources, rootfs, dest, own, budget)
            except copying.CopyRefused as e:
                raise InvalidArgument(f"{what}: {e}") from None
            except OSError as e:
                if is_out_of_space(e):
                    raise
                raise InvalidArgument(f"{what}: {e.strerror or e}") from None
        # Where the files come from is part of the key: the same bytes from the context and
        # from a stage are copied with different owners.
        origin = "context" if from_context else f"from:{inst.flags.get('from', '')}" if not urls else "urls"
        return work, [patterns, dest, digest, chown, chmod, origin]

    async def _add(self, sources: list[str], rootfs: str, dest: str, own: copying.Ownership, chowned: bool,
                   budget: copying.Budget, step: str) -> None:
        """ADD: a local tar (plain or compressed) is unpacked at dest, as hostile as a layer is
        (no member leads out, bounded like one); anything else is copied as COPY does."""
        for rel in sources:
            fd = await asyncio.to_thread(copying.open_file, self.ws.context, rel)
            try:
                archive = fd is not None and await asyncio.to_thread(copying.is_archive, f"/proc/self/fd/{fd}")
                if archive:
                    unpacked = os.path.join(step, "archive")
                    os.mkdir(unpacked)  # a dest it makes is 0755, as Docker makes it
                    os.chmod(unpacked, 0o755)
                    try:
                        await asyncio.to_thread(unpack_layer, f"/proc/self/fd/{fd}", None, unpacked,
                                                self.puller.limits)
                        # Its members keep the owners the archive gives them, unless --chown says.
                        kept = copying.Ownership(own.owner if chowned else None, own.mode)
                        await asyncio.to_thread(copying.copy, unpacked, ["."], rootfs, dest.rstrip("/") + "/",
                                                kept, budget)
                    finally:
                        await asyncio.to_thread(self.ws.forget, unpacked)
                    continue
            finally:
                if fd is not None:
                    os.close(fd)
            await asyncio.to_thread(copying.copy, self.ws.context, [rel], rootfs,
                                    dest if len(sources) == 1 else dest.rstrip("/") + "/", own, budget)

    async def _download(self, urls: list[str], what: str) -> tuple[str, list[str]]:
        """ADD's URLs fetched into a directory of their own, each under the last part of its path,
        mode 0600 and dated by its Last-Modified; the directory and the names."""
        root = os.path.join(self.ws.root, f"downloads{self._step}")
        os.mkdir(root, 0o700)
        names = []
        for url in urls:
            name = posixpath.basename(urllib.parse.urlsplit(url).path) or "download"
            if name in names:
                raise InvalidArgument(f"{what}: two URLs download to the same name {name!r}")
            names.append(name)
            self.emit(f"  fetching {url}")
            path = os.path.join(root, name)
            try:
                modified = await self.client.fetch_url(url, path, self.puller.limits.max_layer_size)
            except RegistryError as e:
                raise InvalidArgument(f"{what}: {e}") from None
            os.chmod(path, 0o600)
            if modified:
                with contextlib.suppress(TypeError, ValueError):
                    when = email.utils.parsedate_to_datetime(modified).timestamp()
                    os.utime(path, (when, when))
        return root, names

    async def _from_root(self, name: str, what: str) -> str:
        """The filesystem COPY --from reads: an earlier stage's, or an image's, mounted read-only."""
        state = self.stages.get(name.lower())
        if state is None:
            rec = self.store.find(name)
            if rec is None:
                try:
                    rec = await self.puller.pull(parse_reference(name))
                except ValueError:
                    raise InvalidArgument(f"{what}: --from={name}: no such stage or image") from None
            self._hold(rec.chain_id)
            chain = rec.chain_id
        else:
            chain = state.chain_id
        return self.ws.mount_read_only(chain)


def new_config() -> dict:
    """The config of an image with nothing in it yet, for this machine's platform."""
    platform = host_platform()
    return {"architecture": platform.architecture, "os": platform.os, "config": {},
            "rootfs": {"type": "layers", "diff_ids": []}, "history": []}


def _shell(state: _Stage) -> list[str]:
    return list(state.exec_config.get("Shell") or _DEFAULT_SHELL)


def _history(state: _Stage, created_by: str, empty: bool) -> None:
    entry: dict = {"created": now_rfc3339(), "created_by": created_by, "comment": "cricket build"}
    if empty:
        entry["empty_layer"] = True
    state.config.setdefault("history", []).append(entry)


class ConfigEditor:
    """The instructions that only change an image's config; also `cricket commit --change`."""

    def __init__(self, name: str, escape: str = "\\", build_args: dict[str, str] | None = None):
        self.name = name
        self.escape = escape
        self.build_args = build_args or {}
        self.globals: dict[str, str] = {}

    def parsed(self, inst: df.Instruction, fn, *args):
        """fn(*args) for `inst`: its errors named by the line, and what it expands bounded: each
        $ may take in at most the longest value in scope, so the text may grow to no more than
        that many times, and a Dockerfile that doubles a variable line by line ends at the bound."""
        env = next((a for a in args if isinstance(a, dict)), {})
        longest = max((len(v) for v in env.values()), default=0)
        if len(inst.text) + inst.text.count("$") * longest > MAX_EXPANDED:
            raise InvalidArgument(f"{self.name}:{inst.line}: {inst.keyword}: its variables expand past "
                                  f"{MAX_EXPANDED} bytes")
        try:
            return fn(*args)
        except df.DockerfileError as e:
            raise InvalidArgument(f"{self.name}:{inst.line}: {inst.keyword}: {e.message}") from None
        except RecursionError:
            raise InvalidArgument(f"{self.name}:{inst.line}: {inst.keyword}: nested too deep to expand") from None

    def global_args(self, insts: list[df.Instruction]) -> dict[str, str]:
        """The ARGs before the first FROM: what FROM lines expand with, and stages may declare."""
        for inst in insts:
            for name, default in self.parsed(inst, df.arg_declarations, inst, self.globals, self.escape):
                value = self.build_args.get(name, default)
                if value is not None:
                    self.globals[name] = value
        return self.globals

    def declare(self, state: _Stage, inst: df.Instruction) -> None:
        for name, default in self.parsed(inst, df.arg_declarations, inst, state.env(), self.escape):
            if name in self.build_args:
                state.args[name] = self.build_args[name]
            elif default is not None:
                state.args[name] = default
            elif name in self.globals:
                state.args[name] = self.globals[name]

    def apply(self, state: _Stage, inst: df.Instruction) -> None:
        kw, run, env = inst.keyword, state.exec_config, state.env()
        if kw == "ENV":
            pairs = dict(self.parsed(inst, df.key_values, inst, env, self.escape))
            kept = [e for e in run.get("Env") or [] if e.partition("=")[0] not in pairs]
            run["Env"] = kept + [f"{k}={v}" for k, v in pairs.items()]
        elif kw == "LABEL":
            labels = self.parsed(inst, df.key_values, inst, env, self.escape)
            run["Labels"] = {**(run.get("Labels") or {}), **dict(labels)}
        elif kw == "MAINTAINER":
            state.config["author"] = inst.args
        elif kw in ("CMD", "ENTRYPOINT"):
            argv = inst.exec_form if inst.exec_form is not None else [*_shell(state), inst.args]
            if kw == "CMD":
                run["Cmd"], state.cmd_set = argv, True
            else:
                run["Entrypoint"] = argv
                if not state.cmd_set:
                    run["Cmd"] = None  # an inherited CMD was meant for the old entrypoint
        elif kw == "EXPOSE":
            ports = run.get("ExposedPorts") or {}
            for word in self.parsed(inst, df.words, inst.args, env, self.escape):
                ports.update({p: {} for p in _ports(word, inst, self.name)})
            run["ExposedPorts"] = ports
        elif kw == "VOLUME":
            if inst.exec_form is not None:
                paths = [self.parsed(inst, df.expand, p, env, self.escape) for p in inst.exec_form]
            else:
                paths = self.parsed(inst, df.words, inst.args, env, self.escape)
            run["Volumes"] = {**(run.get("Volumes") or {}), **{p: {} for p in paths}}
        elif kw in ("USER", "STOPSIGNAL"):
            run["User" if kw == "USER" else "StopSignal"] = self.parsed(inst, df.expand, inst.args, env, self.escape)
        elif kw == "WORKDIR":
            path = self.parsed(inst, df.expand, inst.args, env, self.escape)
            run["WorkingDir"] = posixpath.normpath(posixpath.join(run.get("WorkingDir") or "/", path))
        elif kw == "HEALTHCHECK":
            run["Healthcheck"] = self.parsed(inst, df.healthcheck, inst)
        elif kw == "ONBUILD":
            run["OnBuild"] = [*(run.get("OnBuild") or []), inst.args]
        elif kw == "SHELL":
            run["Shell"] = inst.exec_form
        else:
            raise InvalidArgument(f"{self.name}:{inst.line}: {kw} can not be applied to an image's config")


def apply_changes(config: dict, changes: list[str]) -> None:
    """`--change` instructions (CMD, ENV, ...) applied to an image config, in place."""
    state = _Stage(config, [], "", "")
    editor = ConfigEditor("--change")
    for i, text in enumerate(changes, 1):
        try:
            inst = df.parse_instruction(text, i)
        except df.DockerfileError as e:
            raise InvalidArgument(f"--change {text!r}: {e.message}") from None
        if inst.keyword in ("RUN", "COPY", "ADD", "FROM", "ARG", "MAINTAINER"):
            raise InvalidArgument(f"--change {text!r}: only instructions that change the config may be given")
        editor.apply(state, inst)


def _ports(word: str, inst: df.Instruction, name: str) -> list[str]:
    port, _, proto = word.partition("/")
    proto = (proto or "tcp").lower()
    low, _, high = port.partition("-")
    if not low.isdigit() or (high and not high.isdigit()) or proto not in ("tcp", "udp", "sctp") \
            or not 0 < int(low) <= int(high or low) <= 65535:
        raise InvalidArgument(f"{name}:{inst.line}: EXPOSE {word}: want PORT[-PORT][/tcp|udp|sctp], ports 1-65535")
    return [f"{p}/{proto}" for p in range(int(low), int(high or low) + 1)]


def _check_base_config(config: dict, base: str) -> None:
    """The fields of a base image's config that a build reads, of the types it reads them as:
    the image is someone else's, and a wrong type must be its error, not the daemon's."""
    run = config.get("config")
    if run is None:
        config["config"] = run = {}
    kinds = {"Env": list, "Cmd": list, "Entrypoint": list, "Shell": list, "OnBuild": list, "Labels": dict,
             "ExposedPorts": dict, "Volumes": dict, "WorkingDir": str, "User": str}
    problems = [name for name, kind in kinds.items() if run.get(name) is not None
                and not isinstance(run.get(name), kind)] if isinstance(run, dict) else ["config"]
    for name in ("Env", "Cmd", "Entrypoint", "Shell", "OnBuild"):
        if isinstance(run, dict) and isinstance(run.get(name), list) and \
                not all(isinstance(item, str) for item in run[name]):
            problems.append(name)
    if not isinstance(config.get("history", []), list) or not isinstance(config.get("rootfs", {}), dict):
        problems.append("history or rootfs")
    if problems:
        raise InvalidArgument(f"FROM {base}: the image's config has {', '.join(problems)} of the wrong type")
