"""Loads moko.yml text into a Policy, reporting each problem with its line; applies overrides.

A policy file is at most 256 KiB, at most 10,000 YAML values once aliases (and ``<<`` merge
keys) are expanded, nested at most 64 deep, and holds no tag but YAML's standard scalars
(str, int, float, bool, null), mappings and lists. Anything beyond is an invalid file, with the
line where the limit was crossed; loading stops there, so no expansion is ever built.

Overrides: the organization's ``overrides`` list says what a repository's own
``.github/moko.yml`` may change, at these granularities:

- ``repository``: any field of the ``repository`` section (field by field: the repository's
  fields win, the organization's other fields still apply), except the fields that change who
  can see or change the repository (``repository_settings.SENSITIVE_FIELDS``);
- ``repository.<field>``: that one field (the only way to allow a sensitive one);
- ``branches``: the whole ``branches`` section (the repository's list replaces the org's),
  except the organization's ``default`` rule;
- ``branches.<rule name>``: the rule with that name, replaced or added. Only
  ``branches.default`` lets a repository replace the default branch's rule, or let a rule
  naming its default branch (e.g. ``main``) win over the organization's ``default`` rule;
- ``rulesets``: the whole ``rulesets`` section (the repository's list replaces the org's);
- ``rulesets.<ruleset name>``: the ruleset with that name, replaced or added;
- ``notify``: the repository's own ``notify`` (``issue`` or ``none``);
- ``branch_cleanup``: the repository's own ``branch_cleanup`` section, replacing the
  organization's whole (``null``: none). Deleting branches is destructive, so like the
  sensitive repository fields it is allowed only by that name: a repository's section is
  otherwise ignored, whether it would delete more or less.

Anything else in the repository's file is ignored and reported; the allowed keys still apply.
An invalid repository file changes nothing (all of it is ignored, its problems reported).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import yaml

from policies.defaults import DEFAULT_POLICY
from policies.model import Policy, Scope
from policies.registry import POLICY_KINDS
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

    def __init__(self, problems: list[PolicyProblem], source: str = "moko.yml", file_id: str | None = None) -> None:
        super().__init__("\n".join(str(problem) for problem in problems))
        self.problems = list(problems)
        self.source = source
        # Which file this is (its blob SHA, else a hash of its content), when it was read from GitHub.
        self.file_id = file_id


MAX_FILE_BYTES = 256 * 1024
MAX_NODES = 10_000
MAX_DEPTH = 64

_TAG = "tag:yaml.org,2002:"
# The only tags a policy file may hold, written or implied: strings, numbers, true/false,
# null, mappings and lists (and ``<<`` merge keys, built here with the same limits).
SCALAR_TAGS = frozenset(_TAG + name for name in ("str", "int", "float", "bool", "null"))
MAP_TAG, SEQ_TAG, MERGE_TAG = _TAG + "map", _TAG + "seq", _TAG + "merge"

TOO_LARGE = f"the file is larger than {MAX_FILE_BYTES // 1024} KiB"
TOO_MANY_NODES = f"more than {MAX_NODES:,} YAML values (aliases counted as expanded)"
TOO_DEEP = f"nested more than {MAX_DEPTH} levels deep"


class _Limit(Exception):
    """A limit was crossed: loading stops at once (the rest is never composed or built)."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


class _PyParser(yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser):
    """PyYAML's own event parser, where libyaml is missing."""

    def __init__(self, stream: str) -> None:
        yaml.reader.Reader.__init__(self, stream)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)

    def fetch_flow_collection_start(self, token_class: Any) -> None:
        # Its look-ahead for keys costs O(flow level) per token: stop before that explodes.
        if self.flow_level >= MAX_DEPTH:
            raise _Limit(self.line + 1, TOO_DEEP)
        super().fetch_flow_collection_start(token_class)


try:  # libyaml parses about ten times faster; it limits flow nesting itself
    from yaml._yaml import CParser as _EventParser
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    _EventParser = _PyParser  # type: ignore[misc,assignment]


