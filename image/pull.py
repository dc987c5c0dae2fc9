"""Pulling an image: resolve, fetch blobs in parallel, unpack each layer once, record.

Work is shared by digest and by chain ID: two pulls that need the same blob or
the same snapshot at the same time wait on one download or one unpack. Layers
are unpacked in parallel, each into its own snapshot directory, and a layer whose
blob is not here yet is unpacked while it downloads, reading the file behind the
writer (image/growing_blob.py); nothing is recorded as an image until every part
is in place.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Protocol, cast

from opentelemetry import trace

from image.content import ContentError
from image.growing_blob import Abandoned, GrowingBlob
from image.limits import CONFIG_LIMIT, ImageLimits, LimitExceeded
from image.manifest import (
    Index,
    ManifestError,
    host_platform,
    parse_config,
    parse_manifest,
    select_platform,
)
from image.metadata import ImageRecord
from image.reference import Reference
from image.registry import Credentials, Resolved
from image.snapshots import chain_ids
from image.space import OutOfSpace, room_for
from image.store import ImageStore
from image.unpack import LayerError, UnpackResult, unpack_layer
from linux import libc
from linux.crash_points import armed, crash_point

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("cricket.image")


class PullWatch:
    """Where each blob of a pull stands, for a progress display: digest -> (size, done, state)."""

    def __init__(self):
        self.blobs: dict[str, tuple[int, int, str]] = {}
        self.changed = asyncio.Event()

    def update(self, digest: str, size: int, done: int, state: str) -> None:
        self.blobs[digest] = (size, done, state)
        self.changed.set()


# The watch of the pull running in this task, if someone is watching it.
watching: contextvars.ContextVar[PullWatch | None] = contextvars.ContextVar("watching", default=None)


class ImageSource(Protocol):
    """What a Puller pulls from: a RegistryClient, or an image archive's ArchiveSource for a load."""

    async def resolve(self, ref: Reference, creds: Credentials | None = None) -> Resolved: ...

    async def fetch_manifest(self, resolved: Resolved, digest: str, creds: Credentials | None = None) -> bytes: ...

    async def fetch_blob(self, resolved: Resolved, digest: str, size: int, dest: str,
                         creds: Credentials | None = None,
                         progress: Callable[[int], None] | None = None,
                         follower: GrowingBlob | None = None) -> None: ...


