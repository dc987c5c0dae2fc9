"""The registry protocol's pure parts: challenges, token requests and answers,
error bodies, Content-Range and Retry-After; and the Authorizer's caching, driven
by a stand-in token fetch."""
import asyncio
import base64
import email.utils
import json
import urllib.parse

import pytest

from image.auth import (
    AuthError,
    Authorizer,
    Challenge,
    Credentials,
    Token,
    basic_authorization,
    build_token_request,
    parse_challenges,
    parse_token_response,
    pick_challenge,
    repository_scope,
)
from image.registry import error_words, parse_content_range, parse_retry_after

# -- WWW-Authenticate ------------------------------------------------------------


def test_docker_hub_challenge():
    h = (
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/busybox:pull"'
    )
    assert parse_challenges(h) == [
        Challenge(
            "bearer",
            {
                "realm": "https://auth.docker.io/token",
                "service": "registry.docker.io",
                "scope": "repository:library/busybox:pull",
            },
        )
    ]


def test_quoted_commas_spaces_and_escapes():
    (c,) = parse_challenges(
        r'Bearer realm="https://a/t?x=1,2", scope="repository:a:pull repository:b:pull", error="say \"hi\""'
    )
    assert c.params == {
        "realm": "https://a/t?x=1,2",
        "scope": "repository:a:pull repository:b:pull",
        "error": 'say "hi"',
    }


def test_basic():
    assert parse_challenges('Basic realm="Registry Realm"') == [Challenge("basic", {"realm": "Registry Realm"})]
    assert parse_challenges("basic") == [Challenge("basic", {})]


def test_case_and_whitespace():
    (c,) = parse_challenges('  BEARER   Realm = "r" ,  SERVICE=svc  ')
    assert c == Challenge("bearer", {"realm": "r", "service": "svc"})


def test_unquoted_url_realm():
    (c,) = parse_challenges("Bearer realm=https://reg.example/token,service=reg.example")
    assert c.params == {"realm": "https://reg.example/token", "service": "reg.example"}


def test_several_challenges_in_one_value_and_across_values():
    got = parse_challenges(['Basic realm="a, b", Bearer realm="x" , scope="s"', "Negotiate abc==, Digest nonce=1"])
    assert [c.scheme for c in got] == ["basic", "bearer", "negotiate", "digest"]
    assert got[0].params == {"realm": "a, b"}
    assert got[1].params == {"realm": "x", "scope": "s"}
    assert got[3].params == {"nonce": "1"}


def test_malformed_tails_are_dropped():
    assert parse_challenges('Bearer realm="unterminated') == [Challenge("bearer", {})]
    assert parse_challenges('Bearer service="a", realm="unterminated') == [Challenge("bearer", {"service": "a"})]
    assert parse_challenges("") == []
    assert parse_challenges("/garbage") == []


def test_pick_prefers_bearer_then_basic():
    cs = parse_challenges(['Basic realm="b"', "Negotiate", 'Bearer realm="t"'])
    assert pick_challenge(cs).scheme == "bearer"
    assert pick_challenge(parse_challenges(["Negotiate", "Basic"])).scheme == "basic"
    assert pick_challenge(parse_challenges("Negotiate")) is None


# -- credentials and token requests -------------------------------------------------


def test_credentials_basic_from_fields_or_auth():
    assert Credentials("alice", "wonderland").basic() == ("alice", "wonderland")
    auth = base64.b64encode(b"bob:pa:ss").decode()
    assert Credentials(auth=auth).basic() == ("bob", "pa:ss")
    assert Credentials(identity_token="t").basic() is None
    with pytest.raises(AuthError, match="base64"):
        Credentials(auth="!!!").basic()
    with pytest.raises(AuthError, match="user:password"):
        Credentials(auth=base64.b64encode(b"nocolon").decode()).basic()


def test_credentials_repr_hides_secrets():
    text = repr(Credentials("alice", "wonderland", identity_token="tok"))
    assert "alice" in text and "wonderland" not in text and "tok" not in text


def test_scope():
    assert repository_scope("library/busybox") == "repository:library/busybox:pull"
    assert repository_scope("a/b", ("pull", "push")) == "repository:a/b:pull,push"


BEARER = Challenge(
    "bearer", {"realm": "https://auth.example/token?x=1", "service": "reg", "scope": "repository:p:pull"}
)


def query(url):
    return urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query)


def test_anonymous_token_request():
    r = build_token_request(BEARER, "repository:p:pull", None)
    assert r.method == "GET" and r.form is None and "Authorization" not in r.headers
    assert r.url.startswith("https://auth.example/token?")
    assert query(r.url) == [("x", "1"), ("service", "reg"), ("scope", "repository:p:pull")]


