"""Reading critest's JUnit report: what passed, failed and was skipped, and whether the run
passes — every spec but the ones listed here, each with the reason it can not pass."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

# A spec that may fail, by a phrase of its name, and why. Nothing else may.
ALLOWED_FAILURES = {
    "public image with digest should be pulled and removed":
        "it pulls gcr.io/k8s-staging-cri-tools/test-image-digest@sha256:9700f9a2..., which no offline "
        "registry can serve: an image rebuilt here never has that digest",
}
# Ginkgo's statuses of a spec that neither ran to a failure nor passed.
_NOT_RUN = ("skipped", "pending", "disabled")


@dataclass
class Result:
    passed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    messages: dict[str, str] = field(default_factory=dict)  # a failure's first line, by spec

    @property
    def specs(self) -> int:
        """Specs, as ginkgo counts them: a failed suite node ([BeforeSuite] ...) is none."""
        return len(self.passed) + len(self.skipped) + sum(name.startswith("[It]") for name in self.failed)

    def allowed(self, name: str) -> str | None:
        """Why `name` may fail, or None."""
        return next((why for phrase, why in ALLOWED_FAILURES.items() if phrase in name), None)

    @property
    def unexpected(self) -> list[str]:
        return [name for name in self.failed if self.allowed(name) is None]


def read(path: str) -> Result:
    """A report as ginkgo writes it: a testcase per spec, and per suite node ([BeforeSuite] and
    the like), which counts only when it fails."""
    out = Result()
    for case in ET.parse(path).getroot().iter("testcase"):
        name = case.get("name", "")
        status = case.get("status", "")
        is_spec = name.startswith("[It]")
        if status == "passed":
            if is_spec:
                out.passed.append(name)
        elif status in _NOT_RUN:
            if is_spec:
                out.skipped.append(name)
        else:  # failed, panicked, timedout, interrupted, aborted: all failures
            out.failed.append(name)
            failure = case.find("failure")
            message = (failure.get("message", "") if failure is not None else "") or status
            out.messages[name] = message.strip().splitlines()[0]
    return out
