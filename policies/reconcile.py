"""Reconciling many repositories of one installation (installation events, policy changes,
sweeps): state read in GraphQL batches of 100, then each repository remediated."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any

from gidgethub import GitHubException

from bot.github_protocol import GitHub
from bot.logs import get_logger
from bot.outcomes import Outcome
from policies.apply import Run, github_error
from policies.batch_read import PAGE_SIZE, ReadFields, read_owner, read_repositories
from policies.engine import (
    ALL,
    Concern,
    PolicyEngine,
    RepoResult,
)
from policies.loader import PolicyError
from policies.model import RepoState
from policies.preloaded_source import PreloadedPolicySource, with_preloaded_policies

log = get_logger("moko.reconcile")

# Repositories remediated at once. Writes are serialized (and spaced) per installation anyway;
# this overlaps the store's locks and checkpoints and any REST reads the planner asks for.
CONCURRENCY = 8


async def fields_for(engine: PolicyEngine, gh: GitHub, run: Run, owner: str) -> ReadFields:
    """What to read for the owner's repositories: what its policy (and overrides) name.

    An invalid policy file is not an error here: each repository's remediation records it.
    """
    try:
        policy = await engine.source.org_policy(gh, run.installation, owner)
    except PolicyError:  # remediate() records it for each repository, as it always has
        return ReadFields()
    return ReadFields.for_policy(policy, await engine.granted(run.installation))


async def remediate_snapshot(
    engine: PolicyEngine, gh: GitHub, run: Run, snapshot: RepoState, scope: Concern = ALL
) -> RepoResult:
    """One repository from a batched read; a GitHub error fails this repository, not the batch.
    Sweeps pass ``SWEEP``: only they delete stale branches.

    With an engine from ``with_preloaded_policies``, the repository's own policy file comes
    from the read too.
    """
    if snapshot.own_policy_read and isinstance(engine.source, PreloadedPolicySource):
        engine.source.remember(snapshot.full_name, snapshot.own_policy)
    try:
        # An empty repository's protection waits for its first push; the engine records that
        # once, not at every round.
        return await engine.remediate(gh, run, snapshot.repository, known=snapshot, scope=scope)
    except GitHubException as exc:  # e.g. the policy file could not be read
        error = github_error(exc)
        log.error("repository_remediation_failed", repo=snapshot.full_name, error=error)
        return RepoResult(snapshot.full_name, Outcome.FAILED, error=error)


async def for_each(
    snapshots: AsyncIterator[RepoState],
    work: Callable[[RepoState], Awaitable[None]],
    *,
    concurrency: int = CONCURRENCY,
) -> None:
    """Run ``work`` on every snapshot, ``concurrency`` at a time, reading ahead of the workers.

    A failed read stops the reading; the repositories already read are finished first, then
    the error is raised.
    """
    # Room for a whole page, so the next page is read while the workers go through this one.
    queue: asyncio.Queue[RepoState | None] = asyncio.Queue(maxsize=PAGE_SIZE + concurrency)
    failure: list[BaseException] = []

    async def produce() -> None:
        try:
            async for snapshot in snapshots:
                await queue.put(snapshot)
        except Exception as exc:  # re-raised below, once the workers are done
            failure.append(exc)
        # Not on cancellation: the workers are being cancelled too, and would never take these.
        for _ in range(concurrency):
            await queue.put(None)

    async def consume() -> None:
        while (snapshot := await queue.get()) is not None:
            await work(snapshot)

    async with asyncio.TaskGroup() as group:
        group.create_task(produce())
        for _ in range(concurrency):
            group.create_task(consume())
    if failure:
        raise failure[0]


async def owner_snapshots(gh: GitHub, owner: str, fields: ReadFields) -> AsyncIterator[RepoState]:
    async for _total, page in read_owner(gh, owner, fields):
        for snapshot in page:
            yield snapshot


async def _listed(snapshots: Iterable[RepoState]) -> AsyncIterator[RepoState]:
    for snapshot in snapshots:
        yield snapshot


async def _remediate_all(
    engine: PolicyEngine, gh: GitHub, run: Run, snapshots: AsyncIterator[RepoState]
) -> list[RepoResult]:
    results: list[RepoResult] = []
    batch_engine = with_preloaded_policies(engine)

    async def one(snapshot: RepoState) -> None:
        results.append(await remediate_snapshot(batch_engine, gh, run, snapshot))

    await for_each(snapshots, one)
    return sorted(results, key=lambda r: r.repo.lower())


async def reconcile_repositories(
    engine: PolicyEngine, gh: GitHub, run: Run, repositories: Iterable[Mapping[str, Any]]
) -> list[RepoResult]:
    """Remediate the named repositories (objects with ``full_name``, e.g. a webhook's list):
    their settings and protection are read in GraphQL batches of 100 first."""
    names = [str(repo["full_name"]) for repo in repositories]
    if not names:
        return []
    owner = names[0].split("/", 1)[0]
    fields = await fields_for(engine, gh, run, owner)
    snapshots, missing = await read_repositories(gh, names, fields)
    # Gone since the event was sent (deleted, transferred): nothing to remediate.
    results = [RepoResult(name, Outcome.SKIPPED, error="repository not found") for name in missing]
    return sorted(results + await _remediate_all(engine, gh, run, _listed(snapshots)), key=lambda r: r.repo.lower())


async def reconcile_owner(engine: PolicyEngine, gh: GitHub, run: Run, owner: str) -> list[RepoResult]:
    """Remediate every repository of the account the installation is on (100 read a query)."""
    fields = await fields_for(engine, gh, run, owner)
    return await _remediate_all(engine, gh, run, owner_snapshots(gh, owner, fields))
