"""Fuzz target: image references (image/reference.py), as CRI requests and archives name images.

What parses must print as a reference that parses to the same thing (normalisation is done once)."""
from __future__ import annotations

from fuzz.harness import instrumented, run

with instrumented(__name__ == "__main__"):
    from image.reference import ReferenceError, parse_reference

EXPECTED = (ReferenceError,)


def check(data: bytes) -> None:
    try:
        text = data.decode("utf-8")  # a CRI string is UTF-8: protobuf refuses anything else
    except UnicodeDecodeError:
        return
    ref = parse_reference(text)
    again = parse_reference(str(ref))
    assert again == ref, f"{text!r} parses to {ref}, which parses to {again}"


if __name__ == "__main__":
    run(check, EXPECTED)
