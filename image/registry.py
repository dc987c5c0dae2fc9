"""The registry client: resolve a reference to a manifest, fetch manifests and blobs.

It speaks the OCI distribution API (GET /v2/<name>/manifests/<ref> and
/v2/<name>/blobs/<digest>) over httpx, to mirrors first and then the upstream
registry, and verifies every byte it hands back against its digest. The
protocol's pure parts (error bodies, Content-Range, Retry-After, URLs) are
functions at the top of this module; authentication lives in image/auth.py.
"""
from __future__ import annotations

import asyncio
import copy
import email.utils
import hashlib
import ipaddress
import json
import logging
import re
import ssl
import time
import urllib.parse
from collections.abc import AsyncIterable, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar, cast

import httpx

from image.auth import (
    AuthError,
    Authorizer,
    Credentials,
    Token,
    TokenRequest,
    parse_token_response,
    repository_scope,
)
from image.growing_blob import GrowingBlob
from image.ingest import IngestFile
from image.limits import MANIFEST_LIMIT, LimitExceeded
from image.manifest import ACCEPTED_MANIFEST_TYPES, ManifestError, detect_media_type
from image.reference import Reference

__all__ = [
    "Credentials",
    "DigestMismatchError",
    "HostConfig",
    "RegistryClient",
    "RegistryError",
    "Resolved",
    "ResponseTooLarge",
    "error_words",
    "parse_content_range",
    "parse_retry_after",
]

log = logging.getLogger(__name__)

DOCKER_HUB = "docker.io"
DOCKER_HUB_UPSTREAM = "https://registry-1.docker.io"
# MANIFEST_LIMIT (image/limits.py) is containerd's limit too: a manifest is small, and a
# registry that streams without end must not fill memory. A token answer is smaller still
# (containers/image allows it 1 MiB).
TOKEN_LIMIT = 1 << 20
_ACCEPT_MANIFESTS = ", ".join(ACCEPTED_MANIFEST_TYPES)
_CHUNK = 1 << 20
_ERROR_BODY_LIMIT = 64 << 10
# Waiting longer than this for a rate limit to lift is worse than failing the
# pull and letting the kubelet's back-off retry it.
RETRY_AFTER_LIMIT = 30.0
_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# Every registry request has this long to connect, and then to send each next byte: a registry
# that stalls mid-answer is given up on after it, like one that never answers (and retried).
_TIMEOUT_SETTING = "[image] pull_timeout_seconds"
_SHA256 = re.compile(r"sha256:[a-f0-9]{64}")


class RegistryError(Exception):
    """A registry did not give what was asked; str() has the registry's own words.

    `status` is the HTTP status (None when no answer came), `reference` the
    image being pulled, `detail` the message without its "pull REF: " prefix.
    """

    def __init__(self, message: str, status: int | None = None, reference: str = "", detail: str = ""):
        super().__init__(message)
        self.status = status
        self.reference = reference
        self.detail = detail or message

    def noted(self, note: str) -> RegistryError:
        """The same error with `note` added to its message and detail."""
        out = copy.copy(self)
        out.args = (f"{self}{note}",)
        out.detail = self.detail + note
        return out


class DigestMismatchError(RegistryError):
    """Bytes that do not hash to the digest they were asked for by."""


class ResponseTooLarge(RegistryError, LimitExceeded):
    """A manifest or token answer over its bound; the message names the bound."""


