"""The runtime's internal HTTP API: the messages the gateway and a runtime exchange.

A library part, so that the gateway (the client) and the runtime (the server) share one
definition without importing each other.

Endpoints of a runtime (all JSON unless said):

- ``POST /internal/generate`` — body `GenerateRequest`; answers ``application/x-ndjson``,
  one `GenerateEvent` per line, the last one carrying `finish_reason` and `usage`. A request
  the runtime refuses before it starts (prompt too long, unknown adapter…) answers 4xx with
  an `ErrorBody`.
- ``GET /internal/info`` — `RuntimeInfo`: the served model, context size, LoRA target shapes.
- ``GET /internal/adapters`` — `list[AdapterState]`; ``POST /internal/adapters`` —
  `LoadAdapterRequest`; ``DELETE /internal/adapters/{adapter_id}``.
- ``GET /healthz`` (process alive), ``GET /readyz`` (model loaded), ``GET /metrics``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

__all__ = [
    "AdapterState",
    "ChatMessage",
    "ErrorBody",
    "ErrorInfo",
    "GenerateEvent",
    "GenerateRequest",
    "LoadAdapterRequest",
    "LoraTarget",
    "RuntimeInfo",
    "SamplingParams",
    "TokenLogprob",
    "Usage",
]

FinishReason = Literal["stop", "length", "error", "cancelled"]


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str


class SamplingParams(BaseModel):
    """How to sample; the defaults are OpenAI's."""

    max_tokens: int | None = Field(default=None, ge=1, description="None = up to the context")
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0, description="0 = off")
    seed: int | None = None
    stop: list[str] = Field(default_factory=list, max_length=4)
    stop_token_ids: list[int] = Field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = Field(
        default=None, ge=0, le=20, description="top-n per token; None = off"
    )
    speculation: str | None = Field(
        default=None, description="per-request speculation policy: off, fixed:k, smartspec"
    )


class GenerateRequest(BaseModel):
    """One generation. Exactly one of `prompt`, `messages` or `prompt_token_ids` is set."""

    request_id: str
    tenant_id: str = ""
    adapter_id: str | None = Field(default=None, description="None = the base model alone")
    adapter_uri: str | None = Field(
        default=None, description="where the runtime loads the adapter from if it is not loaded"
    )
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    prompt_token_ids: list[int] | None = None
    sampling: SamplingParams = Field(default_factory=SamplingParams)


class TokenLogprob(BaseModel):
    token: str
    token_id: int
    logprob: float
    top_logprobs: dict[str, float] = Field(default_factory=dict)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class ErrorInfo(BaseModel):
    """An error in the OpenAI error-body shape."""

    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    error: ErrorInfo


class GenerateEvent(BaseModel):
    """A piece of output: new text and tokens; the last event has `finish_reason` and `usage`."""

    text: str = ""
    token_ids: list[int] = Field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    error: ErrorInfo | None = None


class LoraTarget(BaseModel):
    """A linear layer an adapter may target: its input and output features."""

    in_features: int
    out_features: int


class RuntimeInfo(BaseModel):
    model: str
    architecture: str = "llama"
    max_context: int
    vocab_size: int
    num_layers: int
    dtype: str
    device: str
    engine: str
    lora_targets: dict[str, LoraTarget] = Field(
        default_factory=dict, description="module name (q_proj, …) → shapes"
    )
    max_lora_rank: int = 64


class LoadAdapterRequest(BaseModel):
    adapter_id: str
    uri: str
    pin: bool = False


class AdapterState(BaseModel):
    adapter_id: str
    rank: int
    location: Literal["device", "host"]
    pinned: bool = False
