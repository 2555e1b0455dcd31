"""A policy file proposed in a pull request, planned against every repository it would manage.

The preview reads exactly what a dry-run sweep of the organization reads (every repository in
GraphQL batches of 100, then only the REST reads the planner still asks for) and nothing
else: it takes no repository lock, writes no audit record and changes nothing on GitHub. The
proposed file is never cached as the organization's policy: it lives in this preview only,
so nothing from a pull request's head can be enforced before it is merged.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from gidgethub import GitHubException

from bot.github_protocol import GitHub
from bot.logs import get_logger
from policies.apply import github_error
from policies.batch_read import ReadFields
from policies.engine import PolicyEngine
from policies.loader import PolicyError
from policies.model import Change, Held, Plan, Policy, RepoState
from policies.preloaded_source import PreloadedPolicySource
from policies.reconcile import for_each, owner_snapshots
from policies.source import ParsedFiles, PolicySource

log = get_logger("moko.preview")


class ProposedPolicySource(PolicySource):
    """The proposed file as the organization's policy; repositories' own files on top of it,
    as they would be once it is merged. Never shared with the engine's own source."""

    def __init__(self, proposed: Policy, parsed: ParsedFiles) -> None:
        super().__init__(parsed=parsed)
        self._proposed = proposed

    def invalidate(self, installation: int | None, org: str) -> None:
        """Nothing is cached by organization here."""

    async def org_policy(self, gh: GitHub, installation: int | None, org: str) -> Policy:
        return self._proposed


@dataclass(frozen=True)
class RepoPreview:
    """What the proposed policy would do to one repository, or why that cannot be told."""

    repo: str
    plan: Plan | None = None
    error: str | None = None  # its own policy file is invalid, or a read failed
    policy: Policy | None = None  # the proposed policy with the repository's own file applied
    default_branch: str | None = None

    @property
    def skipped(self) -> bool:
        return self.plan is not None and self.plan.skipped is not None

    @property
    def changes(self) -> tuple[Change, ...]:
        """The writes enforcing the policy would make (those waiting for a branch included)."""
        return () if self.plan is None else self.plan.changes + self.plan.deferred

    @property
    def held(self) -> tuple[Held, ...]:
        return () if self.plan is None else self.plan.held

    @property
    def unknown(self) -> tuple[tuple[str, str], ...]:
        """(key, why) for what cannot be told: unreadable fields, fields the server lacks."""
        return () if self.plan is None else self.plan.unknown

    @property
    def would_change(self) -> bool:
        return bool(self.changes or self.held)


@dataclass(frozen=True)
class PolicyPreview:
    """The proposed policy's plan for every repository of the organization (sorted by name)."""

    policy: Policy
    repositories: tuple[RepoPreview, ...]

    @property
    def in_scope(self) -> tuple[RepoPreview, ...]:
        return tuple(r for r in self.repositories if not r.skipped)

    @property
    def affected(self) -> tuple[RepoPreview, ...]:
        """The repositories enforcing the proposed policy would change."""
        return tuple(r for r in self.repositories if r.would_change)

    @property
    def undecided(self) -> tuple[RepoPreview, ...]:
        """The repositories whose outcome cannot be told (an error, an unknown field)."""
        return tuple(r for r in self.repositories if r.error or r.unknown)

    @property
    def changes_nothing(self) -> bool:
        return not self.affected and not self.undecided

    def changes_per_field(self) -> dict[str, int]:
        """``repository.has_wiki`` or ``branch_protection.main`` -> repositories it changes in."""
        counts: Counter[str] = Counter()
        for repo in self.repositories:
            counts.update({f"{c.policy}.{c.field}" for c in repo.changes})
            counts.update({f"{h.policy}.{h.field}" for h in repo.held})
        return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


async def preview_policy(
    engine: PolicyEngine, gh: GitHub, installation: int | None, owner: str, proposed: Policy
) -> PolicyPreview:
    """Plan ``proposed`` as the policy of ``owner``'s organization against every repository,
    without writing anything. Raises a GitHub error when the batched read fails."""
    source = PreloadedPolicySource(ProposedPolicySource(proposed, engine.source.parsed))
    # As a dry-run sweep: stale branches too (sweeps delete them once the file is merged).
    fields = ReadFields.for_policy(proposed, await engine.granted(installation), sweep=True)
    results: list[RepoPreview] = []

    async def one(snapshot: RepoState) -> None:
        results.append(await _preview_repository(engine, source, gh, installation, snapshot))

    await for_each(owner_snapshots(gh, owner, fields), one)
    results.sort(key=lambda r: r.repo.lower())
    return PolicyPreview(proposed, tuple(results))


async def _preview_repository(
    engine: PolicyEngine,
    source: PreloadedPolicySource,
    gh: GitHub,
    installation: int | None,
    snapshot: RepoState,
) -> RepoPreview:
    full_name = snapshot.full_name
    owner, name = full_name.split("/", 1)
    if snapshot.own_policy_read:
        source.remember(full_name, snapshot.own_policy)
    try:
        resolved = await source.policy_for(gh, installation, owner, name)
        plan = await engine.plan_on_server(gh, resolved.policy, snapshot.repository, snapshot, installation)
    except PolicyError as exc:
        return RepoPreview(full_name, error=f"its own policy file is invalid: {exc}")
    except GitHubException as exc:
        log.warning("preview_read_failed", repo=full_name, error=github_error(exc))
        return RepoPreview(full_name, error=github_error(exc))
    return RepoPreview(full_name, plan, policy=resolved.policy, default_branch=snapshot.default_branch)
