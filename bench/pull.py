"""Pull benchmark: the same ~50 MB image (three layers of random data over a busybox
layer), from the same loopback registry, pulled through CRI by Cricket and by
containerd in one run."""
from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import time
from typing import Any

from bench.peers import Containerd, Cricket
from tests.fixtures.images import build_big_image, push
from tests.fixtures.registry import start_registry

IMAGE = "bigimage"
# Time for a freshly started (or just used) daemon to finish its background start-up
# work, so an "idle" reading is idle.
SETTLE_SECONDS = 2.0
REPULL_TARGET_MS = 50


def add_arguments(parser) -> None:
    parser.add_argument("--runs", type=int, default=3, help="cold pulls per runtime (default %(default)s)")
    parser.add_argument(
        "--repulls", type=int, default=10, help="re-pulls of the present image per runtime (default %(default)s)"
    )
    parser.add_argument("--mb", type=int, default=50, help="size of the image in MB (default %(default)s)")


def run(args) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-pull-") as work:
        images = build_big_image(os.path.join(work, "image"), mb=args.mb)
        info = images[IMAGE]
        with start_registry(os.path.join(work, "registry")) as registry:
            push(images, IMAGE, registry)
            image = info.reference(registry)
            peers = [Cricket([registry]), Containerd([registry])]
            try:
                for peer in peers:
                    peer.start()
                figures = measure(peers, image, args)
            finally:
                for peer in peers:
                    peer.stop()
    figures["setup"] = {
        "image": IMAGE,
        "image_bytes": info.size,
        "layers": len(info.layers),
        "image_id": info.config_digest,
        "runs": args.runs,
        "repulls": args.repulls,
        **environment(),
    }
    return figures


def measure(peers, image: str, args) -> dict:
    out: dict[str, dict[str, Any]] = {p.name: {"cold_s": [], "repull_s": [], "stored_after_remove_bytes": []}
                                      for p in peers}
    time.sleep(SETTLE_SECONDS)
    for p in peers:
        out[p.name]["memory_start"] = p.memory()

    for run in range(args.runs):
        # Alternate who goes first, so neither always meets a colder (or warmer) registry.
        for p in peers if run % 2 == 0 else peers[::-1]:
            # Write back what the set-up and the last removal left dirty, so a daemon
            # that syncs the filesystem does not pay for the other's (or our) writes.
            os.sync()
            start = time.perf_counter()
            ref = p.pull(image)
            out[p.name]["cold_s"].append(time.perf_counter() - start)
            out[p.name]["image_ref"] = ref
            # RemoveImage collects content and snapshots before it answers (both
            # daemons), so the next pull starts from nothing. Check that it did: a
            # daemon that keeps its layers would make its next "cold" pull a warm one.
            p.remove(image)
            out[p.name]["stored_after_remove_bytes"].append(p.stored_bytes())

    for p in peers:
        p.pull(image)
        for _ in range(args.repulls):
            start = time.perf_counter()
            p.pull(image)
            out[p.name]["repull_s"].append(time.perf_counter() - start)

    time.sleep(SETTLE_SECONDS)
    for p in peers:
        out[p.name]["memory_after"] = p.memory()
    for p in peers:
        f = out[p.name]
        # Anything near the image's size left behind means layers were kept.
        f["cold_runs_were_cold"] = all(b < args.mb * 1e6 / 10 for b in f["stored_after_remove_bytes"])
        f["cold_median_s"] = statistics.median(f["cold_s"])
        f["cold_min_s"] = min(f["cold_s"])
        f["repull_median_s"] = statistics.median(f["repull_s"])
    return out


def environment() -> dict:
    version = subprocess.run(["containerd", "--version"], capture_output=True, text=True, check=False).stdout.strip()
    return {
        "containerd": version,
        "cpus": os.cpu_count(),
        "kernel": os.uname().release,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def report(f: dict) -> str:
    c, d = f["cricket"], f["containerd"]
    s = f["setup"]
    cold_ok = c["cold_runs_were_cold"] and d["cold_runs_were_cold"]
    rows = [
        (
            "cold pull, median (s)",
            c["cold_median_s"],
            d["cold_median_s"],
            "3f",
            _verdict(c["cold_median_s"] <= d["cold_median_s"], "no slower than containerd")
            if cold_ok
            else "INVALID  some 'cold' pulls were warm (see below)",
        ),
        ("cold pull, min (s)", c["cold_min_s"], d["cold_min_s"], "3f", ""),
        (
            "re-pull, median (ms)",
            c["repull_median_s"] * 1000,
            d["repull_median_s"] * 1000,
            "1f",
            _verdict(c["repull_median_s"] * 1000 < REPULL_TARGET_MS, f"under {REPULL_TARGET_MS} ms"),
        ),
    ]
    for when, label in (("memory_start", "at start"), ("memory_after", "after pulls")):
        for key, name in (("rss_kib", "RSS"), ("pss_kib", "PSS")):
            cv, dv = c[when][key] / 1024, d[when][key] / 1024
            target = _verdict(cv <= dv, "no larger than containerd") if key == "rss_kib" else ""
            rows.append((f"idle {name} {label} (MiB)", cv, dv, "1f", target))

    lines = [
        (
            f"pull: {s['image_bytes'] / 1e6:.1f} MB image, {s['layers']} layers, loopback registry; "
            f"{s['runs']} cold pulls and {s['repulls']} re-pulls each; {s['cpus']} CPUs; {s['containerd']}"
        ),
        f"{'':28}{'cricket':>10}{'containerd':>12}{'ratio':>8}   target",
    ]
    for label, cv, dv, fmt, target in rows:
        ratio = f"{cv / dv:.2f}" if dv else "-"
        lines.append(f"{label:28}{cv:>10.{fmt}}{dv:>12.{fmt}}{ratio:>8}   {target}")
    lines.append(
        "cold pulls (s): "
        + "; ".join(f"{name} " + " ".join(f"{t:.3f}" for t in f[name]["cold_s"]) for name in ("cricket", "containerd"))
    )
    for name in ("cricket", "containerd"):
        if f[name]["image_ref"] != s["image_id"]:
            lines.append(
                f"WARNING: {name} answered image {f[name]['image_ref']}, but the image built is {s['image_id']}"
            )
        if not f[name]["cold_runs_were_cold"]:
            left = ", ".join(f"{b / 1e6:.1f}" for b in f[name]["stored_after_remove_bytes"])
            lines.append(
                f"WARNING: {name} kept its layers after RemoveImage (MB left under its root "
                f"after each removal: {left}), so its cold pulls after the first were not cold"
            )
    lines.append(
        "ratio is cricket / containerd; RSS and PSS are of the daemon process alone (PSS splits shared\n"
        "library pages among the processes mapping them, this benchmark's own gRPC client included)"
    )
    return "\n".join(lines)


def _verdict(ok: bool, target: str) -> str:
    return f"{'PASS' if ok else 'MISS'}  {target}"
