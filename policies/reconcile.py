"""Reconciling many repositories of one installation (installation events, policy changes)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from policies.apply import Run
from policies.engine import Known, PolicyEngine, RepoResult


async def installation_repositories(gh: Any) -> list[dict[str, Any]]:
    """Every repository the installation can reach, as full REST objects (100 a page)."""
    return [repo async for repo in gh.getiter("/installation/repositories?per_page=100", iterable_key="repositories")]


async def reconcile_repositories(
    engine: PolicyEngine, gh: Any, run: Run, repositories: Iterable[dict[str, Any]]
) -> list[RepoResult]:
    """Remediate each repository; the list answers already hold their settings, so only what
    they lack (branch protection) is read."""
    results = []
    for repo in repositories:
        results.append(await engine.remediate(gh, run, repo, known=Known()))
    return results
