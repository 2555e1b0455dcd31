"""Applying a plan to one repository as a transaction: steps in order, undo on failure, audit each.

This is the only place that writes to GitHub on a policy's behalf. Every request's intent
is on disk before GitHub is asked: a `pending` record for each change of the step, then,
once GitHub has answered, a second record with the outcome. The chain stays append-only;
a store that cannot be written stops the transaction before the request, so no repository
changes without a record.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gidgethub import GitHubException

from bot.audit import AuditWriter
from bot.github_protocol import GitHub
from bot.logs import get_logger
from bot.metrics import REMEDIATIONS, labelled
from bot.outcomes import Outcome
from bot.store.base import AuditEntry, HeldLock
from policies.model import Change, NotYetPossible
from policies.registry import inverse_of, is_independent, kind_of

log = get_logger("moko.apply")

# An earlier try's intent that GitHub shows was not carried out (its process stopped first).
NOT_MADE = "Moko stopped before GitHub answered, and GitHub shows the change was not made"


@dataclass(frozen=True)
class Run:
    """Who and what a transaction is for: its run id, trigger, actor and installation."""

    run_id: str
    trigger: str
    actor: str
    installation: int | None
    # Its delivery was taken before (the process died, or it failed and came back): what the
    # earlier try changed is on GitHub, not in the payload, so nothing is planned from that.
    retaken: bool = False
    # When what the run knows of its repositories was current: its delivery's arrival (the
    # payload is older still, by GitHub's delivery time), a sweep's start. A change another
    # run made after that is not in it. None: when the remediation starts.
    observed_at: datetime | None = None


@dataclass(frozen=True)
class ChangeOutcome:
    """One intended change and what became of it."""

    change: Change
    outcome: Outcome
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**self.change.to_dict(), "outcome": self.outcome, "error": self.error}


@dataclass(frozen=True)
class Step:
    """One request: every change of a kind that sends them together (the settings' one
    PATCH), or one change (a branch's PUT or DELETE, a ruleset's POST)."""

    changes: tuple[Change, ...]


def steps_for(changes: Sequence[Change]) -> list[Step]:
    """The steps, in the order of the changes; a kind's changes sent together are one step,
    where its first change is."""
    steps: list[Step] = []
    together: dict[str, int] = {}  # kind -> its step
    for change in changes:
        if not kind_of(change).together:
            steps.append(Step((change,)))
        elif change.policy in together:
            index = together[change.policy]
            steps[index] = Step(steps[index].changes + (change,))
        else:
            together[change.policy] = len(steps)
            steps.append(Step((change,)))
    return steps


def github_error(exc: Exception) -> str:
    """GitHub's own words for a failed request, with its status."""
    status = getattr(exc, "status_code", None)
    code = getattr(status, "value", status)
    message = str(exc) or type(exc).__name__
    errors = getattr(exc, "errors", None)
    if errors:
        message += f" ({errors})"
    return f"{code} {message}" if code else message


async def send_step(gh: GitHub, owner: str, repo: str, step: Step) -> Step:
    """The request for one step, as its kind sends it; returns the step as made (what undoing
    it needs to know). Raises NotYetPossible when GitHub cannot make it yet."""
    kind = kind_of(step.changes[0])
    if kind.send is None:
        raise ValueError(f"{kind.name} changes are not sent")
    return Step(await kind.send(gh, owner, repo, step.changes))


