"""The Dockerfile parser and its word rules, against the Dockerfile reference's examples and edges."""
import pytest

from image.dockerfile import (
    DockerfileError,
    Instruction,
    arg_declarations,
    duration_ns,
    expand,
    healthcheck,
    key_values,
    parse,
    parse_instruction,
    words,
)


def _error(text: str) -> DockerfileError:
    with pytest.raises(DockerfileError) as info:
        parse(text)
    return info.value


def _only(text: str) -> Instruction:
    """The one instruction of a stage's body."""
    [inst] = parse("FROM scratch\n" + text).stages[0].instructions
    return inst


# -- Directives ---------------------------------------------------------------------------------


def test_escape_directive_makes_the_backtick_the_escape_character():
    df = parse("# escape=`\nFROM windows\nRUN dir `\n  c:\\\nCOPY a\\b c:\\\n")
    assert df.escape == "`"
    run, copy = df.stages[0].instructions
    assert run.args == "dir   c:\\"
    assert copy.args == "a\\b c:\\"


def test_directives_are_case_insensitive_and_take_whitespace():
    assert parse("#  ESCAPE =  `\nFROM a\n").escape == "`"
    assert parse("# syntax=docker/dockerfile:1\n# escape=`\nFROM a\n").escape == "`"


def test_default_escape_is_backslash():
    assert parse("FROM a\n").escape == "\\"


@pytest.mark.parametrize(
    "text",
    [
        "FROM a\n# escape=`\n",  # after an instruction
        "\n# escape=`\nFROM a\n",  # after a blank line
        "# a comment\n# escape=`\nFROM a\n",  # after a plain comment
        "# unknown=1\n# escape=`\nFROM a\n",  # an unknown directive is a comment, and ends them
    ],
)
def test_a_directive_anywhere_but_the_top_is_a_comment(text):
    assert parse(text).escape == "\\"


def test_a_directive_given_twice_is_an_error():
    e = _error("# escape=`\n# ESCAPE=`\nFROM a\n")
    assert e.line == 2 and "escape" in e.message


def test_an_invalid_escape_is_an_error():
    assert _error("# escape=x\nFROM a\n").line == 1


# -- Lines: comments, continuations --------------------------------------------------------------


def test_comments_and_blank_lines_are_skipped_with_line_numbers_kept():
    df = parse("# top\n\nFROM a\n  # indented comment\n\nRUN x\n")
    assert df.stages[0].line == 3
    assert [(i.keyword, i.line) for i in df.stages[0].instructions] == [("RUN", 6)]


def test_continuation_joins_raw_text_and_drops_comments_and_blank_lines_inside():
    df = parse("FROM scratch\nRUN apk add x && \\\n    # a comment\n\n    echo y\nUSER u\n")
    run, user = df.stages[0].instructions
    assert run.text == "RUN apk add x &&     echo y"
    assert run.args == "apk add x &&     echo y"
    assert (run.line, user.line) == (2, 6)


def test_continuation_with_whitespace_after_the_escape():
    assert _only("RUN a\\  \t\nb\n").args == "ab"


def test_line_numbers_follow_continuations():
    e = _error("FROM a\nRUN a \\\n b \\\n c\nFOO x\n")
    assert (e.line, e.message) == (5, "unknown instruction: FOO")


def test_a_file_ending_inside_a_continuation_ends_the_instruction():
    assert _only("RUN a \\\n b \\").args == "a  b"


def test_crlf_and_byte_order_mark():
    df = parse("\ufeff# escape=`\r\nFROM a\r\nRUN x `\r\n y\r\n")
    assert df.escape == "`"
    assert df.stages[0].instructions[0].args == "x  y"


# -- Instructions ---------------------------------------------------------------------------------

