"""`python -m tools.e2e`: Kubernetes' e2e node-conformance specs on the one-node cluster, on
Cricket or containerd; a JUnit report and one summary line. `make e2e` calls this."""
from __future__ import annotations

import argparse
import os
import sys

from tools.cluster import settings as s
from tools.e2e import run

# Specs mostly wait (for pods, for namespaces to go), so more run at once than there are cores:
# with four, the 63 smoke specs took some 3 minutes on this 2-core machine.
PROCS = 4


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.e2e", description=__doc__.splitlines()[0])
    p.add_argument("--runtime", choices=s.RUNTIMES, default="cricket")
    p.add_argument("--smoke", action="store_true", help="only the smoke selection CI runs")
    p.add_argument("--focus", help="a ginkgo focus regex in place of the selection")
    p.add_argument("--skip", help="a ginkgo skip regex in place of the selection's")
    p.add_argument("--report-dir", default=os.path.join(s.REPO, ".cache", "e2e"))
    p.add_argument("--procs", type=int, default=PROCS, help="ginkgo processes sharing the specs (default %(default)s)")
    p.add_argument("--keep-cluster", action="store_true", help="leave the cluster running after the specs")
    args = p.parse_args(argv)
    focus = args.focus or (run.SMOKE if args.smoke else run.NODE_CONFORMANCE)
    skip = args.skip or (run.SMOKE_SKIP if args.smoke else run.SKIP)
    report_dir = os.path.join(args.report_dir, args.runtime)
    result, took = run.run(args.runtime, focus, skip, report_dir, args.procs, args.keep_cluster)
    for name in result.failed:
        print(f"FAILED {name}: {result.messages.get(name, '')}")
    print(f"e2e on {args.runtime}: {len(result.passed)} passed, {len(result.failed)} failed, "
          f"{len(result.skipped)} skipped in {took:.0f} s; report {os.path.join(report_dir, 'junit_01.xml')}")
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
