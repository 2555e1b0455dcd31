"""GitHub App authentication against the fake GitHub: App JWT, installation tokens, their cache."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import jwt
import pytest
from structlog.testing import capture_logs

from bot.github_app import TOKEN_INSTALLATION, GitHubApp, GitHubCredentialsMissing
from tests.support.github_client import INSTALLATION, ORG

TOKEN_PATH = rf"^/app/installations/{INSTALLATION}/access_tokens$"


def public_key(fake: Any) -> Any:
    from cryptography.hazmat.primitives import serialization

    return serialization.load_pem_private_key(fake.private_key_pem.encode(), None).public_key()


async def test_a_burst_of_deliveries_costs_one_token(fake, github):
    clients = await asyncio.gather(*[github.installation_client(INSTALLATION) for _ in range(25)])

    await asyncio.gather(*[client.getitem(f"/repos/{ORG}/widgets") for client in clients])

    assert fake.count("POST", TOKEN_PATH) == 1
    tokens = {call.headers["authorization"] for call in fake.calls if call.path.startswith("/repos/")}
    assert len(tokens) == 1 and tokens.pop().startswith("token ")


async def test_the_token_is_renewed_shortly_before_it_expires(fake, github, clock):
    client = await github.installation_client(INSTALLATION)
    await client.getitem(f"/repos/{ORG}/widgets")
    first = fake.calls[-1].headers["authorization"]

    clock.advance(50 * 60)  # tokens live an hour; still ten minutes to go
    await client.getitem(f"/repos/{ORG}/widgets")
    assert fake.count("POST", TOKEN_PATH) == 1
    assert fake.calls[-1].headers["authorization"] == first

    clock.advance(6 * 60)  # now within five minutes of expires_at
    await client.getitem(f"/orgs/{ORG}")  # the same long-lived client, e.g. a sweep
    assert fake.count("POST", TOKEN_PATH) == 2
    renewed = fake.calls[-1].headers["authorization"]
    assert renewed != first
    assert fake.calls[-1].status == 200

    newcomer = await github.installation_client(INSTALLATION)
    await newcomer.getitem(f"/orgs/{ORG}")
    assert fake.count("POST", TOKEN_PATH) == 2
    assert fake.calls[-1].headers["authorization"] == renewed


async def test_tokens_are_cached_per_installation(fake, github):
    fake.add_installation(42, "other-org")

    await github.installation_client(INSTALLATION)
    await github.installation_client(42)
    await github.installation_client(INSTALLATION)

    assert fake.count("POST", r"^/app/installations/\d+/access_tokens$") == 2


async def test_the_app_client_sends_an_rs256_jwt_for_the_app(fake, github):
    app = await github.app_client().getitem("/app")

    authorization = fake.calls[-1].headers["authorization"]
    scheme, token = authorization.split(" ", 1)
    assert scheme.lower() == "bearer"
    claims = jwt.decode(token, public_key(fake), algorithms=["RS256"])
    assert claims["iss"] == str(fake.app_id)
    assert claims["exp"] - claims["iat"] <= 10 * 60
    assert app["id"] == int(fake.app_id) or str(app["id"]) == str(fake.app_id)


async def test_bot_login_is_the_app_slug_and_cached(fake, github):
    login = await github.bot_login()
    again = await github.bot_login()

    assert login == again and login.endswith("[bot]")
    assert fake.count("GET", r"^/app$") == 1


async def test_org_installation_and_all_installations(fake, github):
    for number in range(150):
        fake.add_installation(1000 + number, f"org-{number}")

    assert await github.org_installation_id(ORG) == INSTALLATION
    ids = await github.installation_ids()

    assert sorted(ids) == sorted([INSTALLATION, *range(1000, 1150)])
    assert fake.count("GET", r"^/app/installations$") >= 2  # paginated


async def test_secrets_name_the_key_and_every_live_token_and_logs_hold_none(fake, github):
    with capture_logs() as logs:
        client = await github.installation_client(INSTALLATION)
        await client.getitem(f"/repos/{ORG}/widgets")
        await github.app_client().getitem("/app")

    token = fake.calls[-2].headers["authorization"].split(" ", 1)[1]
    app_jwt = fake.calls[-1].headers["authorization"].split(" ", 1)[1]
    secrets = github.secrets()
    assert fake.private_key_pem in secrets
    assert token in secrets
    assert app_jwt in secrets
    assert any(line["event"] == "github_installation_token" for line in logs)
    for secret in secrets:
        assert secret not in repr(logs)


async def test_a_personal_token_is_used_as_is_for_the_cli(fake, session, clock):
    fake.add_personal_token("ghp_personaltoken0123456789abcdefghij", "octocat")
    github = GitHubApp(
        session=session,
        api_url=fake.url,
        graphql_url=fake.graphql_url,
        token="ghp_personaltoken0123456789abcdefghij",
        sleep=clock.sleep,
    )

    installation = await github.org_installation_id(ORG)
    client = await github.installation_client(installation)
    await client.getitem(f"/repos/{ORG}/widgets")

    assert installation == TOKEN_INSTALLATION
    assert fake.calls[-1].headers["authorization"] == "token ghp_personaltoken0123456789abcdefghij"
    assert fake.count("POST", r"access_tokens") == 0
    assert github.secrets() == ["ghp_personaltoken0123456789abcdefghij"]
    with pytest.raises(GitHubCredentialsMissing):
        github.app_client()


async def test_missing_credentials_fail_on_use_not_on_construction(fake, session):
    github = GitHubApp(session=session, api_url=fake.url, graphql_url=fake.graphql_url)

    with pytest.raises(GitHubCredentialsMissing, match="GITHUB_APP_ID"):
        await github.installation_client(INSTALLATION)
    assert github.secrets() == []


async def test_github_enterprise_server_urls_are_used_for_every_request(fake, clock):
    seen: list[str] = []
    trace = aiohttp.TraceConfig()

    async def started(_session: Any, _ctx: Any, params: Any) -> None:
        seen.append(str(params.url))

    trace.on_request_start.append(started)
    for number in range(120):
        fake.add_installation(1000 + number, f"org-{number}")
    async with aiohttp.ClientSession(trace_configs=[trace]) as session:
        github = GitHubApp(
            session=session,
            api_url=f"{fake.url}/api/v3",
            graphql_url=f"{fake.url}/api/graphql",
            app_id=str(fake.app_id),
            private_key=fake.private_key_pem,
            sleep=clock.sleep,
        )
        assert await github.org_installation_id(ORG) == INSTALLATION
        assert len(await github.installation_ids()) == 121
        client = await github.installation_client(INSTALLATION)
        await client.getitem(f"/repos/{ORG}/widgets")
        await client.graphql("query { viewer { login } }")

    assert seen[-1] == f"{fake.url}/api/graphql"
    rest = seen[:-1]
    assert len(rest) >= 5  # org installation, two pages of installations, token, repository
    assert all(url.startswith(f"{fake.url}/api/v3/") for url in rest), rest


async def test_a_token_github_refuses_is_replaced_once_for_all_its_requests(fake, github):
    clients = [await github.installation_client(INSTALLATION) for _ in range(5)]
    fake.expire_tokens()  # e.g. revoked before its expires_at

    repos = await asyncio.gather(*[c.getitem(f"/repos/{ORG}/widgets") for c in clients])

    assert [repo["name"] for repo in repos] == ["widgets"] * 5
    assert fake.count("POST", TOKEN_PATH) == 2
    assert sorted(call.status for call in fake.calls_to("GET", r"^/repos/")) == [200] * 5 + [401] * 5


async def test_a_refused_app_jwt_is_not_retried(fake, session, clock):
    from gidgethub import BadRequest

    github = GitHubApp(
        session=session,
        api_url=fake.url,
        graphql_url=fake.graphql_url,
        app_id="999",  # not the fake's App
        private_key=fake.private_key_pem,
        sleep=clock.sleep,
    )

    with pytest.raises(BadRequest) as error:
        await github.installation_client(INSTALLATION)

    assert error.value.status_code == 401
    assert fake.count("POST", TOKEN_PATH) == 1
    assert clock.sleeps == []
