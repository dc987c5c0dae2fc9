"""The side-by-side reading of make e2e's reports on Cricket and on containerd."""
from tools.critest.report import Result
from tools.e2e.compare import compare


def test_a_spec_containerd_passes_and_cricket_does_not_is_named():
    cricket = Result(passed=["[It] a", "[It] c"], failed=["[It] b", "[It] d"], skipped=["[It] e"])
    containerd = Result(passed=["[It] a", "[It] b"], failed=["[It] c", "[It] d"], skipped=["[It] e"])
    groups = compare(cricket, containerd)
    assert groups["passed on containerd only"] == ["[It] b"]
    assert groups["passed on Cricket only"] == ["[It] c"]
    assert groups["failed on both"] == ["[It] d"]
    assert groups["not run on both"] == []


def test_specs_run_on_one_runtime_only_are_listed():
    groups = compare(Result(passed=["[It] a", "[It] new"]), Result(passed=["[It] a"], failed=["[It] old"]))
    assert groups["not run on both"] == ["[It] new", "[It] old"]
    assert groups["passed on containerd only"] == []