class Puller:
    def __init__(self, store: ImageStore, client: ImageSource, max_concurrent_downloads: int = 3,
                 limits: ImageLimits | None = None):
        self._store = store
        self._client = client
        self.limits = limits or ImageLimits()
        self._downloads = asyncio.Semaphore(max_concurrent_downloads)
        self._shared: dict[str, _Shared] = store.work
        # Digests and chain IDs that running pulls hold but no image records yet (the store's,
        # shared with every Puller over it); garbage collection must leave them alone.
        self._leases = store.leases
        # The unpacks waiting to read a download as it arrives, by digest; the download's
        # work takes the follower up when it starts.
        self._followers: dict[str, GrowingBlob] = {}
        self.blob_bytes = 0  # bytes of blobs downloaded and committed, for the metrics

    @property
    def in_flight(self) -> set[str]:
        return set(self._leases)

    async def pull(self, ref: Reference, creds: Credentials | None = None) -> ImageRecord:
        """Pull `ref` and return the image record; raises the registry's, manifest's or layer's error."""
        held: list[str] = []

        def lease(key: str) -> None:
            self._leases[key] += 1
            held.append(key)

        done = False
        try:
            record = await self._pull(ref, creds, lease)
            done = True
            return record
        except OutOfSpace as e:
            raise e.within(f"pull {ref}: ") from e
        finally:
            self._release(held)
            if not done:
                self._clean_up_after(ref, held)

    def _clean_up_after(self, ref: Reference, held: list[str]) -> None:
        """What a failed pull made goes now, not at the next removal: blobs and snapshots no
        image uses, and its partial downloads (a retry within the pull has resumed them already;
        kept, they would hold disk, a full one too, until someone pulls the image again)."""
        in_flight = self.in_flight
        try:
            for key in held:
                if key not in in_flight:  # another pull may be downloading it still
                    self._store.content.discard_ingest(key)
            self._store.collect_garbage(in_flight)
        except Exception:
            # The pull's own error is the one to report; what is left is collected later.
            log.exception("cleaning up after the failed pull of %s", ref)

    def _release(self, held: list[str]) -> None:
        for key in held:
            self._leases[key] -= 1
            if self._leases[key] <= 0:
                del self._leases[key]

    async def _pull(self, ref: Reference, creds, lease: Callable[[str], None]) -> ImageRecord:
        with _tracer.start_as_current_span("image.resolve", attributes={"image.reference": str(ref)}):
            resolved = await self._client.resolve(ref, creds)
        content = self._store.content
        lease(resolved.digest)
        content.write(resolved.digest, resolved.data)
        blobs = [resolved.digest]

        doc = parse_manifest(resolved.data, resolved.media_type)
        manifest_digest, manifest_type = resolved.digest, resolved.media_type
        if isinstance(doc, Index):
            desc = select_platform(doc, host_platform())
            lease(desc.digest)
            data = content.read(desc.digest) if content.has(desc.digest) else await self._client.fetch_manifest(
                resolved, desc.digest, creds
            )
            content.write(desc.digest, data)
            blobs.append(desc.digest)
            doc = parse_manifest(data, desc.media_type)
            if isinstance(doc, Index):
                raise ManifestError(f"{ref}: the index entry for this platform is itself an index")
            manifest_digest, manifest_type = desc.digest, doc.media_type

        # Sizes a manifest declares are checked before anything is fetched, and the config's
        # again once it is here: an archive's blob need not be the size its manifest says.
        _check_config_size(ref, doc.config.digest, doc.config.size)
        for layer in doc.layers:
            if layer.size > self.limits.max_layer_size:
                raise LimitExceeded(
                    f"{ref}: layer {layer.digest} is {layer.size} bytes compressed, over the "
                    f"{self.limits.max_layer_size} byte limit of a layer ([image] max_layer_size)"
                )
        lease(doc.config.digest)
        await self._blob(resolved, doc.config.digest, doc.config.size, creds)
        blobs.append(doc.config.digest)
        _check_config_size(ref, doc.config.digest, content.size(doc.config.digest))
        config = _load_config(content.read(doc.config.digest), ref)
        diff_ids = config.get("rootfs", {}).get("diff_ids") or []
        if len(diff_ids) != len(doc.layers):
            raise ManifestError(
                f"{ref}: manifest lists {len(doc.layers)} layers but the image config has {len(diff_ids)} diff_ids"
            )

        chains = chain_ids(diff_ids)
        for layer, chain in zip(doc.layers, chains):
            lease(layer.digest)
            lease(chain)
        tasks = [
            asyncio.ensure_future(self._layer(resolved, layer, diff_id, chain, chains[i - 1] if i else "", creds))
            for i, (layer, diff_id, chain) in enumerate(zip(doc.layers, diff_ids, chains))
        ]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            # The first failure fails the pull; the other layers' work stops with it.
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        blobs.extend(layer.digest for layer in doc.layers)

        size = content.size(manifest_digest) + doc.config.size + sum(layer.size for layer in doc.layers)
        names = [(f"{ref.repository}@{resolved.digest}", True)]
        if ref.tag:
            names.append((f"{ref.repository}:{ref.tag}", False))
        present = self._store.metadata.image(doc.config.digest)
        if present and all(n in present.repo_tags + present.repo_digests for n, _ in names):
            return present  # a re-pull that changed nothing writes nothing
        crash_point("image_pull.before_record")  # every blob and snapshot in place, no image recorded
        record = ImageRecord(
            id=doc.config.digest,
            manifest_digest=manifest_digest,
            manifest_media_type=manifest_type,
            config=config,
            chain_id=chains[-1] if chains else "",
            size=size,
            created=time.time(),
        )
        self._store.metadata.put_image(record, names, blobs)
        return cast(ImageRecord, self._store.metadata.image(record.id))  # just put

    async def _once(self, key: str, work: Callable[[], Awaitable[None]]) -> None:
        """Run work() for `key` unless it is already running, and wait for that run. (A key
        names its kind of work: an uncompressed layer's digest is its first chain ID too.)

        The work is shared by every pull waiting on it and is cancelled only when
        the last of them stops waiting.
        """
        entry = self._shared.get(key)
        if entry is None:
            entry = self._shared[key] = _Shared(asyncio.ensure_future(work()))
        entry.waiters += 1
        try:
            await asyncio.shield(entry.task)
        finally:
            entry.waiters -= 1
            if entry.waiters == 0:
                if self._shared.get(key) is entry:
                    del self._shared[key]
                if not entry.task.done():
                    # Wait for the work to wind down (an unpack thread cannot be
                    # interrupted) so that a failed pull's clean-up, which runs
                    # next, sees everything the work left behind.
                    entry.task.cancel()
                    await asyncio.wait([entry.task])

    async def _blob(self, resolved: Resolved, digest: str, size: int, creds) -> None:
        watch = watching.get()
        if self._store.content.has(digest):
            if watch is not None:
                watch.update(digest, size, size, "present")
            return
        if watch is not None:
            watch.update(digest, size, 0, "waiting")

        def progress(done: int) -> None:
            if 0 < done < size:
                crash_point("image_pull.mid_download")  # part of the blob in its ingest file
            if watch is not None:
                watch.update(digest, size, done, "downloading")

        async def download() -> None:
            async with self._downloads:
                follower = self._followers.pop(digest, None)
                with _tracer.start_as_current_span("image.blob", attributes={"image.digest": digest,
                                                                              "image.size": size}):
                    path = self._store.content.ingest_path(digest)
                    try:
                        with room_for(f"writing blob {digest}", path):
                            await self._client.fetch_blob(resolved, digest, size, path, creds, progress,
                                                          follower)
                            stored = self._store.content.commit(digest)
                        if follower is not None:
                            follower.complete(stored)
                    except OutOfSpace:
                        # What did fit is of no use now, and holds the room another write needs.
                        self._store.content.discard_ingest(digest)
                        raise
                    finally:
                        if follower is not None:
                            follower.close()
                self.blob_bytes += size

        await self._once("blob " + digest, download)
        if watch is not None:
            watch.update(digest, size, size, "done")

    async def _layer(self, resolved: Resolved, layer, diff_id: str, chain_id: str, parent: str, creds) -> None:
        snapshots = self._store.snapshots
        if snapshots.get(chain_id) is None and not self._store.content.has(layer.digest):
            # Neither is here: the unpack reads the blob as it arrives, and waits for its download.
            fetch = (resolved, creds)
            await self._once("snapshot " + chain_id,
                             lambda: self._traced_unpack(layer, diff_id, chain_id, parent, fetch))
        await self._blob(resolved, layer.digest, layer.size, creds)
        if snapshots.get(chain_id) is not None:
            return
        await self._once("snapshot " + chain_id,
                         lambda: self._traced_unpack(layer, diff_id, chain_id, parent, None))

    async def _traced_unpack(self, layer, diff_id: str, chain_id: str, parent: str, fetch) -> None:
        with _tracer.start_as_current_span("image.unpack", attributes={"image.digest": layer.digest,
                                                                        "image.chain_id": chain_id}):
            await self._unpack(layer, diff_id, chain_id, parent, fetch)

    async def _unpack(self, layer, diff_id: str, chain_id: str, parent: str, fetch) -> None:
        """Unpack `layer` into a new snapshot. With `fetch` (the resolved image and credentials),
        download its blob too, unpacking behind the download."""
        snapshots = self._store.snapshots
        new_dir = snapshots.new_dir()
        try:
            path = self._store.content.path(layer.digest)
            result = None
            if fetch is not None:
                result = await self._unpack_following(layer, new_dir, *fetch)
                if result is None:  # start again from the stored blob, in a clean directory
                    snapshots.discard(new_dir)
                    new_dir = snapshots.new_dir()
            if result is None:
                unpacking = _in_thread(unpack_layer, path, layer.media_type, new_dir, self.limits)
                if armed("image_pull.mid_unpack"):
                    unpacking = _crash_mid_unpack(unpacking, new_dir)
                try:
                    result = await unpacking
                except OutOfSpace as e:  # it names the entry and the directory
                    raise e.within(f"layer {layer.digest}: ") from e
            if result.diff_id != diff_id:
                raise LayerError(
                    f"layer {layer.digest}: uncompressed content hashes to {result.diff_id}, "
                    f"but the image config says {diff_id}"
                )
            # On disk before its row is committed: a power loss must not leave a committed
            # snapshot with missing file data. (A filesystem that allocates late says ENOSPC here.)
            with room_for(f"unpacking layer {layer.digest}", new_dir):
                await _in_thread(libc.syncfs, new_dir)
            snapshots.commit(new_dir, chain_id, parent, diff_id, result.size, result.inodes)
        except BaseException:
            snapshots.discard(new_dir)
            raise

    async def _unpack_following(self, layer, new_dir: str, resolved: Resolved, creds) -> UnpackResult | None:
        """Download the layer's blob and unpack it into `new_dir` as it arrives. The result, or
        None when the unpack must be done again from the stored blob: the download was not
        followed (another pull had begun it), started over, or the unpack failed, whose error
        the stored blob then tells for certain. The download's own error is raised."""
        follower = self._followers.setdefault(layer.digest, GrowingBlob())
        reader = follower.reader()
        unpacking = asyncio.ensure_future(_in_thread(
            unpack_layer, self._store.content.path(layer.digest), layer.media_type, new_dir, self.limits, reader,
            executor=_FOLLOWING))
        if armed("image_pull.mid_unpack"):
            unpacking = asyncio.ensure_future(_crash_mid_unpack(unpacking, new_dir))

        async def stop_unpacking() -> None:
            reader.stop()
            await asyncio.wait([unpacking])
            if not unpacking.cancelled():
                unpacking.exception()  # seen: its error is not the one to report

        try:
            try:
                await self._blob(resolved, layer.digest, layer.size, creds)
            except BaseException:  # the download's error is the pull's
                await stop_unpacking()
                raise
            finally:
                if self._followers.get(layer.digest) is follower:  # no download took it up
                    del self._followers[layer.digest]
                    follower.close()
            try:
                return await unpacking
            except Abandoned:
                return None
            except Exception as e:
                log.info("layer %s: unpacking it as it downloaded failed (%s); unpacking the stored blob",
                         layer.digest, e)
                return None
            except BaseException:
                await stop_unpacking()
                raise
        finally:
            reader.close()


