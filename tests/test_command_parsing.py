"""`/moko` commands without I/O: finding and parsing the command line, roles, escaping, tables."""

from __future__ import annotations

import pytest

from bot.redact import REDACTOR
from handlers.command_access import at_least, role_from
from handlers.command_markdown import escape, escape_settings, escape_value, plain, table
from handlers.command_parsing import MAX_BODY_BYTES, Command, InvalidCommand, parse_command


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("/moko help", Command("help")),
        ("/moko status", Command("status")),
        ("/moko plan", Command("plan")),
        ("/moko apply", Command("apply")),
        ("/moko audit", Command("audit", 10)),
        ("/moko audit 1", Command("audit", 1)),
        ("/moko audit 50", Command("audit", 50)),
        ("/moko audit 007", Command("audit", 7)),
        ("/moko", Command("help")),
        ("/moko   ", Command("help")),
        ("/Moko STATUS", Command("status")),
        ("  /moko plan", Command("plan")),
        ("/moko\tapply", Command("apply")),
        ("Thanks!\r\n\r\n/moko status\r\n", Command("status")),
        # The first command line counts.
        ("/moko plan\n/moko apply", Command("plan")),
        ("```\n/moko apply\n```\n/moko status", Command("status")),
        ("~~~~\n/moko apply\n~~~\n~~~~\n/moko plan", Command("plan")),
    ],
)
def test_commands_are_found_on_their_own_line(body, expected):
    assert parse_command(body) == expected


@pytest.mark.parametrize(
    "body",
    [
        "",
        "Looks good to me",
        "/mokox status",
        "/moko-apply",
        "please /moko apply",
        "> /moko apply",
        "    /moko apply",  # indented code
        "\t/moko apply",
        "```\n/moko apply\n```",
        "`/moko apply`",
        "/mok apply",
    ],
)
def test_other_comments_hold_no_command(body):
    assert parse_command(body) is None


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("/moko frobnicate", InvalidCommand("unknown", "frobnicate")),
        ("/moko <script>", InvalidCommand("unknown", "<script>")),
        ("/moko status now", InvalidCommand("arguments", "now", "status")),
        ("/moko apply --force please", InvalidCommand("arguments", "--force please", "apply")),
        ("/moko help me", InvalidCommand("arguments", "me", "help")),
        ("/moko audit 0", InvalidCommand("count", "0", "audit")),
        ("/moko audit 51", InvalidCommand("count", "51", "audit")),
        ("/moko audit -3", InvalidCommand("count", "-3", "audit")),
        ("/moko audit +3", InvalidCommand("count", "+3", "audit")),
        ("/moko audit ten", InvalidCommand("count", "ten", "audit")),
        ("/moko audit 1_0", InvalidCommand("count", "1_0", "audit")),
        ("/moko audit ٣", InvalidCommand("count", "٣", "audit")),  # not an ASCII digit
        ("/moko audit 10000", InvalidCommand("count", "10000", "audit")),
        ("/moko audit 5 6", InvalidCommand("count", "5 6", "audit")),
    ],
)
def test_unknown_commands_and_bad_arguments_say_what_was_wrong(body, expected):
    assert parse_command(body) == expected


def test_invalid_command_names_its_command():
    assert InvalidCommand("unknown", "x").name == "unknown"
    assert InvalidCommand("count", "x", "audit").name == "audit"
    assert Command("audit", 5).text == "/moko audit 5"


def test_bodies_over_64_kib_are_not_read():
    at_limit = "/moko status\n" + "x" * (MAX_BODY_BYTES - len("/moko status\n"))
    assert parse_command(at_limit) == Command("status")
    assert parse_command(at_limit + "x") is None
    # Measured in UTF-8 bytes: 30,000 three-byte characters are over the limit.
    assert parse_command("/moko status\n" + "€" * 30_000) is None


