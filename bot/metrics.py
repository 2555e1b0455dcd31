"""Prometheus metrics Moko exports on GET /metrics, defined once for the whole process."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

REGISTRY = CollectorRegistry(auto_describe=True)

WEBHOOKS_RECEIVED = Counter(
    "moko_webhooks_received_total",
    "Webhook deliveries received, by event and intake outcome",
    ["event", "outcome"],
    registry=REGISTRY,
)
WEBHOOK_PROCESSING_SECONDS = Histogram(
    "moko_webhook_processing_seconds",
    "Time spent processing one stored delivery",
    ["event"],
    registry=REGISTRY,
)
DELIVERIES_FINISHED = Counter(
    "moko_deliveries_finished_total",
    "Stored deliveries that finished processing, by final state",
    ["state"],
    registry=REGISTRY,
)
HANDLER_OUTCOMES = Counter(
    "moko_handler_outcomes_total",
    "Outcome of each handler callback dispatched for an event",
    ["handler", "outcome"],
    registry=REGISTRY,
)
REMEDIATIONS = Counter(
    "moko_remediations_total",
    "Remediation steps, by policy and audit outcome",
    ["policy", "outcome"],
    registry=REGISTRY,
)
GITHUB_REQUESTS = Counter(
    "moko_github_requests_total",
    "Requests sent to GitHub, by method and answer status",
    ["method", "status"],
    registry=REGISTRY,
)
GITHUB_REQUEST_SECONDS = Histogram(
    "moko_github_request_seconds",
    "Latency of requests to GitHub",
    ["method"],
    registry=REGISTRY,
)
GITHUB_RETRIES = Counter(
    "moko_github_retries_total",
    "Requests to GitHub retried, by reason",
    ["reason"],
    registry=REGISTRY,
)
GITHUB_WAIT_SECONDS = Counter(
    "moko_github_wait_seconds_total",
    "Seconds spent waiting before requests to GitHub, by reason",
    ["reason"],
    registry=REGISTRY,
)
WORKERS_BUSY = Gauge(
    "moko_workers_busy",
    "Workers holding a delivery (one waiting on its installation gives its worker back)",
    registry=REGISTRY,
)
GITHUB_WRITE_TURN_WAIT = Counter(
    "moko_github_write_turn_wait_seconds_total",
    "Seconds mutating requests waited for their installation's earlier write to finish (one at a time)",
    registry=REGISTRY,
)
GITHUB_WRITE_TURN_HELD = Counter(
    "moko_github_write_turn_held_seconds_total",
    "Seconds installations' write turns were held: a write sent, answered, retried after its backoff",
    registry=REGISTRY,
)
GITHUB_RATE_LIMIT_REMAINING = Gauge(
    "moko_github_rate_limit_remaining",
    "Primary rate-limit budget left, per installation",
    ["installation"],
    registry=REGISTRY,
)
RECONCILE_INTERVAL = Gauge(
    "moko_reconcile_interval_seconds",
    "Seconds between two reconciliations of an installation: MOKO_SWEEP_INTERVAL, or longer when its budget asks",
    ["installation"],
    registry=REGISTRY,
)
REDELIVERIES_REQUESTED = Counter(
    "moko_redeliveries_requested_total",
    "Failed deliveries Moko never stored that GitHub was asked to redeliver (MOKO_RECOVER_WINDOW)",
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge(
    "moko_queue_depth",
    "Deliveries stored and waiting for a worker",
    registry=REGISTRY,
)
COMMANDS = Counter(
    "moko_commands_total",
    "/moko commands, by command and outcome",
    ["command", "outcome"],
    registry=REGISTRY,
)
SWEEP_REPOSITORIES = Counter(
    "moko_sweep_repositories_total",
    "Repositories handled by sweeps, by outcome",
    ["outcome"],
    registry=REGISTRY,
)
CONNECTIONS_REFUSED = Counter(
    "moko_connections_refused_total",
    "Connections refused because the server already held its maximum",
    registry=REGISTRY,
)
POLICY_FILES_PARSED = Counter(
    "moko_policy_files_parsed_total",
    "Policy files parsed, by outcome (a file already parsed is taken from a cache by its blob SHA)",
    ["outcome"],
    registry=REGISTRY,
)

_children: dict[tuple[int, tuple[str, ...]], Any] = {}


def labelled(metric: MetricWrapperBase, *values: str) -> Any:
    """metric.labels(*values), remembered: labels() takes a lock and builds its key on every
    call, which is measurable on the per-delivery path."""
    key = (id(metric), values)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*values)
    return child
