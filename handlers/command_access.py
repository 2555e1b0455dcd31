"""Who may run a command: the commenter's role on the repository (asked of GitHub), and the
per-user rate limit that keeps public repositories from being used to flood GitHub."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from typing import Any

from gidgethub import BadRequest

from bot.store.base import Store

# Least to most; "none" is what GitHub answers for someone with no access.
ROLES = ("none", "read", "triage", "write", "maintain", "admin")
AUDIT_PERMISSION = "triage"

RATE_LIMIT = 5  # commands per user per repository per window
RATE_WINDOW_SECONDS = 60.0
# Services.components key of a `() -> float` clock (epoch seconds); tests set it.
CLOCK = "command_clock"


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


async def commenter_role(gh: Any, owner: str, repo: str, username: str) -> str:
    """The user's role on the repository, asked of GitHub each time (roles change)."""
    try:
        answer = await gh.getitem(
            "/repos/{owner}/{repo}/collaborators/{username}/permission",
            url_vars={"owner": owner, "repo": repo, "username": username},
        )
    except BadRequest as exc:
        if exc.status_code == 404:  # GitHub does not know the user here
            return "none"
        raise
    return role_from(answer)


class Turn(enum.Enum):
    """What a command gets from the rate limit."""

    ALLOWED = "allowed"
    NOTICE = "notice"  # the first one over the limit: one answer saying so
    SILENT = "silent"  # the ones after it: nothing


async def rate_turn(
    store: Store, repo: str, user: str, clock: Callable[[], float] = time.time
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
