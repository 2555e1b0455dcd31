"""The policy preview's check run output: its title, summary, table of planned changes and
annotations, from a PolicyPreview or an invalid file's problems. Pure; every value Moko did
not write itself is escaped, and every part kept within GitHub's limits (summary and text at
most 65,535 characters, annotations sent at most 50 a request)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bot.redact import REDACTOR
from handlers import command_text
from handlers.command_markdown import escape, escape_settings, plain, table
from handlers.command_report import describe_change
from policies.loader import PolicyProblem
from policies.model import Change, Held
from policies.preview import PolicyPreview, RepoPreview
from policies.source import POLICY_PATH

CHECK_NAME = "Moko policy preview"
SUCCESS, NEUTRAL, FAILURE = "success", "neutral", "failure"
TABLE_ROWS = 100  # planned changes listed in the check run's text
ANNOTATIONS_PER_REQUEST = 50  # GitHub's limit per create or update request
MAX_ANNOTATIONS = 250  # more would cost more requests than they are worth: the summary says so
OUTPUT_LIMIT = 65_535  # GitHub's limit on output.summary and output.text
OUTPUT_BUDGET = 60_000  # room left for the words around a table
CELL_LIMIT = 200
UNDECIDED_SHOWN = 20

TITLE_INVALID = "The policy file is invalid ({count} {errors})"
SUMMARY_INVALID = (
    "`{path}` at {sha} is invalid: merged as it is, Moko would refuse it and change nothing "
    "until it is fixed.\n\n{problems}"
)
ANNOTATIONS_LEFT_OUT = "\n\n_Only the first {shown} errors are marked on the file._"
PROBLEM_LINE = "- line {line}: {message}"
TITLE_NOTHING = "No repository would change"
TITLE_CHANGES = "{count} of {total} repositories would change"
TITLE_UNDECIDED = "Moko cannot tell what {count} repositories would become"
SUMMARY_NOTHING = (
    "Enforcing `{path}` at {sha} would change nothing: the {total} repositories in its scope "
    "already comply."
)
SUMMARY_CHANGES = (
    "Enforcing `{path}` at {sha} would change **{count}** of the {total} repositories in its "
    "scope ({changes} changes). Nothing is changed before the pull request is merged."
)
SUMMARY_NO_CHANGES_UNDECIDED = (
    "Enforcing `{path}` at {sha} would change none of the {total} repositories in its scope "
    "that Moko could read."
)
OUT_OF_SCOPE = "{count} more repositories are out of its scope."
FIELDS_TITLE = "**Changes per field**"
FIELDS_HEADERS = ("field", "repositories")
UNDECIDED_TITLE = "**What Moko cannot tell** ({count} repositories)"
UNDECIDED_LINE = "- {repo}: {why}"
UNDECIDED_MORE = "- … and {count} more"
MODE_NOTES = {
    "dry-run": "The file sets `mode: dry-run`: once merged, Moko only records what it would change.",
    "report": "The file sets `mode: report`: once merged, Moko changes nothing, records what it would "
    "change and reports it as `notify` says.",
}
TEXT_TITLE = "### Planned changes ({shown} of {total})"
TEXT_HEADERS = ("repository", "change")
HELD = "not done, for a person to decide: {field}: {reason}"


@dataclass(frozen=True)
class CheckOutput:
    """A check run's conclusion and output; ``annotations`` beyond the first request's 50 are
    sent with updates of the check run."""

    conclusion: str
    title: str
    summary: str
    text: str | None = None
    annotations: tuple[dict[str, Any], ...] = ()

    def output(self, annotations: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
        """The ``output`` object of a create or update request."""
        out: dict[str, Any] = {"title": self.title, "summary": _fit(self.summary)}
        if self.text:
            out["text"] = _fit(self.text)
        if annotations:
            out["annotations"] = list(annotations)
        return out

    def annotation_batches(self) -> list[tuple[dict[str, Any], ...]]:
        """The annotations, 50 a request (the first batch goes with the create request)."""
        step = ANNOTATIONS_PER_REQUEST
        return [self.annotations[i : i + step] for i in range(0, len(self.annotations), step)]


def _fit(value: str) -> str:
    """Secrets out, and within GitHub's limit."""
    value = REDACTOR.text(value)
    return value if len(value) <= OUTPUT_LIMIT else value[: OUTPUT_LIMIT - 1] + "…"


def _short(sha: str) -> str:
    return f"`{escape(sha[:7], None)}`"