class _TransientError(RegistryError):
    """A failure worth retrying: no answer, a broken transfer, 429 or 5xx."""

    def __init__(self, *args, retry_after: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.retry_after = retry_after


@dataclass
class HostConfig:
    """How to reach one registry host (keyed by its domain, e.g. "docker.io", "127.0.0.1:5000")."""

    mirrors: list[str] = field(default_factory=list)  # endpoint URLs, tried in order before the upstream
    insecure: bool = False  # plain HTTP to the upstream host itself
    ca_file: str | None = None  # a CA to trust besides the system's
    skip_verify: bool = False  # do not verify the TLS certificate at all


@dataclass
class Resolved:
    """A resolved reference: the manifest or index as served, and where it came from."""

    reference: Reference
    endpoint: str  # base URL that answered, e.g. "http://127.0.0.1:5000"
    digest: str
    media_type: str
    data: bytes


# -- pure protocol helpers ------------------------------------------------------


def error_words(body: bytes, limit: int = 400) -> str:
    """The words in a registry's or token server's error body, on one line.

    Registries send {"errors": [{"code", "message", "detail"}]}; token servers
    send OAuth2's {"error", "error_description"} or Docker Hub's {"details"}.
    Anything else is shown as text, cut to `limit` characters.
    """
    if not body:
        return ""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return _clip(" ".join(body.decode("utf-8", "replace").split()), limit)
    if isinstance(doc, dict) and isinstance(doc.get("errors"), list):
        parts = []
        for e in doc["errors"]:
            if not isinstance(e, dict):
                continue
            words = " ".join(str(e[k]) for k in ("code", "message") if e.get(k))
            detail = e.get("detail")
            if detail not in (None, "", {}, []):
                shown = detail if isinstance(detail, str) else json.dumps(detail, separators=(",", ":"))
                words += f" ({_clip(shown, 200)})"
            if words:
                parts.append(words)
        if parts:
            return _clip("; ".join(parts), limit)
    if isinstance(doc, dict):
        fields = [str(doc[k]) for k in ("error", "error_description", "details", "message") if doc.get(k)]
        if fields:
            return _clip(": ".join(fields), limit)
    return _clip(json.dumps(doc, separators=(",", ":")), limit)


def _clip(s: str, limit: int) -> str:
    return s if len(s) <= limit else s[: limit - 3] + "..."


def parse_content_range(value: str | None) -> tuple[int, int, int | None] | None:
    """(first, last, total) from "bytes first-last/total" (total None for "*"); None if malformed."""
    if not value:
        return None
    unit, _, spec = value.strip().partition(" ")
    if unit.lower() != "bytes":
        return None
    span, _, total = spec.strip().partition("/")
    first, dash, last = span.partition("-")
    if not dash or not first.isdigit() or not last.isdigit() or not (total.isdigit() or total == "*"):
        return None
    first_n, last_n = int(first), int(last)
    total_n = None if total == "*" else int(total)
    if last_n < first_n or (total_n is not None and last_n >= total_n):
        return None
    return first_n, last_n, total_n


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); `now` is epoch time."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def manifest_url(base: str, path: str, ref: str) -> str:
    return f"{base}/v2/{path}/manifests/{ref}"


def blob_url(base: str, path: str, digest: str) -> str:
    return f"{base}/v2/{path}/blobs/{digest}"


def scheme_of(host: str, cfg: HostConfig | None) -> str:
    """How to reach `host` (a domain, with its port if any): plain HTTP where its config says
    insecure, and — as containerd does — where it is a loopback host the config does not name
    (localhost:5000 is a registry on the node itself, Kubernetes' e2e specs run one there);
    HTTPS everywhere else."""
    if cfg is not None:
        return "http" if cfg.insecure else "https"
    name = urllib.parse.urlsplit(f"//{host}").hostname or ""
    try:
        loopback = name == "localhost" or ipaddress.ip_address(name).is_loopback
    except ValueError:
        loopback = False
    return "http" if loopback else "https"


def _endpoint_base(url: str, hosts: dict[str, HostConfig]) -> str:
    """A mirror URL as a base to append /v2/... to: scheme added, trailing /v2 and / dropped."""
    if "://" not in url:
        host = url.split("/", 1)[0]
        url = f"{scheme_of(host, hosts.get(host))}://{url}"
    url = url.rstrip("/")
    if url.endswith("/v2"):
        url = url[:-3]
    return url


def _sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _media_type_of(data: bytes, content_type: str | None) -> str:
    try:
        doc = json.loads(data)
        if isinstance(doc, dict):
            return detect_media_type(doc, content_type)
    except (ValueError, UnicodeDecodeError, RecursionError, ManifestError):
        pass
    # Unreadable: pass the header on and let parse_manifest say what is wrong.
    return (content_type or "").split(";", 1)[0].strip()


# -- the client ----------------------------------------------------------------


@dataclass(frozen=True)
class _Endpoint:
    url: str  # base URL
    host: str  # host[:port] of url: the key for auth state
    tls: HostConfig | None
    mirror: bool


