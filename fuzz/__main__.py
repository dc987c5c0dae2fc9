"""python -m fuzz [--seconds N] [--work DIR] [--timeout S] [target ...]: each target for N seconds
in a subprocess of its own, one line of executions and findings each; exit status 1 if any
target found something (or could not run)."""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from fuzz import ROOT_TARGETS, TARGETS
from fuzz.harness import CORPUS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DICTS = os.path.join(ROOT, "fuzz", "dicts")
_ARTIFACT = re.compile(r"^(crash|timeout|oom|leak|slow-unit)-")
_EXECUTED = re.compile(r"stat::number_of_executed_units:\s*(\d+)")
_STATUS = re.compile(r"^#(\d+)\s", re.M)


def _executions(output: str) -> int:
    found = _EXECUTED.findall(output)
    if found:
        return int(found[-1])
    status = _STATUS.findall(output)
    return int(status[-1]) if status else 0


def run_target(target: str, seconds: int, work: str, timeout: int, rss_limit_mb: int) -> tuple[str, bool]:
    """Fuzz one target; its report line and whether it found something."""
    if target in ROOT_TARGETS and os.geteuid() != 0:
        return f"{target}: skipped: it unpacks as root (device nodes, owners, trusted.* xattrs); run as root", False
    corpus = os.path.join(work, target, "corpus")
    artifacts = os.path.join(work, target, "artifacts")
    os.makedirs(corpus, exist_ok=True)
    os.makedirs(artifacts, exist_ok=True)
    before = set(os.listdir(artifacts))
    log_path = os.path.join(work, target, "fuzz.log")
    command = [sys.executable, "-m", f"fuzz.{target}", f"-max_total_time={seconds}", f"-timeout={timeout}",
               f"-rss_limit_mb={rss_limit_mb}", f"-artifact_prefix={artifacts}/", "-print_final_stats=1"]
    dictionary = os.path.join(DICTS, f"{target}.dict")
    if os.path.exists(dictionary):  # the words of a JSON or TOML format, which mutations rarely spell
        command.append(f"-dict={dictionary}")
    command += [corpus, os.path.join(CORPUS, target)]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    scratch = tempfile.mkdtemp(prefix=f"cricket-fuzz-{target}-", dir="/dev/shm" if os.access("/dev/shm", os.W_OK)
                               else None)
    env["CRICKET_FUZZ_SCRATCH"] = scratch
    start = time.monotonic()
    hung = False
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        try:
            # libFuzzer stops itself after max_total_time; past that and the per-input timeout, it is stuck.
            proc.wait(seconds + timeout + 120)
        except subprocess.TimeoutExpired:
            hung = True
            proc.kill()
            proc.wait()
    shutil.rmtree(scratch, ignore_errors=True)
    elapsed = time.monotonic() - start
    with open(log_path, errors="replace") as f:
        output = f.read()
    found = sorted(name for name in set(os.listdir(artifacts)) - before if _ARTIFACT.match(name))
    findings = [os.path.join(artifacts, name) for name in found]
    problem = ""
    if hung:
        problem = f"; did not stop after {seconds + timeout + 120}s and was killed"
    elif proc.returncode and not findings:
        problem = f"; exited with status {proc.returncode} without an artifact (see {log_path})"
    line = (f"{target}: {_executions(output)} executions in {elapsed:.0f}s, {len(findings)} finding(s)"
            + "".join(f"\n    {path}" for path in findings) + problem)
    return line, bool(findings or problem)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__)
    parser.add_argument("targets", nargs="*", metavar="target", help=f"of {', '.join(TARGETS)} (default: all)")
    parser.add_argument("--seconds", type=int, default=60, help="how long each target runs (default 60)")
    parser.add_argument("--work", default=os.path.join(ROOT, ".cache", "fuzz"),
                        help="corpus and artifacts of each target (default .cache/fuzz)")
    parser.add_argument("--timeout", type=int, default=20,
                        help="seconds one input may take before it counts as a hang (default 20)")
    parser.add_argument("--rss-limit-mb", type=int, default=2048, help="memory bound of a target (default 2048)")
    args = parser.parse_args(argv)
    unknown = [t for t in args.targets if t not in TARGETS]
    if unknown:
        parser.error(f"unknown target(s) {', '.join(unknown)}; the targets are {', '.join(TARGETS)}")
    failed = False
    for target in args.targets or TARGETS:
        line, bad = run_target(target, args.seconds, os.path.abspath(args.work), args.timeout, args.rss_limit_mb)
        print(line, flush=True)
        failed |= bad
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
