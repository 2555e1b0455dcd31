"""The policy kinds, each with the same shape, in the order their changes apply."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bot.github_protocol import GitHub
from bot.github_schema import ServerSchema
from policies.branch_cleanup import (
    check_branch_cleanup,
    cleanup_from_graphql,
    cleanup_status,
    decides_deletion,
    delete_branch,
    describe_deletion,
    merge_cleanup,
    plan_cleanup_kind,
    read_cleanup,
    section_from,
)
from policies.branch_cleanup import graphql_selection as cleanup_selection
from policies.branch_protection import (
    decides_protection,
    default_branch_rules,
    fields_waiting_for,
    inverse_protection,
    learn_undo,
    mark_unreadable_protection,
    plan_protection_kind,
    read_protection,
    send_protection,
)
from policies.checks import Path, Problem
from policies.model import (
    BRANCH_CLEANUP,
    BRANCH_PROTECTION,
    BRANCH_PROTECTION_RULE,
    REPOSITORY,
    RULESETS,
    Change,
    KindPlan,
    Plan,
    Policy,
    RepoState,
)
from policies.protection_batch import protection_from_node, protection_selection, protection_wanted
from policies.protection_checks import branch_rules_from_section, check_branches, merge_branch_rules
from policies.protection_report import describe_protection, protection_status
from policies.protection_state import unprotected
from policies.repository_settings import (
    check_override_field,
    check_settings_section,
    decides_setting,
    describe_setting,
    inverse_setting,
    mark_unreadable_settings,
    merge_settings,
    plan_settings_kind,
    read_settings,
    send_settings,
    settings_from_section,
    settings_status,
)
from policies.rulesets import (
    check_rulesets,
    decides_ruleset,
    describe_ruleset,
    graphql_selection,
    inverse_ruleset,
    merge_rulesets,
    plan_rulesets_kind,
    read_rulesets,
    ruleset_status,
    rulesets_from_graphql,
    rulesets_from_section,
    send_ruleset,
)
from policies.server_fields import REPOSITORY_TYPE
from policies.settings_batch import settings_from_node, settings_selection, settings_wanted
from policies.words import ReportContext, StatusRow, Words

# (gh, owner, repo, policy, what the plan needs of the kind, what is known) -> what is known
# after the kind's REST reads (a new RepoState).
Reader = Callable[[GitHub, str, str, Policy, tuple[str, ...], RepoState], Awaitable[RepoState]]
# (gh, owner, repo, the changes of one request) -> the changes as made.
Sender = Callable[[GitHub, str, str, tuple[Change, ...]], Awaitable[tuple[Change, ...]]]
# (gh, owner, repo, change) -> the change, knowing what undoing it needs.
UndoLearner = Callable[[GitHub, str, str, Change], Awaitable[Change]]


def into_kinds(name: str, read: Callable[[GitHub, str, str, Policy], Awaitable[Any]]) -> Reader:
    """A Reader from a function that reads a kind's whole state (``RepoState.kinds``)."""

    async def reader(
        gh: GitHub, owner: str, repo: str, policy: Policy, needs: tuple[str, ...], known: RepoState
    ) -> RepoState:
        return known.with_kind(name, await read(gh, owner, repo, policy))

    return reader


@dataclass(frozen=True)
class BatchPart:
    """A kind's part of the batched GraphQL read (``policies.batch_read``), 100 repositories a
    query: what it asks of each repository for a policy (``wanted``: None, nothing), the
    Repository fields that ask it (``selection``: only those the server has), and what is
    known from a repository's node (``from_node``, also given None when nothing was asked)."""

    wanted: Callable[[Policy, Mapping[str, str] | None], Any]
    selection: Callable[[Any, ServerSchema | None], tuple[str, ...]]
    from_node: Callable[[Mapping[str, Any], Any, RepoState], RepoState]


def into_kinds_part(
    name: str, selection: Callable[[Policy], str | None], graphql_field: str,
    from_graphql: Callable[[Mapping[str, Any]], Any],
) -> BatchPart:
    """A BatchPart from a kind's selection for a policy (the Repository field it starts with
    may be lacking on an older server: REST reads it then) and its whole state from a node
    (``RepoState.kinds``; None: the node cannot tell, REST reads it)."""

    def node_state(node: Mapping[str, Any], wanted: Any, known: RepoState) -> RepoState:
        state = None if wanted is None else from_graphql(node)
        return known if state is None else known.with_kind(name, state)

    return BatchPart(
        wanted=lambda policy, granted: selection(policy) or None,
        selection=lambda wanted, schema: (
            (wanted,) if schema is None or schema.has(REPOSITORY_TYPE, graphql_field) else ()
        ),
        from_node=node_state,
    )