async def _crash_mid_unpack(unpacking, new_dir: str):
    """The crash point image_pull.mid_unpack: SIGKILL once the unpack has written something and
    before it has finished (whose thread cannot be stopped in between otherwise)."""
    work = asyncio.ensure_future(unpacking)
    while not work.done():
        if os.listdir(new_dir):
            crash_point("image_pull.mid_unpack")
        await asyncio.sleep(0)
    return await work


class _Shared:
    def __init__(self, task: asyncio.Future):
        self.task = task
        self.waiters = 0


# Unpacks that follow a download wait for its bytes: in their own threads, so that waiting
# never holds a thread the download itself (or anything else) needs from the default pool.
_FOLLOWING = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="unpack-following")


async def _in_thread(fn, *args, executor: concurrent.futures.Executor | None = None):
    """Run fn in a worker thread. If we are cancelled, wait for the thread to finish
    before passing the cancellation on: the caller's clean-up must not race it."""
    fut = asyncio.get_running_loop().run_in_executor(executor, fn, *args)
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        await asyncio.wait([fut])
        raise


def _check_config_size(ref: Reference, digest: str, size: int) -> None:
    if size > CONFIG_LIMIT:
        raise LimitExceeded(f"{ref}: image config {digest} is {size} bytes, over the {CONFIG_LIMIT} byte limit "
                            "of an image config")


def _load_config(data: bytes, ref: Reference) -> dict:
    try:
        return parse_config(data)
    except ManifestError as e:
        raise ContentError(f"{ref}: {e}") from None


