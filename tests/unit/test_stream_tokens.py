"""One-time streaming tokens: good once, for a minute, and only so many at a time."""
import pytest

from cri.streaming.tokens import RequestCache, TokenError


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_a_token_is_good_once():
    cache = RequestCache()
    token = cache.insert("req")
    assert cache.consume(token) == "req"
    assert cache.consume(token) is None
    assert cache.consume("never-issued") is None


def test_a_token_expires():
    clock = Clock()
    cache = RequestCache(ttl=60, clock=clock)
    early, late = cache.insert("a"), None
    clock.now += 59
    late = cache.insert("b")
    clock.now += 1.5
    assert cache.consume(early) is None and cache.consume(late) == "b"


def test_only_so_many_wait():
    clock = Clock()
    cache = RequestCache(ttl=60, limit=2, clock=clock)
    cache.insert(1), cache.insert(2)
    with pytest.raises(TokenError):
        cache.insert(3)
    clock.now += 61  # expired ones make room
    assert cache.consume(cache.insert(4)) == 4
