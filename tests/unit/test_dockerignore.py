""".dockerignore matching, by Docker's rules: filepath.Match, `**`, parent directories, last match wins."""
import pytest

from image.dockerignore import Patterns, load

CASES = [
    # (patterns, path, ignored)
    ("a.txt", "a.txt", True),
    ("a.txt", "b.txt", False),
    ("a.txt", "sub/a.txt", False),  # patterns are anchored at the context root
    ("*.txt", "a.txt", True),
    ("*.txt", "sub/a.txt", False),  # * does not cross a "/"
    ("*/a.txt", "sub/a.txt", True),
    ("*/a.txt", "x/sub/a.txt", False),
    ("?.txt", "a.txt", True),
    ("?.txt", "ab.txt", False),
    ("a?b", "a/b", False),  # nor does ?
    ("[abc].txt", "b.txt", True),
    ("[abc].txt", "d.txt", False),
    ("[a-c].txt", "c.txt", True),
    ("[^a-c].txt", "c.txt", False),
    ("[^a-c].txt", "d.txt", True),
    ("[!a-c].txt", "d.txt", True),
    ("[!a-c].txt", "a.txt", False),
    ("[\\]]x", "]x", True),
    ("\\*.txt", "*.txt", True),
    ("\\*.txt", "a.txt", False),
    ("a+(b).txt", "a+(b).txt", True),  # regex characters are literal
    ("**", "any/thing/at/all", True),
    ("**/a.txt", "a.txt", True),  # ** matches zero directories too
    ("**/a.txt", "x/y/a.txt", True),
    ("x/**/a.txt", "x/a.txt", True),
    ("x/**/a.txt", "x/1/2/a.txt", True),
    ("x/**/a.txt", "y/1/a.txt", False),
    ("x/**", "x/1/2", True),
    ("x/**", "x", False),
    ("**/*.pyc", "deep/down/m.pyc", True),
    ("**.pyc", "deep/m.pyc", True),
    ("build", "build", True),
    ("build", "build/out/a.o", True),  # a matched directory covers its content
    ("build/", "build/a", True),
    ("/build", "build/a", True),  # a leading / is the context root
    ("./build/../dist", "dist/x", True),  # patterns are cleaned
    ("b*", "build/x/y", True),
    ("  spaced  ", "spaced", True),
    ("# comment", "# comment", False),
    ("", "anything", False),
]


@pytest.mark.parametrize("patterns,path,ignored", CASES)
def test_ignored(patterns, path, ignored):
    assert load(patterns).ignored(path) is ignored


def test_exceptions_take_files_back_after_a_directory_pattern():
    p = load("docs\n!docs/keep.md\n")
    assert p.ignored("docs/other.md")
    assert not p.ignored("docs/keep.md")
    assert p.ignored("docs")


def test_the_last_matching_pattern_decides():
    p = load("*.md\n!README*.md\nREADME-secret.md\n")
    assert p.ignored("a.md")
    assert not p.ignored("README.md")
    assert p.ignored("README-secret.md")
    assert not load("!a\na\n!a\n").ignored("a")
    assert load("!a\na\n").ignored("a")


def test_an_exception_for_a_directory_takes_back_its_content():
    p = load("*\n!src\n")
    assert p.ignored("Dockerfile.bak")
    assert not p.ignored("src/deep/file.py")


def test_comments_blank_lines_and_crlf():
    p = load("\ufeff# a comment\r\n\r\n  \r\n*.log\r\n")
    assert p.ignored("x.log")
    assert not p.ignored("# a comment")


def test_patterns_takes_lines():
    assert Patterns(["tmp", "!tmp/keep"]).ignored("tmp/x")
    assert not Patterns([]).ignored("x")


@pytest.mark.parametrize("bad", ["[", "a[b", "[]", "[z-a]", "[a-]", "x\\", "!"])
def test_malformed_patterns_are_errors(bad):
    with pytest.raises(ValueError, match="pattern"):
        load(bad + "\n")


def test_may_reinclude_under():
    p = load("vendor\n!vendor/keep/**\nnode_modules\n!*/pkg.json\n")
    assert p.may_reinclude_under("vendor")
    assert p.may_reinclude_under("vendor/keep")
    assert p.may_reinclude_under("vendor/keep/deep")
    assert not p.may_reinclude_under("vendor/other")
    assert p.may_reinclude_under("node_modules")  # !*/pkg.json may match node_modules/pkg.json
    assert not p.may_reinclude_under("node_modules/sub")


def test_may_reinclude_under_with_double_star_or_ancestor_exceptions():
    assert load("a\n!**/keep\n").may_reinclude_under("a/b/c")
    assert load("a/b\n!a\n").may_reinclude_under("a/b")
    assert not load("a\n").may_reinclude_under("a")
