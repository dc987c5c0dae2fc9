"""Reference parsing and normalisation, checked against Docker's own rules."""
import dataclasses

import pytest

from image.reference import Reference, ReferenceError, parse_reference

D = "sha256:" + "a" * 64

NORMALISED = [
    # (input, domain, path, tag, digest)
    ("busybox", "docker.io", "library/busybox", "latest", None),
    ("busybox:1.36", "docker.io", "library/busybox", "1.36", None),
    ("library/busybox", "docker.io", "library/busybox", "latest", None),
    ("user/app", "docker.io", "user/app", "latest", None),
    ("user/app/sub", "docker.io", "user/app/sub", "latest", None),
    ("docker.io/busybox", "docker.io", "library/busybox", "latest", None),
    ("index.docker.io/busybox", "docker.io", "library/busybox", "latest", None),
    ("index.docker.io/user/app:v1", "docker.io", "user/app", "v1", None),
    ("registry-1.docker.io/library/busybox", "registry-1.docker.io", "library/busybox", "latest", None),
    ("quay.io/coreos/etcd:v3.5.0", "quay.io", "coreos/etcd", "v3.5.0", None),
    ("localhost/app", "localhost", "app", "latest", None),
    ("localhost:5000/app", "localhost:5000", "app", "latest", None),
    ("127.0.0.1:5000/a/b:t", "127.0.0.1:5000", "a/b", "t", None),
    ("[::1]:5000/app", "[::1]:5000", "app", "latest", None),
    ("host:5000/a/b@" + D, "host:5000", "a/b", None, D),
    ("busybox@" + D, "docker.io", "library/busybox", None, D),
    ("busybox:1.36@" + D, "docker.io", "library/busybox", "1.36", D),
    ("registry.k8s.io/pause:3.9", "registry.k8s.io", "pause", "3.9", None),
    ("a.b-c.d/x__y.z-w/q---r", "a.b-c.d", "x__y.z-w/q---r", "latest", None),
    ("Example.com/app", "Example.com", "app", "latest", None),
    ("localhost:5000", "docker.io", "library/localhost", "5000", None),
    ("busybox:Tag_With.Mixed-CASE", "docker.io", "library/busybox", "Tag_With.Mixed-CASE", None),
    ("gcr.io/project/image:" + "t" * 128, "gcr.io", "project/image", "t" * 128, None),
]


@pytest.mark.parametrize("s,domain,path,tag,digest", NORMALISED)
def test_normalisation(s, domain, path, tag, digest):
    assert parse_reference(s) == Reference(domain, path, tag, digest)


ERRORS = [
    ("", "empty"),
    ("Busybox", "lowercase"),
    ("user/App", "lowercase"),
    ("busybox:", "tag"),
    ("busybox:-bad", "tag"),
    ("busybox:.bad", "tag"),
    ("busybox:" + "t" * 129, "tag"),
    ("busybox@sha256:abc", "64 lowercase hex"),
    ("busybox@sha256:" + "A" * 64, "64 lowercase hex"),
    ("busybox@sha512:" + "a" * 128, "only sha256"),
    ("busybox@latest", "not a digest"),
    ("sha256:" + "a" * 64, "image ID"),
    ("a" * 64, "image ID"),
    ("bad host!/app", "whitespace"),
    (" busybox", "whitespace"),
    ("busy box", "whitespace"),
    ("host:port/app", "registry host"),
    ("-host.io/app", "registry host"),
    ("app//x", "repository"),
    ("app/", "repository"),
    ("_app", "repository"),
    ("a..b", "repository"),
    (":tag", "no repository"),
    ("host.io/" + "a" * 250, "longer than 255"),
]


@pytest.mark.parametrize("s,why", ERRORS)
def test_errors_name_the_reference_and_why(s, why):
    with pytest.raises(ReferenceError) as e:
        parse_reference(s)
    assert why in str(e.value)
    if s.strip():
        assert repr(s) in str(e.value) or s in str(e.value)


def test_reference_error_is_a_value_error():
    assert issubclass(ReferenceError, ValueError)


@pytest.mark.parametrize(
    "s,text",
    [
        ("busybox", "docker.io/library/busybox:latest"),
        ("host:5000/a/b@" + D, "host:5000/a/b@" + D),
        ("repo:tag@" + D, "docker.io/library/repo:tag@" + D),
        ("quay.io/x/y:1", "quay.io/x/y:1"),
    ],
)
def test_str_round_trips(s, text):
    ref = parse_reference(s)
    assert str(ref) == text
    assert parse_reference(str(ref)) == ref


def test_repository():
    assert parse_reference("busybox").repository == "docker.io/library/busybox"
    assert parse_reference("127.0.0.1:5000/a/b@" + D).repository == "127.0.0.1:5000/a/b"


def test_frozen_and_hashable():
    ref = parse_reference("busybox")
    assert {ref: 1}[parse_reference("docker.io/library/busybox:latest")] == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        ref.tag = "other"
