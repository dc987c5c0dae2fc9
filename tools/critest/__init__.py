"""critest, the CRI conformance suite of kubernetes-sigs/cri-tools, against Cricket, offline.

    python -m tools.critest [--report-dir DIR] [--verbose] [critest args ...]

Builds stand-ins for the images critest pulls (fixture_images.py) and serves them from Debian's
docker-registry on a free loopback port; starts a cricketd in temporary directories whose
mirrors send docker.io, registry.k8s.io, k8s.gcr.io, gcr.io, quay.io and public.ecr.aws there,
on a private bridge network of Cricket's own CNI plugins; runs critest (from CRICKET_TOOLS_BIN,
default .cache/tools/bin) with a JUnit report in the report dir; prints a one-line summary. The
exit status is non-zero if any spec fails but the one that can not pass offline (report.py
names it and why). Everything it made is taken down afterwards, also after a failure or a
SIGTERM: pods (through the CRI), the daemon and the registry (by pid), the bridge and its
iptables rules, mounts, network namespace pins, cgroups and the temporary directories.
"""
