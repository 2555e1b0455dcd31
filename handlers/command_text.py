"""What Moko says in answer to `/moko` commands: every user-facing text, in one place.

Templates take only values already escaped by ``handlers.command_markdown`` (or Moko's own
words); ``MARKER`` starts every answer so Moko's comments can be found again, followed by
the delivery's own marker (``delivery_marker``) so the answer to one delivery can be found.
"""

from __future__ import annotations

import re

from bot.outcomes import Outcome

MARKER = "<!-- moko:command -->"

# The limits the texts state, and the only place they are set: the parser and the rate limit
# read them from here.
RATE_LIMIT = 5  # commands per person per repository per minute
AUDIT_DEFAULT, AUDIT_MIN, AUDIT_MAX = 10, 1, 50  # records `/moko audit [N]` shows


def delivery_marker(delivery_id: str) -> str:
    """The start of the hidden mark of the answer to one delivery (only the id's safe
    characters), which the answer's outcome follows (``answer_marker``)."""
    return f"<!-- moko:delivery {re.sub(r'[^A-Za-z0-9._-]', '', delivery_id)[:100]} "


def answer_marker(delivery_id: str, outcome: Outcome) -> str:
    """The hidden mark of one delivery's answer, with the outcome its audit record holds: a
    later try of the delivery that finds the answer posted can record the command."""
    return f"{delivery_marker(delivery_id)}{outcome.value} -->"


def answered_outcome(body: str, delivery_id: str) -> Outcome | None:
    """The outcome an answer's hidden mark holds; None when it holds none."""
    found = re.search(re.escape(delivery_marker(delivery_id)) + r"([a-z-]+) -->", body)
    try:
        return Outcome(found[1]) if found else None
    except ValueError:
        return None

HELP = f"""\
**Moko commands.** Write one on its own line of an issue or pull-request comment:

| command | what Moko does | who may use it |
|---|---|---|
| `/moko help` | shows this help | anyone who can comment |
| `/moko status` | says whether this repository complies with the policy; to triage or higher, which fields differ | anyone who can comment |
| `/moko plan` | lists the changes `/moko apply` would make | triage or higher |
| `/moko apply` | brings this repository in line with the policy now | the policy's `commands.apply_permission` role (default: maintain) or higher |
| `/moko audit [N]` | shows the last N audit records of this repository (N from {AUDIT_MIN} to {AUDIT_MAX}, default {AUDIT_DEFAULT}) | triage or higher |

Each person may send {RATE_LIMIT} commands per repository per minute."""

# Why a command could not be run; {given} is the commenter's text, escaped.
PROBLEM = "Moko could not run that command: {problem}"
PROBLEMS = {
    "unknown": "there is no command “{given}”.",
    "arguments": "`{command}` takes no arguments, but was given “{given}”.",
    "count": f"`audit` takes one number from {AUDIT_MIN} to {AUDIT_MAX}, not “{{given}}”.",
}
# The same, when what was given held a secret: it is not echoed at all (an echoed
# "[REDACTED]" would confirm a guess).
PROBLEMS_UNSHOWN = {
    "unknown": "there is no such command.",
    "arguments": "`{command}` takes no arguments.",
    "count": f"`audit` takes one number from {AUDIT_MIN} to {AUDIT_MAX}.",
}

DRY_RUN_NOTE = "_Moko runs in dry-run: it changes nothing and only records what it would do._"

THROTTLED = (
    f"You have sent more than {RATE_LIMIT} Moko commands in this repository within a minute, "
    "so Moko does not answer your next ones here until a minute has passed."
)

DENIED = (
    "Sorry, `/moko {command}` needs the **{needed}** role or higher on this repository, "
    "and you have **{role}**."
)
NOTHING_CHANGED = "Nothing was changed."
# After DENIED, for a custom repository role: its base role, or why Moko went by another.
CUSTOM_ROLE = "**{name}** is a custom role based on **{role}**."
CUSTOM_ROLE_FALLBACK = (
    "**{name}** is a custom role, and Moko may not read the organization's custom roles to "
    "learn its base role, so it fell back on GitHub's legacy permission **{role}** "
    "(where maintain counts as write and triage as read)."
)

