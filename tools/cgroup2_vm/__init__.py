"""`python -m tools.cgroup2_vm`: the cgroup, device, resource and OOM tests on a cgroup v2-only host.

This machine is a hybrid host (v1 controllers under /sys/fs/cgroup, cgroup2 at
/sys/fs/cgroup/unified), so Cricket runs here in v1 mode. To prove its v2 code on a host
with nothing but cgroup2, this tool

- builds once, into .cache/cgroup2-vm/image/, a Debian bookworm disk image of the project's
  own: debootstrap from the apt mirror this machine uses, Debian's kernel, and the Debian
  packages the tests need (image.py). A stamp with the hash of the package lists, the mirror
  and the builder's source says when it must be built again;
- builds here the wheels of the packages the tests need, at the versions of this checkout's
  .venv, and installs them from those wheels alone onto a disk of their own (wheels.py): the
  guest has no network;
- copies the checkout at this moment onto a disk of the run (disks.py), so an edit made here
  while the guest runs does not land mid-run;
- boots the image under qemu-system-x86_64 (KVM where it can run a stock kernel, else TCG)
  with `cgroup_no_v1=all systemd.unified_cgroup_hierarchy=1`, no network device, the two
  disks, and a run directory shared read-write over 9p; the serial console goes to a log
  (vm.py);
- in the guest (guest.sh, started by systemd): checks that /sys/fs/cgroup is cgroup2 and that
  no v1 hierarchy is mounted nor any controller bound to one, makes a venv over the packages'
  disk, runs pytest on the selected tests, and powers off. The host follows the guest's output
  live, kills the VM (by its pid) if it outlives the timeout, prints the pytest summary and the
  timings, and exits with pytest's status.

The image is opened with snapshot=on: a run writes nothing to it, and every run starts from the
same clean system. Under TCG the tests' own time limits are stretched (slow_guest.py).
"""
