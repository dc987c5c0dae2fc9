"""The admin API's image-making calls: Build, Commit, Export and Import (api/admin/v1).

Mixed into cri/admin.py's servicer. A build's context and an import's tar come in as chunked
streams into a workspace on the root dir's filesystem, bounded as a load's archive is, and
are unpacked as hostile as a layer is (image/unpack.py). Every blocking step runs in a thread.
"""
from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import os

import grpc

from api.admin.v1 import admin_pb2 as apb
from cri import memory
from cri.build import builder
from cri.build.run_step import MOUNT_POINTS
from cri.build.workspace import Workspace, drop_mount_stubs, release
from cri.container_lifecycle import container_cgroup
from cri.errors import FailedPrecondition, InvalidArgument, status_for
from cri.runtime import Runtime
from image.layer_diff import LayerTooLarge, write_layer, write_tree
from image.limits import ImageLimits
from image.new_image import base_layers, now_rfc3339, record_image
from image.pull import Puller
from image.reference import parse_reference
from image.registry import RegistryClient
from image.store import ImageStore
from image.unpack import LayerError, UnsafeLayerError, unpack_layer
from linux.cgroups import Cgroup

log = logging.getLogger(__name__)

CHUNK = 1 << 20
# A container's own mount points besides a build step's: kubelet's files and its /dev/shm.
_CONTAINER_MOUNT_POINTS = (*MOUNT_POINTS, "etc/hostname", "dev/shm", "dev/termination-log")


async def _abort(context, exc: BaseException, what: str) -> None:
    if isinstance(exc, grpc.aio.AbortError):
        raise exc  # aborted already, with its own status
    code = status_for(exc)
    if isinstance(exc, builder.BuildFailed):
        code = grpc.StatusCode.ABORTED
    elif isinstance(exc, LayerTooLarge):
        code = grpc.StatusCode.RESOURCE_EXHAUSTED
    elif isinstance(exc, (LayerError, UnsafeLayerError, ValueError)) and code is None:
        # What a container or a tar holds that can not be a layer (a .wh. name, a tree too deep).
        code = grpc.StatusCode.INVALID_ARGUMENT
    if code is None:
        log.exception("%s failed", what)
        await context.abort(grpc.StatusCode.INTERNAL, f"{what}: internal error: {exc!r}")
    await context.abort(code, f"{what}: {exc}")


class _Lines:
    """A build's output on its way to the client. Bounded: a client that reads slower than a
    step prints loses lines (and is told how many), rather than the daemon holding them all."""

    MAX = 10_000

    def __init__(self):
        self._lines: list[str] = []
        self._dropped = 0
        self.ready = asyncio.Event()

    def put(self, text: str) -> None:
        if len(self._lines) >= self.MAX:
            self._dropped += 1
        else:
            self._lines.append(text)
        self.ready.set()

    def take(self) -> list[str]:
        out, self._lines = self._lines, []
        if self._dropped:
            out.append(f"  ({self._dropped} lines of output dropped: the client read too slowly)")
            self._dropped = 0
        self.ready.clear()
        return out