INVALID_POLICY = (
    "The policy file is invalid, so Moko changes nothing until it is fixed:\n\n{problems}"
)

SKIPPED = "Moko leaves {repo} alone: {reason}."

FAILED = "Moko could not finish: {error}"

STATUS_TITLE = "**Status of {repo}**"
STATUS_COMPLIANT = "✅ It complies with the policy."
STATUS_DRIFT = (
    "❌ {count} of {total} items differ from the policy; "
    "`/moko plan` lists what `/moko apply` would change."
)
STATUS_UNKNOWN = (
    "❔ Moko cannot tell whether {count} of {total} items comply with the policy; "
    "the table says why."
)
STATUS_NOT_COMPLIANT = (
    "❌ It differs from the policy. People with the triage role or higher see which fields differ."
)
STATUS_UNKNOWN_SUMMARY = (
    "❔ Moko cannot tell whether it complies with the policy. People with the triage role or "
    "higher see why."
)
STATUS_HEADERS = ("policy", "field", "wanted", "actual", "compliant")
STATUS_STRETCHED = (
    "⏱ Moko checks this organization's repositories every {interval}, not every {configured}: "
    "more often would use more than its share (`MOKO_SWEEP_BUDGET`) of the installation's "
    "GitHub rate limit."
)

PLAN_TITLE = "**What `/moko apply` would change in {repo}**"
# /moko plan on a pull request that changes the policy file: its preview ran again.
PREVIEW_RERUN = (
    "Moko ran the policy preview again on {sha}, this pull request's head: **{conclusion}**, "
    "{title}. The check run `Moko policy preview` holds the details."
)
PLAN_NOTHING = "Nothing: it complies with the policy."

APPLY_TITLE = "**What Moko did in {repo}**"
APPLY_NOTHING = "Nothing to do: it complies with the policy."
APPLY_DRY_RUN = "Nothing was changed; the changes above were recorded as dry-run."

AUDIT_TITLE = "**The last {count} audit records of {repo}**, newest first"
AUDIT_NOTHING = "No audit records yet for {repo}."
AUDIT_HEADERS = ("time", "actor", "trigger", "policy", "field", "before", "after", "outcome", "error")

ROWS_LEFT_OUT = "_{count} more rows left out: the comment would be too long._"

# The status table's verdicts (its other cells are each policy kind's words: policies/words.py).
YES, NO, UNKNOWN = "yes", "no", "unknown"

# After the status table: the rules rulesets put on branches without classic protection.
RULESETS_TITLE = (
    "**Rules from rulesets.** GitHub enforces these besides classic branch protection, "
    "which is what Moko manages:"
)
RULESETS_HEADERS = ("branch", "rule", "ruleset", "defined in")
RULESET_ID = "ruleset {id}"
RULESETS_UNREADABLE = "Moko may not read the rules of rulesets on {branches}."
NO_DEFAULT_BRANCH = "default branch (none yet)"

# Plan and apply answers: a change is a line its policy kind words; these are the others.
CHANGE_DEFERRED = "protect branch {branch} once it is first pushed: {after}"
CHANGE_HELD = "not done, for a person to decide: branch {branch} is {reason}"
CHANGE_UNKNOWN = "cannot tell {key}, so cannot say what it would change there: {why}"
OUTCOMES = {
    Outcome.APPLIED: "done",
    Outcome.DRY_RUN: "dry-run, not changed",
    Outcome.FAILED: "failed: {error}",
    Outcome.ROLLED_BACK: "undone, because a later change failed",
    Outcome.DEFERRED: "waits for the branch's first push",
}
