"""Finding and parsing the `/moko` command in a comment's body: pure, no I/O.

The rules, so that a comment cannot run a command by accident:

- the command is the first line that starts with ``/moko`` (after at most three spaces, as
  Markdown allows before a paragraph), followed by whitespace or the end of the line:
  ``/mokox`` is not a command, nor is ``please /moko apply`` or a quoted ``> /moko apply``;
- lines inside fenced code blocks (````` or ``~~~``) and indented code (4 spaces or a tab)
  are examples, not commands;
- the prefix and the command name are case-insensitive (``/Moko Status`` works);
- a bare ``/moko`` asks for help;
- a body over 64 KiB (UTF-8 bytes) is never looked at.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from handlers.command_text import AUDIT_DEFAULT, AUDIT_MAX, AUDIT_MIN

PREFIX = "/moko"
MAX_BODY_BYTES = 64 * 1024
NAMES = ("help", "status", "plan", "apply", "audit")

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_COMMAND = re.compile(r"^ {0,3}" + re.escape(PREFIX) + r"(?=\s|$)(.*)$", re.IGNORECASE)
_DIGITS = re.compile(r"[0-9]{1,3}")


@dataclass(frozen=True)
class Command:
    """A command to run: its name, and for ``audit`` how many records."""

    name: str
    count: int | None = None

    @property
    def text(self) -> str:
        """The command as Moko understood it, e.g. ``/moko audit 5``."""
        return f"{PREFIX} {self.name}" + (f" {self.count}" if self.count is not None else "")


@dataclass(frozen=True)
class InvalidCommand:
    """A `/moko` line Moko cannot run: why (a key of ``command_text.PROBLEMS``), for which
    command name when it is known, and the commenter's text at fault (raw: escape to echo)."""

    problem: str
    given: str
    command: str | None = None

    @property
    def name(self) -> str:
        return self.command or "unknown"


def too_large(body: str) -> bool:
    return len(body.encode("utf-8", "surrogatepass")) > MAX_BODY_BYTES


def command_line(body: str) -> str | None:
    """What follows ``/moko`` on the first command line, or None when there is none."""
    fence: str | None = None
    for line in body.splitlines():
        opened = _FENCE.match(line)
        if fence is not None:
            if opened and opened.group(1)[0] == fence[0] and len(opened.group(1)) >= len(fence):
                fence = None
            continue
        if opened:
            fence = opened.group(1)
            continue
        found = _COMMAND.match(line)
        if found:
            return found.group(1)
    return None


def parse_command(body: str) -> Command | InvalidCommand | None:
    """The comment's command, why it cannot run, or None when the comment holds none."""
    if too_large(body):
        return None
    rest = command_line(body)
    if rest is None:
        return None
    words = rest.split()
    if not words:
        return Command("help")
    name, arguments = words[0].lower(), words[1:]
    if name not in NAMES:
        return InvalidCommand("unknown", words[0])
    if name != "audit":
        if arguments:
            return InvalidCommand("arguments", " ".join(arguments), name)
        return Command(name)
    if not arguments:
        return Command(name, AUDIT_DEFAULT)
    given = " ".join(arguments)
    if len(arguments) > 1 or not _DIGITS.fullmatch(arguments[0]):
        return InvalidCommand("count", given, name)
    count = int(arguments[0])
    if not AUDIT_MIN <= count <= AUDIT_MAX:
        return InvalidCommand("count", given, name)
    return Command(name, count)