EVERY_INSTRUCTION = [
    ("run echo hi", "RUN", "echo hi"),
    ("CMD echo hi", "CMD", "echo hi"),
    ('LABEL a="b c"', "LABEL", 'a="b c"'),
    ("MAINTAINER me <me@x>", "MAINTAINER", "me <me@x>"),
    ("EXPOSE 80/tcp 53/udp", "EXPOSE", "80/tcp 53/udp"),
    ("ENV A=1", "ENV", "A=1"),
    ("ADD a.tar /x/", "ADD", "a.tar /x/"),
    ("COPY a b /c/", "COPY", "a b /c/"),
    ("ENTRYPOINT /bin/sh", "ENTRYPOINT", "/bin/sh"),
    ("VOLUME /data /logs", "VOLUME", "/data /logs"),
    ("USER app:app", "USER", "app:app"),
    ("WORKDIR /src", "WORKDIR", "/src"),
    ("ARG V=1", "ARG", "V=1"),
    ("ONBUILD RUN make", "ONBUILD", "RUN make"),
    ("STOPSIGNAL SIGTERM", "STOPSIGNAL", "SIGTERM"),
    ("HEALTHCHECK NONE", "HEALTHCHECK", "NONE"),
    ('SHELL ["/bin/bash", "-c"]', "SHELL", '["/bin/bash", "-c"]'),
]


@pytest.mark.parametrize("text,keyword,args", EVERY_INSTRUCTION)
def test_every_instruction_parses(text, keyword, args):
    inst = _only(text + "\n")
    assert (inst.keyword, inst.args, inst.text, inst.line) == (keyword, args, text, 2)


@pytest.mark.parametrize("keyword", ["RUN", "CMD", "ENTRYPOINT", "SHELL", "VOLUME", "COPY", "ADD"])
def test_exec_form(keyword):
    assert _only(f'{keyword} [ "a", "b c" ]\n').exec_form == ["a", "b c"]


@pytest.mark.parametrize(
    "text",
    [
        "RUN echo [a, b]",  # not JSON
        'RUN ["a", 1]',  # not all strings
        'RUN ["a"] b',  # trailing text
        "RUN ['a']",  # single quotes are not JSON
        'ENV A=["x"]',  # ENV has no exec form
    ],
)
def test_shell_form(text):
    assert _only(text + "\n").exec_form is None


def test_exec_form_leaves_variables_alone():
    assert _only('CMD ["echo", "$HOME"]\n').exec_form == ["echo", "$HOME"]


def test_flags():
    inst = _only('COPY --from=build --chown="app user" --chmod=644 --link src /dst\n')
    assert inst.flags == {"from": "build", "chown": "app user", "chmod": "644", "link": ""}
    assert inst.args == "src /dst"
    assert _only("RUN --network=none make\n").flags == {"network": "none"}
    assert _only("COPY -- --weird /d\n").args == "--weird /d"


def test_flags_then_exec_form():
    inst = _only('COPY --chown=1:1 ["a b", "/c"]\n')
    assert (inst.flags, inst.exec_form) == ({"chown": "1:1"}, ["a b", "/c"])


@pytest.mark.parametrize(
    "text,flag",
    [
        ("RUN --mount=type=cache,target=/x make", "--mount"),
        ("ADD --from=a x y", "--from"),
        ("CMD --help", "--help"),
        ("FROM --chown=a b", "--chown"),
    ],
)
def test_an_unknown_flag_is_named(text, flag):
    e = _error(text if text.startswith("FROM") else "FROM a\n" + text)
    assert flag in e.message


def test_a_flag_given_twice_is_an_error():
    assert "--from" in _error("FROM a\nCOPY --from=a --from=b x y\n").message


@pytest.mark.parametrize(
    "body,keyword",
    [("RUN", "RUN"), ("COPY onlyone", "COPY"), ('COPY ["one"]', "COPY"), ("ADD x", "ADD"), ("ENV", "ENV"),
     ("WORKDIR", "WORKDIR"), ("USER   ", "USER"), ("RUN --network=none", "RUN")],
)
def test_missing_arguments(body, keyword):
    e = _error(f"FROM a\n\n{body}\n")
    assert e.line == 3 and keyword in e.message


def test_shell_requires_a_json_array():
    assert "SHELL" in _error("FROM a\nSHELL /bin/sh -c\n").message
    assert "SHELL" in _error("FROM a\nSHELL []\n").message