def invalid_output(problems: Sequence[PolicyProblem], head_sha: str) -> CheckOutput:
    """``failure``: each problem with its line, in the summary and as an annotation."""
    lines = [PROBLEM_LINE.format(line=p.line, message=escape(p.message, 500)) for p in problems]
    shown: list[str] = []
    used = 0
    for index, line in enumerate(lines):
        if used + len(line) > OUTPUT_BUDGET:
            shown.append(command_text.ROWS_LEFT_OUT.format(count=len(lines) - index))
            break
        shown.append(line)
        used += len(line) + 1
    summary = SUMMARY_INVALID.format(path=POLICY_PATH, sha=_short(head_sha), problems="\n".join(shown))
    annotations = tuple(
        {
            "path": POLICY_PATH,
            "start_line": max(p.line, 1),
            "end_line": max(p.line, 1),
            "annotation_level": "failure",
            "title": "Invalid policy file",
            "message": REDACTOR.text(plain(p.message, 4_000)),
        }
        for p in problems[:MAX_ANNOTATIONS]
    )
    if len(problems) > MAX_ANNOTATIONS:
        summary += ANNOTATIONS_LEFT_OUT.format(shown=MAX_ANNOTATIONS)
    count = len(problems)
    title = TITLE_INVALID.format(count=count, errors="error" if count == 1 else "errors")
    return CheckOutput(FAILURE, title, summary, annotations=annotations)


def _change_cell(repo: RepoPreview, change: Change) -> str:
    if change in (repo.plan.deferred if repo.plan else ()):
        return command_text.CHANGE_DEFERRED.format(
            branch=escape(change.target or change.field), after=escape_settings(change.after, CELL_LIMIT)
        )
    return describe_change(change, repo.policy, repo.default_branch)


def _held_cell(held: Held) -> str:
    return HELD.format(field=escape(f"{held.policy}.{held.field}"), reason=escape(held.reason, CELL_LIMIT))


def _undecided_why(repo: RepoPreview) -> str:
    if repo.error:
        return escape(repo.error, CELL_LIMIT)
    return escape("; ".join(f"{key} is unknown: {why}" for key, why in repo.unknown), CELL_LIMIT)


def preview_output(preview: PolicyPreview, head_sha: str) -> CheckOutput:
    """``success`` when the proposed policy changes nothing, ``neutral`` when it would change
    something (or Moko cannot tell), with the changes per field and the first 100 changes."""
    in_scope = preview.in_scope
    affected = preview.affected
    undecided = preview.undecided
    rows = [
        (escape(repo.repo), _change_cell(repo, change))
        for repo in affected
        for change in repo.changes
    ] + [(escape(repo.repo), _held_cell(held)) for repo in affected for held in repo.held]
    rows.sort(key=lambda row: row[0].lower())
    sha = _short(head_sha)
    parts: list[str] = []
    if affected:
        title = TITLE_CHANGES.format(count=len(affected), total=len(in_scope))
        parts.append(SUMMARY_CHANGES.format(
            path=POLICY_PATH, sha=sha, count=len(affected), total=len(in_scope), changes=len(rows)))
    elif undecided:
        title = TITLE_UNDECIDED.format(count=len(undecided))
        parts.append(SUMMARY_NO_CHANGES_UNDECIDED.format(path=POLICY_PATH, sha=sha, total=len(in_scope)))
    else:
        title = TITLE_NOTHING
        parts.append(SUMMARY_NOTHING.format(path=POLICY_PATH, sha=sha, total=len(in_scope)))
    skipped = len(preview.repositories) - len(in_scope)
    if skipped:
        parts[-1] += " " + OUT_OF_SCOPE.format(count=skipped)
    if preview.policy.mode in MODE_NOTES:
        parts.append(MODE_NOTES[preview.policy.mode])
    per_field = preview.changes_per_field()
    if per_field:
        field_rows = [(escape(name), str(count)) for name, count in per_field.items()]
        parts.append(FIELDS_TITLE + "\n\n" + table(FIELDS_HEADERS, field_rows, budget=OUTPUT_BUDGET // 3))
    if undecided:
        lines = [UNDECIDED_LINE.format(repo=escape(r.repo), why=_undecided_why(r)) for r in undecided[:UNDECIDED_SHOWN]]
        if len(undecided) > UNDECIDED_SHOWN:
            lines.append(UNDECIDED_MORE.format(count=len(undecided) - UNDECIDED_SHOWN))
        parts.append(UNDECIDED_TITLE.format(count=len(undecided)) + "\n\n" + "\n".join(lines))
    text = None
    if rows:
        listed = rows[:TABLE_ROWS]
        text = (
            TEXT_TITLE.format(shown=len(listed), total=len(rows))
            + "\n\n"
            + table(TEXT_HEADERS, listed, budget=OUTPUT_BUDGET)
        )
    conclusion = SUCCESS if preview.changes_nothing else NEUTRAL
    return CheckOutput(conclusion, title, "\n\n".join(parts), text)
