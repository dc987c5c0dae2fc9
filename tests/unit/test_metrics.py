"""The CRI metrics (ListMetricDescriptors, ListPodSandboxMetrics) on plain values: cadvisor's
descriptor set, one series of each for every container, and the parsers under them."""
import pytest

from api.runtime.v1 import api_pb2 as pb
from cri.stats import NetCounters, mount_source, parse_net_dev, parse_soft_limits
from cri.verbs import sandbox_metrics as sm
from linux.cgroups import CgroupMetrics, CgroupStats, IoCounters, parse_v1_blkio, parse_v2_io_stat

# What critest v1.37 expects of a runtime (its expectedMetricDescriptorNames less those it
# lists as not yet served by any runtime: hugetlb, pressure): cadvisor's container metrics.
EXPECTED = """
container_blkio_device_usage_total container_cpu_cfs_periods_total container_cpu_cfs_throttled_periods_total
container_cpu_cfs_throttled_seconds_total container_cpu_system_seconds_total container_cpu_usage_seconds_total
container_cpu_user_seconds_total container_file_descriptors container_fs_inodes_free container_fs_inodes_total
container_fs_limit_bytes container_fs_reads_bytes_total container_fs_reads_total container_fs_usage_bytes
container_fs_writes_bytes_total container_fs_writes_total container_last_seen container_memory_cache
container_memory_failcnt container_memory_failures_total container_memory_kernel_usage container_memory_mapped_file
container_memory_max_usage_bytes container_memory_rss container_memory_swap container_memory_usage_bytes
container_memory_working_set_bytes container_network_receive_bytes_total container_network_receive_errors_total
container_network_receive_packets_dropped_total container_network_receive_packets_total
container_network_transmit_bytes_total container_network_transmit_errors_total
container_network_transmit_packets_dropped_total container_network_transmit_packets_total
container_oom_events_total container_processes container_sockets container_spec_cpu_period container_spec_cpu_quota
container_spec_cpu_shares container_spec_memory_limit_bytes container_spec_memory_reservation_limit_bytes
container_spec_memory_swap_limit_bytes container_start_time_seconds container_threads container_threads_max
container_ulimits_soft
""".split()


def descriptors() -> dict[str, pb.MetricDescriptor]:
    return {d.name: d for d in (d.to_cri() for d in sm.DESCRIPTORS)}


def test_the_descriptors_are_cadvisors_with_help_and_label_keys():
    served = descriptors()
    assert len(served) == len(sm.DESCRIPTORS)  # no name twice
    assert set(EXPECTED) <= set(served), sorted(set(EXPECTED) - set(served))
    assert all(d.help and d.label_keys[:2] == ["id", "name"] for d in served.values())
    assert served["container_blkio_device_usage_total"].label_keys == ["id", "name", "device", "major", "minor",
                                                                       "operation"]
    assert served["container_memory_failures_total"].label_keys == ["id", "name", "failure_type", "scope"]
    assert served["container_network_receive_packets_total"].label_keys == ["id", "name", "interface"]


def test_network_descriptors_follow_the_counters_order():
    # sandbox_metrics pairs each pod counter with its descriptor by position
    assert tuple(sm._NETWORK) == NetCounters._fields


def series_by_name(sample: sm.Sample, spec: dict | None = None) -> dict[str, list[tuple[list[str], int]]]:
    out: dict[str, list[tuple[list[str], int]]] = {}
    for d, extra, value in sm.container_series(sample, spec or {}, 5 * 10**9, 7 * 10**9):
        out.setdefault(d.name, []).append((extra, value))
    return out


def test_a_container_that_reads_as_nothing_still_has_every_series():
    # A figure the kernel keeps no count of is a zero, not a missing series: kubelet and critest
    # look for every descriptor in every running container.
    served = descriptors()
    got = series_by_name(sm.Sample())
    assert set(got) == {d.name for d in sm.CONTAINER_DESCRIPTORS}
    for name, series in got.items():
        assert all(2 + len(extra) == len(served[name].label_keys) for extra, _ in series), name
    assert got["container_start_time_seconds"] == [([], 5)] and got["container_last_seen"] == [([], 7)]
    assert sorted(extra for extra, _ in got["container_memory_failures_total"]) == [
        ["pgfault", "container"], ["pgfault", "hierarchy"], ["pgmajfault", "container"], ["pgmajfault", "hierarchy"]]