def test_keywords_are_case_insensitive_and_unknown_ones_named():
    assert _only("wOrKdIr /x\n").keyword == "WORKDIR"
    e = _error("FROM a\nRUN x\nfoo bar\n")
    assert (e.line, e.message, str(e)) == (3, "unknown instruction: FOO", "line 3: unknown instruction: FOO")


def test_parse_instruction_alone():
    inst = parse_instruction("COPY --from=0 a b", 7)
    assert (inst.keyword, inst.line, inst.flags, inst.args) == ("COPY", 7, {"from": "0"}, "a b")
    with pytest.raises(DockerfileError):
        parse_instruction("   ")
    with pytest.raises(DockerfileError) as info:
        parse_instruction("ONBUILD ONBUILD RUN x", 4)
    assert info.value.line == 4


# -- Stages and global ARGs -----------------------------------------------------------------------


def test_stages_and_global_args():
    df = parse(
        "ARG BASE=alpine\nARG V\n"
        "FROM --platform=$BUILDPLATFORM ${BASE}:3 AS Build\nRUN make\n"
        "from scratch\nCOPY --from=build /out /\n"
    )
    assert [a.args for a in df.global_args] == ["BASE=alpine", "V"]
    first, second = df.stages
    assert (first.index, first.base, first.name, first.platform, first.line) == (
        0, "${BASE}:3", "build", "$BUILDPLATFORM", 3)
    assert [i.keyword for i in first.instructions] == ["RUN"]
    assert (second.index, second.base, second.name, second.platform, second.line) == (1, "scratch", "", "", 5)
    assert [i.keyword for i in second.instructions] == ["COPY"]


def test_as_is_case_insensitive():
    assert parse("FROM a as x\n").stages[0].name == "x"


@pytest.mark.parametrize(
    "text,line",
    [
        ("RUN x\nFROM a\n", 1),  # only ARG before FROM
        ("ARG A\nENV B=1\nFROM a\n", 2),
        ("ARG A\n", 1),  # no FROM at all
        ("", 1),
        ("FROM\n", 1),
        ("FROM a b\n", 1),
        ("FROM a AS\n", 1),
        ("FROM a AS b c\n", 1),
        ("FROM a AS 1x\n", 1),  # a name starts with a letter
        ("FROM a AS b/c\n", 1),
        ("FROM a AS scratch\n", 1),  # reserved: FROM scratch would mean two things
        ("FROM a AS x\nRUN y\nFROM b AS X\n", 3),  # names are compared lower-cased
    ],
)
def test_stage_errors(text, line):
    assert _error(text).line == line


def test_stage_names_may_hold_digits_dashes_dots_underscores():
    assert parse("FROM a AS b-1.c_d\n").stages[0].name == "b-1.c_d"


# -- ONBUILD ----------------------------------------------------------------------------------------


def test_onbuild_keeps_the_trigger_text():
    assert _only("ONBUILD copy --from=x a b\n").args == "copy --from=x a b"


@pytest.mark.parametrize("trigger", ["ONBUILD RUN x", "FROM a", "MAINTAINER me", "FOO x", "COPY a", "RUN --bad x"])
def test_onbuild_triggers_are_checked(trigger):
    assert _error(f"FROM a\n\nONBUILD {trigger}\n").line == 3


# -- expand() -----------------------------------------------------------------------------------------

ENV = {"A": "a", "EMPTY": "", "SP": "x  y", "N": "n"}

