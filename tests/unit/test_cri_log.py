"""The CRI log format on bytes."""
import pytest

from shim.cri_log import LogFormatter, timestamp

T = 1_700_000_000_123_456_789
STAMP = b"2023-11-14T22:13:20.123456789Z"


def lines(out: bytes) -> list[tuple[bytes, bytes, bytes]]:
    result = []
    for line in out.split(b"\n")[:-1]:
        stamp, stream, tag, content = line.split(b" ", 3)
        assert stamp == STAMP
        result.append((stream, tag, content))
    return result


def test_timestamp_has_nine_digits_in_utc():
    assert timestamp(T) == STAMP
    assert timestamp(1_700_000_000_000_000_000) == b"2023-11-14T22:13:20.000000000Z"


def test_full_lines_and_a_held_partial():
    f = LogFormatter("stdout")
    assert lines(f.feed(b"one\ntwo\nthr", T)) == [(b"stdout", b"F", b"one"), (b"stdout", b"F", b"two")]
    assert f.feed(b"ee", T) == b""
    assert lines(f.feed(b"\n", T)) == [(b"stdout", b"F", b"three")]


def test_crlf_is_a_line_end_and_a_lone_cr_is_content():
    f = LogFormatter("stderr")
    assert lines(f.feed(b"a\r\nb\rc\n\n", T)) == [(b"stderr", b"F", b"a"), (b"stderr", b"F", b"b\rc"),
                                                 (b"stderr", b"F", b"")]


def test_long_lines_are_cut_into_partials():
    f = LogFormatter("stdout", line_max=4)
    assert lines(f.feed(b"abcdefghij\n", T)) == [(b"stdout", b"P", b"abcd"), (b"stdout", b"P", b"efgh"),
                                                 (b"stdout", b"F", b"ij")]
    # Exactly line_max before the newline is one full line.
    assert lines(f.feed(b"wxyz\n", T)) == [(b"stdout", b"F", b"wxyz")]
    # Without a newline only whole parts beyond the limit go out.
    assert lines(f.feed(b"123456", T)) == [(b"stdout", b"P", b"1234")]
    assert lines(f.finish(T)) == [(b"stdout", b"P", b"56")]


def test_finish_writes_the_unterminated_rest_as_partial_and_nothing_twice():
    f = LogFormatter("stdout")
    f.feed(b"no newline", T)
    assert lines(f.finish(T)) == [(b"stdout", b"P", b"no newline")]
    assert f.finish(T) == b""


def test_split_anywhere_gives_the_same_lines():
    data = b"alpha\nbeta\r\n" + b"x" * 37 + b"\ngamma"
    whole = LogFormatter("stdout", line_max=16)
    expected = whole.feed(data, T) + whole.finish(T)
    for cut in range(len(data)):
        f = LogFormatter("stdout", line_max=16)
        assert f.feed(data[:cut], T) + f.feed(data[cut:], T) + f.finish(T) == expected


def test_stream_must_be_stdout_or_stderr():
    with pytest.raises(ValueError):
        LogFormatter("stdin")


def test_a_line_without_end_is_held_to_line_max_at_most():
    # A container that writes without newlines must not make its shim hold the output: every
    # whole line_max part goes out as it comes, and less than one part waits.
    f = LogFormatter("stdout", line_max=1000)
    out = b""
    for _ in range(200):
        out += f.feed(b"x" * 65536, T)
        assert len(f._pending) <= 1000
    parts = lines(out)
    assert {len(content) for _, _, content in parts} == {1000} and {tag for _, tag, _ in parts} == {b"P"}
    assert sum(len(content) for _, _, content in parts) + len(f._pending) == 200 * 65536
