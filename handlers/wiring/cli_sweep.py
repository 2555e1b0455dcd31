"""`moko sweep`: reconcile an organization from the command line, with a progress bar on a
terminal and a summary table (or one JSON document) at the end."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import IO, Any

import aiohttp
from gidgethub import BadRequest, GitHubException, GraphQLAuthorizationFailure
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from bot.audit import AuditWriter
from bot.config import Settings
from bot.exit_codes import EXIT_FAILURES, EXIT_OK, EXIT_USAGE
from bot.github_app import GitHubApp
from bot.logs import configure_logging
from bot.outcomes import Outcome
from bot.store import open_store
from handlers.noncompliance import NonComplianceNotice
from handlers.wiring.app import client_options
from policies.apply import github_error
from policies.batch_read import OwnerNotFound, viewer_login
from policies.engine import PolicyEngine
from policies.loader import PolicyError
from policies.sweep import (
    COUNTED,
    SweepObserver,
    SweepReport,
    SweepRequest,
    SweepResult,
    sweep_owner,
)

GitHubFactory = Callable[[Settings, aiohttp.ClientSession], GitHubApp]


class SweepStopped(Exception):
    """The sweep could not start or go on; the message is the one line the operator sees."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def cli_github(settings: Settings, session: aiohttp.ClientSession) -> GitHubApp:
    """The CLI's GitHub: GITHUB_TOKEN when given, otherwise the App."""
    token_mode = bool(settings.token)
    return GitHubApp(
        session=session,
        api_url=settings.api_url,
        graphql_url=settings.graphql_url,
        app_id=None if token_mode else settings.app_id,
        private_key=None if token_mode else settings.private_key,
        token=settings.token if token_mode else None,
        options=client_options(settings),
    )


def repository_names(org: str, repos: list[str]) -> tuple[str, ...]:
    """--repo values: NAME, or ORG/NAME of the organization swept."""
    names = []
    for value in repos:
        owner, _, name = value.rpartition("/")
        if (owner and owner.lower() != org.lower()) or not name:
            raise SweepStopped(f"error: --repo: {value!r} is not a repository of {org} (give NAME or {org}/NAME)", EXIT_USAGE)
        names.append(name)
    return tuple(names)


class ProgressBar(SweepObserver):
    """A rich progress bar: repositories done of the total, how many were fixed and failed so
    far, and the time left."""

    def __init__(self, progress: Progress, org: str) -> None:
        self._progress = progress
        self._org = org
        self._fixed = 0
        self._failed = 0
        self._task = progress.add_task(self._describe(), total=None)

    def _describe(self) -> str:
        failed = f"[red]{self._failed} failed[/red]" if self._failed else "0 failed"
        return f"sweeping {self._org}: {self._fixed} fixed, {failed}"

    def total(self, repositories: int) -> None:
        self._progress.update(self._task, total=repositories)

    def advance(self, result: SweepResult) -> None:
        if result.outcome == Outcome.FAILED:
            self._failed += 1
        elif result.outcome in (Outcome.FIXED, Outcome.PLANNED):
            self._fixed += 1
        self._progress.update(self._task, advance=1, description=self._describe())


def summary_table(report: SweepReport, requests: int) -> Table:
    notes = [note for note, applies in (
        ("resumed: repositories done before count as they were then", report.resumed),
        ("dry run: 'fixed' is what would be fixed", report.dry_run),
    ) if applies]
    # The request count goes in the title, so the columns fit a terminal 80 wide.
    title = f"Sweep of {report.owner}, {requests} requests" + (f" ({'; '.join(notes)})" if notes else "")
    table = Table(title=title)
    counts = report.counts()
    for column in ("repositories", *COUNTED):
        table.add_column(column, justify="right")
    table.add_row(str(len(report.results)), *(str(counts[c]) for c in COUNTED))
    return table


def failures_table(report: SweepReport) -> Table | None:
    failed = [r for r in report.results if r.outcome in (Outcome.FAILED, Outcome.UNKNOWN)]
    if not failed:
        return None
    table = Table(title="Failed repositories, and those whose compliance is unknown")
    table.add_column("repository")
    table.add_column("error", overflow="fold")
    for result in sorted(failed, key=lambda r: r.repo.lower()):
        table.add_row(Text(result.repo), Text(result.first_error or ""))  # GitHub's words, not markup
    return table


