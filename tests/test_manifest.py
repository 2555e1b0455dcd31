"""app.yml (the App's manifest, which the setup page registers) and the code agree: every event a
handler listens to is subscribed, every subscribed event has a handler, and every permission the
manifest asks for is used by a request Moko's code makes."""

from __future__ import annotations

from pathlib import Path

from bot.setup_mode import load_manifest
from handlers import build_router

ROOT = Path(__file__).resolve().parents[1]
# GitHub sends these to every App, subscribed or not.
ALWAYS_SENT = {"installation", "installation_repositories", "ping"}
# Why each permission is asked for: requests Moko's code makes that need it (GitHub's
# "Permissions required for GitHub Apps"). A permission with no entry, or whose requests are
# gone from the code, is one the manifest should not ask for.
NEEDED_BY = {
    "administration": ["/repos/{owner}/{repo}/branches/{branch}/protection", "/repos/{owner}/{repo}",
                       "/repos/{owner}/{repo}/rulesets"],
    "contents": ["/repos/{owner}/{repo}/contents/{path}"],
    "issues": ["/repos/{owner}/{repo}/issues/{issue_number}/comments",
               "/repos/{owner}/{repo}/issues/comments/{comment_id}/reactions"],
    "checks": ["/repos/{owner}/{repo}/check-runs"],  # the policy preview
    # /moko in pull requests; the files of a pull request in .github (the policy preview)
    "pull_requests": ["/repos/{owner}/{repo}/issues/{issue_number}/comments",
                      "/repos/{owner}/{repo}/pulls/{pull_number}/files"],
    "metadata": ["/repos/{owner}/{repo}/collaborators/{username}/permission"],
}


def handled_events() -> set[str]:
    router = build_router()
    return set(router._shallow_routes) | set(router._deep_routes)


def moko_source() -> str:
    return "\n".join(path.read_text() for folder in ("bot", "handlers", "policies")
                     for path in sorted((ROOT / folder).rglob("*.py")))


def test_every_handled_event_is_subscribed_and_every_subscription_is_handled():
    subscribed = set(load_manifest()["default_events"])
    handled = handled_events()
    assert handled - ALWAYS_SENT <= subscribed, f"handled but not subscribed: {handled - ALWAYS_SENT - subscribed}"
    assert subscribed <= handled, f"subscribed but no handler: {subscribed - handled}"


def test_every_permission_asked_for_is_used_by_the_code():
    asked = load_manifest()["default_permissions"]
    unexplained = set(asked) - set(NEEDED_BY)
    assert not unexplained, f"the manifest asks for permissions no code uses: {sorted(unexplained)}"
    source = moko_source()
    for permission, requests in NEEDED_BY.items():
        if permission not in asked:
            continue
        used = [r for r in requests if f'"{r}"' in source]
        assert used, f"{permission}: none of its requests is made any more: {requests}"
