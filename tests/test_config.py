"""Settings as an operator writes them: defaults, derived URLs, durations, and clear refusals."""

from __future__ import annotations

import pytest

from bot.config import ConfigError, load_settings

KEY = "-----BEGIN RSA PRIVATE KEY-----\nMIIB\n-----END RSA PRIVATE KEY-----\n"


def test_defaults_match_the_contract():
    settings = load_settings({})
    assert settings.api_url == "https://api.github.com"
    assert settings.graphql_url == "https://api.github.com/graphql"
    assert settings.database_url == "sqlite:///moko.db"
    assert settings.sweep_interval == 10 * 60 and settings.sweep_budget == 0.10
    assert settings.port == 3000 and settings.log_level == "info" and settings.log_format == "json"
    assert settings.dry_run is False and settings.env == "development"


def test_github_enterprise_server_graphql_url_is_derived():
    settings = load_settings({"GITHUB_API_URL": "https://ghe.example.com/api/v3"})
    assert settings.graphql_url == "https://ghe.example.com/api/graphql"
    explicit = load_settings({"GITHUB_API_URL": "https://ghe.example.com/api/v3",
                              "GITHUB_GRAPHQL_URL": "https://gql.example.com/graphql"})
    assert explicit.graphql_url == "https://gql.example.com/graphql"


@pytest.mark.parametrize(("value", "seconds"), [("6h", 21600), ("30m", 1800), ("45s", 45), ("2d", 172800), ("0", 0)])
def test_sweep_interval_durations(value, seconds):
    assert load_settings({"MOKO_SWEEP_INTERVAL": value}).sweep_interval == seconds


def test_inline_key_with_escaped_newlines_is_a_pem_and_secrets_stay_out_of_repr():
    settings = load_settings({"GITHUB_PRIVATE_KEY": KEY.replace("\n", "\\n"), "GITHUB_WEBHOOK_SECRET": "s3cret-value"})
    assert settings.private_key.startswith("-----BEGIN RSA PRIVATE KEY-----\nMIIB\n")
    assert "MIIB" not in repr(settings) and "s3cret-value" not in repr(settings)


def test_the_audit_key_and_the_database_password_are_secrets_kept_out_of_repr():
    settings = load_settings({"MOKO_AUDIT_KEY": "sixteen-or-more-chars",
                              "MOKO_DATABASE_URL": "postgresql://moko:db-pass-word@db/moko"})
    assert settings.audit_key == "sixteen-or-more-chars" and "sixteen-or-more" not in repr(settings)
    assert {"sixteen-or-more-chars", "db-pass-word"} <= set(settings.secrets())
    assert load_settings({}).audit_key is None


def test_key_file_is_read(tmp_path):
    path = tmp_path / "key.pem"
    path.write_text(KEY)
    assert load_settings({"GITHUB_PRIVATE_KEY_PATH": str(path)}).private_key == KEY
    with pytest.raises(ConfigError, match="GITHUB_PRIVATE_KEY_PATH"):
        load_settings({"GITHUB_PRIVATE_KEY_PATH": str(tmp_path / "missing.pem")})


@pytest.mark.parametrize(
    ("name", "value"),
    [("GITHUB_API_URL", "ftp://x"), ("MOKO_DATABASE_URL", "mysql://db"), ("MOKO_DRY_RUN", "maybe"),
     ("PORT", "70000"), ("LOG_FORMAT", "xml"), ("GITHUB_APP_ID", "abc"), ("MOKO_SWEEP_INTERVAL", "-1h"),
     ("MOKO_SWEEP_BUDGET", "0"), ("MOKO_SWEEP_BUDGET", "1.5"),
     ("MOKO_EVENT_LOOP", "trio"), ("MOKO_DELIVERY_RETENTION_DAYS", "2"), ("MOKO_AUDIT_KEY", "short")],
)
def test_malformed_settings_are_named(name, value):
    with pytest.raises(ConfigError, match=name):
        load_settings({name: value})


def test_serve_requires_the_app_credentials():
    with pytest.raises(ConfigError, match="GITHUB_APP_ID"):
        load_settings({}).require_app()
    with pytest.raises(ConfigError, match="GITHUB_WEBHOOK_SECRET"):
        load_settings({"GITHUB_APP_ID": "1", "GITHUB_PRIVATE_KEY": KEY}).require_app()


def test_config_file_environment_sections_and_interpolation(tmp_path):
    path = tmp_path / "moko.yml"
    path.write_text(
        "port: 4000\nMOKO_DRY_RUN: true\nGITHUB_WEBHOOK_SECRET: ${HOOK_SECRET:-fallback}\n"
        "environments:\n  production:\n    PORT: 5000\n"
    )
    development = load_settings({"MOKO_CONFIG": str(path)})
    assert development.port == 4000 and development.dry_run is True
    assert development.webhook_secret == "fallback"
    production = load_settings({"MOKO_CONFIG": str(path), "MOKO_ENV": "production", "HOOK_SECRET": "from-env"})
    assert production.port == 5000 and production.webhook_secret == "from-env"
    assert load_settings({"MOKO_CONFIG": str(path), "PORT": "6000"}).port == 6000
    path.write_text("NOT_A_SETTING: 1\n")
    with pytest.raises(ConfigError, match="unknown setting NOT_A_SETTING"):
        load_settings({"MOKO_CONFIG": str(path)})
