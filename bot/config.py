"""Moko's settings: read once from the environment and an optional YAML file, typed, failing fast."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from bot.redact import mask_url_credentials


class ConfigError(Exception):
    """A missing or malformed setting; the message names it and fits on one line, with the
    password of any URL in it masked (a malformed MOKO_DATABASE_URL may carry one)."""

    def __init__(self, message: str) -> None:
        super().__init__(mask_url_credentials(message))


# Every setting Moko reads, with its default (None: no default).
DEFAULTS: dict[str, str | None] = {
    "GITHUB_APP_ID": None,
    "GITHUB_PRIVATE_KEY": None,
    "GITHUB_PRIVATE_KEY_PATH": None,
    "GITHUB_WEBHOOK_SECRET": None,
    "GITHUB_API_URL": "https://api.github.com",
    "GITHUB_GRAPHQL_URL": None,
    "GITHUB_TOKEN": None,
    "GITHUB_URL": None,
    "GITHUB_CLIENT_ID": None,
    "GITHUB_CLIENT_SECRET": None,
    "MOKO_SESSION_SECRET": None,
    "MOKO_DATABASE_URL": "sqlite:///moko.db",
    "MOKO_DRY_RUN": "false",
    "MOKO_ENV": "development",
    "MOKO_SWEEP_INTERVAL": "10m",
    "MOKO_SWEEP_BUDGET": "0.10",
    "MOKO_RECOVER_WINDOW": "72h",
    "MOKO_AUDIT_RETENTION_DAYS": "90",
    "MOKO_DELIVERY_RETENTION_DAYS": "7",
    "MOKO_WORKERS": "32",
    "MOKO_QUEUE_MAX": "10000",
    "MOKO_LEASE_SECONDS": "120",
    "MOKO_SHUTDOWN_GRACE": "30",
    "MOKO_RATE_LIMIT_RESERVE": "0.10",
    "MOKO_RETRY_ATTEMPTS": "4",
    "MOKO_RETRY_BASE_DELAY": "0.5",
    "MOKO_REQUEST_TIMEOUT": "10",
    "PORT": "3000",
    "HOST": "0.0.0.0",
    "LOG_LEVEL": "info",
    "LOG_FORMAT": "json",
    "MOKO_EVENT_LOOP": "auto",
    "MOKO_AUDIT_KEY": None,
    "MOKO_HEADER_TIMEOUT": "10",
    "MOKO_BODY_TIMEOUT": "30",
    "MOKO_MAX_CONNECTIONS": "512",
    "MOKO_UNVERIFIED_MIB": "64",
}

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
EVENT_LOOPS = ("auto", "uvloop", "asyncio")
_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Settings:
    """Typed settings; secrets are kept out of repr so they never reach a log line."""

    app_id: str | None
    private_key: str | None = field(repr=False)
    webhook_secret: str | None = field(repr=False)
    token: str | None = field(repr=False)
    api_url: str
    graphql_url: str
    database_url: str
    dry_run: bool
    env: str
    sweep_interval: float
    sweep_budget: float
    audit_retention_days: int
    delivery_retention_days: int
    workers: int
    queue_max: int
    lease_seconds: float
    shutdown_grace: float
    rate_limit_reserve: float
    retry_attempts: int
    retry_base_delay: float
    request_timeout: float
    port: int
    host: str
    log_level: str
    log_format: str
    event_loop: str = "auto"  # auto (uvloop where installed), uvloop or asyncio
    # HMAC key of the audit chain's hashes, kept outside the database (None: plain SHA-256).
    audit_key: str | None = field(default=None, repr=False)
    github_url: str = "https://github.com"  # GitHub's web address: the setup page, links
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    session_secret: str | None = field(default=None, repr=False)
    header_timeout: float = 10.0  # also how long an idle keep-alive connection stays open
    body_timeout: float = 30.0
    max_connections: int = 512
    unverified_bytes: int = 64 * 1024 * 1024  # request bodies held before their signature holds
    # How far back failed deliveries Moko never stored are asked to be redelivered (0: never).
    recover_window: float = 72 * 3600.0

    def secrets(self) -> list[str]:
        """The configured secrets, for redaction."""
        candidates = (self.private_key, self.webhook_secret, self.token, self.audit_key, self.client_secret,
                      self.session_secret, _url_password(self.database_url))
        return [s for s in candidates if s]

    @property
    def has_app_credentials(self) -> bool:
        """Whether any of the App's own credentials is set; with none, serve runs in setup mode."""
        return bool(self.app_id or self.private_key or self.webhook_secret)

    def require_app(self) -> None:
        """Stop unless the App's own credentials (id, key, webhook secret) are set, as serve needs."""
        if not self.app_id:
            raise ConfigError("GITHUB_APP_ID is required")
        if not self.private_key:
            raise ConfigError("GITHUB_PRIVATE_KEY or GITHUB_PRIVATE_KEY_PATH is required")
        if not self.webhook_secret:
            raise ConfigError(
                "GITHUB_WEBHOOK_SECRET is required (without it webhooks could not be verified)"
            )

    def require_api_credentials(self) -> None:
        """Stop unless the CLI can talk to GitHub: a token, or the App's id and key."""
        if self.token:
            return
        if not self.app_id or not self.private_key:
            raise ConfigError(
                "GITHUB_TOKEN, or GITHUB_APP_ID with GITHUB_PRIVATE_KEY(_PATH), is required"
            )


