"""Security context and resources, observed from inside containers, under every runtime handler.

The differential tests run one container configuration under the built-in
executor and under runc and crun, and compare what the process sees.
"""
from __future__ import annotations

import json

import grpc
import pytest

from api.runtime.v1 import api_pb2 as pb
from cri import oci_spec, security
from cri.config import Config, runtime_handlers
from linux import cgroups
from tests.daemon import registry_config
from tests.pods import Pods, rpc_error, serving

# The OCI runtimes a daemon with no [runtimes] table offers here, beside the built-in executor.
HANDLERS = ["", *runtime_handlers(Config())]
DEFAULT_CAP_EFF = "00000000a80425fb"  # containerd's default set
CAP_NET_ADMIN = 12


@pytest.fixture(scope="module")
def daemon(registry, test_images, tmp_path_factory):
    images = [test_images[name].reference(registry) for name in ("busybox", "user-name")]
    with serving(str(tmp_path_factory.mktemp("cricketd")), registry_config(registry), images) as d:
        yield d


@pytest.fixture
def pods(daemon, tmp_path):
    p = Pods(daemon, str(tmp_path / "logs"))
    yield p
    p.remove_all()


@pytest.fixture
def busybox(registry, test_images):
    return test_images["busybox"].reference(registry)


def run_pod(pods: Pods, handler: str = "", **kw) -> str:
    config = pods.pod_config(**kw)
    return pods.rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config, runtime_handler=handler)).pod_sandbox_id


def status_lines(pods: Pods, cid: str, *keys: str) -> dict[str, str]:
    out = {}
    for line in pods.sh(cid, "cat /proc/self/status").splitlines():
        key, _, value = line.partition(":")
        if key in keys:
            out[key] = value.strip()
    return out


def ctx(**kw) -> pb.LinuxContainerSecurityContext:
    return pb.LinuxContainerSecurityContext(**kw)


def container_count(pods: Pods) -> int:
    return len(pods.rt.ListContainers(pb.ListContainersRequest()).containers)


# The files a container reads its limits from, and the host's pod and container cgroups, on this
# host's hierarchy: v1 controllers, or the unified tree (which `make test-cgroup2` runs these on).
V2 = cgroups.mode() == "v2"
MEMORY_LIMIT = "/sys/fs/cgroup/memory.max" if V2 else "/sys/fs/cgroup/memory/memory.limit_in_bytes"
CPU_QUOTA = "/sys/fs/cgroup/cpu.max" if V2 else "/sys/fs/cgroup/cpu/cpu.cfs_quota_us"
CPU_SHARES = "/sys/fs/cgroup/cpu.weight" if V2 else "/sys/fs/cgroup/cpu/cpu.shares"


def quota_seen(quota: int, period: int) -> str:
    return f"{quota} {period}" if V2 else str(quota)


def shares_seen(shares: int) -> str:
    return str(cgroups.shares_to_weight(shares)) if V2 else str(shares)


def host_cgroup_file(controller: str, name: str, *path: str) -> str:
    base = "/sys/fs/cgroup" if V2 else f"/sys/fs/cgroup/{controller}"
    return "/".join([base, "cricket", *path, name])


# -- capabilities, seccomp, no_new_privs, masks -------------------------------------------


@pytest.mark.parametrize("handler", HANDLERS)
def test_default_capabilities_and_adds_and_drops(pods, busybox, handler):
    pod = run_pod(pods, handler)
    plain = pods.run(pod, busybox, ["sleep", "1000"])
    assert status_lines(pods, plain, "CapEff")["CapEff"] == DEFAULT_CAP_EFF
    added = pods.run(
        pod,
        busybox,
        ["sleep", "1000"],
        security=ctx(capabilities=pb.Capability(add_capabilities=["NET_ADMIN"], drop_capabilities=["CHOWN"])),
    )
    eff = int(status_lines(pods, added, "CapEff")["CapEff"], 16)
    assert eff & (1 << CAP_NET_ADMIN) and not eff & 1
    assert pods.exec(added, ["busybox", "chown", "1:1", "/tmp"]).exit_code != 0
    none = pods.run(
        pod, busybox, ["sleep", "1000"], security=ctx(capabilities=pb.Capability(drop_capabilities=["ALL"]))
    )
    lines = status_lines(pods, none, "CapEff", "CapBnd", "CapPrm")
    assert lines == {"CapEff": "0" * 16, "CapBnd": "0" * 16, "CapPrm": "0" * 16}


