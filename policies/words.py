"""What a policy kind says in reports (`/moko status`, `/moko plan`, `/moko apply`, the policy
preview, the non-compliance notice), before it is Markdown: Moko's own words as they are, and
the text it did not write itself (fields, branches, values), which the report escapes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from policies.model import thaw

# How long shown text may be, as a report cuts it: a short cell (a field, a value), and a
# long one (a protection's settings, why a value is unknown).
SHORT = 80
LONG = 200


@dataclass(frozen=True)
class Shown:
    """Text Moko did not write itself: the report escapes it, cut at ``limit`` characters."""

    text: str
    limit: int | None = SHORT


# A line or a table cell: Moko's own words (put in as they are: no markup) and shown text.
Words = tuple[str | Shown, ...]


@dataclass(frozen=True)
class StatusRow:
    """One row of `/moko status` for a kind: what the policy names (a field, a branch), what
    it wants, what the repository has, and whether that complies (None: cannot tell)."""

    name: Words
    wanted: Words
    actual: Words
    compliant: bool | None


@dataclass(frozen=True)
class ReportContext:
    """What a report knows of the repository besides the plan: its default branch, and the
    branches without classic protection that rulesets protect."""

    default_branch: str | None = None
    ruleset_branches: frozenset[str] = frozenset()


def show(value: Any) -> str:
    """A JSON-like value as text: ``true``, ``null``, ``"main"``, ``{"a": 1}``."""
    return json.dumps(thaw(value), ensure_ascii=False, sort_keys=True, separators=(", ", ": "), default=str)


def flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """A nested mapping as (dotted key, leaf value) pairs; other values as one pair."""
    if isinstance(value, dict) and value:
        pairs: list[tuple[str, Any]] = []
        for key, item in value.items():
            pairs.extend(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return pairs
    return [(prefix, value)]


def settings_text(value: Any) -> str:
    """A protection body as ``key.sub=value, …``."""
    return ", ".join(f"{key}={show(leaf)}" for key, leaf in flatten(thaw(value)))


# Status cells Moko writes.
UNKNOWN = "unknown"


def unknown_because(why: str) -> Words:
    return ("unknown: ", Shown(why, LONG))


def plain_words(text: str, limit: int | None = SHORT) -> Words:
    """Words that are all shown text (e.g. a kind's plain-text description)."""
    return (Shown(text, limit),)