class _LimitedLoader(yaml.composer.Composer, _EventParser, yaml.resolver.Resolver):  # type: ignore[misc]
    """PyYAML's composer (in Python, over libyaml's events when it can), counting nodes and
    nesting as it goes, so that a file too big or too deep stops early instead of exhausting
    memory or the stack. Nothing is constructed here: ``_Builder`` does that."""

    def __init__(self, stream: str) -> None:
        _EventParser.__init__(self, stream)
        yaml.composer.Composer.__init__(self)
        yaml.resolver.Resolver.__init__(self)
        self.nodes = 0
        self.depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        if self.check_event(yaml.AliasEvent):
            return super().compose_node(parent, index)  # counted when expanded, by _Builder
        line = self.peek_event().start_mark.line + 1
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _Limit(line, TOO_MANY_NODES)
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise _Limit(line, TOO_DEEP)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _tag_name(tag: str) -> str:
    return "!!" + tag[len(_TAG):] if tag.startswith(_TAG) else tag


class _Builder:
    """Turns a composed YAML node tree into plain values, remembering each key's line.

    Aliases are expanded here, so here the nodes are counted as expanded and the nesting
    measured again (an alias can nest deeper than the text): past a limit it stops at once.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.constructor = yaml.constructor.SafeConstructor()
        self.lines: dict[Path, int] = {}
        self.problems: list[PolicyProblem] = []
        self.active: set[int] = set()
        self.nodes = 0
        self.refused: set[Path] = set()  # values left out: checking them again says nothing new

    def problem(self, line: int, message: str, path: Path | None = None) -> None:
        self.problems.append(PolicyProblem(line, message, self.source))
        if path is not None:
            self.refused.add(path)

    def build(self, node: yaml.Node, path: Path, depth: int = 1) -> Any:
        line = node.start_mark.line + 1
        if id(node) in self.active:  # an alias that contains itself
            self.problem(
                line, f"{dotted(path) or 'document'}: a YAML alias may not contain itself", path
            )
            return None
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _Limit(line, TOO_MANY_NODES)
        if depth > MAX_DEPTH:
            raise _Limit(line, TOO_DEEP)
        self.active.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode) and node.tag == MAP_TAG:
                return self._mapping(node, path, depth)
            if isinstance(node, yaml.SequenceNode) and node.tag == SEQ_TAG:
                items = []
                for index, item in enumerate(node.value):
                    self.lines[path + (index,)] = item.start_mark.line + 1
                    items.append(self.build(item, path + (index,), depth + 1))
                return items
            if isinstance(node, yaml.ScalarNode) and node.tag in SCALAR_TAGS:
                return self._scalar(node, path)
            where = dotted(path)
            hint = "; quote it to make it a string" if node.tag == _TAG + "timestamp" else ""
            self.problem(
                line,
                f"{where + ': ' if where else ''}the tag {_tag_name(node.tag)} is not allowed "
                f"(only strings, numbers, true/false, null, mappings and lists){hint}",
                path,
            )
            return None
        finally:
            self.active.discard(id(node))

    def _scalar(self, node: yaml.ScalarNode, path: Path) -> Any:
        try:
            return self.constructor.construct_object(node, deep=True)
        except ValueError:  # e.g. an integer with more digits than Python converts
            where = dotted(path)
            self.problem(
                node.start_mark.line + 1, f"{where + ': ' if where else ''}not a usable number", path
            )
            return None

    def _mapping(self, node: yaml.MappingNode, path: Path, depth: int) -> dict[str, Any]:
        where = dotted(path)
        merged: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == MERGE_TAG:  # YAML merge keys (<<): the first source wins
                sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                for source in sources:
                    if not (isinstance(source, yaml.MappingNode) and source.tag == MAP_TAG):
                        self.problem(
                            source.start_mark.line + 1,
                            f"{where + ': ' if where else ''}<< takes a mapping or a list of mappings",
                        )
                        continue
                    if id(source) in self.active:  # a mapping that merges itself
                        self.problem(
                            source.start_mark.line + 1,
                            f"{where or 'document'}: a YAML alias may not contain itself",
                        )
                        continue
                    self.nodes += 1
                    self.active.add(id(source))
                    try:
                        for key, value in self._mapping(source, path, depth + 1).items():
                            merged.setdefault(key, value)
                    finally:
                        self.active.discard(id(source))
        result: dict[str, Any] = {}
        first_lines: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == MERGE_TAG:
                continue
            line = key_node.start_mark.line + 1
            self.nodes += 1
            if self.nodes > MAX_NODES:
                raise _Limit(line, TOO_MANY_NODES)
            key = (
                self._scalar(key_node, path)
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag in SCALAR_TAGS
                else None
            )
            if not isinstance(key, str):
                shown = "a non-scalar" if key is None else repr(key)
                self.problem(line, f"{where + ': ' if where else ''}keys must be names, not {shown}")
                continue
            if key in first_lines:
                self.problem(
                    line,
                    f"{dotted(path + (key,))}: duplicate key (first at line {first_lines[key]})",
                )
                continue
            first_lines[key] = line
            self.lines[path + (key,)] = line
            result[key] = self.build(value_node, path + (key,), depth + 1)
        return {**merged, **result}


def _line_of(lines: Mapping[Path, int], path: Path) -> int:
    while path and path not in lines:
        path = path[:-1]
    return lines.get(path, 1)


def _yaml_problem(error: yaml.YAMLError, text: str, source: str) -> PolicyProblem:
    if isinstance(error, yaml.MarkedYAMLError):
        mark = error.problem_mark or error.context_mark
        message = " ".join(part for part in (error.context, error.problem) if part)
        return PolicyProblem(mark.line + 1 if mark else 1, f"invalid YAML: {message}", source)
    if isinstance(error, yaml.reader.ReaderError):
        line = text[: error.position].count("\n") + 1
        return PolicyProblem(line, f"invalid YAML: {error.reason}", source)
    return PolicyProblem(1, f"invalid YAML: {error}", source)


@dataclass(frozen=True)
class LoadedFile:
    """A policy file as loaded: its document (None when empty or unusable), each key's line,
    and its problems (none: the file is valid). Immutable, so a parsed file can be cached
    and shared (``with_source`` names it again for another repository)."""

    document: Any
    lines: Mapping[Path, int]
    problems: tuple[PolicyProblem, ...]
    source: str

    @property
    def valid(self) -> bool:
        return not self.problems

    def with_source(self, source: str) -> LoadedFile:
        if source == self.source:
            return self
        problems = tuple(replace(problem, source=source) for problem in self.problems)
        return replace(self, problems=problems, source=source)

    def error(self) -> PolicyError:
        return PolicyError(list(self.problems), self.source)


def _too_large_at(data: bytes) -> int:
    return data[:MAX_FILE_BYTES].count(b"\n") + 1


def load_policy_file(content: str | bytes, source: str = "moko.yml") -> LoadedFile:
    """Load a policy file's text (or bytes: they must be UTF-8) within the file limits: at most
    256 KiB, 10,000 YAML values after aliases are expanded, nested at most 64 deep, and only
    YAML's standard scalar, mapping and list tags. Never raises for what the file holds."""

    def invalid(line: int, message: str) -> LoadedFile:
        return LoadedFile(None, {}, (PolicyProblem(line, message, source),), source)

    if isinstance(content, bytes):
        if len(content) > MAX_FILE_BYTES:
            return invalid(_too_large_at(content), TOO_LARGE)
        try:
            text = content.decode("utf-8")
        except UnicodeDecodeError as exc:
            return invalid(content[: exc.start].count(b"\n") + 1, "not UTF-8 text")
    else:
        text = content
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError as exc:  # a lone surrogate: no UTF-8 file holds one
            return invalid(text[: exc.start].count("\n") + 1, "not UTF-8 text")
        if len(data) > MAX_FILE_BYTES:
            return invalid(_too_large_at(data), TOO_LARGE)
    builder = _Builder(source)
    loader: _LimitedLoader | None = None
    try:
        loader = _LimitedLoader(text)
        node = loader.get_single_node()
        doc = None if node is None else builder.build(node, ())
    except _Limit as limit:
        return invalid(limit.line, limit.message)
    except yaml.YAMLError as error:
        problem = _yaml_problem(error, text, source)
        return invalid(problem.line, problem.message)
    finally:
        if loader is not None:
            loader.dispose()
    problems = list(builder.problems)
    for path, message in check_document(doc):
        if not any(path[: len(refused)] == refused for refused in builder.refused):
            problems.append(
                PolicyProblem(
                    _line_of(builder.lines, path),
                    f"{dotted(path)}: {message}" if path else message,
                    source,
                )
            )
    return LoadedFile(doc, builder.lines, tuple(sorted(problems)), source)


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
    # Each policy kind's section, as the kind reads it (the Policy's field of the same name).
    sections = {
        kind.section: kind.from_section(doc[kind.section]) if kind.section in doc else getattr(default, kind.section)
        for kind in POLICY_KINDS if kind.from_section is not None
    }
    commands = doc.get("commands") or {}
    return Policy(
        version=int(doc.get("version", default.version)),
        mode=doc.get("mode", default.mode),
        scope=scope,
        overrides=tuple(doc.get("overrides") or ()) if "overrides" in doc else default.overrides,
        apply_permission=commands.get("apply_permission", default.apply_permission),
        source=source,
        notify=doc.get("notify") or default.notify,
        **sections,
    )


