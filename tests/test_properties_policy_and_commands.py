"""Properties of the parsers anyone can reach with text: the policy loader (arbitrary YAML,
text and bytes, as an organization's or a repository's file) and the `/moko` command parser
(arbitrary comment text). Never an unhandled exception; always a policy, or an invalid file
whose every problem has a line in the file; each input within 1 s and 64 MiB."""

from __future__ import annotations

import tracemalloc
import unicodedata
from datetime import timedelta

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from handlers.command_markdown import escape, holds_secret
from handlers.command_parsing import MAX_BODY_BYTES, NAMES, Command, InvalidCommand, parse_command
from policies.defaults import DEFAULT_POLICY
from policies.loader import PolicyError, load_policy_file, merge_overrides, parse_policy
from policies.model import Policy

MEMORY_LIMIT = 64 * 1024 * 1024
# Small enough that the whole suite stays fast, with a deadline per input.
BOUNDED = settings(
    max_examples=50,
    deadline=timedelta(seconds=1),
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

ORG_WITH_OVERRIDES = parse_policy("overrides: [repository, branches, branches.default]\n")

# Pieces of YAML that reach the loader's corners: anchors, aliases, merge keys, tags, flow
# and block nesting, the policy's own keys, and things that are not YAML at all.
YAML_PIECES = st.sampled_from(
    [
        "version: 1", "mode: dry-run", "repository:", "branches:", "scope:", "overrides:",
        "commands:", "has_wiki: true", "visibility: public", "name: default", "protection:",
        "protection: null", "- ", "-", ": ", ":", "  ", "    ", "\n", "\t", "[", "]", "{", "}", ",",
        "&a ", "&b ", "*a", "*b", "<<: ", "<<: *a", "<<: [*a, *b]", "!!binary aGk=", "!!str ",
        "!!python/object:os.system ", "!x ", "!!set ", "!!omap ", "2024-01-01", "0x1F", "1e999",
        "9" * 5000, "'quoted'", '"dq \\u0000"', "|\n  block", ">-\n  folded", "? ", "---",
        "...", "%YAML 1.1\n---\n", "# comment", "\x00", "\ufeff", "\u2028", "é", "\udcff",
    ]
)
YAML_TEXT = st.lists(st.one_of(YAML_PIECES, st.text(max_size=8)), max_size=60).map("".join)
JSON_LIKE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.sampled_from(["version", "mode", "repository", "branches", "scope",
                                       "overrides", "commands", "name", "protection", "has_wiki",
                                       "visibility", "include", "archived"]) | st.text(max_size=8),
                      children, max_size=5),
    max_leaves=15,
)
DUMPED = st.dictionaries(st.text(max_size=10), JSON_LIKE, max_size=6).map(
    lambda value: yaml.dump(value, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), allow_unicode=True)
)


def within_limits(function, *args):
    """Run ``function(*args)``; fail when it allocates more than MEMORY_LIMIT at its peak
    (the time limit is the deadline of the settings)."""
    tracemalloc.start()
    try:
        return function(*args)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < MEMORY_LIMIT, f"{peak} bytes at the peak"


def check_loaded(content: str | bytes) -> None:
    loaded = within_limits(load_policy_file, content, "moko.yml")
    text = content.decode("utf-8", "replace") if isinstance(content, bytes) else content
    # YAML's line breaks: \n, \r, NEL and the Unicode line and paragraph separators.
    last_line = sum(text.count(brk) for brk in ("\n", "\r", "\x85", "\u2028", "\u2029")) + 2
    if loaded.valid:
        assert isinstance(parse_policy(content), Policy)
        return
    for problem in loaded.problems:
        assert 1 <= problem.line <= last_line, problem
        assert str(problem).startswith(f"moko.yml:{problem.line}: ")
    try:
        parse_policy(content)
    except PolicyError as error:
        assert error.problems == list(loaded.problems)
    else:
        raise AssertionError("an invalid file gave a policy")


@BOUNDED
@given(YAML_TEXT)
def test_yaml_like_text_is_a_policy_or_an_invalid_file_with_lines(text):
    check_loaded(text)


@settings(BOUNDED, max_examples=30)
@given(DUMPED)
def test_any_yaml_document_is_a_policy_or_an_invalid_file_with_lines(text):
    check_loaded(text)


@BOUNDED
@given(st.text(max_size=2000))
def test_arbitrary_text_is_a_policy_or_an_invalid_file_with_lines(text):
    check_loaded(text)


@BOUNDED
@given(st.binary(max_size=2000) | YAML_TEXT.map(lambda text: text.encode("utf-8", "surrogatepass")))
def test_arbitrary_bytes_are_a_policy_or_an_invalid_file_with_lines(data):
    check_loaded(data)


@BOUNDED
@given(YAML_TEXT | DUMPED)
def test_a_repository_file_merges_or_is_an_invalid_file(text):
    for org in (DEFAULT_POLICY, ORG_WITH_OVERRIDES):
        try:
            policy, ignored = within_limits(merge_overrides, org, text, "repo/.github/moko.yml")
        except PolicyError as error:
            assert error.problems and all(problem.line >= 1 for problem in error.problems)
            continue
        assert isinstance(policy, Policy)
        assert all(problem.line >= 1 for problem in ignored)
        # What the organization did not allow by name stays the organization's.
        for field in ("visibility", "private", "default_branch", "allow_forking"):
            assert policy.repository.get(field) == org.repository.get(field)


COMMENT_PIECES = st.sampled_from(
    ["/moko", "/MOKO ", "/moko ", " ", "   ", "    ", "\t", "\n", "\r\n", "```", "~~~", "> ",
     "help", "status", "plan", "apply", "audit", "audit 5", "50", "51", "0", "@org/team", "<b>",
     "ghp_" + "A1b2C3d4" * 5, "\u200b", "\u202e", "\ufeff", "\u2028", "\x00", "é", "\udcff"]
)
COMMENT = st.one_of(
    st.text(max_size=500),
    st.lists(st.one_of(COMMENT_PIECES, st.text(max_size=6)), max_size=40).map("".join),
)


@BOUNDED
@given(COMMENT)
def test_any_comment_is_a_command_an_invalid_one_or_none(body):
    parsed = within_limits(parse_command, body)
    assert parsed is None or isinstance(parsed, Command | InvalidCommand)
    if isinstance(parsed, Command):
        assert parsed.name in NAMES
    if isinstance(parsed, InvalidCommand):
        shown = escape(parsed.given, 80)
        assert not any(unicodedata.category(char) in ("Cf", "Cc") for char in shown)
        assert "<" not in shown and ">" not in shown and "\n" not in shown
        assert "@" not in shown.replace("@&#8203;", "")
        if not holds_secret(parsed.given):
            assert "REDACTED" not in shown or "REDACTED" in parsed.given


@settings(max_examples=10, deadline=timedelta(seconds=1), database=None)
@given(st.integers(min_value=MAX_BODY_BYTES - 8, max_value=MAX_BODY_BYTES + 8), COMMENT_PIECES)
def test_comments_at_the_size_limit_are_parsed_or_left_alone_quickly(size, piece):
    body = "/moko status\n" + piece * (size // max(len(piece.encode("utf-8", "surrogatepass")), 1))
    parsed = within_limits(parse_command, body)
    if len(body.encode("utf-8", "surrogatepass")) > MAX_BODY_BYTES:
        assert parsed is None
    else:
        assert parsed == Command("status")