@dataclass(frozen=True)
class _Job:
    """What one operation is about, for its error messages and its auth scope."""

    ref: Reference
    creds: Credentials | None
    actions: tuple[str, ...] = ("pull",)

    @property
    def scope(self) -> str:
        return repository_scope(self.ref.path, self.actions)

    def error(self, detail: str, status: int | None = None, cls: type[RegistryError] = RegistryError, **kw):
        verb = "push" if "push" in self.actions else "pull"
        return cls(f"{verb} {self.ref}: {detail}", status, str(self.ref), detail, **kw)


T = TypeVar("T")


class RegistryClient:
    """Pulls manifests and blobs from registries, through mirrors, with auth, retries and resume."""

    def __init__(
        self,
        hosts: dict[str, HostConfig] | None = None,
        *,
        max_retries: int = 3,
        timeout: float = 30.0,
        user_agent: str = "cricket/0.1",
    ):
        self._hosts = dict(hosts or {})
        self._tries = 1 + max(0, max_retries)
        self._timeout = timeout
        self._user_agent = user_agent
        self._clients: dict[tuple, httpx.AsyncClient] = {}
        self._endpoint_tls: dict[str, HostConfig | None] = {}
        self._authorizer = Authorizer(self._fetch_token)

    async def aclose(self) -> None:
        """Close every connection."""
        clients, self._clients = list(self._clients.values()), {}
        for c in clients:
            await c.aclose()

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    # -- the three operations ------------------------------------------------

    async def resolve(self, ref: Reference, creds: Credentials | None = None) -> Resolved:
        """Fetch the manifest or index `ref` names, from the first endpoint that has it.

        By digest, the body must hash to that digest. By tag, the digest is the
        body's hash (a Docker-Content-Digest header that disagrees is ignored).
        """
        job = _Job(ref, creds)
        ident = ref.digest or ref.tag or "latest"
        endpoints = self._endpoints(ref.domain)

        async def attempt(ep: _Endpoint) -> Resolved:
            data, content_type, header_digest = await self._get_manifest(job, ep, ident)
            digest = _sha256_digest(data)
            if ref.digest and digest != ref.digest:
                raise job.error(
                    f"manifest from {ep.url}: got {digest} ({len(data)} bytes), want {ref.digest}",
                    cls=DigestMismatchError,
                )
            if header_digest and header_digest != digest:
                log.warning("%s: %s says the manifest is %s but it hashes to %s", ref, ep.url, header_digest, digest)
            return Resolved(ref, ep.url, digest, _media_type_of(data, content_type), data)

        # A mirror gets one try: if it is down, the next endpoint is the retry.
        return await self._over_endpoints(job, endpoints, attempt, lambda ep: not ep.mirror)

    async def fetch_manifest(self, resolved: Resolved, digest: str, creds: Credentials | None = None) -> bytes:
        """Fetch the manifest `digest` (an index's child) from the repository `resolved` came from."""
        job = _Job(resolved.reference, creds)
        self._check_digest(job, digest)

        async def attempt(ep: _Endpoint) -> bytes:
            data, _, _ = await self._get_manifest(job, ep, digest, what=f"manifest {digest}: ")
            got = _sha256_digest(data)
            if got != digest:
                raise job.error(
                    f"manifest {digest} from {ep.url}: got {got} ({len(data)} bytes)", cls=DigestMismatchError
                )
            return data

        return await self._over_endpoints(job, self._endpoints_after(resolved), attempt, self._full_tries(resolved))

    async def fetch_blob(
        self,
        resolved: Resolved,
        digest: str,
        size: int,
        dest: str,
        creds: Credentials | None = None,
        progress: Callable[[int], None] | None = None,
        follower: GrowingBlob | None = None,
    ) -> None:
        """Stream blob `digest` of `size` bytes into the file `dest`, verified.

        Bytes already in `dest` (an interrupted earlier attempt) are kept and the
        download resumes after them. Broken transfers, timeouts, 429 and 5xx are
        retried, resuming each time. If the result does not match, `dest` is
        deleted and DigestMismatchError raised. `follower` hears how far `dest`
        is written as it grows.
        """
        job = _Job(resolved.reference, creds)
        self._check_digest(job, digest)
        sink = await IngestFile.open(dest, size, follower)
        try:
            if sink.offset == size:
                if sink.digest() == digest:
                    if progress:
                        progress(size)
                    return
                sink.restart()  # all there but wrong: asking to resume after the end would get a 416

            async def attempt(ep: _Endpoint) -> None:
                await self._blob_attempt(job, ep, digest, size, sink, progress)

            endpoints = self._endpoints_after(resolved)
            resumed_from_disk = sink.offset > 0
            await self._over_endpoints(job, endpoints, attempt, self._full_tries(resolved))
            if resumed_from_disk and (sink.offset != size or sink.digest() != digest):
                # The bytes left by an earlier attempt may be what was wrong:
                # one clean download decides.
                log.info("%s: blob %s does not verify after resuming; downloading it whole", job.ref, digest)
                sink.restart()
                await self._over_endpoints(job, endpoints, attempt, self._full_tries(resolved))
            got = sink.digest()
            if sink.offset != size or got != digest:
                sink.discard()
                raise job.error(
                    f"blob {digest} of {job.ref}: got {got} ({sink.offset} bytes), want {digest} ({size} bytes)",
                    cls=DigestMismatchError,
                )
        finally:
            sink.close()

    # -- endpoints -----------------------------------------------------------------

    async def fetch_url(self, url: str, dest: str, max_size: int) -> str | None:
        """GET `url` — a Dockerfile ADD's source, not a registry's — into the new file `dest`, at
        most `max_size` bytes, with the same connections, TLS settings of its host, timeouts and
        retries as a pull. Returns its Last-Modified header, if any."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RegistryError(f"{url!r} is not an http or https URL")
        try:
            client = self._client(self._hosts.get(parts.netloc))
        except (OSError, ssl.SSLError) as e:
            raise RegistryError(f"{url}: the TLS settings of {parts.netloc}: {e}") from None

        async def attempt() -> str | None:
            try:
                async with client.stream("GET", url) as resp:
                    if resp.status_code >= 400:
                        cls = _TransientError if resp.status_code in _TRANSIENT_STATUS else RegistryError
                        raise cls(f"{url}: HTTP {resp.status_code}", status=resp.status_code)
                    size = 0
                    with open(dest, "wb") as f:
                        async for chunk in resp.aiter_bytes(_CHUNK):
                            size += len(chunk)
                            if size > max_size:
                                raise LimitExceeded(f"{url}: more than {max_size} bytes, the most a layer holds "
                                                    "([image] max_layer_size)")
                            await asyncio.to_thread(f.write, chunk)  # a slow disk must not hold the loop
                    return resp.headers.get("last-modified")
            except httpx.TimeoutException:
                raise _TransientError(f"{url}: no answer for {self._timeout:g}s ({_TIMEOUT_SETTING})") from None
            except httpx.TransportError as e:
                raise _TransientError(f"{url}: {e}") from None

        return await self._retrying(attempt, self._tries)

    def _endpoints(self, domain: str) -> list[_Endpoint]:
        cfg = self._hosts.get(domain)
        out = []
        for m in cfg.mirrors if cfg else ():
            base = _endpoint_base(m, self._hosts)
            host = urllib.parse.urlsplit(base).netloc
            out.append(_Endpoint(base, host, self._hosts.get(host), True))
        if domain == DOCKER_HUB:
            upstream = DOCKER_HUB_UPSTREAM
        else:
            upstream = f"{scheme_of(domain, cfg)}://{domain}"
        out.append(_Endpoint(upstream, urllib.parse.urlsplit(upstream).netloc, cfg, False))
        for ep in out:
            self._endpoint_tls.setdefault(ep.host, ep.tls)
        return out

    def _endpoints_after(self, resolved: Resolved) -> list[_Endpoint]:
        """The endpoints for a resolved image's content: the one that resolved it first."""
        eps = self._endpoints(resolved.reference.domain)
        first = [ep for ep in eps if ep.url == resolved.endpoint]
        if not first:
            # Resolved elsewhere (another client, an older configuration): that
            # endpoint still has the content, so it is still asked first.
            host = urllib.parse.urlsplit(resolved.endpoint).netloc
            first = [_Endpoint(resolved.endpoint, host, self._hosts.get(host), True)]
            self._endpoint_tls.setdefault(host, first[0].tls)
        return first + [ep for ep in eps if ep.url != resolved.endpoint]

    @staticmethod
    def _full_tries(resolved: Resolved) -> Callable[[_Endpoint], bool]:
        return lambda ep: ep.url == resolved.endpoint or not ep.mirror

    async def _over_endpoints(
        self,
        job: _Job,
        endpoints: list[_Endpoint],
        attempt: Callable[[_Endpoint], Awaitable[T]],
        full_tries: Callable[[_Endpoint], bool],
    ) -> T:
        """Run `attempt` on each endpoint in turn until one succeeds.

        The error raised is the last endpoint's, with what the others said added:
        when the upstream is out of reach, a mirror's "manifest unknown" is the
        telling part.
        """
        failures: list[tuple[_Endpoint, RegistryError]] = []
        for i, ep in enumerate(endpoints):
            try:
                # cast: mypy cannot infer a lambda whose parameter has a default against a no-argument type
                return await self._retrying(cast("Callable[[], Awaitable[T]]", lambda ep=ep: attempt(ep)),
                                            self._tries if full_tries(ep) else 1)
            except RegistryError as e:
                if i == len(endpoints) - 1:
                    if failures:
                        notes = "; ".join(f"{f_ep.url} said: {f.detail}" for f_ep, f in failures)
                        raise job.error(f"{e.detail} (also tried {notes})", e.status, cls=type(e)) from e
                    raise
                log.info("%s: %s failed, trying the next endpoint: %s", job.ref, ep.url, e.detail)
                failures.append((ep, e))
        raise AssertionError("no endpoints")  # _endpoints always ends with the upstream

    async def _retrying(self, attempt: Callable[[], Awaitable[T]], tries: int) -> T:
        """Run attempt() up to `tries` times while it fails transiently, backing off between tries
        (0.2s doubling to at most 5s, or what the registry's Retry-After asks)."""
        for n in range(tries):
            try:
                return await attempt()
            except _TransientError as e:
                if n + 1 >= tries:
                    if tries > 1:
                        raise e.noted(f" (gave up after {tries} tries; [image] pull_retries)") from None
                    raise
                delay = e.retry_after if e.retry_after is not None else min(0.2 * 2**n, 5.0)
                if delay > RETRY_AFTER_LIMIT:
                    raise
                log.info("%s; retrying in %.1fs", e, delay)
                await asyncio.sleep(delay)
        raise AssertionError("tries < 1")

    # -- HTTP ----------------------------------------------------------------------

    def _client(self, tls: HostConfig | None) -> httpx.AsyncClient:
        key = (bool(tls and tls.skip_verify), tls.ca_file if tls and not tls.skip_verify else None)
        client = self._clients.get(key)
        if client is None:
            verify: ssl.SSLContext | bool
            if key[0]:
                verify = False
            else:
                verify = httpx.create_ssl_context()
                if key[1]:
                    verify.load_verify_locations(cafile=key[1])
            client = httpx.AsyncClient(
                verify=verify,
                timeout=httpx.Timeout(self._timeout),
                # Blobs are served from storage URLs; httpx drops Authorization
                # when a redirect leaves the origin, so tokens stay with the registry.
                follow_redirects=True,
                headers={"User-Agent": self._user_agent},
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=32),
            )
            self._clients[key] = client
        return client

    def _client_for(self, job: _Job, ep: _Endpoint) -> httpx.AsyncClient:
        try:
            return self._client(ep.tls)
        except (OSError, ssl.SSLError) as e:
            # ep.tls is None for a host without config, whose default context can fail too (SSL_CERT_FILE)
            ca_file = ep.tls.ca_file if ep.tls is not None else None
            raise job.error(f"cannot load ca_file {ca_file!r} for {ep.host}: {e}") from None

    async def _send(
        self, job: _Job, ep: _Endpoint, url: str, headers: dict[str, str], what: str,
        method: str = "GET", content: Callable[[], bytes | AsyncIterable[bytes]] | None = None,
    ) -> httpx.Response:
        """`method` `url` with auth; a streaming 2xx/3xx response, or a RegistryError. A body
        comes from content(), called again if the request must be sent again with a token."""
        client = self._client_for(job, ep)
        authorization = await self._authorize(job, ep, None)
        for auth_round in (0, 1):
            h = dict(headers)
            if authorization:
                h["Authorization"] = authorization
            try:
                request = client.build_request(method, url, headers=h, content=content() if content else None)
                resp = await client.send(request, stream=True)
            except httpx.ReadTimeout:
                raise job.error(f"{what}{ep.url} sent no answer for {self._timeout:g}s "
                                f"({_TIMEOUT_SETTING})", cls=_TransientError) from None
            except httpx.TransportError as e:
                raise _unreachable(job, ep, e, what, self._timeout) from None
            if resp.status_code != 401 or auth_round == 1:
                break
            body = await _read_error_body(resp)
            new = await self._authorize(job, ep, resp.headers.get_list("www-authenticate"), authorization)
            if new is None or new == authorization:
                raise _http_error(job, resp, body, what)
            authorization = new
        if resp.status_code >= 400:
            raise _http_error(job, resp, await _read_error_body(resp), what)
        return resp

    async def _authorize(
        self, job: _Job, ep: _Endpoint, challenge: list[str] | None, refused: str | None = None
    ) -> str | None:
        try:
            if challenge is None:
                return await self._authorizer.authorization(ep.host, job.scope, job.creds)
            return await self._authorizer.challenged(ep.host, challenge, job.scope, job.creds, refused)
        except AuthError as e:
            raise job.error(f"authenticating to {ep.host}: {e}") from None
        except RegistryError as e:
            raise job.error(e.detail, e.status, cls=type(e)) from None

    async def _fetch_token(self, request: TokenRequest, host: str) -> Token:
        """Run one token request; errors carry the token server's words (the caller adds the reference)."""
        realm = urllib.parse.urlsplit(request.url)
        # A token server on its own host may have its own TLS settings; else it
        # is trusted as the registry that sent us there is.
        tls = self._hosts.get(realm.netloc, self._endpoint_tls.get(host))
        origin = f"{realm.scheme}://{realm.netloc}"
        try:
            client = self._client(tls)
            sent = client.build_request(request.method, request.url, headers=request.headers, data=request.form)
            resp = await client.send(sent, stream=True)
        except (OSError, ssl.SSLError) as e:
            raise RegistryError(f"cannot load ca_file for token server {origin}: {e}") from None
        except httpx.TransportError as e:
            raise _TransientError(f"cannot reach token server {origin}: {_cause(e)}") from None
        if resp.status_code >= 400:
            words = error_words(await _read_error_body(resp))
            cls = _TransientError if resp.status_code in _TRANSIENT_STATUS else RegistryError
            raise cls(
                f"token server {origin} answered {resp.status_code} {resp.reason_phrase}"
                + (f": {words}" if words else ""),
                resp.status_code,
            )
        body = bytearray()
        try:
            async for chunk in resp.aiter_bytes():
                body += chunk
                if len(body) > TOKEN_LIMIT:
                    raise ResponseTooLarge(f"token server {origin} answered with over {TOKEN_LIMIT} bytes, "
                                           "the limit of a token answer")
        except httpx.TransportError as e:
            raise _TransientError(f"reading from token server {origin}: {_cause(e)}") from None
        finally:
            await resp.aclose()
        try:
            return parse_token_response(bytes(body), time.monotonic())
        except AuthError as e:
            raise RegistryError(f"token server {origin}: {e}") from None

    async def _get_manifest(
        self, job: _Job, ep: _Endpoint, ident: str, what: str = ""
    ) -> tuple[bytes, str | None, str | None]:
        url = manifest_url(ep.url, job.ref.path, ident)
        resp = await self._send(job, ep, url, {"Accept": _ACCEPT_MANIFESTS}, what)
        data = bytearray()
        try:
            # Refused by its declared length before a byte of it is read, or else at the bound.
            declared = resp.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > MANIFEST_LIMIT:
                raise job.error(f"{what}manifest from {ep.url} is {declared} bytes, over the {MANIFEST_LIMIT} "
                                "byte limit of a manifest", cls=ResponseTooLarge)
            async for chunk in resp.aiter_bytes():
                data += chunk
                if len(data) > MANIFEST_LIMIT:
                    raise job.error(f"{what}manifest from {ep.url} is over the {MANIFEST_LIMIT} byte limit "
                                    "of a manifest", cls=ResponseTooLarge)
        except httpx.ReadTimeout:
            raise job.error(f"{what}manifest from {ep.url} stalled: no data for {self._timeout:g}s after "
                            f"{len(data)} bytes ({_TIMEOUT_SETTING})", cls=_TransientError) from None
        except httpx.TransportError as e:
            raise job.error(f"{what}reading from {ep.url}: {_cause(e)}", cls=_TransientError) from None
        finally:
            await resp.aclose()
        return bytes(data), resp.headers.get("content-type"), resp.headers.get("docker-content-digest")

    async def _blob_attempt(
        self,
        job: _Job,
        ep: _Endpoint,
        digest: str,
        size: int,
        sink: IngestFile,
        progress: Callable[[int], None] | None,
    ) -> None:
        what = f"blob {digest}: "
        # Hashing needs the bytes as stored: no transfer compression.
        headers = {"Accept-Encoding": "identity"}
        if sink.offset:
            headers["Range"] = f"bytes={sink.offset}-"
        try:
            resp = await self._send(job, ep, blob_url(ep.url, job.ref.path, digest), headers, what)
        except RegistryError as e:
            if e.status == 416 and sink.offset:
                sink.restart()  # the server will not resume from there; start over
                raise job.error(f"{what}{ep.url} refused to resume", 416, cls=_TransientError, retry_after=0) from None
            raise
        try:
            if resp.status_code == 206:
                span = parse_content_range(resp.headers.get("content-range"))
                if span is None or span[0] != sink.offset:
                    sink.restart()
                    raise job.error(
                        f"{what}{ep.url} sent range {resp.headers.get('content-range')!r}, not from byte {sink.offset}",
                        206,
                        cls=_TransientError,
                        retry_after=0,
                    )
            elif sink.offset:
                sink.restart()  # a 200 to a Range request: the whole blob is coming
            async for chunk in resp.aiter_raw():
                await sink.write(chunk)
                if progress:
                    progress(sink.offset)
                if sink.offset > size:
                    break  # more than the manifest promised; verification fails it
            await sink.flush()
        except httpx.ReadTimeout:
            raise job.error(
                f"{what}transfer from {ep.url} stalled: no data for {self._timeout:g}s at byte {sink.offset} of "
                f"{size} ({_TIMEOUT_SETTING})",
                cls=_TransientError,
            ) from None
        except httpx.TransportError as e:
            raise job.error(
                f"{what}transfer from {ep.url} broke off at byte {sink.offset} of {size}: {_cause(e)}",
                cls=_TransientError,
            ) from None
        finally:
            await resp.aclose()
        if sink.offset < size:
            raise job.error(
                f"{what}transfer from {ep.url} ended at byte {sink.offset} of {size}", cls=_TransientError
            )

    # -- pushing ---------------------------------------------------------------------

    def _push_endpoint(self, ref: Reference) -> _Endpoint:
        # Pushes go to the registry itself: a mirror serves pulls only.
        return self._endpoints(ref.domain)[-1]

    async def push_blob(self, ref: Reference, digest: str, size: int, path: str, creds: Credentials | None = None,
                        progress: Callable[[int], None] | None = None) -> bool:
        """Upload the blob in file `path` to `ref`'s repository unless it is there; True if uploaded."""
        job = _Job(ref, creds, ("pull", "push"))
        self._check_digest(job, digest)
        ep = self._push_endpoint(ref)
        what = f"blob {digest}: "
        try:
            resp = await self._send(job, ep, blob_url(ep.url, ref.path, digest), {}, what, method="HEAD")
            await resp.aclose()
            return False  # already there: nothing to send
        except RegistryError as e:
            if e.status != 404:
                raise
        resp = await self._send(job, ep, f"{ep.url}/v2/{ref.path}/blobs/uploads/", {"Content-Length": "0"}, what,
                                method="POST")
        await resp.aclose()
        location = resp.headers.get("location")
        if resp.status_code != 202 or not location:
            raise job.error(f"{what}{ep.url} did not start an upload (status {resp.status_code}, no Location)")
        upload = urllib.parse.urljoin(ep.url + "/", location)
        upload += ("&" if "?" in upload else "?") + urllib.parse.urlencode({"digest": digest})

        async def body():
            sent = 0
            with open(path, "rb") as f:
                while chunk := f.read(_CHUNK):
                    sent += len(chunk)
                    yield chunk
                    if progress:
                        progress(sent)

        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        resp = await self._send(job, ep, upload, headers, what, method="PUT", content=body)
        await resp.aclose()
        return True

    async def push_manifest(self, ref: Reference, data: bytes, media_type: str,
                            creds: Credentials | None = None) -> str:
        """Put manifest `data` under `ref`'s tag (or digest); the digest the registry gives it."""
        job = _Job(ref, creds, ("pull", "push"))
        ep = self._push_endpoint(ref)
        url = manifest_url(ep.url, ref.path, ref.tag or ref.digest or _sha256_digest(data))
        resp = await self._send(job, ep, url, {"Content-Type": media_type}, "manifest: ", method="PUT",
                                content=lambda: data)
        await resp.aclose()
        return resp.headers.get("docker-content-digest") or _sha256_digest(data)

    @staticmethod
    def _check_digest(job: _Job, digest: str) -> None:
        # The digest goes into a URL path and names a file: nothing but sha256 hex.
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise job.error(f"cannot fetch {digest!r}: want a sha256 digest (sha256:<64 lowercase hex>)")


