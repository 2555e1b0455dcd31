"""Branch protection in GitHub's three shapes (PUT body, GET answer, GraphQL rule), made one.

GitHub reads protection back in another shape than it is written: ``enforce_admins`` as
``{url, enabled}``, people as user/team/app objects instead of logins/slugs, sections that are
off ABSENT rather than null, booleans as ``{enabled}``, ``checks`` beside ``contexts``, and
``required_signatures`` (which the PUT body does not have). ``normalize_written``,
``normalize_read`` and ``normalize_graphql_rule`` all give a ``NormalizedProtection``;
``protection_body`` turns one back into a valid PUT body (for rollback and for fixes).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

from policies.branch_patterns import is_wildcard, matches

REQUIRED_KEYS: tuple[str, ...] = (
    "required_status_checks",
    "enforce_admins",
    "required_pull_request_reviews",
    "restrictions",
)
FLAG_KEYS: tuple[str, ...] = (
    "required_linear_history",
    "allow_force_pushes",
    "allow_deletions",
    "block_creations",
    "required_conversation_resolution",
    "lock_branch",
    "allow_fork_syncing",
)
# The properties of the PUT …/branches/{branch}/protection body, in GitHub's order.
PROTECTION_KEYS: tuple[str, ...] = REQUIRED_KEYS + FLAG_KEYS
STATUS_CHECK_KEYS: tuple[str, ...] = ("strict", "contexts", "checks")
ACTOR_KEYS: tuple[str, ...] = ("users", "teams", "apps")
REVIEW_ACTOR_KEYS: tuple[str, ...] = ("dismissal_restrictions", "bypass_pull_request_allowances")
REVIEW_FLAG_KEYS: tuple[str, ...] = (
    "dismiss_stale_reviews",
    "require_code_owner_reviews",
    "require_last_push_approval",
)
REVIEW_KEYS: tuple[str, ...] = (
    "dismissal_restrictions",
    "dismiss_stale_reviews",
    "require_code_owner_reviews",
    "required_approving_review_count",
    "require_last_push_approval",
    "bypass_pull_request_allowances",
)
# GitHub's value when a review section is on but the count is not given (written or read).
DEFAULT_REVIEW_COUNT = 1
ANY_APP = -1  # app_id that lets any app (or a plain commit status) satisfy a required check

# What normalize_graphql_rule needs from a BranchProtectionRule node. The allowance
# connections are optional: without them the members are unknown (see normalize_graphql_rule).
GRAPHQL_RULE_FIELDS = """
pattern
isAdminEnforced
requiresStatusChecks
requiresStrictStatusChecks
requiredStatusCheckContexts
requiredStatusChecks { context app { databaseId } }
requiresApprovingReviews
requiredApprovingReviewCount
dismissesStaleReviews
requiresCodeOwnerReviews
requireLastPushApproval
restrictsReviewDismissals
restrictsPushes
requiresLinearHistory
allowsForcePushes
allowsDeletions
blocksCreations
requiresConversationResolution
lockBranch
lockAllowsFetchAndMerge
"""
_ACTOR = "actor { __typename ... on User { login } ... on Team { slug } ... on App { slug } }"
# Optional: who may push / dismiss reviews / bypass. Without them those members are UNKNOWN.
GRAPHQL_ALLOWANCE_FIELDS = f"""
pushAllowances(first: 100) {{ totalCount nodes {{ {_ACTOR} }} }}
reviewDismissalAllowances(first: 100) {{ totalCount nodes {{ {_ACTOR} }} }}
bypassPullRequestAllowances(first: 100) {{ totalCount nodes {{ {_ACTOR} }} }}
"""
_GRAPHQL_REQUIRED = (
    "requiresApprovingReviews",
    "requiredApprovingReviewCount",
    "dismissesStaleReviews",
    "requiresCodeOwnerReviews",
    "requiresStatusChecks",
    "requiresStrictStatusChecks",
    "requiredStatusCheckContexts",
    "isAdminEnforced",
    "restrictsPushes",
    "requiresLinearHistory",
    "allowsForcePushes",
    "allowsDeletions",
)
# Fields an older GitHub Enterprise Server lacks: not queried there, and then UNKNOWN.
_GRAPHQL_NEWER = (
    "requiresConversationResolution",
    "lockBranch",
    "blocksCreations",
    "requireLastPushApproval",
    "lockAllowsFetchAndMerge",
)


class Unknown(Enum):
    """A value the state given cannot tell (GraphQL without a further query): read REST."""

    UNKNOWN = "unknown"

    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN = Unknown.UNKNOWN


class ProtectionUnknown(Exception):
    """The protection cannot be judged or rewritten from the state given: read it with REST."""

    def __init__(self, branch: str, fields: Sequence[str] = ()) -> None:
        super().__init__(f"protection of {branch!r} needs a REST read ({', '.join(fields)})")
        self.branch = branch
        self.fields = tuple(fields)


@dataclass(frozen=True)
class Actors:
    """Users (logins), teams (slugs) and apps (slugs): lower-cased, sorted, unique."""

    users: tuple[str, ...] = ()
    teams: tuple[str, ...] = ()
    apps: tuple[str, ...] = ()

    @classmethod
    def of(
        cls, users: Iterable[str] = (), teams: Iterable[str] = (), apps: Iterable[str] = ()
    ) -> Actors:
        # Logins and slugs are case-insensitive on GitHub; the read gives the canonical case.
        def canon(names: Iterable[str]) -> tuple[str, ...]:
            return tuple(sorted({name.lower() for name in names}))

        return cls(canon(users), canon(teams), canon(apps))

    @property
    def empty(self) -> bool:
        return not (self.users or self.teams or self.apps)

    def body(self) -> dict[str, list[str]]:
        return {"users": list(self.users), "teams": list(self.teams), "apps": list(self.apps)}


@dataclass(frozen=True)
class StatusChecks:
    """Required status checks.

    ``contexts`` is the sorted union of ``contexts`` and the ``checks``' contexts.
    ``apps`` pairs a context with the app that must provide it (None: any app) for each
    context whose app is fixed; a written context without ``app_id`` is not listed (GitHub
    picks the app). UNKNOWN when GraphQL was not asked for ``requiredStatusChecks``.
    """

    strict: bool
    contexts: tuple[str, ...]
    apps: tuple[tuple[str, int | None], ...] | Unknown = ()


@dataclass(frozen=True)
class Reviews:
    """Required pull request reviews, with GitHub's defaults for what is not given."""

    required_approving_review_count: int = DEFAULT_REVIEW_COUNT
    dismiss_stale_reviews: bool = False
    require_code_owner_reviews: bool = False
    require_last_push_approval: bool | Unknown = False
    dismissal_restrictions: Actors | Unknown = Actors()
    bypass_pull_request_allowances: Actors | Unknown = Actors()


