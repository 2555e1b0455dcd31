"""Markdown for answers: escaping echoed text so it stays plain text, values, and tables.

Anything Moko did not write itself (the commenter's words, values read from GitHub, audit
records) goes through ``escape`` before it is put in an answer. It

- removes secrets first (``REDACTOR``: escaping would change their shape), then control and
  format characters (zero-width, bidirectional), and folds the text onto one line, cut at ``limit``;
- turns ``&``, ``<``, ``>`` into entities, so no HTML (``<script>``, ``<!-- -->``, ``<img>``);
- puts a zero-width space (``&#8203;``) after ``@`` and ``#``, so ``@user``, ``@org/team`` and
  ``org/repo#1`` notify, mention and cross-reference no one (GitHub finds mentions in the
  rendered text, so an entity for ``@`` alone would not do);
- writes ``:`` as ``&#58;`` and the dot of ``www.`` as ``&#46;``, so no URL is autolinked;
- backslash-escapes the Markdown punctuation that works inside a line (emphasis, code,
  links and images, tables, strikethrough, math): ``\\ ` * _ [ ] ( ) | ~ $ !``.

Moko places escaped text inside a line or a table cell, never at a line's start.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any

from bot.redact import REDACTOR
from handlers import command_text as text
from policies.words import Words, settings_text, show

ZWSP = "&#8203;"
CELL_LIMIT = 80
# GitHub refuses comments over 65,536 characters; leave room for the text around a table.
COMMENT_BUDGET = 60_000

_REPLACE = {
    "&": "&amp;",
    "<": "&lt;",
    ">": "&gt;",
    "@": "@" + ZWSP,
    "#": "#" + ZWSP,
    ":": "&#58;",
    **{char: "\\" + char for char in "\\`*_[]()|~$!"},
}
_WWW_DOT = re.compile(r"(?i)\b(www)\.")


def _visible(value: str) -> str:
    """``value`` without format characters (Unicode category Cf): zero-width spaces and
    joiners, word joiner, byte-order mark, bidirectional marks and overrides…"""
    return "".join(char for char in value if unicodedata.category(char) != "Cf")


def holds_secret(value: str) -> bool:
    """Whether ``value`` holds a secret or a credential-shaped string, even split by invisible
    characters: then it is not echoed at all (an echoed ``[REDACTED]`` would confirm a guess)."""
    visible = _visible(value)
    return REDACTOR.text(visible) != visible


def plain(value: str, limit: int | None = None) -> str:
    """One line of text without secrets or invisible characters, at most ``limit`` characters.

    Every format character is removed first (so that none hides a secret from redaction),
    then secrets; other controls and line or paragraph separators become spaces."""
    value = REDACTOR.text(_visible(value))
    cleaned = "".join(
        " " if unicodedata.category(char) == "Cc" or char in "\u2028\u2029" else char for char in value
    )
    cleaned = " ".join(cleaned.split())
    if limit is not None and len(cleaned) > limit:
        cleaned = cleaned[: max(limit - 1, 0)] + "…"
    return cleaned


def escape(value: str, limit: int | None = CELL_LIMIT) -> str:
    """``value`` as inert Markdown text: no markup, HTML, mention, reference or link."""
    escaped = "".join(_REPLACE.get(char, char) for char in plain(value, limit))
    return _WWW_DOT.sub(r"\1&#46;", escaped)


def escape_value(value: Any, limit: int | None = CELL_LIMIT) -> str:
    return escape(show(value), limit)


def escape_settings(value: Any, limit: int | None = None) -> str:
    """A protection body as ``key.sub=value, …``, escaped."""
    return escape(settings_text(value), limit)


def render_words(words: Words) -> str:
    """A policy kind's words as Markdown: its own as they are, the text it shows escaped."""
    return "".join(part if isinstance(part, str) else escape(part.text, part.limit) for part in words)


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, budget: int = COMMENT_BUDGET) -> str:
    """A Markdown table of cells already escaped; rows beyond ``budget`` characters are left
    out, and a note says how many."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    used = sum(len(line) + 1 for line in lines)
    rows = list(rows)
    for shown, row in enumerate(rows):
        line = "| " + " | ".join(cell or " " for cell in row) + " |"
        if used + len(line) + 1 > budget:
            lines.append("")
            lines.append(text.ROWS_LEFT_OUT.format(count=len(rows) - shown))
            break
        lines.append(line)
        used += len(line) + 1
    return "\n".join(lines)
