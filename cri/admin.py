"""Cricket's admin API (api/admin/v1): what the `cricket` CLI needs beyond the CRI.

Pulls and pushes with progress, tags, history, prune, and image archives in and out
(image/archive.py), on the CRI socket. Archives travel as chunked streams, so
the CLI needs no access to the daemon's directories.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import re
import shutil
import tempfile
from datetime import datetime

import grpc

from api.admin.v1 import admin_pb2 as apb
from api.admin.v1 import admin_pb2_grpc as apb_grpc
from api.runtime.v1 import api_pb2 as pb
from cri import memory
from cri.build.service import ImageMaking
from cri.errors import InvalidArgument, NotFound, handle_errors, status_for
from cri.image_service import credentials
from cri.runtime import Runtime
from image.archive import ArchiveError, ArchiveSource, extract, save
from image.limits import ImageLimits
from image.pull import Puller, PullWatch, watching
from image.push import push
from image.reference import parse_reference
from image.registry import RegistryClient
from image.snapshots import chain_ids
from image.store import ImageNotFound, ImageStore

log = logging.getLogger(__name__)

CHUNK = 1 << 20
PROGRESS_SECONDS = 0.25  # how often a pull's progress is reported at most


async def _abort(context, exc: BaseException, what: str) -> None:
    code = status_for(exc)
    if code is None:
        log.exception("%s failed", what)
        await context.abort(grpc.StatusCode.INTERNAL, f"{what}: internal error: {exc!r}")
    await context.abort(code, str(exc))


class Admin(ImageMaking, apb_grpc.AdminServicer):
    def __init__(self, rt: Runtime, store: ImageStore, puller: Puller, client: RegistryClient,
                 max_archive_size: int | None = None):
        self.rt = rt
        self.store = store
        self.puller = puller
        self.client = client
        self.scratch = os.path.join(rt.config.state_dir, "admin")
        self.max_archive_size = max_archive_size or archive_limit(puller.limits)

    def _lookup(self, spec: str):
        try:
            return self.store.lookup(spec)[0]
        except ImageNotFound as e:
            raise NotFound(str(e)) from None

    async def _watched(self, work, context, what: str):
        """Run coroutine `work` with a PullWatch, yielding Progress as blobs move; then its result
        as the last item. A client that goes away cancels the work."""
        watch = PullWatch()
        token = watching.set(watch)  # the task starts with this context, so it sees the watch
        try:
            task = asyncio.create_task(work)
        finally:
            watching.reset(token)
        sent: dict[str, tuple] = {}

        def news():
            for digest, state in list(watch.blobs.items()):
                if sent.get(digest) != state:
                    sent[digest] = state
                    size, done, phase = state
                    yield apb.Progress(digest=digest, size=size, done=done, state=phase)

        try:
            while not task.done():
                watch.changed.clear()
                await asyncio.wait([task, asyncio.ensure_future(watch.changed.wait())], timeout=PROGRESS_SECONDS,
                                   return_when=asyncio.FIRST_COMPLETED)
                for event in news():
                    yield event
                await asyncio.sleep(PROGRESS_SECONDS)
            result = task.result()
        except Exception as e:
            await _abort(context, e, what)
        finally:
            if not task.done():
                task.cancel()
            memory.trim()
        for event in news():
            yield event
        yield result

    async def Pull(self, request, context):
        try:
            ref = parse_reference(request.image)
        except ValueError as e:
            await _abort(context, e, "Pull")
        creds = credentials(pb.AuthConfig(username=request.username, password=request.password))
        async for item in self._watched(self.puller.pull(ref, creds), context, f"pulling {ref}"):
            if isinstance(item, apb.Progress):
                yield item
            else:
                digests = [d for d in item.repo_digests if d.startswith(ref.repository + "@")]
                yield apb.Progress(image_id=item.id, image_ref=digests[0] if digests else item.id)

    async def Push(self, request, context):
        try:
            rec, name = self.store.lookup(request.image)
            if name is None:
                raise InvalidArgument(f"push {request.image!r}: name the image by repository:tag, not by ID")
            ref = parse_reference(name)
        except (ImageNotFound, ValueError, InvalidArgument) as e:
            await _abort(context, NotFound(str(e)) if isinstance(e, ImageNotFound) else e, "Push")
        creds = credentials(pb.AuthConfig(username=request.username, password=request.password))
        async for item in self._watched(push(self.store, self.client, rec, ref, creds), context, f"pushing {ref}"):
            if isinstance(item, apb.Progress):
                yield item
            else:
                self.store.metadata.put_image(rec, [(f"{ref.repository}@{item}", True)], [])
                yield apb.Progress(image_id=rec.id, image_ref=f"{ref.repository}@{item}")

    @handle_errors
    async def Tag(self, request, context):
        rec = self._lookup(request.source)
        name = str(parse_reference(request.target))
        if "@" in name:
            raise InvalidArgument(f"tag {request.target!r}: a tag is a name, not a digest")
        self.store.metadata.put_image(rec, [(name, False)], [])
        return apb.TagResponse(image_id=rec.id)

    @handle_errors
    async def History(self, request, context):
        rec = self._lookup(request.image)
        diff_ids = list(rec.config.get("rootfs", {}).get("diff_ids") or [])
        chains = chain_ids(diff_ids)
        layers = iter(zip(diff_ids, chains))
        entries = []
        for h in rec.config.get("history") or [{} for _ in diff_ids]:
            entry = apb.HistoryEntry(created_by=h.get("created_by", ""), comment=h.get("comment", ""),
                                     empty_layer=bool(h.get("empty_layer")), created=_unix(h.get("created")))
            if not entry.empty_layer:
                diff_id, chain = next(layers, ("", ""))
                snap = self.store.metadata.snapshot(chain) if chain else None
                entry.layer, entry.size = diff_id, snap.size if snap else 0
            entries.append(entry)
        return apb.HistoryResponse(image_id=rec.id, entries=entries)

    @handle_errors
    async def Prune(self, request, context):
        self.store.build_cache.clear()  # what only the cache held goes with the unused images
        used = {c.rec.image_id for c in self.rt.containers.values()}
        before = self.store.usage()[0]
        removed = []
        for rec in self.store.list():
            if rec.id not in used and rec.id not in self.puller.in_flight:
                self.store.metadata.remove_image(rec.id)
                removed.append(rec.id)
        self.rt.collect_image_garbage()
        memory.trim()
        return apb.PruneResponse(removed=removed, reclaimed=max(0, before - self.store.usage()[0]))

    async def Save(self, request, context):
        try:
            if not request.images:
                raise InvalidArgument("name at least one image to save")
            images = []
            for spec in request.images:
                rec, name = self.store.lookup(spec)
                images.append((rec, [name] if name else rec.repo_tags))
        except (ImageNotFound, ValueError, InvalidArgument) as e:
            await _abort(context, NotFound(str(e)) if isinstance(e, ImageNotFound) else e, "Save")
        os.makedirs(self.scratch, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.scratch) as work:
            path = os.path.join(work, "archive.tar")
            with open(path, "wb") as out:
                await asyncio.to_thread(save, self.store, images, request.format == apb.DOCKER_ARCHIVE, out, work)
            with open(path, "rb") as f:
                while chunk := f.read(CHUNK):
                    yield apb.Chunk(data=chunk)

    async def Load(self, request_iterator, context):
        limits = self.puller.limits
        os.makedirs(self.scratch, exist_ok=True)
        work = tempfile.mkdtemp(dir=self.scratch)
        try:
            path = os.path.join(work, "archive.tar")
            size = 0
            with open(path, "wb") as out:
                async for chunk in request_iterator:
                    size += len(chunk.data)
                    if size > self.max_archive_size:
                        # The partial file goes with `work`, below.
                        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                            f"load: the archive is over {self.max_archive_size} bytes, the most a load "
                                            "takes (four layers of [image] max_layer_size, and their tar headers)")
                    out.write(chunk.data)
            root = os.path.join(work, "root")
            os.mkdir(root)
            try:
                with open(path, "rb") as f:
                    await asyncio.to_thread(extract, f, root, max_member_size=_member_limit(limits),
                                            max_size=self.max_archive_size)
                # Reading a docker-archive hashes each of its layers: gigabytes, off the event loop.
                source = await asyncio.to_thread(ArchiveSource, root)
            except ArchiveError as e:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"load: {e}")
            # The daemon's bounds on a layer hold for a loaded one as for a pulled one.
            loader = Puller(self.store, source, limits=limits)
            loaded = []
            try:
                for name, _ in source.images:
                    rec = await loader.pull(parse_reference(name))
                    loaded.append(f"{name} ({rec.id})")
            except Exception as e:
                await _abort(context, InvalidArgument(f"load: {e}") if isinstance(e, (ArchiveError, ValueError))
                             else e, "Load")
            return apb.LoadResponse(images=loaded)
        except OSError as e:
            # The daemon's own disk, not the archive: full (the scratch dir is in the state dir).
            code = grpc.StatusCode.RESOURCE_EXHAUSTED if e.errno in (errno.ENOSPC, errno.EDQUOT) \
                else grpc.StatusCode.INTERNAL
            await context.abort(code, f"load: writing the archive under {self.scratch}: {e.strerror or e}")
        finally:
            shutil.rmtree(work, ignore_errors=True)
            memory.trim()


def _member_limit(limits: ImageLimits) -> int:
    """The most one member of an image archive may hold: a layer (bounded by max_layer_size),
    and its tar headers, a few hundred bytes each for up to max_layer_entries entries."""
    return limits.max_layer_size + (1 << 30)


def archive_limit(limits: ImageLimits) -> int:
    """The most a load takes, streamed to the daemon's disk before anything is read of it: a
    few layers' worth (as image/archive.py bounds an archive's members together)."""
    return 4 * _member_limit(limits)


def _unix(created) -> int:
    """Seconds since the epoch of an RFC 3339 time as image configs write it; 0 if unreadable."""
    if not isinstance(created, str) or not created:
        return 0
    # Go writes nanoseconds; fromisoformat takes at most microseconds.
    created = re.sub(r"(\.\d{6})\d+", r"\1", created.replace("Z", "+00:00"))
    try:
        return int(datetime.fromisoformat(created).timestamp())
    except ValueError:
        return 0
