"""Image references: parsing and Docker's normalisation of familiar names.

The grammar is the one the distribution project's reference package defines
(what `docker pull`, containerd and CRI-O all accept), with one narrowing: a
digest must be sha256, since that is the only algorithm the content store keeps.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_DOMAIN = "docker.io"
# Docker Hub's old index host names the same registry; folding it keeps one
# image from being stored under two names.
_LEGACY_DOMAIN = "index.docker.io"
_OFFICIAL_NAMESPACE = "library"
DEFAULT_TAG = "latest"
_MAX_NAME = 255

_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(
    rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
)
_PATH = re.compile(rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_SHA256 = re.compile(r"sha256:[a-f0-9]{64}")
_ANY_DIGEST = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}")
_HEX64 = re.compile(r"[a-f0-9]{64}")


class ReferenceError(ValueError):
    """A string that is not a valid image reference; the message says why."""


@dataclass(frozen=True)
class Reference:
    """A fully qualified reference: registry domain, repository path, tag and/or digest."""

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def repository(self) -> str:
        return f"{self.domain}/{self.path}"

    def __str__(self) -> str:
        s = self.repository
        if self.tag:
            s += ":" + self.tag
        if self.digest:
            s += "@" + self.digest
        return s


def parse_reference(s: str) -> Reference:
    """Parse and normalise an image reference the way `docker pull` does.

    "busybox" becomes docker.io/library/busybox:latest; a first component with a
    '.' or ':' (or "localhost") is a registry domain. The tag defaults to
    "latest" only when no digest is given.
    """
    if not isinstance(s, str) or not s:
        raise ReferenceError("empty image reference")
    if s != s.strip() or any(c.isspace() for c in s):
        raise ReferenceError(f"invalid image reference {s!r}: it contains whitespace")
    if _HEX64.fullmatch(s) or (_SHA256.fullmatch(s)):
        raise ReferenceError(f"{s!r} is an image ID, not a reference to pull")

    rest, digest = s, None
    if "@" in s:
        rest, digest = s.split("@", 1)
        _check_digest(s, digest)
    tag = None
    colon = rest.rfind(":")
    if colon > rest.rfind("/"):
        rest, tag = rest[:colon], rest[colon + 1 :]
        if not _TAG.fullmatch(tag):
            raise ReferenceError(
                f"invalid image reference {s!r}: tag {tag!r} must be 1-128 of letters, digits, '_', '.', '-'"
                " and not start with '.' or '-'"
            )
    if not rest:
        raise ReferenceError(f"invalid image reference {s!r}: no repository name")

    domain, path = _split_domain(rest)
    if not _DOMAIN.fullmatch(domain):
        raise ReferenceError(f"invalid image reference {s!r}: {domain!r} is not a registry host[:port]")
    if not _PATH.fullmatch(path):
        if _PATH.fullmatch(path.lower()):
            raise ReferenceError(f"invalid image reference {s!r}: repository name must be lowercase")
        raise ReferenceError(
            f"invalid image reference {s!r}: repository {path!r} must be '/'-separated components of"
            " lowercase letters and digits, joined inside by '.', '_', '__' or '-'"
        )
    if len(domain) + 1 + len(path) > _MAX_NAME:
        raise ReferenceError(f"invalid image reference {s!r}: name is longer than {_MAX_NAME} characters")

    if domain == _LEGACY_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = f"{_OFFICIAL_NAMESPACE}/{path}"
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(domain, path, tag, digest)


def _split_domain(name: str) -> tuple[str, str]:
    first, slash, remainder = name.partition("/")
    # Docker's rule: only a component that looks like a host (a dot, a port, the
    # word localhost, or capitals, which a path may not have) is a domain;
    # "user/app" is a Docker Hub repository.
    if not slash or not (
        "." in first or ":" in first or first == "localhost" or first.lower() != first
    ):
        return DEFAULT_DOMAIN, name
    return first, remainder


def _check_digest(s: str, digest: str) -> None:
    if _SHA256.fullmatch(digest):
        return
    if digest.startswith("sha256:"):
        raise ReferenceError(
            f"invalid image reference {s!r}: digest {digest!r} must be sha256: and 64 lowercase hex characters"
        )
    if _ANY_DIGEST.fullmatch(digest):
        raise ReferenceError(f"invalid image reference {s!r}: only sha256 digests are supported")
    raise ReferenceError(f"invalid image reference {s!r}: {digest!r} is not a digest (want sha256:<64 hex>)")
