"""Who may run a command: the commenter's role on the repository (asked of GitHub), and the
per-user rate limit that keeps public repositories from being used to flood GitHub."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gidgethub import BadRequest

from bot.github_protocol import GitHub
from bot.store.base import HitCounter
from handlers.command_text import RATE_LIMIT

# Least to most; "none" is what GitHub answers for someone with no access.
ROLES = ("none", "read", "triage", "write", "maintain", "admin")
AUDIT_PERMISSION = "triage"
# plan and status's field-by-field table show protection details Moko reads with admin rights.
PLAN_PERMISSION = "triage"
STATUS_DETAIL_PERMISSION = "triage"

RATE_WINDOW_SECONDS = 60.0


def at_least(role: str, needed: str) -> bool:
    return ROLES.index(role) >= ROLES.index(needed) if role in ROLES and needed in ROLES else False


def role_from(answer: Any) -> str:
    """The role in an answer of GET …/collaborators/{username}/permission.

    ``role_name`` is precise (it tells maintain and triage apart); the legacy ``permission``
    (admin, write, read, none) is the fallback, e.g. for a custom role's name.
    """
    if not isinstance(answer, dict):
        return "none"
    role = answer.get("role_name")
    if role in ROLES:
        return str(role)
    permission = answer.get("permission")
    return str(permission) if permission in ROLES else "none"


@dataclass(frozen=True)
class Access:
    """A commenter's access to a repository.

    ``role`` is the level Moko goes by (one of ROLES); ``role_name`` what GitHub calls the
    role, a custom repository role's own name too; ``fallback`` says that GitHub did not tell
    a custom role's base role, so ``role`` is its legacy ``permission`` (maintain counted as
    write, triage as read).
    """

    role: str
    role_name: str
    fallback: bool = False

    @property
    def custom(self) -> bool:
        return self.role_name != self.role or self.fallback


async def custom_role_base(gh: GitHub, org: str, name: str) -> str | None:
    """A custom repository role's base role, or None when GitHub does not tell it.

    The list needs an organization permission the App may not have (custom repository roles
    or administration, read) and exists only for Enterprise Cloud: 403 and 404 mean unknown.
    """
    try:
        answer = await gh.getitem("/orgs/{org}/custom-repository-roles", url_vars={"org": org})
    except BadRequest as exc:
        if exc.status_code in (403, 404):
            return None
        raise
    roles = answer.get("custom_roles") if isinstance(answer, dict) else None
    for role in roles or ():
        if str(role.get("name", "")).lower() == name.lower() and role.get("base_role") in ROLES:
            return str(role["base_role"])
    return None


async def commenter_access(gh: GitHub, owner: str, repo: str, username: str) -> Access:
    """The user's access to the repository, asked of GitHub each time (roles change)."""
    try:
        answer = await gh.getitem(
            "/repos/{owner}/{repo}/collaborators/{username}/permission",
            url_vars={"owner": owner, "repo": repo, "username": username},
        )
    except BadRequest as exc:
        if exc.status_code == 404:  # GitHub does not know the user here
            return Access("none", "none")
        raise
    legacy = role_from(answer)
    name = answer.get("role_name") if isinstance(answer, dict) else None
    if not isinstance(name, str) or not name or name in ROLES:
        return Access(legacy, legacy)
    base = await custom_role_base(gh, owner, name)
    if base is not None:
        return Access(base, name)
    return Access(legacy, name, fallback=True)


async def commenter_role(gh: GitHub, owner: str, repo: str, username: str) -> str:
    """The level of the user's role on the repository (a custom role's base role)."""
    return (await commenter_access(gh, owner, repo, username)).role


class Turn(enum.Enum):
    """What a command gets from the rate limit."""

    ALLOWED = "allowed"
    NOTICE = "notice"  # the first one over the limit: one answer saying so
    SILENT = "silent"  # the ones after it: nothing


async def rate_turn(
    store: HitCounter, repo: str, user: str, clock: Callable[[], float] = time.time
) -> Turn:
    """Count this command against the user's limit in this repository.

    Every command counts, refused ones too. Over the limit, only one notice is sent per
    window, however long the user goes on.
    """
    key = f"{repo.lower()}:{user.lower()}"
    now = clock()
    if await store.count_hit(f"cmd:{key}", RATE_WINDOW_SECONDS, now) <= RATE_LIMIT:
        return Turn.ALLOWED
    notices = await store.count_hit(f"cmd-notice:{key}", RATE_WINDOW_SECONDS, now)
    return Turn.NOTICE if notices == 1 else Turn.SILENT
