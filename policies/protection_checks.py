"""The ``branches`` section of moko.yml: checked (each rule a branch name, or ``default``, and a
PUT …/protection body or null, as GitHub takes it), read, and a repository's own rules merged
over the organization's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from policies.checks import Checker, Path, Problem, describe, is_int
from policies.defaults import DEFAULT_BRANCH_RULE
from policies.model import BranchRule
from policies.protection_shapes import (
    ACTOR_KEYS,
    FLAG_KEYS,
    PROTECTION_KEYS,
    REVIEW_ACTOR_KEYS,
    REVIEW_FLAG_KEYS,
    REVIEW_KEYS,
    STATUS_CHECK_KEYS,
)

RULE_KEYS: tuple[str, ...] = ("name", "protection")
CHECK_KEYS: tuple[str, ...] = ("context", "app_id")


def check_branches(value: Any, path: Path) -> list[Problem]:
    """The ``branches`` section's problems."""
    checker = _ProtectionChecker()
    checker.branches(value, path)
    return checker.problems


def branch_rules_from_section(value: Any) -> tuple[BranchRule, ...]:
    """The rules of a valid ``branches`` section (null: no branch managed)."""
    return tuple(BranchRule(rule["name"], rule["protection"]) for rule in value or ())


def merge_branch_rules(
    org: tuple[BranchRule, ...], value: Any, allowed: set[str], ignore: Callable[..., None]
) -> tuple[BranchRule, ...]:
    """A repository's own rules over the organization's: the whole list with ``branches``
    (the default branch's rule kept unless ``branches.default`` is listed too), else the rules
    ``branches.<name>`` lists, replaced or added; ``ignore`` the others."""
    branches = list(org)
    # Only an explicit branches.default lets the repository touch the default branch's rules.
    own_default = f"branches.{DEFAULT_BRANCH_RULE}" in allowed
    rules = [
        BranchRule(rule["name"], rule["protection"], displaces_default=own_default)
        for rule in value or ()
    ]
    if "branches" in allowed:
        kept = [] if own_default else [r for r in branches if r.name == DEFAULT_BRANCH_RULE]
        for index, rule in enumerate(rules):
            if rule.name == DEFAULT_BRANCH_RULE and not own_default:
                ignore(
                    ("branches", index),
                    "the default branch's rule can be overridden only when the "
                    "organization's overrides list branches.default "
                    "('branches' does not cover it)",
                )
            else:
                kept.append(rule)
        return tuple(kept)
    for index, rule in enumerate(rules):
        if f"branches.{rule.name}" not in allowed:
            ignore(("branches", index))
            continue
        names = [existing.name for existing in branches]
        if rule.name in names:
            branches[names.index(rule.name)] = rule
        else:
            branches.append(rule)
    return tuple(branches)


class _ProtectionChecker(Checker):
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
            {k: v for k, v in body.items() if k != "required_signatures"}, path, PROTECTION_KEYS
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
        for key in FLAG_KEYS:
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
        self.keys(value, path, STATUS_CHECK_KEYS)
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
            if "app_id" in check and not is_int(check["app_id"]):
                self.report(
                    where + ("app_id",),
                    f"must be an app id (-1: any app), not {describe(check['app_id'])}",
                )

    def reviews(self, value: Any, path: Path) -> None:
        if value is None or not self.mapping(value, path, "a mapping of review settings, or null"):
            return
        self.keys(value, path, REVIEW_KEYS)
        for key in REVIEW_FLAG_KEYS:
            if key in value:
                self.boolean(value[key], path + (key,))
        if "required_approving_review_count" in value:
            count = value["required_approving_review_count"]
            if not (is_int(count) and 0 <= count <= 6):
                self.report(
                    path + ("required_approving_review_count",),
                    f"must be a number from 0 to 6, not {describe(count)}",
                )
        for key in REVIEW_ACTOR_KEYS:
            if key in value:
                self.actors(value[key], path + (key,))

    def actors(self, value: Any, path: Path) -> None:
        if not self.mapping(
            value, path, "a mapping {users: [logins], teams: [slugs], apps: [slugs]}"
        ):
            return
        self.keys(value, path, ACTOR_KEYS)
        for key in ACTOR_KEYS:
            if key in value:
                self.strings(value[key], path + (key,), "logins" if key == "users" else "slugs")