def validate_policy_text(text: str | bytes, source: str = "moko.yml") -> list[PolicyProblem]:
    """Every problem in a policy file, by line; [] when it is valid.

    ``moko check-config FILE`` prints ``str(problem)`` (``FILE:LINE: message``) for each.
    """
    return list(load_policy_file(text, source).problems)


def policy_of(loaded: LoadedFile) -> Policy:
    """The Policy of a loaded organization file; raises PolicyError when it is invalid."""
    if loaded.problems:
        raise loaded.error()
    return _policy_from_document(loaded.document, loaded.source)


def parse_policy(text: str | bytes, *, source: str = "moko.yml") -> Policy:
    """The Policy a moko.yml describes; raises PolicyError listing every problem."""
    return policy_of(load_policy_file(text, source))


def merge_overrides(
    org: Policy, repo_text: str | bytes, source: str = ".github/moko.yml"
) -> tuple[Policy, list[PolicyProblem]]:
    """Apply a repository's own moko.yml on top of the organization's policy (see the module
    docstring). Returns the policy and the keys it may not override (ignored, the allowed ones
    still apply). An invalid file raises PolicyError: like an invalid organization file it
    changes nothing for that repository (applying the organization's policy alone would undo
    what the file meant to keep, e.g. a wiki it meant to leave on)."""
    return merge_loaded(org, load_policy_file(repo_text, source))


