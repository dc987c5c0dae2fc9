"""Registry authentication: Docker's token protocol and HTTP Basic.

The protocol is split as h11 splits HTTP: pure functions parse challenges and
token responses and build token requests, and one small stateful `Authorizer`
keeps what they learn (which host wants which scheme, tokens until they expire)
and runs the token fetches through an HTTP function it is given.

A registry answers an anonymous request with 401 and a challenge. A Bearer
challenge names a token server (the realm); the token it issues is good for one
scope ("repository:library/busybox:pull") and for expires_in seconds. A Basic
challenge wants the credentials on every request.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

CLIENT_ID = "cricket"
# The token spec's default when a server does not say, and its floor.
_DEFAULT_EXPIRY = 60.0
# Renew a little early so a token does not expire between check and use.
_EXPIRY_MARGIN = 5.0


class AuthError(ValueError):
    """Credentials or a token server's answer that cannot be used."""


@dataclass
class Credentials:
    """What a pull may authenticate with (the fields of a CRI AuthConfig)."""

    username: str = ""
    password: str = ""
    auth: str = ""  # base64 "user:password", as in a docker config.json
    identity_token: str = ""  # an OAuth2 refresh token
    registry_token: str = ""  # a bearer token to present as it is

    def basic(self) -> tuple[str, str] | None:
        """The username and password, from the fields or the `auth` string, if any."""
        if self.username or self.password:
            return self.username, self.password
        if self.auth:
            try:
                decoded = base64.b64decode(self.auth, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                raise AuthError("credentials: auth is not base64 of 'user:password'") from None
            user, sep, password = decoded.partition(":")
            if not sep:
                raise AuthError("credentials: auth does not decode to 'user:password'")
            return user, password
        return None

    def key(self) -> tuple:
        """What tells two sets of credentials apart, for caching tokens per identity."""
        return (self.username, self.password, self.auth, self.identity_token, self.registry_token)

    def __repr__(self) -> str:
        # Secrets stay out of logs and tracebacks.
        return f"Credentials(username={self.username!r}, ...)"


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lower case: "bearer", "basic", ...
    params: dict[str, str] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class TokenRequest:
    """An HTTP request to a token server, built from a challenge."""

    method: str
    url: str
    headers: dict[str, str]
    form: dict[str, str] | None = None  # a POST body, application/x-www-form-urlencoded


@dataclass(frozen=True)
class Token:
    value: str
    expires_at: float  # on the clock the response was parsed with
    refresh_token: str = ""


# -- challenges ------------------------------------------------------------

_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def parse_challenges(headers: str | Iterable[str]) -> list[Challenge]:
    """Parse WWW-Authenticate header values (RFC 7235) into challenges, in order.

    One value may hold several challenges ("Basic realm=x, Bearer realm=y");
    quoted values may hold commas and backslash escapes. Parameter names are
    lower-cased; a malformed tail is dropped rather than failing the whole header.
    """
    values = [headers] if isinstance(headers, str) else list(headers)
    out: list[Challenge] = []
    for value in values:
        out.extend(_parse_one_header(value))
    return out


def _parse_one_header(s: str) -> list[Challenge]:
    out: list[Challenge] = []
    n = len(s)
    i = 0
    while True:
        i = _skip(s, i, " \t,")
        scheme, i = _token(s, i)
        if not scheme:
            return out
        params: dict[str, str] = {}
        i = _skip(s, i, " \t")
        while i < n:
            name, j = _token(s, i)
            k = _skip(s, j, " \t")
            if not name or k >= n or s[k] != "=":
                break  # the next challenge's scheme, or something unreadable
            v = _skip(s, k + 1, " \t")
            if v >= n or s[v] in ",=":
                # A token68 ("abc==") or an empty value: nothing worth keeping.
                comma = s.find(",", k)
                i = n if comma < 0 else _skip(s, comma + 1, " \t")
                continue
            value, k = _value(s, v)
            if value is None:
                i = n  # an unterminated quote swallows the rest
                break
            params[name.lower()] = value
            k = _skip(s, k, " \t")
            if k < n and s[k] == ",":
                i = _skip(s, k + 1, " \t,")
                continue
            i = k
            break
        out.append(Challenge(scheme.lower(), params))
        if i < n and s[i] not in _TOKEN_CHARS and s[i] not in " \t,":
            return out


def _skip(s: str, i: int, chars: str) -> int:
    while i < len(s) and s[i] in chars:
        i += 1
    return i


def _token(s: str, i: int) -> tuple[str, int]:
    j = i
    while j < len(s) and s[j] in _TOKEN_CHARS:
        j += 1
    return s[i:j], j


def _value(s: str, i: int) -> tuple[str | None, int]:
    if i < len(s) and s[i] == '"':
        out, i = [], i + 1
        while i < len(s):
            c = s[i]
            if c == "\\" and i + 1 < len(s):
                out.append(s[i + 1])
                i += 2
            elif c == '"':
                return "".join(out), i + 1
            else:
                out.append(c)
                i += 1
        return None, len(s)  # unterminated quote
    # Some servers leave realms unquoted; a URL holds '/' and ':' that a strict
    # token would stop at, so an unquoted value runs to the next comma or space.
    j = i
    while j < len(s) and s[j] not in ", \t":
        j += 1
    return s[i:j], j


def pick_challenge(challenges: list[Challenge]) -> Challenge | None:
    """The challenge to answer: Bearer before Basic; others are not supported."""
    for scheme in ("bearer", "basic"):
        for c in challenges:
            if c.scheme == scheme:
                return c
    return None


# -- scopes, requests and responses ----------------------------------------


def repository_scope(path: str, actions: Iterable[str] = ("pull",)) -> str:
    """The token scope for `actions` on a repository: "repository:library/busybox:pull"."""
    return f"repository:{path}:{','.join(actions)}"


def token_scopes(challenge: Challenge, scope: str) -> list[str]:
    """The scopes to ask for: ours, plus any other the registry named in its challenge."""
    scopes = [scope]
    for s in challenge.params.get("scope", "").split(" "):
        if s and s not in scopes:
            scopes.append(s)
    return scopes


def basic_authorization(username: str, password: str) -> str:
    """An Authorization header value for HTTP Basic."""
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def build_token_request(challenge: Challenge, scope: str, creds: Credentials | None) -> TokenRequest:
    """The request that asks `challenge`'s token server for a token for `scope`.

    An identity (refresh) token goes by OAuth2 POST; a username and password go
    by GET with Basic auth; with neither the GET is anonymous.
    """
    realm = challenge.params.get("realm", "")
    parsed = urllib.parse.urlsplit(realm)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise AuthError(f"the registry's Bearer challenge has no usable realm URL ({realm!r})")
    service = challenge.params.get("service", "")
    scopes = token_scopes(challenge, scope)
    if creds is not None and creds.identity_token:
        form = {"grant_type": "refresh_token", "refresh_token": creds.identity_token, "client_id": CLIENT_ID}
        if service:
            form["service"] = service
        form["scope"] = " ".join(scopes)
        return TokenRequest("POST", realm, {"Content-Type": "application/x-www-form-urlencoded"}, form)
    query = urllib.parse.parse_qsl(parsed.query, keep_blank_values=True)
    if service:
        query.append(("service", service))
    query += [("scope", s) for s in scopes]
    url = urllib.parse.urlunsplit(parsed._replace(query=urllib.parse.urlencode(query)))
    headers = {}
    basic = creds.basic() if creds is not None else None
    if basic is not None:
        headers["Authorization"] = basic_authorization(*basic)
    return TokenRequest("GET", url, headers)


def parse_token_response(body: bytes, now: float) -> Token:
    """Read a token server's JSON answer; `now` is the clock the expiry is measured on."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise AuthError("token server answered with something that is not JSON") from None
    if not isinstance(doc, dict):
        raise AuthError("token server answered with JSON that is not an object")
    # The token spec names it `token`; OAuth2 names it `access_token`. Either will do.
    value = doc.get("access_token") or doc.get("token")
    if not isinstance(value, str) or not value:
        raise AuthError("token server's answer has no token")
    expires_in = doc.get("expires_in")
    if not isinstance(expires_in, (int, float)) or isinstance(expires_in, bool) or expires_in < _DEFAULT_EXPIRY:
        expires_in = _DEFAULT_EXPIRY
    refresh = doc.get("refresh_token")
    return Token(value, now + float(expires_in), refresh if isinstance(refresh, str) else "")


# -- the stateful part ------------------------------------------------------

FetchToken = Callable[[TokenRequest, str], Awaitable[Token]]


class Authorizer:
    """Answers registries' challenges and remembers the answers.

    Keyed by the endpoint host that challenged: after the first 401 from a host,
    later requests to it carry credentials from the start, which saves a round
    trip per blob. Tokens are cached per (host, scope, credentials) until they
    expire, and concurrent requests for the same token share one fetch.
    `fetch_token(request, host)` does the HTTP and parses the answer.
    """

    def __init__(self, fetch_token: FetchToken, clock: Callable[[], float] = time.monotonic):
        self._fetch_token = fetch_token
        self._clock = clock
        self._challenges: dict[str, Challenge] = {}
        self._tokens: dict[tuple, asyncio.Future] = {}

    async def authorization(self, host: str, scope: str, creds: Credentials | None) -> str | None:
        """The Authorization header to send to `host` before it has asked, if it is known to want one."""
        challenge = self._challenges.get(host)
        if challenge is None:
            return None
        return await self._answer(host, challenge, scope, creds)

    async def challenged(
        self, host: str, www_authenticate: list[str], scope: str, creds: Credentials | None, refused: str | None
    ) -> str | None:
        """After a 401 from `host`: the Authorization header to retry with, or None if there is none to give.

        `refused` is the header the 401 answered, if any; a token that was
        refused is dropped so that a fresh one is fetched.
        """
        challenge = pick_challenge(parse_challenges(www_authenticate))
        if challenge is None:
            return None
        # Remembered for later requests to the host, but without the scope and
        # error, which were about this request's repository only.
        general = {k: v for k, v in challenge.params.items() if k not in ("scope", "error", "error_description")}
        self._challenges[host] = Challenge(challenge.scheme, general)
        if refused is not None and refused.startswith("Bearer "):
            key = (host, scope, creds.key() if creds else ())
            token = _token_of(self._tokens.get(key))
            if token is not None and token.value == refused[7:]:
                del self._tokens[key]
        return await self._answer(host, challenge, scope, creds)

    async def _answer(self, host: str, challenge: Challenge, scope: str, creds: Credentials | None) -> str | None:
        if challenge.scheme == "basic":
            basic = creds.basic() if creds is not None else None
            return basic_authorization(*basic) if basic else None
        if creds is not None and creds.registry_token:
            return "Bearer " + creds.registry_token
        key = (host, scope, creds.key() if creds else ())
        entry = self._tokens.get(key)
        token = _token_of(entry)
        # An entry still being fetched is shared; a finished one is reused until it nears expiry.
        if entry is None or (entry.done() and (token is None or token.expires_at - _EXPIRY_MARGIN <= self._clock())):
            request = build_token_request(challenge, scope, creds)
            entry = self._tokens[key] = asyncio.ensure_future(self._fetch_token(request, host))
            # Every waiter may have gone; the failure is then nobody's to report.
            entry.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            # Shielded: one waiter giving up must not cancel the fetch the others share.
            fetched: Token = await asyncio.shield(entry)
        except asyncio.CancelledError:
            raise
        except BaseException:
            if self._tokens.get(key) is entry:
                del self._tokens[key]
            raise
        return "Bearer " + fetched.value


def _token_of(entry: asyncio.Future | None) -> Token | None:
    """The token a finished fetch got, or None if it is unfinished or failed."""
    if entry is None or not entry.done() or entry.cancelled() or entry.exception() is not None:
        return None
    return entry.result()
