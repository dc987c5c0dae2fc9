"""The critest runner's pure parts (tools/critest): the daemon config it writes, and how it
judges critest's JUnit report."""
from cri.config import load
from tools.critest import daemon, report

JUNIT = """<?xml version="1.0" encoding="UTF-8"?>
<testsuites tests="5" failures="{failures}">
  <testsuite name="CRI validation" tests="5">
    <testcase name="[BeforeSuite]" classname="CRI validation" status="passed" time="0"></testcase>
    <testcase name="[It] [k8s.io] Image Manager public image with digest should be pulled and removed [Conformance]"
              classname="CRI validation" status="failed" time="1">
      <failure message="failed to pull image&#xA;Unexpected error" type="failed">...</failure>
    </testcase>
    <testcase name="[It] [k8s.io] Container runtime should support basic operations" classname="CRI validation"
              status="{status}" time="1">{failure}</testcase>
    <testcase name="[It] [k8s.io] AppArmor runtime should support apparmor field" classname="CRI validation"
              status="skipped" time="0"><skipped message="skipped - AppArmor is disabled on this host"/></testcase>
    <testcase name="[AfterSuite]" classname="CRI validation" status="{after}" time="0"></testcase>
  </testsuite>
</testsuites>
"""


def write(tmp_path, status="passed", after="passed"):
    failure = '<failure message="container did not start" type="failed"/>' if status == "failed" else ""
    path = tmp_path / "junit.xml"
    path.write_text(JUNIT.format(failures=1, status=status, failure=failure, after=after))
    return str(path)


def test_only_the_digest_pinned_spec_may_fail(tmp_path):
    result = report.read(write(tmp_path))
    assert (len(result.passed), len(result.failed), len(result.skipped), result.specs) == (1, 1, 1, 3)
    assert result.unexpected == []
    assert "no offline registry can serve" in (result.allowed(result.failed[0]) or "")


def test_any_other_failure_is_unexpected_with_its_message(tmp_path):
    result = report.read(write(tmp_path, status="failed"))
    [spec] = result.unexpected
    assert "basic operations" in spec and result.messages[spec] == "container did not start"


def test_a_failed_suite_node_is_a_failure_though_no_spec(tmp_path):
    result = report.read(write(tmp_path, after="failed"))
    assert result.unexpected == ["[AfterSuite]"] and result.specs == 3


def test_the_daemon_config_mirrors_every_registry_critest_pulls_from(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(daemon.config("127.0.0.1:5999", '[cni]\nconf_dir = "/x/net.d"\nbin_dirs = ["/x/bin"]\n'))
    cfg = load(str(path))
    for host in ("docker.io", "registry.k8s.io", "k8s.gcr.io", "gcr.io", "quay.io", "public.ecr.aws"):
        assert cfg.registries[host].mirrors == ["http://127.0.0.1:5999"]
    assert cfg.registries["127.0.0.1:5999"].insecure
    assert cfg.cni.conf_dir == "/x/net.d"