@dataclass(frozen=True)
class NormalizedProtection:
    """One branch's protection in one comparable form (None sections are off)."""

    required_status_checks: StatusChecks | None | Unknown = None
    enforce_admins: bool | Unknown = False
    required_pull_request_reviews: Reviews | None | Unknown = None
    restrictions: Actors | None | Unknown = None
    required_linear_history: bool | Unknown = False
    allow_force_pushes: bool | Unknown = False
    allow_deletions: bool | Unknown = False
    block_creations: bool | Unknown = False
    required_conversation_resolution: bool | Unknown = False
    lock_branch: bool | Unknown = False
    allow_fork_syncing: bool | Unknown = False

    @property
    def known(self) -> bool:
        """True when nothing is UNKNOWN (always so for a REST read)."""
        return UNKNOWN not in _leaves(self)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for display; UNKNOWN shows as "unknown"."""
        return _plain(asdict(self))


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, (NormalizedProtection, StatusChecks, Reviews, Actors)):
        return [
            leaf for name in value.__dataclass_fields__ for leaf in _leaves(getattr(value, name))
        ]
    return [value]


def _plain(value: Any) -> Any:
    if value is UNKNOWN:
        return "unknown"
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# --- normalizing the three shapes -------------------------------------------------------


def _name(item: Any, key: str) -> str:
    """A login/slug from a read's object, or the string itself (the written shape)."""
    if isinstance(item, Mapping):
        return str(item.get(key) or item.get("login") or item.get("slug") or "")
    return str(item)


def parse_actors(value: Any) -> Actors:
    """Actors from a written ``{users: [logins], …}`` or a read ``{users: [{login}], …}``."""
    if not isinstance(value, Mapping):
        return Actors()
    return Actors.of(
        (_name(u, "login") for u in value.get("users") or ()),
        (_name(t, "slug") for t in value.get("teams") or ()),
        (_name(a, "slug") for a in value.get("apps") or ()),
    )


