"""`lmaas profile`: measure T_g[b] for real against a running runtime.

For each bucket, requests of that bucket's sizes (uniform over its ranges; random prompt
token ids, ``max_tokens`` = the output length with ``ignore_eos``) arrive as a Poisson
process at rising rates through the runtime's internal API (``POST /internal/generate``,
NDJSON `GenerateEvent`s). A rate holds when every request succeeds, the SLO statistic (mean
or p99 of TTFT or TPOT) is within target, and the runtime kept up (completions spread over
no more than ~1/`min_keep_up` times the arrivals' span, so a growing queue fails the rate
even when the SLO metric alone would not show it). T_g[b] is the highest rate that holds;
between it and the first that failed, `refine_steps` bisections sharpen it.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable, Sequence

import httpx
from pydantic import BaseModel

from lmaas.placement.profiles import ProfileSet
from lmaas.placement.specs import SLO
from lmaas.placement.workload import Bucket
from lmaas.protocol import GenerateEvent, GenerateRequest, RuntimeInfo, SamplingParams

__all__ = ["Measurement", "Profiler", "holds", "measure_rate", "search_max_rate"]


class Measurement(BaseModel):
    """What one rate did to the runtime."""

    rate: float
    num_requests: int
    errors: int = 0
    ttft_mean_ms: float = 0.0
    ttft_p99_ms: float = 0.0
    tpot_mean_ms: float = 0.0
    tpot_p99_ms: float = 0.0
    keep_up: float = 1.0

    def statistic(self, slo: SLO) -> float:
        return float(getattr(self, f"{slo.metric}_{slo.statistic}_ms"))


def holds(m: Measurement, slo: SLO, min_keep_up: float = 0.8) -> bool:
    return m.errors == 0 and m.statistic(slo) <= slo.target_ms and m.keep_up >= min_keep_up


def search_max_rate(
    measure: Callable[[float], Measurement],
    *,
    slo: SLO,
    rates: Sequence[float],
    refine_steps: int = 2,
    min_keep_up: float = 0.8,
) -> tuple[float, list[Measurement]]:
    """The highest rate whose measurement holds: rising `rates`, then bisection."""
    ordered = sorted(r for r in rates if r > 0)
    if not ordered:
        raise ValueError("give at least one positive request rate")
    done: list[Measurement] = []
    best, failed = 0.0, None
    for rate in ordered:
        m = measure(rate)
        done.append(m)
        if not holds(m, slo, min_keep_up):
            failed = rate
            break
        best = rate
    if failed is None or best == 0.0:
        return best, done
    for _ in range(refine_steps):
        mid = (best * failed) ** 0.5
        m = measure(mid)
        done.append(m)
        if holds(m, slo, min_keep_up):
            best = mid
        else:
            failed = mid
    return best, done


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


async def _one(
    client: httpx.AsyncClient, url: str, request: GenerateRequest
) -> tuple[float, float | None, float, int] | None:
    """(sent, first token, finished, tokens) of one request; None when it failed."""
    sent = time.perf_counter()
    first, tokens = None, 0
    try:
        async with client.stream(
            "POST", f"{url}/internal/generate", json=request.model_dump(exclude_none=True)
        ) as response:
            if response.status_code != 200:
                await response.aread()
                return None
            async for line in response.aiter_lines():
                if not line.strip():
                    continue
                event = GenerateEvent.model_validate(json.loads(line))
                if event.error is not None:
                    return None
                if event.token_ids:
                    if first is None:
                        first = time.perf_counter()
                    tokens += len(event.token_ids)
    except (httpx.HTTPError, ValueError):
        return None
    return sent, first, time.perf_counter(), tokens


async def measure_rate(
    url: str,
    bucket: Bucket,
    rate: float,
    *,
    num_requests: int,
    vocab_size: int,
    max_context: int | None = None,
    seed: int = 0,
    timeout_s: float = 600.0,
) -> Measurement:
    """Send `num_requests` requests of `bucket`'s sizes as a Poisson process at `rate`/s."""
    rng = random.Random(f"{seed}:{bucket.name}:{rate}")
    arrivals: list[float] = []
    tasks = []
    async with httpx.AsyncClient(
        timeout=timeout_s, limits=httpx.Limits(max_connections=None)
    ) as client:
        start = time.perf_counter()
        at = 0.0
        for k in range(num_requests):
            if k:
                at += rng.expovariate(rate)
            output = rng.randint(bucket.output_tokens[0] + 1, bucket.output_tokens[1])
            prompt = rng.randint(bucket.input_tokens[0] + 1, bucket.input_tokens[1])
            if max_context is not None:
                prompt = max(1, min(prompt, max_context - output))
            request = GenerateRequest(
                request_id=f"profile-{bucket.name}-{rate:g}-{k}",
                prompt_token_ids=[rng.randrange(vocab_size) for _ in range(prompt)],
                sampling=SamplingParams(max_tokens=output, ignore_eos=True, temperature=0.0),
            )
            delay = start + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            arrivals.append(time.perf_counter())
            tasks.append(asyncio.create_task(_one(client, url, request)))
        results = await asyncio.gather(*tasks)
    done = [r for r in results if r is not None and r[1] is not None]
    ttft = [(first - sent) * 1e3 for sent, first, _, _ in done if first is not None]
    tpot = [
        (end - first) * 1e3 / (n - 1) for _, first, end, n in done if first is not None and n > 1
    ]
    keep_up = 1.0
    finishes = sorted(end for _, _, end, _ in done)
    if len(finishes) > 1 and finishes[-1] > finishes[0]:
        keep_up = min(1.0, (arrivals[-1] - arrivals[0]) / (finishes[-1] - finishes[0]))
    return Measurement(
        rate=rate,
        num_requests=num_requests,
        errors=num_requests - len(done),
        ttft_mean_ms=sum(ttft) / len(ttft) if ttft else 0.0,
        ttft_p99_ms=_percentile(ttft, 99),
        tpot_mean_ms=sum(tpot) / len(tpot) if tpot else 0.0,
        tpot_p99_ms=_percentile(tpot, 99),
        keep_up=keep_up,
    )


