"""The admin API's image-making calls: Build, Commit, Export and Import (api/admin/v1).

Mixed into cri/admin.py's servicer. A build's context and an import's tar come in as chunked
streams into a workspace on the root dir's filesystem, bounded as a load's archive is, and
are unpacked as hostile as a layer is (image/unpack.py). Every blocking step runs in a thread.
"""
from __future__ import annotations

import asyncio
import copy
import logging
import os

import grpc

from api.admin.v1 import admin_pb2 as apb
from cri import memory
from cri.build import builder
from cri.build.run_step import MOUNT_POINTS
from cri.build.workspace import Workspace, drop_mount_stubs
from cri.container_lifecycle import container_cgroup
from cri.errors import FailedPrecondition, InvalidArgument, status_for
from cri.runtime import Runtime
from image.layer_diff import LayerTooLarge, write_layer, write_tree
from image.limits import ImageLimits
from image.new_image import HashingWriter, base_layers, now_rfc3339, record_image
from image.pull import Puller
from image.reference import parse_reference
from image.registry import RegistryClient
from image.store import ImageStore
from image.unpack import LayerError, unpack_layer
from linux.cgroups import Cgroup

log = logging.getLogger(__name__)

CHUNK = 1 << 20
# A container's own mount points besides a build step's: kubelet's files and its /dev/shm.
_CONTAINER_MOUNT_POINTS = (*MOUNT_POINTS, "etc/hostname", "dev/shm", "dev/termination-log")


async def _abort(context, exc: BaseException, what: str) -> None:
    code = status_for(exc)
    if isinstance(exc, builder.BuildFailed):
        code = grpc.StatusCode.ABORTED
    elif isinstance(exc, (LayerError, LayerTooLarge)):
        code = grpc.StatusCode.INVALID_ARGUMENT
    if code is None:
        log.exception("%s failed", what)
        await context.abort(grpc.StatusCode.INTERNAL, f"{what}: internal error: {exc!r}")
    await context.abort(code, f"{what}: {exc}")


class ImageMaking:
    rt: Runtime
    store: ImageStore
    puller: Puller
    client: RegistryClient
    max_archive_size: int

    async def _receive(self, first_and_rest, path: str, context, what: str) -> None:
        """Chunks into the file at `path`, bounded."""
        size = 0
        with open(path, "wb") as out:
            async for data in first_and_rest:
                size += len(data)
                if size > self.max_archive_size:
                    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                        f"{what}: over {self.max_archive_size} bytes, the most the daemon takes")
                out.write(data)

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
        lines: asyncio.Queue[str] = asyncio.Queue()
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
            os.unlink(archive)
            work = asyncio.ensure_future(builder.Builder(self.rt, self.puller, self.client, options, ws,
                                                          lines.put_nowait).build())
            while not work.done():
                waiter = asyncio.ensure_future(lines.get())
                await asyncio.wait([work, waiter], return_when=asyncio.FIRST_COMPLETED)
                if waiter.done():
                    yield apb.BuildOutput(text=waiter.result())
                else:
                    waiter.cancel()
            while not lines.empty():
                yield apb.BuildOutput(text=lines.get_nowait())
            rec = work.result()
            yield apb.BuildOutput(image_id=rec.id)
        except Exception as e:
            while not lines.empty():
                yield apb.BuildOutput(text=lines.get_nowait())
            await _abort(context, e, "build")
        finally:
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
                layer = await asyncio.to_thread(_commit_layer, ws, upper, image.chain_id, self.puller.limits,
                                                Cgroup(cgroup) if freeze else None)
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
                _release(self.store, layer_keys(layer))
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
                await asyncio.to_thread(_tree_to, rootfs, path, self.puller.limits.max_layer_size)
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
            layer = await asyncio.to_thread(_tree_layer, ws, tree, self.puller.limits)
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
            _release(self.store, layer_keys(layer))
        return apb.ImportResponse(image_id=made.id)


def layer_keys(layer) -> list[str]:
    return [layer.descriptor["digest"], layer.chain_id] if layer is not None else []


def _release(store: ImageStore, keys: list[str]) -> None:
    for key in keys:
        store.leases[key] -= 1
        if store.leases[key] <= 0:
            del store.leases[key]


def _commit_layer(ws: Workspace, upper: str, chain_id: str, limits: ImageLimits, cgroup: Cgroup | None):
    """The container's upper dir as a layer, read while its processes are frozen (when asked):
    a file half-written when the walk passes would be committed half-written."""
    step = ws.new_step()
    staged = os.path.join(step, "upper")
    tar_path = os.path.join(step, "layer.tar")
    if cgroup is not None:
        with cgroup.frozen():
            _write(upper, tar_path, limits.max_layer_size, write_layer)
    else:
        _write(upper, tar_path, limits.max_layer_size, write_layer)
    # The container's own mount points (/etc/hosts ...) are no change of its: out, by way of a
    # copy of the layer that can be edited, as a build step's upper dir is.
    unpack_layer(tar_path, None, staged, limits)
    os.unlink(tar_path)
    drop_mount_stubs(staged, ws.lowers(chain_id), _CONTAINER_MOUNT_POINTS)
    return ws.layer(step, chain_id, limits.max_layer_size)


def _tree_layer(ws: Workspace, tree: str, limits: ImageLimits):
    step = ws.new_step()
    os.rmdir(os.path.join(step, "upper"))
    os.rename(tree, os.path.join(step, "upper"))
    return ws.layer(step, "", limits.max_layer_size, stubs=False)  # an exported /proc is the image's


def _write(root: str, path: str, max_size: int, how) -> str:
    with open(path, "wb") as f:
        out = HashingWriter(f)
        how(root, out, max_size)
        out.flush()
    return out.digest


def _tree_to(rootfs: str, path: str, max_size: int) -> None:
    _write(rootfs, path, max_size, write_tree)
