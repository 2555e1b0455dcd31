"""Where a repository's policy comes from: the organization's `.github` repository, the
repository's own overrides, or the built-in default; cached per installation."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cachetools import TTLCache
from gidgethub import BadRequest

from policies.defaults import DEFAULT_POLICY
from policies.loader import PolicyError, PolicyProblem, merge_overrides, parse_policy
from policies.model import Policy

POLICY_REPO = ".github"
POLICY_PATH = ".github/moko.yml"
# Other replicas do not see the push that changes the file; the TTL bounds how stale they get.
CACHE_TTL_SECONDS = 300.0


@dataclass(frozen=True)
class ResolvedPolicy:
    """The policy for one repository, and the warnings its overrides raised."""

    policy: Policy
    warnings: tuple[PolicyProblem, ...] = ()


def _decode(content: Mapping[str, Any], source: str) -> str:
    if content.get("type") not in (None, "file"):
        raise PolicyError([PolicyProblem(1, f"{POLICY_PATH} is not a file", source)], source)
    if content.get("encoding") == "none":
        # Over 1 MB the contents API answers with no content at all: never an empty file.
        size = content.get("size")
        message = f"the file is too large ({size} bytes): GitHub gives no content over 1 MB"
        raise PolicyError([PolicyProblem(1, message, source)], source)
    try:
        return base64.b64decode(content.get("content") or "").decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise PolicyError([PolicyProblem(1, "not UTF-8 text", source)], source) from None


async def read_file(gh: Any, owner: str, repo: str, path: str) -> str | None:
    """A file's text from the default branch, or None when there is none."""
    try:
        content = await gh.getitem(
            "/repos/{owner}/{repo}/contents/{path}", url_vars={"owner": owner, "repo": repo, "path": path}
        )
    except BadRequest as exc:
        if exc.status_code == 404:
            return None
        raise
    if isinstance(content, list):  # a directory of that name
        return None
    return _decode(content, f"{owner}/{repo}/{path}")


class PolicySource:
    """Reads and caches organization policies; invalid files raise PolicyError (nothing applies)."""

    def __init__(self, *, ttl: float = CACHE_TTL_SECONDS, maxsize: int = 4096) -> None:
        self._org: TTLCache[tuple[int | None, str], Policy] = TTLCache(maxsize=maxsize, ttl=ttl)

    def invalidate(self, installation: int | None, org: str) -> None:
        self._org.pop((installation, org.lower()), None)

    async def org_policy(self, gh: Any, installation: int | None, org: str) -> Policy:
        key = (installation, org.lower())
        cached = self._org.get(key)
        if cached is not None:
            return cached
        source = f"{org}/{POLICY_REPO}/{POLICY_PATH}"
        text = await read_file(gh, org, POLICY_REPO, POLICY_PATH)
        policy = DEFAULT_POLICY if text is None else parse_policy(text, source=source)
        self._org[key] = policy
        return policy

    async def policy_for(self, gh: Any, installation: int | None, org: str, repo: str) -> ResolvedPolicy:
        """The organization's policy with the repository's allowed overrides applied."""
        policy = await self.org_policy(gh, installation, org)
        if not policy.overrides or repo.lower() == POLICY_REPO:
            return ResolvedPolicy(policy)
        text = await read_file(gh, org, repo, POLICY_PATH)
        if text is None:
            return ResolvedPolicy(policy)
        merged, problems = merge_overrides(policy, text, source=f"{org}/{repo}/{POLICY_PATH}")
        return ResolvedPolicy(merged, tuple(problems))
