"""A roofline performance model of one GPU serving one model: T_g[b] without measuring.

The engine is modelled as continuous batching with chunked prefill (prefill tokens ride in
the same steps as decode tokens). With an average of B requests decoding, each step
produces one token per request and takes

    t(B) = overhead + max( (weights + B·C·kv_per_token) / (bandwidth·η_mem),
                           B·(f_decode + (I/O)·f_prefill) / (FLOP/s·η_compute) )

where C = I + O/2 is the mean context of a decoding request and I/O the prefill tokens a
step carries per decoding request in steady state. Then TPOT = t(B), TTFT ≈ t(B)·(½ +
⌈I / chunk⌉) + the request's own prefill compute, and throughput X = B / (O·t(B))
(Little's law). B is bounded by the KV cache
(usable memory − weights) / (C·kv_per_token), by the engine's sequence limit, and by the
prefill chunk budget (B·I/O ≤ chunk). T_g[b] is X at the largest B that keeps the SLO. For
a p99 SLO the step time is taken at B + 2.33·√B (Poisson fluctuation of the batch). Steps
never decode fewer than one request (the decode terms use max(B, 1)): a lone request must
meet the SLO too.

Monotone by construction: more input or output tokens, a tighter SLO, a bigger model or a
smaller GPU never raise T. Efficiencies η default to typical serving-engine figures and are
fitted per GPU type to measured points (`calibrate`); a type with no points takes the
geometric mean of the fitted ones (the efficiencies belong mostly to the engine).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field

from lmaas.placement.catalog import GPU_MEMORY_UTILIZATION, GPUType
from lmaas.placement.specs import GIB, SLO, ModelSpec
from lmaas.placement.workload import Bucket

__all__ = ["Efficiency", "MeasuredPoint", "RooflineModel"]

P99_Z = 2.33


class Efficiency(BaseModel):
    """How much of the data-sheet peak the engine reaches, and its fixed cost per step."""

    model_config = ConfigDict(frozen=True)

    compute: float = Field(default=0.5, gt=0, le=1, description="fraction of peak FLOP/s")
    bandwidth: float = Field(default=0.75, gt=0, le=1, description="fraction of peak GB/s")
    step_overhead_ms: float = Field(default=1.5, ge=0, description="scheduler, sampling")
    max_num_seqs: int = Field(default=256, gt=0, description="engine's sequence limit")
    chunk_tokens: int = Field(default=2048, gt=0, description="prefill tokens per step")


class MeasuredPoint(BaseModel):
    """A measured T_g[b]: requests/s one GPU sustained on a bucket under an SLO."""

    bucket: Bucket
    throughput: float = Field(ge=0)


class RooflineModel:
    """T_g[b] for `model` on any GPU type with hardware figures."""

    def __init__(
        self,
        model: ModelSpec,
        efficiency: Efficiency | None = None,
        per_gpu: Mapping[str, Efficiency] | None = None,
    ) -> None:
        self.model = model
        self.efficiency = efficiency or Efficiency()
        self.per_gpu = dict(per_gpu or {})

    def efficiency_for(self, gpu: GPUType) -> Efficiency:
        return self.per_gpu.get(gpu.name, self.efficiency)

    def throughput(self, gpu: GPUType, bucket: Bucket, slo: SLO) -> float:
        """Highest request rate (req/s) one `gpu` sustains on `bucket` under `slo`; 0 = never."""
        return _remembered_throughput(
            self.model,
            gpu,
            bucket.input_tokens,
            bucket.output_tokens,
            slo,
            self.efficiency_for(gpu),
        )

    def table(self, gpu: GPUType, buckets: Sequence[Bucket], slo: SLO) -> dict[str, float]:
        return {b.name: self.throughput(gpu, b, slo) for b in buckets}

    def calibrate(self, gpu: GPUType, points: Sequence[MeasuredPoint], slo: SLO) -> RooflineModel:
        """A copy whose efficiencies for `gpu` best fit `points` (least squares on log T).

        A weak pull toward the current efficiencies keeps one point from moving both.
        Types never calibrated then use the geometric mean of all fitted efficiencies.
        """
        from scipy.optimize import minimize

        usable = [p for p in points if p.throughput > 0]
        if not usable:
            return self
        base = self.efficiency_for(gpu)
        x0 = [math.log(base.compute), math.log(base.bandwidth)]

        def loss(x: Sequence[float]) -> float:
            eff = base.model_copy(update={"compute": math.exp(x[0]), "bandwidth": math.exp(x[1])})
            total = 0.01 * ((x[0] - x0[0]) ** 2 + (x[1] - x0[1]) ** 2)
            for p in usable:
                t = _throughput(self.model, gpu, p.bucket, slo, eff)
                total += (math.log(max(t, 1e-9)) - math.log(p.throughput)) ** 2
            return total

        bounds = [(math.log(0.02), 0.0), (math.log(0.02), 0.0)]
        result = minimize(loss, x0, method="Powell", bounds=bounds)
        fitted = base.model_copy(
            update={
                "compute": min(1.0, math.exp(result.x[0])),
                "bandwidth": min(1.0, math.exp(result.x[1])),
            }
        )
        per_gpu = {**self.per_gpu, gpu.name: fitted}
        compute = math.exp(sum(math.log(e.compute) for e in per_gpu.values()) / len(per_gpu))
        bandwidth = math.exp(sum(math.log(e.bandwidth) for e in per_gpu.values()) / len(per_gpu))
        default = self.efficiency.model_copy(update={"compute": compute, "bandwidth": bandwidth})
        return RooflineModel(self.model, default, per_gpu)


@functools.lru_cache(maxsize=8192)
def _remembered_throughput(
    model: ModelSpec,
    gpu: GPUType,
    input_tokens: tuple[int, int],
    output_tokens: tuple[int, int],
    slo: SLO,
    eff: Efficiency,
) -> float:
    """`_throughput` of a pure function's arguments, kept: a planner re-plans the same model,
    types and buckets again and again, and each value costs a 60-step bisection."""
    bucket = Bucket(input_tokens=input_tokens, output_tokens=output_tokens)
    return _throughput(model, gpu, bucket, slo, eff)


def _throughput(model: ModelSpec, gpu: GPUType, bucket: Bucket, slo: SLO, eff: Efficiency) -> float:
    if not gpu.has_hardware_figures:
        raise ValueError(
            f"GPU type {gpu.name!r} has no hardware figures (memory_gib, bf16_tflops, "
            "mem_bandwidth_gbps): give them, or profile it"
        )
    memory_gib, tflops = float(gpu.memory_gib or 0), float(gpu.bf16_tflops or 0)
    if model.max_context is not None and (
        bucket.input_tokens[1] + bucket.output_tokens[1] > model.max_context
    ):
        return 0.0
    i, o = bucket.mean_input, bucket.mean_output
    context = i + o / 2
    kv_token = model.kv_bytes_per_token
    free = memory_gib * GIB * GPU_MEMORY_UTILIZATION - model.weight_bytes
    if free <= 0:
        return 0.0
    cap = min(free / (context * kv_token), eff.max_num_seqs, eff.chunk_tokens * o / i)
    bandwidth = float(gpu.mem_bandwidth_gbps or 0) * 1e9 * eff.bandwidth
    flops = tflops * 1e12 * eff.compute
    attention = 4 * model.num_layers * model.hidden_size
    f_decode = 2 * model.num_params + attention * context
    f_prefill = 2 * model.num_params + attention * i / 2
    decode_flops = f_decode / flops
    prefill_flops = (i / o) * f_prefill / flops
    overhead = eff.step_overhead_ms / 1e3

    def step(b: float) -> float:
        decoding = max(b, 1.0)  # a step that decodes anything decodes at least one request
        memory = (model.weight_bytes + decoding * context * kv_token) / bandwidth
        return overhead + max(memory, decoding * decode_flops + b * prefill_flops)

    chunks = math.ceil(i / eff.chunk_tokens)
    own_prefill = i * f_prefill / flops

    def latency(b: float) -> float:
        if slo.metric == "tpot":
            return step(b)
        return step(b) * (0.5 + chunks) + own_prefill

    target = slo.target_ms / 1e3
    z = P99_Z if slo.statistic == "p99" else 0.0

    def feasible(b: float) -> bool:
        peak = b + z * math.sqrt(b)
        return peak <= cap and latency(peak) <= target

    lo, hi = 0.0, cap
    if not feasible(1e-9):
        return 0.0
    if feasible(hi):
        lo = hi
    else:
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if feasible(mid) else (lo, mid)
    return lo / (o * step(lo)) if lo > 0 else 0.0
