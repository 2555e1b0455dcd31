"""The organization most tests set up on the fake GitHub: its name, and what the default policy wants."""

from __future__ import annotations

ORG = "acme"
INSTALLATION = 1
# The built-in default policy's protection body and repository settings (SPEC.md).
DEFAULT_PROTECTION = {
    "required_status_checks": None,
    "enforce_admins": False,
    "required_pull_request_reviews": {"required_approving_review_count": 1},
    "restrictions": None,
}
COMPLIANT = {"has_issues": True, "has_wiki": False, "has_projects": False}


def repo_calls(fake, name: str) -> list[tuple[str, str]]:
    """(method, path) of every call the fake GitHub saw about one repository of ORG, in order."""
    prefix = f"/repos/{ORG}/{name}"
    return [(c.method, c.path) for c in fake.calls if c.path == prefix or c.path.startswith(prefix + "/")]
