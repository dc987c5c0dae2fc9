"""The cricketd daemon: one gRPC server on a unix socket serving both CRI services."""
from __future__ import annotations

import asyncio
import fcntl
import functools
import gc
import logging
import os
import signal

import grpc

from api.admin.v1 import admin_pb2_grpc as apb_grpc
from api.runtime.v1 import api_pb2_grpc as pb_grpc
from cri import memory, tracing
from cri.admin import Admin
from cri.build import workspace as build_workspace
from cri.config import Config
from cri.image_service import ImageService
from cri.recover import recover
from cri.runtime import Runtime
from cri.runtime_service import RUNTIME_VERSION, RuntimeService
from cri.status import describe_event
from cri.streaming.server import StreamingServer
from image.limits import ImageLimits
from image.pull import Puller
from image.registry import HostConfig, RegistryClient
from image.store import ImageStore

log = logging.getLogger(__name__)

SOCKET_MODE = 0o660
# How long in-flight calls may run on after SIGTERM before they are cancelled.
STOP_GRACE_SECONDS = 5


class AlreadyRunning(RuntimeError):
    pass


def _lock(socket_path: str) -> int:
    """Hold an exclusive lock beside the socket for the daemon's lifetime, so a second
    instance on the same socket refuses to start instead of stealing it."""
    path = socket_path + ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise AlreadyRunning(
            f"another cricketd (pid {holder}) is serving {socket_path}; stop it first or pick another --socket"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def registry_hosts(config: Config) -> dict[str, HostConfig]:
    return {
        host: HostConfig(
            mirrors=list(h.mirrors), insecure=h.insecure, ca_file=h.ca_file or None, skip_verify=h.skip_verify
        )
        for host, h in config.registries.items()
    }


async def serve(config: Config) -> None:
    """Run the daemon until SIGTERM or SIGINT."""
    memory.limit_arenas()
    for d in (config.root_dir, config.state_dir, os.path.dirname(config.socket)):
        os.makedirs(d, mode=0o711, exist_ok=True)
    lock_fd = _lock(config.socket)

    store = ImageStore(config.root_dir)
    store.snapshots.sweep()
    build_workspace.sweep(config.root_dir)
    client = RegistryClient(
        registry_hosts(config),
        max_retries=config.image.pull_retries,
        timeout=config.image.pull_timeout_seconds,
    )
    puller = Puller(store, client, config.image.max_concurrent_downloads,
                    ImageLimits(config.image.max_layer_size, config.image.max_layer_entries))
    rt = Runtime(config, store)
    rt.pull_leases = lambda: puller.in_flight
    rt.zygote.start()
    recover(rt)
    rt.collect_image_garbage()

    rt.events.describe = functools.partial(describe_event, rt)
    streaming = StreamingServer(rt, config.streaming.address, config.streaming.port)
    await streaming.start()
    metrics = None
    if config.metrics.address:
        from cri.prometheus import (
            Metrics,  # only then: the Prometheus client costs memory (see there)
        )

        metrics = Metrics(rt, puller)
        metrics.serve(config.metrics.address)
        log.info("Prometheus metrics on http://%s/metrics", config.metrics.address)
    interceptors = [metrics] if metrics else []
    traces = None
    if config.tracing.endpoint:
        traces = tracing.set_up(config.tracing.endpoint, config.tracing.sampling_ratio, RUNTIME_VERSION)
        interceptors.append(tracing.CallSpans())
        log.info("tracing to %s", config.tracing.endpoint)
    server = grpc.aio.server(interceptors=interceptors or None)
    pb_grpc.add_RuntimeServiceServicer_to_server(RuntimeService(rt, streaming), server)
    pb_grpc.add_ImageServiceServicer_to_server(ImageService(store, puller, rt.collect_image_garbage), server)
    apb_grpc.add_AdminServicer_to_server(Admin(rt, store, puller, client), server)
    # We hold the lock, so a socket file still there is a dead daemon's.
    try:
        os.unlink(config.socket)
    except FileNotFoundError:
        pass
    old_umask = os.umask(0o117)  # the socket is born 0660, with no window of wider access
    try:
        server.add_insecure_port("unix://" + config.socket)
        await server.start()
    finally:
        os.umask(old_umask)
    os.chmod(config.socket, SOCKET_MODE)
    gc.collect()  # what start-up imported and swept is garbage now
    memory.trim()
    log.info("cricketd serving CRI v1 on %s (root %s, state %s)", config.socket, config.root_dir, config.state_dir)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()

    log.info("stopping")
    await server.stop(STOP_GRACE_SECONDS)
    await rt.trash.drain()  # removed containers' directories: deleted before we go
    await streaming.stop()
    if metrics is not None:
        metrics.stop()
    if traces is not None:
        traces.shutdown()  # what is still batched goes out
    await client.aclose()
    rt.close()
    store.close()
    try:
        os.unlink(config.socket)
    except FileNotFoundError:
        pass
    os.close(lock_fd)
    log.info("stopped")