def _enabled(value: Any) -> bool:
    """A read flag: ``{enabled: bool}`` (or a bare bool); absent means off."""
    if isinstance(value, Mapping):
        return bool(value.get("enabled", False))
    return bool(value)


def _sorted_pins(pins: Iterable[tuple[str, int | None]]) -> tuple[tuple[str, int | None], ...]:
    return tuple(sorted(set(pins), key=lambda pin: (pin[0], -2 if pin[1] is None else pin[1])))


def _reviews(value: Any) -> Reviews | None:
    """Reviews, written or read: both name the settings alike (people aside, which
    parse_actors reads in either shape); what is not given takes GitHub's default."""
    if not isinstance(value, Mapping):
        return None
    count = value.get("required_approving_review_count")
    return Reviews(
        required_approving_review_count=DEFAULT_REVIEW_COUNT if count is None else int(count),
        dismiss_stale_reviews=bool(value.get("dismiss_stale_reviews", False)),
        require_code_owner_reviews=bool(value.get("require_code_owner_reviews", False)),
        require_last_push_approval=bool(value.get("require_last_push_approval", False)),
        dismissal_restrictions=parse_actors(value.get("dismissal_restrictions")),
        bypass_pull_request_allowances=parse_actors(value.get("bypass_pull_request_allowances")),
    )


def normalize_written(body: Mapping[str, Any] | None) -> NormalizedProtection | None:
    """What GitHub ends up with after a PUT of ``body`` (None: no protection).

    Keys the body omits take GitHub's defaults: sections off, flags false, review count 1.
    """
    if body is None:
        return None
    checks = body.get("required_status_checks")
    status = None
    if isinstance(checks, Mapping):
        entries = list(checks.get("checks") or ())
        contexts = set(checks.get("contexts") or ()) | {str(c["context"]) for c in entries}
        pins = (
            (str(c["context"]), None if c["app_id"] in (ANY_APP, None) else int(c["app_id"]))
            for c in entries
            if "app_id" in c
        )
        status = StatusChecks(
            bool(checks.get("strict", False)), tuple(sorted(contexts)), _sorted_pins(pins)
        )
    restrictions = body.get("restrictions")
    return NormalizedProtection(
        required_status_checks=status,
        enforce_admins=bool(body.get("enforce_admins")),
        required_pull_request_reviews=_reviews(body.get("required_pull_request_reviews")),
        restrictions=parse_actors(restrictions) if isinstance(restrictions, Mapping) else None,
        **{key: bool(body.get(key)) for key in FLAG_KEYS},
    )


def normalize_read(read: Mapping[str, Any] | None) -> NormalizedProtection | None:
    """The answer of GET …/branches/{branch}/protection (None: the branch is not protected)."""
    if read is None:
        return None
    checks = read.get("required_status_checks")
    status = None
    if isinstance(checks, Mapping):
        contexts = set(checks.get("contexts") or ())
        if "checks" in checks:
            entries = list(checks.get("checks") or ())
            contexts |= {str(c["context"]) for c in entries}
            pins = [
                (
                    str(c["context"]),
                    None if c.get("app_id") in (ANY_APP, None) else int(c["app_id"]),
                )
                for c in entries
            ]
        else:
            # An older GitHub (Enterprise Server) without app pinning: any app may report.
            pins = [(context, None) for context in contexts]
        status = StatusChecks(
            bool(checks.get("strict", False)), tuple(sorted(contexts)), _sorted_pins(pins)
        )
    restrictions = read.get("restrictions")
    return NormalizedProtection(
        required_status_checks=status,
        enforce_admins=_enabled(read.get("enforce_admins")),
        required_pull_request_reviews=_reviews(read.get("required_pull_request_reviews")),
        restrictions=parse_actors(restrictions) if isinstance(restrictions, Mapping) else None,
        **{key: _enabled(read.get(key)) for key in FLAG_KEYS},
    )


