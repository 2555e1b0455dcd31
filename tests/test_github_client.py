"""The GitHub client under the conditions GitHub really produces, against the fake GitHub.

Clocks and sleeps are injected: the waits asserted are the real ones, and no test sleeps them.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from gidgethub import BadRequest, GitHubBroken
from structlog.testing import capture_logs

from bot.github_client import ClientOptions, GitHubUnavailable
from bot.metrics import REGISTRY
from tests.support.github_client import INSTALLATION, ORG, make_app

REPO = f"/repos/{ORG}/widgets"


def retries(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line for line in logs if line["event"] == "github_retry"]


def waits(logs: list[dict[str, Any]], reason: str) -> list[dict[str, Any]]:
    return [line for line in logs if line["event"] == "github_wait" and line["reason"] == reason]


def requests_metric(method: str, status: str) -> float:
    value = REGISTRY.get_sample_value(
        "moko_github_requests_total", {"method": method, "status": status}
    )
    return value or 0.0


# -- retries -----------------------------------------------------------------------------


async def test_502_twice_then_200_succeeds_after_two_retries(fake, github, clock):
    client = await github.installation_client(INSTALLATION)
    fake.fail("GET", rf"^{REPO}$", 502, times=2)
    bad_before = requests_metric("GET", "502")

    with capture_logs() as logs:
        repo = await client.getitem(REPO)

    assert repo["name"] == "widgets"
    assert fake.count("GET", rf"^{REPO}$") == 3
    assert client.requests_sent == 3
    # Full jitter with random() at its top: base 0.5 s, then 1 s.
    assert clock.sleeps == [pytest.approx(0.5), pytest.approx(1.0)]
    assert [(r["reason"], r["status"], r["attempt"]) for r in retries(logs)] == [
        ("server_error", 502, 1),
        ("server_error", 502, 2),
    ]
    assert all(r["path"] == REPO and r["method"] == "GET" for r in retries(logs))
    assert requests_metric("GET", "502") - bad_before == 2


async def test_backoff_grows_and_is_capped(fake, session, clock):
    github = make_app(fake, session, clock, max_attempts=5, base_delay=2.0, max_delay=5.0)
    client = await github.installation_client(INSTALLATION)
    fake.fail("GET", rf"^{REPO}$", 503, times=4)

    await client.getitem(REPO)

    assert clock.sleeps == [pytest.approx(2.0), pytest.approx(4.0), pytest.approx(5.0), pytest.approx(5.0)]


async def test_5xx_on_every_attempt_gives_up_with_github_broken(fake, github, clock):
    client = await github.installation_client(INSTALLATION)
    fake.fail("GET", rf"^{REPO}$", 500, times=10)

    with pytest.raises(GitHubBroken):
        await client.getitem(REPO)

    assert fake.count("GET", rf"^{REPO}$") == ClientOptions().max_attempts


async def test_a_reset_connection_is_retried(fake, github, clock):
    client = await github.installation_client(INSTALLATION)
    fake.fail("GET", rf"^{REPO}$", 502, reset_connection=True)

    with capture_logs() as logs:
        repo = await client.getitem(REPO)

    assert repo["name"] == "widgets"
    assert [r["reason"] for r in retries(logs)] == ["connection_error"]
    assert client.requests_sent == 2


async def test_a_request_that_times_out_is_retried(fake, session, clock):
    # The timeout is configuration; the fake really answers too late once.
    github = make_app(fake, session, clock, request_timeout=0.2)
    client = await github.installation_client(INSTALLATION)
    fake.fail("GET", rf"^{REPO}$", 502, delay=2.0)  # never seen: the client gave up waiting

    with capture_logs() as logs:
        repo = await client.getitem(REPO)

    assert repo["name"] == "widgets"
    assert [r["reason"] for r in retries(logs)] == ["timeout"]


async def test_connection_failures_on_every_attempt_raise_github_unavailable(fake, github, clock):
    client = await github.installation_client(INSTALLATION)
    fake.fail("GET", rf"^{REPO}$", 502, reset_connection=True, times=10)

    with pytest.raises(GitHubUnavailable, match=f"GET {REPO}"):
        await client.getitem(REPO)
    assert client.requests_sent == ClientOptions().max_attempts


async def test_a_404_is_not_retried(fake, github, clock):
    client = await github.installation_client(INSTALLATION)

    with pytest.raises(BadRequest) as error:
        await client.getitem(f"/repos/{ORG}/no-such-repo")

    assert error.value.status_code == 404
    assert fake.count("GET", rf"^/repos/{ORG}/no-such-repo$") == 1
    assert clock.sleeps == []


async def test_a_plain_403_is_not_retried(fake, github, clock):
    client = await github.installation_client(INSTALLATION)
    fake.fail("PATCH", rf"^{REPO}$", 403, body={"message": "Resource not accessible by integration"})

    with pytest.raises(BadRequest):
        await client.patch(REPO, data={"has_wiki": False})

    assert fake.count("PATCH", rf"^{REPO}$") == 1
    assert clock.sleeps == []


# -- rate limits -------------------------------------------------------------------------


async def test_secondary_limit_403_waits_retry_after_then_succeeds(fake, github, clock):
    client = await github.installation_client(INSTALLATION)
    fake.fail(
        "GET",
        rf"^{REPO}$",
        403,
        headers={"retry-after": "1"},
        body={"message": "You have exceeded a secondary rate limit. Please wait a few minutes."},
    )

    with capture_logs() as logs:
        repo = await client.getitem(REPO)

    assert repo["name"] == "widgets"
    assert clock.sleeps == [pytest.approx(1.0)]
    assert fake.count("GET", rf"^{REPO}$") == 2
    [retry] = retries(logs)
    assert (retry["reason"], retry["status"], retry["delay"]) == ("secondary_rate_limit", 403, 1.0)


async def test_429_without_retry_after_backs_off_from_a_minute(fake, github, clock):
    client = await github.installation_client(INSTALLATION)
    fake.fail("GET", rf"^{REPO}$", 429, times=2, body={"message": "Too many requests"})

    repo = await client.getitem(REPO)

    assert repo["name"] == "widgets"
    assert clock.sleeps == [pytest.approx(60.0), pytest.approx(120.0)]


async def test_secondary_limit_without_retry_after_recognised_by_message(fake, github, clock):
    client = await github.installation_client(INSTALLATION)
    fake.fail(
        "PATCH",
        rf"^{REPO}$",
        403,
        body={"message": "You have triggered an abuse detection mechanism."},
    )

    await client.patch(REPO, data={"has_wiki": False})

    assert clock.sleeps == [pytest.approx(60.0)]


async def test_secondary_limit_pauses_the_whole_installation(fake, github, clock):
    client = await github.installation_client(INSTALLATION)
    fake.fail("GET", rf"^{REPO}$", 403, headers={"retry-after": "30"},
              body={"message": "You have exceeded a secondary rate limit."})
    await client.getitem(REPO)
    clock.sleeps.clear()
    clock.monotonic -= 20  # the next request comes 10 s into the 30 s pause

    with capture_logs() as logs:
        await client.getitem(f"/orgs/{ORG}")

    assert [w["reason"] for w in waits(logs, "installation_paused")] == ["installation_paused"]
    assert clock.sleeps == [pytest.approx(20.0)]


async def test_exhausted_primary_limit_waits_for_the_reset(fake, github, clock):
    client = await github.installation_client(INSTALLATION)
    start = clock.wall
    reset = int(start) + 30
    fake.fail(
        "GET",
        rf"^{REPO}$",
        403,
        headers={
            "x-ratelimit-limit": "5000",
            "x-ratelimit-remaining": "0",
            "x-ratelimit-reset": str(reset),
        },
        body={"message": "API rate limit exceeded for installation ID 41."},
    )

    with capture_logs() as logs:
        repo = await client.getitem(REPO)

    assert repo["name"] == "widgets"
    [retry] = retries(logs)
    assert retry["reason"] == "primary_rate_limit"
    # Until the reset, plus a second for clock skew.
    assert clock.sleeps == [pytest.approx(reset - start + 1.0)]


async def test_low_budget_spaces_requests_until_the_reset(fake, github, clock):
    client = await github.installation_client(INSTALLATION)
    fake.set_rate_limit(INSTALLATION, remaining=20, reset_in=600)
    names = [f"gadget-{n}" for n in range(4)]  # distinct reads: a 304 would cost nothing
    for name in names:
        fake.add_repo(ORG, name)

    with capture_logs() as logs:
        for name in names:
            await client.getitem(f"/repos/{ORG}/{name}")

    budget = github.rate_limit(INSTALLATION)
    assert budget is not None and budget.remaining == 16
    # After the first answer 19 requests are left for ~600 s: one every ~31.6 s.
    assert clock.sleeps == [pytest.approx(600 / 19, rel=0.02)] * 3
    assert len(waits(logs, "rate_limit_pacing")) == 3
    # At that pace what is left lasts until the reset instead of running dry.
    assert clock.sleeps[-1] * budget.remaining == pytest.approx(budget.reset - clock.wall, rel=0.03)


async def test_budget_above_the_reserve_is_not_paced(fake, github, clock):
    client = await github.installation_client(INSTALLATION)
    fake.set_rate_limit(INSTALLATION, remaining=4000, reset_in=600)

    for _ in range(4):
        await client.getitem(REPO)

    assert clock.sleeps == []
    remaining = REGISTRY.get_sample_value(
        "moko_github_rate_limit_remaining", {"installation": str(INSTALLATION)}
    )
    assert remaining == github.rate_limit(INSTALLATION).remaining


# -- conditional requests ----------------------------------------------------------------


async def test_second_get_sends_if_none_match_and_is_served_from_cache(fake, github, clock):
    client = await github.installation_client(INSTALLATION)
    first = await client.getitem(REPO)
    etag = fake.calls[-1].response_headers["etag"]
    budget_after_first = github.rate_limit(INSTALLATION).remaining

    # A different client of the same installation shares the cache.
    other = await github.installation_client(INSTALLATION)
    second = await other.getitem(REPO)

    last = fake.calls[-1]
    assert last.headers["if-none-match"] == etag
    assert last.status == 304
    assert second == first
    # A 304 costs no budget, and Moko does not count it either.
    assert github.rate_limit(INSTALLATION).remaining == budget_after_first


async def test_etag_caches_are_per_installation(fake, github, clock):
    fake.add_installation(42, "other-org")
    fake.add_repo("other-org", "widgets")
    await (await github.installation_client(INSTALLATION)).getitem("/rate_limit")

    await (await github.installation_client(42)).getitem("/rate_limit")

    assert "if-none-match" not in fake.calls[-1].headers
    assert fake.calls[-1].status == 200


async def test_the_etag_cache_is_bounded_for_all_installations_together(fake, session, clock):
    # Room for two answers in all: a third installation's answer pushes out the oldest, so
    # memory does not grow with the number of installations.
    github = make_app(fake, session, clock, etag_cache_size=2)
    for number, org in ((42, "org-b"), (43, "org-c")):
        fake.add_installation(number, org)
    for number in (INSTALLATION, 42, 43):
        await (await github.installation_client(number)).getitem("/rate_limit")

    await (await github.installation_client(42)).getitem("/rate_limit")
    assert fake.calls[-1].status == 304
    await (await github.installation_client(INSTALLATION)).getitem("/rate_limit")
    assert "if-none-match" not in fake.calls[-1].headers
    assert fake.calls[-1].status == 200


async def test_permissions_of_installations_are_asked_side_by_side_when_they_run_out_together(fake, github, clock):
    # Known from each installation's token, then past their time together: one installation's
    # question answered 2 s late does not hold up another's.
    fake.add_installation(42, "org-b")
    for number in (INSTALLATION, 42):
        await github.installation_client(number)
        assert await github.installation_permissions(number)
    clock.advance(3600)
    fake.fail("GET", rf"^/app/installations/{INSTALLATION}$", delay=2.0)
    late = asyncio.create_task(github.installation_permissions(INSTALLATION))
    await asyncio.sleep(0.1)

    assert await asyncio.wait_for(github.installation_permissions(42), 1.0)

    assert not late.done()
    assert await late
    assert fake.count("GET", r"^/app/installations/\d+$") == 2


# -- concurrency and writes --------------------------------------------------------------


def concurrency_tracer() -> tuple[aiohttp.TraceConfig, dict[str, int]]:
    """Counts, per method, the most requests the client had open at once; each takes 20 ms more."""
    open_now: dict[str, int] = {}
    peak: dict[str, int] = {}
    trace = aiohttp.TraceConfig()

    async def started(_session: Any, _ctx: Any, params: Any) -> None:
        for key in (params.method, "all"):
            open_now[key] = open_now.get(key, 0) + 1
            peak[key] = max(peak.get(key, 0), open_now[key])
        await asyncio.sleep(0.02)  # a slow network, so that requests would overlap

    async def finished(_session: Any, _ctx: Any, params: Any) -> None:
        for key in (params.method, "all"):
            open_now[key] -= 1

    trace.on_request_start.append(started)
    trace.on_request_end.append(finished)
    trace.on_request_exception.append(finished)
    return trace, peak


async def test_writes_are_sent_one_at_a_time_and_reads_are_bounded(fake, clock):
    trace, peak = concurrency_tracer()
    async with aiohttp.ClientSession(trace_configs=[trace]) as session:
        github = make_app(fake, session, clock, max_in_flight=3)
        client = await github.installation_client(INSTALLATION)

        await asyncio.gather(
            *[client.getitem(REPO) for _ in range(12)],
            *[client.patch(REPO, data={"has_wiki": False}) for _ in range(4)],
        )

    assert peak["PATCH"] == 1
    assert 2 <= peak["GET"] <= 3
    assert peak["all"] <= 3


async def test_a_write_is_not_held_up_by_slow_reads_of_its_installation(fake, clock):
    # Every read place taken by answers a second late: the write, one at a time anyway,
    # has a place of its own and is answered first, and the bound on requests still holds.
    fake.fail("GET", rf"^/repos/{ORG}/", delay=1.0, times=3)
    trace, peak = concurrency_tracer()
    async with aiohttp.ClientSession(trace_configs=[trace]) as session:
        github = make_app(fake, session, clock, max_in_flight=3)
        client = await github.installation_client(INSTALLATION)
        reads = [asyncio.create_task(client.getitem(REPO)) for _ in range(3)]
        await asyncio.sleep(0.1)

        await asyncio.wait_for(client.patch(REPO, data={"has_wiki": False}), 0.5)

        assert not any(read.done() for read in reads)
        await asyncio.gather(*reads)
    assert fake.repo(ORG, "widgets")["has_wiki"] is False
    assert peak["all"] <= 3


async def test_bulk_writes_are_a_second_apart(fake, github, clock):
    sweep = await github.installation_client(INSTALLATION, bulk=True)

    with capture_logs() as logs:
        for wiki in (False, True, False):
            await sweep.patch(REPO, data={"has_wiki": wiki})
        await sweep.getitem(REPO)  # reads are not spaced

    assert clock.sleeps == [pytest.approx(1.0), pytest.approx(1.0)]
    assert len(waits(logs, "bulk_write_spacing")) == 2


async def test_a_webhook_remediation_is_not_slowed_by_bulk_spacing(fake, github, clock):
    sweep = await github.installation_client(INSTALLATION, bulk=True)
    webhook = await github.installation_client(INSTALLATION)
    await sweep.patch(REPO, data={"has_wiki": False})

    for wiki in (True, False, True):
        await webhook.patch(REPO, data={"has_wiki": wiki})

    assert clock.sleeps == []


async def test_bulk_spacing_is_per_installation(fake, github, clock):
    fake.add_installation(42, "other-org")
    fake.add_repo("other-org", "widgets")
    first = await github.installation_client(INSTALLATION, bulk=True)
    second = await github.installation_client(42, bulk=True)

    await first.patch(REPO, data={"has_wiki": False})
    await second.patch("/repos/other-org/widgets", data={"has_wiki": False})

    assert clock.sleeps == []


# -- GraphQL, counting, logs ------------------------------------------------------------


async def test_graphql_goes_to_the_graphql_url_and_is_retried(fake, github, clock):
    client = await github.installation_client(INSTALLATION)
    fake.fail("POST", r"graphql$", 502)

    data = await client.graphql(
        "query($owner: String!, $name: String!) { repository(owner: $owner, name: $name) { name } }",
        owner=ORG,
        name="widgets",
    )

    assert data["repository"]["name"] == "widgets"
    assert client.requests_sent == 2
    assert clock.sleeps == [pytest.approx(0.5)]


async def test_requests_are_counted_per_client_and_for_the_app(fake, github, clock):
    first = await github.installation_client(INSTALLATION)
    second = await github.installation_client(INSTALLATION)
    fake.fail("GET", rf"^{REPO}$", 502)

    await first.getitem(REPO)
    await second.getitem(f"/orgs/{ORG}")

    assert (first.requests_sent, second.requests_sent) == (2, 1)
    # Plus the one token request, made as the App.
    assert github.requests_sent == 4


async def test_retry_logs_name_paths_never_tokens(fake, github, clock):
    client = await github.installation_client(INSTALLATION)
    fake.fail("GET", rf"^/orgs/{ORG}/repos", 502)

    with capture_logs() as logs:
        await client.getitem(f"/orgs/{ORG}/repos?per_page=100")

    [retry] = retries(logs)
    assert retry["path"] == f"/orgs/{ORG}/repos"
    text = repr(logs)
    for secret in github.secrets():
        assert secret not in text


async def test_graphql_rate_limited_waits_for_the_reset_then_succeeds(fake, github, clock):
    client = await github.installation_client(INSTALLATION)
    start = clock.wall
    fake.set_rate_limit(INSTALLATION, remaining=0, reset_in=30, resource="graphql")
    reset = fake.rate_limit(INSTALLATION, "graphql")["reset"]

    def budget_back(call: Any) -> None:  # GitHub's reset, which the fake's real clock would not reach
        fake.set_rate_limit(INSTALLATION, remaining=5000, resource="graphql")

    fake.on_request(budget_back)

    with capture_logs() as logs:
        data = await client.graphql("query { viewer { login } }")

    assert "viewer" in data
    assert fake.count("POST", r"^/graphql$") == 2
    assert [r["reason"] for r in retries(logs)] == ["primary_rate_limit"]
    assert clock.sleeps == [pytest.approx(reset - start + 1.0)]


# -- POSTs that may have reached GitHub ----------------------------------------------------

ISSUES = f"{REPO}/issues"


@pytest.mark.parametrize(
    "fault",
    [
        {"status": 502},
        {"status": 504},
        {"reset_connection": True},
    ],
)
async def test_a_post_without_a_check_is_not_sent_again_after_it_may_have_arrived(fake, github, clock, fault):
    client = await github.installation_client(INSTALLATION)
    fake.fail("POST", rf"^{ISSUES}$", after_effect=True, **fault)

    with capture_logs() as logs, pytest.raises((GitHubBroken, GitHubUnavailable)):
        await client.post(ISSUES, data={"title": "Policy file is invalid"})

    # GitHub opened the issue; a second try would have opened another.
    assert [issue["title"] for issue in fake.issues(ORG, "widgets")] == ["Policy file is invalid"]
    assert fake.count("POST", rf"^{ISSUES}$") == 1
    assert clock.sleeps == []
    assert [line["event"] for line in logs if line["event"].startswith("github_")] == ["github_not_retried"]


async def test_a_post_that_timed_out_is_not_sent_again_without_a_check(fake, session, clock):
    github = make_app(fake, session, clock, request_timeout=0.2)
    client = await github.installation_client(INSTALLATION)
    fake.fail("POST", rf"^{ISSUES}$", delay=2.0, after_effect=True)

    with pytest.raises(GitHubUnavailable, match="not sent again"):
        await client.post(ISSUES, data={"title": "Slow"})
    assert [i["title"] for i in fake.issues(ORG, "widgets")] == ["Slow"]
    assert client.requests_sent == 1


async def test_a_post_github_did_not_handle_is_retried(fake, github, clock):
    client = await github.installation_client(INSTALLATION)
    fake.fail("POST", rf"^{ISSUES}$", 503)  # unavailable: nothing was done

    issue = await client.post(ISSUES, data={"title": "Once"})

    assert issue["title"] == "Once"
    assert [i["title"] for i in fake.issues(ORG, "widgets")] == ["Once"]
    assert fake.count("POST", rf"^{ISSUES}$") == 2


async def test_a_post_with_a_check_answers_what_the_check_found(fake, github, clock):
    client = await github.installation_client(INSTALLATION)
    fake.fail("POST", rf"^{ISSUES}$", 502, after_effect=True)
    checks = []

    async def already_done():
        checks.append(True)
        found = [i async for i in client.getiter(f"{ISSUES}?state=all") if i["title"] == "Found"]
        return found[0] if found else None

    issue = await client.post(ISSUES, data={"title": "Found"}, already_done=already_done)

    assert issue["title"] == "Found" and issue["number"] == fake.issues(ORG, "widgets")[0]["number"]
    assert len(fake.issues(ORG, "widgets")) == 1
    assert fake.count("POST", rf"^{ISSUES}$") == 1
    assert checks == [True]


async def test_a_post_with_a_check_that_finds_nothing_is_sent_again(fake, github, clock):
    client = await github.installation_client(INSTALLATION)
    fake.fail("POST", rf"^{ISSUES}$", 502)  # no effect this time

    async def already_done():
        return None

    issue = await client.post(ISSUES, data={"title": "Again"}, already_done=already_done)

    assert issue["title"] == "Again"
    assert [i["title"] for i in fake.issues(ORG, "widgets")] == ["Again"]
    assert fake.count("POST", rf"^{ISSUES}$") == 2
