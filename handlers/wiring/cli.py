"""The `moko` command: serve, sweep, audit, check-config, doctor."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from bot.config import ConfigError, Settings, environ_with_dotenv, load_settings
from bot.exit_codes import EXIT_OK, EXIT_USAGE
from bot.redact import mask_url_credentials
from bot.store.base import StoreUnavailable


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2 as well; keep its one-line usage
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"moko: error: {message}\n")


def version() -> str:
    try:
        from importlib.metadata import version as installed_version

        return installed_version("moko")
    except Exception:  # run from a source tree that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="moko", description="Keep every repository of an organization in line with its policy.")
    parser.add_argument("--version", action="version", version=f"moko {version()}",
                        help="print Moko's version and exit")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")

    serve = commands.add_parser(
        "serve", help="run the GitHub App",
        description="Run the GitHub App: webhooks, /moko commands, continuous reconciliation. Without App "
                    "credentials it serves the setup page that registers the App.")
    serve.add_argument("--host", default=None, help="listening address (default: HOST, else 0.0.0.0)")
    serve.add_argument("--port", type=int, default=None, help="listening port (default: PORT, else 3000)")

    sweep = commands.add_parser(
        "sweep", help="reconcile an organization with its policy",
        description="Reconcile every repository of an organization (or the named ones) with its policy, "
                    "with per-repository checkpoints: an interrupted sweep resumes when run again.")
    sweep.add_argument("--org", required=True, help="the organization (or user account) to sweep")
    sweep.add_argument("--repo", action="append", default=[], metavar="NAME",
                       help="sweep only this repository (NAME or OWNER/NAME); may be repeated")
    sweep.add_argument("--dry-run", action="store_true", help="plan and record, change nothing")
    sweep.add_argument("--retry-failed", action="store_true",
                       help="take again only the repositories that failed in the last sweep")
    sweep.add_argument("--json", action="store_true", help="print one JSON document instead of a table")

    audit = commands.add_parser(
        "audit", help="read the audit trail",
        description="Print the audit trail, newest last; --verify checks its hash chain.")
    audit.add_argument("--repo", metavar="OWNER/NAME", help="only this repository's records")
    audit.add_argument("--since", metavar="7d", help="only records since then: a duration (7d, 12h) or an ISO time")
    audit.add_argument("--json", action="store_true", help="one JSON record a line")
    audit.add_argument("--verify", action="store_true", help="check the hash chain; exit 1 when it is broken")
    audit.add_argument(
        "--anchor", metavar="SEQ:HASH",
        help="with --verify (implied): also fail unless this head, logged earlier as audit_head, is still in the chain",
    )

    doctor = commands.add_parser(
        "doctor", help="check the App's setup as GitHub sees it",
        description="Check, as the App: its key, the webhook configuration, the events it is subscribed to, "
                    "each installation and its policy file, recent failed deliveries, and the store. One line "
                    "per check (ok, warn or fail, and what to do); exit 1 on any failure.")
    doctor.add_argument("--json", action="store_true", help="print the checks as one JSON document")

    check = commands.add_parser(
        "check-config", help="validate a policy file",
        description="Validate a policy file: exit 0 when valid, 2 with one FILE:LINE: message line per error.")
    check.add_argument("file", help="the policy file, e.g. .github/moko.yml")
    return parser


def _fail_config(error: ConfigError) -> int:
    print(f"moko: configuration error: {error}", file=sys.stderr)
    return EXIT_USAGE


def _validate_private_key(settings: Settings) -> None:
    from cryptography.hazmat.primitives import serialization

    assert settings.private_key is not None
    try:
        serialization.load_pem_private_key(settings.private_key.encode(), password=None)
    except (ValueError, TypeError):
        raise ConfigError("GITHUB_PRIVATE_KEY: not a valid unencrypted PEM private key") from None


def run_serve(args: argparse.Namespace) -> int:
    from bot.logs import configure_logging
    from handlers.wiring.app import serve

    env_path = Path.cwd() / ".env"
    settings = load_settings(environ_with_dotenv(env_path))
    if settings.has_app_credentials:  # else: setup mode, which registers the App
        settings.require_app()
        _validate_private_key(settings)
    configure_logging(settings.log_level, settings.log_format)
    host = args.host or settings.host
    port = args.port if args.port is not None else settings.port
    run_event_loop(serve(settings, host=host, port=port, env_path=env_path), settings.event_loop)
    return EXIT_OK


def run_event_loop(main: Coroutine[Any, Any, None], choice: str) -> None:
    """Run serve on uvloop where it is installed (about a sixth less CPU per delivery,
    measured with bench/intake.py), else, or when told so, on asyncio's own loop."""
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise ConfigError("MOKO_EVENT_LOOP: uvloop is not installed") from None
        else:
            uvloop.run(main)
            return
    asyncio.run(main)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            return run_serve(args)
        if args.command == "check-config":
            from handlers.wiring.cli_check import run_check_config

            return run_check_config(args.file)
        if args.command == "doctor":
            from handlers.wiring.cli_doctor import run_doctor

            return run_doctor(args, load_settings(environ_with_dotenv(Path.cwd() / ".env")))
        if args.command == "audit":
            from handlers.wiring.cli_audit import run_audit

            return run_audit(args, load_settings())
        if args.command == "sweep":
            from handlers.wiring.cli_sweep import run_sweep

            return run_sweep(args, load_settings())
    except ConfigError as error:
        return _fail_config(error)
    except StoreUnavailable as error:
        print(f"moko: store error: {mask_url_credentials(str(error))}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
