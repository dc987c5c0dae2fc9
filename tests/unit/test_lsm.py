"""AppArmor and SELinux requests as cri/security.py's check_lsm judges them, on a host with the
LSM and without it (the kernel here has neither, so the host with it is stood in for)."""
from __future__ import annotations

import pytest

from api.runtime.v1 import api_pb2 as pb
from cri import security
from cri.errors import InvalidArgument

LABEL = pb.SELinuxOption(user="system_u", role="system_r", type="container_t", level="s0:c1,c2")


def context(**kw) -> pb.LinuxContainerSecurityContext:
    return pb.LinuxContainerSecurityContext(**kw)


def test_an_selinux_label_is_refused_where_selinux_is_enabled(monkeypatch):
    monkeypatch.setattr(security, "selinux_enabled", lambda: True)
    with pytest.raises(InvalidArgument, match="this host has SELinux, but Cricket sets no SELinux label"):
        security.check_lsm(context(selinux_options=LABEL))
    security.check_lsm(context(selinux_options=pb.SELinuxOption(type="unconfined_t")))  # no confinement asked
    security.check_lsm(context())


def test_an_selinux_label_is_accepted_where_selinux_is_not(monkeypatch):
    monkeypatch.setattr(security, "selinux_enabled", lambda: False)
    security.check_lsm(context(selinux_options=LABEL))
    security.check_lsm(context(selinux_options=pb.SELinuxOption(level="s0")))


def test_an_apparmor_profile_is_refused_on_every_host(monkeypatch):
    for enabled, words in ((True, "this host has AppArmor, but"), (False, "AppArmor is not enabled on this host")):
        monkeypatch.setattr(security, "_apparmor_enabled", lambda enabled=enabled: enabled)
        with pytest.raises(InvalidArgument, match=words):
            security.check_lsm(context(apparmor=pb.SecurityProfile(profile_type=pb.SecurityProfile.RuntimeDefault)))
        security.check_lsm(context(apparmor=pb.SecurityProfile(profile_type=pb.SecurityProfile.Unconfined)))
