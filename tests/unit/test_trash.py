"""The trash removals rename directories into, and its emptying after the call has answered."""
import asyncio
import os

from cri.trash import Trash


def _tree(path, files=3):
    os.makedirs(os.path.join(path, "sub", "deeper"))
    for i in range(files):
        with open(os.path.join(path, "sub", f"f{i}"), "w") as f:
            f.write("x" * 100)
    os.chmod(os.path.join(path, "sub", "deeper"), 0)  # as overlay's work/work is: still deleted


def test_a_directory_put_in_the_trash_is_gone_at_once_and_deleted_when_emptied(tmp_path):
    root, state = tmp_path / "root", tmp_path / "state"
    trash = Trash(str(root), str(state))
    for parent in (root, state):
        _tree(str(parent / "containers" / "c1"))
    trash.put(str(root / "containers" / "c1"))
    trash.put(str(state / "containers" / "c1"))
    assert not (root / "containers" / "c1").exists() and not (state / "containers" / "c1").exists()
    # each went to the trash of its own parent (its own filesystem), not the other's
    assert [n.split("-")[0] for n in os.listdir(root / "trash")] == ["c1"]
    assert [n.split("-")[0] for n in os.listdir(state / "trash")] == ["c1"]
    trash.empty()
    assert os.listdir(root / "trash") == [] and os.listdir(state / "trash") == []


def test_the_same_name_twice_and_a_missing_directory(tmp_path):
    trash = Trash(str(tmp_path))
    for _ in range(2):
        _tree(str(tmp_path / "containers" / "same"))
        trash.put(str(tmp_path / "containers" / "same"))
    assert len(os.listdir(tmp_path / "trash")) == 2
    trash.put(str(tmp_path / "containers" / "never-made"))  # a retried removal: nothing to do
    assert len(os.listdir(tmp_path / "trash")) == 2


def test_a_directory_outside_every_parent_is_deleted_in_place(tmp_path):
    trash = Trash(str(tmp_path / "root"))
    _tree(str(tmp_path / "elsewhere"))
    trash.put(str(tmp_path / "elsewhere"))
    assert not (tmp_path / "elsewhere").exists() and os.listdir(tmp_path / "root" / "trash") == []


def test_emptying_soon_runs_off_the_loop_and_drain_waits_for_everything_put_in(tmp_path):
    trash = Trash(str(tmp_path))

    async def main():
        for i in range(5):
            _tree(str(tmp_path / "containers" / f"c{i}"), files=50)
            trash.put(str(tmp_path / "containers" / f"c{i}"))
            trash.empty_soon()  # while a pass runs, another is owed
        await trash.drain()

    asyncio.run(main())
    assert os.listdir(tmp_path / "trash") == []


def test_a_trash_dir_wiped_under_it_still_leaves_the_directory_deleted(tmp_path):
    trash = Trash(str(tmp_path))
    os.rmdir(tmp_path / "trash")
    _tree(str(tmp_path / "containers" / "c1"))
    trash.put(str(tmp_path / "containers" / "c1"))
    assert not (tmp_path / "containers" / "c1").exists()
