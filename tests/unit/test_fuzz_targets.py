"""The fuzz targets (fuzz/) without atheris: every target replays its committed corpus — the seeds
and the findings kept beside them — through its check, with its parser's contract, in every run
of the unit tests; and the seeds are what fuzz/seeds.py writes."""
from __future__ import annotations

import importlib
import os

import pytest

from fuzz import ROOT_TARGETS, TARGETS, seeds
from fuzz.harness import CORPUS, guarded
from fuzz.harness import seeds as corpus_of


def test_every_target_has_a_module_and_a_corpus():
    assert set(TARGETS) == set(seeds.SEEDS)
    for target in TARGETS:
        module = importlib.import_module(f"fuzz.{target}")
        assert callable(module.check) and isinstance(module.EXPECTED, tuple)
        assert corpus_of(target), f"{target} has no seeds"


@pytest.mark.parametrize("target", TARGETS)
def test_the_corpus_passes_the_targets_check(target):
    if target in ROOT_TARGETS and os.geteuid() != 0:
        pytest.skip(f"{target} unpacks device nodes, owners and trusted.* xattrs: needs root")
    module = importlib.import_module(f"fuzz.{target}")
    one_input = guarded(module.check, module.EXPECTED)
    failures = []
    for name, data in corpus_of(target):
        try:
            one_input(data)
        except Exception as e:
            failures.append(f"{name}: {type(e).__name__}: {e}")
    assert not failures, "\n".join(failures)


def test_the_committed_seeds_are_what_seeds_py_writes(tmp_path):
    seeds.write(str(tmp_path))
    for target in TARGETS:
        written = {name: (tmp_path / target / name).read_bytes() for name in os.listdir(tmp_path / target)}
        committed = {name: data for name, data in corpus_of(target) if not name.startswith(seeds.FINDING_PREFIX)}
        assert written == committed, f"fuzz/corpus/{target} differs from what `python -m fuzz.seeds` writes"


def test_the_corpus_is_small():
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(CORPUS) for f in files)
    assert total < 1 << 20, f"the committed corpus is {total} bytes"