async def _acting_as(github: GitHubApp, org: str, token_mode: bool) -> tuple[int, Any, str]:
    """The installation on the organization, its bulk client, and the login changes appear under."""
    try:
        installation = await github.org_installation_id(org)
    except BadRequest as exc:
        if exc.status_code == 404:
            raise SweepStopped(f"the App is not installed on {org!r} (or there is no such organization)", EXIT_USAGE) from None
        raise
    # Bulk work: writes are spaced out, as GitHub asks of integrators touching many repositories.
    gh = await github.installation_client(installation, bulk=True)
    actor = await viewer_login(gh) if token_mode else await github.bot_login()
    return installation, gh, actor


async def sweep_command(
    args: argparse.Namespace,
    settings: Settings,
    *,
    out: IO[str] | None = None,
    err: IO[str] | None = None,
    github_factory: GitHubFactory = cli_github,
) -> int:
    """Run one sweep and report it; returns the exit code."""
    out, err = out or sys.stdout, err or sys.stderr
    err_console = Console(file=err)
    settings.require_api_credentials()
    try:
        request = SweepRequest(args.org, repository_names(args.org, args.repo), args.retry_failed)
    except SweepStopped as stopped:
        err.write(f"moko: {stopped}\n")
        return stopped.exit_code
    token_mode = bool(settings.token)
    store = open_store(settings.database_url, audit_key=settings.audit_key)
    await store.open()
    try:
        async with aiohttp.ClientSession() as session:
            github = github_factory(settings, session)
            sent_before = github.requests_sent
            try:
                report = await _sweep(args, settings, github, store, request, token_mode, err_console)
            except SweepStopped as stopped:
                err.write(f"moko: {stopped}\n")
                return stopped.exit_code
            requests = github.requests_sent - sent_before
    finally:
        await store.close()
    try:
        if args.json:
            out.write(json.dumps(report.to_json(requests), default=str) + "\n")
            out.flush()
        else:
            console = Console(file=out)
            console.print(summary_table(report, requests))
            failures = failures_table(report)
            if failures is not None:
                console.print(failures)
    except BrokenPipeError:  # `moko sweep --json | head`: the sweep is done and recorded anyway
        if out is sys.stdout:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_FAILURES if report.failed or report.unknown else EXIT_OK


def acting(actor: str) -> Callable[[], Awaitable[str]]:
    """Who the sweep acts as, as the notice asks for it."""

    async def login() -> str:
        return actor

    return login


async def _sweep(
    args: argparse.Namespace,
    settings: Settings,
    github: GitHubApp,
    store: Any,
    request: SweepRequest,
    token_mode: bool,
    err_console: Console,
) -> SweepReport:
    try:
        installation, gh, actor = await _acting_as(github, args.org, token_mode)
        # A write another process (a `moko serve` that died) sent may land up to its request
        # timeout later: the sweep waits for it as a replica does before reading again.
        engine = PolicyEngine(store=store, audit=AuditWriter(store), dry_run=args.dry_run or settings.dry_run,
                              permissions=github.installation_permissions, notice=NonComplianceNotice(acting(actor)),
                              in_flight_for=settings.request_timeout)
        installation_id = None if token_mode else installation

        async def sweep(observer: SweepObserver | None = None) -> SweepReport:
            return await sweep_owner(engine, gh, request, store=store, actor=actor,
                                     installation=installation_id, observer=observer)

        if not err_console.is_terminal:
            return await sweep()
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TimeRemainingColumn())
        with Progress(*columns, console=err_console) as progress:
            return await sweep(ProgressBar(progress, args.org))
    except PolicyError as exc:
        raise SweepStopped(f"the policy is invalid, nothing was changed: {exc}", EXIT_FAILURES) from None
    except OwnerNotFound:
        raise SweepStopped(f"no organization {args.org!r} visible to these credentials", EXIT_USAGE) from None
    except GitHubException as exc:
        if isinstance(exc, GraphQLAuthorizationFailure) or getattr(exc, "status_code", None) == 401:
            raise SweepStopped(f"GitHub refused these credentials: {github_error(exc)}", EXIT_USAGE) from None
        raise SweepStopped(
            f"sweep interrupted: {github_error(exc)}; run the same command again to resume", EXIT_FAILURES
        ) from None


def run_sweep(args: argparse.Namespace, settings: Settings) -> int:
    settings.require_api_credentials()
    try:
        repository_names(args.org, args.repo)  # usage errors before anything starts
    except SweepStopped as stopped:
        print(f"moko: {stopped}", file=sys.stderr)
        return stopped.exit_code
    terminal = sys.stderr.isatty()
    # Keep the progress bar readable: on a terminal only warnings and errors are logged.
    level = settings.log_level if not terminal or settings.log_level in ("warning", "error", "critical") else "warning"
    configure_logging(level, settings.log_format)
    return asyncio.run(sweep_command(args, settings))