def _graphql_actors(connection: Any) -> Actors | Unknown:
    """Actors from an allowances connection queried with ``actor { __typename … }``.

    Not queried, a further page, or an actor of unknown type: UNKNOWN (never a guess).
    """
    if not isinstance(connection, Mapping) or not isinstance(connection.get("nodes"), list):
        return UNKNOWN
    nodes = connection["nodes"]
    if (connection.get("pageInfo") or {}).get("hasNextPage") or connection.get(
        "totalCount", 0
    ) > len(nodes):
        return UNKNOWN
    found: dict[str, list[str]] = {"User": [], "Team": [], "App": []}
    for node in nodes:
        actor = (node or {}).get("actor") or {}
        kind = actor.get("__typename")
        key = "login" if kind == "User" else "slug"
        if kind not in found or not actor.get(key):
            return UNKNOWN
        found[kind].append(actor[key])
    return Actors.of(found["User"], found["Team"], found["App"])


def normalize_graphql_rule(node: Mapping[str, Any]) -> NormalizedProtection:
    """A GraphQL ``BranchProtectionRule`` node (queried with GRAPHQL_RULE_FIELDS).

    GraphQL tells whether pushes and review dismissals are restricted, but not who may,
    unless the allowance connections were queried too; without them those members are
    UNKNOWN, and a comparison that needs them says "read REST" instead of guessing.
    """
    missing = [name for name in _GRAPHQL_REQUIRED if name not in node]
    if missing:
        raise ValueError(
            f"BranchProtectionRule node lacks {', '.join(missing)}; query GRAPHQL_RULE_FIELDS"
        )
    status = None
    if node["requiresStatusChecks"]:
        contexts = set(node["requiredStatusCheckContexts"] or ())
        apps: tuple[tuple[str, int | None], ...] | Unknown = UNKNOWN
        if isinstance(node.get("requiredStatusChecks"), list):
            pins: list[tuple[str, int | None]] = []
            for check in node["requiredStatusChecks"]:
                contexts.add(check["context"])
                app = check.get("app", UNKNOWN)
                if app is None:
                    pins.append((check["context"], None))
                elif isinstance(app, Mapping) and isinstance(app.get("databaseId"), int):
                    pins.append((check["context"], app["databaseId"]))
                else:
                    break
            else:
                apps = _sorted_pins(pins)
        status = StatusChecks(
            bool(node["requiresStrictStatusChecks"]), tuple(sorted(contexts)), apps
        )
    review = None
    if node["requiresApprovingReviews"]:
        restricted = node.get("restrictsReviewDismissals", UNKNOWN)
        count = node["requiredApprovingReviewCount"]
        review = Reviews(
            required_approving_review_count=DEFAULT_REVIEW_COUNT if count is None else int(count),
            dismiss_stale_reviews=bool(node["dismissesStaleReviews"]),
            require_code_owner_reviews=bool(node["requiresCodeOwnerReviews"]),
            require_last_push_approval=_flag(node, "requireLastPushApproval"),
            dismissal_restrictions=(
                Actors()
                if restricted is False
                else _graphql_actors(node.get("reviewDismissalAllowances"))
            ),
            bypass_pull_request_allowances=_graphql_actors(node.get("bypassPullRequestAllowances")),
        )
    return NormalizedProtection(
        required_status_checks=status,
        enforce_admins=bool(node["isAdminEnforced"]),
        required_pull_request_reviews=review,
        restrictions=_graphql_actors(node.get("pushAllowances"))
        if node["restrictsPushes"]
        else None,
        required_linear_history=bool(node["requiresLinearHistory"]),
        allow_force_pushes=bool(node["allowsForcePushes"]),
        allow_deletions=bool(node["allowsDeletions"]),
        block_creations=_flag(node, "blocksCreations"),
        required_conversation_resolution=_flag(node, "requiresConversationResolution"),
        lock_branch=_flag(node, "lockBranch"),
        allow_fork_syncing=_flag(node, "lockAllowsFetchAndMerge"),
    )


def _flag(node: Mapping[str, Any], name: str) -> bool | Unknown:
    """A newer field: UNKNOWN when it was not queried (the server does not have it)."""
    return bool(node[name]) if name in node else UNKNOWN