EXPANSIONS = [
    ("$A", "a"),
    ("${A}b", "ab"),
    ("$Ab", ""),  # the name runs on
    ("pre-$A-post", "pre-a-post"),
    ("$UNSET", ""),
    ("${UNSET:-def}", "def"),
    ("${EMPTY:-def}", "def"),
    ("${EMPTY-def}", ""),
    ("${UNSET-def}", "def"),
    ("${A:-def}", "a"),
    ("${A:+alt}", "alt"),
    ("${EMPTY:+alt}", ""),
    ("${EMPTY+alt}", "alt"),
    ("${UNSET+alt}", ""),
    ("${UNSET:-${A:-x}-$N}", "a-n"),  # nested
    ("${UNSET:-'${A}'}", "${A}"),
    ('${UNSET:-"a b"}', "a b"),
    ("${A:?must be set}", "a"),
    ("'$A \"q\"'", '$A "q"'),
    ('"$A \'q\' ${N}"', "a 'q' n"),
    ('"a\\"b"', 'a"b'),
    ('"a\\$A"', "a$A"),
    ('"a\\\\b"', "a\\b"),
    ('"a\\nb"', "a\\nb"),  # inside double quotes only ", $ and the escape are escaped
    ("a\\nb", "anb"),
    ("\\$A", "$A"),
    ("'a\\b'", "a\\b"),
    ("a\\", "a"),
    ("$", "$"),
    ("$-x", "$-x"),
    ("a$ b", "a$ b"),
    ("$1", ""),
    ("100%$", "100%$"),
    ("$SP", "x  y"),
]


@pytest.mark.parametrize("word,expected", EXPANSIONS)
def test_expand(word, expected):
    assert expand(word, ENV) == expected


def test_expand_with_backtick_escape():
    assert expand("a`$A\\b", ENV, "`") == "a$A\\b"
    assert expand('"`"x"', ENV, "`") == '"x'


@pytest.mark.parametrize(
    "word",
    ["'abc", '"abc', "${A", "${A:-x", "${}", "${A:=x}", "${A%x}", "${UNSET:?}", "${EMPTY:?no}", "${UNSET?no}"],
)
def test_expand_errors(word):
    with pytest.raises(DockerfileError) as info:
        expand(word, ENV)
    assert info.value.line == 0


def test_required_variable_message():
    with pytest.raises(DockerfileError, match="EMPTY: give it a value"):
        expand("${EMPTY:?give it a value}", ENV)
    assert expand("${EMPTY?unused}", ENV) == ""


# -- words() --------------------------------------------------------------------------------------------

WORDS = [
    ("a b  c", ["a", "b", "c"]),
    ('"a b" c', ["a b", "c"]),
    ("'a b'c d", ["a bc", "d"]),
    ("a\\ b c", ["a b", "c"]),
    ('"" x', ["", "x"]),
    ("$EMPTY x", ["x"]),
    ("$SP z", ["x", "y", "z"]),  # an unquoted value splits
    ('"$SP" z', ["x  y", "z"]),
    ("${UNSET:-p q}", ["p", "q"]),
    ("  ", []),
    ("80/tcp $N", ["80/tcp", "n"]),
]


@pytest.mark.parametrize("text,expected", WORDS)
def test_words(text, expected):
    assert words(text, ENV) == expected


# -- key_values() and arg_declarations() ----------------------------------------------------------------


def test_key_values_pairs():
    inst = _only('ENV A=1 B="two words" C=$N D=\'$N\' E= F=x\\ y "G"="g"\n')
    assert key_values(inst, ENV) == [
        ("A", "1"), ("B", "two words"), ("C", "n"), ("D", "$N"), ("E", ""), ("F", "x y"), ("G", "g")]


def test_key_values_expands_keys():
    assert key_values(_only("LABEL $N.key=v\n"), ENV) == [("n.key", "v")]


def test_key_values_legacy_form_keeps_the_rest_of_the_line():
    inst = _only('ENV PATH /usr/local/bin:$PATH  "and more"\n')
    assert key_values(inst, {"PATH": "/bin"}) == [("PATH", "/usr/local/bin:/bin  and more")]
    assert key_values(_only("LABEL maintainer a b\n"), {}) == [("maintainer", "a b")]
    assert key_values(_only("ENV OPTS =x =y\n"), {}) == [("OPTS", "=x =y")]


@pytest.mark.parametrize("body", ["ENV A", "ENV A=1 B", "ENV =1", "LABEL a=b =c", "LABEL x"])
def test_key_values_shape_is_checked_at_parse_time(body):
    assert _error(f"FROM a\n{body}\n").line == 2


def test_key_values_errors_carry_the_line():
    inst = _only("ENV A=${X:?needed}\n")
    with pytest.raises(DockerfileError) as info:
        key_values(inst, {})
    assert info.value.line == 2 and "needed" in info.value.message
    with pytest.raises(DockerfileError):
        key_values(_only("ENV ${EMPTY}=1\n"), ENV)


