"""A sweep: every repository of one account reconciled once, with a checkpoint per repository
in the store, so that an interrupted sweep resumes where it stopped (`moko sweep`, and the
continuous reconciliation inside `moko serve`)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from bot.github_app import GitHubApp
from bot.github_protocol import GitHub
from bot.logs import get_logger
from bot.outcomes import Outcome
from bot.reconcile_budget import TurnCost
from bot.store.base import SweepCheckpoints
from policies.apply import ChangeOutcome, Run
from policies.batch_read import (
    OwnerNotFound,
    ReadFields,
    read_owner,
    read_repositories,
)
from policies.engine import SWEEP, PolicyEngine, RepoResult
from policies.loader import PolicyError
from policies.model import RepoState
from policies.permissions import ISSUES_READ
from policies.preloaded_source import with_preloaded_policies
from policies.reconcile import CONCURRENCY, for_each, remediate_snapshot
from policies.source import POLICY_PATH, POLICY_REPO

log = get_logger("moko.sweep")

# The summary's columns, in order. A dry run's "planned" repositories count as "fixed":
# what the sweep would fix (their results say "planned").
COUNTED = (Outcome.COMPLIANT, Outcome.FIXED, Outcome.FAILED, Outcome.DEFERRED, Outcome.SKIPPED, Outcome.UNKNOWN)
_COUNTED_AS = {Outcome.PLANNED: Outcome.FIXED}


@dataclass(frozen=True)
class SweepRequest:
    """What to sweep: an account's repositories (all, or the named ones), and how."""

    owner: str
    repos: tuple[str, ...] = ()  # repository names without the owner; empty: every repository
    retry_failed: bool = False
    trigger: str = "sweep"

    def checkpoint_key(self, dry_run: bool) -> str:
        """The store's key for this sweep's checkpoints. A sweep of some repositories, or a dry
        run, keeps its own, so it never resumes or ends the full sweep of the account."""
        key = self.owner.lower()
        if self.repos:
            key += ":" + ",".join(sorted({name.lower() for name in self.repos}))
        return key + ("#dry-run" if dry_run else "")


@dataclass(frozen=True)
class SweepResult:
    """One repository's line of a sweep: its outcome, its changes with theirs, and what failed.
    A repository an earlier, interrupted run of the sweep did has its outcome only."""

    repo: str
    outcome: Outcome
    changes: tuple[ChangeOutcome, ...] = ()
    error: str | None = None

    @classmethod
    def of(cls, result: RepoResult) -> SweepResult:
        return cls(result.repo, result.outcome, result.changes, result.error)

    @property
    def first_error(self) -> str | None:
        """Why it failed: its own error, else its first change's."""
        return self.error or next((c.error for c in self.changes if c.error), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "repo": self.repo,
            "outcome": self.outcome,
            "changes": [c.to_dict() for c in self.changes],
            **({"error": self.error} if self.error else {}),
        }


@dataclass
class SweepReport:
    """What a sweep came to: one result per repository, carried ones included."""

    owner: str
    sweep_id: str
    resumed: bool
    dry_run: bool
    results: list[SweepResult] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(COUNTED, 0)
        for result in self.results:
            outcome = _COUNTED_AS.get(result.outcome, result.outcome)
            counts[outcome] = counts.get(outcome, 0) + 1
        return counts

    @property
    def failed(self) -> int:
        return self.counts()[Outcome.FAILED]

    @property
    def unknown(self) -> int:
        """Repositories whose compliance could not be told: they count against the sweep."""
        return self.counts()[Outcome.UNKNOWN]

    def to_json(self, requests: int) -> dict[str, Any]:
        """The document `moko sweep --json` prints."""
        return {
            "org": self.owner,
            "repositories": len(self.results),
            **self.counts(),
            "requests": requests,
            "results": [r.to_json() for r in sorted(self.results, key=lambda r: r.repo.lower())],
        }


class SweepObserver:
    """Told how a sweep goes (the CLI's progress bar); does nothing by default."""

    def total(self, repositories: int) -> None:
        """How many repositories the sweep will go through (known after the first page)."""

    def advance(self, result: SweepResult) -> None:
        """One repository is done (or was done by an earlier, interrupted run)."""


