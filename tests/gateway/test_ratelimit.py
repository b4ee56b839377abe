"""Rate limits: token buckets per tenant, in process and in Redis; 429 + Retry-After."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from lmaas.gateway.ratelimit import LocalRateLimiter, Quota, RedisRateLimiter
from tests.gateway.conftest import MODEL, Api, gateway_settings

BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_local_buckets_refill_and_carry_token_debt() -> None:
    clock = FakeClock()
    limiter = LocalRateLimiter(clock)
    quota = Quota(requests_per_minute=2, tokens_per_minute=60)
    assert (await limiter.admit("t", quota)).allowed
    assert (await limiter.admit("t", quota)).allowed
    refused = await limiter.admit("t", quota)
    assert (refused.allowed, refused.limit) == (False, "requests")
    assert refused.retry_after_s == pytest.approx(30.0)
    assert (await limiter.admit("other", quota)).allowed, "buckets are per tenant"
    clock.now += 30
    assert (await limiter.admit("t", quota)).allowed

    await limiter.debit_tokens("t", quota, 90)  # 60 in the bucket: 30 of debt
    clock.now += 20  # refilled 20 of the 30
    refused = await limiter.admit("t", quota)
    assert (refused.allowed, refused.limit) == (False, "tokens")
    assert refused.retry_after_s == pytest.approx(11.0)
    clock.now += 11.5
    assert (await limiter.admit("t", quota)).allowed


def _assert_429(response, kind: str) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert (error["type"], error["code"]) == (kind, "rate_limit_exceeded")
    assert int(response.headers["retry-after"]) >= 1
    assert "per minute" in error["message"]


def test_requests_per_minute_in_process(api: Api) -> None:
    headers = api.tenant("acme", requests_per_minute=2)
    other = api.tenant("other", requests_per_minute=2)
    for _ in range(2):
        assert (
            api.client.post("/v1/chat/completions", headers=headers, json=BODY).status_code == 200
        )
    _assert_429(api.client.post("/v1/chat/completions", headers=headers, json=BODY), "requests")
    assert api.client.post("/v1/chat/completions", headers=other, json=BODY).status_code == 200
    assert (
        'lmaas_gateway_rate_limited_total{limit="requests"} 1.0' in api.client.get("/metrics").text
    )


def test_tokens_per_minute_in_process(api: Api) -> None:
    headers = api.tenant("acme", tokens_per_minute=6)
    r = api.client.post("/v1/chat/completions", headers=headers, json=BODY)
    assert r.status_code == 200 and r.json()["usage"]["total_tokens"] > 6
    refused = api.client.post("/v1/chat/completions", headers=headers, json=BODY)
    _assert_429(refused, "tokens")
    debt = r.json()["usage"]["total_tokens"] - 6
    assert int(refused.headers["retry-after"]) >= debt * 60 // 6 - 1


@pytest.mark.redis
async def test_redis_buckets_are_atomic(redis_url: str, redis_prefix: str) -> None:
    limiter = RedisRateLimiter(redis_url, prefix=redis_prefix)
    try:
        quota = Quota(requests_per_minute=10, tokens_per_minute=1000)
        results = await asyncio.gather(*(limiter.admit("t", quota) for _ in range(30)))
        assert sum(r.allowed for r in results) == 10
        refused = next(r for r in results if not r.allowed)
        assert refused.limit == "requests" and 0 < refused.retry_after_s <= 6.1
        await limiter.debit_tokens("t2", quota, 1500)
        refused = await limiter.admit("t2", quota)
        assert (refused.allowed, refused.limit) == (False, "tokens")
        assert refused.retry_after_s == pytest.approx(30.06, abs=0.5)
    finally:
        await limiter.aclose()


@pytest.mark.redis
def test_redis_limits_are_shared_by_gateways(
    tmp_path: Path, database_url: str, runtime_url: str, redis_url: str, redis_prefix: str
) -> None:
    from lmaas.gateway import create_app

    settings = gateway_settings(
        tmp_path, database_url, runtime_url, redis_url=redis_url, redis_prefix=redis_prefix
    )
    with TestClient(create_app(settings)) as one, TestClient(create_app(settings)) as two:
        headers = Api(one, settings).tenant("acme", requests_per_minute=2)
        assert one.post("/v1/chat/completions", headers=headers, json=BODY).status_code == 200
        assert two.post("/v1/chat/completions", headers=headers, json=BODY).status_code == 200
        _assert_429(one.post("/v1/chat/completions", headers=headers, json=BODY), "requests")
        _assert_429(two.post("/v1/chat/completions", headers=headers, json=BODY), "requests")
