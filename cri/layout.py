"""Where a sandbox's and a container's files live.

What must survive a daemon restart but is the container's own data (its
writable layer, its image volumes) is under the root dir; what must not outlive
a reboot (namespace pins, the pod's /dev/shm, mounts, sockets, exit files) is
under the state dir.
"""
from __future__ import annotations

import os


class Layout:
    def __init__(self, root_dir: str, state_dir: str):
        self.root_dir = root_dir
        self.state_dir = state_dir
        self.records = os.path.join(root_dir, "runtime.db")
        self.sandboxes = os.path.join(state_dir, "sandboxes")
        self.containers_state = os.path.join(state_dir, "containers")
        self.containers_root = os.path.join(root_dir, "containers")
        for d in (self.sandboxes, self.containers_state, self.containers_root):
            os.makedirs(d, mode=0o711, exist_ok=True)

    # -- sandboxes -------------------------------------------------------------------

    def sandbox_dir(self, sandbox_id: str) -> str:
        return os.path.join(self.sandboxes, sandbox_id)

    def sandbox_pin(self, sandbox_id: str, kind: str) -> str:
        """The file a pod's `kind` (net, ipc, uts) namespace is bind-mounted on."""
        return os.path.join(self.sandboxes, sandbox_id, "ns", kind)

    def sandbox_shm(self, sandbox_id: str) -> str:
        return os.path.join(self.sandboxes, sandbox_id, "shm")

    def sandbox_file(self, sandbox_id: str, name: str) -> str:
        """hostname, hosts or resolv.conf, as the pod's containers see them."""
        return os.path.join(self.sandboxes, sandbox_id, name)

    # -- containers ------------------------------------------------------------------

    def bundle(self, container_id: str) -> str:
        """The OCI bundle: config.json, the rootfs mount, the shim's socket, log and exit file."""
        return os.path.join(self.containers_state, container_id)

    def rootfs(self, container_id: str) -> str:
        return os.path.join(self.bundle(container_id), "rootfs")

    def image_mounts(self, container_id: str) -> str:
        """Where the images a container mounts (Mount.image) are mounted, one directory each."""
        return os.path.join(self.bundle(container_id), "image-mounts")

    def shim_socket(self, container_id: str) -> str:
        return os.path.join(self.bundle(container_id), "shim.sock")

    def exit_file(self, container_id: str) -> str:
        return os.path.join(self.bundle(container_id), "exit")

    def shim_log(self, container_id: str) -> str:
        return os.path.join(self.bundle(container_id), "shim.log")

    def container_dir(self, container_id: str) -> str:
        """The container's own data: upper/ and work/ of its overlay, and volumes/."""
        return os.path.join(self.containers_root, container_id)
