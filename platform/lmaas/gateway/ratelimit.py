"""Per-tenant rate limits: two token buckets, requests/min and tokens/min.

A request is admitted when the requests bucket holds one request and the tokens bucket is
not in debt; it takes one request. When the request ends, its exact tokens (prompt +
completion) are debited, which may push the tokens bucket below zero: the next requests wait
until the refill pays the debt back. So a tenant's long-run throughput never exceeds its
quota, and no tokens are ever estimated.

Two implementations of one interface: `RedisRateLimiter` (atomic Lua scripts, shared by all
gateways, clock from Redis) when ``LMAAS_REDIS_URL`` is set, `LocalRateLimiter` (in
process, one gateway) otherwise.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

__all__ = ["Admission", "LocalRateLimiter", "Quota", "RateLimiter", "RedisRateLimiter"]


@dataclass(frozen=True)
class Quota:
    requests_per_minute: int
    tokens_per_minute: int


@dataclass(frozen=True)
class Admission:
    """The outcome of `admit`: allowed, or which limit refused and for how long."""

    allowed: bool
    limit: str = ""  # "requests" or "tokens" when refused
    retry_after_s: float = 0.0


class RateLimiter(Protocol):
    async def admit(self, tenant_id: str, quota: Quota) -> Admission: ...

    async def debit_tokens(self, tenant_id: str, quota: Quota, num_tokens: int) -> None: ...

    async def aclose(self) -> None: ...


class _Bucket:
    __slots__ = ("level", "stamp")

    def __init__(self, level: float, stamp: float) -> None:
        self.level = level
        self.stamp = stamp

    def refill(self, capacity: float, rate: float, now: float) -> None:
        self.level = min(capacity, self.level + (now - self.stamp) * rate)
        self.stamp = now


class LocalRateLimiter:
    """Buckets in this process's memory."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, str], _Bucket] = {}

    def _bucket(self, tenant_id: str, kind: str, capacity: float, now: float) -> _Bucket:
        bucket = self._buckets.get((tenant_id, kind))
        if bucket is None:
            bucket = self._buckets[(tenant_id, kind)] = _Bucket(capacity, now)
        return bucket

    async def admit(self, tenant_id: str, quota: Quota) -> Admission:
        now = self._clock()
        req_cap, req_rate = quota.requests_per_minute, quota.requests_per_minute / 60.0
        tok_cap, tok_rate = quota.tokens_per_minute, quota.tokens_per_minute / 60.0
        with self._lock:
            requests = self._bucket(tenant_id, "requests", req_cap, now)
            tokens = self._bucket(tenant_id, "tokens", tok_cap, now)
            requests.refill(req_cap, req_rate, now)
            tokens.refill(tok_cap, tok_rate, now)
            if tokens.level <= 0:
                return Admission(False, "tokens", (1 - tokens.level) / tok_rate)
            if requests.level < 1:
                return Admission(False, "requests", (1 - requests.level) / req_rate)
            requests.level -= 1
            return Admission(True)

    async def debit_tokens(self, tenant_id: str, quota: Quota, num_tokens: int) -> None:
        now = self._clock()
        cap, rate = quota.tokens_per_minute, quota.tokens_per_minute / 60.0
        with self._lock:
            tokens = self._bucket(tenant_id, "tokens", cap, now)
            tokens.refill(cap, rate, now)
            tokens.level -= num_tokens

    async def aclose(self) -> None:
        return None


# KEYS: requests bucket, tokens bucket. ARGV: req capacity, req rate/s, tok capacity, tok rate/s.
# Returns {allowed (1/0), limit ("requests"/"tokens"/""), retry_after_s as a string}.
_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function load(key, cap, rate)
  local v = redis.call('HMGET', key, 'level', 'stamp')
  local level = tonumber(v[1]) or cap
  local stamp = tonumber(v[2]) or now
  return math.min(cap, level + math.max(0, now - stamp) * rate)
end
local function save(key, level, cap, rate)
  redis.call('HSET', key, 'level', tostring(level), 'stamp', tostring(now))
  redis.call('PEXPIRE', key, math.ceil(math.max(0, cap - level) / rate * 1000) + 60000)
end
local rcap, rrate = tonumber(ARGV[1]), tonumber(ARGV[2])
local tcap, trate = tonumber(ARGV[3]), tonumber(ARGV[4])
local req = load(KEYS[1], rcap, rrate)
local tok = load(KEYS[2], tcap, trate)
save(KEYS[2], tok, tcap, trate)
if tok <= 0 then
  save(KEYS[1], req, rcap, rrate)
  return {0, 'tokens', tostring((1 - tok) / trate)}
end
if req < 1 then
  save(KEYS[1], req, rcap, rrate)
  return {0, 'requests', tostring((1 - req) / rrate)}
end
save(KEYS[1], req - 1, rcap, rrate)
return {1, '', '0'}
"""

# KEYS: tokens bucket. ARGV: capacity, rate/s, tokens to debit.
_DEBIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local cap, rate, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local v = redis.call('HMGET', KEYS[1], 'level', 'stamp')
local level = tonumber(v[1]) or cap
local stamp = tonumber(v[2]) or now
level = math.min(cap, level + math.max(0, now - stamp) * rate) - cost
redis.call('HSET', KEYS[1], 'level', tostring(level), 'stamp', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(math.max(0, cap - level) / rate * 1000) + 60000)
return tostring(level)
"""


class RedisRateLimiter:
    """Buckets in Redis, shared by every gateway replica; each update is one Lua script."""

    def __init__(self, url: str, *, prefix: str = "lmaas") -> None:
        import redis.asyncio as aioredis

        self._redis = aioredis.Redis.from_url(url)
        self._prefix = prefix.rstrip(":")
        self._admit = self._redis.register_script(_ADMIT)
        self._debit = self._redis.register_script(_DEBIT)

    def _key(self, tenant_id: str, kind: str) -> str:
        return f"{self._prefix}:ratelimit:{{{tenant_id}}}:{kind}"

    async def admit(self, tenant_id: str, quota: Quota) -> Admission:
        keys = [self._key(tenant_id, "requests"), self._key(tenant_id, "tokens")]
        args = [
            quota.requests_per_minute,
            quota.requests_per_minute / 60.0,
            quota.tokens_per_minute,
            quota.tokens_per_minute / 60.0,
        ]
        allowed, limit, retry = await self._admit(keys=keys, args=args)
        if int(allowed):
            return Admission(True)
        return Admission(False, limit.decode(), float(retry))

    async def debit_tokens(self, tenant_id: str, quota: Quota, num_tokens: int) -> None:
        args = [quota.tokens_per_minute, quota.tokens_per_minute / 60.0, num_tokens]
        await self._debit(keys=[self._key(tenant_id, "tokens")], args=args)

    async def aclose(self) -> None:
        await self._redis.aclose()
