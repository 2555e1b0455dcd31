"""The policy model: typed, immutable values for a policy, a repository's state and a plan."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, NoReturn

if TYPE_CHECKING:
    from policies.source import PolicyFile

Mode = Literal["enforce", "dry-run", "report"]
Notify = Literal["issue", "none"]
Method = Literal["PATCH", "PUT", "DELETE", "POST"]

MODES: tuple[str, ...] = ("enforce", "dry-run", "report")
NOTIFY: tuple[str, ...] = ("issue", "none")
PERMISSIONS: tuple[str, ...] = ("admin", "maintain", "write", "triage", "read")

REPOSITORY = "repository"
BRANCH_PROTECTION = "branch_protection"
# A need to read: which classic rule (its pattern) protects a branch.
BRANCH_PROTECTION_RULE = "branch_protection_rule"
RULESETS = "rulesets"
BRANCH_CLEANUP = "branch_cleanup"


class FrozenDict(dict[str, Any]):
    """A dict that cannot change after it is built, so it can be hashed and cached.

    It stays a ``dict`` on purpose: ``json.dumps`` and ``==`` with plain dicts work as usual.
    Build it with :func:`freeze`, which also turns nested lists into tuples.
    """

    __slots__ = ("_hash",)

    def _refuse(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("FrozenDict cannot be changed")

    __setitem__ = __delitem__ = __ior__ = _refuse
    clear = pop = popitem = setdefault = update = _refuse

    def __hash__(self) -> int:  # type: ignore[override]
        try:
            return self._hash
        except AttributeError:
            self._hash: int = hash(frozenset(self.items()))
            return self._hash

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenDict, (dict(self),))

    def __copy__(self) -> FrozenDict:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> FrozenDict:
        return self

    def __repr__(self) -> str:
        return f"FrozenDict({dict.__repr__(self)})"


_SCALARS = frozenset({str, int, float, bool, type(None)})


def freeze(value: Any) -> Any:
    """Return an immutable, hashable copy: mappings become FrozenDict, lists become tuples."""
    # A repository payload is a hundred values, nearly all strings: they are answered by
    # their exact type first, before the slower abstract-class checks.
    kind = type(value)
    if kind in _SCALARS or kind is FrozenDict:
        return value
    if kind is dict:
        return FrozenDict({str(k): v if type(v) in _SCALARS else freeze(v) for k, v in value.items()})
    if isinstance(value, FrozenDict):
        return value
    if isinstance(value, Mapping):
        return FrozenDict((str(k), freeze(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    if isinstance(value, (set, frozenset)):
        return tuple(sorted(freeze(v) for v in value))
    return value


def thaw(value: Any) -> Any:
    """Return a plain JSON-ready copy: mappings become dicts, tuples become lists."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [thaw(v) for v in value]
    return value


@dataclass(frozen=True)
class Unreadable:
    """A value Moko could not read, and why (the permission it lacks, a field GitHub left out).

    It stands where the value would be (in ``RepoState.repository``, or a kind's state) and is
    never taken for a default: a plan that meets one says ``unknown``, with ``reason``.
    """

    reason: str


def is_unreadable(value: Any) -> bool:
    return isinstance(value, Unreadable)


@dataclass(frozen=True)
class BranchRule:
    """One entry of ``branches``: a branch ("default" or an exact name) and its protection.

    ``protection`` is the body of PUT …/branches/{branch}/protection, or None, which means
    the branch must NOT be protected (Moko deletes its protection). ``displaces_default``:
    whether a rule naming the default branch wins over the ``default`` rule (False for a
    repository's own rule, unless the organization lets it override ``branches.default``).
    """

    name: str
    protection: Mapping[str, Any] | None
    displaces_default: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "protection", freeze(self.protection))


@dataclass(frozen=True)
class Scope:
    """Which repositories the policy manages: globs on the repository name."""

    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    archived: bool = False


@dataclass(frozen=True)
class BranchCleanup:
    """The ``branch_cleanup`` section: delete branches with no commits for ``after`` (as
    written, e.g. ``90d``; ``after_seconds`` the same in seconds), only merged ones unless
    ``merged_only`` is false, never those a ``keep`` glob matches."""

    after: str
    after_seconds: float
    merged_only: bool = True
    keep: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"after": self.after, "merged_only": self.merged_only, "keep": list(self.keep)}


