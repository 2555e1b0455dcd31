"""issue_comment.created: `/moko` commands in issue and pull-request comments.

Each command: ignored unless a person wrote it (bots, Moko included, are ignored, and so are
edits and bodies over 64 KiB); counted against the commenter's rate limit; 👀 on the comment;
run (see ``command_run``); answered with one comment; 🚀 when done, 😕 when not; and recorded.

The audit trail: every command run or refused is one transaction whose run id is
``cmd-<delivery id>``, trigger ``command:<name>`` and actor the commenter. It holds one
record with policy ``command`` and field the command's name (``unknown`` for an unknown
one): outcome ``applied`` when the command was carried out (for ``status``, ``plan``,
``help`` and ``audit`` that means answered: they change nothing), ``dry-run`` for an
``apply`` in dry-run, ``denied`` when the commenter's role is too low or the rate limit was
reached, ``failed`` otherwise, with the reason in ``error``. An ``apply`` also writes the
engine's records of each change under the same run id, before the command's record. The
answer's hidden mark holds the record's outcome: a try taken again after its process died,
which finds the answer posted and no record, writes it from there (the reason of a refusal
or failure is then the answer's).
Commands silenced by the rate limit (after its one notice) are only logged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from gidgethub import GitHubException
from gidgethub.routing import Router
from gidgethub.sansio import Event

from bot.context import EventContext
from bot.github_protocol import GitHub
from bot.metrics import COMMANDS
from bot.outcomes import Outcome
from bot.redact import REDACTOR
from bot.store.base import AuditEntry
from handlers import command_text as text
from handlers.command_access import Turn, rate_turn
from handlers.command_parsing import Command, InvalidCommand, parse_command
from handlers.command_run import Answer, Request, failed, run_command
from handlers.common import engine_of
from policies.apply import Run, github_error

router = Router()

COMMAND_POLICY = "command"
EYES, ROCKET, CONFUSED = "eyes", "rocket", "confused"


class CommandFailed(Exception):
    """A command's work or its answer failed: the delivery ends failed."""


@dataclass(frozen=True)
class Thread:
    """Where the command was written: the repository, the issue or pull request, the comment."""

    owner: str
    repo: str
    issue_number: int
    comment_id: int
    comment_url: str
    created_at: str  # the command comment's, by GitHub's clock: its answer comes later

    @property
    def url_vars(self) -> dict[str, str]:
        return {"owner": self.owner, "repo": self.repo}


def written_by_bot(comment: dict[str, Any]) -> bool:
    """Bots' comments (Moko's own included) are never commands; Moko's answers also carry its
    marker, which covers Moko running with a person's token."""
    user = comment.get("user") or {}
    login = str(user.get("login") or "")
    return user.get("type") == "Bot" or login.endswith("[bot]") or text.MARKER in (comment.get("body") or "")


async def react(gh: GitHub, thread: Thread, content: str, bot_login: Callable[[], Awaitable[str]],
                log: Any) -> None:
    """React to the command's comment. A reaction only tells the commenter how far Moko got:
    when GitHub refuses it after the client's retries, the command goes on without it (its
    answer says the same), rather than failing with the work undone."""
    try:
        await _react(gh, thread, content, bot_login)
    except GitHubException as exc:
        log.warning("command_reaction_failed", reaction=content, error=github_error(exc))


async def _react(gh: GitHub, thread: Thread, content: str, bot_login: Callable[[], Awaitable[str]]) -> None:
    url_vars = {**thread.url_vars, "comment_id": str(thread.comment_id)}

    async def already_done() -> Any:
        # A try whose answer was lost may have reacted: Moko's own reaction of this kind.
        login = (await bot_login()).lower()
        async for reaction in gh.getiter(
            "/repos/{owner}/{repo}/issues/comments/{comment_id}/reactions{?content,per_page}",
            url_vars={**url_vars, "content": content, "per_page": "100"},
        ):
            if str((reaction.get("user") or {}).get("login") or "").lower() == login:
                return reaction
        return None

    await gh.post(
        "/repos/{owner}/{repo}/issues/comments/{comment_id}/reactions",
        url_vars=url_vars,
        data={"content": content},
        already_done=already_done,
    )


async def posted_answer(gh: GitHub, thread: Thread, delivery_id: str) -> Any:
    """This delivery's answer among the comments since the command, or None."""
    marker = text.delivery_marker(delivery_id)
    async for comment in gh.getiter(
        "/repos/{owner}/{repo}/issues/{issue_number}/comments{?since,per_page}",
        url_vars={**thread.url_vars, "issue_number": str(thread.issue_number),
                  "since": thread.created_at or None, "per_page": "100"},
    ):
        if marker in str(comment.get("body") or ""):
            return comment
    return None


async def reply(gh: GitHub, thread: Thread, body: str, delivery_id: str, outcome: Outcome) -> None:
    marker = text.answer_marker(delivery_id, outcome)
    url_vars = {**thread.url_vars, "issue_number": str(thread.issue_number)}

    async def already_done() -> Any:
        # A try whose answer was lost may have posted: this delivery's answer, after the command.
        return await posted_answer(gh, thread, delivery_id)

    # Escaping already removed secrets from what was echoed; this also covers Moko's own words.
    await gh.post(
        "/repos/{owner}/{repo}/issues/{issue_number}/comments",
        url_vars=url_vars,
        data={"body": REDACTOR.text(f"{text.MARKER}{marker}\n{body}")},
        already_done=already_done,
    )


