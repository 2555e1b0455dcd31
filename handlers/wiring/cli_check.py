"""`moko check-config FILE`: validate a policy file, one `FILE:LINE: message` line per error;
for a valid file, one warning line per field the App's own permissions (app.yml) cannot read
or write, which Moko would report as unknown or fail to fix."""

from __future__ import annotations

import sys
from pathlib import Path

from bot.exit_codes import EXIT_OK, EXIT_USAGE
from policies.loader import MAX_FILE_BYTES, parse_policy_with_lines, validate_policy_text
from policies.model import BRANCH_PROTECTION
from policies.permissions import APP_PERMISSIONS, NOTIFY_CONSEQUENCE, PermissionGap, permission_gaps


def permission_warnings(text: str, source: str) -> list[str]:
    """`FILE:LINE: warning: …` for each policy field app.yml's permissions leave out of reach."""
    policy, lines = parse_policy_with_lines(text, source=source)
    rule_index = {rule.name: index for index, rule in enumerate(policy.branches)}

    def line_of(gap: PermissionGap) -> int:
        section, _, name = gap.key.partition(".")
        if section == BRANCH_PROTECTION:
            return lines.get(("branches", rule_index.get(name, 0)), lines.get(("branches",), 1))
        if section != "repository":  # notify, rulesets, branch_cleanup: the section's line
            return lines.get((section,), 1)
        return lines.get(("repository", name), lines.get(("repository",), 1))

    consequence = {"read": "Moko will report it unknown", "write": "Moko cannot fix it"}
    return [
        f"{source}:{line_of(gap)}: warning: {gap}, which app.yml does not grant; "
        f"{_CONSEQUENCES.get(gap.key, consequence[gap.action])}"
        for gap in permission_gaps(policy, APP_PERMISSIONS)
    ]


# What a missing permission costs, where "Moko cannot fix it" would not say it.
_CONSEQUENCES = {
    "notify": NOTIFY_CONSEQUENCE,
    "branch_cleanup.branches": "GitHub refuses each deletion, and the sweep reports the repository failed",
}


def run_check_config(path: str) -> int:
    try:
        with Path(path).open("rb") as file:
            # One byte past the limit is enough to tell the file is too large.
            data = file.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        print(f"{path}:0: cannot read the file: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    problems = validate_policy_text(data, source=path)
    for problem in problems:
        print(str(problem))
    if problems:
        return EXIT_USAGE
    print(f"{path}: valid")
    for warning in permission_warnings(data.decode("utf-8"), path):
        print(warning)
    return EXIT_OK
