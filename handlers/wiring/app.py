"""Wiring of `moko serve`: the aiohttp application, its routes, and start-up and shutdown."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from aiohttp import web
from gidgethub.routing import Router
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bot.audit import AuditWriter, log_audit_head, log_audit_heads_forever, vouch_for_plain_records
from bot.config import Settings, load_settings
from bot.context import Hooks, Services
from bot.github_app import GitHubApp
from bot.github_client import ClientOptions
from bot.http_limits import LOOP_TIME, CappedSite, PaceTime, UnverifiedBodies, handler_args
from bot.intake import MAX_BODY, WebhookIntake
from bot.logs import get_logger
from bot.metrics import REGISTRY
from bot.processing import DeliveryProcessor
from bot.readiness import StoreWritable
from bot.redact import REDACTOR
from bot.redelivery import recover_deliveries_forever
from bot.setup_mode import SetupMode
from bot.store import open_store
from bot.worker import SYSTEM_TIME, PoolTime, WorkerPool
from handlers import build_router
from handlers.wiring.components import install_components

log = get_logger("moko.app")

SERVICES: web.AppKey[Services] = web.AppKey("services", Services)
WORKERS: web.AppKey[WorkerPool] = web.AppKey("workers", WorkerPool)
INTAKE: web.AppKey[WebhookIntake] = web.AppKey("intake", WebhookIntake)
STORE_WRITABLE: web.AppKey[StoreWritable] = web.AppKey("store_writable", StoreWritable)


def client_options(settings: Settings) -> ClientOptions:
    return ClientOptions(
        max_attempts=settings.retry_attempts,
        base_delay=settings.retry_base_delay,
        request_timeout=settings.request_timeout,
        rate_limit_reserve=settings.rate_limit_reserve,
    )


def build_github(settings: Settings, session: aiohttp.ClientSession) -> GitHubApp:
    """The App's GitHub client for `serve`: always as the App, never with GITHUB_TOKEN."""
    return GitHubApp(
        session=session,
        api_url=settings.api_url,
        graphql_url=settings.graphql_url,
        app_id=settings.app_id,
        private_key=settings.private_key,
        options=client_options(settings),
    )


def default_hooks() -> Hooks:
    return install_components()


def create_app(
    settings: Settings, *, router: Router | None = None, hooks: Hooks | None = None,
    timing: PoolTime = SYSTEM_TIME, pace_time: PaceTime = LOOP_TIME,
) -> web.Application:
    """The aiohttp application for `moko serve`; start-up opens the store and starts the workers.

    timing is the clock the worker pool's loops and the SQLite store's leases run on, and
    pace_time the one large bodies are paced by (bot.http_limits): the system's and the event
    loop's in `moko serve`, one a test moves by hand otherwise.
    """
    REDACTOR.add(*settings.secrets())
    if router is None:
        router = build_router()
    hooks = hooks if hooks is not None else default_hooks()
    app = web.Application(client_max_size=MAX_BODY + 1, handler_args=handler_args(settings.header_timeout))

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        # The store names this process (its owner id) and holds its liveness signal.
        store = open_store(
            settings.database_url, lease_seconds=settings.lease_seconds, audit_key=settings.audit_key, clock=timing.wall
        )
        await store.open()
        session = aiohttp.ClientSession()
        services = Services(
            settings=settings,
            store=store,
            github=build_github(settings, session),
            audit=AuditWriter(store),
            owner=store.owner,
        )
        for install in hooks.components:
            install(services)
        workers = WorkerPool(
            store,
            DeliveryProcessor(services, router),
            owner=services.owner,
            workers=settings.workers,
            queue_max=settings.queue_max,
            lease_seconds=settings.lease_seconds,
            retention_seconds=settings.delivery_retention_days * 86400.0,
            timing=timing,
        )
        app[SERVICES] = services
        app[WORKERS] = workers
        intake = WebhookIntake(
            secret=settings.webhook_secret or "", store=store, workers=workers,
            owner=services.owner, lease_seconds=settings.lease_seconds,
            unverified=UnverifiedBodies(settings.unverified_bytes, pace_time=pace_time), body_timeout=settings.body_timeout,
        )
        app[INTAKE] = intake
        app[STORE_WRITABLE] = StoreWritable(store)
        if settings.audit_key:
            await vouch_for_plain_records(store, services.audit, services.owner)
        await workers.start()
        background = [asyncio.create_task(loop(services)) for loop in hooks.background]
        background.append(asyncio.create_task(log_audit_heads_forever(store)))
        background.append(asyncio.create_task(recover_deliveries_forever(services)))
        log.info("started", replica=services.owner, database=settings.database_url.split("://", 1)[0])
        try:
            yield
        finally:
            await workers.drain(settings.shutdown_grace)
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await session.close()
            try:  # the last head, after the last write: the anchor to check the trail against
                await log_audit_head(store)
            except Exception as exc:
                log.warning("audit_head_unavailable", error=REDACTOR.text(f"{type(exc).__name__}: {exc}"))
            await store.close()
            log.info("stopped", replica=services.owner)

    app.cleanup_ctx.append(lifecycle)
    app.router.add_post("/api/github/webhooks", _webhook)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    return app


