"""How the registry client reaches a host it has no mirror for: HTTPS, plain HTTP where the config
marks the host insecure, and plain HTTP for a loopback host the config does not name, as containerd
does (Kubernetes' e2e private-registry specs pull from a registry pod at localhost:5000)."""
from __future__ import annotations

import pytest

from image.registry import HostConfig, scheme_of


@pytest.mark.parametrize("host", ["localhost:5000", "localhost", "127.0.0.1:5000", "127.8.9.1", "[::1]:5000"])
def test_a_loopback_host_without_config_is_plain_http(host):
    assert scheme_of(host, None) == "http"


@pytest.mark.parametrize("host", ["registry.k8s.io", "10.213.0.2:5000", "localhost.example.com", "[fd00::1]:5000"])
def test_any_other_host_without_config_is_https(host):
    assert scheme_of(host, None) == "https"


def test_the_config_decides_where_it_names_the_host():
    assert scheme_of("localhost:5000", HostConfig(insecure=False)) == "https"
    assert scheme_of("registry.example.com", HostConfig(insecure=True)) == "http"
