"""Loads moko.yml text into a Policy, reporting each problem with its line; applies overrides.

Overrides: the organization's ``overrides`` list says what a repository's own
``.github/moko.yml`` may change, at these granularities:

- ``repository``: any field of the ``repository`` section (field by field: the repository's
  fields win, the organization's other fields still apply);
- ``repository.<field>``: that one field;
- ``branches``: the whole ``branches`` section (the repository's list replaces the org's);
- ``branches.<rule name>``: the rule with that name (e.g. ``branches.default``), replaced or added.

Anything else in the repository's file is ignored and reported; the allowed keys still apply.
An invalid repository file changes nothing (all of it is ignored, its problems reported).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import yaml

from policies.defaults import DEFAULT_POLICY
from policies.model import BranchRule, Policy, Scope
from policies.validate import Path, check_document, dotted


@dataclass(frozen=True, order=True)
class PolicyProblem:
    """One problem in a policy file; ``str()`` gives ``FILE:LINE: message``."""

    line: int
    message: str
    source: str = field(default="moko.yml", compare=False)

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.message}"


class PolicyError(ValueError):
    """A policy file that cannot be used; ``problems`` says why, line by line."""

    def __init__(self, problems: list[PolicyProblem], source: str = "moko.yml") -> None:
        super().__init__("\n".join(str(problem) for problem in problems))
        self.problems = list(problems)
        self.source = source


class _Builder:
    """Turns a composed YAML node tree into plain values, remembering each key's line."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.constructor = yaml.constructor.SafeConstructor()
        self.lines: dict[Path, int] = {}
        self.problems: list[PolicyProblem] = []
        self.active: set[int] = set()

    def problem(self, line: int, message: str) -> None:
        self.problems.append(PolicyProblem(line, message, self.source))

    def build(self, node: yaml.Node, path: Path) -> Any:
        if id(node) in self.active:  # an alias that contains itself
            self.problem(
                node.start_mark.line + 1,
                f"{dotted(path) or 'document'}: a YAML alias may not contain itself",
            )
            return None
        self.active.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, path)
            if isinstance(node, yaml.SequenceNode):
                items = []
                for index, item in enumerate(node.value):
                    self.lines[path + (index,)] = item.start_mark.line + 1
                    items.append(self.build(item, path + (index,)))
                return items
            return self.constructor.construct_object(node, deep=True)
        finally:
            self.active.discard(id(node))

    def _mapping(self, node: yaml.MappingNode, path: Path) -> dict[str, Any]:
        self.constructor.flatten_mapping(node)  # YAML merge keys (<<)
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            key = (
                self.constructor.construct_object(key_node)
                if isinstance(key_node, yaml.ScalarNode)
                else None
            )
            where = dotted(path)
            if not isinstance(key, str):
                shown = "a non-scalar" if key is None else repr(key)
                self.problem(
                    line, f"{where + ': ' if where else ''}keys must be names, not {shown}"
                )
                continue
            if key in result:
                first = self.lines[path + (key,)]
                self.problem(
                    line, f"{dotted(path + (key,))}: duplicate key (first at line {first})"
                )
                continue
            self.lines[path + (key,)] = line
            result[key] = self.build(value_node, path + (key,))
        return result


def _line_of(lines: Mapping[Path, int], path: Path) -> int:
    while path and path not in lines:
        path = path[:-1]
    return lines.get(path, 1)


def _yaml_problem(error: yaml.YAMLError, source: str) -> PolicyProblem:
    if isinstance(error, yaml.MarkedYAMLError):
        mark = error.problem_mark or error.context_mark
        text = " ".join(part for part in (error.context, error.problem) if part)
        return PolicyProblem(mark.line + 1 if mark else 1, f"invalid YAML: {text}", source)
    return PolicyProblem(1, f"invalid YAML: {error}", source)


def _load(text: str, source: str) -> tuple[Any, dict[Path, int], list[PolicyProblem]]:
    """(document, key lines, problems); the document is None for an empty file."""
    builder = _Builder(source)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        doc = None if node is None else builder.build(node, ())
    except yaml.YAMLError as error:
        return None, {}, [_yaml_problem(error, source)]
    problems = list(builder.problems)
    for path, message in check_document(doc):
        problems.append(
            PolicyProblem(
                _line_of(builder.lines, path),
                f"{dotted(path)}: {message}" if path else message,
                source,
            )
        )
    return doc, builder.lines, sorted(problems)