@dataclass(frozen=True)
class Policy:
    """An organization's policy, after loading (and after a repository's overrides)."""

    version: int
    mode: Mode
    repository: Mapping[str, Any]
    branches: tuple[BranchRule, ...]
    scope: Scope
    overrides: tuple[str, ...]
    apply_permission: str
    # Where it came from, for logs and audit; not part of the policy's identity.
    source: str = field(default="built-in default", compare=False)
    # How a repository that stays non-compliant is told: an issue in it, or not at all.
    notify: Notify = "none"
    # Bodies of POST /repos/{owner}/{repo}/rulesets, matched by name (none: none managed).
    rulesets: tuple[Mapping[str, Any], ...] = ()
    # Stale branches to delete in sweeps (None: no branch is ever deleted).
    branch_cleanup: BranchCleanup | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "repository", freeze(self.repository))
        object.__setattr__(self, "rulesets", tuple(freeze(r) for r in self.rulesets))
        object.__setattr__(self, "branches", tuple(self.branches))
        object.__setattr__(self, "overrides", tuple(self.overrides))

    @property
    def dry_run(self) -> bool:
        """Whether nothing is changed: ``dry-run``, and ``report`` (which also notifies)."""
        return self.mode in ("dry-run", "report")

    @property
    def report(self) -> bool:
        return self.mode == "report"

    def to_dict(self) -> dict[str, Any]:
        """The policy in the shape of moko.yml, JSON/YAML-ready."""
        return {
            "version": self.version,
            "mode": self.mode,
            "repository": thaw(self.repository),
            "branches": [
                {"name": rule.name, "protection": thaw(rule.protection)} for rule in self.branches
            ],
            "scope": {
                "include": list(self.scope.include),
                "exclude": list(self.scope.exclude),
                "archived": self.scope.archived,
            },
            "overrides": list(self.overrides),
            "commands": {"apply_permission": self.apply_permission},
            "notify": self.notify,
            **({"rulesets": [thaw(r) for r in self.rulesets]} if self.rulesets else {}),
            **({"branch_cleanup": self.branch_cleanup.to_dict()} if self.branch_cleanup else {}),
        }


@dataclass(frozen=True)
class Change:
    """One intended change, and the request that makes it.

    - ``policy="repository"``: ``field`` is a PATCH /repos/{owner}/{repo} field, ``before`` and
      ``after`` its values; ``method="PATCH"``. Several of them are sent as ONE PATCH
      (see ``repository_settings.patch_body``).
    - ``policy="rulesets"``: ``field`` is the ruleset's name, ``target`` its id (as a string;
      None for a POST until it is made); ``before``/``after`` are its bodies (see
      ``policies.rulesets``, which also gives its inverse).
    - ``policy="branch_protection"``: ``field`` and ``target`` are the branch name; ``method`` is
      ``"PUT"`` (``after`` is the whole PUT body) or ``"DELETE"`` (``after`` is None);
      ``before`` is the PUT body that recreates the current protection, or None when the branch
      is not protected — so ``before`` is also what a rollback writes back (see
      ``branch_protection.inverse_protection``).
      ``before_rule``: for a PUT on a protected branch, the pattern of the classic rule that
      protects it now (its own name, or a wildcard rule other branches share), None while not
      known. A PUT on a branch a wildcard rule covers gives it a rule of its own; undoing that
      is removing that rule, not writing the wildcard's settings into it.

    ``before`` and ``after`` are plain JSON values, ready for a request body and the audit trail.
    """

    policy: str
    field: str
    before: Any
    after: Any
    method: Method = "PATCH"
    target: str | None = None
    before_rule: str | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "field": self.field,
            "before": self.before,
            "after": self.after,
        }


class NotYetPossible(Exception):
    """GitHub cannot make a change yet (e.g. protect a branch before its first push): the
    change waits, recorded ``deferred`` with ``reason``; ``str()`` names what it waits for."""

    reason = "not possible yet"


@dataclass(frozen=True)
class OpenIssue:
    """An open issue that Moko opened in a repository, as a batched read saw it."""

    number: int
    title: str
    body: str