class ImageMaking:
    rt: Runtime
    store: ImageStore
    puller: Puller
    client: RegistryClient
    max_archive_size: int

    async def _receive(self, first_and_rest, path: str, context, what: str) -> None:
        """Chunks into the file at `path`, bounded; each written in a thread (a slow disk must
        not hold up the other calls)."""
        size = 0
        with open(path, "wb") as out:
            async for data in first_and_rest:
                size += len(data)
                if size > self.max_archive_size:
                    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                        f"{what}: over {self.max_archive_size} bytes, the most the daemon takes")
                await asyncio.to_thread(out.write, data)

    async def Build(self, request_iterator, context):
        first = await anext(request_iterator.__aiter__(), None)
        if first is None or not first.HasField("options"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "build: the first message must hold the options")
            return
        o = first.options
        options = builder.Options(dockerfile=o.dockerfile, dockerfile_name=o.dockerfile_name or "Dockerfile",
                                  tags=list(o.tags), build_args=dict(o.build_args), target=o.target,
                                  no_cache=o.no_cache, network=o.network or "host")
        ws = await asyncio.to_thread(Workspace, self.store, self.rt.config.root_dir)
        output = _Lines()
        work: asyncio.Future | None = None
        try:
            async def chunks():
                async for message in request_iterator:
                    yield message.context
            archive = os.path.join(ws.root, "context.tar")
            await self._receive(chunks(), archive, context, "build context")
            try:
                await asyncio.to_thread(unpack_layer, archive, None, ws.context, self.puller.limits)
            except LayerError as e:
                raise InvalidArgument(f"the build context: {e}") from None
            await asyncio.to_thread(os.unlink, archive)
            work = asyncio.ensure_future(builder.Builder(self.rt, self.puller, self.client, options, ws,
                                                         output.put).build())
            while not work.done():
                waiter = asyncio.ensure_future(output.ready.wait())
                await asyncio.wait([work, waiter], return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                for text in output.take():
                    yield apb.BuildOutput(text=text)
            for text in output.take():
                yield apb.BuildOutput(text=text)
            yield apb.BuildOutput(image_id=work.result().id)
        except Exception as e:
            for text in output.take():
                yield apb.BuildOutput(text=text)
            await _abort(context, e, "build")
        finally:
            if work is not None and not work.done():
                # The client went away: the build stops (its RUN step is killed) before its
                # workspace goes, so nothing is unmounted under a running step.
                work.cancel()
                await asyncio.wait([work])
            await asyncio.to_thread(ws.close)
            memory.trim()

    async def Commit(self, request, context):
        try:
            c = self.rt.container(request.container)
            rec = c.rec
            image = self.store.metadata.image(rec.image_id)
            if image is None:
                raise FailedPrecondition(f"container {rec.id}'s image {rec.image_id} is gone")
            config = copy.deepcopy(image.config)
            builder.apply_changes(config, list(request.changes))
            names = [str(parse_reference(request.name))] if request.name else []
            upper = os.path.join(self.rt.layout.container_dir(rec.id), "upper")
            cgroup = container_cgroup(self.rt, rec)
            ws = await asyncio.to_thread(Workspace, self.store, self.rt.config.root_dir)
            layer = None
            try:
                freeze = bool(cgroup) and not request.no_pause
                step = await asyncio.to_thread(_stage_changes, ws, upper, image.chain_id, self.puller.limits,
                                               Cgroup(cgroup) if freeze else None)
                layer = await ws.layer(step, image.chain_id, self.puller.limits.max_layer_size)
                layers = await asyncio.to_thread(base_layers, self.store, image)
                chain = image.chain_id
                if layer is not None:
                    layers.append(layer.descriptor)
                    config.setdefault("rootfs", {"type": "layers", "diff_ids": []})["diff_ids"].append(layer.diff_id)
                    chain = layer.chain_id
                config.setdefault("history", []).append(
                    {"created": now_rfc3339(), "created_by": "cricket commit " + " ".join(request.changes),
                     "comment": request.message, **({} if layer else {"empty_layer": True})})
                config["created"] = now_rfc3339()
                made = await asyncio.to_thread(record_image, self.store, config, layers, chain, names)
            finally:
                await asyncio.to_thread(ws.close)
                release(self.store, _layer_keys(layer))
        except Exception as e:
            await _abort(context, e, "commit")
        return apb.CommitResponse(image_id=made.id)

    async def Export(self, request, context):
        try:
            c = self.rt.container(request.container)
            rootfs = self.rt.layout.rootfs(c.id)
            if not os.path.ismount(rootfs):
                raise FailedPrecondition(f"container {c.id} has no mounted filesystem")
            ws = await asyncio.to_thread(Workspace, self.store, self.rt.config.root_dir)
        except Exception as e:
            await _abort(context, e, "export")
        try:
            path = os.path.join(ws.root, "export.tar")
            try:
                await asyncio.to_thread(_write, rootfs, path, self.puller.limits.max_layer_size, write_tree)
            except Exception as e:
                await _abort(context, e, "export")
            with open(path, "rb") as f:
                while chunk := await asyncio.to_thread(f.read, CHUNK):
                    yield apb.Chunk(data=chunk)
        finally:
            await asyncio.to_thread(ws.close)

    async def Import(self, request_iterator, context):
        first = await anext(request_iterator.__aiter__(), None)
        if first is None or not first.name:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "import: the first message must name the image")
            return apb.ImportResponse()  # never reached: abort raises
        ws = await asyncio.to_thread(Workspace, self.store, self.rt.config.root_dir)
        layer = None
        try:
            name = str(parse_reference(first.name))
            config = builder.new_config()
            builder.apply_changes(config, list(first.changes))

            async def chunks():
                if first.data:
                    yield first.data
                async for message in request_iterator:
                    yield message.data
            archive = os.path.join(ws.root, "import.tar")
            await self._receive(chunks(), archive, context, "import")
            tree = os.path.join(ws.root, "tree")
            os.mkdir(tree, 0o755)
            try:
                await asyncio.to_thread(unpack_layer, archive, None, tree, self.puller.limits)
            except LayerError as e:
                raise InvalidArgument(f"the tar: {e}") from None
            step = await asyncio.to_thread(_tree_step, ws, tree)
            # An exported /proc or /dev is the image's own: no mount stub of a build step.
            layer = await ws.layer(step, "", self.puller.limits.max_layer_size, stubs=False)
            layers = [layer.descriptor] if layer else []
            config["rootfs"]["diff_ids"] = [layer.diff_id] if layer else []
            config["history"] = [{"created": now_rfc3339(), "created_by": "cricket import",
                                  **({} if layer else {"empty_layer": True})}]
            made = await asyncio.to_thread(record_image, self.store, config, layers,
                                           layer.chain_id if layer else "", [name])
        except Exception as e:
            await _abort(context, e, "import")
        finally:
            await asyncio.to_thread(ws.close)
            release(self.store, _layer_keys(layer))
        return apb.ImportResponse(image_id=made.id)


def _layer_keys(layer) -> list[str]:
    return [layer.descriptor["digest"], layer.chain_id] if layer is not None else []


def _stage_changes(ws: Workspace, upper: str, chain_id: str, limits: ImageLimits, cgroup: Cgroup | None) -> str:
    """A step directory whose upper dir holds the container's changes, read from its upper dir
    while its processes are frozen (when asked): a file half-written when the walk passes would
    be committed half-written. The container's own mount points (/etc/hosts ...) are no change
    of its: they are left out of this copy, which is ours to edit."""
    step = ws.new_step()
    tar_path = os.path.join(step, "changes.tar")
    with cgroup.frozen() if cgroup is not None else contextlib.nullcontext():
        _write(upper, tar_path, limits.max_layer_size, write_layer)
    unpack_layer(tar_path, None, os.path.join(step, "upper"), limits)
    os.unlink(tar_path)
    drop_mount_stubs(os.path.join(step, "upper"), ws.lowers(chain_id), _CONTAINER_MOUNT_POINTS)
    return step


def _tree_step(ws: Workspace, tree: str) -> str:
    step = ws.new_step()
    os.rmdir(os.path.join(step, "upper"))
    os.rename(tree, os.path.join(step, "upper"))
    return step


def _write(root: str, path: str, max_size: int, how) -> None:
    with open(path, "wb") as f:
        how(root, f, max_size)

