"""gidgethub's per-request helpers, made cheaper without changing what they return.

Every request Moko sends through gidgethub pays three pure computations that repeat for
each one: the URI template of the endpoint is parsed again (``uritemplate.expand``), the
answer's Content-Type header is parsed with the standard library's e-mail parser
(``sansio._parse_content_type``), and the JSON body is decoded by the standard library.
On a delivery that needs one PATCH they were about 6 % of the instructions Moko spends
(``bench/processing.py --callgrind``). Here the same functions are kept, remembered or
swapped for an equal one, once per process:

- a template string is parsed once and kept (a few dozen endpoints in all);
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
from typing import Any

import orjson
import uritemplate
from gidgethub import sansio

_TEMPLATES_KEPT = 512
_CONTENT_TYPES_KEPT = 64


@functools.lru_cache(maxsize=_TEMPLATES_KEPT)
def _template(uri: str) -> uritemplate.URITemplate:
    return uritemplate.URITemplate(uri)


class _KeptTemplates:
    """Stands in for the ``uritemplate`` module inside gidgethub.sansio: only ``expand``."""

    @staticmethod
    def expand(uri: str, var_dict: Any = None, **kwargs: Any) -> str:
        return str(_template(uri).expand(var_dict, **kwargs))


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
    sansio._parse_content_type = functools.lru_cache(maxsize=_CONTENT_TYPES_KEPT)(parse)  # type: ignore[attr-defined]
    sansio.uritemplate = _KeptTemplates  # type: ignore[attr-defined]
    sansio.json = _FasterJson  # type: ignore[attr-defined]
    sansio._moko_speedups = True  # type: ignore[attr-defined]
    return True