async def sweep_owner(
    engine: PolicyEngine,
    gh: GitHub,
    request: SweepRequest,
    *,
    store: SweepCheckpoints,
    actor: str,
    installation: int | None,
    observer: SweepObserver | None = None,
    concurrency: int = CONCURRENCY,
    new_sweep_id: Callable[[], str] = lambda: f"sweep-{uuid.uuid4()}",
) -> SweepReport:
    """Reconcile an account's repositories, skipping those the unfinished sweep already did.

    Raises PolicyError (recorded in the audit trail first) when the account's policy file is
    invalid, OwnerNotFound when the account cannot be seen, and a GitHub error when a batched
    read fails: the sweep then stays unfinished, and the next run resumes it.
    """
    observer = observer or SweepObserver()
    engine = with_preloaded_policies(engine)
    dry_run = engine.global_dry_run
    sweep_id = new_sweep_id()
    # Before the first read: a change another run makes after it is not in the batched reads.
    started = datetime.now(UTC)
    try:
        policy = await engine.source.org_policy(gh, installation, request.owner)
    except PolicyError as exc:
        # Recorded once per distinct invalid file: a sweep that finds the very file its last
        # record was about (every turn of the continuous reconciliation) adds nothing.
        full_name = f"{request.owner}/{POLICY_REPO}"
        source = f"{full_name}/{POLICY_PATH}"
        if not await engine.config_error_recorded(full_name, source, exc.file_id):
            run = Run(sweep_id, request.trigger, actor, installation)
            await engine.record_config_error(run, full_name, str(exc), source, exc.file_id)
        raise
    granted = await engine.granted(installation)
    fields = ReadFields.for_policy(policy, granted, sweep=True)
    # GraphQL would refuse the whole repository for issues it may not read.
    if (policy.notify == "issue" or "notify" in policy.overrides) and ISSUES_READ.granted_by(granted):
        fields = replace(fields, notices_by=actor)
    progress = await store.start_sweep(
        request.checkpoint_key(dry_run), sweep_id=sweep_id, retry_failed=request.retry_failed
    )
    run = Run(progress.sweep_id, request.trigger, actor, installation, observed_at=started)
    done = {name.lower(): Outcome(outcome) for name, outcome in progress.outcomes.items()}
    report = SweepReport(request.owner, progress.sweep_id, progress.resumed, dry_run)
    log.info("sweep_started", owner=request.owner, sweep=progress.sweep_id, resumed=progress.resumed,
             done=len(done), trigger=request.trigger)

    async def one(snapshot: RepoState) -> None:
        outcome = done.get(snapshot.full_name.lower())
        if outcome is not None:  # finished by an earlier run of this sweep
            entry = SweepResult(snapshot.full_name, outcome)
        else:
            result = await remediate_snapshot(engine, gh, run, snapshot, SWEEP)
            await store.checkpoint(run.run_id, snapshot.full_name, result.outcome, result.error)
            entry = SweepResult.of(result)
        report.results.append(entry)
        observer.advance(entry)

    await for_each(_snapshots(gh, request, fields, observer, report, run, store, done), one,
                   concurrency=concurrency)
    # Every repository has its checkpoint now: the next run starts afresh.
    await store.finish_sweep(run.run_id)
    counts = report.counts()
    log.info("sweep_finished", owner=request.owner, sweep=run.run_id, repositories=len(report.results), **counts)
    return report


async def _snapshots(
    gh: GitHub,
    request: SweepRequest,
    fields: ReadFields,
    observer: SweepObserver,
    report: SweepReport,
    run: Run,
    store: SweepCheckpoints,
    done: dict[str, Outcome],
) -> AsyncIterator[RepoState]:
    if not request.repos:
        first = True
        async for total, page in read_owner(gh, request.owner, fields):
            if first:
                observer.total(total)
                first = False
            for snapshot in page:
                yield snapshot
        return
    names = [f"{request.owner}/{name}" for name in dict.fromkeys(request.repos)]
    observer.total(len(names))
    snapshots, missing = await read_repositories(gh, names, fields)
    for name in missing:
        if name.lower() in done:
            entry = SweepResult(name, done[name.lower()])
        else:
            error = "repository not found, or not accessible to these credentials"
            await store.checkpoint(run.run_id, name, Outcome.FAILED, error)
            entry = SweepResult(name, Outcome.FAILED, error=error)
        report.results.append(entry)
        observer.advance(entry)
    for snapshot in snapshots:
        yield snapshot


async def reconcile_installation(
    engine: PolicyEngine, github: GitHubApp, store: SweepCheckpoints, installation: int, account: str
) -> TurnCost:
    """One turn of the continuous reconciliation: the account's sweep (trigger ``schedule``),
    and what it cost as GitHub reported it. An invalid policy file or an account that cannot
    be seen ends the turn (logged; recorded in the audit trail for the policy file): nothing
    can be done until it changes, and the next turn looks again."""
    gh = await github.installation_client(installation, bulk=True)
    try:
        await sweep_owner(
            engine, gh, SweepRequest(account, trigger="schedule"),
            store=store, actor=await github.bot_login(), installation=installation,
        )
    except (PolicyError, OwnerNotFound) as exc:
        log.error("reconcile_not_possible", owner=account, installation=installation, error=str(exc))
    limits = github.limits(installation)
    return TurnCost(
        rest_requests=gh.sent_by_resource.get("core", 0),
        graphql_points=gh.graphql_points,
        core=limits.budget("core"),
        graphql=gh.graphql_rate or limits.budget("graphql"),
    )