def one_by_one(send: Callable[[GitHub, str, str, Change], Awaitable[Change]]) -> Sender:
    """A Sender from a function that sends one change (a kind whose changes are one request each)."""

    async def each(gh: GitHub, owner: str, repo: str, changes: tuple[Change, ...]) -> tuple[Change, ...]:
        return tuple([await send(gh, owner, repo, change) for change in changes])

    return each


@dataclass(frozen=True)
class PolicyKind:
    """A kind of policy, as its own module declares it: its name (the audit record's
    ``policy``), its section of moko.yml (checked, read, merged), its pure planner, its REST
    reads and its part of the batched GraphQL read (``batch``), how the transaction sends its
    changes (``send``: the only write) and undoes one (``inverse``), and how the reports word
    them (``describe``, ``status``).

    ``read`` is made when the plan needs ``<prefix>.<what>`` for a prefix of ``reads`` (its
    name, unless it says otherwise).
    """

    name: str
    plan: Callable[[Policy, RepoState], KindPlan]
    # Its section of moko.yml, and the section's problems (each with its path; the loader
    # gives it its line). checks_null: null is checked too (else null keeps the default).
    # A valid section as the Policy holds it (the Policy's field of the same name), and a
    # repository's own section merged over the organization's: (the organization's, the
    # repository's, the overrides allowed, ignore(path, why)) -> the merged one.
    section: str = ""
    validate: Callable[[Any, Path], list[Problem]] | None = None
    checks_null: bool = False
    from_section: Callable[[Any], Any] | None = None
    merge: Callable[[Any, Any, set[str], Callable[..., None]], Any] | None = None
    read: Reader | None = None
    send: Sender | None = None
    inverse: Callable[[Change], Change] | None = None
    # All its changes of a repository go in one request (one step of the transaction);
    # otherwise each change is a step of its own.
    together: bool = False
    # Asked before a change that a later step's failure would have to undo.
    learn_undo: UndoLearner | None = None
    # Whether a plan of the policy says what the field should be (an unanswered intent of a
    # crashed run is settled by the plan only then); None: never.
    decides: Callable[[Policy, str], bool] | None = None
    # (policy, what is known, granted permissions) -> what is known, with what the installation
    # may not read marked ``Unreadable`` (the plan says unknown rather than ask in vain).
    mark_unreadable: Callable[[Policy, RepoState, Mapping[str, str] | None], RepoState] | None = None
    # The prefixes of the plan's needs its read answers (empty: its name).
    read_prefixes: tuple[str, ...] = ()

    @property
    def reads(self) -> tuple[str, ...]:
        return self.read_prefixes or (self.name,)
    # Its state of a branch created a moment ago, given its name (None: it knows nothing of it).
    new_branch: Callable[[str | None], Any] | None = None
    # Its state of a repository created a moment ago, given its default branch (nothing to
    # read): e.g. no rulesets; None: it knows nothing of it.
    new_repository: Callable[[str | None], Any] | None = None
    # Its part of the batched read (None: REST reads all of it).
    batch: BatchPart | None = None
    # How it reports (`/moko status`, plan, apply, the preview, the notice): a change as words
    # (change, policy, default branch), and its rows of the status table.
    describe: Callable[[Change, Policy | None, str | None], Words] | None = None
    status: Callable[[Policy, Plan, ReportContext], list[StatusRow]] | None = None
    # Planned and applied by sweeps only (never on a webhook or /moko apply): the batched read
    # asks for it only in sweeps, and an event's remediation leaves it out of the policy.
    sweeps_only: bool = False
    # Each change is a step of its own, after the others: one that fails undoes nothing, and
    # none is undone when another fails (a deletion is not part of the transaction).
    independent: bool = False
    # Its section when it manages nothing: what stands there in a policy that leaves the kind
    # out (an event that does not concern it, see ``policies.concern``).
    nothing: Any = None
    # Of its section, what is about the default branch (an event that moved it concerns only
    # that); None: the whole section.
    default_branch_part: Callable[[Any], Any] | None = None
    # Its changes that wait for their branch to exist (recorded ``deferred``, made once it
    # does): (branch, default branch) -> the fields of its deferred changes that wait for that
    # branch. None: its changes never wait.
    waiting_for: Callable[[str, str | None], tuple[str, ...]] | None = None
    # What ``overrides`` may list of it: its section, and with ``override_part`` (how the
    # help names it, e.g. ``<field>``) ``<section>.<part>`` keys, each checked by
    # ``check_override`` (key, part) -> why it cannot be listed, or None.
    override_part: str = ""
    check_override: Callable[[str, str], str | None] | None = None
    # An override key of it, shown as an example when ``overrides`` lists something that is
    # not a key (e.g. repository.has_wiki).
    override_example: str = ""

    @property
    def override_help(self) -> str:
        """How the help of ``overrides`` names this kind's keys."""
        return f"{self.section}, {self.section}.{self.override_part}" if self.override_part else self.section


