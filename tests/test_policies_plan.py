"""Planning one repository: settings drift, protection, empty repositories, scope, what to read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import graphql

from policies.branch_protection import branches_to_check
from policies.defaults import DEFAULT_POLICY, DEFAULT_PROTECTION
from policies.loader import parse_policy
from policies.model import BRANCH_PROTECTION, REPOSITORY, Change, RepoState
from policies.plan import plan_repository
from policies.protection_shapes import normalize_graphql_rule
from policies.protection_state import ProtectionState
from policies.registry import POLICY_KINDS, inverse_of
from policies.repository_settings import (
    GRAPHQL_FIELDS,
    missing_fields,
    patch_body,
    plan_repository_settings,
    rest_settings_from_graphql,
)
from policies.scope import in_scope, skip_reason

# The repository of a `repository.created` webhook (trimmed from GitHub's example payload).
CREATED = {
    "id": 186853261,
    "name": "Hello-World",
    "full_name": "Octocoders/Hello-World",
    "private": False,
    "description": None,
    "fork": False,
    "homepage": None,
    "size": 0,
    "has_issues": False,
    "has_projects": True,
    "has_downloads": True,
    "has_wiki": True,
    "has_pages": False,
    "archived": False,
    "disabled": False,
    "default_branch": "master",
    "is_template": False,
    "topics": [],
    "visibility": "public",
    "web_commit_signoff_required": False,
}
COMPLIANT_SETTINGS = {**CREATED, "has_issues": True, "has_wiki": False, "has_projects": False}

API = "https://api.github.com/repos/Octocoders/Hello-World/branches/master/protection"
# GET …/protection of a branch protected exactly as the default policy says.
DEFAULT_PROTECTION_READ = {
    "url": API,
    "required_signatures": {"url": f"{API}/required_signatures", "enabled": False},
    "enforce_admins": {"url": f"{API}/enforce_admins", "enabled": False},
    "required_pull_request_reviews": {
        "url": f"{API}/required_pull_request_reviews",
        "dismiss_stale_reviews": False,
        "require_code_owner_reviews": False,
        "require_last_push_approval": False,
        "required_approving_review_count": 1,
    },
    "required_linear_history": {"enabled": False},
    "allow_force_pushes": {"enabled": False},
    "allow_deletions": {"enabled": False},
    "block_creations": {"enabled": False},
    "required_conversation_resolution": {"enabled": False},
    "lock_branch": {"enabled": False},
    "allow_fork_syncing": {"enabled": False},
}


def state(
    settings: dict[str, Any] = COMPLIANT_SETTINGS,
    *,
    protections: dict[str, Any] | None = None,
    rule_patterns: dict[str, str | None] | None = None,
    **kwargs: Any,
) -> RepoState:
    protections = {"master": DEFAULT_PROTECTION_READ} if protections is None else protections
    known = ProtectionState(protections, rule_patterns or {})
    return RepoState(settings, kinds={BRANCH_PROTECTION: known}, **kwargs)


# --- whole repositories ---


def test_compliant_repository_plans_nothing_and_needs_no_read() -> None:
    plan = plan_repository(DEFAULT_POLICY, state())
    assert plan.compliant
    assert (plan.changes, plan.deferred, plan.needs_read, plan.skipped) == ((), (), (), None)


def test_new_repository_plans_from_the_payload_alone_one_patch_and_one_put() -> None:
    plan = plan_repository(DEFAULT_POLICY, state(CREATED, protections={"master": None}))
    assert plan.needs_read == ()
    assert [(c.policy, c.field, c.before, c.after) for c in plan.changes] == [
        ("repository", "has_issues", False, True),
        ("repository", "has_wiki", True, False),
        ("repository", "has_projects", True, False),
        ("branch_protection", "master", None, DEFAULT_PROTECTION),
    ]
    assert patch_body(plan.changes) == {
        "has_issues": True,
        "has_wiki": False,
        "has_projects": False,
    }
    assert plan.changes[-1].method == "PUT"


def test_empty_repository_defers_protection_until_the_branch_exists() -> None:
    plan = plan_repository(DEFAULT_POLICY, state(COMPLIANT_SETTINGS, empty=True, protections={}))
    assert plan.changes == ()
    assert plan.deferred == (
        Change("branch_protection", "master", None, DEFAULT_PROTECTION, "PUT", "master"),
    )
    assert plan.needs_read == ()
    assert not plan.compliant


def test_a_named_branch_that_does_not_exist_yet_is_deferred() -> None:
    policy = parse_policy("branches:\n  - {name: release, protection: {enforce_admins: true}}\n")
    plan = plan_repository(policy, state(existing_branches={"master"}))
    assert [(c.field, c.after) for c in plan.deferred] == [
        (
            "release",
            {
                "required_status_checks": None,
                "enforce_admins": True,
                "required_pull_request_reviews": None,
                "restrictions": None,
            },
        ),
    ]


def test_archived_repository_is_skipped_unless_the_scope_takes_archived_ones() -> None:
    archived = state({**CREATED, "archived": True})
    plan = plan_repository(DEFAULT_POLICY, archived)
    assert plan.skipped == "archived (scope.archived is false)"
    assert plan.changes == () and not plan.compliant
    with_archived = parse_policy("scope: {archived: true}\n")
    assert plan_repository(with_archived, archived).skipped is None


def test_out_of_scope_repository_is_skipped_with_the_reason() -> None:
    policy = parse_policy('scope:\n  include: ["hello-*"]\n  exclude: ["*-world"]\n')
    assert plan_repository(policy, state()).skipped == "excluded by scope.exclude '*-world'"
    other = state({**CREATED, "name": "docs", "full_name": "Octocoders/docs"})
    assert plan_repository(policy, other).skipped == "not in scope.include (hello-*)"


def test_fields_the_payload_lacks_are_asked_for_not_guessed() -> None:
    policy = parse_policy(
        "repository:\n  has_wiki: false\n  allow_squash_merge: false\nbranches: [{name: main, protection: {}}]\n"
    )
    plan = plan_repository(policy, state())
    assert [c.field for c in plan.changes] == []
    assert plan.to_read(REPOSITORY) == ("allow_squash_merge",)
    assert plan.to_read(BRANCH_PROTECTION) == ("main",)
    assert plan.needs_read == ("repository.allow_squash_merge", "branch_protection.main")


def test_protection_drift_plans_one_put_after_the_settings() -> None:
    read = {**DEFAULT_PROTECTION_READ}
    del read["required_pull_request_reviews"]  # someone turned reviews off
    plan = plan_repository(
        DEFAULT_POLICY,
        state({**COMPLIANT_SETTINGS, "has_wiki": True}, protections={"master": read}),
    )
    assert [(c.policy, c.method) for c in plan.changes] == [
        ("repository", "PATCH"),
        ("branch_protection", "PUT"),
    ]
    assert plan.changes[1].after["required_pull_request_reviews"] == {
        "required_approving_review_count": 1
    }


def test_protection_null_deletes_the_branchs_own_rule_once_it_knows_which_rule_it_is() -> None:
    policy = parse_policy("branches:\n  - {name: default, protection: null}\n")
    # REST cannot tell a branch's own rule from a wildcard rule that covers it: ask first.
    assert plan_repository(policy, state()).needs_read == ("branch_protection_rule.master",)
    [change] = plan_repository(policy, state(rule_patterns={"master": "master"})).changes
    assert (change.field, change.method, change.after) == ("master", "DELETE", None)
    assert plan_repository(policy, state(protections={"master": None})).compliant


def test_protection_null_never_removes_a_rule_other_branches_share() -> None:
    policy = parse_policy("branches:\n  - {name: default, protection: null}\n")
    plan = plan_repository(policy, state(rule_patterns={"master": "mast*"}))
    assert plan.changes == () and not plan.compliant
    assert [(h.field, h.reason) for h in plan.held] == [
        ("master", "protected by the rule mast*, which other branches share: Moko does not remove it")]


def test_graphql_state_that_cannot_be_judged_asks_for_a_rest_read() -> None:
    rule = normalize_graphql_rule(
        {
            "pattern": "master",
            "isAdminEnforced": False,
            "requiresStatusChecks": False,
            "requiresStrictStatusChecks": False,
            "requiredStatusCheckContexts": [],
            "requiresApprovingReviews": False,
            "requiredApprovingReviewCount": None,
            "dismissesStaleReviews": False,
            "requiresCodeOwnerReviews": False,
            "requireLastPushApproval": False,
            "restrictsPushes": True,
            "requiresLinearHistory": False,
            "allowsForcePushes": False,
            "allowsDeletions": False,
            "requiresConversationResolution": False,
            "lockBranch": False,
            "blocksCreations": False,
        }
    )
    plan = plan_repository(DEFAULT_POLICY, state(protections={"master": rule}))
    assert plan.changes == () and plan.to_read(BRANCH_PROTECTION) == ("master",)


def test_registry_lists_each_policy_kind_once_settings_first() -> None:
    assert [kind.name for kind in POLICY_KINDS] == ["repository", "branch_protection", "rulesets", "branch_cleanup"]


# --- which branches ---


def test_branches_to_check_resolves_default_and_prefers_an_exact_rule() -> None:
    policy = parse_policy(
        "branches:\n  - {name: release, protection: {}}\n  - {name: default, protection: {}}\n"
        "  - {name: main, protection: null}\n"
    )
    assert branches_to_check(policy, "trunk") == ["trunk", "release", "main"]
    assert branches_to_check(policy, "main") == ["release", "main"]
    assert branches_to_check(policy, None) == ["release", "main"]
    assert branches_to_check(DEFAULT_POLICY, "master") == ["master"]


# --- repository settings ---


def test_one_change_per_differing_field_values_exact() -> None:
    changes = plan_repository_settings(
        {"has_wiki": True, "allow_auto_merge": False},
        {"has_wiki": False, "allow_auto_merge": False},
    )
    assert changes == [Change("repository", "has_wiki", True, False, "PATCH")]
    assert inverse_of(changes[0]) == Change("repository", "has_wiki", False, True, "PATCH")


def test_missing_fields_are_reported_separately() -> None:
    desired = {"has_wiki": False, "delete_branch_on_merge": True}
    assert missing_fields(CREATED, desired) == {"delete_branch_on_merge"}
    assert [c.field for c in plan_repository_settings(CREATED, desired)] == ["has_wiki"]


def test_private_and_visibility_are_derived_from_each_other() -> None:
    assert [
        c.before for c in plan_repository_settings({"private": False}, {"visibility": "private"})
    ] == ["public"]
    assert missing_fields({"private": True}, {"visibility": "private"}) == {
        "visibility"
    }  # or internal?
    assert plan_repository_settings({"visibility": "internal"}, {"private": True}) == []


def test_empty_text_equals_null() -> None:
    assert (
        plan_repository_settings(
            {"description": None, "homepage": ""}, {"description": "", "homepage": None}
        )
        == []
    )


def test_security_and_analysis_compares_only_the_named_features() -> None:
    current = {
        "security_and_analysis": {
            "secret_scanning": {"status": "enabled"},
            "secret_scanning_push_protection": {"status": "disabled"},
            "dependabot_security_updates": {"status": "enabled"},
        }
    }
    assert (
        plan_repository_settings(
            current, {"security_and_analysis": {"secret_scanning": {"status": "enabled"}}}
        )
        == []
    )
    want = {"security_and_analysis": {"secret_scanning_push_protection": {"status": "enabled"}}}
    [change] = plan_repository_settings(current, want)
    assert change.before == {"secret_scanning_push_protection": {"status": "disabled"}}
    assert patch_body([change]) == want


def test_patch_body_sends_a_message_with_its_title() -> None:
    desired = {"squash_merge_commit_title": "PR_TITLE", "squash_merge_commit_message": "PR_BODY"}
    current = {"squash_merge_commit_title": "PR_TITLE", "squash_merge_commit_message": "BLANK"}
    changes = plan_repository_settings(current, desired)
    assert patch_body(changes, desired) == desired


def test_graphql_repository_fields_map_to_rest_names() -> None:
    node = {
        "nameWithOwner": "octo-org/api",
        "hasWikiEnabled": True,
        "hasIssuesEnabled": False,
        "hasProjectsEnabled": False,
        "deleteBranchOnMerge": True,
        "visibility": "PRIVATE",
        "isPrivate": True,
        "isArchived": False,
        "squashMergeCommitTitle": "PR_TITLE",
        "defaultBranchRef": {"name": "main"},
        "homepageUrl": None,
    }
    assert rest_settings_from_graphql(node) == {
        "full_name": "octo-org/api",
        "has_wiki": True,
        "has_issues": False,
        "has_projects": False,
        "delete_branch_on_merge": True,
        "visibility": "private",
        "private": True,
        "archived": False,
        "squash_merge_commit_title": "PR_TITLE",
        "default_branch": "main",
        "homepage": None,
    }
    plan = plan_repository(
        DEFAULT_POLICY,
        state(rest_settings_from_graphql(node), protections={"main": DEFAULT_PROTECTION_READ}),
    )
    assert [(c.field, c.after) for c in plan.changes] == [("has_issues", True), ("has_wiki", False)]


def test_graphql_repository_fields_are_valid_against_githubs_schema() -> None:
    schema_file = Path(__file__).parent / "fixtures" / "github-schema.graphql"
    schema = graphql.build_schema(schema_file.read_text(), assume_valid_sdl=True)
    schema._validation_errors = []  # GitHub's schema breaks a few SDL rules; only the query is checked
    query = (
        'query { repository(owner: "o", name: "r") { ' + " ".join(GRAPHQL_FIELDS.values()) + " } }"
    )
    assert graphql.validate(schema, graphql.parse(query)) == []


# --- scope ---


def test_scope_globs_match_the_name_case_insensitively() -> None:
    policy = parse_policy('scope: {include: ["API-*"], exclude: ["*-old"]}\n')
    assert in_scope(policy, "api-gateway", archived=False)
    assert in_scope(policy, "octo-org/api-gateway", archived=False)
    assert not in_scope(policy, "api-gateway-old", archived=False)
    assert not in_scope(policy, "web", archived=False)
    assert not in_scope(policy, "api-gateway", archived=True)
    assert skip_reason(DEFAULT_POLICY, "anything", archived=False) is None


def test_plan_is_json_ready_for_the_sweep_report() -> None:
    plan = plan_repository(DEFAULT_POLICY, state(CREATED, protections={"master": None}))
    document = json.loads(json.dumps(plan.to_dict()))
    assert document["repo"] == "Octocoders/Hello-World"
    assert document["changes"][0] == {
        "policy": "repository",
        "field": "has_issues",
        "before": False,
        "after": True,
    }
    assert document["changes"][-1]["after"] == DEFAULT_PROTECTION
