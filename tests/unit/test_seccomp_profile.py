"""Seccomp profiles: the RuntimeDefault object, Localhost files, and filters compiled by
libseccomp and loaded into real (forked) processes."""
import errno
import json
import os

import pytest

from cri import seccomp_profile
from linux import libc, seccomp


def allowed(profile, name):
    """The rules of `profile` that allow `name`, each as its args (None for none)."""
    return [r.get("args") for r in profile["syscalls"] if name in r["names"] and r["action"] == "SCMP_ACT_ALLOW"]


def test_default_profile_denies_by_default_and_lists_the_native_arches():
    p = seccomp_profile.default_profile([], kernel=(6, 1), machine="x86_64")
    assert p["defaultAction"] == "SCMP_ACT_ERRNO" and "defaultErrnoRet" not in p
    assert p["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    for name in ("read", "execve", "exit_group", "arch_prctl"):
        assert allowed(p, name) == [None], name
    for name in ("mount", "unshare", "setns", "keyctl", "io_uring_setup", "reboot", "bpf", "kexec_load"):
        assert allowed(p, name) == [], name


def test_default_profile_follows_capabilities():
    plain = seccomp_profile.default_profile(["CAP_CHOWN"], kernel=(6, 1), machine="x86_64")
    # clone only without namespace flags, clone3 answered ENOSYS so libc falls back to clone
    [[clone]] = allowed(plain, "clone")
    assert clone["op"] == "SCMP_CMP_MASKED_EQ" and clone["value"] & 0x10000000 and clone["valueTwo"] == 0
    assert [r for r in plain["syscalls"] if r["names"] == ["clone3"]] == [
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS}]
    admin = seccomp_profile.default_profile(["CAP_SYS_ADMIN", "CAP_SYS_TIME"], kernel=(6, 1), machine="x86_64")
    assert allowed(admin, "mount") == [None] and allowed(admin, "clone") == [None]
    assert allowed(admin, "clock_settime") == [None] and allowed(plain, "clock_settime") == []
    assert not [r for r in admin["syscalls"] if r["action"] != "SCMP_ACT_ALLOW"]


def test_default_profile_keeps_socket_families_and_old_kernels_strict():
    p = seccomp_profile.default_profile([], kernel=(4, 4), machine="x86_64")
    families = [a[0] for a in allowed(p, "socket")]
    # every family but AF_ALG (38) and AF_VSOCK (40), in three ranges of one test each
    assert families == [{"index": 0, "value": 38, "op": "SCMP_CMP_LT"},
                        {"index": 0, "value": 39, "op": "SCMP_CMP_EQ"},
                        {"index": 0, "value": 40, "op": "SCMP_CMP_GT"}]
    assert allowed(p, "ptrace") == []  # a filter could be escaped through ptrace before 4.8
    assert allowed(seccomp_profile.default_profile([], kernel=(4, 8), machine="x86_64"), "ptrace") == [None]
    assert allowed(seccomp_profile.default_profile(["CAP_SYS_PTRACE"], kernel=(4, 4)), "ptrace") == [None]


def test_default_profile_on_s390x_tests_clones_second_argument():
    p = seccomp_profile.default_profile([], kernel=(6, 1), machine="s390x")
    [[clone]] = allowed(p, "clone")
    assert clone["index"] == 1 and "SCMP_ARCH_S390X" in p["architectures"]


def write(tmp_path, doc, name="p.json"):
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return str(path)


