"""The metadata stores (runtime.db, images.db) refuse to open damaged: truncated, overwritten,
emptied, stripped of a table, or holding a record that does not decode. Opening one over
damage as if it were new would silently drop every record in it."""
import os
import shutil
import sqlite3
import subprocess

import pytest

from cri.records import ContainerRecord, RecordStore, SandboxRecord
from image.metadata import ImageRecord, Metadata, StoreDamaged


def _runtime_db(tmp_path) -> str:
    path = str(tmp_path / "runtime.db")
    store = RecordStore(path)
    for i in range(40):
        store.add_sandbox(SandboxRecord(id=f"s{i}", name=f"pod{i}", config=b"x" * 300, runtime_handler="",
                                        created_at=i))
        store.add_container(ContainerRecord(id=f"c{i}", sandbox_id=f"s{i}", name=f"ctr{i}", config=b"y" * 300,
                                            image_id="", image_name="", chain_id="", log_path="", created_at=i,
                                            spec={"process": {"args": ["sleep", "1000"] * 50}}))
    store.close()
    return path


def _images_db(tmp_path) -> str:
    path = str(tmp_path / "images.db")
    md = Metadata(path)
    for i in range(40):
        md.put_image(ImageRecord(id=f"sha256:{i:064x}", manifest_digest="m", manifest_media_type="t",
                                 config={"history": ["layer"] * 40}, chain_id="", size=1, created=i),
                     [(f"img{i}:latest", False)], [f"sha256:{i:064x}"])
    md.close()
    return path


STORES = {"runtime.db": (_runtime_db, RecordStore), "images.db": (_images_db, Metadata)}


def _refused(opener, path: str) -> str:
    with open(path, "rb") as f:
        before = f.read()
    with pytest.raises(StoreDamaged) as e:
        opener(path)
    with open(path, "rb") as f:
        assert f.read() == before, "a refused store was written to"
    message = str(e.value)
    assert "\n" not in message and path in message and "damaged" in message and ".dump" in message
    return message


@pytest.mark.parametrize("name", list(STORES))
def test_a_new_store_is_made_whole_and_opens_again(tmp_path, name):
    make, opener = STORES[name]
    path = make(tmp_path)
    assert not os.path.exists(path + ".new")
    opener(path).close()


@pytest.mark.parametrize("name", list(STORES))
def test_an_emptied_store_is_refused_not_taken_for_new(tmp_path, name):
    make, opener = STORES[name]
    path = make(tmp_path)
    os.truncate(path, 0)
    assert "empty" in _refused(opener, path)


@pytest.mark.parametrize("name", list(STORES))
@pytest.mark.parametrize("keep", [100, 4096, 3])
def test_a_truncated_store_is_refused(tmp_path, name, keep):
    make, opener = STORES[name]
    path = make(tmp_path)
    size = os.path.getsize(path)
    os.truncate(path, size // keep if keep == 3 else keep)
    _refused(opener, path)


@pytest.mark.parametrize("name", list(STORES))
def test_an_overwritten_store_is_refused(tmp_path, name):
    make, opener = STORES[name]
    path = make(tmp_path)
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        f.write(b"\xa5" * 4096)
    _refused(opener, path)


@pytest.mark.parametrize("name", list(STORES))
def test_a_store_without_its_tables_is_refused(tmp_path, name):
    _, opener = STORES[name]
    path = str(tmp_path / name)
    sqlite3.connect(path).execute("CREATE TABLE other (x)").connection.close()
    assert "no table" in _refused(opener, path)


@pytest.mark.parametrize("name", list(STORES))
def test_a_record_that_does_not_decode_is_refused(tmp_path, name):
    make, opener = STORES[name]
    path = make(tmp_path)
    db = sqlite3.connect(path)
    if name == "runtime.db":
        db.execute("UPDATE containers SET record='{broken' WHERE id='c7'")
    else:
        db.execute("UPDATE images SET config='{broken' WHERE created=7")
    db.commit()
    db.close()
    assert "does not decode" in _refused(opener, path)


def test_a_creation_cut_short_is_made_again(tmp_path):
    path = str(tmp_path / "runtime.db")
    with open(path + ".new", "wb") as f:
        f.write(b"half a database")
    RecordStore(path).close()
    assert not os.path.exists(path + ".new")
    assert RecordStore(path).sandboxes() == []


@pytest.mark.skipif(not shutil.which("sqlite3"), reason="needs the sqlite3 command: apt-get install sqlite3")
@pytest.mark.parametrize("name", list(STORES))
def test_the_salvage_the_message_gives_works(tmp_path, name):
    make, opener = STORES[name]
    path = make(tmp_path)
    os.truncate(path, os.path.getsize(path) // 2)
    message = _refused(opener, path)
    salvage = message.split("`")[1]
    subprocess.run(["sh", "-c", salvage], check=True, capture_output=True)
    os.replace(path + ".salvaged", path)
    for leftover in (path + "-wal", path + "-shm"):
        if os.path.exists(leftover):
            os.unlink(leftover)
    store = opener(path)  # a store again, with what was readable (here, for a halved file, not all)
    kept = len(store.sandboxes()) if name == "runtime.db" else len(store.images())
    assert kept < 40
