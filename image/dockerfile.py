"""Dockerfiles: the parser, and the word rules (variable expansion, quoting) instructions use.

parse() turns the text into stages of instructions and checks what can be checked before a
build starts: keywords, flags, argument counts, stage names, the shape of ENV/LABEL/ARG and
HEALTHCHECK. It expands nothing: a stage's variables are only known while it builds, so the
builder calls expand(), words(), key_values() and arg_declarations() with the environment of
the moment. The rules are those of Docker's Dockerfile reference.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal

KEYWORDS = frozenset(
    "FROM RUN CMD LABEL MAINTAINER EXPOSE ENV ADD COPY ENTRYPOINT VOLUME USER WORKDIR ARG ONBUILD "
    "STOPSIGNAL HEALTHCHECK SHELL".split()
)
# The flags each instruction takes; any other leading --flag is an error.
_FLAGS: dict[str, frozenset[str]] = {
    "FROM": frozenset({"platform"}),
    "RUN": frozenset({"network"}),
    "COPY": frozenset({"from", "chown", "chmod", "link"}),
    # ADD reads from the context or a URL, never from another stage, so no --from.
    "ADD": frozenset({"chown", "chmod", "link"}),
    "HEALTHCHECK": frozenset({"interval", "timeout", "start-period", "start-interval", "retries"}),
}
_EXEC_FORM = frozenset({"RUN", "CMD", "ENTRYPOINT", "SHELL", "VOLUME", "COPY", "ADD"})
_NOT_TRIGGERS = frozenset({"ONBUILD", "FROM", "MAINTAINER"})
_STAGE_NAME = re.compile(r"[a-z][a-z0-9-_.]*")
# A stage called "scratch" would make `FROM scratch` mean two things.
_RESERVED_STAGE_NAMES = frozenset({"scratch"})
_DIRECTIVE = re.compile(r"#\s*([A-Za-z][A-Za-z0-9]*)\s*=\s*(.+?)\s*")
_DIRECTIVES = frozenset({"escape", "syntax"})
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|[0-9]+")
_Args = list[tuple[str, str | None]]  # names and values, None for an ARG without a default


class DockerfileError(ValueError):
    """A Dockerfile the builder cannot use; line 0 means the caller knows the line better."""

    def __init__(self, line: int, message: str):
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.message = message


@dataclass
class Instruction:
    """One instruction. `text` is as written, continuation lines joined (for history and errors);
    `args` is what follows the keyword and its flags; `exec_form` the argv of a JSON array."""

    keyword: str
    line: int
    text: str
    args: str
    flags: dict[str, str] = field(default_factory=dict)
    exec_form: list[str] | None = None


@dataclass
class Stage:
    """A FROM and what follows it up to the next; `base` and `platform` are not expanded yet."""

    index: int
    base: str
    name: str
    platform: str
    line: int
    instructions: list[Instruction] = field(default_factory=list)


@dataclass
class Dockerfile:
    global_args: list[Instruction]
    stages: list[Stage]
    escape: str


# -- The file: directives, logical lines, stages ---------------------------------------------


def parse(text: str) -> Dockerfile:
    lines = [line.removesuffix("\r") for line in text.removeprefix("\ufeff").split("\n")]
    escape = _escape_directive(lines)
    global_args: list[Instruction] = []
    stages: list[Stage] = []
    for number, joined in _logical_lines(lines, escape):
        inst = parse_instruction(joined, number, escape)
        if inst.keyword == "FROM":
            stages.append(_stage(inst, len(stages), {s.name for s in stages}))
        elif stages:
            stages[-1].instructions.append(inst)
        elif inst.keyword == "ARG":
            global_args.append(inst)
        else:
            raise DockerfileError(number, f"{inst.keyword} before the first FROM (only ARG may come before it)")
    if not stages:
        raise DockerfileError(1, "no FROM instruction: a Dockerfile needs at least one stage")
    return Dockerfile(global_args, stages, escape)


def _escape_directive(lines: list[str]) -> str:
    """The escape character the directives at the top of the file choose."""
    seen: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        match = _DIRECTIVE.fullmatch(line.strip())
        # The first line that is not a known directive ends them, be it a comment or not.
        if not match or match[1].lower() not in _DIRECTIVES:
            break
        name = match[1].lower()
        if name in seen:
            raise DockerfileError(number, f"the {name} parser directive is given more than once")
        if name == "escape" and match[2] not in ("\\", "`"):
            raise DockerfileError(number, f"invalid escape character {match[2]!r}: it must be \\ or `")
        seen[name] = match[2]
    return seen.get("escape", "\\")


def _logical_lines(lines: list[str], escape: str) -> Iterator[tuple[int, str]]:
    """(first line number, text) of each instruction, continuation lines joined as written."""
    continued = re.compile(re.escape(escape) + r"[ \t]*$")
    start, joined = 0, None
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        # Comment and blank lines are dropped, inside a continuation too, which carries on past them.
        if not stripped or stripped.startswith("#"):
            continue
        if joined is None:
            start, joined = number, ""
        match = continued.search(line)
        joined += line[: match.start()] if match else line
        if not match:
            yield start, joined
            joined = None
    if joined is not None and joined.strip():
        yield start, joined


def _stage(inst: Instruction, index: int, taken: set[str]) -> Stage:
    base, name = _from_parts(inst)
    if name and name in taken:
        raise DockerfileError(inst.line, f"duplicate stage name {name!r}")
    return Stage(index, base, name, inst.flags.get("platform", ""), inst.line)


def _from_parts(inst: Instruction) -> tuple[str, str]:
    """FROM's image and stage name ("" when unnamed)."""
    parts = inst.args.split()
    if len(parts) == 1:
        return parts[0], ""
    if len(parts) != 3 or parts[1].lower() != "as":
        raise DockerfileError(inst.line, "FROM takes an image and, optionally, AS name")
    name = parts[2].lower()
    if not _STAGE_NAME.fullmatch(name) or name in _RESERVED_STAGE_NAMES:
        raise DockerfileError(inst.line, f"invalid stage name {parts[2]!r}")
    return parts[0], name


