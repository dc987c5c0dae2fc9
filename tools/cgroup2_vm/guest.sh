#!/bin/bash
# One run inside the cgroup v2-only guest (tools/cgroup2_vm): copied into the run share by the
# host each run, started by the image's cricket-cgroup2.service. Writes to the run share:
# status (the exit code: pytest's, or 90-93 when the run could not get as far), timings,
# junit.xml. Its output is the share's guest.log, which the host follows. The checkout and the
# Python packages come on two disks the host made (labels cricket-src and cricket-deps).
set -u
RUN=/mnt/run
export HOME=/root LANG=C.UTF-8 PYTHONUNBUFFERED=1
now() { cut -d' ' -f1 /proc/uptime; }
timing() { echo "$1=$2" >> "$RUN/timings"; }
finish() { echo "$1" > "$RUN/status"; exit "$1"; }
: > "$RUN/timings"
timing booted "$(now)"
echo "cgroup2-vm: guest up after $(now) s; kernel $(uname -r)"
echo "cgroup2-vm: command line: $(cat /proc/cmdline)"

# -- a cgroup v2-only host ----------------------------------------------------------------------
fstype=$(stat -f -c %T /sys/fs/cgroup)
v1_mounts=$(awk '{ for (i = 1; i <= NF; i++) if ($i == "-") { if ($(i+1) == "cgroup") print $5; break } }' \
    /proc/self/mountinfo)
v1_bound=$(awk 'NR > 1 && $2 != 0 { print $1 }' /proc/cgroups)
echo "cgroup2-vm: /sys/fs/cgroup is $fstype; controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
if [ "$fstype" != cgroup2fs ] || [ -n "$v1_mounts" ] || [ -n "$v1_bound" ]; then
    echo "cgroup2-vm: FAIL: not a cgroup v2-only host (v1 mounts: ${v1_mounts:-none}; controllers on v1: ${v1_bound:-none})"
    finish 90
fi
if ! grep -qw cgroup_no_v1=all /proc/cmdline; then
    echo "cgroup2-vm: FAIL: the kernel was not booted with cgroup_no_v1=all"
    finish 90
fi
echo "cgroup2-vm: no cgroup v1 hierarchy is mounted and no controller is bound to one"

# -- the checkout and the packages: two disks the host made for this run ------------------------
mkdir -p /srv/cricket /opt/cricket-deps
if ! mount LABEL=cricket-src /srv/cricket || ! mount -o ro LABEL=cricket-deps /opt/cricket-deps; then
    echo "cgroup2-vm: FAIL: the checkout's or the packages' disk did not mount"
    finish 91
fi
# A venv of the guest's own Python whose packages are those on the disk (site.addsitedir, so
# that their .pth files count), with the checkout on the path of every interpreter of it (the
# daemon, the zygote, CNI launchers), as the editable install on the host does.
if ! python3 -m venv --without-pip /opt/cricket-venv; then
    echo "cgroup2-vm: FAIL: making the venv"
    finish 92
fi
site=$(/opt/cricket-venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "import site; site.addsitedir('/opt/cricket-deps')" > "$site/cricket-deps.pth"
echo /srv/cricket > "$site/cricket.pth"
if ! /opt/cricket-venv/bin/python -c 'import grpc, pytest, api.runtime.v1.api_pb2'; then
    echo "cgroup2-vm: FAIL: the venv does not import the packages and the checkout"
    finish 92
fi
timing venv "$(now)"
echo "cgroup2-vm: venv ready after $(now) s: $(/opt/cricket-venv/bin/python -V)"

# -- the tests ------------------------------------------------------------------------------------
cd /srv/cricket || finish 93
mapfile -t args < "$RUN/pytest-args"
CRICKET_TEST_SLOWDOWN=$(cat "$RUN/slowdown")
export CRICKET_TEST_SLOWDOWN
echo "cgroup2-vm: python -m pytest ${args[*]}"
/opt/cricket-venv/bin/python -m pytest -p no:cacheprovider -p tools.cgroup2_vm.slow_guest \
    --junitxml="$RUN/junit.xml" "${args[@]}"
rc=$?
timing tested "$(now)"
finish "$rc"