def _policy_from_document(doc: Mapping[str, Any] | None, source: str) -> Policy:
    """The Policy of a VALID document: a missing section keeps the default, a present one
    replaces it whole (an empty or null section manages nothing)."""
    default = DEFAULT_POLICY
    if doc is None:
        return replace(default, source=source)
    scope = default.scope
    if "scope" in doc:
        given = doc["scope"] or {}
        scope = Scope(
            include=tuple(given.get("include", ("*",))),
            exclude=tuple(given.get("exclude", ())),
            archived=bool(given.get("archived", False)),
        )
    branches = default.branches
    if "branches" in doc:
        branches = tuple(
            BranchRule(rule["name"], rule["protection"]) for rule in doc["branches"] or ()
        )
    commands = doc.get("commands") or {}
    return Policy(
        version=int(doc.get("version", default.version)),
        mode=doc.get("mode", default.mode),
        repository=(doc["repository"] or {}) if "repository" in doc else default.repository,
        branches=branches,
        scope=scope,
        overrides=tuple(doc.get("overrides") or ()) if "overrides" in doc else default.overrides,
        apply_permission=commands.get("apply_permission", default.apply_permission),
        source=source,
    )


def validate_policy_text(text: str, source: str = "moko.yml") -> list[PolicyProblem]:
    """Every problem in a policy file, by line; [] when it is valid.

    ``moko check-config FILE`` prints ``str(problem)`` (``FILE:LINE: message``) for each.
    """
    return _load(text, source)[2]


def parse_policy(text: str, *, source: str = "moko.yml") -> Policy:
    """The Policy a moko.yml describes; raises PolicyError listing every problem."""
    doc, _, problems = _load(text, source)
    if problems:
        raise PolicyError(problems, source)
    return _policy_from_document(doc, source)


def merge_overrides(
    org: Policy, repo_text: str, source: str = ".github/moko.yml"
) -> tuple[Policy, list[PolicyProblem]]:
    """Apply a repository's own moko.yml on top of the organization's policy (see the module
    docstring). Returns the policy and the keys it may not override (ignored, the allowed ones
    still apply). An invalid file raises PolicyError: like an invalid organization file it
    changes nothing for that repository (applying the organization's policy alone would undo
    what the file meant to keep, e.g. a wiki it meant to leave on)."""
    doc, lines, problems = _load(repo_text, source)
    if problems:
        raise PolicyError(problems, source)
    if doc is None:
        return org, []
    allowed = set(org.overrides)
    why = (
        f"the organization's policy allows overriding only {', '.join(org.overrides)}"
        if org.overrides
        else "the organization's policy allows no overrides"
    )
    ignored: list[PolicyProblem] = []

    def ignore(path: Path) -> None:
        ignored.append(
            PolicyProblem(_line_of(lines, path), f"{dotted(path)}: ignored: {why}", source)
        )

    repository = dict(org.repository)
    branches = list(org.branches)
    for key, value in doc.items():
        if key == "version":
            continue
        if key == "repository":
            for name, setting in (value or {}).items():
                if "repository" in allowed or f"repository.{name}" in allowed:
                    # private and visibility say the same thing: the repository's one wins.
                    twin = {"private": "visibility", "visibility": "private"}.get(name)
                    if twin:
                        repository.pop(twin, None)
                    repository[name] = setting
                else:
                    ignore(("repository", name))
        elif key == "branches":
            rules = [BranchRule(rule["name"], rule["protection"]) for rule in value or ()]
            if "branches" in allowed:
                branches = rules
                continue
            for index, rule in enumerate(rules):
                if f"branches.{rule.name}" not in allowed:
                    ignore(("branches", index))
                    continue
                names = [existing.name for existing in branches]
                if rule.name in names:
                    branches[names.index(rule.name)] = rule
                else:
                    branches.append(rule)
        else:
            ignore((key,))
    merged = replace(
        org, repository=repository, branches=tuple(branches), source=f"{org.source} + {source}"
    )
    return merged, sorted(ignored)


def parse_policy_with_lines(text: str, *, source: str = "moko.yml") -> tuple[Policy, dict[Path, int]]:
    """The Policy, and the line of each key path (``("repository", "has_wiki")``,
    ``("branches", 0)``), for messages about a valid file; raises PolicyError as parse_policy."""
    doc, lines, problems = _load(text, source)
    if problems:
        raise PolicyError(problems, source)
    return _policy_from_document(doc, source), lines
