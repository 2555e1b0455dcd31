"""Plans what a policy changes in one repository: pure, from the state given."""

from __future__ import annotations

from policies.model import Change, Held, Plan, Policy, RepoState
from policies.registry import POLICY_KINDS
from policies.scope import skip_reason


def plan_repository(policy: Policy, repo: RepoState) -> Plan:
    """Every policy kind's changes for ``repo``, or why it is skipped.

    A Plan with ``needs_read`` is incomplete: read what it names and plan again; the changes
    it does hold are right whatever the read shows.
    """
    reason = skip_reason(policy, repo.name, repo.archived)
    if reason is not None:
        return Plan(repo.full_name, skipped=reason)
    changes: list[Change] = []
    deferred: list[Change] = []
    needs_read: list[str] = []
    held: list[Held] = []
    unknown: list[tuple[str, str]] = []
    for kind in POLICY_KINDS:
        part = kind.plan(policy, repo)
        changes.extend(part.changes)
        deferred.extend(part.deferred)
        needs_read.extend(part.needs_read)
        held.extend(part.held)
        unknown.extend(part.unknown)
    return Plan(repo.full_name, tuple(changes), tuple(deferred), tuple(needs_read), held=tuple(held),
                unknown=tuple(unknown))