def test_figures_are_converted_as_cadvisor_reports_them():
    sample = sm.Sample(
        stats=CgroupStats(cpu_usage_ns=3_900_000_000, pids_current=3, memory_usage=1000),
        cgroup=CgroupMetrics(cpu_user_ns=2_000_000_000, cfs_throttled_ns=1_500_000_000, threads=4, threads_max=0,
                             pgfault=10, hierarchy_pgfault=12,
                             io={"8:0": IoCounters(read_bytes=4096, write_bytes=512, reads=2, writes=1)}),
        fds=9, sockets=2, open_files_limit=1024, fs=sm.FsUsage("/dev/vda1", 8192, 10**9, 100, 40),
    )
    spec = {"linux": {"resources": {"cpu": {"period": 100000, "quota": 20000, "shares": 1024},
                                    "memory": {"limit": 64 << 20, "swap": -1}}}}
    got = series_by_name(sample, spec)

    def value(name, extra=()):
        return {tuple(e): v for e, v in got[name]}[tuple(extra)]

    assert value("container_cpu_usage_seconds_total") == 3 and value("container_cpu_user_seconds_total") == 2
    assert value("container_cpu_cfs_throttled_seconds_total") == 1
    assert value("container_processes") == 3 and value("container_threads") == 4
    assert value("container_threads_max") == 0  # no limit
    assert value("container_memory_failures_total", ["pgfault", "hierarchy"]) == 12
    assert value("container_file_descriptors") == 9 and value("container_sockets") == 2
    assert value("container_ulimits_soft", ["max_open_files"]) == 1024
    assert value("container_spec_cpu_quota") == 20000 and value("container_spec_cpu_shares") == 1024
    assert value("container_spec_memory_limit_bytes") == 64 << 20
    assert value("container_spec_memory_swap_limit_bytes") == 0  # -1 is no limit
    assert value("container_fs_usage_bytes", ["/dev/vda1"]) == 8192
    assert value("container_fs_inodes_free", ["/dev/vda1"]) == 40
    [(device_label, _)] = got["container_fs_reads_bytes_total"]
    assert value("container_fs_reads_bytes_total", device_label) == 4096
    assert value("container_fs_writes_total", device_label) == 1
    assert value("container_blkio_device_usage_total", [*device_label, "8", "0", "Read"]) == 4096
    assert value("container_blkio_device_usage_total", [*device_label, "8", "0", "Write"]) == 512


def test_metric_values_are_never_negative():
    m = sm._metric(sm._ULIMITS, ["id", "name", "max_open_files"], -1, 1)
    assert m.value.value == 0 and m.metric_type == pb.GAUGE


def test_v2_io_stat():
    text = "8:0 rbytes=90112 wbytes=4096 rios=12 wios=1 dbytes=0 dios=0\n253:1 rbytes=1 wbytes=2 rios=3 wios=4\n"
    assert parse_v2_io_stat(text) == {"8:0": IoCounters(90112, 4096, 12, 1), "253:1": IoCounters(1, 2, 3, 4)}
    assert parse_v2_io_stat("") == {}


def test_v1_blkio():
    service_bytes = "8:0 Read 4096\n8:0 Write 512\n8:0 Sync 0\n8:0 Async 4608\n8:0 Total 4608\nTotal 4608\n"
    serviced = "8:0 Read 2\n8:0 Write 1\n8:0 Total 3\nTotal 3\n"
    assert parse_v1_blkio(service_bytes, serviced) == {"8:0": IoCounters(4096, 512, 2, 1)}
    assert parse_v1_blkio("Total 0\n", "Total 0\n") == {}


def test_net_dev_counters():
    text = (
        "Inter-|   Receive                                                |  Transmit\n"
        " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls "
        "carrier compressed\n"
        "    lo:     100       2    0    0    0     0          0         0      100       2    0    0    0     0 "
        "      0          0\n"
        "  eth0:    5000      40    1    3    0     0          0         0     2000      20    2    4    0     0 "
        "      0          0\n"
    )
    assert parse_net_dev(text)["eth0"] == NetCounters(5000, 40, 1, 3, 2000, 20, 2, 4)


def test_soft_limits():
    text = (
        "Limit                     Soft Limit           Hard Limit           Units     \n"
        "Max cpu time              unlimited            unlimited            seconds   \n"
        "Max open files            1024                 1048576              files     \n"
    )
    assert parse_soft_limits(text) == {"max_cpu_time": -1, "max_open_files": 1024}


@pytest.mark.parametrize("device, want", [("0:45", "overlay"), ("254:1", "/dev/vda1"), ("9:9", None)])
def test_mount_source(device, want):
    mountinfo = (
        "22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n"
        "60 22 0:45 / /var/lib/x/rootfs rw,relatime - overlay overlay rw,lowerdir=/a:/b\n"
    )
    assert mount_source(mountinfo, device) == want
