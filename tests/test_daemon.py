"""cricketd as a process: socket, config, signals, and the RuntimeService basics."""
import json
import os
import signal
import stat
import subprocess
import sys

import grpc
import pytest

from api.runtime.v1 import api_pb2 as pb
from tests.daemon import Cricketd


@pytest.fixture
def daemon(tmp_path):
    d = Cricketd(str(tmp_path), 'log_level = "info"\n[image]\nmax_concurrent_downloads = 5\n').start()
    yield d
    d.stop()


def test_version(daemon):
    v = daemon.runtime.Version(pb.VersionRequest())
    assert (v.runtime_name, v.runtime_api_version) == ("cricket", "v1")
    assert v.runtime_version and v.version


def test_status_conditions_and_effective_config(daemon):
    s = daemon.runtime.Status(pb.StatusRequest(verbose=True))
    conditions = {c.type: c for c in s.status.conditions}
    assert conditions["RuntimeReady"].status is True
    assert conditions["NetworkReady"].status is True  # the test daemon's loopback-only network
    config = json.loads(s.info["config"])
    assert config["socket"] == daemon.socket
    assert config["image"]["max_concurrent_downloads"] == 5  # from the file
    assert config["log_level"] == "debug"  # from the flag, over the file
    assert config["cni"]["conf_dir"] == os.path.join(daemon.workdir, "net.d")
    assert daemon.runtime.Status(pb.StatusRequest()).info == {}


def test_runtime_config_says_cgroupfs(daemon):
    r = daemon.runtime.RuntimeConfig(pb.RuntimeConfigRequest())
    assert r.linux.cgroup_driver == pb.CGROUPFS


def test_update_runtime_config_records_the_pod_cidrs_across_a_restart(daemon):
    def status():
        s = daemon.runtime.Status(pb.StatusRequest(verbose=True))
        return {c.type: c.status for c in s.status.conditions}, json.loads(s.info["podCIDRs"])

    assert status() == ({"RuntimeReady": True, "NetworkReady": True}, [])
    update = pb.UpdateRuntimeConfigRequest(runtime_config=pb.RuntimeConfig(
        network_config=pb.NetworkConfig(pod_cidr="10.244.7.1/24,fd00:10:244:7::/64")))
    daemon.runtime.UpdateRuntimeConfig(update)
    # The host bits dropped, as Go's ParseCIDR does; the network as ready as before.
    want = ({"RuntimeReady": True, "NetworkReady": True}, ["10.244.7.0/24", "fd00:10:244:7::/64"])
    assert status() == want
    # An empty one (a node without CIDRs yet) changes nothing; a bad one is refused naming it.
    daemon.runtime.UpdateRuntimeConfig(pb.UpdateRuntimeConfigRequest())
    with pytest.raises(grpc.RpcError) as e:
        daemon.runtime.UpdateRuntimeConfig(pb.UpdateRuntimeConfigRequest(runtime_config=pb.RuntimeConfig(
            network_config=pb.NetworkConfig(pod_cidr="10.244.7.0"))))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "'10.244.7.0' is not a CIDR" in e.value.details()
    daemon.restart(signal.SIGKILL)  # kubelet sends them again only when they change
    assert status() == want


def test_every_call_is_served_even_the_newest(daemon):
    # CheckpointContainer checks its request before it asks whether CRIU works here.
    with pytest.raises(grpc.RpcError) as e:
        daemon.runtime.CheckpointContainer(pb.CheckpointContainerRequest())
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no container ID given" in e.value.details()
    # Nothing running: the stream ends with no page, and no error.
    assert list(daemon.runtime.StreamPodSandboxMetrics(pb.StreamPodSandboxMetricsRequest())) == []


def test_socket_is_0660_and_dirs_exist(daemon):
    mode = os.stat(daemon.socket).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o660
    assert os.path.isdir(daemon.root) and os.path.isdir(daemon.state)


def test_second_instance_on_the_same_socket_refuses(daemon, tmp_path):
    os.makedirs(tmp_path / "other")
    other = Cricketd(str(tmp_path / "other"))
    cmd = other.command()
    cmd[cmd.index("--socket") + 1] = daemon.socket
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert f"another cricketd (pid {daemon.proc.pid}) is serving {daemon.socket}" in out.stderr
    daemon.runtime.Version(pb.VersionRequest())  # the first one still serves


def test_sigterm_stops_cleanly_and_removes_the_socket(daemon):
    assert daemon.stop(signal.SIGTERM) == 0
    assert not os.path.exists(daemon.socket)
    assert "stopped" in daemon.log()


def test_restart_after_sigkill_serves_again(daemon):
    pid = daemon.proc.pid
    daemon.restart(signal.SIGKILL)  # leaves a stale socket and lock file behind
    assert daemon.proc.pid != pid
    daemon.runtime.Version(pb.VersionRequest())


def test_bad_config_is_refused_with_the_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[image]\npull_retries = -1\n")
    out = subprocess.run(
        [sys.executable, "-m", "cri.main", "--config", str(bad), "--socket", str(tmp_path / "s.sock")],
        capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 2
    assert "image.pull_retries: must be positive" in out.stderr