def test_ambient_capabilities_reach_a_non_root_user(pods, busybox):
    pod = run_pod(pods)
    cid = pods.run(
        pod,
        busybox,
        ["sleep", "1000"],
        security=ctx(
            run_as_user=pb.Int64Value(value=1000),
            capabilities=pb.Capability(add_ambient_capabilities=["NET_BIND_SERVICE"]),
        ),
    )
    lines = status_lines(pods, cid, "CapAmb", "CapEff")
    assert int(lines["CapAmb"], 16) == 1 << 10 and int(lines["CapEff"], 16) & (1 << 10)


@pytest.mark.parametrize("handler", HANDLERS)
def test_seccomp_runtime_default_and_no_new_privs(pods, busybox, handler):
    pod = run_pod(pods, handler)
    confined = pods.run(
        pod,
        busybox,
        ["sleep", "1000"],
        security=ctx(no_new_privs=True, seccomp=pb.SecurityProfile(profile_type=pb.SecurityProfile.RuntimeDefault)),
    )
    assert status_lines(pods, confined, "Seccomp", "NoNewPrivs") == {"Seccomp": "2", "NoNewPrivs": "1"}
    # unshare(2) needs CAP_SYS_ADMIN under the default profile.
    assert pods.exec(confined, ["busybox", "unshare", "-U", "true"]).exit_code != 0
    free = pods.run(pod, busybox, ["sleep", "1000"])
    assert status_lines(pods, free, "Seccomp", "NoNewPrivs") == {"Seccomp": "0", "NoNewPrivs": "0"}


def test_seccomp_localhost_profile(pods, busybox, tmp_path):
    profile = tmp_path / "no-mkdir.json"
    profile.write_text(
        json.dumps(
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
            }
        )
    )
    pod = run_pod(pods)
    cid = pods.run(
        pod,
        busybox,
        ["sleep", "1000"],
        security=ctx(seccomp=pb.SecurityProfile(profile_type=pb.SecurityProfile.Localhost, localhost_ref=str(profile))),
    )
    out = pods.exec(cid, ["busybox", "mkdir", "/tmp/x"])
    assert out.exit_code != 0 and b"Operation not permitted" in out.stderr


@pytest.mark.parametrize("handler", HANDLERS)
def test_masked_and_read_only_paths_and_read_only_rootfs(pods, busybox, handler):
    pod = run_pod(pods, handler)
    cid = pods.run(pod, busybox, ["sleep", "1000"], security=ctx(readonly_rootfs=True))
    assert pods.exec(cid, ["cat", "/proc/timer_list"]).stdout == b""
    assert pods.exec(cid, ["sh", "-c", "echo 1 > /proc/sys/kernel/panic"]).exit_code != 0
    out = pods.exec(cid, ["sh", "-c", "echo x > /newfile"])
    assert out.exit_code != 0 and b"Read-only file system" in out.stderr
    assert pods.exec(cid, ["sh", "-c", "echo x > /dev/shm/ok"]).exit_code == 0  # a tmpfs of its own


def test_privileged_container_in_a_privileged_pod(pods, busybox):
    config = pods.pod_config()
    config.linux.security_context.privileged = True
    pod = pods.run_pod(config)
    cid = pods.run(pod, busybox, ["sleep", "1000"], security=ctx(privileged=True))
    own = next(line.split()[1] for line in open("/proc/self/status") if line.startswith("CapBnd:"))
    assert status_lines(pods, cid, "CapEff")["CapEff"] == own  # all the runtime has (here: no SYS_RESOURCE)
    assert len(pods.sh(cid, "timeout 1 cat /proc/timer_list | head -c 100")) > 0  # not masked
    mounts = pods.sh(cid, "cat /proc/self/mountinfo")
    assert any(line.split()[4] == "/sys" and line.split()[5].startswith("rw") for line in mounts.splitlines())
    assert pods.sh(cid, "ls /dev").count("\n") > 15  # the host's devices
    # In the same privileged pod, a container not asking for privilege does not get it.
    plain = pods.run(pod, busybox, ["sleep", "1000"])
    assert status_lines(pods, plain, "CapEff")["CapEff"] == DEFAULT_CAP_EFF


def test_supplemental_groups_policy_strict(pods, registry, test_images):
    pod = run_pod(pods)
    image = test_images["user-name"].reference(registry)
    merged = pods.run(pod, image, ["sleep", "1000"], security=ctx(supplemental_groups=[4242]))
    strict = pods.run(
        pod, image, ["sleep", "1000"], security=ctx(supplemental_groups=[4242], supplemental_groups_policy=pb.Strict)
    )
    # The image's /etc/group puts cricket in staff (50): Merge adds it, Strict does not.
    assert sorted(pods.sh(merged, "id -G").split()) == ["1000", "4242", "50"]
    assert sorted(pods.sh(strict, "id -G").split()) == ["1000", "4242"]
    assert list(pods.status(strict).status.user.linux.supplemental_groups) == [1000, 4242]