# -- One instruction --------------------------------------------------------------------------


def parse_instruction(text: str, line: int = 1, escape: str = "\\") -> Instruction:
    text = text.strip()
    if not text:
        raise DockerfileError(line, "empty instruction")
    parts = text.split(None, 1)
    keyword, rest = parts[0].upper(), parts[1] if len(parts) > 1 else ""
    if keyword not in KEYWORDS:
        raise DockerfileError(line, f"unknown instruction: {keyword}")
    flags, args = _leading_flags(rest, keyword, line, escape)
    exec_form = _json_list(args) if keyword in _EXEC_FORM else None
    inst = Instruction(keyword, line, text, args, flags, exec_form)
    _check(inst, escape)
    return inst


def _leading_flags(rest: str, keyword: str, line: int, escape: str) -> tuple[dict[str, str], str]:
    """The --name[=value] words before the arguments, and the arguments; `--` ends the flags."""
    flags: dict[str, str] = {}
    pos = 0
    while True:
        pos = _skip_space(rest, pos)
        if not rest.startswith("--", pos):
            break
        word, pos = _word_at(rest, pos, escape, keep=False)
        if word == "--":
            break
        name, _, value = word[2:].partition("=")
        if name not in _FLAGS.get(keyword, ()):
            raise DockerfileError(line, f"unknown flag for {keyword}: --{name}")
        if name in flags:
            raise DockerfileError(line, f"flag --{name} given twice")
        flags[name] = value
    return flags, rest[pos:].strip()


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


def _word_at(text: str, pos: int, escape: str, keep: bool) -> tuple[str, int]:
    """The word at `pos`, up to whitespace outside quotes, and where it ends. Unless `keep`,
    its quotes and escape characters are taken out (a flag's value: --chown="a b")."""
    out: list[str] = []
    quote = ""
    while pos < len(text) and (quote or not text[pos].isspace()):
        ch = text[pos]
        if ch == escape and quote != "'" and pos + 1 < len(text):
            pos += 1
            out.append(ch + text[pos] if keep else text[pos])
        elif ch == quote or (ch in "'\"" and not quote):
            quote = "" if ch == quote else ch
            out.append(ch if keep else "")
        else:
            out.append(ch)
        pos += 1
    return "".join(out), pos


