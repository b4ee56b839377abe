"""Metrics (Prometheus, prefix ``lmaas_gateway_``) and access logs of the gateway.

Besides its own ``lmaas_gateway_*`` series, the gateway exports the request-size metrics
the GPU planner reads (`lmaas.placement.metrics`): the histograms
``lmaas_request_prompt_tokens`` and ``lmaas_request_completion_tokens`` and the joint
counter ``lmaas_request_size_total{prompt_le, completion_le}``, labelled ``model`` (the base
model) and ``service`` (the scaled service that ran it: ``namespace/model-service`` on
Kubernetes, the model name embedded, empty for fixed runtime URLs). Their bucket edges are
the planner's default grid (`lmaas.placement.workload.MELANGE_EDGES`, then +Inf); each
finished request is recorded once, with the exact token counts the runtime reported.

The access log line is ``METHOD /path STATUS duration``: no headers, no query string, no
body, so an API key can never reach a log. Routes are labelled by their template
(``/v1/adapters/{name}``), never by the raw path, to keep label cardinality bounded.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.utils import INF, floatToGoString
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lmaas.placement.workload import MELANGE_EDGES

__all__ = ["SIZE_EDGES", "GatewayMetrics", "ObservabilityMiddleware", "size_bucket"]

access_log = logging.getLogger("lmaas.gateway.access")

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

SIZE_EDGES: tuple[float, ...] = (*(float(e) for e in MELANGE_EDGES[1:]), INF)
"""Upper edges (tokens, ``n ≤ le``) of the request-size buckets: the planner's grid."""


def size_bucket(tokens: int) -> str:
    """The ``le`` label (Prometheus spelling: ``25.0``, ``+Inf``) of a length in tokens."""
    return floatToGoString(next(e for e in SIZE_EDGES if tokens <= e))


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
        self.finetune_jobs = Counter(
            "lmaas_gateway_finetune_jobs",
            "fine-tuning jobs created (queued), by method (lora, qft)",
            ["method"],
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
        # What the GPU planner reads (names fixed by lmaas.placement.metrics).
        self._sized: set[tuple[str, str]] = set()
        self.request_prompt_tokens = Histogram(
            "lmaas_request_prompt_tokens",
            "prompt tokens of finished requests, by base model and service",
            ["model", "service"],
            buckets=SIZE_EDGES,
            registry=self.registry,
        )
        self.request_completion_tokens = Histogram(
            "lmaas_request_completion_tokens",
            "completion tokens of finished requests, by base model and service",
            ["model", "service"],
            buckets=SIZE_EDGES,
            registry=self.registry,
        )
        self.request_size = Counter(
            "lmaas_request_size",
            "finished requests by prompt and completion size bucket (the joint histogram)",
            ["model", "service", "prompt_le", "completion_le"],
            registry=self.registry,
        )

    def observe_request_size(
        self, model: str, service: str | None, prompt_tokens: int, completion_tokens: int
    ) -> None:
        """Record one finished request's exact sizes (once per request)."""
        where = service or ""
        if (model, where) not in self._sized:
            # Every cell of the joint histogram exists from the first request on, so a
            # reader sees the whole grid (its edges), not only the cells that had requests.
            self._sized.add((model, where))
            edges = [floatToGoString(e) for e in SIZE_EDGES]
            for prompt_le in edges:
                for completion_le in edges:
                    self.request_size.labels(model, where, prompt_le, completion_le)
        self.request_prompt_tokens.labels(model, where).observe(prompt_tokens)
        self.request_completion_tokens.labels(model, where).observe(completion_tokens)
        self.request_size.labels(
            model, where, size_bucket(prompt_tokens), size_bucket(completion_tokens)
        ).inc()


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
