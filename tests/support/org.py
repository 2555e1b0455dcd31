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
