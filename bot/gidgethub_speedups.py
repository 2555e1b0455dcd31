"""gidgethub's per-request helpers, made cheaper without changing what they return.

Every request Moko sends through gidgethub pays pure computations that repeat for each
one: the endpoint is joined to the API's base URL (``urllib.parse.urljoin``) and its URI
template parsed and filled (``uritemplate.expand``), the answer's Content-Type header is
parsed with the standard library's e-mail parser (``sansio._parse_content_type``), and the
JSON body is decoded by the standard library. On a delivery that needs one PATCH they were
about 8 % of the instructions Moko spends (``bench/processing.py --callgrind``). Here the
same functions are kept, remembered or swapped for an equal one, once per process:

- an endpoint joined to a base URL is kept, and so is its parsed template (a few dozen
  endpoints in all);
- a template whose expressions are all plain ``{name}`` (most of GitHub's paths) filled
  with text or numbers is filled here: each value percent-encoded as RFC 6570's simple
  expansion asks (every byte but the unreserved ones), as uritemplate does; any other
  template or value (``{+ref}``, ``{?per_page}``, a missing or list value) goes to
  uritemplate;
- a Content-Type value is parsed once and kept (GitHub sends two or three);
- the JSON of an answer is decoded by orjson, which gives the same values (GitHub's JSON
  has no NaN and no integer beyond 64 bits) and raises a subclass of the same error.

gidgethub's own code does the rest as before: filling the URL, the headers, ETag caching,
rate-limit hooks and errors. ``install`` leaves gidgethub alone when a release no longer
has what it changes, so the worst a new gidgethub can cost is the speed.
"""

from __future__ import annotations

import functools
import json
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any

import orjson
import uritemplate
from gidgethub import sansio

_TEMPLATES_KEPT = 512
_GITHUB_API = getattr(sansio, "DOMAIN", "https://api.github.com")
_CONTENT_TYPES_KEPT = 64


@functools.lru_cache(maxsize=_TEMPLATES_KEPT)
def _template(uri: str) -> uritemplate.URITemplate:
    return uritemplate.URITemplate(uri)


# uritemplate's own reading of an expression: from "{" to the next "}".
_EXPRESSION = re.compile(r"\{[^}]*\}")
_PLAIN = re.compile(r"\{([A-Za-z0-9_]+)\}")


@functools.lru_cache(maxsize=_TEMPLATES_KEPT)
def _plain_parts(uri: str) -> tuple[str, ...] | None:
    """The template as text, name, text, …, text when every expression is a plain {name};
    else None."""
    if not all(_PLAIN.fullmatch(expression) for expression in _EXPRESSION.findall(uri)):
        return None
    return tuple(_PLAIN.split(uri))


def _filled(parts: tuple[str, ...], values: Mapping[str, Any]) -> str | None:
    """The plain template filled, or None when a value is not text or a number."""
    out = [parts[0]]
    for at in range(1, len(parts), 2):
        value = values.get(parts[at])
        kind = type(value)
        if kind is str:
            out.append(urllib.parse.quote(value, safe=""))
        elif kind is int:
            out.append(str(value))
        else:  # missing, None, a bool, a list or a mapping: uritemplate's rules
            return None
        out.append(parts[at + 1])
    return "".join(out)


class _KeptTemplates:
    """Stands in for the ``uritemplate`` module inside gidgethub.sansio: only ``expand``."""

    @staticmethod
    def expand(uri: str, var_dict: Any = None, **kwargs: Any) -> str:
        parts = _plain_parts(uri)
        if parts is not None and not kwargs:
            filled = _filled(parts, var_dict or {})
            if filled is not None:
                return filled
        return str(_template(uri).expand(var_dict, **kwargs))


@functools.lru_cache(maxsize=_TEMPLATES_KEPT)
def _joined(base_url: str, url: str) -> str:
    return urllib.parse.urljoin(base_url.removesuffix("/") + "/", url.removeprefix("/"))


def _format_url(url: str, url_vars: Mapping[str, Any] | None, *, base_url: str = _GITHUB_API) -> str:
    """gidgethub.sansio.format_url, with the joined URL kept: it is the same for every
    request to one endpoint (a next page's URL is joined too, and soon forgotten)."""
    joined = _joined(base_url, url)
    if url_vars is None:
        return _KeptTemplates.expand(joined)
    return _KeptTemplates.expand(joined, var_dict=dict(url_vars))


class _FasterJson:
    """Stands in for the ``json`` module inside gidgethub.sansio: ``loads`` by orjson."""

    dumps = staticmethod(json.dumps)
    JSONDecodeError = json.JSONDecodeError

    @staticmethod
    def loads(text: str | bytes) -> Any:
        return orjson.loads(text)


def install() -> bool:
    """Make gidgethub.sansio's helpers cheaper (once); whether it could."""
    if getattr(sansio, "_moko_speedups", False):
        return True
    parse = getattr(sansio, "_parse_content_type", None)
    if parse is None or getattr(sansio, "uritemplate", None) is not uritemplate or getattr(sansio, "json", None) is not json:
        return False
    if not callable(getattr(sansio, "format_url", None)) or getattr(sansio, "DOMAIN", None) is None:
        return False
    sansio._parse_content_type = functools.lru_cache(maxsize=_CONTENT_TYPES_KEPT)(parse)  # type: ignore[attr-defined]
    sansio.uritemplate = _KeptTemplates  # type: ignore[attr-defined]
    sansio.format_url = _format_url
    sansio.json = _FasterJson  # type: ignore[attr-defined]
    sansio._moko_speedups = True  # type: ignore[attr-defined]
    return True