def test_password_token_request_uses_basic_auth():
    r = build_token_request(BEARER, "repository:q:pull", Credentials("alice", "wonderland"))
    assert r.method == "GET"
    assert r.headers["Authorization"] == basic_authorization("alice", "wonderland")
    assert base64.b64decode(r.headers["Authorization"][6:]) == b"alice:wonderland"
    # Ours first; the registry's own scope is asked for too.
    assert [v for k, v in query(r.url) if k == "scope"] == ["repository:q:pull", "repository:p:pull"]


def test_identity_token_request_is_an_oauth_post():
    r = build_token_request(BEARER, "repository:p:pull", Credentials(identity_token="refresh-me"))
    assert r.method == "POST" and r.url == "https://auth.example/token?x=1"
    assert r.form == {
        "grant_type": "refresh_token",
        "refresh_token": "refresh-me",
        "client_id": "cricket",
        "service": "reg",
        "scope": "repository:p:pull",
    }
    assert "Authorization" not in r.headers


@pytest.mark.parametrize("realm", ["", "/token", "ftp://x/token", "https://"])
def test_unusable_realm(realm):
    with pytest.raises(AuthError, match="realm"):
        build_token_request(Challenge("bearer", {"realm": realm}), "repository:p:pull", None)


def test_token_response_fields():
    assert parse_token_response(b'{"token": "t1", "expires_in": 300}', 1000.0) == Token("t1", 1300.0)
    assert parse_token_response(b'{"access_token": "t2", "refresh_token": "r"}', 0.0) == Token("t2", 60.0, "r")
    # access_token wins when both are present, as for Docker Hub, which sends both alike.
    assert parse_token_response(b'{"token": "a", "access_token": "b"}', 0.0).value == "b"
    # Below the spec's 60 s floor, or nonsense, counts as 60 s.
    assert parse_token_response(b'{"token": "t", "expires_in": 5}', 0.0).expires_at == 60.0
    assert parse_token_response(b'{"token": "t", "expires_in": "x"}', 0.0).expires_at == 60.0


@pytest.mark.parametrize("body", [b"", b"<html>", b"[]", b"{}", b'{"token": ""}', b'{"token": 5}'])
def test_token_response_garbage(body):
    with pytest.raises(AuthError):
        parse_token_response(body, 0.0)


# -- error bodies ------------------------------------------------------------------