@pytest.mark.parametrize(
    ("answer", "role"),
    [
        ({"permission": "write", "role_name": "maintain"}, "maintain"),
        ({"permission": "read", "role_name": "triage"}, "triage"),
        ({"permission": "admin", "role_name": "admin"}, "admin"),
        ({"permission": "write", "role_name": "release-manager"}, "write"),  # a custom role
        ({"permission": "read"}, "read"),
        ({"permission": "none", "role_name": "none"}, "none"),
        ({"permission": "owner"}, "none"),
        (None, "none"),
    ],
)
def test_role_is_role_name_then_legacy_permission(answer, role):
    assert role_from(answer) == role


def test_roles_are_ordered():
    assert at_least("maintain", "maintain")
    assert at_least("admin", "maintain")
    assert not at_least("write", "maintain")
    assert at_least("triage", "triage") and not at_least("read", "triage")
    assert not at_least("none", "read")
    assert not at_least("owner", "read")


def test_escaping_removes_mentions_references_html_and_markup():
    escaped = escape("@org/team <script>alert(1)</script> see acme/app#1 **bold** [x](https://e.vil) `c` | $x$", None)
    for raw in ("@org/team", "<script>", "</script>", "acme/app#1", "**", "[x](", "https://", "`c`", " | ", "$x$"):
        assert raw not in escaped
    assert escaped.startswith("@&#8203;org/team &lt;script&gt;alert\\(1\\)&lt;/script&gt;")
    assert "acme/app#&#8203;1" in escaped
    assert "\\*\\*bold\\*\\*" in escaped and "\\`c\\`" in escaped and "\\|" in escaped


def test_escaping_stops_autolinks_comments_and_emails():
    escaped = escape("www.evil.com WWW.EVIL.COM mailto:a@b.c <!-- hidden --> & &amp;")
    assert "www." not in escaped.lower()
    assert "mailto:" not in escaped and "a@b" not in escaped
    assert "<!--" not in escaped
    assert escaped.endswith("&amp; &amp;amp;")


def test_escaped_text_stays_on_one_line_without_controls():
    escaped = escape("one\ntwo\r\n| three\u202e\u2066\x00\x1b[31m")
    assert "\n" not in escaped and "\r" not in escaped
    assert "\u202e" not in escaped and "\u2066" not in escaped and "\x00" not in escaped and "\x1b" not in escaped
    assert escaped.startswith("one two \\| three")


def test_escaping_cuts_long_text():
    assert plain("x" * 100, 10) == "x" * 9 + "…"
    assert escape("y" * 500, 80) == "y" * 79 + "…"
    assert len(escape("z" * 500, None)) == 500


def test_secrets_are_removed_before_escaping():
    token = "ghs_" + "A1b2C3d4" * 5
    REDACTOR.add("super_secret_value")
    escaped = escape(f"{token} and super_secret_value")
    assert "A1b2C3d4" not in escaped and "secret" not in escaped
    assert escaped == "\\[REDACTED\\] and \\[REDACTED\\]"


def test_values_are_shown_as_json_and_protection_bodies_flattened():
    assert escape_value(True) == "true"
    assert escape_value(None) == "null"
    assert escape_value("main") == '"main"'
    assert escape_value({"b": 1, "a": [1, 2]}) == '{"a"&#58; \\[1, 2\\], "b"&#58; 1}'
    body = {"enforce_admins": False, "required_pull_request_reviews": {"required_approving_review_count": 1}}
    assert escape_settings(body) == (
        "enforce\\_admins=false, required\\_pull\\_request\\_reviews.required\\_approving\\_review\\_count=1"
    )


def test_tables_leave_out_rows_beyond_the_budget():
    rows = [(str(n), "x" * 10) for n in range(100)]
    full = table(("n", "x"), rows)
    assert full.splitlines()[:3] == ["| n | x |", "|---|---|", "| 0 | xxxxxxxxxx |"]
    assert len(full.splitlines()) == 102
    cut = table(("n", "x"), rows, budget=200)
    assert len(cut) <= 260
    assert cut.endswith("_91 more rows left out: the comment would be too long._")
    assert table(("a",), [("",)]).splitlines()[-1] == "|   |"
