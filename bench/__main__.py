"""Command line of the benchmarks: `python -m bench [NAME ...] [options]`."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys

from bench import build, calls, kubelet, lifecycle, load, network, pull, unpack

# Name -> module with add_arguments(parser), run(args) -> figures, report(figures) -> text.
BENCHMARKS = {
    "pull": pull, "lifecycle": lifecycle, "network": network, "unpack": unpack, "calls": calls, "load": load,
    "kubelet": kubelet, "build": build,
}
OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Compare Cricket with containerd on this machine. Prints a table of both "
                    "figures and their ratio, writes them to bench/out/NAME.json, and exits 0 "
                    "whether or not the targets are met.",
    )
    p.add_argument("names", nargs="*", metavar="NAME",
                   help=f"benchmarks to run: {', '.join(BENCHMARKS)} (default: all)")
    p.add_argument("--out", default=OUT_DIR, help="directory for the JSON figures (default bench/out)")
    for bench in BENCHMARKS.values():
        bench.add_arguments(p)
    args = p.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        p.error(f"no benchmark named {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    return args


def _terminate(signum, frame):
    # Unwind through every `finally`, so daemons, mounts and directories are cleaned up.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench: needs root (containerd and cricketd mount overlays and own files)", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, _terminate)
    os.makedirs(args.out, exist_ok=True)
    for name in args.names or BENCHMARKS:
        bench = BENCHMARKS[name]
        figures = bench.run(args)
        path = os.path.join(args.out, f"{name}.json")
        with open(path, "w") as f:
            json.dump(figures, f, indent=2)
        print(bench.report(figures))
        print(f"figures written to {path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