def test_localhost_docker_profile_is_settled_for_the_container(tmp_path):
    path = write(tmp_path, {
        "defaultAction": "SCMP_ACT_ERRNO",
        "archMap": [{"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
                    {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]}],
        "syscalls": [
            {"names": ["read"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
            {"names": ["chown"], "action": "SCMP_ACT_ALLOW", "excludes": {"caps": ["CAP_CHOWN"]}},
            {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "4.8"}},
            {"names": ["set_tls"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["arm64"]}},
            {"name": "write", "action": "SCMP_ACT_ALLOW"},
        ]})
    p = seccomp_profile.load_localhost(path, ["CAP_CHOWN"], kernel=(5, 10), machine="x86_64")
    assert p["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"]
    assert [r["names"] for r in p["syscalls"]] == [["read"], ["ptrace"], ["write"]]
    admin = seccomp_profile.load_localhost(path, ["CAP_SYS_ADMIN"], kernel=(4, 4), machine="aarch64")
    assert [r["names"] for r in admin["syscalls"]] == [["read"], ["mount"], ["chown"], ["set_tls"], ["write"]]


@pytest.mark.parametrize("doc,says", [
    ("{not json", "not valid JSON"),
    ([1, 2], "want a JSON object"),
    ({"syscalls": []}, "defaultAction is missing"),
    ({"defaultAction": "SCMP_ACT_BOGUS"}, "unknown action 'SCMP_ACT_BOGUS'"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_Z80"]}, "SCMP_ARCH_Z80"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": [], "action": "SCMP_ACT_ERRNO"}]},
     "syscalls[0].names"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["read"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]},
     "syscalls[0].args[0]: index 6"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["read"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_LIKE"}]}]},
     "unknown op 'SCMP_CMP_LIKE'"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/agent.sock"}, "listenerPath"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 70000}, "errnoRet 70000"),
])
def test_localhost_profile_errors_name_the_file_and_the_fault(tmp_path, doc, says):
    path = write(tmp_path, doc)
    with pytest.raises(ValueError) as e:
        seccomp_profile.load_localhost(path)
    assert path in str(e.value) and says in str(e.value)


def test_localhost_profile_that_is_missing(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        seccomp_profile.load_localhost(str(tmp_path / "absent.json"))


# -- compiled and loaded ----------------------------------------------------------------------


def in_filtered_child(profile, body) -> int:
    """Fork; the child sets no_new_privs, loads `profile` and exits with what body() returns."""
    compiled = seccomp.compile(profile)
    pid = os.fork()
    if pid == 0:
        try:
            libc.prctl(libc.PR_SET_NO_NEW_PRIVS, 1)
            compiled.load()
            os._exit(body())
        except BaseException:
            os._exit(99)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def errno_of(call) -> int:
    try:
        call()
    except OSError as e:
        return e.errno
    return 0


def test_compiled_filter_refuses_what_the_profile_denies(tmp_path):
    target = str(tmp_path / "d")
    profile = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["mkdir", "mkdirat", "no_such_call_in_any_kernel"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]}
    assert in_filtered_child(profile, lambda: errno_of(lambda: os.mkdir(target))) == errno.EACCES
    assert not os.path.exists(target)


def test_two_tests_of_one_argument_are_ored_as_runc_does():
    # umask(0o22) or umask(0o77) fails; umask(0o7) goes through.
    profile = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["umask"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1, "args": [
            {"index": 0, "value": 0o22, "op": "SCMP_CMP_EQ"}, {"index": 0, "value": 0o77, "op": "SCMP_CMP_EQ"}]}]}

    def probe():
        # umask cannot fail, so a filtered one returns -1 through libc: read it raw.
        got = [libc._libc.umask(m) for m in (0o22, 0o77, 0o7)]
        return 1 + (got[0] == -1) * 2 + (got[1] == -1) * 4 + (got[2] == -1) * 8
    assert in_filtered_child(profile, probe) == 1 + 2 + 4


def test_loading_without_no_new_privs_or_cap_sys_admin_is_refused():
    compiled = seccomp.compile({"defaultAction": "SCMP_ACT_ALLOW"})
    pid = os.fork()
    if pid == 0:
        try:
            os.setgid(65534)
            os.setuid(65534)  # drops every capability; no_new_privs stays unset
            compiled.load()
            os._exit(0)
        except OSError as e:
            os._exit(e.errno)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == errno.EACCES


def test_every_default_profile_compiles():
    for caps in ([], ["CAP_SYS_ADMIN"], ["CAP_SYS_PTRACE", "CAP_NET_ADMIN"]):
        compiled = seccomp.compile(seccomp_profile.default_profile(caps))
        assert compiled.program and len(compiled.program) % 8 == 0 and compiled.flags == 0
    assert seccomp.compile({"defaultAction": "SCMP_ACT_ALLOW",
                            "flags": ["SECCOMP_FILTER_FLAG_LOG"]}).flags == 2
