"""Coverage-guided fuzzing of every parser that reads untrusted bytes, with atheris.

One target per module (fuzz/<target>.py), each with a committed seed corpus
(fuzz/corpus/<target>/, written by `python -m fuzz.seeds`), run by `python -m fuzz`:

    python -m fuzz [--seconds N] [--work DIR] [target ...]

Each target runs for N seconds in a process of its own, so that a crash is reported and the
others still run, and gets one line: executions, and findings (an exception its parser does
not document, or an input slower than fuzz/harness.py's bound, or a hang, or running out of
memory), each written to the work directory as an artifact that reproduces it:

    python -m fuzz.<target> <artifact>
"""

TARGETS = ("spdy", "websocket", "unpack", "manifest", "reference", "archive", "seccomp_profile", "cni_spec",
           "config", "framing")
# Targets that write files as root (device nodes, owners, trusted.* xattrs) and run confined to a
# read-only filesystem but for a tmpfs of their own (fuzz/harness.py, confine_writes).
ROOT_TARGETS = ("unpack", "archive")