def test_registry_errors_body():
    body = json.dumps(
        {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown", "detail": {"Tag": "nope"}}]}
    ).encode()
    assert error_words(body) == 'MANIFEST_UNKNOWN manifest unknown ({"Tag":"nope"})'


def test_several_errors_and_string_detail():
    body = json.dumps(
        {
            "errors": [
                {"code": "UNAUTHORIZED", "message": "authentication required", "detail": None},
                {"code": "DENIED", "message": "", "detail": "no access to private/x"},
            ]
        }
    ).encode()
    assert error_words(body) == "UNAUTHORIZED authentication required; DENIED (no access to private/x)"


def test_token_server_bodies():
    assert error_words(b'{"error": "invalid_grant", "error_description": "bad refresh token"}') == (
        "invalid_grant: bad refresh token"
    )
    assert error_words(b'{"details": "incorrect username or password"}') == "incorrect username or password"


def test_other_bodies():
    assert error_words(b"") == ""
    assert error_words(b"upstream\n  timed   out\n") == "upstream timed out"
    assert error_words(b'{"unexpected": true}') == '{"unexpected":true}'
    assert error_words(b"\xff" * 10) == "\ufffd" * 10
    long = error_words(b"x" * 5000)
    assert len(long) == 400 and long.endswith("...")


# -- Content-Range and Retry-After ---------------------------------------------------


@pytest.mark.parametrize(
    "value,want",
    [
        ("bytes 100-199/200", (100, 199, 200)),
        ("bytes 0-0/1", (0, 0, 1)),
        ("bytes 5-9/*", (5, 9, None)),
        ("BYTES 5-9/10", (5, 9, 10)),
        (None, None),
        ("", None),
        ("bytes */200", None),
        ("bytes 9-5/10", None),
        ("bytes 5-10/10", None),
        ("items 0-1/2", None),
        ("bytes 1-2", None),
        ("bytes a-b/c", None),
    ],
)
def test_content_range(value, want):
    assert parse_content_range(value) == want


def test_retry_after():
    now = 1_700_000_000.0
    assert parse_retry_after("7", now) == 7.0
    assert parse_retry_after(email.utils.formatdate(now + 12, usegmt=True), now) == pytest.approx(12.0)
    assert parse_retry_after(email.utils.formatdate(now - 50, usegmt=True), now) == 0.0
    assert parse_retry_after(None, now) is None
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after("-3", now) is None


# -- the Authorizer ------------------------------------------------------------------


class FakeTokenServer:
    def __init__(self, lifetime=300.0):
        self.requests = []
        self.lifetime = lifetime
        self.gate = None
        self.fail = None

    async def __call__(self, request, host):
        self.requests.append((request, host))
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise self.fail
        return Token(f"tok{len(self.requests)}", clock.now + self.lifetime)


class Clock:
    now = 1000.0

    def __call__(self):
        return self.now


clock = Clock()
SCOPE = "repository:p:pull"
CHALLENGE = ['Bearer realm="https://auth.example/token",service="reg"']


def run(coro):
    return asyncio.run(coro)


def test_nothing_is_sent_before_a_challenge():
    async def main():
        a = Authorizer(FakeTokenServer(), clock)
        assert await a.authorization("reg:5000", SCOPE, None) is None

    run(main())


def test_token_is_fetched_once_and_reused_until_it_expires():
    async def main():
        server = FakeTokenServer(lifetime=100)
        a = Authorizer(server, clock)
        assert await a.challenged("reg:5000", CHALLENGE, SCOPE, None, None) == "Bearer tok1"
        assert await a.authorization("reg:5000", SCOPE, None) == "Bearer tok1"
        assert len(server.requests) == 1
        assert server.requests[0][1] == "reg:5000"
        clock.now += 99  # within the renewal margin
        assert await a.authorization("reg:5000", SCOPE, None) == "Bearer tok2"
        # Another scope and other credentials each get their own token.
        assert await a.authorization("reg:5000", "repository:q:pull", None) == "Bearer tok3"
        assert await a.authorization("reg:5000", SCOPE, Credentials("alice", "x")) == "Bearer tok4"
        assert await a.authorization("reg:5000", SCOPE, None) == "Bearer tok2"
        # Another host has not challenged yet.
        assert await a.authorization("other:5000", SCOPE, None) is None

    run(main())


def test_concurrent_requests_share_one_fetch():
    async def main():
        server = FakeTokenServer()
        server.gate = asyncio.Event()
        a = Authorizer(server, clock)
        waiting = [asyncio.ensure_future(a.challenged("reg", CHALLENGE, SCOPE, None, None)) for _ in range(5)]
        await asyncio.sleep(0)
        waiting[0].cancel()  # one giving up does not spoil it for the others
        server.gate.set()
        got = await asyncio.gather(*waiting[1:])
        assert got == ["Bearer tok1"] * 4 and len(server.requests) == 1

    run(main())


def test_refused_token_is_replaced():
    async def main():
        server = FakeTokenServer()
        a = Authorizer(server, clock)
        first = await a.challenged("reg", CHALLENGE, SCOPE, None, None)
        again = await a.challenged("reg", CHALLENGE, SCOPE, None, first)
        assert (first, again) == ("Bearer tok1", "Bearer tok2")

    run(main())


def test_failed_fetch_is_not_cached():
    async def main():
        server = FakeTokenServer()
        server.fail = RuntimeError("token server down")
        a = Authorizer(server, clock)
        with pytest.raises(RuntimeError):
            await a.challenged("reg", CHALLENGE, SCOPE, None, None)
        server.fail = None
        assert await a.authorization("reg", SCOPE, None) == "Bearer tok2"

    run(main())


def test_basic_challenge():
    async def main():
        a = Authorizer(FakeTokenServer(), clock)
        assert await a.challenged("reg", ['Basic realm="r"'], SCOPE, None, None) is None
        creds = Credentials("alice", "wonderland")
        want = "Basic " + base64.b64encode(b"alice:wonderland").decode()
        assert await a.challenged("reg", ['Basic realm="r"'], SCOPE, creds, None) == want
        assert await a.authorization("reg", SCOPE, creds) == want

    run(main())


def test_registry_token_is_sent_as_it_is():
    async def main():
        server = FakeTokenServer()
        a = Authorizer(server, clock)
        got = await a.challenged("reg", CHALLENGE, SCOPE, Credentials(registry_token="given"), None)
        assert got == "Bearer given" and server.requests == []

    run(main())


def test_unsupported_challenge():
    async def main():
        a = Authorizer(FakeTokenServer(), clock)
        assert await a.challenged("reg", ["Negotiate"], SCOPE, None, None) is None
        assert await a.challenged("reg", [], SCOPE, None, None) is None

    run(main())


def test_a_challenges_scope_is_not_carried_to_other_repositories():
    async def main():
        server = FakeTokenServer()
        a = Authorizer(server, clock)
        challenge = ['Bearer realm="https://auth.example/token",service="reg",scope="repository:a:pull"']
        await a.challenged("reg", challenge, "repository:a:pull", None, None)
        await a.authorization("reg", "repository:b:pull", None)
        first, second = (urllib.parse.parse_qs(urllib.parse.urlsplit(r.url).query) for r, _ in server.requests)
        assert first["scope"] == ["repository:a:pull"]
        assert second["scope"] == ["repository:b:pull"] and second["service"] == ["reg"]

    run(main())
