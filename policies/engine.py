"""The policy engine: for one repository, resolve its policy, learn just enough of its state,
plan, and apply (or only record, in dry-run) as one transaction under the repository's lock."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from gidgethub import GitHubException

from bot.audit import AuditWriter, settled
from bot.github_protocol import GitHub
from bot.logs import get_logger
from bot.metrics import REMEDIATIONS
from bot.outcomes import Outcome
from bot.store.base import AuditEntry, AuditRecord, AuditTrail, RepositoryLockLost, RepositoryLocks
from policies.apply import (
    NOT_MADE,
    ChangeOutcome,
    Run,
    Transaction,
    github_error,
)
from policies.concern import ALL, SWEEP, Concern
from policies.loader import PolicyError
from policies.model import Change, Plan, Policy, RepoState
from policies.plan import plan_repository
from policies.registry import KINDS_BY_NAME, POLICY_KINDS, new_branch_state, new_repository_state
from policies.server_fields import for_server, schema_for, unsupported, without_unsupported
from policies.source import PolicySource

log = get_logger("moko.engine")

_MAX_READ_ROUNDS = 3
# A remediation whose repository lock was lost stops, then starts over once under a new lock.
_LOCK_ATTEMPTS = 2
# A repository with another run's intent this close to (or after) the time a run's state was
# current may have been changed since (see PolicyEngine._changed_since): this covers the time
# GitHub takes to deliver a webhook, and clocks of replicas and GitHub that disagree. The
# request timeout is added: a write lands up to that long after its intent was recorded.
OBSERVED_MARGIN = 60.0
# How many of a repository's newest records are looked through for an intent in that time.
_RECENT_INTENTS = 8
STILL_UNREAD = f"Moko still could not tell after {_MAX_READ_ROUNDS} reads"
# An invalid file's config record names the file it was about (blob SHA, else a content hash),
# so that a sweep that finds the same file again does not record it again.
CONFIG_FILE_KEY = "file"
# How far back among a repository's records the last config record is looked for.
RECENT_RECORDS = 50

# The kinds whose changes may wait for their branch (recorded ``deferred``).
_DEFERRING = frozenset(kind.name for kind in POLICY_KINDS if kind.waiting_for is not None)

# An installation's granted permissions (None: not known, e.g. a personal token).
Permissions = Mapping[str, str] | None
PermissionsSource = Callable[[int | None], Awaitable[Permissions]]


class EngineStore(AuditTrail, RepositoryLocks, Protocol):
    """What the engine keeps in the store: the audit trail it reads (intents, deferred
    changes, recorded config errors), and the repository locks it remediates under."""


async def _all_permissions(installation: int | None) -> Permissions:
    return None


@dataclass(frozen=True)
class RepoResult:
    """One repository's outcome, the changes with theirs, and the plan they came from."""

    repo: str
    outcome: Outcome
    changes: tuple[ChangeOutcome, ...] = ()
    error: str | None = None
    plan: Plan | None = None
    policy: Policy | None = None
    dry_run: bool = False


# Called after a repository's whole policy was remediated: (gh, run, repo, result, engine, known).
Notice = Callable[[GitHub, Run, Mapping[str, Any], "RepoResult", "PolicyEngine", "RepoState | None"], Awaitable[None]]