async def _read_error_body(resp: httpx.Response) -> bytes:
    body = bytearray()
    try:
        async for chunk in resp.aiter_bytes():
            body += chunk
            if len(body) >= _ERROR_BODY_LIMIT:
                break
    except httpx.HTTPError:
        pass
    finally:
        await resp.aclose()
    return bytes(body)


def _http_error(job: _Job, resp: httpx.Response, body: bytes, what: str) -> RegistryError:
    status = resp.status_code
    words = error_words(body)
    detail = f"{what}{status} {resp.reason_phrase}" + (f": {words}" if words else "")
    if status == 401:
        detail += (
            " (the credentials given were refused)"
            if job.creds is not None and job.creds.key() != Credentials().key()
            else " (the registry wants credentials and none were given)"
        )
    if status in _TRANSIENT_STATUS:
        now = time.time()
        return job.error(
            detail, status, cls=_TransientError, retry_after=parse_retry_after(resp.headers.get("retry-after"), now)
        )
    return job.error(detail, status)


def _unreachable(job: _Job, ep: _Endpoint, e: httpx.TransportError, what: str, timeout: float) -> RegistryError:
    if isinstance(e, httpx.ConnectTimeout):
        return job.error(f"{what}cannot reach {ep.url}: no connection within {timeout:g}s ({_TIMEOUT_SETTING})",
                         cls=_TransientError)
    cause = _cause(e)
    hint = ""
    if "CERTIFICATE_VERIFY_FAILED" in cause:
        hint = " (give the registry's CA as ca_file for this host, or set skip_verify)"
    elif "WRONG_VERSION_NUMBER" in cause or "record layer failure" in cause:
        hint = " (is it a plain-HTTP registry? mark the host insecure)"
    return job.error(f"{what}cannot reach {ep.url}: {cause}{hint}", cls=_TransientError)


_TIMEOUT_WORDS = {
    httpx.ConnectTimeout: "no connection", httpx.ReadTimeout: "no data", httpx.WriteTimeout: "could not send",
    httpx.PoolTimeout: "no free connection",
}


def _cause(e: BaseException) -> str:
    for cls, words in _TIMEOUT_WORDS.items():
        if isinstance(e, cls):
            # Its own words are anyio's ("Cancelled via cancel scope ...; reason: deadline exceeded").
            return f"{words} within the timeout ({_TIMEOUT_SETTING})"
    text = str(e) or type(e).__name__
    # httpx wraps the OS error, and its own words are often only "All connection
    # attempts failed"; the innermost error says refused, unreachable or timed out.
    inner, seen = e, 0
    while (inner.__cause__ or inner.__context__) is not None and seen < 8:
        inner, seen = cast(BaseException, inner.__cause__ or inner.__context__), seen + 1  # not None: the loop test
    if inner is not e and str(inner) and str(inner) not in text:
        text += f" ({inner})"
    return text
