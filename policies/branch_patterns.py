"""GitHub's branch name patterns (classic protection rules and rulesets): Ruby's
``File.fnmatch`` with ``FNM_PATHNAME``, so ``*`` and ``?`` never cross ``/`` (``release/*``
covers ``release/1`` but not ``release/1/hotfix``), ``**/`` spans directories, and
``[...]`` is a character class."""

from __future__ import annotations

import re
from functools import lru_cache

WILDCARDS = "*?["


def is_wildcard(pattern: str) -> bool:
    return any(char in pattern for char in WILDCARDS)


@lru_cache(maxsize=1024)
def _compiled(pattern: str) -> re.Pattern[str]:
    out: list[str] = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:[^/]*/)*")
            i += 3
            continue
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[" and "]" in pattern[i + 1 :]:
            end = pattern.index("]", i + 1)
            body = pattern[i + 1 : end].replace("\\", "\\\\")
            if body[:1] in ("!", "^"):
                body = "^/" + body[1:]  # a negated class does not match "/" either
            out.append(f"[{body}]")
            i = end + 1
            continue
        elif char == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        else:
            out.append(re.escape(char))
        i += 1
    return re.compile("".join(out))


def matches(pattern: str, branch: str) -> bool:
    """Whether a rule with this pattern covers the branch, as GitHub matches it."""
    return _compiled(pattern).fullmatch(branch) is not None