def test_status_advertises_the_supplemental_groups_policy(pods):
    # kubelet refuses a pod asking for Strict unless the runtime's Status says it honours it
    assert pods.rt.Status(pb.StatusRequest()).features.supplemental_groups_policy


def test_pid_target_shares_another_containers_pid_namespace(pods, busybox):
    pod = run_pod(pods)
    target = pods.run(pod, busybox, ["sleep", "4242"])
    config = pods.container_config(busybox, ["sleep", "1000"])
    config.linux.security_context.namespace_options.pid = pb.TARGET
    config.linux.security_context.namespace_options.target_id = target
    debugger = pods.create(pod, config)
    pods.start(debugger)
    assert "sleep 4242" in pods.sh(debugger, "cat /proc/1/cmdline | tr '\\0' ' '")


# -- sysctls ------------------------------------------------------------------------------


def test_pod_sysctls_land_in_the_pods_namespaces_only(pods, busybox):
    config = pods.pod_config()
    config.linux.sysctls["net.ipv4.ip_unprivileged_port_start"] = "77"
    config.linux.sysctls["kernel.shmmni"] = "1234"
    pod = pods.run_pod(config)
    cid = pods.run(pod, busybox, ["sleep", "1000"])
    assert pods.sh(cid, "cat /proc/sys/net/ipv4/ip_unprivileged_port_start").strip() == "77"
    assert pods.sh(cid, "cat /proc/sys/kernel/shmmni").strip() == "1234"
    assert open("/proc/sys/net/ipv4/ip_unprivileged_port_start").read().strip() != "77"
    assert open("/proc/sys/kernel/shmmni").read().strip() != "1234"


@pytest.mark.parametrize(
    "sysctl,network", [("vm.swappiness", pb.POD), ("net.ipv4.ip_forward", pb.NODE), ("net.ipv4.no_such_thing", pb.POD)]
)
def test_refused_sysctls_name_the_key(pods, sysctl, network):
    config = pods.pod_config(network=network)
    config.linux.sysctls[sysctl] = "1"
    err = rpc_error(pods.run_pod, config)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and sysctl in err.details()
    assert pods.rt.ListPodSandbox(pb.ListPodSandboxRequest()).items == []


# -- resources ------------------------------------------------------------------------------


def limited(**kw) -> pb.LinuxContainerConfig:
    return pb.LinuxContainerConfig(resources=pb.LinuxContainerResources(**kw))


@pytest.mark.parametrize("handler", HANDLERS)
def test_cpu_and_memory_limits_are_visible_in_the_cgroup(pods, busybox, handler):
    pod = run_pod(pods, handler)
    config = pods.container_config(busybox, ["sleep", "1000"])
    config.linux.resources.CopyFrom(
        pb.LinuxContainerResources(cpu_period=100000, cpu_quota=50000, cpu_shares=512, memory_limit_in_bytes=64 << 20)
    )
    cid = pods.create(pod, config)
    pods.start(cid)
    assert pods.sh(cid, f"cat {CPU_QUOTA}").strip() == quota_seen(50000, 100000)
    assert pods.sh(cid, f"cat {CPU_SHARES}").strip() == shares_seen(512)
    assert pods.sh(cid, f"cat {MEMORY_LIMIT}").strip() == str(64 << 20)


def test_update_resources_of_a_running_container(pods, busybox):
    pod = run_pod(pods)
    cid = pods.run(pod, busybox, ["sleep", "1000"])
    pods.rt.UpdateContainerResources(
        pb.UpdateContainerResourcesRequest(
            container_id=cid,
            linux=pb.LinuxContainerResources(memory_limit_in_bytes=96 << 20, cpu_quota=20000, cpu_period=100000),
        )
    )
    assert pods.sh(cid, f"cat {MEMORY_LIMIT}").strip() == str(96 << 20)
    assert pods.sh(cid, f"cat {CPU_QUOTA}").strip() == quota_seen(20000, 100000)
    status = pods.status(cid).status
    assert status.resources.linux.memory_limit_in_bytes == 96 << 20
    pods.rt.UpdatePodSandboxResources(
        pb.UpdatePodSandboxResourcesRequest(
            pod_sandbox_id=pod, resources=pb.LinuxContainerResources(memory_limit_in_bytes=512 << 20)
        )
    )
    pod_limit = host_cgroup_file("memory", "memory.max" if V2 else "memory.limit_in_bytes", pod)
    assert open(pod_limit).read().strip() == str(512 << 20)


