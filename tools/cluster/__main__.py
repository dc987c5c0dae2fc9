"""`python -m tools.cluster up|down|status`: the one-node Kubernetes cluster on Cricket (or on
containerd, for comparison). `make cluster` and `make cluster-down` call this."""
from __future__ import annotations

import argparse
import sys

from tools.cluster import cluster, node
from tools.cluster import settings as s


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.cluster", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the cluster and wait until its node is Ready")
    up.add_argument("--runtime", choices=s.RUNTIMES, default="cricket")
    up.add_argument("--no-dns", action="store_true", help="skip the CoreDNS add-on")
    sub.add_parser("down", help="stop everything and remove what the cluster made")
    sub.add_parser("status", help="which components run")
    args = p.parse_args(argv)
    try:
        if args.command == "up":
            timings = cluster.up(args.runtime, dns=not args.no_dns)
            print(cluster.usage())
            print("\nstarted in " + ", ".join(f"{k[:-2].replace('_', ' ')} {v:.1f} s" for k, v in timings.items()))
        elif args.command == "down":
            problems = cluster.down()
            for problem in problems:
                print(f"cluster-down: {problem}", file=sys.stderr)
            return 1 if problems else 0
        else:
            names = ("registry", "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler",
                     "runtime", "kubelet", "kube-proxy")
            for name in names:
                print(f"{name:24} {node.pid_of(name) or 'not running'}")
    except cluster.ClusterError as e:
        print(f"cluster: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