async def _webhook(request: web.Request) -> web.Response:
    return await request.app[INTAKE].handle(request)


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    workers = request.app[WORKERS]
    problems = []
    if not await request.app[STORE_WRITABLE].ok():
        problems.append("store")
    if not (services.settings.app_id and services.settings.private_key and services.settings.webhook_secret):
        problems.append("credentials")
    if not workers.accepting:
        problems.append("shutting down")
    if problems:
        return web.json_response({"status": "unavailable", "problems": problems}, status=503)
    return web.json_response({"status": "ready"})


async def _metrics(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def serve(settings: Settings, *, host: str, port: int, env_path: Path | None = None) -> None:
    """Run until SIGTERM or SIGINT; then refuse new deliveries, finish in-flight work, exit.

    Without App credentials, serve the setup page first; once GitHub has created the App and
    its credentials are in .env (env_path), carry on as the App in the same process.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if not settings.has_app_credentials:
        registered = await _serve_setup(settings, host=host, port=port, env_path=env_path or Path(".env"), stop=stop)
        if registered is None:
            return
        settings = registered
    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = CappedSite(runner, host, port, max_connections=settings.max_connections)
    await site.start()
    # Everything built so far (modules, the app, the policy engine) lives as long as the
    # process: out of the collector's sight, so its full passes stay short. Each delivery
    # allocates a few hundred short-lived objects: collecting the youngest generation every
    # 10,000 allocations instead of 700 cut p99 by a millisecond or two in bench/intake.py.
    gc.freeze()
    gc.set_threshold(10_000, *gc.get_threshold()[1:])
    log.info("listening", host=host, port=port)
    await stop.wait()
    log.info("shutdown_requested")
    # Keep answering (503) while the workers drain, then close the listener.
    await app[WORKERS].drain(settings.shutdown_grace)
    await runner.cleanup()


async def _serve_setup(
    settings: Settings, *, host: str, port: int, env_path: Path, stop: asyncio.Event
) -> Settings | None:
    """Serve the setup page until the App is registered (its settings) or a signal (None)."""
    setup = SetupMode(settings, env_path=env_path)
    runner = web.AppRunner(setup.application(), access_log=None, handle_signals=False, shutdown_timeout=5.0)
    await runner.setup()
    # The same intake limits as the App's: a setup page is reachable by anyone, too.
    site = CappedSite(runner, host, port, max_connections=settings.max_connections)
    await site.start()
    shown = "localhost" if host in ("0.0.0.0", "::", "") else host
    log.info("setup_mode", url=f"http://{shown}:{port}/",
             message="no GitHub App credentials: open this page to register the App")
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({stopped, setup.registered}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        # The page that says the App is registered is sent before the listener moves on.
        await runner.cleanup()
    if not setup.registered.done():
        log.info("shutdown_requested")
        return None
    registration = setup.registered.result()
    return load_settings({**registration.values, **os.environ})
