"""What is planned for: the model a service serves and the latency SLO it must meet.

`ModelSpec` holds the few architecture figures the performance model needs (weights, KV
cache per token); `known_models()` names common ones so a person can say `llama-2-7b`
instead of typing them. `SLO` is the one statistic of one latency a plan must keep.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["SLO", "ModelSpec", "known_models", "model_by_name"]

GIB = 1024**3


class ModelSpec(BaseModel):
    """A decoder-only transformer, as far as memory and FLOPs go."""

    model_config = ConfigDict(frozen=True)

    name: str
    num_params: float = Field(gt=0, description="parameters (e.g. 6.74e9)")
    num_layers: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    num_kv_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    bytes_per_param: float = Field(default=2, gt=0, description="2 = bf16/fp16 weights")
    kv_bytes_per_value: float = Field(default=2, gt=0, description="2 = bf16 KV cache")
    max_context: int | None = Field(default=None, gt=0, description="tokens; None = unbounded")

    @property
    def weight_bytes(self) -> float:
        return self.num_params * self.bytes_per_param

    @property
    def kv_bytes_per_token(self) -> float:
        """Key and value of every layer for one token."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.kv_bytes_per_value


class SLO(BaseModel):
    """A latency objective: `statistic` of `metric` over requests must be ≤ `target_ms`.

    TTFT is the time to the first token; TPOT the time per output token after the first
    (per request: (end − first token) / (output tokens − 1)).
    """

    model_config = ConfigDict(frozen=True)

    metric: Literal["tpot", "ttft"] = "tpot"
    statistic: Literal["mean", "p99"] = "mean"
    target_ms: float = Field(gt=0)

    def describe(self) -> str:
        return f"{self.statistic} {self.metric.upper()} ≤ {self.target_ms:g} ms"


def known_models() -> dict[str, ModelSpec]:
    """Architecture figures of common models, from their published configs."""
    specs = [
        ModelSpec(
            name="llama-2-7b",
            num_params=6.74e9,
            num_layers=32,
            hidden_size=4096,
            num_kv_heads=32,
            head_dim=128,
            max_context=4096,
        ),
        ModelSpec(
            name="llama-2-13b",
            num_params=13.0e9,
            num_layers=40,
            hidden_size=5120,
            num_kv_heads=40,
            head_dim=128,
            max_context=4096,
        ),
        ModelSpec(
            name="llama-2-70b",
            num_params=69.0e9,
            num_layers=80,
            hidden_size=8192,
            num_kv_heads=8,
            head_dim=128,
            max_context=4096,
        ),
        ModelSpec(
            name="llama-3-8b",
            num_params=8.03e9,
            num_layers=32,
            hidden_size=4096,
            num_kv_heads=8,
            head_dim=128,
            max_context=8192,
        ),
        ModelSpec(
            name="smollm2-135m",
            num_params=1.35e8,
            num_layers=30,
            hidden_size=576,
            num_kv_heads=3,
            head_dim=64,
            max_context=8192,
        ),
    ]
    return {spec.name: spec for spec in specs}


def model_by_name(name: str) -> ModelSpec:
    models = known_models()
    try:
        return models[name.lower()]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}: use one of {', '.join(models)} or give a model file"
        ) from None