class Profiler:
    """Profiles one GPU type (the runtime's) over buckets; `run` returns its T_g[b] table."""

    def __init__(
        self,
        url: str,
        *,
        gpu: str,
        slo: SLO,
        buckets: Sequence[Bucket],
        rates: Sequence[float] = (0.5, 1, 2, 4, 8, 16, 32, 64),
        num_requests: int = 30,
        refine_steps: int = 2,
        min_keep_up: float = 0.8,
        seed: int = 0,
    ) -> None:
        self.url = url.rstrip("/")
        self.gpu = gpu
        self.slo = slo
        self.buckets = list(buckets)
        self.rates = list(rates)
        self.num_requests = num_requests
        self.refine_steps = refine_steps
        self.min_keep_up = min_keep_up
        self.seed = seed
        self.measurements: dict[str, list[Measurement]] = {}

    def info(self) -> RuntimeInfo:
        try:
            response = httpx.get(f"{self.url}/internal/info", timeout=30.0)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise ValueError(
                f"no runtime answers at {self.url}/internal/info ({exc}): start one "
                "(lmaas up, or a runtime pod) and give its URL with --runtime-url"
            ) from exc
        return RuntimeInfo.model_validate(response.json())

    def run(
        self,
        profiles: ProfileSet | None = None,
        on_step: Callable[[Bucket, Measurement], None] | None = None,
    ) -> ProfileSet:
        """Measure every bucket; the result (merged into `profiles`) marks them measured."""
        info = self.info()
        result = profiles or ProfileSet(model=info.model, slo=self.slo)
        if result.slo is not None and result.slo != self.slo:
            raise ValueError(
                f"the profile file holds figures for {result.slo.describe()}, not "
                f"{self.slo.describe()}: write to another file"
            )
        result.slo = self.slo
        for bucket in self.buckets:

            def measure(rate: float, bucket: Bucket = bucket) -> Measurement:
                m = asyncio.run(
                    measure_rate(
                        self.url,
                        bucket,
                        rate,
                        num_requests=self.num_requests,
                        vocab_size=info.vocab_size,
                        max_context=info.max_context,
                        seed=self.seed,
                    )
                )
                if on_step is not None:
                    on_step(bucket, m)
                return m

            best, done = search_max_rate(
                measure,
                slo=self.slo,
                rates=self.rates,
                refine_steps=self.refine_steps,
                min_keep_up=self.min_keep_up,
            )
            self.measurements[bucket.name] = done
            result.set(self.gpu, bucket, best, "measured")
        return result