class PolicyEngine:
    """Remediates repositories; shared by webhooks, commands and sweeps."""

    def __init__(
        self,
        *,
        store: EngineStore,
        audit: AuditWriter,
        dry_run: bool,
        in_flight_for: float,
        source: PolicySource | None = None,
        permissions: PermissionsSource | None = None,
        notice: Notice | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        # How long a request may still take effect on GitHub after it was sent: its timeout.
        # No default, like ``dry_run``: every builder must pass the settings' value (a sweep
        # that forgot it once would not wait for a dead server's write and could make it twice).
        self.in_flight_for = in_flight_for
        self._sleep = sleep
        self.store = store
        self.audit = audit
        self.source = source or PolicySource()
        self.global_dry_run = dry_run
        self.permissions: PermissionsSource = permissions or _all_permissions
        self.notice = notice

    async def granted(self, installation: int | None) -> Permissions:
        """The installation's granted permissions, which say what Moko may read."""
        return await self.permissions(installation)

    async def policy_for(self, gh: GitHub, run: Run, full_name: str) -> Policy:
        """The repository's policy; an invalid file is recorded and raised (nothing changes)."""
        owner, name = full_name.split("/", 1)
        try:
            resolved = await self.source.policy_for(gh, run.installation, owner, name)
        except PolicyError as exc:
            await self.record_config_error(run, full_name, str(exc), exc.source, exc.file_id)
            raise
        for warning in resolved.warnings:
            log.warning("policy_override_ignored", repo=full_name, problem=str(warning))
        return resolved.policy

    async def record_config_error(
        self, run: Run, full_name: str, message: str, source: str, file_id: str | None = None
    ) -> None:
        """An audit record (policy "config", field: the invalid file, before: which file it was,
        when known) for a repository the invalid policy file kept Moko from handling."""
        log.error("policy_invalid", repo=full_name, error=message)
        await self.audit.write([
            AuditEntry(
                time=self.audit.now(), run_id=run.run_id, trigger=run.trigger, installation=run.installation,
                repo=full_name, actor=run.actor, policy="config", field=source,
                before=None if file_id is None else {CONFIG_FILE_KEY: file_id}, after=None, outcome=Outcome.FAILED,
                error=message,
            )
        ])

    async def config_error_recorded(self, full_name: str, source: str, file_id: str | None) -> bool:
        """Whether the newest ``config`` record of this repository for ``source`` is about this
        very file (same blob SHA or content): then it is audited already."""
        if file_id is None:
            return False
        for record in await self.store.audit_records(repo=full_name, newest_first=True, limit=RECENT_RECORDS):
            if record.policy == "config" and record.field == source:
                return isinstance(record.before, dict) and record.before.get(CONFIG_FILE_KEY) == file_id
        return False

    def is_dry_run(self, policy: Policy) -> bool:
        return self.global_dry_run or policy.dry_run

    async def read_state(
        self, gh: GitHub, repo: Mapping[str, Any], known: RepoState, plan: Plan, policy: Policy | None = None
    ) -> RepoState:
        """Read from GitHub what the plan could not decide (REST), each kind what it needs, and
        return the richer state."""
        owner, name = str(repo["full_name"]).split("/", 1)
        for kind in POLICY_KINDS:
            needs = tuple(key for key in plan.needs_read if key.split(".", 1)[0] in kind.reads)
            if kind.read is not None and policy is not None and needs:
                known = await kind.read(gh, owner, name, policy, needs, known)
        return known

    async def plan(
        self, gh: GitHub, policy: Policy, repo: Mapping[str, Any], known: RepoState, granted: Permissions = None
    ) -> Plan:
        """Plan, reading only what the plan says it needs, until it is decided. What the
        installation may not read is not asked for: it stays unknown, and so does what is
        still undecided after the last read. What is ``known`` is laid over ``repo``."""
        state = _mark_unreadable(policy, known.over(repo), granted)
        plan = plan_repository(policy, state)
        rounds = 0
        while plan.needs_read and plan.skipped is None and rounds < _MAX_READ_ROUNDS:
            rounds += 1
            state = await self.read_state(gh, repo, state, plan, policy)
            plan = plan_repository(policy, state)
        if plan.needs_read and plan.skipped is None:
            still = tuple((key, STILL_UNREAD) for key in plan.needs_read)
            plan = replace(plan, needs_read=(), unknown=plan.unknown + still)
        return plan

    async def plan_on_server(
        self, gh: GitHub, policy: Policy, repo: Mapping[str, Any], known: RepoState | None, installation: int | None
    ) -> Plan:
        """The plan for ``policy`` as this server and the installation's permissions allow it;
        the policy's fields the server does not have are unknown. Reads only; no lock."""
        # What the server cannot do (an older GitHub Enterprise Server) is unknown.
        schema = await schema_for(gh, policy)
        lacking = unsupported(policy, schema) if schema is not None else {}
        planned = without_unsupported(policy, schema) if lacking and schema is not None else policy
        granted = await self.granted(installation)
        plan = await self.plan(gh, planned, repo, known or RepoState(), granted)
        if schema is not None:
            plan = for_server(plan, schema)
        if lacking and plan.skipped is None:
            # Its compliance cannot be told (what the server can do is still planned).
            plan = replace(plan, unknown=plan.unknown + tuple(sorted(lacking.items())))
        return plan

    async def remediate(
        self,
        gh: GitHub,
        run: Run,
        repo: Mapping[str, Any],
        *,
        known: RepoState | None = None,
        scope: Concern = ALL,
        apply: bool = True,
        only_if: Callable[[], Awaitable[bool]] | None = None,
    ) -> RepoResult:
        """Bring one repository in line with its policy (or, with apply=False, only plan it).

        ``repo`` is a REST repository object (a webhook payload's, or a read one); ``known``
        says what else is known without a read; ``only_if`` is checked under the repository's
        lock, so two deliveries racing for the same one-time work do it once.

        A remediation of the whole policy (``scope`` ALL) is followed by the ``notice`` hook,
        which tells the repository when it stays non-compliant (policy ``notify``).
        """
        result = await self._remediate(gh, run, repo, known=known, scope=scope, apply=apply, only_if=only_if)
        if apply and scope.whole and self.notice is not None and result.policy is not None:
            try:
                await self.notice(gh, run, repo, result, self, known)
            except GitHubException as exc:  # telling failed; the remediation stands
                log.error("notice_failed", repo=result.repo, error=github_error(exc))
        return result

    async def _remediate(
        self,
        gh: GitHub,
        run: Run,
        repo: Mapping[str, Any],
        *,
        known: RepoState | None,
        scope: Concern,
        apply: bool,
        only_if: Callable[[], Awaitable[bool]] | None,
    ) -> RepoResult:
        full_name = str(repo["full_name"])
        try:
            policy = await self.policy_for(gh, run, full_name)
        except PolicyError as exc:
            return RepoResult(full_name, Outcome.FAILED, error=str(exc))
        effective = scope.restrict(policy)
        dry_run = self.is_dry_run(policy)
        observed = run.observed_at or datetime.now(UTC)
        as_known = None
        if apply and only_if is None and not run.retaken:
            as_known = await self._plan_as_known(gh, run, repo, effective, known)
            if as_known is not None and _changes_nothing(as_known):
                # Nothing to change and nothing to read: no lock, no store write, no GitHub call.
                return RepoResult(full_name, Outcome.COMPLIANT, plan=as_known, policy=policy, dry_run=dry_run)
        done: list[ChangeOutcome] = []
        for attempt in range(1, _LOCK_ATTEMPTS + 1):
            try:
                return await self._remediate_locked(
                    gh, run, repo, policy, effective, dry_run, known, apply=apply, only_if=only_if, done=done,
                    planned=as_known if attempt == 1 else None, observed=observed,
                )
            except RepositoryLockLost as lost:
                log.warning("repository_lock_lost", repo=full_name, error=str(lost), attempt=attempt)
                error = str(lost)
            if attempt == _LOCK_ATTEMPTS:
                break
            # What was known may be stale now (another replica may have been at work): read the
            # repository again, and plan from what GitHub says under the new lock.
            observed = datetime.now(UTC)
            try:
                repo = await _read_repository(gh, full_name)
            except GitHubException as exc:
                error = github_error(exc)
                break
            known = None
        return RepoResult(full_name, Outcome.FAILED, tuple(done), error=error, policy=policy, dry_run=dry_run)

    async def _plan_as_known(
        self, gh: GitHub, run: Run, repo: Mapping[str, Any], effective: Policy, known: RepoState | None
    ) -> Plan | None:
        """The plan when what is already known (a payload's settings) decides it, with
        nothing to read and nothing the server lacks; None otherwise.

        Most deliveries about a repository find it compliant: deciding that before the
        repository's lock spares the lock's store writes. A plan that changes something is
        the one made under the lock too (it reads nothing, so it would come out the same),
        unless another run changed the repository meanwhile (see ``_changed_since``).
        """
        try:
            schema = await schema_for(gh, effective)
            if schema is not None and unsupported(effective, schema):
                return None
            granted = await self.granted(run.installation)
        except GitHubException:
            return None  # the locked path asks again, and reports the failure
        state = _mark_unreadable(effective, (known or RepoState()).over(repo), granted)
        plan = plan_repository(effective, state)
        if plan.needs_read or plan.skipped is not None:
            return None
        return plan if schema is None else for_server(plan, schema)

    async def _remediate_locked(
        self,
        gh: GitHub,
        run: Run,
        repo: Mapping[str, Any],
        policy: Policy,
        effective: Policy,
        dry_run: bool,
        known: RepoState | None,
        *,
        apply: bool,
        only_if: Callable[[], Awaitable[bool]] | None,
        done: list[ChangeOutcome],
        planned: Plan | None = None,
        observed: datetime,
    ) -> RepoResult:
        """remediate()'s work under the repository's lock; done collects the change outcomes.
        ``planned``: the plan already made from what is known, which needed no read;
        ``observed``: when what is known (``repo``, ``known``) was current."""
        full_name = str(repo["full_name"])
        async with self.store.repository_lock(full_name) as lock:
            if only_if is not None and not await only_if():
                return RepoResult(full_name, Outcome.COMPLIANT, policy=policy, dry_run=dry_run)
            intents: list[AuditRecord] = []
            try:
                if run.retaken:
                    # An earlier try of this delivery may have made its changes before it
                    # stopped: planned from its payload they would be made twice.
                    intents = await self._open_intents(run, full_name)
                    _changed, unanswered = await self._changed_since(run, full_name, observed)
                    await self._let_earlier_writes_land(full_name, bool(intents) or unanswered)
                    repo, known, planned = await _read_repository(gh, full_name), None, None
                elif apply and not dry_run:
                    changed, unanswered = await self._changed_since(run, full_name, observed)
                    if changed:
                        # Another run (a delivery about the same repository, a reconcile)
                        # changed it after what this run knows was current: that plan would
                        # make the same change again. Plan from what GitHub says now.
                        log.info("repository_changed_meanwhile", repo=full_name)
                        await self._let_earlier_writes_land(full_name, unanswered)
                        repo, known, planned = await _read_repository(gh, full_name), None, None
                plan = planned or await self.plan_on_server(gh, effective, repo, known, run.installation)
            except GitHubException as exc:
                error = github_error(exc)
                log.error("repository_read_failed", repo=full_name, error=error)
                return RepoResult(full_name, Outcome.FAILED, error=error, policy=policy, dry_run=dry_run)
            if plan.skipped is not None:
                return RepoResult(full_name, Outcome.SKIPPED, error=None, plan=plan, policy=policy, dry_run=dry_run)
            if not apply:
                return RepoResult(full_name, Outcome.PLANNED, plan=plan, policy=policy, dry_run=dry_run)
            transaction = Transaction(gh, self.audit, run, full_name, lock=lock, outcomes=done)
            if intents:
                await _settle_intents(transaction, intents, effective, plan, await self._made_since(run, intents))
            if dry_run:
                await transaction.dry_run(plan.changes + plan.deferred)
                ok = True
            else:
                ok = await transaction.apply(plan.changes)
                if plan.deferred:
                    # Recorded once while the branch is missing, not again at every reconcile;
                    # also when the rest failed: the wait does not depend on it, and without
                    # its record the branch's first push would not bring its protection.
                    records = await self._deferring_records(full_name)
                    fresh = [c for c in plan.deferred if not _waiting(records, (c.field,))]
                    if fresh:
                        await transaction.record(fresh, Outcome.DEFERRED, "branch does not exist yet")
        held = "; ".join(f"{h.field}: {h.reason}" for h in plan.held) or None
        if held:
            log.warning("policy_change_held", repo=full_name, reason=held)
        outcome = Outcome.FAILED if held else _outcome(plan, transaction.outcomes, ok, dry_run)
        failure = next((o.error for o in transaction.outcomes if o.outcome == Outcome.FAILED), None)
        error = failure or held or plan.unknown_reason
        if plan.unknown:
            log.warning("repository_unknown", repo=full_name, unknown=dict(plan.unknown))
            for key, _why in plan.unknown:
                REMEDIATIONS.labels(policy=key.split(".", 1)[0], outcome=Outcome.UNKNOWN).inc()
        return RepoResult(
            full_name,
            outcome,
            tuple(transaction.outcomes),
            error=error,
            plan=plan,
            policy=policy,
            dry_run=dry_run,
        )

    async def waiting_since(self, full_name: str, fields: tuple[str, ...]) -> dict[str, datetime]:
        """For each of the branch rules that still wait for their branch, when the wait began:
        the time of its deferred record, written once when the wait began."""
        newest: dict[str, AuditRecord] = {}
        for record in await self._deferring_records(full_name):  # newest first
            if record.field in fields:
                newest.setdefault(record.field, record)
        return {name: record.time for name, record in newest.items() if record.outcome == Outcome.DEFERRED}

    async def _open_intents(self, run: Run, full_name: str) -> list[AuditRecord]:
        """The intents an earlier try of the run recorded for the repository and left without
        an outcome (its process stopped in between)."""
        records = await self.store.audit_records(repo=full_name, run_id=run.run_id)
        return [record for record in settled(records) if record.outcome == Outcome.PENDING]

    async def _made_since(self, run: Run, intents: list[AuditRecord]) -> set[int]:
        """The intents (by seq) whose change another run recorded applied after them. That run
        read the repository once the intent's write could no longer land, found the change
        not made and made it: what GitHub shows now is its write, not the earlier try's."""
        later = await self.store.audit_records(repo=intents[0].repo, since=min(i.time for i in intents))
        applied = [r for r in later if r.outcome == Outcome.APPLIED and r.run_id != run.run_id]
        return {
            intent.seq for intent in intents
            if any(r.seq > intent.seq and (r.policy, r.field) == (intent.policy, intent.field) for r in applied)
        }

    async def _let_earlier_writes_land(self, full_name: str, unanswered: bool) -> None:
        """With an intent left without an outcome (``unanswered``: by an earlier try of this
        run, or by another run, whose process died with the request, or a retry of it, on its
        way), wait until the write can no longer take effect: GitHub may still carry it out
        until the request's timeout, and read before that, the repository looks unchanged
        and the write is made twice. Only a crash costs this wait."""
        if unanswered and self.in_flight_for > 0:
            log.info("waiting_for_earlier_write", repo=full_name, seconds=self.in_flight_for)
            await self.let_earlier_requests_land()

    async def _changed_since(self, run: Run, full_name: str, observed: datetime) -> tuple[bool, bool]:
        """Whether another run may have changed the repository after ``observed``: it has an
        intent (a ``pending`` record) from then on, or from shortly before (OBSERVED_MARGIN);
        and whether such an intent of another run has no outcome (its process died with the
        request on its way: the write may still land). Every write Moko makes has its intent
        recorded first, under the lock this run holds now; so one indexed read of the newest
        records tells, and the common case (nobody else at work) costs no request. An intent
        GitHub refused as not possible yet (its outcome ``deferred``: no such branch) changed
        nothing; nor did records that are no intent (dry-run, a command's). This run's own
        intents count from ``observed`` on, without the margin: it knows when it read."""
        since = observed - timedelta(seconds=OBSERVED_MARGIN + self.in_flight_for)
        records = await self.store.audit_records(repo=full_name, newest_first=True, limit=_RECENT_INTENTS)
        answers: dict[tuple[str, str, str], list[str]] = {}
        changed = unanswered = False
        for record in records:  # newest first: an intent's outcome comes before it
            if record.time < since:
                return changed, unanswered  # the older ones are older still
            key = (record.run_id, record.policy, record.field)
            if record.outcome != Outcome.PENDING:
                answers.setdefault(key, []).append(record.outcome)
                continue
            outcome = answers[key].pop() if answers.get(key) else None
            if outcome == Outcome.DEFERRED or (record.run_id == run.run_id and record.time < observed):
                continue
            changed = True
            unanswered = unanswered or (outcome is None and record.run_id != run.run_id)
        # All of them recent: there may be an intent among the older ones.
        return changed or len(records) == _RECENT_INTENTS, unanswered

    async def let_earlier_requests_land(self) -> None:
        """Wait as long as a request sent by a process that died before now may still be
        carried out by GitHub: its timeout."""
        if self.in_flight_for > 0:
            await self._sleep(self.in_flight_for)

    async def _deferring_records(self, full_name: str) -> list[AuditRecord]:
        """The repository's latest records of the kinds whose changes may wait for their
        branch (branch protection), newest first."""
        records = await self.store.audit_records(repo=full_name, newest_first=True, limit=50)
        return [record for record in records if record.policy in _DEFERRING]

    async def _still_deferred(self, full_name: str, fields: tuple[str, ...]) -> bool:
        return _waiting(await self._deferring_records(full_name), fields)

    async def apply_deferred(self, gh: GitHub, run: Run, repo: Mapping[str, Any], branch: str) -> RepoResult | None:
        """On a branch's creation or first push: apply the changes that waited for it, once
        (each kind says which of its deferred changes wait for the branch)."""
        full_name = str(repo["full_name"])
        default = repo.get("default_branch")
        fields = tuple(dict.fromkeys(
            field for kind in POLICY_KINDS if kind.waiting_for is not None for field in kind.waiting_for(branch, default)
        ))
        if not await self._still_deferred(full_name, fields):
            return None
        # A branch that was just created has nothing to read (each kind says what it has).
        known = new_branch_state(branch)
        return await self.remediate(
            gh, run, repo, known=known, scope=Concern(_DEFERRING),
            only_if=lambda: self._still_deferred(full_name, fields),
        )


async def _settle_intents(
    transaction: Transaction, intents: list[AuditRecord], effective: Policy, plan: Plan, made_since: set[int]
) -> None:
    """Give the intents an earlier try left without an outcome (its process stopped between
    asking GitHub and recording the answer) the outcome GitHub shows now, read after the
    write could no longer land: ``applied`` when the plan, made from that read, no longer has
    the change (the try made it), ``failed`` when it still has (this run makes it, with a
    record of its own) or when another run made it since (``made_since``). One that this
    plan does not decide (another policy kind, a field it could not read) stays pending."""
    planned = {(c.policy, c.field) for c in (*plan.changes, *plan.deferred)}
    untold = {key for key, _why in plan.unknown} | set(plan.needs_read)
    made: list[Change] = []
    not_made: list[Change] = []
    for intent in intents:
        if not _decides(effective, intent) or f"{intent.policy}.{intent.field}" in untold:
            continue
        change = Change(intent.policy, intent.field, intent.before, intent.after)
        not_yet = (intent.policy, intent.field) in planned or intent.seq in made_since
        (not_made if not_yet else made).append(change)
    if made:
        await transaction.record(made, Outcome.APPLIED)
    if not_made:
        await transaction.settle(not_made, Outcome.FAILED, NOT_MADE)


def _decides(effective: Policy, intent: AuditRecord) -> bool:
    """Whether a plan of ``effective`` says what the intent's field should be (not an issue's
    record, nor a kind or field this remediation leaves out), as the intent's kind says."""
    kind = KINDS_BY_NAME.get(intent.policy)
    return kind is not None and kind.decides is not None and kind.decides(effective, intent.field)


def _waiting(records: list[AuditRecord], fields: tuple[str, ...]) -> bool:
    """Whether the newest of these records (of kinds that defer) about any of the fields is deferred."""
    for record in records:
        if record.field in fields:
            return record.outcome == Outcome.DEFERRED
    return False


def _mark_unreadable(policy: Policy, known: RepoState, granted: Permissions) -> RepoState:
    """Put ``Unreadable`` where the installation may not read a value the event did not bring,
    so the planner says unknown instead of asking GitHub in vain: each kind marks its own."""
    for kind in POLICY_KINDS:
        if kind.mark_unreadable is not None:
            known = kind.mark_unreadable(policy, known, granted)
    return known


def _changes_nothing(plan: Plan) -> bool:
    """Compliant as planned: nothing to change, defer, hold, read or leave unknown."""
    return not (plan.changes or plan.deferred or plan.held or plan.unknown or plan.needs_read) and plan.skipped is None


def _outcome(plan: Plan, outcomes: list[ChangeOutcome], ok: bool, dry_run: bool) -> Outcome:
    if not ok or any(o.outcome == Outcome.FAILED for o in outcomes):
        return Outcome.FAILED
    if plan.unknown:  # whatever was fixed, compliance cannot be told
        return Outcome.UNKNOWN
    if dry_run:
        return Outcome.COMPLIANT if not (plan.changes or plan.deferred) else Outcome.PLANNED
    if any(o.outcome == Outcome.APPLIED for o in outcomes):
        return Outcome.FIXED
    if plan.deferred:  # recorded now, or still waiting since an earlier record
        return Outcome.DEFERRED
    return Outcome.COMPLIANT


__all__ = [
    "ALL", "SWEEP", "Concern", "Permissions",
    "PermissionsSource", "PolicyEngine", "RepoResult", "RepoState", "new_repository_state",
]


async def _read_repository(gh: GitHub, full_name: str) -> Mapping[str, Any]:
    """The repository as GitHub has it now (REST)."""
    owner, name = full_name.split("/", 1)
    return await gh.getitem("/repos/{owner}/{repo}", url_vars={"owner": owner, "repo": name})
