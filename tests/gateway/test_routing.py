"""Routing: affinity then least load (pure), failover and waiting (through the transport seam).

The seam is the gateway client's httpx transport: an `httpx.MockTransport` plays replicas
that refuse connections or are not ready yet, and forwards everything else to the real
runtime.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from lmaas.gateway.routing import Replica, pick_replica
from tests.gateway.conftest import MODEL, Api, gateway_settings

BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def test_pick_prefers_the_replica_holding_the_adapter_then_the_least_loaded() -> None:
    a = Replica("http://a", in_flight=3, adapter_ids={"x"})
    b = Replica("http://b", in_flight=1)
    c = Replica("http://c", in_flight=0, adapter_ids={"y", "z"})
    assert pick_replica([a, b, c], "x") is a, "affinity wins within the slack"
    assert pick_replica([a, b, c], None) is c, "no adapter: least loaded"
    assert pick_replica([a, b, c], "w") is c, "nobody holds it: least loaded"
    a.in_flight = 10
    assert pick_replica([a, b, c], "x") is c, "affinity yields when the holder is overloaded"
    assert pick_replica([b, Replica("http://d", in_flight=1)], None) is b, "ties: fewer adapters"
    with pytest.raises(ValueError, match="at least one"):
        pick_replica([], None)


def _forwarding(runtime_url: str, rule: Callable[[httpx.Request], httpx.Response | None]):  # type: ignore[no-untyped-def]
    """A transport: `rule` may answer (or raise) first; otherwise forward to the runtime."""
    calls: list[tuple[str, str]] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        calls.append((request.url.host, request.url.path))
        answer = rule(request)
        if answer is not None:
            return answer
        async with httpx.AsyncClient(base_url=runtime_url, timeout=30) as upstream:
            response = await upstream.request(
                request.method, request.url.path, content=request.content, headers=request.headers
            )
        return httpx.Response(
            response.status_code, headers=response.headers, content=response.content
        )

    return httpx.MockTransport(handler), calls


def _app(tmp_path: Path, database_url: str, urls: str, transport, **overrides):  # type: ignore[no-untyped-def]
    from lmaas.gateway import create_app

    settings = gateway_settings(tmp_path, database_url, urls, **overrides)
    return settings, TestClient(create_app(settings, runtime_transport=transport))


def test_a_replica_refusing_connections_is_skipped(
    tmp_path: Path, database_url: str, runtime_url: str
) -> None:
    def rule(request: httpx.Request) -> httpx.Response | None:
        if request.url.host == "down" and request.url.path == "/internal/generate":
            raise httpx.ConnectError("connection refused", request=request)
        return None

    transport, calls = _forwarding(runtime_url, rule)
    settings, client = _app(tmp_path, database_url, "http://down,http://up", transport)
    with client:
        headers = Api(client, settings).tenant("acme")
        for _ in range(3):
            r = client.post("/v1/chat/completions", headers=headers, json=BODY)
            assert r.status_code == 200, r.text
    generates = [host for host, path in calls if path == "/internal/generate"]
    assert generates.count("up") == 3
    assert generates.count("down") <= 1, "a refusing replica is marked down after one try"


def test_requests_wait_for_a_replica_to_become_ready(
    tmp_path: Path, database_url: str, runtime_url: str
) -> None:
    probes = {"n": 0}

    def rule(request: httpx.Request) -> httpx.Response | None:
        if request.url.path == "/readyz":
            probes["n"] += 1
            if probes["n"] <= 3:
                return httpx.Response(503, json={"ready": False, "phase": "loading weights"})
        return None

    transport, _ = _forwarding(runtime_url, rule)
    settings, client = _app(tmp_path, database_url, "http://slow", transport)
    with client:
        headers = Api(client, settings).tenant("acme")
        r = client.post("/v1/chat/completions", headers=headers, json=BODY)
        assert r.status_code == 200, r.text
        assert probes["n"] >= 4


def test_no_ready_replica_answers_503_after_the_wait(
    tmp_path: Path, database_url: str, runtime_url: str
) -> None:
    def rule(request: httpx.Request) -> httpx.Response | None:
        raise httpx.ConnectError("nobody home", request=request)

    transport, _ = _forwarding(runtime_url, rule)
    settings, client = _app(tmp_path, database_url, "http://gone", transport, replica_wait_s=0.5)
    with client:
        headers = Api(client, settings).tenant("acme")
        r = client.post("/v1/chat/completions", headers=headers, json=BODY)
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "no_replica_available"
        assert r.headers["retry-after"]
