"""`python -m tools.e2e.compare`: the JUnit reports of `make e2e` on Cricket and on containerd,
side by side. Exits 1 if a spec that passed on containerd did not pass on Cricket (the bar of
the e2e issue), and prints the specs that failed on both, for the README's list of them."""
from __future__ import annotations

import argparse
import os
import sys

from tools.cluster import settings as s
from tools.critest import report


def compare(cricket: report.Result, containerd: report.Result) -> dict[str, list[str]]:
    passed_c, passed_d = set(cricket.passed), set(containerd.passed)
    failed_c, failed_d = set(cricket.failed), set(containerd.failed)
    return {
        # What the bar forbids: containerd passed it, Cricket did not.
        "passed on containerd only": sorted(passed_d - passed_c),
        "passed on Cricket only": sorted(passed_c - passed_d),
        "failed on both": sorted(failed_c & failed_d),
        # Run on one runtime and not on the other (a spec list that changed between the runs).
        "not run on both": sorted((passed_c | failed_c) ^ (passed_d | failed_d)),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.e2e.compare", description=__doc__.splitlines()[0])
    p.add_argument("--report-dir", default=os.path.join(s.REPO, ".cache", "e2e"),
                   help="where make e2e wrote RUNTIME/junit_01.xml (default %(default)s)")
    args = p.parse_args(argv)
    results = {}
    for runtime in ("cricket", "containerd"):
        path = os.path.join(args.report_dir, runtime, "junit_01.xml")
        if not os.path.exists(path):
            print(f"no report of {runtime} at {path}: run make e2e RUNTIME={runtime} first", file=sys.stderr)
            return 2
        results[runtime] = report.read(path)
    for runtime, r in results.items():
        print(f"{runtime}: {len(r.passed)} passed, {len(r.failed)} failed, {len(r.skipped)} skipped")
    groups = compare(results["cricket"], results["containerd"])
    for title, names in groups.items():
        print(f"\n{title}: {len(names)}")
        for name in names:
            why = results["cricket"].messages.get(name) or results["containerd"].messages.get(name) or ""
            print(f"  {name}" + (f"\n      {why}" if why and title == "failed on both" else ""))
    return 1 if groups["passed on containerd only"] else 0


if __name__ == "__main__":
    sys.exit(main())
