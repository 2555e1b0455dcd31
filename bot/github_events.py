"""GitHub's webhook events: their names, and what each event's payload always carries.

Derived from GitHub's REST description (x-webhooks of @octokit/openapi 23.0.2; the event is
x-github.subcategory with "-" as "_"); tests/fixtures/webhook-event-shapes.json holds the
same table as extracted, and a test keeps the two in step. The signature covers the body
only, so X-GitHub-Event can be replayed with any captured body: these tell whether a body
fits the event it is sent as.
"""

from __future__ import annotations

from collections.abc import Mapping

# Every event whose every payload has `action` (all but these), and the events without one.
EVENTS_WITHOUT_ACTION = frozenset(
    """create delete fork gollum page_build ping public push repository_import
    security_and_analysis status team_add workflow_dispatch""".split()
)
EVENTS_WITH_ACTION = frozenset(
    """branch_protection_configuration branch_protection_rule check_run check_suite
    code_scanning_alert commit_comment custom_property custom_property_values dependabot_alert
    deploy_key deployment deployment_protection_rule deployment_review deployment_status
    discussion discussion_comment github_app_authorization installation
    installation_repositories installation_target issue_comment issue_dependencies issues
    label marketplace_purchase member membership merge_group meta milestone org_block
    organization package personal_access_token_request project project_card project_column
    projects_v2 projects_v2_item projects_v2_status_update pull_request pull_request_review
    pull_request_review_comment pull_request_review_thread registry_package release
    repository repository_advisory repository_dispatch repository_ruleset
    repository_vulnerability_alert secret_scanning_alert secret_scanning_alert_location
    secret_scanning_scan security_advisory sponsorship star sub_issues team watch
    workflow_job workflow_run""".split()
)
# The event names GitHub sends in X-GitHub-Event. Only these become metric labels: anyone
# can send any header, and every new label value costs memory for good.
GITHUB_EVENTS = EVENTS_WITH_ACTION | EVENTS_WITHOUT_ACTION

# Events whose every payload carries the repository it happened in.
EVENTS_WITH_REPOSITORY = frozenset(
    """branch_protection_configuration branch_protection_rule check_run check_suite
    code_scanning_alert commit_comment create custom_property_values delete dependabot_alert
    deploy_key deployment deployment_review deployment_status discussion discussion_comment
    fork gollum issue_comment issue_dependencies issues label member milestone page_build
    public pull_request pull_request_review pull_request_review_comment
    pull_request_review_thread push release repository repository_advisory
    repository_dispatch repository_import repository_vulnerability_alert
    secret_scanning_alert secret_scanning_alert_location security_and_analysis star status
    sub_issues team_add watch workflow_dispatch workflow_job workflow_run""".split()
)


def event_label(name: str) -> str:
    """An X-GitHub-Event value as a metric label: GitHub's own names, anything else `unknown`."""
    return name if name in GITHUB_EVENTS else "unknown"


def payload_misfit(event: str, data: Mapping[str, object]) -> str | None:
    """Why a payload cannot be the event it is sent as (None: it may be).

    Only what every payload of the event carries is checked: GitHub adds actions and fields
    over time, and an event Moko does not know is not refused.
    """
    if event in EVENTS_WITH_ACTION and not isinstance(data.get("action"), str):
        return f"every {event} payload has an action"
    if event in EVENTS_WITH_REPOSITORY and not isinstance(data.get("repository"), dict):
        return f"every {event} payload has a repository"
    return None
