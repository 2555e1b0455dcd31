"""gidgethub's helpers as Moko runs them give the answers gidgethub's own would.

bot/gidgethub_speedups.py keeps parsed URI templates and Content-Type values and decodes
answers with orjson; a request must still go to the same URL and its answer read the same.
"""

from __future__ import annotations

import email.message
import json
import urllib.parse

import pytest
import uritemplate
from gidgethub import sansio
from hypothesis import given
from hypothesis import strategies as st

import bot.github_client  # noqa: F401  (installs the speedups, as every Moko process does)
from bot import gidgethub_speedups


def _parsed_by_email(content_type: str | None) -> tuple[str | None, str]:
    """gidgethub's own reading of a Content-Type header."""
    if not content_type:
        return None, "utf-8"
    message = email.message.Message()
    message["content-type"] = content_type
    return message.get_content_type(), str(message.get_param("charset") or "utf-8")


def test_installed_once_and_idempotent() -> None:
    assert gidgethub_speedups.install() is True
    assert sansio.uritemplate is not uritemplate
    assert sansio.json is not json


@pytest.mark.parametrize(
    ("template", "variables"),
    [
        ("/repos/{owner}/{repo}", {"owner": "octo-org", "repo": "hello.world"}),
        # a path and a ref are escaped, not joined raw: "docs/a b" must not become two segments
        ("/repos/{owner}/{repo}/contents/{path}{?ref}", {"owner": "o", "repo": "r", "path": ".github/moko.yml", "ref": "feature/x y"}),
        ("/repos/{owner}/{repo}/branches/{branch}/protection", {"owner": "o", "repo": "r", "branch": "release/1.0"}),
        ("/repos/{owner}/{repo}/git/refs/heads/{branch}", {"owner": "o", "repo": "r", "branch": "ünïcode"}),
        ("/app/installations{?per_page}", {}),
        ("/orgs/{org}/repos", None),
    ],
)
def test_urls_are_filled_as_uritemplate_fills_them(template: str, variables: dict[str, str] | None) -> None:
    base = "https://ghe.example.com/api/v3"
    expected = uritemplate.expand(base + template, var_dict=dict(variables or {}))
    for _ in range(2):  # the second time from the kept template
        assert sansio.format_url(template, variables, base_url=base) == expected


def _gidgethubs_format_url(url: str, url_vars: dict | None, base_url: str) -> str:
    """gidgethub's own format_url, as its release writes it."""
    joined = urllib.parse.urljoin(base_url.removesuffix("/") + "/", url.removeprefix("/"))
    return uritemplate.expand(joined) if url_vars is None else uritemplate.expand(joined, var_dict=dict(url_vars))


_NAMES = ("owner", "repo", "branch", "path", "ref", "number", "org")
_VALUES = st.one_of(
    st.text(max_size=12), st.integers(-5, 10**12), st.none(), st.booleans(),
    st.lists(st.text(max_size=3), max_size=2), st.dictionaries(st.sampled_from("ab"), st.text(max_size=2), max_size=1),
)
_PIECES = st.one_of(
    st.sampled_from(["/repos/", "/", "-", ".", "/git/refs/", "?per_page=100", "%20", "{", "}", "{}", "ü", " "]),
    st.sampled_from(_NAMES).map(lambda name: "{" + name + "}"),
    st.sampled_from(["{+ref}", "{?per_page}", "{/path}", "{#frag}", "{path:3}", "{owner*}", "{owner,repo}", "{{owner}"]),
)


@given(
    pieces=st.lists(_PIECES, max_size=8),
    variables=st.one_of(st.none(), st.dictionaries(st.sampled_from(_NAMES), _VALUES)),
    base=st.sampled_from(["https://api.github.com", "https://ghe.example.com/api/v3/", "http://127.0.0.1:8080"]),
)
def test_any_template_and_values_make_gidgethubs_url(pieces: list[str], variables: dict | None, base: str) -> None:
    # The plain {name} templates are filled here, the rest by uritemplate: either way the
    # URL is gidgethub's, or the same error is raised.
    template = "".join(pieces)
    try:
        expected: object = _gidgethubs_format_url(template, variables, base)
    except Exception as exc:  # noqa: BLE001 - whatever gidgethub raises, Moko must raise too
        with pytest.raises(type(exc)):
            sansio.format_url(template, variables, base_url=base)
        return
    assert sansio.format_url(template, variables, base_url=base) == expected


def test_a_branch_name_escaped_by_moko_is_not_escaped_again() -> None:
    # A branch clean-up deletes refs/heads/feature/a#b with its parts escaped by Moko and the
    # slashes kept ({+ref}): escaping the % again sends the DELETE to a ref that does not
    # exist, which GitHub answers 422 and Moko counts as already gone (uritemplate < 4.2).
    url = sansio.format_url("/repos/{owner}/{repo}/git/refs/{+ref}",
                            {"owner": "o", "repo": "r", "ref": "heads/feature/a%23b"}, base_url="https://api.github.com")
    assert url == "https://api.github.com/repos/o/r/git/refs/heads/feature/a%23b"


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json; charset=utf-8",
        "application/json",
        "application/vnd.github+json; charset=ISO-8859-1",
        "text/html;charset=utf-8",
        "application/x-www-form-urlencoded",
        "",
        None,
    ],
)
def test_content_types_are_read_as_gidgethub_reads_them(content_type: str | None) -> None:
    assert sansio._parse_content_type(content_type) == _parsed_by_email(content_type)


def test_answers_decode_to_the_same_values() -> None:
    body = {
        "id": 2**53 + 1, "full_name": "octo-org/hello", "has_wiki": False, "topics": ["a", "ü"],
        "score": 1.5, "license": None, "description": "quote \" and \\u2603 \u2603",
    }
    raw = json.dumps(body).encode()
    headers = {"content-type": "application/json; charset=utf-8"}
    data, _limit, _more = sansio.decipher_response(200, headers, raw)
    assert data == json.loads(raw)


def test_a_broken_answer_raises_what_the_standard_library_raises() -> None:
    headers = {"content-type": "application/json; charset=utf-8"}
    with pytest.raises(json.JSONDecodeError):
        sansio.decipher_response(200, headers, b'{"id": 1,')
