"""Repositories' own moko.yml taken from a batched GraphQL read, so that an organization that
allows overrides does not cost one REST read per repository."""

from __future__ import annotations

import copy
from typing import Any

from bot.github_protocol import GitHub
from policies.engine import PolicyEngine
from policies.source import POLICY_REPO, PolicyFile, PolicySource, ResolvedPolicy


class PreloadedPolicySource(PolicySource):
    """The organization's policy from the shared source (and its cache); a repository's own
    file from what a batched read found, or, when it was not read, from the shared source."""

    def __init__(self, shared: PolicySource) -> None:
        super().__init__(parsed=shared.parsed)
        self._shared = shared
        self._files: dict[str, PolicyFile | None] = {}

    def remember(self, full_name: str, file: PolicyFile | None) -> None:
        """The repository's own moko.yml as read (None: it has none)."""
        self._files[full_name.lower()] = file

    def invalidate(self, installation: int | None, org: str) -> None:
        self._shared.invalidate(installation, org)

    async def org_policy(self, gh: GitHub, installation: int | None, org: str) -> Any:
        return await self._shared.org_policy(gh, installation, org)

    async def policy_for(self, gh: GitHub, installation: int | None, org: str, repo: str) -> ResolvedPolicy:
        key = f"{org}/{repo}".lower()
        if key not in self._files:
            return await self._shared.policy_for(gh, installation, org, repo)
        file = self._files.pop(key)
        policy = await self.org_policy(gh, installation, org)
        if not policy.overrides or repo.lower() == POLICY_REPO or file is None:
            return ResolvedPolicy(policy)
        return await self.merge_repository_file(policy, file, org, repo)


def with_preloaded_policies(engine: PolicyEngine) -> PolicyEngine:
    """The same engine (store, audit, dry-run) taking repositories' own files from batched reads
    (see ``reconcile.remediate_snapshot``)."""
    if isinstance(engine.source, PreloadedPolicySource):
        return engine
    batch_engine = copy.copy(engine)
    batch_engine.source = PreloadedPolicySource(engine.source)
    return batch_engine
