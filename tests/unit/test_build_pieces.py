"""The pieces of `cricket build` that need no kernel: the cache, chain IDs, config changes, source paths."""
from __future__ import annotations

import os

import pytest

from cri.build import copying
from cri.build.builder import apply_changes, new_config
from cri.errors import InvalidArgument
from image.build_cache import BuildCache, step_key
from image.new_image import next_chain_id
from image.snapshots import chain_ids


def test_step_keys_change_with_every_part():
    key = step_key("", "RUN", {"Env": ["A=1"]}, ["echo"])
    assert key == step_key("", "RUN", {"Env": ["A=1"]}, ["echo"])
    assert key != step_key("", "RUN", {"Env": ["A=2"]}, ["echo"])
    assert key != step_key("x", "RUN", {"Env": ["A=1"]}, ["echo"])
    assert len(key) == 64


def test_cache_entries_round_trip_are_referenced_and_cleared(tmp_path):
    cache = BuildCache(str(tmp_path / "cache"))
    key = step_key("", "COPY")
    assert cache.get(key) is None
    cache.put(key, {"layers": [{"digest": "sha256:" + "a" * 64}], "chain_id": "sha256:" + "b" * 64})
    assert cache.get(key)["chain_id"] == "sha256:" + "b" * 64
    assert cache.referenced() == {"sha256:" + "a" * 64, "sha256:" + "b" * 64}
    with open(os.path.join(cache.root, step_key("", "torn") + ".json"), "w") as f:
        f.write("{not json")  # what a crash mid-write could leave: a miss, not an error
    assert cache.get(step_key("", "torn")) is None
    assert cache.clear() == 2
    assert cache.get(key) is None and cache.referenced() == set()
    assert cache.get("../../etc/passwd") is None  # never a path out of the cache
    with pytest.raises(ValueError):
        cache.put("../../etc/passwd", {})


def test_next_chain_id_is_the_oci_chain_id():
    diff_ids = ["sha256:" + c * 64 for c in "abc"]
    chain = ""
    for diff_id, want in zip(diff_ids, chain_ids(diff_ids)):
        chain = next_chain_id(chain, diff_id)
        assert chain == want


def test_changes_edit_the_config_and_refuse_what_makes_layers():
    config = new_config()
    config["config"]["Cmd"] = ["old"]
    apply_changes(config, ['ENTRYPOINT ["/bin/app"]', "ENV A=1 B=two", "EXPOSE 80 90-91/udp",
                           "LABEL x=y", "WORKDIR /srv", "USER nobody", 'CMD ["--serve"]'])
    run = config["config"]
    assert run["Entrypoint"] == ["/bin/app"] and run["Cmd"] == ["--serve"]
    assert run["Env"] == ["A=1", "B=two"]
    assert run["ExposedPorts"] == {"80/tcp": {}, "90/udp": {}, "91/udp": {}}
    assert run["Labels"] == {"x": "y"} and run["WorkingDir"] == "/srv" and run["User"] == "nobody"
    for bad in ("RUN rm -rf /", "COPY a b", "FROM x", "EXPOSE eighty", "NOPE x"):
        with pytest.raises(InvalidArgument):
            apply_changes(new_config(), [bad])


def test_entrypoint_drops_an_inherited_cmd():
    config = new_config()
    config["config"]["Cmd"] = ["inherited"]
    apply_changes(config, ['ENTRYPOINT ["/bin/app"]'])
    assert config["config"]["Cmd"] is None


def test_source_paths_stay_in_the_context(tmp_path):
    assert copying.clean_source("a/../b") == "b"
    assert copying.clean_source("/abs/path") == "abs/path"
    for bad in ("../x", "a/../../x", ".."):
        with pytest.raises(copying.CopyRefused, match="outside the build context"):
            copying.clean_source(bad)
    (tmp_path / "d").mkdir()
    for name in ("x.cfg", "y.cfg", "z.txt"):
        (tmp_path / "d" / name).write_text(name)
    assert copying.expand_sources(str(tmp_path), ["d/*.cfg"]) == ["d/x.cfg", "d/y.cfg"]
    with pytest.raises(copying.CopyRefused, match="no such file"):
        copying.expand_sources(str(tmp_path), ["d/*.none"])
    os.symlink("/etc", tmp_path / "out")
    with pytest.raises(copying.CopyRefused, match="no such file"):
        copying.expand_sources(str(tmp_path), ["out/passwd"])  # resolved inside the context, not at /etc
