"""CRI ImageService: PullImage, ListImages, StreamImages (the same list, in pages), ImageStatus,
RemoveImage, ImageFsInfo."""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

from api.runtime.v1 import api_pb2 as pb
from api.runtime.v1 import api_pb2_grpc as pb_grpc
from cri import memory
from cri.errors import handle_errors
from cri.paging import streams_pages
from cri.unimplemented import answer_unimplemented
from image.metadata import ImageRecord
from image.pull import Puller
from image.reference import parse_reference
from image.registry import Credentials
from image.store import ImageStore

log = logging.getLogger(__name__)


def credentials(auth: pb.AuthConfig) -> Credentials | None:
    if not (auth.username or auth.password or auth.auth or auth.identity_token or auth.registry_token):
        return None
    return Credentials(
        username=auth.username,
        password=auth.password,
        auth=auth.auth,
        identity_token=auth.identity_token,
        registry_token=auth.registry_token,
    )


def image_user(config: dict) -> tuple[int | None, str]:
    """The image's user as the CRI reports it: a numeric uid, or a name, from config.User."""
    user = (config.get("config") or {}).get("User") or ""
    if not user:
        return None, ""
    user = user.split(":", 1)[0]
    try:
        return int(user), ""
    except ValueError:
        return None, user


def to_cri_image(rec: ImageRecord) -> pb.Image:
    uid, username = image_user(rec.config)
    img = pb.Image(
        id=rec.id,
        repo_tags=rec.repo_tags,
        repo_digests=rec.repo_digests,
        size=rec.size,
        username=username,
        spec=pb.ImageSpec(image=rec.id),
    )
    if uid is not None:
        img.uid.value = uid
    return img


@answer_unimplemented
class ImageService(pb_grpc.ImageServiceServicer):
    def __init__(self, store: ImageStore, puller: Puller, collect_garbage: Callable[[], None]):
        self._store = store
        self._puller = puller
        # Collection must spare what pulls and containers hold, which only the daemon knows.
        self._collect_garbage = collect_garbage

    @handle_errors
    async def PullImage(self, request, context):
        ref = parse_reference(request.image.image)
        started = time.monotonic()
        try:
            rec = await self._puller.pull(ref, credentials(request.auth))
        finally:
            memory.trim()
        log.info("pulled %s as %s in %.3fs", ref, rec.id, time.monotonic() - started)
        return pb.PullImageResponse(image_ref=rec.id)

    @handle_errors
    async def ListImages(self, request, context):
        return pb.ListImagesResponse(images=self._list_images(request.filter))

    @streams_pages(pb.StreamImagesResponse, "images")
    async def StreamImages(self, request, context):
        return self._list_images(request.filter)

    def _list_images(self, f: pb.ImageFilter) -> list[pb.Image]:
        wanted = f.image.image
        if wanted:
            rec = self._store.find(wanted)
            records = [rec] if rec else []
        else:
            records = self._store.list()
        return [to_cri_image(r) for r in records]

    @handle_errors
    async def ImageStatus(self, request, context):
        # A missing image is an empty answer, not an error: kubelet asks before every pull.
        rec = self._store.find(request.image.image)
        if rec is None:
            return pb.ImageStatusResponse()
        info = {}
        if request.verbose:
            info["info"] = json.dumps(
                {
                    "id": rec.id,
                    "chainID": rec.chain_id,
                    "manifestDigest": rec.manifest_digest,
                    "manifestMediaType": rec.manifest_media_type,
                    "imageSpec": rec.config,
                }
            )
        return pb.ImageStatusResponse(image=to_cri_image(rec), info=info)

    @handle_errors
    async def RemoveImage(self, request, context):
        if self._store.remove(request.image.image):
            self._collect_garbage()
        memory.trim()
        return pb.RemoveImageResponse()

    @handle_errors
    async def ImageFsInfo(self, request, context):
        used, inodes = self._store.usage()
        usage = pb.FilesystemUsage(
            timestamp=time.time_ns(),
            fs_id=pb.FilesystemIdentifier(mountpoint=self._store.snapshot_root),
        )
        usage.used_bytes.value = used
        usage.inodes_used.value = inodes
        return pb.ImageFsInfoResponse(image_filesystems=[usage])
