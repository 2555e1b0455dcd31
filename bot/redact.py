"""Secret redaction for everything Moko writes out: logs, audit records, comments, errors."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from typing import Any

REDACTED = "[REDACTED]"

# Shapes of GitHub credentials, caught even when Moko was never told the value.
_PATTERNS = re.compile(
    r"(gh[pousr]_[A-Za-z0-9]{20,}"
    r"|github_pat_[A-Za-z0-9_]{20,}"
    r"|eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"
    r"|-----BEGIN[A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END[A-Z ]*PRIVATE KEY-----|$))"
)
_MIN_SECRET_LENGTH = 6
# The password in a URL such as postgresql://moko:secret@db/moko (MOKO_DATABASE_URL).
_URL_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^\s/@:]*):[^\s/]*@")


def mask_url_credentials(text: str) -> str:
    """The text with the password of every URL in it masked: postgresql://moko:***@db/moko."""
    return _URL_PASSWORD.sub(r"\1:***@", text)


class Redactor:
    """Replaces known secrets and credential-shaped strings with [REDACTED]."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._lock = threading.Lock()

    def add(self, *secrets: str | None) -> None:
        """Remember secrets (e.g. the webhook secret, each installation token as it is issued)."""
        with self._lock:
            for secret in secrets:
                if secret and len(secret) >= _MIN_SECRET_LENGTH:
                    self._secrets.add(secret)
                    # A PEM key also leaks line by line.
                    for line in secret.splitlines():
                        if len(line) >= 16 and "-----" not in line:
                            self._secrets.add(line)

    def extend(self, secrets: Iterable[str]) -> None:
        self.add(*secrets)

    def text(self, value: str) -> str:
        """The string with every secret removed."""
        for secret in self._secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return _PATTERNS.sub(REDACTED, mask_url_credentials(value))

    def value(self, value: Any) -> Any:
        """Any JSON-like value with every string redacted."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {key: self.value(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(item) for item in value]
        return value


# One per process: secrets are learnt in one place (config, token cache) and used everywhere.
REDACTOR = Redactor()