@pytest.mark.parametrize("handler", HANDLERS)
def test_out_of_memory_is_reported_oom_killed(pods, busybox, handler):
    pod = run_pod(pods, handler)
    config = pods.container_config(busybox, ["sh", "-c", "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo $x"])
    config.linux.resources.memory_limit_in_bytes = 32 << 20
    cid = pods.create(pod, config)
    pods.start(cid)
    status = pods.wait_exited(cid, timeout=60)
    assert (status.exit_code, status.reason) == (137, "OOMKilled")


def test_pids_limit_contains_a_fork_loop(pods, busybox):
    pod = run_pod(pods)
    config = pods.container_config(busybox, ["sleep", "1000"])
    config.linux.resources.unified["pids.max"] = "20"
    cid = pods.create(pod, config)
    pods.start(cid)
    out = pods.exec(cid, ["sh", "-c", "for i in $(seq 60); do sleep 30 & done"])
    assert b"can't fork" in out.stderr
    # Read from the host: the container itself can fork nothing more.
    assert open(host_cgroup_file("pids", "pids.max", pod, cid)).read().strip() == "20"
    current = int(open(host_cgroup_file("pids", "pids.current", pod, cid)).read())
    assert 15 <= current <= 20


def test_negative_oom_score_adj_is_clamped_not_refused(pods, busybox):
    pod = run_pod(pods)
    config = pods.container_config(busybox, ["sleep", "1000"])
    config.linux.resources.oom_score_adj = -998
    cid = pods.create(pod, config)
    pods.start(cid)
    own = int(open("/proc/self/oom_score_adj").read())
    assert int(pods.sh(cid, "cat /proc/1/oom_score_adj")) >= min(own, 0)


# -- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change,field",
    [
        (lambda c: c.linux.security_context.capabilities.add_capabilities.append("FLY"), "FLY"),
        (lambda c: setattr(c.linux.resources, "cpu_shares", -5), "cpu_shares"),
        (lambda c: setattr(c.linux.resources, "cpu_period", 10), "cpu_period"),
        (lambda c: setattr(c.linux.resources, "cpuset_cpus", "0-999"), "cpuset_cpus"),
        (lambda c: setattr(c.linux.resources, "memory_limit_in_bytes", -1), "memory_limit_in_bytes"),
        (lambda c: setattr(c.linux.resources, "oom_score_adj", 5000), "oom_score_adj"),
        (lambda c: c.linux.resources.unified.update({"../memory.max": "1"}), "unified"),
        (
            lambda c: c.linux.security_context.seccomp.CopyFrom(
                pb.SecurityProfile(profile_type=pb.SecurityProfile.Localhost, localhost_ref="/no/such/profile.json")
            ),
            "/no/such/profile.json",
        ),
        (
            lambda c: c.linux.security_context.apparmor.CopyFrom(
                pb.SecurityProfile(profile_type=pb.SecurityProfile.RuntimeDefault)
            ),
            "AppArmor",
        ),
        (lambda c: setattr(c.linux.security_context, "privileged", True), "privileged"),
    ],
)
def test_bad_security_and_resources_are_refused_naming_the_field(pods, busybox, change, field):
    pod = run_pod(pods)
    config = pods.container_config(busybox, ["sleep", "1000"])
    change(config)
    before = container_count(pods)
    err = rpc_error(pods.create, pod, config)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and field in err.details()
    assert container_count(pods) == before


def test_an_selinux_label_on_a_host_without_selinux_runs_unlabelled(pods, busybox):
    """kubelet passes a pod's seLinuxOptions on whatever the node (Kubernetes' EmptyDir e2e specs
    set level s0): where SELinux is not enabled no runtime can apply one, and containerd and CRI-O
    run the container; so does Cricket. Where it is enabled, it is refused (tests/unit/test_lsm.py)."""
    if security.selinux_enabled():
        pytest.skip("this host enforces SELinux: the label is refused there")
    pod = run_pod(pods)
    config = pods.container_config(busybox, ["sleep", "1000"])
    config.linux.security_context.selinux_options.CopyFrom(pb.SELinuxOption(level="s0"))
    cid = pods.create(pod, config)
    pods.start(cid)
    assert pods.state(cid) == pb.CONTAINER_RUNNING