# Settings first: a protection rule such as required_linear_history can depend on them.
POLICY_KINDS: tuple[PolicyKind, ...] = (
    PolicyKind(
        REPOSITORY, plan_settings_kind, "repository", check_settings_section, read=read_settings,
        send=send_settings, inverse=inverse_setting, together=True,
        from_section=settings_from_section, merge=merge_settings,
        decides=decides_setting, describe=describe_setting, status=settings_status,
        mark_unreadable=mark_unreadable_settings,
        batch=BatchPart(settings_wanted, settings_selection, settings_from_node),
        nothing={}, override_part="<field>", check_override=check_override_field,
        override_example="repository.has_wiki",
    ),
    PolicyKind(
        BRANCH_PROTECTION, plan_protection_kind, "branches", check_branches, read=read_protection,
        send=send_protection, inverse=inverse_protection,
        from_section=branch_rules_from_section, merge=merge_branch_rules,
        learn_undo=learn_undo, read_prefixes=(BRANCH_PROTECTION, BRANCH_PROTECTION_RULE),
        new_repository=unprotected, new_branch=unprotected,
        decides=decides_protection, describe=describe_protection, status=protection_status,
        mark_unreadable=mark_unreadable_protection,
        batch=BatchPart(protection_wanted, protection_selection, protection_from_node),
        nothing=(), default_branch_part=default_branch_rules,
        waiting_for=fields_waiting_for, override_part="<rule name>",
    ),
    PolicyKind(
        RULESETS, plan_rulesets_kind, "rulesets", check_rulesets, read=into_kinds(RULESETS, read_rulesets),
        send=one_by_one(send_ruleset), inverse=inverse_ruleset, new_repository=lambda default_branch: {},
        from_section=rulesets_from_section, merge=merge_rulesets,
        batch=into_kinds_part(RULESETS, graphql_selection, "rulesets", rulesets_from_graphql),
        describe=describe_ruleset, status=ruleset_status, decides=decides_ruleset,
        nothing=(), override_part="<ruleset name>",
    ),
    # Last: a branch goes only once everything else is in line.
    PolicyKind(
        BRANCH_CLEANUP, plan_cleanup_kind, "branch_cleanup", check_branch_cleanup, checks_null=True,
        read=into_kinds(BRANCH_CLEANUP, read_cleanup), send=one_by_one(delete_branch),
        from_section=section_from, merge=merge_cleanup,
        batch=into_kinds_part(BRANCH_CLEANUP, cleanup_selection, "refs", cleanup_from_graphql),
        describe=describe_deletion, status=cleanup_status, decides=decides_deletion,
        sweeps_only=True, independent=True,
    ),
)
KINDS_BY_NAME: dict[str, PolicyKind] = {kind.name: kind for kind in POLICY_KINDS}


_NEW_REPOSITORY = tuple((kind.name, kind.new_repository) for kind in POLICY_KINDS if kind.new_repository is not None)
_NEW_BRANCH = tuple((kind.name, kind.new_branch) for kind in POLICY_KINDS if kind.new_branch is not None)


def new_repository_state(default_branch: str | None) -> RepoState:
    """What a repository created a moment ago has, as each kind says (``RepoState.kinds``)."""
    return RepoState(kinds=_each_kind(_NEW_REPOSITORY, default_branch))


def new_branch_state(branch: str) -> RepoState:
    """What a branch created a moment ago has, as each kind says: it exists, and the kinds
    that know what a new branch has say it."""
    return RepoState(existing_branches=frozenset({branch}), kinds=_each_kind(_NEW_BRANCH, branch))


def _each_kind(hooks: tuple[tuple[str, Callable[[str | None], Any]], ...], branch: str | None) -> dict[str, Any]:
    """Each kind's state by its hook (None from a hook: that kind knows nothing)."""
    states = {name: made(branch) for name, made in hooks}
    return {name: state for name, state in states.items() if state is not None}


def is_independent(change: Change) -> bool:
    """Whether a change is a step of its own, outside the transaction (see PolicyKind)."""
    kind = KINDS_BY_NAME.get(change.policy)
    return kind is not None and kind.independent


def kind_of(change: Change) -> PolicyKind:
    """The kind a change belongs to (its ``policy``)."""
    return KINDS_BY_NAME[change.policy]


def inverse_of(change: Change) -> Change:
    """The change that undoes ``change``, as its kind says (a kind without one is never undone)."""
    inverse = kind_of(change).inverse
    if inverse is None:
        raise ValueError(f"a {change.policy} change is not undone")
    return inverse(change)
