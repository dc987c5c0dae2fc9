"""`python -m tools.critest [--report-dir DIR] [--verbose] [critest args]`: set up, run critest,
judge its report, take everything down (see the package's docstring)."""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

from tools.critest import daemon, processes, report
from tools.critest.network import Network
from tools.critest.registry import BINARY as REGISTRY_BINARY
from tools.critest.registry import Registry

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_REPORT_DIR = os.path.join(REPO, ".cache", "critest")
# The Debian busybox package the stand-ins' /bin/sh comes from, downloaded once.
DEB_CACHE = os.path.join(REPO, ".cache", "critest-debs")
# What the run needs besides critest, and the Debian package that has it (`make deps-test`).
NEEDS = {REGISTRY_BINARY: "docker-registry", "skopeo": "skopeo", "/bin/busybox": "busybox-static",
         "iptables-save": "iptables", "iptables-restore": "iptables", "ip": "iproute2", "dpkg-deb": "dpkg",
         "ldd": "libc-bin"}


class Terminated(BaseException):
    """A SIGTERM, SIGINT or SIGHUP: stop the run and take everything down."""


class _Signals:
    """Turn the first stop signal into Terminated; while taking down, let none interrupt."""

    def __init__(self) -> None:
        self.taking_down = False
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on)

    def _on(self, signum: int, frame) -> None:
        if self.taking_down:
            print(f"critest: {signal.Signals(signum).name} while cleaning up: finishing the clean-up first",
                  file=sys.stderr)
            return
        raise Terminated(signal.Signals(signum).name)


def tools_bin() -> str:
    return os.environ.get("CRICKET_TOOLS_BIN") or os.path.join(REPO, ".cache", "tools", "bin")


def critest_version() -> str:
    try:
        with open(os.path.join(REPO, "tools", "cri-tools", "go.mod")) as f:
            found = re.search(r"sigs\.k8s\.io/cri-tools (v\S+)", f.read())
        return found.group(1) if found else ""
    except OSError:
        return ""


def missing(critest: str) -> list[str]:
    out = [] if os.access(critest, os.X_OK) else [f"{critest} (make go-tools builds it)"]
    for binary, package in NEEDS.items():
        if not (os.access(binary, os.X_OK) if binary.startswith("/") else shutil.which(binary)):
            out.append(f"{binary} (apt-get install {package})")
    return out