class Transaction:
    """Applies one repository's changes; records every step in the audit trail."""

    def __init__(
        self,
        gh: GitHub,
        audit: AuditWriter,
        run: Run,
        full_name: str,
        *,
        lock: HeldLock | None = None,
        outcomes: list[ChangeOutcome] | None = None,
    ) -> None:
        self._gh = gh
        self._audit = audit
        self._run = run
        self._lock = lock
        self.full_name = full_name
        self.owner, self.repo = full_name.split("/", 1)
        # Given: an earlier attempt's outcomes, which this one goes on from.
        self.outcomes: list[ChangeOutcome] = outcomes if outcomes is not None else []

    async def intend(self, changes: Sequence[Change]) -> None:
        """The intent of a request, on disk before it is sent (raises when it cannot be written).
        The repository's lock is checked first: without it another replica may be at work."""
        if self._lock is not None:
            await self._lock.ensure()
        await self._audit.write(self._entries(changes, Outcome.PENDING, None))

    def _entries(self, changes: Sequence[Change], outcome: Outcome, error: str | None) -> list[AuditEntry]:
        now = self._audit.now()
        return [
            AuditEntry(
                time=now,
                run_id=self._run.run_id,
                trigger=self._run.trigger,
                installation=self._run.installation,
                repo=self.full_name,
                actor=self._run.actor,
                policy=change.policy,
                field=change.field,
                before=change.before,
                after=change.after,
                outcome=outcome,
                error=error,
            )
            for change in changes
        ]

    async def record(self, changes: Sequence[Change], outcome: Outcome, error: str | None = None) -> None:
        await self._audit.write(self._entries(changes, outcome, error))
        if outcome == Outcome.FAILED:
            log.warning(
                "remediation_step_failed", repo=self.full_name, policy=changes[0].policy,
                fields=[c.field for c in changes], error=error,
            )
        for change in changes:
            labelled(REMEDIATIONS, change.policy, outcome).inc()
            self.outcomes.append(ChangeOutcome(change, outcome, error))

    async def settle(self, changes: Sequence[Change], outcome: Outcome, error: str | None = None) -> None:
        """Outcome records for intents an earlier try left open, that are not this run's
        outcomes (a change the try did not make is made, and recorded, anew)."""
        await self._audit.write(self._entries(changes, outcome, error))

    async def dry_run(self, changes: Sequence[Change]) -> None:
        if changes:
            await self.record(changes, Outcome.DRY_RUN)

    async def apply(self, changes: Sequence[Change]) -> bool:
        """Apply in order; on a failure undo what was applied. True when the transaction went
        through (nothing of it was rolled back).

        Changes of an independent kind (a branch deletion) come after the rest, once it all
        went through, each on its own: one that fails is recorded as failed (which fails the
        repository) and the next is tried; it undoes nothing and leaves the transaction's
        result standing, so what the transaction left waiting (a protection whose branch does
        not exist yet) is still recorded as waiting."""
        if not await self._apply_together([c for c in changes if not is_independent(c)]):
            return False
        for change in (c for c in changes if is_independent(c)):
            step = Step((change,))
            await self.intend(step.changes)
            try:
                await send_step(self._gh, self.owner, self.repo, step)
            except GitHubException as exc:
                await self.record(step.changes, Outcome.FAILED, github_error(exc))
                continue
            await self.record(step.changes, Outcome.APPLIED)
        return True

    async def _apply_together(self, changes: Sequence[Change]) -> bool:
        """The transaction: in order, and on a failure undo what was applied."""
        applied: list[Step] = []
        steps = steps_for(changes)
        for index, step in enumerate(steps):
            try:
                if index < len(steps) - 1:  # a later step may fail: this one must be undoable
                    step = await self._undoable(step)
                await self.intend(step.changes)
                step = await send_step(self._gh, self.owner, self.repo, step)
            except NotYetPossible as waits:
                await self.record(step.changes, Outcome.DEFERRED, waits.reason)
                continue
            except GitHubException as exc:
                await self.record(step.changes, Outcome.FAILED, github_error(exc))
                await self._roll_back(applied)
                return False
            applied.append(step)
            await self.record(step.changes, Outcome.APPLIED)
        return True

    async def _undoable(self, step: Step) -> Step:
        """The step, knowing what its undo must be, as its kind learns it (e.g. which rule
        protects a branch before a PUT): the last step is never undone, so this costs a
        request only when it matters."""
        learned = []
        for change in step.changes:
            learn = kind_of(change).learn_undo
            learned.append(change if learn is None else await learn(self._gh, self.owner, self.repo, change))
        return Step(tuple(learned))

    async def _roll_back(self, applied: list[Step]) -> None:
        for step in reversed(applied):
            undo = Step(tuple(inverse_of(change) for change in step.changes))
            await self.intend(undo.changes)
            try:
                await send_step(self._gh, self.owner, self.repo, undo)
            except (GitHubException, NotYetPossible) as exc:
                await self.record(step.changes, Outcome.FAILED, f"rollback failed: {github_error(exc)}")
            else:
                await self.record(step.changes, Outcome.ROLLED_BACK)

