"""Whose checkpoints a sweep resumes: a dry run and a `--repo` run keep their own, so neither one,
interrupted or finished, makes the organization's full sweep skip or forget repositories."""

from __future__ import annotations

import asyncio
import io

import pytest

from bot.config import load_settings
from handlers.wiring import cli
from handlers.wiring.cli_sweep import sweep_command
from tests.test_sweep import BulkTime, compliant_repo, github_factory, sweep, trail, writes

ORG = "acme"
COUNT = 150  # two GraphQL pages of repositories; the sweeps are stopped within the first


@pytest.fixture
def org(fake_github):
    fake_github.add_installation(1, ORG)
    for i in range(COUNT):
        compliant_repo(fake_github, f"svc-{i:03d}", has_wiki=True)
    return fake_github


async def interrupted(org, env, *argv: str, after_records: int = 50) -> None:
    """Run `moko sweep` and stop it as abruptly as a kill once the audit trail holds
    `after_records` records: by then those repositories are done, most of them checkpointed.
    The fake GitHub holds the answer to the second page of repositories until then, so that
    the sweep cannot finish first (a dry run, which writes nothing, is that fast)."""
    second_page = asyncio.Event()

    async def hold_second_page(call) -> None:
        if (call.graphql_variables or {}).get("after"):
            await second_page.wait()

    org.on_request(hold_second_page)
    args = cli.build_parser().parse_args(["sweep", "--org", ORG, "--json", *argv])
    task = asyncio.create_task(sweep_command(args, load_settings(env), out=io.StringIO(), err=io.StringIO(),
                                             github_factory=github_factory(BulkTime())))
    try:
        deadline = asyncio.get_running_loop().time() + 60
        while len(await trail(env)) < after_records:
            assert not task.done(), "the sweep ended before it could be interrupted"
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        second_page.set()


async def test_an_interrupted_dry_run_does_not_make_the_real_sweep_skip_anything(org, env):
    await interrupted(org, env, "--dry-run")
    assert writes(org) == []
    assert {r.outcome for r in await trail(env)} == {"dry-run"}

    org.reset_calls()
    code, doc, _ = await sweep(env)
    assert code == 0
    # Every repository is fixed: none counts as done because the dry run looked at it.
    assert (doc["repositories"], doc["fixed"], doc["compliant"]) == (COUNT, COUNT, 0)
    assert len(writes(org)) == COUNT
    assert all(org.repo(ORG, f"svc-{i:03d}")["has_wiki"] is False for i in range(COUNT))


async def test_a_repo_run_neither_ends_nor_resumes_the_unfinished_full_sweep(org, env):
    await interrupted(org, env)
    first = {r.run_id for r in await trail(env)}
    assert len(first) == 1
    [full_sweep_id] = first
    done_by_first_run = {r.repo for r in await trail(env)}

    # A repository the interrupted sweep had not reached, fixed on its own.
    untouched = next(f"svc-{i:03d}" for i in reversed(range(COUNT))
                     if f"{ORG}/svc-{i:03d}" not in done_by_first_run)
    code, doc, _ = await sweep(env, "--repo", untouched)
    assert code == 0 and doc["repositories"] == 1 and doc["fixed"] == 1
    repo_run_ids = {r.run_id for r in await trail(env, repo=f"{ORG}/{untouched}")}
    assert full_sweep_id not in repo_run_ids

    # The full sweep then resumes where it stopped: same sweep id, the done ones not redone.
    org.reset_calls()
    code, doc, _ = await sweep(env)
    assert code == 0 and doc["repositories"] == COUNT and doc["failed"] == 0
    later = [r for r in await trail(env) if r.run_id not in repo_run_ids]
    assert {r.run_id for r in later} == {full_sweep_id}
    assert doc["fixed"] >= len(done_by_first_run)  # counted as the first run found them
    assert all(org.repo(ORG, f"svc-{i:03d}")["has_wiki"] is False for i in range(COUNT))
