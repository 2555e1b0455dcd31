"""Checks a parsed moko.yml against the file format; reports (path, message) pairs."""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any

from policies import protection_shapes as bp
from policies.branch_cleanup import check_branch_cleanup
from policies.model import MODES, NOTIFY, PERMISSIONS
from policies.repository_settings import (
    COMPANION_FIELDS,
    PATCH_FIELDS,
    REFUSED_FIELDS,
    check_setting,
)
from policies.rulesets import check_rulesets

Path = tuple[str | int, ...]
Problem = tuple[Path, str]

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
RULE_KEYS: tuple[str, ...] = ("name", "protection")
SCOPE_KEYS: tuple[str, ...] = ("include", "exclude", "archived")
COMMANDS_KEYS: tuple[str, ...] = ("apply_permission",)
CHECK_KEYS: tuple[str, ...] = ("context", "app_id")
SUPPORTED_VERSION = 1

OVERRIDE_HELP = (
    "repository, repository.<field>, branches, branches.<rule name>, rulesets, "
    "rulesets.<ruleset name>, notify or branch_cleanup"
)


def dotted(path: Path) -> str:
    """``("branches", 0, "protection")`` -> ``branches[0].protection``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


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


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _Checker:
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
            _is_int(doc["version"]) and doc["version"] == SUPPORTED_VERSION
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
        if doc.get("repository") is not None:
            self.repository(doc["repository"], ("repository",))
        if doc.get("branches") is not None:
            self.branches(doc["branches"], ("branches",))
        if doc.get("rulesets") is not None:
            self.problems.extend(check_rulesets(doc["rulesets"], ("rulesets",)))
        if "branch_cleanup" in doc:
            self.problems.extend(check_branch_cleanup(doc["branch_cleanup"], ("branch_cleanup",)))
        if doc.get("scope") is not None:
            self.scope(doc["scope"], ("scope",))
        if doc.get("overrides") is not None:
            self.overrides(doc["overrides"], ("overrides",))
        if doc.get("commands") is not None:
            self.commands(doc["commands"], ("commands",))

    def repository(self, value: Any, path: Path) -> None:
        if not self.mapping(value, path, "a mapping of PATCH /repos/{owner}/{repo} fields"):
            return
        for field, setting in value.items():
            if field not in PATCH_FIELDS:
                close = difflib.get_close_matches(str(field), list(PATCH_FIELDS), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                self.report(
                    path + (field,), f"not a field of PATCH /repos/{{owner}}/{{repo}}{hint}"
                )
                continue
            problem = check_setting(field, setting)
            if problem:
                self.report(path + (field,), problem)
        if "private" in value and "visibility" in value:
            self.report(path + ("visibility",), "set either private or visibility, not both")
        for message, title in COMPANION_FIELDS.items():
            if message in value and title not in value:
                self.report(path + (message,), f"GitHub needs {title} whenever {message} is set")

    def branches(self, value: Any, path: Path) -> None:
        if not isinstance(value, list):
            self.report(
                path, f"must be a list of {{name, protection}} rules, not {describe(value)}"
            )
            return
        seen: dict[str, int] = {}
        for index, rule in enumerate(value):
            where = path + (index,)
            if not self.mapping(rule, where, "a rule {name: …, protection: …}"):
                continue
            self.keys(rule, where, RULE_KEYS)
            name = rule.get("name")
            if "name" not in rule:
                self.report(
                    where, "name: missing (a branch name, or 'default' for the default branch)"
                )
            elif not isinstance(name, str) or not name:
                self.report(
                    where + ("name",), f"must be a branch name or 'default', not {describe(name)}"
                )
            elif any(ch in name for ch in "*?[]"):
                self.report(
                    where + ("name",), "must be an exact branch name or 'default' (no wildcards)"
                )
            elif name in seen:
                self.report(
                    where + ("name",), f"{name!r} already has a rule (branches[{seen[name]}])"
                )
            else:
                seen[name] = index
            if "protection" not in rule:
                self.report(
                    where,
                    "protection: missing (a PUT …/protection body, or null to remove protection)",
                )
            elif rule["protection"] is not None:
                self.protection(rule["protection"], where + ("protection",))

    def protection(self, body: Any, path: Path) -> None:
        if not self.mapping(body, path, "the body of PUT …/branches/{branch}/protection, or null"):
            return
        for key in body:
            if key == "required_signatures":
                self.report(
                    path + (key,),
                    "not part of the PUT …/protection body (it has its own endpoint); Moko does not manage it",
                )
        self.keys(
            {k: v for k, v in body.items() if k != "required_signatures"}, path, bp.PROTECTION_KEYS
        )
        if "required_status_checks" in body:
            self.status_checks(body["required_status_checks"], path + ("required_status_checks",))
        if "enforce_admins" in body:
            self.boolean(body["enforce_admins"], path + ("enforce_admins",), nullable=True)
        if "required_pull_request_reviews" in body:
            self.reviews(
                body["required_pull_request_reviews"], path + ("required_pull_request_reviews",)
            )
        if body.get("restrictions") is not None:
            self.actors(body["restrictions"], path + ("restrictions",))
        for key in bp.FLAG_KEYS:
            if key in body:
                self.boolean(body[key], path + (key,), nullable=key == "allow_force_pushes")
        if body.get("block_creations") is True and body.get("restrictions") is None:
            # GitHub keeps it off without push restrictions: Moko would PUT it forever.
            self.report(
                path + ("block_creations",),
                "needs restrictions (who may push) in the same protection",
            )

    def status_checks(self, value: Any, path: Path) -> None:
        if value is None or not self.mapping(value, path, "{strict, contexts, checks} or null"):
            return
        self.keys(value, path, bp.STATUS_CHECK_KEYS)
        if "strict" not in value:
            self.report(path, "strict: missing (true: branches must be up to date before merging)")
        else:
            self.boolean(value["strict"], path + ("strict",))
        if "contexts" not in value and "checks" not in value:
            self.report(path, "contexts: missing (the required checks; use null to require none)")
        if "contexts" in value:
            self.strings(value["contexts"], path + ("contexts",), "check names")
        checks = value.get("checks")
        if "checks" in value and not isinstance(checks, list):
            self.report(
                path + ("checks",), f"must be a list of {{context, app_id}}, not {describe(checks)}"
            )
        for index, check in enumerate(checks if isinstance(checks, list) else ()):
            where = path + ("checks", index)
            if not self.mapping(check, where, "{context: name, app_id: id}"):
                continue
            self.keys(check, where, CHECK_KEYS)
            if "context" not in check:
                self.report(where, "context: missing (the name of the required check)")
            elif not isinstance(check["context"], str) or not check["context"]:
                self.report(
                    where + ("context",), f"must be a check name, not {describe(check['context'])}"
                )
            if "app_id" in check and not _is_int(check["app_id"]):
                self.report(
                    where + ("app_id",),
                    f"must be an app id (-1: any app), not {describe(check['app_id'])}",
                )

    def reviews(self, value: Any, path: Path) -> None:
        if value is None or not self.mapping(value, path, "a mapping of review settings, or null"):
            return
        self.keys(value, path, bp.REVIEW_KEYS)
        for key in bp.REVIEW_FLAG_KEYS:
            if key in value:
                self.boolean(value[key], path + (key,))
        if "required_approving_review_count" in value:
            count = value["required_approving_review_count"]
            if not (_is_int(count) and 0 <= count <= 6):
                self.report(
                    path + ("required_approving_review_count",),
                    f"must be a number from 0 to 6, not {describe(count)}",
                )
        for key in bp.REVIEW_ACTOR_KEYS:
            if key in value:
                self.actors(value[key], path + (key,))

    def actors(self, value: Any, path: Path) -> None:
        if not self.mapping(
            value, path, "a mapping {users: [logins], teams: [slugs], apps: [slugs]}"
        ):
            return
        self.keys(value, path, bp.ACTOR_KEYS)
        for key in bp.ACTOR_KEYS:
            if key in value:
                self.strings(value[key], path + (key,), "logins" if key == "users" else "slugs")

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
        return f"must be a key such as repository.has_wiki, not {describe(key)}"
    section, _, rest = key.partition(".")
    if section == "repository":
        if not rest:
            return None
        if rest in REFUSED_FIELDS:
            return f"{rest} cannot be overridden: a policy may not set it"
        if rest not in PATCH_FIELDS:
            close = difflib.get_close_matches(rest, list(PATCH_FIELDS), n=1)
            hint = f"; did you mean 'repository.{close[0]}'?" if close else ""
            return f"{key!r}: {rest!r} is not a field of PATCH /repos/{{owner}}/{{repo}}{hint}"
        return None
    if section in ("branches", "rulesets") or key in ("notify", "branch_cleanup"):
        return None
    return f"{key!r} cannot be overridden; overrides may list {OVERRIDE_HELP}"


def check_document(doc: Any) -> list[Problem]:
    """Every problem of a parsed moko.yml, as (path, message)."""
    checker = _Checker()
    checker.document(doc)
    return checker.problems