def _json_list(args: str) -> list[str] | None:
    """The exec form's argv when `args` is a JSON array of strings; None means the shell form."""
    if not args.startswith("["):
        return None
    try:
        value = json.loads(args)
    except (ValueError, RecursionError):
        return None
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    return None


def _check(inst: Instruction, escape: str) -> None:
    """What can be known wrong about one instruction before anything is expanded."""
    kw = inst.keyword
    if not inst.args:
        raise DockerfileError(inst.line, f"{kw} requires at least one argument")
    if kw == "FROM":
        _from_parts(inst)
    elif kw in ("COPY", "ADD"):
        operands = inst.exec_form if inst.exec_form is not None else inst.args.split()
        if len(operands) < 2:
            raise DockerfileError(inst.line, f"{kw} requires at least two arguments: sources and a destination")
    elif kw == "SHELL" and not inst.exec_form:
        raise DockerfileError(inst.line, 'SHELL requires a non-empty JSON array, e.g. SHELL ["/bin/sh", "-c"]')
    elif kw in ("ENV", "LABEL"):
        _raw_pairs(inst, escape)
    elif kw == "ARG":
        _assignments(inst, escape)
    elif kw == "HEALTHCHECK":
        healthcheck(inst)
    elif kw == "ONBUILD":
        trigger = parse_instruction(inst.args, inst.line, escape)
        if trigger.keyword in _NOT_TRIGGERS:
            raise DockerfileError(inst.line, f"{trigger.keyword} is not allowed as an ONBUILD trigger")


# -- Words: expansion and quoting -------------------------------------------------------------


class _Words:
    """Collects the words of a line as the lexer produces pieces of it."""

    def __init__(self) -> None:
        self.words: list[str] = []
        self._current: list[str] = []
        self._open = False  # a word has begun, perhaps as an empty "" that still counts

    def add(self, text: str, split: bool) -> None:
        """Add a piece; whitespace in it ends words when `split` (not so in quotes or escaped)."""
        if not split:
            self._current.append(text)
            self._open = True
            return
        for ch in text:
            if not ch.isspace():
                self._current.append(ch)
                self._open = True
            elif self._open:
                self.end()

    def end(self) -> None:
        if self._open:
            self.words.append("".join(self._current))
        self._current, self._open = [], False


