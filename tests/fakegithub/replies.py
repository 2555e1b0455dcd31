"""What REST handlers answer: a Reply, or an HTTPError carrying a GitHub error body."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class HTTPError(Exception):
    """Answer with a GitHub error body `{"message", "documentation_url", "status"}`."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


@dataclass
class Reply:
    """A response: status, JSON body (or raw bytes) and extra headers."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None
    content_type: str = "application/json; charset=utf-8"