def merge_loaded(org: Policy, loaded: LoadedFile) -> tuple[Policy, list[PolicyProblem]]:
    """``merge_overrides`` for a repository file already loaded (e.g. taken from a cache)."""
    if loaded.problems:
        raise loaded.error()
    doc, lines, source = loaded.document, loaded.lines, loaded.source
    if doc is None:
        return org, []
    allowed = set(org.overrides)
    why = (
        f"the organization's policy allows overriding only {', '.join(org.overrides)}"
        if org.overrides
        else "the organization's policy allows no overrides"
    )
    ignored: list[PolicyProblem] = []

    def ignore(path: Path, reason: str = why) -> None:
        ignored.append(
            PolicyProblem(_line_of(lines, path), f"{dotted(path)}: ignored: {reason}", source)
        )

    notify = org.notify
    kinds = {kind.section: kind for kind in POLICY_KINDS if kind.merge is not None}
    sections: dict[str, Any] = {}
    for key, value in doc.items():
        if key == "version":
            continue
        if key in kinds:  # each policy kind merges its own section
            sections[key] = kinds[key].merge(getattr(org, key), value, allowed, ignore)
        elif key == "notify":
            if "notify" in allowed:
                notify = value or org.notify
            else:
                ignore((key,))
        else:
            ignore((key,))
    merged = replace(org, notify=notify, source=f"{org.source} + {source}", **sections)
    return merged, sorted(ignored)


def parse_policy_with_lines(text: str | bytes, *, source: str = "moko.yml") -> tuple[Policy, dict[Path, int]]:
    """The Policy, and the line of each key path (``("repository", "has_wiki")``,
    ``("branches", 0)``), for messages about a valid file; raises PolicyError as parse_policy."""
    loaded = load_policy_file(text, source)
    return policy_of(loaded), dict(loaded.lines)
