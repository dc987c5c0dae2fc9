"""The plugins' iptables work: one read of the nat table, then one batch of changes.

Every iptables command costs a process and a full read of the ruleset (some
4 ms each with the nft backend), so a plugin call does not run one per rule:
it reads the table once with iptables-save, decides, and writes all its
changes in one `iptables-restore --noflush` transaction, which the kernel
applies whole or not at all. Every rule Cricket adds carries a comment naming
the network and container, and lives in a chain of that container's where it
can: removing the chain removes the pod's rules whole.
"""
from __future__ import annotations

import hashlib
import re
import subprocess

from cni.spec import IO_FAILURE, CniError

_WAIT = ["-w", "5"]  # wait for the xtables lock instead of failing when another writer holds it
_TIMEOUT = 30


def _run(argv: list[str], stdin: str | None = None) -> str:
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise CniError(IO_FAILURE, f"running {argv[0]}", str(e)) from None
    if done.returncode != 0:
        raise CniError(IO_FAILURE, f"{argv[0]} failed", (done.stderr.strip() + "\n" + (stdin or "")).strip())
    return done.stdout


def chain_name(prefix: str, network: str, container_id: str) -> str:
    """A per-container chain name within iptables' 28 characters, stable for the same pair."""
    digest = hashlib.sha512(f"{network}{container_id}".encode()).hexdigest()
    return f"{prefix}{digest[:28 - len(prefix)]}".upper()


def comment(network: str, container_id: str) -> list[str]:
    return ["-m", "comment", "--comment", f'name: "{network}" id: "{container_id}"']


def _quote(word: str) -> str:
    # iptables-restore reads double-quoted words with backslash escapes, as iptables-save writes them.
    if word and not re.search(r'[\s"\\]', word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Table:
    """A table as read now, and the changes to write to it in one transaction."""

    def __init__(self, name: str = "nat"):
        self.name = name
        self._rules: dict[str, list[str]] = {}  # chain -> its rules, each as saved after "-A <chain> "
        for line in _run(["iptables-save", "-t", name]).splitlines():
            if line.startswith(":"):
                self._rules.setdefault(line[1:].split()[0], [])
            elif line.startswith("-A "):
                chain, _, rule = line[3:].partition(" ")
                self._rules.setdefault(chain, []).append(rule)
        self._changes: list[str] = []

    def has_chain(self, chain: str) -> bool:
        return chain in self._rules

    def rules(self, chain: str) -> list[str]:
        """The rules of `chain` as read (not counting changes not yet committed)."""
        return list(self._rules.get(chain, ()))

    def jumps(self, chain: str, target: str) -> list[str]:
        """The rules of `chain` that jump to `target`."""
        return [r for r in self.rules(chain) if re.search(rf"(^| )-j {re.escape(target)}( |$)", r)]

    def reset_chain(self, chain: str) -> None:
        """Make `chain` exist and be empty (declaring a chain in a --noflush restore flushes it)."""
        self._changes.append(f":{chain} - [0:0]")

    def ensure_chain(self, chain: str) -> None:
        """Make `chain` exist, keeping its rules if it does."""
        if not self.has_chain(chain):
            self.reset_chain(chain)

    def append(self, chain: str, rule: list[str]) -> None:
        self._changes.append(f"-A {chain} " + " ".join(_quote(w) for w in rule))

    def delete(self, chain: str, saved_rule: str) -> None:
        """Remove a rule that rules() or jumps() returned."""
        self._changes.append(f"-D {chain} {saved_rule}")

    def delete_chain(self, chain: str) -> None:
        """Flush and remove `chain` if it exists; jumps to it must be deleted in the same batch."""
        if self.has_chain(chain):
            self._changes += [f"-F {chain}", f"-X {chain}"]

    def commit(self) -> None:
        # iptables-nft refuses (EBUSY) to remove a chain in the transaction that deletes the
        # rules jumping to it, so chains go in a second one: between the two they are empty
        # and nothing jumps to them.
        removals = [c for c in self._changes if c.startswith("-X ")]
        for batch in ([c for c in self._changes if not c.startswith("-X ")], removals):
            if batch:
                _run(["iptables-restore", *_WAIT, "--noflush"], "\n".join([f"*{self.name}", *batch, "COMMIT", ""]))
        self._changes = []