def test_seccomp_profile_that_does_not_parse(pods, busybox, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    pod = run_pod(pods)
    config = pods.container_config(
        busybox,
        ["true"],
        security=ctx(seccomp=pb.SecurityProfile(profile_type=pb.SecurityProfile.Localhost, localhost_ref=str(bad))),
    )
    err = rpc_error(pods.create, pod, config)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and str(bad) in err.details()


def test_unknown_runtime_handler(pods):
    err = rpc_error(run_pod, pods, "kata")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "kata" in err.details()


def test_status_lists_the_handlers(pods):
    handlers = {h.name for h in pods.rt.Status(pb.StatusRequest()).runtime_handlers}
    assert {"", "cricket", *HANDLERS} <= handlers


# -- the same container under every executor --------------------------------------------------

_PROBE = (
    "grep -E '^(Uid|Gid|Groups|CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status; "
    "echo hostname=$(hostname); "
    f"echo mem=$(cat {MEMORY_LIMIT}); "
    f"echo quota=$(cat {CPU_QUOTA}); "
    "echo pid1=$(cat /proc/1/cmdline | tr '\\0' ' '); "
    "busybox awk '{print \"mount\", $5, $6}' /proc/self/mountinfo | sort"
)

_CONFIGS = {
    "default": {},
    "user-and-groups": {
        "security": ctx(
            run_as_user=pb.Int64Value(value=1000), run_as_group=pb.Int64Value(value=100), supplemental_groups=[7, 8]
        )
    },
    "caps-seccomp-nnp": {
        "security": ctx(
            capabilities=pb.Capability(add_capabilities=["SYS_PTRACE"], drop_capabilities=["NET_RAW", "MKNOD"]),
            no_new_privs=True,
            seccomp=pb.SecurityProfile(profile_type=pb.SecurityProfile.RuntimeDefault),
        )
    },
    "readonly-limits": {
        "security": ctx(readonly_rootfs=True),
        "resources": pb.LinuxContainerResources(memory_limit_in_bytes=48 << 20, cpu_quota=30000, cpu_period=100000),
    },
}


def _observe(pods: Pods, handler: str, busybox: str, tmp_path, name: str) -> list[str]:
    settings = _CONFIGS[name]
    pod = run_pod(pods, handler, hostname="same-for-all")
    mount_dir = tmp_path / f"m-{handler or 'builtin'}"
    mount_dir.mkdir(exist_ok=True)
    config = pods.container_config(
        busybox,
        ["sleep", "1000"],
        security=settings.get("security"),
        mounts=[pb.Mount(container_path="/data", host_path=str(mount_dir), readonly=True)],
    )
    if "resources" in settings:
        config.linux.resources.CopyFrom(settings["resources"])
    cid = pods.create(pod, config)
    pods.start(cid)
    out = pods.exec(cid, ["sh", "-c", _PROBE])
    assert out.exit_code == 0, out.stderr
    pods.remove_pod(pod)
    return out.stdout.decode().splitlines()


def _without_options(lines: list[str], points: set[str]) -> list[str]:
    """The probe's lines, the mounts at `points` with their options left out."""
    out = []
    for line in lines:
        words = line.split()
        out.append(" ".join(words[:2]) if words[:1] == ["mount"] and words[1] in points else line)
    return out


@pytest.mark.skipif(len(HANDLERS) < 2, reason="needs an OCI runtime that runs here: apt-get install runc")
@pytest.mark.parametrize("name", sorted(_CONFIGS))
def test_what_the_process_sees_is_the_same_under_every_executor(pods, busybox, tmp_path, name):
    seen = {h or "builtin": _observe(pods, h, busybox, tmp_path, name) for h in HANDLERS}
    builtin = seen.pop("builtin")
    for handler, lines in seen.items():
        reference = builtin
        if handler == "crun":
            # crun masks a path with a read-only bind of /dev/null, and makes the read-only ones
            # read-only without nosuid, nodev and noexec (where runc and Cricket bind /dev/null
            # as it is and keep /proc's flags): the same paths hidden and read-only, other options.
            own_way = {*oci_spec.MASKED_PATHS, *oci_spec.READONLY_PATHS}
            lines, reference = _without_options(lines, own_way), _without_options(builtin, own_way)
        missing = sorted(set(reference) - set(lines))
        extra = sorted(set(lines) - set(reference))
        assert (missing, extra) == ([], []), f"only the built-in sees {missing}; only {handler} sees {extra}"