class _Lexer:
    """Docker's shell-word rules over one string: quotes, the escape character and $variables."""

    def __init__(self, text: str, env: Mapping[str, str], escape: str):
        self.text, self.env, self.escape = text, env, escape
        self.pos = 0

    def scan(self, sink: _Words | None, stop: str = "") -> str:
        """The text up to `stop` (consumed) or the end, processed; its words go to `sink`."""
        out: list[str] = []
        text = self.text
        while self.pos < len(text):
            ch = text[self.pos]
            if stop and ch == stop:
                self.pos += 1
                return "".join(out)
            if ch in "'\"":
                piece, split = self._single() if ch == "'" else self._double(), False
            elif ch == "$":
                # What a variable holds is split into words, as a shell would.
                piece, split = self._dollar(), True
            elif ch == self.escape:
                # An escape character at the very end escapes nothing and is dropped.
                if self.pos + 1 == len(text):
                    self.pos += 1
                    continue
                piece, split = text[self.pos + 1], False
                self.pos += 2
            else:
                piece, split = ch, True
                self.pos += 1
            out.append(piece)
            if sink is not None:
                sink.add(piece, split)
        if stop:
            raise DockerfileError(0, f"missing {stop!r} in {text!r}")
        return "".join(out)

    def _single(self) -> str:
        end = self.text.find("'", self.pos + 1)
        if end < 0:
            raise DockerfileError(0, f"unterminated single quote in {self.text!r}")
        piece = self.text[self.pos + 1 : end]
        self.pos = end + 1
        return piece

    def _double(self) -> str:
        out: list[str] = []
        text = self.text
        self.pos += 1
        while self.pos < len(text) and text[self.pos] != '"':
            ch = text[self.pos]
            if ch == "$":
                out.append(self._dollar())
                continue
            # Inside double quotes the escape character only escapes ", $ and itself.
            if ch == self.escape and text[self.pos + 1 : self.pos + 2] in ('"', "$", self.escape):
                self.pos += 1
                ch = text[self.pos]
            out.append(ch)
            self.pos += 1
        if self.pos >= len(text):
            raise DockerfileError(0, f"unterminated double quote in {text!r}")
        self.pos += 1
        return "".join(out)

    def _dollar(self) -> str:
        self.pos += 1
        if self.text.startswith("{", self.pos):
            self.pos += 1
            return self._braced()
        match = _NAME.match(self.text, self.pos)
        if not match:
            return "$"
        self.pos = match.end()
        return self.env.get(match[0], "")

    def _braced(self) -> str:
        """${NAME}, ${NAME:-word}, ${NAME-word}, ${NAME:+word}, ${NAME+word}, ${NAME:?word}, ${NAME?word}."""
        match = _NAME.match(self.text, self.pos)
        if not match:
            raise DockerfileError(0, f"bad substitution in {self.text!r}")
        name, self.pos = match[0], match.end()
        op = self.text[self.pos : self.pos + 1]
        self.pos += 1
        if not op:
            raise DockerfileError(0, f"missing '}}' in {self.text!r}")
        if op == "}":
            return self.env.get(name, "")
        colon = op == ":"
        if colon:
            op = self.text[self.pos : self.pos + 1]
            self.pos += 1
        if op not in ("-", "+", "?"):
            raise DockerfileError(0, f"bad substitution in {self.text!r}: unsupported modifier {op!r}")
        word = self.scan(None, stop="}")
        value = self.env.get(name)
        # With the colon an empty value counts as unset.
        if value is not None and (value or not colon):
            return word if op == "+" else value
        if op == "?":
            raise DockerfileError(0, f"{name}: {word or 'is required but not set'}")
        return word if op == "-" else ""


def expand(word: str, env: Mapping[str, str], escape: str = "\\") -> str:
    return _Lexer(word, env, escape).scan(None)


def words(text: str, env: Mapping[str, str], escape: str = "\\") -> list[str]:
    sink = _Words()
    _Lexer(text, env, escape).scan(sink)
    sink.end()
    return sink.words


def _raw_words(text: str, escape: str) -> list[str]:
    """`text` split on whitespace outside quotes, every character kept (quotes and escapes too)."""
    out = []
    pos = _skip_space(text, 0)
    while pos < len(text):
        word, pos = _word_at(text, pos, escape, keep=True)
        out.append(word)
        pos = _skip_space(text, pos)
    return out


def _assignments(inst: Instruction, escape: str) -> _Args:
    """The `name[=value]` words of ENV, LABEL or ARG as written (value None without "=")."""
    out: _Args = []
    for item in _raw_words(inst.args, escape):
        key, eq, value = item.partition("=")
        if not key:
            raise DockerfileError(inst.line, f"{inst.keyword}: a name can not be blank ({item!r})")
        out.append((key, value if eq else None))
    return out


def _raw_pairs(inst: Instruction, escape: str) -> list[tuple[str, str]]:
    """ENV/LABEL's (key, value) pairs as written: `k=v k2="v 2"`, or the legacy `KEY rest of line`."""
    if "=" not in _raw_words(inst.args, escape)[0]:
        parts = inst.args.split(None, 1)
        if len(parts) < 2:
            raise DockerfileError(inst.line, f"{inst.keyword} {parts[0]} needs a value (or the form {parts[0]}=value)")
        return [(parts[0], parts[1])]
    pairs = _assignments(inst, escape)
    for key, value in pairs:
        if value is None:
            raise DockerfileError(inst.line, f"{inst.keyword}: {key!r} is not of the form name=value")
    return [(key, value or "") for key, value in pairs]