def protection_from_graphql_rules(
    rules: Iterable[Mapping[str, Any]], branch: str
) -> NormalizedProtection | None:
    """The protection of ``branch`` from a repository's ``branchProtectionRules`` nodes.

    A rule whose pattern is the branch's exact name applies (GitHub gives it priority).
    Otherwise a wildcard pattern that matches would need GitHub's own matching: raises
    ProtectionUnknown (read REST). No matching rule: None (not protected).
    """
    rules = list(rules)
    pattern = covering_pattern(rules, branch)
    if pattern is None:
        return None
    if pattern != branch:
        raise ProtectionUnknown(branch, (f"pattern {pattern}",))
    return normalize_graphql_rule(next(rule for rule in rules if rule.get("pattern") == branch))


def covering_pattern(rules: Iterable[Mapping[str, Any]], branch: str) -> str | None:
    """The pattern of the classic rule that protects ``branch`` among a repository's rules:
    its own exact rule first (GitHub gives it priority), else the first wildcard rule that
    matches it as GitHub matches; None when no rule covers it."""
    patterns = [str(rule.get("pattern") or "") for rule in rules]
    if branch in patterns:
        return branch
    return next((p for p in patterns if is_wildcard(p) and matches(p, branch)), None)


def as_normalized(current: Any) -> NormalizedProtection | None:
    if current is None or isinstance(current, NormalizedProtection):
        return current
    if isinstance(current, Mapping):
        return normalize_read(current)
    raise TypeError(f"not a protection: {type(current).__name__}")


# --- writing -----------------------------------------------------------------------------

AUTO_APP = object()  # a required check whose app GitHub chooses (no app_id written)


def status_checks_body(strict: bool, entries: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    """A PUT ``required_status_checks`` value. ``contexts`` only when no app is fixed;
    otherwise everything goes in ``checks`` (GitHub ignores ``contexts`` when ``checks`` is
    given, so splitting them would drop contexts), with ``contexts: []`` as the schema needs."""
    if all(pin is AUTO_APP for _, pin in entries):
        return {"strict": strict, "contexts": [context for context, _ in entries]}
    checks = [
        {"context": context}
        if pin is AUTO_APP
        else {"context": context, "app_id": ANY_APP if pin is None else pin}
        for context, pin in entries
    ]
    return {"strict": strict, "contexts": [], "checks": checks}


def actors_body(actors: Actors) -> dict[str, list[str]]:
    # An empty object turns dismissal restrictions / bypass allowances off.
    return {} if actors.empty else actors.body()


def protection_body(protection: NormalizedProtection) -> dict[str, Any]:
    """A valid PUT …/protection body that produces ``protection``.

    Raises ProtectionUnknown when part of it is UNKNOWN (GraphQL state: read REST first).
    """
    if not protection.known:
        raise ProtectionUnknown("?", ("members or apps unknown",))
    status = protection.required_status_checks
    assert not isinstance(status, Unknown)
    reviews = protection.required_pull_request_reviews
    assert not isinstance(reviews, Unknown)
    restrictions = protection.restrictions
    assert not isinstance(restrictions, Unknown)
    status_body = None
    if status is not None:
        pins = dict(status.apps) if not isinstance(status.apps, Unknown) else {}
        status_body = status_checks_body(
            status.strict, [(c, pins.get(c, AUTO_APP)) for c in status.contexts]
        )
    reviews_body = None
    if reviews is not None:
        assert isinstance(reviews.dismissal_restrictions, Actors)
        assert isinstance(reviews.bypass_pull_request_allowances, Actors)
        reviews_body = {
            "dismissal_restrictions": actors_body(reviews.dismissal_restrictions),
            "dismiss_stale_reviews": reviews.dismiss_stale_reviews,
            "require_code_owner_reviews": reviews.require_code_owner_reviews,
            "required_approving_review_count": reviews.required_approving_review_count,
            "require_last_push_approval": reviews.require_last_push_approval,
            "bypass_pull_request_allowances": actors_body(reviews.bypass_pull_request_allowances),
        }
    body: dict[str, Any] = {
        "required_status_checks": status_body,
        "enforce_admins": protection.enforce_admins,
        "required_pull_request_reviews": reviews_body,
        "restrictions": None if restrictions is None else restrictions.body(),
    }
    body.update({key: getattr(protection, key) for key in FLAG_KEYS})
    return body


def protection_body_from_read(read: Mapping[str, Any]) -> dict[str, Any]:
    """Turn a GET …/protection answer back into a PUT body (to restore it on rollback)."""
    normalized = normalize_read(read)
    assert normalized is not None
    return protection_body(normalized)