def test_arg_declarations():
    inst = _only('ARG A B=2 C="$N x" D=\n')
    assert arg_declarations(inst, ENV) == [("A", None), ("B", "2"), ("C", "n x"), ("D", "")]
    assert arg_declarations(_only("ARG V=${UNSET:-${A}}\n"), ENV) == [("V", "a")]


def test_arg_with_blank_name_is_an_error():
    assert _error("ARG =1\nFROM a\n").line == 1


def test_escape_in_key_values_follows_the_directive():
    df = parse('# escape=`\nFROM a\nENV P="C:\\dir" Q=a` b\n')
    assert key_values(df.stages[0].instructions[0], {}, df.escape) == [("P", "C:\\dir"), ("Q", "a b")]


# -- HEALTHCHECK and durations ------------------------------------------------------------------------


def test_healthcheck_none():
    assert healthcheck(_only("HEALTHCHECK none\n")) == {"Test": ["NONE"]}


def test_healthcheck_shell_form_with_options():
    inst = _only(
        "HEALTHCHECK --interval=30s --timeout=1m30s --start-period=1.5s --start-interval=500ms --retries=3 "
        "CMD curl -f http://localhost/ || exit 1\n"
    )
    assert healthcheck(inst) == {
        "Test": ["CMD-SHELL", "curl -f http://localhost/ || exit 1"],
        "Interval": 30 * 10**9,
        "Timeout": 90 * 10**9,
        "StartPeriod": 1_500_000_000,
        "StartInterval": 500_000_000,
        "Retries": 3,
    }


def test_healthcheck_exec_form_and_only_given_options():
    inst = _only('HEALTHCHECK --timeout=3s cmd ["/bin/check", "-v"]\n')
    assert healthcheck(inst) == {"Test": ["CMD", "/bin/check", "-v"], "Timeout": 3 * 10**9}


def test_healthcheck_options_given_as_zero_are_left_out():
    # Zero is Docker's "use the default", which its image config says by omitting the field.
    inst = _only("HEALTHCHECK --interval=0s --retries=0 --timeout= CMD true\n")
    assert healthcheck(inst) == {"Test": ["CMD-SHELL", "true"]}


@pytest.mark.parametrize(
    "body",
    [
        "HEALTHCHECK",
        "HEALTHCHECK CMD",
        "HEALTHCHECK CMD []",
        "HEALTHCHECK RUN x",
        "HEALTHCHECK NONE x",
        "HEALTHCHECK --interval=5 CMD x",
        "HEALTHCHECK --interval=-5s CMD x",
        "HEALTHCHECK --timeout=10us CMD x",  # under Docker's 1ms minimum
        "HEALTHCHECK --retries=-1 CMD x",
        "HEALTHCHECK --retries=two CMD x",
        "HEALTHCHECK --port=80 CMD x",
    ],
)
def test_healthcheck_errors_at_parse_time(body):
    assert _error(f"FROM a\n{body}\n").line == 2


DURATIONS = [
    ("0", 0),
    ("30s", 30 * 10**9),
    ("1m30s", 90 * 10**9),
    ("1.5h", 5400 * 10**9),
    ("500ms", 500 * 10**6),
    ("10us", 10_000),
    ("10µs", 10_000),
    ("10μs", 10_000),
    ("7ns", 7),
    (".5s", 500 * 10**6),
    ("1.s", 10**9),
    ("+2m", 120 * 10**9),
    ("1h2m3s4ms5us6ns", 3723004005006),
    ("1.1h", 3960 * 10**9),
    ("-0s", 0),
]


@pytest.mark.parametrize("text,ns", DURATIONS)
def test_duration_ns(text, ns):
    assert duration_ns(text, 1) == ns


@pytest.mark.parametrize("text", ["", "5", "s", ".s", "1x", "1 s", "-1s", "1s-", "1sm", "3000000h"])
def test_duration_ns_errors(text):
    with pytest.raises(DockerfileError) as info:
        duration_ns(text, 9)
    assert info.value.line == 9