def _expanded(inst: Instruction, pairs: Iterable[tuple[str, str | None]], env: Mapping[str, str], escape: str) -> _Args:
    """Names and values expanded, an error from either placed on the instruction's line."""
    out: _Args = []
    try:
        for key, value in pairs:
            name = expand(key, env, escape)
            if not name:
                raise DockerfileError(0, f"{key!r} expands to a blank name")
            out.append((name, None if value is None else expand(value, env, escape)))
    except DockerfileError as e:
        raise DockerfileError(inst.line, f"{inst.keyword}: {e.message}") from None
    return out


def key_values(inst: Instruction, env: Mapping[str, str], escape: str = "\\") -> list[tuple[str, str]]:
    return [(key, value or "") for key, value in _expanded(inst, _raw_pairs(inst, escape), env, escape)]


def arg_declarations(inst: Instruction, env: Mapping[str, str], escape: str = "\\") -> _Args:
    return _expanded(inst, _assignments(inst, escape), env, escape)


# -- HEALTHCHECK ------------------------------------------------------------------------------

_HEALTH_DURATIONS = {"interval": "Interval", "timeout": "Timeout", "start-period": "StartPeriod",
                     "start-interval": "StartInterval"}
_MIN_HEALTH_DURATION = 1_000_000  # Docker refuses intervals under a millisecond (but 0: the default)


def healthcheck(inst: Instruction) -> dict:
    """The image config's Healthcheck object for a HEALTHCHECK instruction."""
    parts = inst.args.split(None, 1)
    kind, command = (parts[0].upper() if parts else ""), (parts[1] if len(parts) > 1 else "")
    if kind == "NONE":
        if command:
            raise DockerfileError(inst.line, "HEALTHCHECK NONE takes no arguments")
        return {"Test": ["NONE"]}
    if kind != "CMD":
        raise DockerfileError(inst.line, f"HEALTHCHECK takes NONE or CMD, not {kind!r}")
    argv = _json_list(command)
    if not command or argv == []:
        raise DockerfileError(inst.line, "HEALTHCHECK CMD needs a command")
    config: dict = {"Test": ["CMD", *argv] if argv is not None else ["CMD-SHELL", command]}
    # An option given as zero means Docker's default, which the config says by leaving it out.
    for flag, key in _HEALTH_DURATIONS.items():
        if inst.flags.get(flag):
            ns = duration_ns(inst.flags[flag], inst.line)
            if 0 < ns < _MIN_HEALTH_DURATION:
                raise DockerfileError(inst.line, f"HEALTHCHECK --{flag} can not be less than 1ms")
            if ns:
                config[key] = ns
    retries = inst.flags.get("retries", "")
    if retries:
        if not re.fullmatch(r"\+?[0-9]+", retries):
            raise DockerfileError(inst.line, f"HEALTHCHECK --retries must be a whole number >= 0, not {retries!r}")
        if int(retries):
            config["Retries"] = int(retries)
    return config


_UNITS = {"ns": 1, "us": 10**3, "µs": 10**3, "μs": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
_NUMBER = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_UNIT = "(?:ns|us|µs|μs|ms|s|m|h)"
_DURATION = re.compile(rf"[+-]?(?:(?:{_NUMBER}{_UNIT})+|0)")
_DURATION_PART = re.compile(rf"({_NUMBER})({_UNIT})")


def duration_ns(text: str, line: int) -> int:
    """Nanoseconds in a Go duration ("1m30s", "1.5h", "500ms", "0"); negative ones are refused."""
    if not _DURATION.fullmatch(text):
        raise DockerfileError(line, f"invalid duration {text!r}")
    # Decimal keeps "1.1h" exact; Go too drops only the fraction of a nanosecond.
    ns = int(sum(Decimal(number) * _UNITS[unit] for number, unit in _DURATION_PART.findall(text)))
    if text.startswith("-") and ns:
        raise DockerfileError(line, f"duration {text!r} can not be negative")
    if ns >= 1 << 63:
        raise DockerfileError(line, f"duration {text!r} is too long")
    return ns
