"""Metrics (Prometheus, prefix ``lmaas_gateway_``) and access logs of the gateway.

The access log line is ``METHOD /path STATUS duration``: no headers, no query string, no
body, so an API key can never reach a log. Routes are labelled by their template
(``/v1/adapters/{name}``), never by the raw path, to keep label cardinality bounded.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["GatewayMetrics", "ObservabilityMiddleware"]

access_log = logging.getLogger("lmaas.gateway.access")

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class GatewayMetrics:
    """The gateway's metrics on their own registry (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "lmaas_gateway_requests",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.errors = Counter(
            "lmaas_gateway_errors",
            "HTTP error responses by route and status",
            ["route", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "lmaas_gateway_request_seconds",
            "time from request to the last byte of the response",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.first_token_seconds = Histogram(
            "lmaas_gateway_time_to_first_token_seconds",
            "time from a completion request to its first generated text",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.tokens = Counter(
            "lmaas_gateway_tokens",
            "tokens served, by base model and kind (prompt, completion)",
            ["model", "kind"],
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "lmaas_gateway_rate_limited",
            "requests refused by a rate limit, by limit (requests, tokens)",
            ["limit"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "lmaas_gateway_generations_in_flight",
            "completions being generated now",
            registry=self.registry,
        )


def _route_label(scope: Scope) -> str:
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


class ObservabilityMiddleware:
    """Counts, times and logs every HTTP request (pure ASGI: streaming stays streaming)."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status = 500
        finished = False

        def observe() -> None:
            nonlocal finished
            if finished:
                return
            finished = True
            route = _route_label(scope)
            elapsed = time.monotonic() - started
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.request_seconds.labels(route).observe(elapsed)
            if status >= 400:
                self.metrics.errors.labels(route, str(status)).inc()
            access_log.info("%s %s %d %.3fs", scope["method"], scope["path"], status, elapsed)

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                observe()

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            observe()
