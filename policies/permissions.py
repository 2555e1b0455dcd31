"""Which GitHub App permission each policy field needs, to be read and to be written, and
which fields an installation's granted permissions leave unreadable.

GitHub leaves fields out of its answers when the token lacks a permission, rather than
refusing the request: ``GET /repos/{owner}/{repo}`` shows the merge settings only to a token
with ``contents: write``, and ``security_and_analysis`` only to the repository's admins (for an
App: ``administration: write``). Moko does not ask for what it may not see; such a field is
unknown, and the plan says which permission is missing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from policies.model import BRANCH_CLEANUP, BRANCH_PROTECTION, REPOSITORY, RULESETS, Policy

LEVELS = ("read", "write", "admin")


@dataclass(frozen=True)
class Need:
    """One permission at a level, as GitHub names it (``contents: write``)."""

    permission: str
    level: str

    def __str__(self) -> str:
        return f"{self.permission}: {self.level}"

    def granted_by(self, granted: Mapping[str, str] | None) -> bool:
        """Whether ``granted`` (an installation's permissions) includes this one. ``None``
        means the permissions are not known (a personal token): GitHub's answer then says."""
        if granted is None:
            return True
        have = granted.get(self.permission)
        return have in LEVELS and LEVELS.index(have) >= LEVELS.index(self.level)


METADATA_READ = Need("metadata", "read")  # every App has it
ADMINISTRATION_READ = Need("administration", "read")
ADMINISTRATION_WRITE = Need("administration", "write")
CONTENTS_WRITE = Need("contents", "write")
ISSUES_READ = Need("issues", "read")  # whether Moko has an issue open (notify: issue)
ISSUES_WRITE = Need("issues", "write")  # the issue of notify: issue
NOTIFY_CONSEQUENCE = "Moko cannot tell a repository that does not meet policy"

# GET /repos/{owner}/{repo} and GraphQL's Repository show these only with contents: write.
MERGE_SETTINGS: tuple[str, ...] = (
    "allow_squash_merge",
    "allow_merge_commit",
    "allow_rebase_merge",
    "allow_auto_merge",
    "delete_branch_on_merge",
    "allow_update_branch",
    "use_squash_pr_title_as_default",
    "squash_merge_commit_title",
    "squash_merge_commit_message",
    "merge_commit_title",
    "merge_commit_message",
)
# Shown to the repository's admins only.
ADMIN_ONLY_SETTINGS: tuple[str, ...] = ("security_and_analysis",)

# What app.yml asks for (its default_permissions): the least the built-in policy needs.
APP_PERMISSIONS: Mapping[str, str] = {
    "administration": "write",
    "checks": "write",
    "contents": "read",
    "issues": "write",
    "pull_requests": "write",
    "metadata": "read",
}


def read_need(section: str, field: str) -> Need:
    """The permission reading one policy field needs (``section`` is its kind)."""
    if section == BRANCH_PROTECTION:
        return ADMINISTRATION_READ
    if section == RULESETS:  # GitHub lists and reads repository rulesets with metadata: read
        return METADATA_READ
    if field in MERGE_SETTINGS:
        return CONTENTS_WRITE
    if field in ADMIN_ONLY_SETTINGS:
        return ADMINISTRATION_WRITE
    return METADATA_READ


def write_need(section: str, field: str) -> Need:
    """The permission changing one policy field needs: repository settings, branch
    protection and rulesets are all the repository's administration; deleting a branch is
    writing its contents."""
    if section == BRANCH_CLEANUP:
        return CONTENTS_WRITE
    return ADMINISTRATION_WRITE


def unreadable_reason(need: Need) -> str:
    """Why a field is unknown when the installation lacks ``need``."""
    return f"reading it needs the {need} permission, which the App's installation was not granted"


@dataclass(frozen=True)
class PermissionGap:
    """A policy field the permissions given cannot read or write."""

    key: str  # "repository.<field>" or "branch_protection.<branch rule>"
    action: str  # "read" or "write"
    need: Need

    def __str__(self) -> str:
        return f"{self.key}: {self.gerund} it needs the {self.need} permission"

    @property
    def gerund(self) -> str:
        return {"read": "reading", "write": "writing"}[self.action]


def _keys(policy: Policy) -> list[tuple[str, str]]:
    keys = [(REPOSITORY, field) for field in policy.repository]
    keys += [(BRANCH_PROTECTION, rule.name) for rule in policy.branches]
    keys += [(RULESETS, str(ruleset["name"])) for ruleset in policy.rulesets]
    if policy.branch_cleanup is not None:
        keys.append((BRANCH_CLEANUP, "branches"))
    return keys


def permission_gaps(policy: Policy, granted: Mapping[str, str] | None) -> list[PermissionGap]:
    """Every field of the policy that ``granted`` cannot read, or cannot write (for
    `moko check-config` and a setup check of each installation)."""
    gaps = []
    for section, field in _keys(policy):
        for action, need in (("read", read_need(section, field)), ("write", write_need(section, field))):
            if not need.granted_by(granted):
                gaps.append(PermissionGap(f"{section}.{field}", action, need))
    if policy.notify == "issue":  # Moko's open issue is read, then opened, updated or closed
        for action, need in (("read", ISSUES_READ), ("write", ISSUES_WRITE)):
            if not need.granted_by(granted):
                gaps.append(PermissionGap("notify", action, need))
    return gaps


def unreadable_settings(fields: Iterable[str], granted: Mapping[str, str] | None) -> dict[str, str]:
    """The repository fields (of a policy) that ``granted`` cannot read -> why."""
    return {
        field: unreadable_reason(read_need(REPOSITORY, field))
        for field in fields
        if not read_need(REPOSITORY, field).granted_by(granted)
    }


def protection_unreadable(granted: Mapping[str, str] | None) -> str | None:
    """Why branch protection cannot be read with ``granted``, or None when it can."""
    need = read_need(BRANCH_PROTECTION, "")
    return None if need.granted_by(granted) else unreadable_reason(need)


def permissions_table() -> list[tuple[str, str, str]]:
    """(policy field, permission to read it, permission to write it), for the README."""
    rows = [
        ("repository.<any other field>", str(METADATA_READ), str(ADMINISTRATION_WRITE)),
        *[(f"repository.{f}", str(CONTENTS_WRITE), str(ADMINISTRATION_WRITE)) for f in MERGE_SETTINGS],
        *[(f"repository.{f}", str(ADMINISTRATION_WRITE), str(ADMINISTRATION_WRITE)) for f in ADMIN_ONLY_SETTINGS],
        ("branches[].protection", str(ADMINISTRATION_READ), str(ADMINISTRATION_WRITE)),
        ("rulesets[]", str(METADATA_READ), str(ADMINISTRATION_WRITE)),
        ("notify: issue", str(ISSUES_READ), str(ISSUES_WRITE)),
    ]
    return rows
