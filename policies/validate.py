"""Checks a parsed moko.yml against the file format; reports (path, message) pairs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from policies.checks import Checker, Path, Problem, describe, is_int
from policies.model import MODES, NOTIFY, PERMISSIONS
from policies.registry import POLICY_KINDS

TOP_LEVEL_KEYS: tuple[str, ...] = (
    "version",
    "mode",
    "repository",
    "branches",
    "scope",
    "overrides",
    "commands",
    "notify",
    "rulesets",
    "branch_cleanup",
)
SCOPE_KEYS: tuple[str, ...] = ("include", "exclude", "archived")
COMMANDS_KEYS: tuple[str, ...] = ("apply_permission",)
SUPPORTED_VERSION = 1

# What overrides may list besides the kinds' keys.
OTHER_OVERRIDES: tuple[str, ...] = ("notify",)


def _override_help() -> str:
    """Each kind's override keys as its help names them, in the registry's order, those of
    the kinds that only sweeps apply last."""
    parts = [kind.override_help for kind in POLICY_KINDS if not kind.sweeps_only]
    parts += [*OTHER_OVERRIDES, *(kind.override_help for kind in POLICY_KINDS if kind.sweeps_only)]
    return ", ".join(parts[:-1]) + " or " + parts[-1]


OVERRIDE_HELP = _override_help()
OVERRIDE_EXAMPLE = next(kind.override_example for kind in POLICY_KINDS if kind.override_example)


def dotted(path: Path) -> str:
    """``("branches", 0, "protection")`` -> ``branches[0].protection``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


class _Checker(Checker):
    # --- sections ---

    def document(self, doc: Any) -> None:
        if doc is None:
            return  # an empty file: every section keeps the built-in default
        if not isinstance(doc, Mapping):
            self.report(
                (), f"the policy must be a mapping with the keys {', '.join(TOP_LEVEL_KEYS)}"
            )
            return
        self.keys(doc, (), TOP_LEVEL_KEYS)
        if "version" in doc and not (
            is_int(doc["version"]) and doc["version"] == SUPPORTED_VERSION
        ):
            self.report(
                ("version",), f"must be {SUPPORTED_VERSION}, not {describe(doc['version'])}"
            )
        if "mode" in doc and doc["mode"] not in MODES:
            self.report(
                ("mode",), f"must be one of {', '.join(MODES)}, not {describe(doc['mode'])}"
            )
        if "notify" in doc and doc["notify"] not in NOTIFY:
            self.report(
                ("notify",), f"must be one of {', '.join(NOTIFY)}, not {describe(doc['notify'])}"
            )
        for kind in POLICY_KINDS:
            # Its section, as the kind checks it (null: the built-in default, unless the kind
            # says what null means).
            if kind.section in doc and (doc[kind.section] is not None or kind.checks_null):
                self.problems.extend(kind.validate(doc[kind.section], (kind.section,)))
        if doc.get("scope") is not None:
            self.scope(doc["scope"], ("scope",))
        if doc.get("overrides") is not None:
            self.overrides(doc["overrides"], ("overrides",))
        if doc.get("commands") is not None:
            self.commands(doc["commands"], ("commands",))

    def scope(self, value: Any, path: Path) -> None:
        if not self.mapping(value, path, "a mapping {include, exclude, archived}"):
            return
        self.keys(value, path, SCOPE_KEYS)
        for key in ("include", "exclude"):
            if key in value:
                self.strings(value[key], path + (key,), "repository name globs")
        if "archived" in value:
            self.boolean(value["archived"], path + ("archived",))

    def overrides(self, value: Any, path: Path) -> None:
        if not isinstance(value, list):
            self.report(path, f"must be a list of keys ({OVERRIDE_HELP}), not {describe(value)}")
            return
        for index, key in enumerate(value):
            problem = check_override_key(key)
            if problem:
                self.report(path + (index,), problem)

    def commands(self, value: Any, path: Path) -> None:
        if not self.mapping(value, path, "a mapping {apply_permission}"):
            return
        self.keys(value, path, COMMANDS_KEYS)
        if "apply_permission" in value and value["apply_permission"] not in PERMISSIONS:
            self.report(
                path + ("apply_permission",),
                f"must be one of {', '.join(PERMISSIONS)}, not {describe(value['apply_permission'])}",
            )


def check_override_key(key: Any) -> str | None:
    """Why ``key`` cannot be listed in ``overrides``, or None."""
    if not isinstance(key, str):
        return f"must be a key such as {OVERRIDE_EXAMPLE}, not {describe(key)}"
    if key in OTHER_OVERRIDES:
        return None
    section, _, rest = key.partition(".")
    for kind in POLICY_KINDS:
        # Its whole section, or one part of it when the kind has parts to override.
        if kind.section == section and (key == section or kind.override_part):
            return kind.check_override(key, rest) if rest and kind.check_override is not None else None
    return f"{key!r} cannot be overridden; overrides may list {OVERRIDE_HELP}"


def check_document(doc: Any) -> list[Problem]:
    """Every problem of a parsed moko.yml, as (path, message)."""
    checker = _Checker()
    checker.document(doc)
    return checker.problems
