"""python -m fuzz.minimize TARGET ARTIFACT [OUT]: the smallest input found that fails TARGET's check
the same way as ARTIFACT (same exception type, raised from the same line), for a regression test.

libFuzzer's own -minimize_crash runs the target again as a program, which a module run with -m
is not; this does it in-process, by deleting chunks (halving their size down to one byte) for as
long as the failure stays the same. The target's check runs without atheris."""
from __future__ import annotations

import importlib
import sys
import traceback

from fuzz import TARGETS
from fuzz.harness import guarded


def _failure(one_input, data: bytes) -> tuple[str, str, int] | None:
    """(exception type, file, line) where one input fails, or None if it passes."""
    try:
        one_input(data)
    except Exception as e:
        frame = traceback.extract_tb(e.__traceback__)[-1]
        return type(e).__name__, frame.filename, frame.lineno or 0
    return None


def minimize(target: str, data: bytes, budget: int = 20_000) -> bytes:
    module = importlib.import_module(f"fuzz.{target}")
    one_input = guarded(module.check, module.EXPECTED)
    want = _failure(one_input, data)
    if want is None:
        raise SystemExit(f"{target}: the input does not fail: nothing to minimize")
    size = max(1, len(data) // 2)
    while size >= 1 and budget > 0:
        at, shrunk = 0, False
        while at < len(data) and budget > 0:
            candidate = data[:at] + data[at + size:]
            budget -= 1
            if candidate and _failure(one_input, candidate) == want:
                data, shrunk = candidate, True
            else:
                at += size
        if not shrunk:
            size //= 2
    return data


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3) or argv[0] not in TARGETS:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[1], "rb") as f:
        data = f.read()
    small = minimize(argv[0], data)
    out = argv[2] if len(argv) == 3 else argv[1] + ".min"
    with open(out, "wb") as f:
        f.write(small)
    print(f"{len(data)} -> {len(small)} bytes: {out}\n{small!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