def run_critest(argv: list[str], log_path: str, verbose: bool, env: dict, cwd: str,
                keep: Callable[[subprocess.Popen], None]) -> int:
    """Run critest to its end, its output into the log (and to stdout too when verbose)."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=env, cwd=cwd, start_new_session=True)
        keep(proc)
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            if verbose:
                sys.stdout.buffer.write(line)
                sys.stdout.flush()
        return proc.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.critest", description=__doc__.splitlines()[0],
                                epilog="Other arguments go to critest, e.g. --ginkgo.focus='Image Volume'.")
    p.add_argument("--report-dir", default=DEFAULT_REPORT_DIR,
                   help=f"where junit.xml and the logs go (default {DEFAULT_REPORT_DIR})")
    p.add_argument("-v", "--verbose", action="store_true", help="show critest's output as it runs")
    args, critest_args = p.parse_known_args(argv)
    critest = os.path.join(tools_bin(), "critest")
    if os.geteuid() != 0:
        print("critest: needs root (it runs a container runtime)", file=sys.stderr)
        return 2
    lacking = missing(critest)
    if lacking:
        print(f"critest: missing {', '.join(lacking)}", file=sys.stderr)
        return 2
    reports = os.path.abspath(args.report_dir)
    os.makedirs(reports, exist_ok=True)
    junit = os.path.join(reports, "junit.xml")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(junit)  # a report left by an earlier run must not be read as this one's
    logs = {name: os.path.join(reports, f"{name}.log") for name in ("critest", "cricketd", "registry")}
    for path in logs.values():
        open(path, "w").close()

    signals = _Signals()
    started = time.monotonic()
    critest_seconds = 0.0
    code: int | None = None
    problems: list[str] = []
    try:
        with contextlib.ExitStack() as undo:
            def take_down(what: str, step: Callable[[], list[str] | None]) -> None:
                def run() -> None:
                    signals.taking_down = True
                    try:
                        problems.extend(f"{what}: {p}" for p in step() or ())
                    except Exception as e:  # one failed step must not keep the others from running
                        problems.append(f"{what}: {e!r}")
                undo.callback(run)

            tmp = tempfile.mkdtemp(prefix="cricket-critest-")
            take_down("temporary directory", lambda: _remove_tree(tmp))
            for d in ("registry", "images", "cni", "cricketd", "tmp"):
                os.makedirs(os.path.join(tmp, d))

            # Progress goes to stderr: stdout is the summary (and the specs that failed).
            print(f"critest: building the image stand-ins and starting {REGISTRY_BINARY} ...", file=sys.stderr)
            registry = Registry(os.path.join(tmp, "registry"), logs["registry"])
            take_down("registry", registry.stop)
            registry.start()
            pushed = registry.fill(os.path.join(tmp, "images"), DEB_CACHE)

            network = Network(os.path.join(tmp, "cni"))
            take_down("network", network.remove)
            network.write()

            cricketd = daemon.Cricketd(REPO, os.path.join(tmp, "cricketd"),
                                       daemon.config(registry.address, network.daemon_config()), logs["cricketd"])
            take_down("cricketd", cricketd.take_down)
            cricketd.start()

            print(f"critest: {pushed} image references on {registry.address}, bridge {network.bridge} "
                  f"({network.subnet}); running critest ...", file=sys.stderr)
            argv = [critest, f"--runtime-endpoint={cricketd.endpoint}", f"--image-endpoint={cricketd.endpoint}",
                    f"--ginkgo.junit-report={junit}", "--ginkgo.no-color", "--ginkgo.v", *critest_args]
            # Whatever critest makes in its temporary directory (pod log dirs, mount points) is
            # inside the run's, so it goes with it.
            env = {**os.environ, "TMPDIR": os.path.join(tmp, "tmp")}
            runs: list[subprocess.Popen] = []

            def stop_critest() -> None:
                for proc in runs:
                    processes.stop(proc)

            take_down("critest", stop_critest)
            critest_started = time.monotonic()
            code = run_critest(argv, logs["critest"], args.verbose, env, os.path.join(tmp, "tmp"), runs.append)
            critest_seconds = time.monotonic() - critest_started
    except Terminated as e:
        _print_problems(problems)
        print(f"critest: stopped by {e}; what the run made is taken down", file=sys.stderr)
        return 128 + signal.Signals[str(e)].value
    except Exception as e:
        print(f"critest: setting up failed: {e}", file=sys.stderr)
        _print_problems(problems)
        return 2
    wall = time.monotonic() - started
    return _judge(junit, code, reports, wall, critest_seconds, problems)


def _remove_tree(path: str) -> list[str]:
    problems = daemon.unmount_under(path)  # never walk into a mount: it may be a snapshot
    if not problems:
        shutil.rmtree(path, ignore_errors=True)
    return problems or ([f"{path} remains"] if os.path.exists(path) else [])


def _print_problems(problems: list[str]) -> None:
    for problem in problems:
        print(f"critest: clean-up: {problem}", file=sys.stderr)


def _judge(junit: str, code: int | None, reports: str, wall: float, critest_seconds: float,
           problems: list[str]) -> int:
    _print_problems(problems)
    version = critest_version()
    name = f"critest {version}".strip()
    if not os.path.exists(junit):
        print(f"{name}: no report (critest exited {code}); see {reports}/critest.log")
        return 1
    result = report.read(junit)
    for spec in result.unexpected:
        print(f"FAIL {spec}: {result.messages.get(spec, '')}")
    allowed = [spec for spec in result.failed if spec not in result.unexpected]
    allowed_text = "".join(f" (allowed: {spec.split('] ', 2)[-1]} — {result.allowed(spec)})" for spec in allowed)
    # critest exits non-zero for the allowed failure too; without any failure, it crashed.
    ok = not result.unexpected and not problems and (code == 0 or bool(result.failed))
    print(f"{name}: {'PASS' if ok else 'FAIL'}: {len(result.passed)} passed, {len(result.failed)} failed"
          f"{allowed_text}, {len(result.skipped)} skipped of {result.specs} specs; critest {critest_seconds:.1f} s, "
          f"wall {wall:.1f} s; report {junit}")
    return 0 if ok else 1