@dataclass(frozen=True)
class RepoState:
    """What is known of one repository, from the batched read (or a webhook's payload) to the
    planner: immutable, so a read returns a new one (see ``PolicyKind.read``).

    - ``repository``: the REST repository object (a webhook payload's, GET /repos/{o}/{r}, or
      one made from a batched read's node), with what reads learned laid over it. A field it
      lacks is "unknown", not "off"; an ``Unreadable`` stands where the installation may not read.
    - ``kinds``: each policy kind's own state, by the kind's name in the registry (e.g. the
      rulesets by name); a kind missing here knows nothing yet.
    - ``existing_branches``: branch names known to exist, or None when not known (then every
      named branch is assumed to exist, except in an empty repository); ``missing_branches``:
      those GitHub answered it could not find.
    - ``open_issues``: the open issues Moko opened (None: not read).
    - ``own_policy``: its .github/moko.yml as the batched read saw it (None: it has none),
      when ``own_policy_read`` (else the policy source reads it).
    """

    repository: Mapping[str, Any] = field(default_factory=FrozenDict)
    empty: bool = False
    existing_branches: frozenset[str] | None = None
    missing_branches: frozenset[str] = frozenset()
    kinds: Mapping[str, Any] = field(default_factory=FrozenDict)
    open_issues: tuple[OpenIssue, ...] | None = None
    own_policy_read: bool = False
    own_policy: PolicyFile | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "repository", freeze(self.repository))
        object.__setattr__(self, "kinds", freeze(self.kinds))
        if self.existing_branches is not None:
            object.__setattr__(self, "existing_branches", frozenset(self.existing_branches))
        object.__setattr__(self, "missing_branches", frozenset(self.missing_branches))

    @property
    def full_name(self) -> str:
        return str(self.repository.get("full_name") or "")

    @property
    def name(self) -> str:
        return str(self.repository.get("name") or "") or self.full_name.rsplit("/", 1)[-1]

    @property
    def archived(self) -> bool:
        return bool(self.repository.get("archived", False))

    @property
    def default_branch(self) -> Any:
        return self.repository.get("default_branch")

    def kind(self, name: str, default: Any = None) -> Any:
        """The state of the kind named ``name`` (``default``: not known)."""
        return self.kinds.get(name, default)

    def with_kind(self, name: str, state: Any) -> RepoState:
        """A new state, knowing the kind named ``name`` to be in ``state``."""
        return self._with(self.repository, {**self.kinds, name: state})

    def with_repository(self, fields: Mapping[str, Any]) -> RepoState:
        """A new state, with ``fields`` of the repository object laid over those known."""
        return self._with({**self.repository, **fields}, self.kinds)

    def over(self, repository: Mapping[str, Any]) -> RepoState:
        """A new state, with what is known laid over ``repository`` (e.g. a webhook's payload)."""
        return self._with({**repository, **self.repository}, self.kinds)

    def _with(self, repository: Mapping[str, Any], kinds: Mapping[str, Any]) -> RepoState:
        # Not dataclasses.replace, which is slower: a state is made several times a delivery.
        return RepoState(
            repository, self.empty, self.existing_branches, self.missing_branches, kinds,
            self.open_issues, self.own_policy_read, self.own_policy,
        )


@dataclass(frozen=True)
class Held:
    """What the policy asks for and Moko will not do, and why (e.g. removing a rule that
    other branches share): the repository does not comply, and a person must decide."""

    policy: str
    field: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"policy": self.policy, "field": self.field, "reason": self.reason}


@dataclass(frozen=True)
class KindPlan:
    """What one policy kind plans for one repository."""

    changes: tuple[Change, ...] = ()
    deferred: tuple[Change, ...] = ()
    needs_read: tuple[str, ...] = ()
    held: tuple[Held, ...] = ()
    unknown: tuple[tuple[str, str], ...] = ()  # (key, why) for values Moko could not read


@dataclass(frozen=True)
class Plan:
    """What Moko would do to one repository.

    - ``changes``: to apply now, in order.
    - ``deferred``: changes that must wait (protection for a branch that does not exist yet).
    - ``needs_read``: what could not be decided from the state given, as ``"repository.<field>"``
      or ``"branch_protection.<branch>"``: read it (REST) and plan again.
    - ``unknown``: (key, why) for what Moko could not read and will not ask again (a permission
      the installation lacks, a field GitHub left out of its answer): the repository's
      compliance cannot be told, whatever the other changes say.
    - ``skipped``: why the repository is left alone (out of scope, archived), or None.
    - ``held``: what the policy asks for and Moko will not do (see ``Held``).
    """

    repo: str
    changes: tuple[Change, ...] = ()
    deferred: tuple[Change, ...] = ()
    needs_read: tuple[str, ...] = ()
    skipped: str | None = None
    held: tuple[Held, ...] = ()
    unknown: tuple[tuple[str, str], ...] = ()

    @property
    def compliant(self) -> bool:
        return self.skipped is None and not (
            self.changes or self.deferred or self.needs_read or self.held or self.unknown
        )

    @property
    def unknown_reason(self) -> str | None:
        """One line saying what could not be told and why, or None when everything could."""
        if not self.unknown:
            return None
        return "; ".join(f"{key} is unknown: {why}" for key, why in self.unknown)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, e.g. for ``moko sweep --json`` and ``/moko plan``."""
        return {
            "repo": self.repo,
            "changes": [change.to_dict() for change in self.changes],
            "deferred": [change.to_dict() for change in self.deferred],
            "needs_read": list(self.needs_read),
            "unknown": {key: why for key, why in self.unknown},
            "skipped": self.skipped,
            **({"held": [held.to_dict() for held in self.held]} if self.held else {}),
        }

    def to_read(self, need: str) -> tuple[str, ...]:
        """What is still to read of one kind of need (a kind's name, or one of the prefixes
        its read answers, e.g. the fields of ``repository.<field>``)."""
        return _suffixes(self.needs_read, need)

    def unknown_of(self, policy: str) -> dict[str, str]:
        """The unknown fields (or branches) of one policy kind -> why."""
        return {
            key.split(".", 1)[1]: why for key, why in self.unknown if key.split(".", 1)[0] == policy
        }


def _suffixes(keys: Sequence[str], prefix: str) -> tuple[str, ...]:
    return tuple(key.split(".", 1)[1] for key in keys if key.split(".", 1)[0] == prefix)


def shown_in_error(value: Any) -> str:
    """A policy file's value as an error message names it: YAML's spelling of null and the
    booleans, the kind of a mapping or list (not its contents), the repr of anything else."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)
