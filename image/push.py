"""Pushing an image from the store to a registry: its blobs, then its manifest, as stored.

The manifest goes up byte for byte, so the pushed image has the digest it has
here; blobs the repository already has are not sent again.
"""
from __future__ import annotations

import asyncio

from image.manifest import Index, parse_manifest
from image.metadata import ImageRecord
from image.pull import watching
from image.reference import Reference
from image.registry import Credentials, RegistryClient
from image.store import ImageStore

MAX_CONCURRENT_UPLOADS = 3


async def push(store: ImageStore, client: RegistryClient, rec: ImageRecord, ref: Reference,
               creds: Credentials | None = None) -> str:
    """Push image `rec` as `ref`; the manifest digest. Progress goes to the current PullWatch."""
    data = store.content.read(rec.manifest_digest)
    doc = parse_manifest(data, rec.manifest_media_type)
    if isinstance(doc, Index):
        raise ValueError(f"image {rec.id}: its manifest is an index, which Cricket does not push")
    watch = watching.get()
    uploads = asyncio.Semaphore(MAX_CONCURRENT_UPLOADS)

    async def one(digest: str, size: int) -> None:
        if watch is not None:
            watch.update(digest, size, 0, "waiting")
        async with uploads:
            def progress(done: int) -> None:
                if watch is not None:
                    watch.update(digest, size, done, "uploading")

            sent = await client.push_blob(ref, digest, size, store.content.path(digest), creds, progress)
        if watch is not None:
            watch.update(digest, size, size, "done" if sent else "present")

    await asyncio.gather(*(one(d.digest, d.size) for d in (*doc.layers, doc.config)))
    return await client.push_manifest(ref, data, rec.manifest_media_type, creds)
