"""Build benchmark: a ten-step Dockerfile built by `cricket build` and by Debian's `buildah bud`,
same run, same base image from the same loopback registry: cold (no cache) and fully cached.

buildah builds with --layers (its cache) and chroot isolation (which has the host's network
only), storing with the overlay driver; Cricket with its defaults (a RUN step in a network
namespace of its own, more isolated than a chroot). Each build is timed as the command's wall time, client included.
Targets (issue 17): cold <= 1.0x buildah, cached <= 0.5x.
"""
from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from bench.peers import Cricket
from tests.fixtures.images import build_images, push
from tests.fixtures.registry import start_registry

DOCKERFILE = """\
FROM {base}
ENV APP=/srv/app
WORKDIR /srv/app
COPY data/ ./data/
RUN mkdir -p out && for i in $(seq 1 200); do echo $i > out/$i; done
RUN cat data/* > joined && rm -rf out/1*
COPY single.txt .
LABEL bench=build
EXPOSE 8080
CMD ["cat", "/srv/app/joined"]
"""
TARGETS = {"cold": 1.0, "cached": 0.5}


def add_arguments(parser) -> None:
    parser.add_argument("--build-runs", type=int, default=3, help="builds of each kind per tool (default %(default)s)")


def _context(root: str, base: str) -> str:
    ctx = os.path.join(root, "context")
    os.makedirs(os.path.join(ctx, "data"))
    for i in range(100):
        with open(os.path.join(ctx, "data", f"f{i}"), "wb") as f:
            f.write(os.urandom(20_000))
    with open(os.path.join(ctx, "single.txt"), "w") as f:
        f.write("single\n")
    with open(os.path.join(ctx, "Dockerfile"), "w") as f:
        f.write(DOCKERFILE.format(base=base))
    return ctx


def _timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    took = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])}... failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")
    return took


def run(args) -> dict:
    if shutil.which("buildah") is None:
        raise SystemExit("bench build: buildah is not installed (make deps-test installs it)")
    figures: dict = {"runs": args.build_runs, "cricket": {"cold": [], "cached": []},
                     "buildah": {"cold": [], "cached": []}}
    with tempfile.TemporaryDirectory(prefix="bench-build-") as work:
        images = build_images(os.path.join(work, "images"))
        with start_registry(os.path.join(work, "registry")) as registry:
            push(images, "busybox", registry)
            base = images["busybox"].reference(registry)
            ctx = _context(work, base)
            storage = os.path.join(work, "buildah")
            buildah = ["buildah", "--root", f"{storage}/root", "--runroot", f"{storage}/run",
                       "--storage-driver", "overlay"]
            subprocess.run([*buildah, "pull", "--tls-verify=false", base], check=True, capture_output=True, timeout=300)
            peer = Cricket([registry])
            peer.start()
            try:
                peer.pull(base)
                cricket = [sys.executable, "-m", "cli.main", "--socket", peer.daemon.socket, "build", "-q"]
                # chroot isolation runs on the host's network only: no RUN here needs one.
                bud = [*buildah, "bud", "-q", "--isolation", "chroot", "--network", "host", "--tls-verify=false",
                       "--layers"]
                for _ in range(args.build_runs):
                    figures["cricket"]["cold"].append(_timed([*cricket, "--no-cache", "-t", "localhost/b:1", ctx]))
                    figures["cricket"]["cached"].append(_timed([*cricket, "-t", "localhost/b:1", ctx]))
                    figures["buildah"]["cold"].append(_timed([*bud, "--no-cache", "-t", "localhost/b:1", ctx]))
                    figures["buildah"]["cached"].append(_timed([*bud, "-t", "localhost/b:1", ctx]))
            finally:
                peer.stop()
                subprocess.run([*buildah, "rmi", "--all", "--force"], capture_output=True, timeout=300)
    return figures


def report(figures: dict) -> str:
    lines = [f"build: a ten-step Dockerfile, median of {figures['runs']} (seconds, client included)",
             f"  {'':8s} {'cricket':>9s} {'buildah':>9s} {'ratio':>7s} {'target':>7s}"]
    for kind, target in TARGETS.items():
        ours = statistics.median(figures["cricket"][kind])
        theirs = statistics.median(figures["buildah"][kind])
        ratio = ours / theirs
        lines.append(f"  {kind:8s} {ours:9.3f} {theirs:9.3f} {ratio:7.2f} {'<= ' + str(target):>7s}"
                     + ("" if ratio <= target else "  (not met)"))
    return "\n".join(lines)
