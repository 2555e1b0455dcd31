"""Repositories' own moko.yml taken from a batched GraphQL read, so that an organization that
allows overrides does not cost one REST read per repository."""

from __future__ import annotations

import copy
from typing import Any

from policies.engine import PolicyEngine
from policies.loader import merge_overrides
from policies.source import POLICY_PATH, POLICY_REPO, PolicySource, ResolvedPolicy


class PreloadedPolicySource(PolicySource):
    """The organization's policy from the shared source (and its cache); a repository's own
    file from what a batched read found, or, when it was not read, from the shared source."""

    def __init__(self, shared: PolicySource) -> None:
        super().__init__()
        self._shared = shared
        self._texts: dict[str, str | None] = {}

    def remember(self, full_name: str, text: str | None) -> None:
        """The repository's own moko.yml as read (None: it has none)."""
        self._texts[full_name.lower()] = text

    def invalidate(self, installation: int | None, org: str) -> None:
        self._shared.invalidate(installation, org)

    async def org_policy(self, gh: Any, installation: int | None, org: str) -> Any:
        return await self._shared.org_policy(gh, installation, org)

    async def policy_for(self, gh: Any, installation: int | None, org: str, repo: str) -> ResolvedPolicy:
        key = f"{org}/{repo}".lower()
        if key not in self._texts:
            return await self._shared.policy_for(gh, installation, org, repo)
        text = self._texts.pop(key)
        policy = await self.org_policy(gh, installation, org)
        if not policy.overrides or repo.lower() == POLICY_REPO or text is None:
            return ResolvedPolicy(policy)
        merged, problems = merge_overrides(policy, text, source=f"{org}/{repo}/{POLICY_PATH}")
        return ResolvedPolicy(merged, tuple(problems))


def with_preloaded_policies(engine: PolicyEngine) -> PolicyEngine:
    """The same engine (store, audit, dry-run) taking repositories' own files from batched reads
    (see ``reconcile.remediate_snapshot``)."""
    if isinstance(engine.source, PreloadedPolicySource):
        return engine
    batch_engine = copy.copy(engine)
    batch_engine.source = PreloadedPolicySource(engine.source)
    return batch_engine
