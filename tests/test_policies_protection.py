"""Branch protection: GitHub's read shape vs the written body, compliance, drift, round trips."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import graphql
import pytest

from policies.branch_protection import diff_protection, plan_branch_protection
from policies.defaults import DEFAULT_PROTECTION
from policies.model import Change
from policies.protection_shapes import (
    GRAPHQL_ALLOWANCE_FIELDS,
    GRAPHQL_RULE_FIELDS,
    UNKNOWN,
    Actors,
    ProtectionUnknown,
    normalize_graphql_rule,
    normalize_read,
    normalize_written,
    protection_body_from_read,
    protection_from_graphql_rules,
)
from policies.registry import inverse_of

BASE = "https://api.github.com/repos/octo-org/hello-world/branches/main/protection"
ACTIONS_APP_ID = 15368  # GitHub Actions: the app GitHub pins a context to when it reported it


def user(login: str) -> dict[str, Any]:
    """A user object as GitHub returns it inside protection (from GitHub's example answer)."""
    return {
        "login": login,
        "id": 1,
        "node_id": "MDQ6VXNlcjE=",
        "avatar_url": "https://github.com/images/error/octocat_happy.gif",
        "gravatar_id": "",
        "url": f"https://api.github.com/users/{login}",
        "html_url": f"https://github.com/{login}",
        "type": "User",
        "site_admin": False,
    }


def team(slug: str) -> dict[str, Any]:
    return {
        "id": 1,
        "node_id": "MDQ6VGVhbTE=",
        "url": "https://api.github.com/teams/1",
        "html_url": f"https://github.com/orgs/octo-org/teams/{slug}",
        "name": slug.replace("-", " ").title(),
        "slug": slug,
        "description": "A great team.",
        "privacy": "closed",
        "notification_setting": "notifications_enabled",
        "permission": "admin",
        "members_url": "https://api.github.com/teams/1/members{/member}",
        "repositories_url": "https://api.github.com/teams/1/repos",
        "parent": None,
    }


def app(slug: str) -> dict[str, Any]:
    return {
        "id": 1,
        "slug": slug,
        "node_id": "MDExOkludGVncmF0aW9uMQ==",
        "owner": {"login": "octo-org", "id": 1},
        "name": slug.title(),
        "description": "",
        "external_url": "https://example.com",
        "html_url": f"https://github.com/apps/{slug}",
        "permissions": {"metadata": "read", "contents": "read"},
        "events": ["push", "pull_request"],
    }


def github_read(body: dict[str, Any], *, pin_contexts_to: int | None = None) -> dict[str, Any]:
    """What GET …/protection answers after PUT ``body`` — GitHub's own shape (see the example
    answer of repos/get-branch-protection): sections that are off are ABSENT, flags are
    ``{enabled}``, people are objects, ``required_signatures`` appears although never written.
    ``pin_contexts_to``: the app GitHub pins a bare context to (it picks the last reporter)."""
    read: dict[str, Any] = {"url": BASE}
    checks = body.get("required_status_checks")
    if checks is not None:
        entries = [{"context": c, "app_id": pin_contexts_to} for c in checks.get("contexts") or []]
        if checks.get("checks"):
            entries = [
                {
                    "context": c["context"],
                    "app_id": None if c.get("app_id", -1) == -1 else c["app_id"],
                }
                for c in checks["checks"]
            ]
        read["required_status_checks"] = {
            "url": f"{BASE}/required_status_checks",
            "strict": checks["strict"],
            "contexts": [e["context"] for e in entries],
            "contexts_url": f"{BASE}/required_status_checks/contexts",
            "checks": entries,
        }
    reviews = body.get("required_pull_request_reviews")
    if reviews is not None:
        shown: dict[str, Any] = {
            "url": f"{BASE}/required_pull_request_reviews",
            "dismiss_stale_reviews": reviews.get("dismiss_stale_reviews", False),
            "require_code_owner_reviews": reviews.get("require_code_owner_reviews", False),
            "required_approving_review_count": reviews.get("required_approving_review_count", 1),
            "require_last_push_approval": reviews.get("require_last_push_approval", False),
        }
        dismissal = reviews.get("dismissal_restrictions")
        if dismissal:
            shown["dismissal_restrictions"] = {
                "url": f"{BASE}/dismissal_restrictions",
                "users_url": f"{BASE}/dismissal_restrictions/users",
                "teams_url": f"{BASE}/dismissal_restrictions/teams",
                "users": [user(u) for u in dismissal.get("users", [])],
                "teams": [team(t) for t in dismissal.get("teams", [])],
                "apps": [app(a) for a in dismissal.get("apps", [])],
            }
        bypass = reviews.get("bypass_pull_request_allowances")
        if bypass:
            shown["bypass_pull_request_allowances"] = {
                "users": [user(u) for u in bypass.get("users", [])],
                "teams": [team(t) for t in bypass.get("teams", [])],
                "apps": [app(a) for a in bypass.get("apps", [])],
            }
        read["required_pull_request_reviews"] = shown
    read["required_signatures"] = {"url": f"{BASE}/required_signatures", "enabled": False}
    read["enforce_admins"] = {
        "url": f"{BASE}/enforce_admins",
        "enabled": bool(body.get("enforce_admins")),
    }
    restrictions = body.get("restrictions")
    if restrictions is not None:
        read["restrictions"] = {
            "url": f"{BASE}/restrictions",
            "users_url": f"{BASE}/restrictions/users",
            "teams_url": f"{BASE}/restrictions/teams",
            "apps_url": f"{BASE}/restrictions/apps",
            "users": [user(u) for u in restrictions.get("users", [])],
            "teams": [team(t) for t in restrictions.get("teams", [])],
            "apps": [app(a) for a in restrictions.get("apps", [])],
        }
    for flag in (
        "required_linear_history",
        "allow_force_pushes",
        "allow_deletions",
        "block_creations",
        "required_conversation_resolution",
        "lock_branch",
        "allow_fork_syncing",
    ):
        read[flag] = {"enabled": bool(body.get(flag))}
    return read


# GitHub's example answer of GET …/protection (operation repos/get-branch-protection).
GITHUB_EXAMPLE_READ = github_read(
    {
        "required_status_checks": {
            "strict": False,
            "contexts": ["continuous-integration/travis-ci"],
        },
        "enforce_admins": True,
        "required_pull_request_reviews": {
            "dismissal_restrictions": {
                "users": ["octocat"],
                "teams": ["justice-league"],
                "apps": ["octoapp"],
            },
            "dismiss_stale_reviews": True,
            "require_code_owner_reviews": True,
            "required_approving_review_count": 2,
            "require_last_push_approval": True,
        },
        "restrictions": {"users": ["octocat"], "teams": ["justice-league"], "apps": ["octoapp"]},
        "required_linear_history": True,
        "allow_force_pushes": True,
        "allow_deletions": True,
        "required_conversation_resolution": True,
        "lock_branch": True,
        "allow_fork_syncing": True,
    }
)

RICH_POLICY = {
    "required_status_checks": {"strict": True, "contexts": ["build", "test"]},
    "enforce_admins": True,
    "required_pull_request_reviews": {
        "required_approving_review_count": 2,
        "dismiss_stale_reviews": True,
        "require_code_owner_reviews": True,
        "dismissal_restrictions": {"users": ["Octocat"], "teams": ["justice-league"]},
    },
    "restrictions": {"users": ["octocat"], "teams": ["release-managers"], "apps": ["deploy-bot"]},
    "required_linear_history": True,
    "required_conversation_resolution": True,
}


def put_body_is_valid(body: dict[str, Any]) -> None:
    """What PUT …/protection requires (repos/update-branch-protection's request schema)."""
    for key in (
        "required_status_checks",
        "enforce_admins",
        "required_pull_request_reviews",
        "restrictions",
    ):
        assert key in body, key
    checks = body["required_status_checks"]
    if checks is not None:
        assert isinstance(checks["strict"], bool) and isinstance(checks["contexts"], list)
        for check in checks.get("checks", []):
            assert isinstance(check["context"], str) and isinstance(check.get("app_id", 0), int)
    if body["restrictions"] is not None:
        assert set(body["restrictions"]) <= {"users", "teams", "apps"}
        assert all(
            isinstance(name, str) for names in body["restrictions"].values() for name in names
        )
    reviews = body["required_pull_request_reviews"]
    if reviews is not None:
        for key in ("dismissal_restrictions", "bypass_pull_request_allowances"):
            for names in reviews.get(key, {}).values():
                assert all(isinstance(name, str) for name in names)
    json.dumps(body)


# --- compliant branches are never written again ---


def test_default_policy_on_a_branch_github_protected_with_it_plans_nothing() -> None:
    assert plan_branch_protection("main", github_read(DEFAULT_PROTECTION), DEFAULT_PROTECTION) == []


def test_rich_policy_read_back_in_githubs_shape_plans_nothing() -> None:
    read = github_read(RICH_POLICY, pin_contexts_to=ACTIONS_APP_ID)
    assert plan_branch_protection("main", read, RICH_POLICY) == []


def test_keys_the_policy_does_not_name_are_left_alone() -> None:
    # Someone added linear history and a required check on top of the default policy.
    read = github_read({**DEFAULT_PROTECTION, "required_linear_history": True})
    assert plan_branch_protection("main", read, DEFAULT_PROTECTION) == []
    stricter = copy.deepcopy(DEFAULT_PROTECTION)
    stricter["required_pull_request_reviews"]["dismiss_stale_reviews"] = True
    assert plan_branch_protection("main", github_read(stricter), DEFAULT_PROTECTION) == []


# --- the read shape and the written shape compare equal ---


def test_enforce_admins_enabled_object_equals_true() -> None:
    read = normalize_read({"enforce_admins": {"url": f"{BASE}/enforce_admins", "enabled": True}})
    assert read == normalize_written(
        {
            "enforce_admins": True,
            "required_status_checks": None,
            "required_pull_request_reviews": None,
            "restrictions": None,
        }
    )


def test_restrictions_as_user_objects_equal_restrictions_as_logins() -> None:
    written = {"users": ["OctoCat", "hubot"], "teams": ["justice-league"], "apps": ["octoapp"]}
    read = github_read(
        {
            "restrictions": {
                "users": ["hubot", "octocat"],
                "teams": ["justice-league"],
                "apps": ["octoapp"],
            }
        }
    )
    assert (
        normalize_read(read).restrictions
        == normalize_written({"restrictions": written}).restrictions
    )
    assert normalize_read(read).restrictions == Actors(
        ("hubot", "octocat"), ("justice-league",), ("octoapp",)
    )


def test_absent_section_in_the_read_equals_null_in_the_body() -> None:
    body = {
        "required_status_checks": None,
        "enforce_admins": None,
        "required_pull_request_reviews": None,
        "restrictions": None,
    }
    read = {"url": BASE, "enforce_admins": {"url": f"{BASE}/enforce_admins", "enabled": False}}
    assert normalize_read(read) == normalize_written(body)
    assert plan_branch_protection("main", read, body) == []


def test_contexts_and_checks_are_one_set_and_any_app_github_picked_complies() -> None:
    read = github_read(
        {"required_status_checks": {"strict": True, "contexts": ["test", "build"]}},
        pin_contexts_to=ACTIONS_APP_ID,
    )
    body = {
        "required_status_checks": {
            "strict": True,
            "contexts": ["build"],
            "checks": [{"context": "test"}],
        }
    }
    assert diff_protection(normalize_read(read), body).compliant


def test_a_pinned_app_is_compared() -> None:
    read = github_read(
        {"required_status_checks": {"strict": True, "contexts": ["build"]}},
        pin_contexts_to=ACTIONS_APP_ID,
    )
    pinned = {
        "required_status_checks": {
            "strict": True,
            "checks": [{"context": "build", "app_id": ACTIONS_APP_ID}],
        }
    }
    any_app = {
        "required_status_checks": {"strict": True, "checks": [{"context": "build", "app_id": -1}]}
    }
    assert plan_branch_protection("main", read, pinned) == []
    assert diff_protection(normalize_read(read), any_app).drift == (
        "required_status_checks.checks",
    )


def test_review_count_absent_from_the_read_is_githubs_default_of_one() -> None:
    read = {
        "required_pull_request_reviews": {
            "url": f"{BASE}/required_pull_request_reviews",
            "dismiss_stale_reviews": False,
            "require_code_owner_reviews": False,
        }
    }
    assert plan_branch_protection("main", read, DEFAULT_PROTECTION) == []


# --- each kind of drift plans ONE change ---

DRIFTS = {
    "reviews turned off": (
        {**DEFAULT_PROTECTION, "required_pull_request_reviews": None},
        "required_pull_request_reviews",
    ),
    "review count lowered": (
        {
            **DEFAULT_PROTECTION,
            "required_pull_request_reviews": {"required_approving_review_count": 0},
        },
        "required_pull_request_reviews.required_approving_review_count",
    ),
    "admins exempted": ({**RICH_POLICY, "enforce_admins": False}, "enforce_admins"),
    "status checks removed": (
        {**RICH_POLICY, "required_status_checks": None},
        "required_status_checks",
    ),
    "a check dropped": (
        {**RICH_POLICY, "required_status_checks": {"strict": True, "contexts": ["build"]}},
        "required_status_checks.contexts",
    ),
    "strict off": (
        {**RICH_POLICY, "required_status_checks": {"strict": False, "contexts": ["build", "test"]}},
        "required_status_checks.strict",
    ),
    "someone may now push": (
        {
            **RICH_POLICY,
            "restrictions": {
                "users": ["octocat", "mallory"],
                "teams": ["release-managers"],
                "apps": ["deploy-bot"],
            },
        },
        "restrictions",
    ),
    "push restrictions lifted": ({**RICH_POLICY, "restrictions": None}, "restrictions"),
    "linear history off": (
        {**RICH_POLICY, "required_linear_history": False},
        "required_linear_history",
    ),
    "dismissal restrictions changed": (
        {
            **RICH_POLICY,
            "required_pull_request_reviews": {
                **RICH_POLICY["required_pull_request_reviews"],
                "dismissal_restrictions": {"users": ["hubot"]},
            },
        },
        "required_pull_request_reviews.dismissal_restrictions",
    ),
}


@pytest.mark.parametrize("name", list(DRIFTS))
def test_each_kind_of_drift_plans_one_put_that_fixes_it(name: str) -> None:
    drifted_body, drifted_key = DRIFTS[name]
    policy = RICH_POLICY if drifted_body.keys() >= RICH_POLICY.keys() else DEFAULT_PROTECTION
    read = github_read(drifted_body, pin_contexts_to=ACTIONS_APP_ID)
    assert diff_protection(normalize_read(read), policy).drift == (drifted_key,)
    [change] = plan_branch_protection("main", read, policy)
    assert (change.policy, change.field, change.target, change.method) == (
        "branch_protection",
        "main",
        "main",
        "PUT",
    )
    put_body_is_valid(change.after)
    assert change.before == protection_body_from_read(read)
    # Applied, GitHub reads it back compliant: no perpetual PUT.
    assert plan_branch_protection("main", github_read(change.after), policy) == []


def test_several_drifts_still_plan_one_change() -> None:
    read = github_read(
        {
            "enforce_admins": False,
            "required_status_checks": None,
            "required_pull_request_reviews": None,
            "restrictions": None,
        }
    )
    changes = plan_branch_protection("main", read, RICH_POLICY)
    assert len(changes) == 1
    assert len(diff_protection(normalize_read(read), RICH_POLICY).drift) == 6


def test_a_fix_keeps_what_the_policy_does_not_name() -> None:
    current = {
        **DEFAULT_PROTECTION,
        "required_pull_request_reviews": {
            "required_approving_review_count": 0,
            "dismiss_stale_reviews": True,
        },
        "required_linear_history": True,
        "restrictions": {"users": ["octocat"], "teams": []},
    }
    policy = {"required_pull_request_reviews": {"required_approving_review_count": 1}}
    [change] = plan_branch_protection("main", github_read(current), policy)
    assert change.after["required_linear_history"] is True
    assert change.after["restrictions"] == {"users": ["octocat"], "teams": [], "apps": []}
    assert change.after["required_pull_request_reviews"]["dismiss_stale_reviews"] is True
    assert change.after["required_pull_request_reviews"]["required_approving_review_count"] == 1


def test_a_fix_does_not_repin_a_check_to_another_app() -> None:
    current = {"required_status_checks": {"strict": False, "contexts": ["build"]}}
    policy = {"required_status_checks": {"strict": True, "contexts": ["build"]}}
    [change] = plan_branch_protection(
        "main", github_read(current, pin_contexts_to=ACTIONS_APP_ID), policy
    )
    assert change.after["required_status_checks"] == {
        "strict": True,
        "contexts": [],
        "checks": [{"context": "build", "app_id": ACTIONS_APP_ID}],
    }


def test_unprotected_branch_gets_exactly_the_policy_body() -> None:
    [change] = plan_branch_protection("main", None, DEFAULT_PROTECTION)
    assert change == Change("branch_protection", "main", None, DEFAULT_PROTECTION, "PUT", "main")
    assert inverse_of(change).method == "DELETE"


def test_protection_null_deletes_protection_and_only_when_there_is_some() -> None:
    read = github_read(DEFAULT_PROTECTION)
    [change] = plan_branch_protection("legacy", read, None)
    assert (change.method, change.after) == ("DELETE", None)
    assert inverse_of(change) == Change(
        "branch_protection", "legacy", None, change.before, "PUT", "legacy"
    )
    assert plan_branch_protection("legacy", None, None) == []


# --- round trips, for rollback ---


@pytest.mark.parametrize(
    "read",
    [
        GITHUB_EXAMPLE_READ,
        github_read(RICH_POLICY, pin_contexts_to=ACTIONS_APP_ID),
        github_read(DEFAULT_PROTECTION),
        {
            "url": BASE,
            "required_status_checks": {
                "url": BASE,
                "enforcement_level": "non_admins",
                "contexts": ["ci/legacy"],
                "contexts_url": BASE,
            },
        },
    ],
    ids=["github-example", "rich", "default", "old-server-without-checks"],
)
def test_body_from_read_is_a_valid_put_body_that_normalizes_equal(read: dict[str, Any]) -> None:
    body = protection_body_from_read(read)
    put_body_is_valid(body)
    assert normalize_written(body) == normalize_read(read)
    assert normalize_read(github_read(body)) == normalize_read(
        read
    )  # restoring it restores the state
    assert plan_branch_protection("main", read, body) == []


def test_github_example_answer_is_read_as_github_means_it() -> None:
    normalized = normalize_read(GITHUB_EXAMPLE_READ)
    assert normalized.enforce_admins is True
    assert normalized.restrictions == Actors(("octocat",), ("justice-league",), ("octoapp",))
    assert (
        normalized.required_pull_request_reviews.dismissal_restrictions == normalized.restrictions
    )
    assert normalized.required_status_checks.contexts == ("continuous-integration/travis-ci",)
    assert normalized.lock_branch is True and normalized.block_creations is False


# --- GraphQL (the batched organization sweep) ---


def graphql_rule(**overrides: Any) -> dict[str, Any]:
    rule = {
        "pattern": "main",
        "isAdminEnforced": False,
        "requiresStatusChecks": False,
        "requiresStrictStatusChecks": False,
        "requiredStatusCheckContexts": [],
        "requiredStatusChecks": [],
        "requiresApprovingReviews": True,
        "requiredApprovingReviewCount": 1,
        "dismissesStaleReviews": False,
        "requiresCodeOwnerReviews": False,
        "requireLastPushApproval": False,
        "restrictsReviewDismissals": False,
        "restrictsPushes": False,
        "requiresLinearHistory": False,
        "allowsForcePushes": False,
        "allowsDeletions": False,
        "blocksCreations": False,
        "requiresConversationResolution": False,
        "lockBranch": False,
        "lockAllowsFetchAndMerge": False,
    }
    rule.update(overrides)
    return rule


def test_graphql_rule_compliant_with_the_default_needs_no_rest_read() -> None:
    assert (
        plan_branch_protection("main", normalize_graphql_rule(graphql_rule()), DEFAULT_PROTECTION)
        == []
    )
    no_bypass = {"totalCount": 0, "nodes": []}
    assert normalize_graphql_rule(
        graphql_rule(bypassPullRequestAllowances=no_bypass)
    ) == normalize_written(DEFAULT_PROTECTION)


def test_graphql_without_push_allowances_says_unknown_rather_than_guessing() -> None:
    rule = normalize_graphql_rule(graphql_rule(restrictsPushes=True))
    assert rule.restrictions is UNKNOWN
    policy = {**DEFAULT_PROTECTION, "restrictions": {"users": ["octocat"], "teams": []}}
    assert diff_protection(rule, policy).unknown == ("restrictions",)
    with pytest.raises(ProtectionUnknown):
        plan_branch_protection("main", rule, policy)


def test_graphql_push_allowances_with_typenames_are_known() -> None:
    allowances = {
        "totalCount": 2,
        "nodes": [
            {"actor": {"__typename": "User", "login": "Octocat"}},
            {"actor": {"__typename": "Team", "slug": "release-managers"}},
        ],
    }
    rule = normalize_graphql_rule(graphql_rule(restrictsPushes=True, pushAllowances=allowances))
    assert rule.restrictions == Actors(("octocat",), ("release-managers",), ())


def test_graphql_drift_asks_for_a_rest_read_before_writing_over_unknown_members() -> None:
    # Reviews are off (drift), and who may push is unknown: the fix would overwrite it blindly.
    rule = normalize_graphql_rule(
        graphql_rule(requiresApprovingReviews=False, restrictsPushes=True)
    )
    with pytest.raises(ProtectionUnknown):
        plan_branch_protection("main", rule, DEFAULT_PROTECTION)


def test_graphql_drift_with_everything_known_plans_the_fix() -> None:
    rule = normalize_graphql_rule(
        graphql_rule(requiresApprovingReviews=False, requiredApprovingReviewCount=None)
    )
    [change] = plan_branch_protection("main", rule, DEFAULT_PROTECTION)
    assert change.after["required_pull_request_reviews"] == {"required_approving_review_count": 1}


def test_graphql_rules_by_pattern() -> None:
    rules = [graphql_rule(pattern="release/*"), graphql_rule(pattern="main", isAdminEnforced=True)]
    assert protection_from_graphql_rules(rules, "main").enforce_admins is True
    assert protection_from_graphql_rules(rules, "develop") is None
    with pytest.raises(ProtectionUnknown):
        protection_from_graphql_rules(rules, "release/1.0")


def test_graphql_fields_are_valid_against_githubs_schema() -> None:
    schema_file = Path(__file__).parent / "fixtures" / "github-schema.graphql"
    schema = graphql.build_schema(schema_file.read_text(), assume_valid_sdl=True)
    # GitHub's own schema breaks a few of graphql-core's schema rules (deprecations on
    # interface fields); only the query is being checked here.
    schema._validation_errors = []
    query = (
        'query { repository(owner: "o", name: "r") { branchProtectionRules(first: 100) { nodes { '
        f"{GRAPHQL_RULE_FIELDS} {GRAPHQL_ALLOWANCE_FIELDS} }} }} }} }}"
    )
    assert graphql.validate(schema, graphql.parse(query)) == []
