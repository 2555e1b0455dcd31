"""What the checks of a moko.yml section share: a problem's path and message, a value as an
error names it, and a checker that collects problems (each kind checks its own section)."""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any

Path = tuple[str | int, ...]
Problem = tuple[Path, str]


def describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, (int, float)):
        return repr(value)
    return f"{type(value).__name__} {value!r}"


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class Checker:
    """Collects (path, message) problems; the loader gives each its line."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def report(self, path: Path, message: str) -> None:
        self.problems.append((path, message))

    def keys(
        self, mapping: Mapping[str, Any], path: Path, allowed: Sequence[str], extra: str = ""
    ) -> None:
        for key in mapping:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = (
                    f"; did you mean {close[0]!r}?"
                    if close
                    else f" (allowed: {', '.join(allowed)})"
                )
                self.report(path + (key,), f"unknown key{extra}{hint}")

    def mapping(self, value: Any, path: Path, what: str) -> bool:
        if isinstance(value, Mapping):
            return True
        self.report(path, f"must be {what}, not {describe(value)}")
        return False

    def boolean(self, value: Any, path: Path, nullable: bool = False) -> None:
        if not isinstance(value, bool) and not (nullable and value is None):
            self.report(
                path,
                f"must be true or false{' or null' if nullable else ''}, not {describe(value)}",
            )

    def strings(self, value: Any, path: Path, what: str = "strings") -> None:
        if not isinstance(value, list):
            self.report(path, f"must be a list of {what}, not {describe(value)}")
            return
        for index, item in enumerate(value):
            if not isinstance(item, str) or not item:
                self.report(path + (index,), f"must be a non-empty string, not {describe(item)}")