def _url_password(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:
        return None


def interpolate(value: str, environ: Mapping[str, str], setting: str) -> str:
    """Replace ${VAR} and ${VAR:-default} with values from the environment."""

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in environ:
            return environ[name]
        if default is not None:
            return default
        raise ConfigError(f"{setting}: ${{{name}}} is not set in the environment")

    return _INTERPOLATION.sub(substitute, value)


def read_config_file(path: str, env_name: str, environ: Mapping[str, str]) -> dict[str, str]:
    """Settings from a YAML file: top-level NAME: value pairs, overridden by `environments.<env>`."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"MOKO_CONFIG: cannot read {path}: {exc.strerror}") from None
    try:
        document = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"MOKO_CONFIG: {path}{where}: not valid YAML") from None
    if not isinstance(document, dict):
        raise ConfigError(f"MOKO_CONFIG: {path}: must be a mapping of settings")
    sections = document.pop("environments", None) or {}
    if not isinstance(sections, dict):
        raise ConfigError(f"MOKO_CONFIG: {path}: environments must be a mapping")
    merged: dict[str, Any] = dict(document)
    chosen = sections.get(env_name) or {}
    if not isinstance(chosen, dict):
        raise ConfigError(f"MOKO_CONFIG: {path}: environments.{env_name} must be a mapping")
    merged.update(chosen)
    values: dict[str, str] = {}
    for key, raw in merged.items():
        name = str(key).upper()
        if name not in DEFAULTS:
            raise ConfigError(f"MOKO_CONFIG: {path}: unknown setting {key}")
        if raw is None:
            continue
        if isinstance(raw, bool):
            raw = "true" if raw else "false"
        if isinstance(raw, dict | list):
            raise ConfigError(f"{name}: must be a single value in {path}")
        values[name] = interpolate(str(raw), environ, name)
    return values


def parse_duration(name: str, value: str) -> float:
    """'6h', '30m', '45s', '2d' or plain seconds; 0 turns the feature off."""
    match = _DURATION.match(value)
    if not match:
        raise ConfigError(f"{name}: {value!r} is not a duration such as 6h, 30m or 0")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def _bool(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name}: {value!r} is not true or false")


def _int(name: str, value: str, minimum: int, maximum: int | None = None) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"{name}: {value!r} is not a whole number") from None
    if number < minimum or (maximum is not None and number > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise ConfigError(f"{name}: {number} must be {bound}")
    return number


def _float(name: str, value: str, minimum: float, maximum: float | None = None) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{name}: {value!r} is not a number") from None
    if number < minimum or (maximum is not None and number > maximum):
        raise ConfigError(f"{name}: {number} is out of range")
    return number


def graphql_url_for(api_url: str) -> str:
    """GitHub Enterprise Server serves GraphQL at /api/graphql beside /api/v3."""
    base = api_url.rstrip("/")
    if base.endswith("/api/v3"):
        return base[: -len("/v3")] + "/graphql"
    return base + "/graphql"


def github_url_for(api_url: str) -> str:
    """GitHub's web address for an API address: api.github.com is github.com, and a GitHub
    Enterprise Server's https://HOST/api/v3 is https://HOST; anything else (a test double)
    serves both at the same address."""
    base = api_url.rstrip("/")
    parts = urlsplit(base)
    if parts.hostname == "api.github.com":
        return f"{parts.scheme}://github.com"
    if base.endswith("/api/v3"):
        return base[: -len("/api/v3")]
    return base


def _url(name: str, value: str) -> str:
    if not re.match(r"^https?://[^\s/]+", value):
        raise ConfigError(f"{name}: {value!r} is not an http(s) URL")
    return value.rstrip("/")


def _private_key(raw: Mapping[str, str | None]) -> str | None:
    inline = raw.get("GITHUB_PRIVATE_KEY")
    path = raw.get("GITHUB_PRIVATE_KEY_PATH")
    if inline:
        # Platforms that cannot hold multi-line values pass the key with literal \n.
        key = inline.replace("\\n", "\n").strip() + "\n"
        name = "GITHUB_PRIVATE_KEY"
    elif path:
        try:
            key = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"GITHUB_PRIVATE_KEY_PATH: cannot read {path}: {exc.strerror}") from None
        name = "GITHUB_PRIVATE_KEY_PATH"
    else:
        return None
    if "-----BEGIN" not in key or "PRIVATE KEY-----" not in key:
        raise ConfigError(f"{name}: not a PEM private key")
    return key


def environ_with_dotenv(path: Path, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment over a .env file's `NAME=value` lines (the environment wins)."""
    from dotenv import dotenv_values

    env = dict(os.environ if environ is None else environ)
    if not path.is_file():
        return env
    try:
        values = dotenv_values(path, interpolate=False)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the file: {exc}") from None
    return {**{k: v for k, v in values.items() if v is not None}, **env}


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from the environment, over MOKO_CONFIG's file, over the defaults."""
    env = dict(os.environ if environ is None else environ)
    raw: dict[str, str | None] = dict(DEFAULTS)
    env_name = env.get("MOKO_ENV") or DEFAULTS["MOKO_ENV"] or "development"
    config_path = env.get("MOKO_CONFIG")
    if config_path:
        raw.update(read_config_file(config_path, env_name, env))
    for name in DEFAULTS:
        if name in env and env[name] != "":
            raw[name] = env[name]

    def get(name: str) -> str:
        value = raw.get(name)
        return "" if value is None else value

    api_url = _url("GITHUB_API_URL", get("GITHUB_API_URL"))
    graphql_url = (
        _url("GITHUB_GRAPHQL_URL", get("GITHUB_GRAPHQL_URL"))
        if get("GITHUB_GRAPHQL_URL")
        else graphql_url_for(api_url)
    )
    database_url = get("MOKO_DATABASE_URL")
    if not re.match(r"^(sqlite:///.+|postgres(ql)?://.+)$", database_url):
        raise ConfigError(
            f"MOKO_DATABASE_URL: {database_url!r} is neither sqlite:///PATH nor postgresql://…"
        )
    log_level = get("LOG_LEVEL").lower()
    if log_level not in LOG_LEVELS:
        raise ConfigError(f"LOG_LEVEL: {get('LOG_LEVEL')!r} is not one of {', '.join(LOG_LEVELS)}")
    log_format = get("LOG_FORMAT").lower()
    if log_format not in ("json", "console"):
        raise ConfigError(f"LOG_FORMAT: {get('LOG_FORMAT')!r} is not json or console")
    event_loop = get("MOKO_EVENT_LOOP").lower()
    if event_loop not in EVENT_LOOPS:
        raise ConfigError(f"MOKO_EVENT_LOOP: {get('MOKO_EVENT_LOOP')!r} is not one of {', '.join(EVENT_LOOPS)}")
    app_id = get("GITHUB_APP_ID").strip() or None
    if app_id is not None and not app_id.isdigit():
        raise ConfigError(f"GITHUB_APP_ID: {app_id!r} is not a number")
    return Settings(
        app_id=app_id,
        private_key=_private_key(raw),
        webhook_secret=get("GITHUB_WEBHOOK_SECRET") or None,
        token=get("GITHUB_TOKEN") or None,
        api_url=api_url,
        graphql_url=graphql_url,
        database_url=database_url,
        dry_run=_bool("MOKO_DRY_RUN", get("MOKO_DRY_RUN")),
        env=env_name,
        sweep_interval=parse_duration("MOKO_SWEEP_INTERVAL", get("MOKO_SWEEP_INTERVAL")),
        # A fraction of each installation's hourly REST requests and GraphQL points.
        sweep_budget=_float("MOKO_SWEEP_BUDGET", get("MOKO_SWEEP_BUDGET"), 0.0001, 1.0),
        audit_retention_days=_int("MOKO_AUDIT_RETENTION_DAYS", get("MOKO_AUDIT_RETENTION_DAYS"), 1),
        # GitHub redelivers a delivery (same ID) for 3 days: its ID must be known that long
        # for a redelivery of a done one to be recognised as a duplicate.
        delivery_retention_days=_int("MOKO_DELIVERY_RETENTION_DAYS", get("MOKO_DELIVERY_RETENTION_DAYS"), 3),
        workers=_int("MOKO_WORKERS", get("MOKO_WORKERS"), 1, 256),
        queue_max=_int("MOKO_QUEUE_MAX", get("MOKO_QUEUE_MAX"), 1),
        lease_seconds=_float("MOKO_LEASE_SECONDS", get("MOKO_LEASE_SECONDS"), 1.0),
        shutdown_grace=_float("MOKO_SHUTDOWN_GRACE", get("MOKO_SHUTDOWN_GRACE"), 0.0),
        rate_limit_reserve=_float("MOKO_RATE_LIMIT_RESERVE", get("MOKO_RATE_LIMIT_RESERVE"), 0.0, 1.0),
        retry_attempts=_int("MOKO_RETRY_ATTEMPTS", get("MOKO_RETRY_ATTEMPTS"), 1, 20),
        retry_base_delay=_float("MOKO_RETRY_BASE_DELAY", get("MOKO_RETRY_BASE_DELAY"), 0.0),
        request_timeout=_float("MOKO_REQUEST_TIMEOUT", get("MOKO_REQUEST_TIMEOUT"), 0.1),
        port=_int("PORT", get("PORT"), 0, 65535),
        host=get("HOST") or "0.0.0.0",
        log_level=log_level,
        log_format=log_format,
        event_loop=event_loop,
        audit_key=_audit_key(get("MOKO_AUDIT_KEY")),
        github_url=_url("GITHUB_URL", get("GITHUB_URL")) if get("GITHUB_URL") else github_url_for(api_url),
        client_id=get("GITHUB_CLIENT_ID") or None,
        client_secret=get("GITHUB_CLIENT_SECRET") or None,
        session_secret=get("MOKO_SESSION_SECRET") or None,
        header_timeout=_float("MOKO_HEADER_TIMEOUT", get("MOKO_HEADER_TIMEOUT"), 0.1),
        body_timeout=_float("MOKO_BODY_TIMEOUT", get("MOKO_BODY_TIMEOUT"), 0.1),
        max_connections=_int("MOKO_MAX_CONNECTIONS", get("MOKO_MAX_CONNECTIONS"), 1),
        unverified_bytes=_int("MOKO_UNVERIFIED_MIB", get("MOKO_UNVERIFIED_MIB"), 1) * 1024 * 1024,
        recover_window=parse_duration("MOKO_RECOVER_WINDOW", get("MOKO_RECOVER_WINDOW")),
    )


_MIN_AUDIT_KEY_LENGTH = 16


def _audit_key(value: str) -> str | None:
    """MOKO_AUDIT_KEY: unset, or long enough that it cannot be guessed from the records."""
    if not value:
        return None
    if len(value) < _MIN_AUDIT_KEY_LENGTH:
        raise ConfigError(f"MOKO_AUDIT_KEY: at least {_MIN_AUDIT_KEY_LENGTH} characters are needed")
    return value
