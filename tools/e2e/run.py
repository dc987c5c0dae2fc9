"""Kubernetes' own e2e specs against the one-node cluster (tools/cluster) on Cricket or on
containerd: the cluster brought up, the e2e images pushed into its registry, `e2e.test` (built
from the pinned `k8s.io/kubernetes/test/e2e`) run with a focus and a skip, its JUnit report read
into one summary line, the cluster taken down."""
from __future__ import annotations

import os
import subprocess
import tempfile
import time

from tools.cluster import cluster
from tools.cluster import settings as s
from tools.critest import report
from tools.e2e import images

# The node-level conformance selection: what a runtime on one node must pass.
NODE_CONFORMANCE = r"\[NodeConformance\]"
# Never run: specs that break the node on purpose, that are known to flake, or that test
# features a cluster must turn on (alpha, beta off by default, or named features).
SKIP = r"\[Disruptive\]|\[Flaky\]|\[Alpha\]|\[Feature:[^\]]+\]|\[FeatureGate:[^\]]+\]"
# Specs the stand-in images fail on every runtime, left out of the smoke selection CI runs (the
# whole selection runs them, and the README names them): the busybox stand-in's shell (Debian's
# busybox 1.35) drops variables whose names are no shell identifiers (`data-1`) before `env` runs.
STAND_IN_FAILURES = r"(ConfigMap|Secrets) should be consumable via the environment"
SMOKE_SKIP = SKIP + r"|\[Slow\]|" + STAND_IN_FAILURES
# The smoke selection CI can afford: pods, probes, exec, logs, volumes, security context (no
# [Slow] specs: those wait minutes on purpose).
_SMOKE_AREAS = (r"(Pods should|Container Runtime blackbox|Security Context When creating|Secrets should|"
                r"ConfigMap should be consumable via|Variable Expansion|InitContainer|Kubelet when scheduling|"
                r"Container Lifecycle Hook|Downward API volume should provide podname|"
                r"EmptyDir volumes should support \(root,0644,tmpfs\)|"
                r"Probing container should be restarted with an exec)")
# The tag stands wherever the spec's text puts it, before or after the area's words.
SMOKE = rf"{_SMOKE_AREAS}.*\[NodeConformance\]|\[NodeConformance\].*{_SMOKE_AREAS}"


def run(runtime: str, focus: str, skip: str, report_dir: str, procs: int = 1,
        keep_cluster: bool = False) -> tuple[report.Result, float]:
    """Bring the cluster up on `runtime`, run the specs `focus` selects less `skip`'s, and read
    the report ginkgo writes into `report_dir`; it and the seconds the specs took."""
    os.makedirs(report_dir, exist_ok=True)
    junit = os.path.join(report_dir, "junit_01.xml")
    if os.path.exists(junit):
        os.unlink(junit)
    cluster.up(runtime)
    try:
        with tempfile.TemporaryDirectory(prefix="e2e-images-") as work:
            images.build_and_push(work)
        # Through ginkgo's command, as Kubernetes' hack/ginkgo-e2e.sh runs it: `procs` processes
        # share the specs, and those marked Serial run alone at the end.
        args = [
            s.binary("ginkgo"), f"--procs={procs}", f"--focus={focus}", f"--skip={skip}", "--no-color", "-v",
            "--timeout=4h", s.binary("e2e.test"), "--",
            f"--kubeconfig={s.KUBECONFIG}", f"--kubectl-path={s.binary('kubectl')}", "--provider=skeleton",
            f"--report-dir={report_dir}", "--node-os-distro=debian", "--dump-logs-on-failure=false",
            f"--e2e-output-dir={report_dir}",
        ]
        started = time.monotonic()
        with open(os.path.join(report_dir, "e2e.log"), "w") as log:
            subprocess.run(args, stdout=log, stderr=subprocess.STDOUT, check=False,
                           env={**os.environ, "KUBECONFIG": s.KUBECONFIG})
        took = time.monotonic() - started
    finally:
        if not keep_cluster:
            for problem in cluster.down():
                print(f"e2e: cluster-down: {problem}")
    if not os.path.exists(junit):
        raise RuntimeError(f"e2e.test wrote no report: see {os.path.join(report_dir, 'e2e.log')}")
    return report.read(junit), took