async def record(ctx: EventContext, run: Run, full_name: str, command: Command | InvalidCommand,
                 thread: Thread, outcome: Outcome, error: str | None) -> None:
    after: dict[str, Any] = {"comment": thread.comment_url}
    if isinstance(command, Command):
        after["command"] = command.text
    await ctx.services.audit.write([
        AuditEntry(
            time=ctx.services.audit.now(), run_id=run.run_id, trigger=run.trigger,
            installation=run.installation, repo=full_name, actor=run.actor, policy=COMMAND_POLICY,
            field=command.name, before=None, after=after, outcome=outcome, error=error,
        )
    ])


async def record_answered(ctx: EventContext, run: Run, full_name: str, command: Command | InvalidCommand,
                          thread: Thread, answered: dict[str, Any]) -> None:
    """The command's record, when the earlier try that posted its answer stopped before
    writing it: the outcome its answer's mark holds."""
    records = await ctx.services.store.audit_records(repo=full_name, run_id=run.run_id)
    if any(r.policy == COMMAND_POLICY and r.outcome != Outcome.PENDING for r in records):
        return
    outcome = text.answered_outcome(str(answered.get("body") or ""), ctx.delivery_id)
    if outcome is None:  # an answer whose mark holds no outcome: nothing to record it by
        ctx.log.warning("command_answer_without_outcome", comment=answered.get("html_url"))
        return
    error = None
    if outcome not in (Outcome.APPLIED, Outcome.DRY_RUN):
        # The reason is in the answer; the try that knew it in other words is gone.
        error = f"the reason is in the answer an earlier try of this delivery posted: {answered.get('html_url')}"
    await record(ctx, run, full_name, command, thread, outcome, error)


@router.register("issue_comment", action="created")
async def answer_command(event: Event, ctx: EventContext) -> None:
    comment = event.data.get("comment") or {}
    if written_by_bot(comment):
        return
    command = parse_command(str(comment.get("body") or ""))
    if command is None:
        return
    repo = event.data["repository"]
    full_name, user = str(repo["full_name"]), str(comment["user"]["login"])
    owner, name = full_name.split("/", 1)
    thread = Thread(owner, name, int(event.data["issue"]["number"]), int(comment["id"]),
                    str(comment.get("html_url") or ""), str(comment.get("created_at") or ""))
    run = Run(f"cmd-{ctx.delivery_id}", f"command:{command.name}", user, ctx.installation_id,
              retaken=ctx.retaken, observed_at=ctx.received_at)
    log = ctx.log.bind(command=command.name, user=user, repo=full_name)

    if ctx.retaken:
        gh = await ctx.github()
        # The earlier try's answer may be on its way still: looked for too early, it would
        # be posted twice.
        await engine_of(ctx).let_earlier_requests_land()
        answered = await posted_answer(gh, thread, ctx.delivery_id)
        if answered is not None:
            # An earlier try of this delivery answered before its process stopped: once is enough.
            log.info("command_already_answered")
            await record_answered(ctx, run, full_name, command, thread, answered)
            return
        # The first try counted the command against the user's limit: counted at every try,
        # a command whose process died a few times would be throttled.
        turn = Turn.ALLOWED
    else:
        turn = await rate_turn(ctx.services.store, full_name, user, ctx.services.clock)
    if turn is not Turn.ALLOWED:
        COMMANDS.labels(command=command.name, outcome="throttled").inc()
        log.warning("command_throttled", notice=turn is Turn.NOTICE)
        if turn is Turn.NOTICE:
            await reply(await ctx.github(), thread, text.THROTTLED, ctx.delivery_id, Outcome.DENIED)
            await record(ctx, run, full_name, command, thread, Outcome.DENIED, f"rate limit: over {text.RATE_LIMIT} commands a minute")
        return

    gh = await ctx.github()
    bot_login = ctx.services.github.bot_login
    await react(gh, thread, EYES, bot_login, log)
    # A comment on a pull request is an issue comment whose issue says it is a pull request.
    on_pull = bool((event.data.get("issue") or {}).get("pull_request"))
    request = Request(gh, engine_of(ctx), ctx.services.store, run, repo, user, command,
                      sweep_interval=ctx.services.settings.sweep_interval,
                      pull_number=thread.issue_number if on_pull else None)
    try:
        answer = await run_command(request)
    except GitHubException as exc:
        answer = failed(github_error(exc))
    try:
        await reply(gh, thread, answer.body, ctx.delivery_id, answer.outcome)
    except Exception as exc:
        error = f"the answer could not be posted: {github_error(exc)}"
        await record(ctx, run, full_name, command, thread, Outcome.FAILED, error)
        COMMANDS.labels(command=command.name, outcome=Outcome.FAILED).inc()
        raise CommandFailed(error) from exc
    await record(ctx, run, full_name, command, thread, answer.outcome, answer.error)
    await react(gh, thread, ROCKET if answer.done else CONFUSED, bot_login, log)
    COMMANDS.labels(command=command.name, outcome=_metric_outcome(command, answer)).inc()
    log.info("command_answered", outcome=answer.outcome, error=answer.error)
    if answer.broken:
        raise CommandFailed(answer.error or "the command failed")


def _metric_outcome(command: Command | InvalidCommand, answer: Answer) -> str:
    if isinstance(command, InvalidCommand):
        return "invalid"
    return "done" if answer.done else answer.outcome

