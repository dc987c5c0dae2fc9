"""Image and snapshot records, kept in SQLite (WAL) under the root dir.

Every change that must be seen whole (an image with its names and blobs, a
snapshot row with its directory) is one transaction, so a SIGKILL at any moment
leaves either the old state or the new one.

A damaged database stops the daemon at start (StoreDamaged) rather than being
started over: an empty store would drop every image, and garbage collection would
then delete every blob and snapshot the lost records referenced.
"""
from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass, field

from image.space import OutOfSpace, is_out_of_space

_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id TEXT PRIMARY KEY,              -- the config digest
    manifest_digest TEXT NOT NULL,
    manifest_media_type TEXT NOT NULL,
    config TEXT NOT NULL,             -- the image config JSON as pulled
    chain_id TEXT NOT NULL,           -- top snapshot; '' for an image without layers
    size INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS image_names (
    name TEXT PRIMARY KEY,            -- normalised reference, by tag or by digest
    image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    is_digest INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS image_blobs (
    image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    digest TEXT NOT NULL,
    PRIMARY KEY (image_id, digest)
);
CREATE TABLE IF NOT EXISTS snapshots (
    id INTEGER PRIMARY KEY AUTOINCREMENT,   -- also its directory name: short overlay options
    chain_id TEXT NOT NULL UNIQUE,
    parent TEXT NOT NULL,                   -- parent chain ID, '' for a base layer
    diff_id TEXT NOT NULL,
    size INTEGER NOT NULL,
    inodes INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS image_names_by_image ON image_names(image_id);
"""


@dataclass
class ImageRecord:
    id: str
    manifest_digest: str
    manifest_media_type: str
    config: dict
    chain_id: str
    size: int
    created: float
    repo_tags: list[str] = field(default_factory=list)
    repo_digests: list[str] = field(default_factory=list)


@dataclass
class SnapshotRecord:
    id: int
    chain_id: str
    parent: str
    diff_id: str
    size: int
    inodes: int


class StoreDamaged(Exception):
    """A metadata database that cannot be read whole. The message is one line: which file, what
    is wrong, and what to do; the daemon prints it and exits instead of starting over it."""

    def __init__(self, path: str, what: str, reason: str, loss: str):
        reason = " ".join(reason.split())  # SQLite's integrity reports come in lines
        # The salvage is .dump's, which reads what it can and ends in ROLLBACK at the first
        # damaged page (turned into COMMIT); the sqlite3 CLI's .recover fails in 3.40.
        super().__init__(
            f"{what} {path} is damaged ({reason}); cricketd will not start over it, as that would lose {loss}. "
            f"Restore it from a backup, or keep what is readable: `(sqlite3 {path} .dump | grep -v '^ROLLBACK'; "
            f"echo 'COMMIT;') | sqlite3 {path}.salvaged`, then move {path}.salvaged to {path} and delete "
            f"{path}-wal and {path}-shm"
        )
        self.path = path


def open_store(path: str, schema: str, tables: tuple[str, ...], synchronous: str, what: str,
               loss: str) -> sqlite3.Connection:
    """Open (or create) an SQLite store in WAL mode, refusing one that is damaged.

    A new database is made whole under another name and renamed into place, so a file at
    `path` always had its schema: one that is empty, is not a database, lacks a table, or
    fails SQLite's quick check was damaged (truncated, overwritten), and StoreDamaged says so.
    """
    if not os.path.exists(path):
        _create(path, schema)
    elif os.path.getsize(path) == 0:
        # SQLite takes an empty file for a new, empty database: that would silently drop every record.
        raise StoreDamaged(path, what, "it is empty: truncated", loss)
    try:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as e:
        raise StoreDamaged(path, what, str(e), loss) from None
    try:
        # Checked before anything is written: a refused store is left as it was found.
        problems = [row[0] for row in db.execute("PRAGMA quick_check")]
        if problems != ["ok"]:
            raise StoreDamaged(path, what, "; ".join(problems[:3]), loss)
        have = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        missing = [t for t in tables if t not in have]
        if missing:
            raise StoreDamaged(path, what, f"it has no table {', '.join(missing)}", loss)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous}")
        db.executescript(schema)  # indexes, and tables a newer version added
    except sqlite3.DatabaseError as e:
        db.close()
        raise StoreDamaged(path, what, str(e), loss) from None
    except StoreDamaged:
        db.close()
        raise
    return db


def _create(path: str, schema: str) -> None:
    new = path + ".new"
    for leftover in (new, new + "-journal"):
        try:
            os.unlink(leftover)  # a creation a crash cut short
        except FileNotFoundError:
            pass
    db = sqlite3.connect(new, isolation_level=None)
    try:
        db.executescript(schema)
    finally:
        db.close()
    with open(new, "rb") as f:
        os.fsync(f.fileno())
    os.rename(new, path)
    fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# What a damaged images.db would cost, for the message that refuses to start over it.
_LOSS = "every image it records, and garbage collection would then delete their blobs and snapshots"


class Metadata:
    def __init__(self, path: str):
        self.path = path
        self._db = open_store(path, _SCHEMA, ("images", "image_names", "image_blobs", "snapshots"), "FULL",
                              "the image database", _LOSS)
        self._db.execute("PRAGMA foreign_keys=ON")
        self._check_records()
        # Image records as read, by ID and by name: every status and list call names images,
        # and a query and a parse of the config each time cost more than the rest of the call.
        # Emptied by every change of images or names, which are all made here.
        self._by_id: dict[str, ImageRecord | None] = {}
        self._id_by_name: dict[str, str | None] = {}

    def _check_records(self) -> None:
        """Read every image record whole; StoreDamaged names the first that does not decode."""
        for ident, config in self._db.execute("SELECT id, config FROM images"):
            try:
                json.loads(config)
            except (ValueError, TypeError) as e:
                raise StoreDamaged(self.path, "the image database",
                                   f"the record of image {ident} does not decode: {e}", _LOSS) from None

    def close(self) -> None:
        self._db.close()

    def _tx(self):
        return _Transaction(self._db, self.path)

    def _changed(self) -> None:
        self._by_id.clear()
        self._id_by_name.clear()

    # images --------------------------------------------------------------

    def put_image(self, rec: ImageRecord, names: list[tuple[str, bool]], blobs: list[str]) -> None:
        """Record an image (replacing an older record with the same ID) and point `names` at it.

        A name that pointed at another image moves here; the other image keeps its
        record even with no names left, as containerd keeps dangling images until GC.
        """
        self._changed()
        with self._tx() as db:
            db.execute(
                "INSERT INTO images VALUES (?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET "
                "manifest_digest=excluded.manifest_digest, manifest_media_type=excluded.manifest_media_type",
                (rec.id, rec.manifest_digest, rec.manifest_media_type, json.dumps(rec.config),
                 rec.chain_id, rec.size, rec.created),
            )
            db.executemany("INSERT OR IGNORE INTO image_blobs VALUES (?,?)", [(rec.id, b) for b in blobs])
            db.executemany(
                "INSERT INTO image_names VALUES (?,?,?) ON CONFLICT(name) DO UPDATE SET image_id=excluded.image_id",
                [(n, rec.id, int(d)) for n, d in names],
            )

    def _image(self, row) -> ImageRecord:
        rec = ImageRecord(row[0], row[1], row[2], json.loads(row[3]), row[4], row[5], row[6])
        for name, is_digest in self._db.execute(
            "SELECT name, is_digest FROM image_names WHERE image_id=? ORDER BY name", (rec.id,)
        ):
            (rec.repo_digests if is_digest else rec.repo_tags).append(name)
        return rec

    def image(self, image_id: str) -> ImageRecord | None:
        """The image's record: shared by every caller until the images change, so not to be altered."""
        if image_id not in self._by_id:
            row = self._db.execute("SELECT * FROM images WHERE id=?", (image_id,)).fetchone()
            self._by_id[image_id] = self._image(row) if row else None
        return self._by_id[image_id]

    def image_by_name(self, name: str) -> ImageRecord | None:
        if name not in self._id_by_name:
            row = self._db.execute("SELECT image_id FROM image_names WHERE name=?", (name,)).fetchone()
            self._id_by_name[name] = row[0] if row else None
        image_id = self._id_by_name[name]
        return self.image(image_id) if image_id else None

    def images_by_id_prefix(self, prefix: str) -> list[ImageRecord]:
        rows = self._db.execute(
            "SELECT * FROM images WHERE substr(id, 1, ?) = ?", (len(prefix), prefix)
        ).fetchall()
        return [self._image(r) for r in rows]

    def images(self) -> list[ImageRecord]:
        return [self._image(r) for r in self._db.execute("SELECT * FROM images ORDER BY created")]

    def remove_name(self, name: str) -> None:
        self._changed()
        self._db.execute("DELETE FROM image_names WHERE name=?", (name,))

    def remove_image(self, image_id: str) -> None:
        self._changed()
        with self._tx() as db:
            db.execute("DELETE FROM image_names WHERE image_id=?", (image_id,))
            db.execute("DELETE FROM image_blobs WHERE image_id=?", (image_id,))
            db.execute("DELETE FROM images WHERE id=?", (image_id,))

    def referenced_blobs(self) -> set[str]:
        return {r[0] for r in self._db.execute("SELECT DISTINCT digest FROM image_blobs")}

    def image_chain_ids(self) -> set[str]:
        return {r[0] for r in self._db.execute("SELECT chain_id FROM images WHERE chain_id != ''")}

    # snapshots -----------------------------------------------------------

    def add_snapshot(self, chain_id: str, parent: str, diff_id: str, size: int, inodes: int, place) -> int:
        """Insert a snapshot row and call place(id) to move its directory in, in one transaction.

        If place raises, the row is rolled back; if the process dies after place but
        before commit, the directory has no row and the next start sweeps it.
        """
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO snapshots (chain_id, parent, diff_id, size, inodes) VALUES (?,?,?,?,?)",
                (chain_id, parent, diff_id, size, inodes),
            )
            place(cur.lastrowid)
            return cur.lastrowid

    def snapshot(self, chain_id: str) -> SnapshotRecord | None:
        row = self._db.execute("SELECT * FROM snapshots WHERE chain_id=?", (chain_id,)).fetchone()
        return SnapshotRecord(*row) if row else None

    def snapshots(self) -> list[SnapshotRecord]:
        return [SnapshotRecord(*r) for r in self._db.execute("SELECT * FROM snapshots")]

    def remove_snapshot(self, chain_id: str) -> None:
        self._db.execute("DELETE FROM snapshots WHERE chain_id=?", (chain_id,))

    def snapshot_usage(self) -> tuple[int, int]:
        row = self._db.execute("SELECT COALESCE(SUM(size),0), COALESCE(SUM(inodes),0) FROM snapshots").fetchone()
        return int(row[0]), int(row[1])


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on an error. A full disk (SQLITE_FULL, in a
    statement or at the COMMIT) rolls back and raises OutOfSpace naming the database."""

    def __init__(self, db: sqlite3.Connection, path: str = ""):
        self._db = db
        self._path = path

    def __enter__(self) -> sqlite3.Connection:
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:
            raise self._translated(e) from e
        return self._db

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self._db.execute("COMMIT")
                return
            except sqlite3.OperationalError as e:
                # A COMMIT that fails with SQLITE_FULL leaves the transaction open: every later
                # BEGIN on this connection would fail ("within a transaction") until it ends.
                self._rollback()
                raise self._translated(e) from e
        self._rollback()
        if isinstance(exc, sqlite3.OperationalError) and is_out_of_space(exc):
            raise self._translated(exc) from exc

    def _rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def _translated(self, e: sqlite3.OperationalError) -> Exception:
        if is_out_of_space(e):
            return OutOfSpace(f"no space left on device recording to {self._path}; free space on its "
                              "filesystem and try again", self._path)
        return e
