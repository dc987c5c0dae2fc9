"""Pod sandbox and container records, kept in SQLite under the root dir.

A record is written whole, as JSON, in one statement; names are unique columns,
so two requests for one name cannot both win. The CRI configs are kept as
serialized protobuf, so that status answers echo exactly what was asked for.

WAL with synchronous=NORMAL: a committed record survives the daemon being
killed at any moment (which is what a restart must survive); only a power loss
could take the last commits, and after a reboot every container is exited anyway.

A damaged database (truncated, corrupt, a record that does not decode) stops the
daemon at start with StoreDamaged: starting over it would lose the records, and
with them every pod and container they describe.
"""
from __future__ import annotations

import base64
import json
import sqlite3
from dataclasses import dataclass, field, fields

from image.metadata import StoreDamaged, open_store

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sandboxes (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS containers (
    id TEXT PRIMARY KEY,
    sandbox_id TEXT NOT NULL,
    name TEXT NOT NULL UNIQUE,
    record TEXT NOT NULL
);
"""

SANDBOX_READY, SANDBOX_NOTREADY = "ready", "notready"
# Being set up by RunPodSandbox (reported as not ready): a record still in this state at start
# is a set-up a crash cut short, undone then (cri/recover.py), so its name is free for a retry.
SANDBOX_CREATING = "creating"
CREATED, RUNNING, EXITED, UNKNOWN = "created", "running", "exited", "unknown"


class NameInUse(Exception):
    def __init__(self, name: str, holder: str):
        super().__init__(name, holder)
        self.name = name
        self.holder = holder


@dataclass
class SandboxRecord:
    id: str
    name: str
    config: bytes  # PodSandboxConfig, serialized
    runtime_handler: str
    created_at: int  # unix ns
    state: str = SANDBOX_READY
    netns: str = ""  # pinned network namespace; "" on the host's network
    ipcns: str = ""
    utsns: str = ""
    shm: str = ""  # the pod's /dev/shm tmpfs; "" when it uses the host's IPC
    pod_init_pid: int = 0  # holder of the pod's PID namespace, when its containers share one
    pod_init_start: int = 0  # its start time, so a recycled pid is not mistaken for it
    cgroup_parent: str = ""
    own_cgroup_parent: bool = False  # made by Cricket, so removed with the pod
    hostname: str = ""
    ips: list[str] = field(default_factory=list)


@dataclass
class ContainerRecord:
    id: str
    sandbox_id: str
    name: str
    config: bytes  # ContainerConfig, serialized
    image_id: str
    image_name: str  # as the config named it
    chain_id: str  # the image snapshot the rootfs stacks on: kept from image GC while we exist
    log_path: str
    created_at: int
    # The images mounted into it (Mount.image), each {"container_path", "image_id", "chain_id"}:
    # their snapshots are kept from image GC while we exist, as the rootfs's are.
    image_mounts: list[dict] = field(default_factory=list)
    # The OCI runtime spec. CreateContainer saves it with the rest once the container is made, so
    # a record without one at start is a create a crash cut short (cri/recover.py undoes it).
    spec: dict = field(default_factory=dict)
    state: str = CREATED
    started_at: int = 0
    finished_at: int = 0
    exit_code: int = 0
    reason: str = ""
    message: str = ""
    shim_pid: int = 0
    pid: int = 0  # the container's first process on the host
    pid_start: int = 0


def _encode(rec) -> str:
    # Shallow: json.dumps walks the nested spec itself; asdict() would first deep-copy it.
    doc = {f.name: getattr(rec, f.name) for f in fields(rec)}
    doc["config"] = base64.b64encode(rec.config).decode()
    return json.dumps(doc, separators=(",", ":"))


def _decode(cls, text: str):
    doc = json.loads(text)
    doc["config"] = base64.b64decode(doc["config"])
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in doc.items() if k in known})


# What a damaged runtime.db would cost, for the message that refuses to start over it.
_LOSS = "every pod and container it records, and leave their processes, mounts and networks to nobody"


class RecordStore:
    def __init__(self, path: str):
        self.path = path
        self._db = open_store(path, _SCHEMA, ("sandboxes", "containers"), "NORMAL", "the record database", _LOSS)
        self.sandboxes()  # every record read whole now, before anything is started: StoreDamaged if not
        self.containers()

    def _rows(self, cls, table: str) -> list:
        out = []
        try:
            rows = self._db.execute(f"SELECT id, record FROM {table}").fetchall()
        except sqlite3.DatabaseError as e:
            raise StoreDamaged(self.path, "the record database", str(e), _LOSS) from None
        for ident, text in rows:
            try:
                out.append(_decode(cls, text))
            except (ValueError, TypeError, KeyError) as e:
                raise StoreDamaged(self.path, "the record database",
                                   f"the record of {table[:-1]} {ident} does not decode: {e}", _LOSS) from None
        return out

    def close(self) -> None:
        self._db.close()

    def _insert(self, table: str, rec, extra: tuple = ()) -> None:
        cols = "id, name, record" if not extra else "id, sandbox_id, name, record"
        marks = ", ".join("?" * (3 + len(extra)))
        try:
            self._db.execute(f"INSERT INTO {table} ({cols}) VALUES ({marks})",
                             (rec.id, *extra, rec.name, _encode(rec)))
        except sqlite3.IntegrityError:
            row = self._db.execute(f"SELECT id FROM {table} WHERE name=?", (rec.name,)).fetchone()
            if row is None:
                raise
            raise NameInUse(rec.name, row[0]) from None

    def add_sandbox(self, rec: SandboxRecord) -> None:
        """Record a new sandbox; NameInUse if its name is held."""
        self._insert("sandboxes", rec)

    def add_container(self, rec: ContainerRecord) -> None:
        self._insert("containers", rec, (rec.sandbox_id,))

    def update_sandbox(self, rec: SandboxRecord) -> None:
        self._db.execute("UPDATE sandboxes SET record=? WHERE id=?", (_encode(rec), rec.id))

    def update_container(self, rec: ContainerRecord) -> None:
        self._db.execute("UPDATE containers SET record=? WHERE id=?", (_encode(rec), rec.id))

    def remove_sandbox(self, sandbox_id: str) -> None:
        self._db.execute("DELETE FROM sandboxes WHERE id=?", (sandbox_id,))

    def remove_container(self, container_id: str) -> None:
        self._db.execute("DELETE FROM containers WHERE id=?", (container_id,))

    def sandboxes(self) -> list[SandboxRecord]:
        return self._rows(SandboxRecord, "sandboxes")

    def containers(self) -> list[ContainerRecord]:
        return self._rows(ContainerRecord, "containers")
