"""OpenAI-compatible schemas of ``/v1/chat/completions`` and ``/v1/completions``.

Requests accept what the official client sends; parameters lmaas does not implement are
refused with a clear 400 when set to anything but their neutral value (rather than silently
ignored), and unknown fields are ignored as extensions — except lmaas' own extension
`speculation` (a per-request speculative decoding policy, validated here).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lmaas.gateway.errors import InvalidRequest

__all__ = [
    "ChatChoice",
    "ChatCompletion",
    "ChatCompletionRequest",
    "ChatMessageIn",
    "ChatMessageOut",
    "Completion",
    "CompletionChoice",
    "CompletionRequest",
    "StreamOptions",
    "UsageInfo",
]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class _TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str
    text: str | None = None


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[_TextPart] | None = None
    name: str | None = None

    def text(self, index: int) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.type != "text" or part.text is None:
                raise InvalidRequest(
                    f"messages[{index}]: content parts of type {part.type!r} are not supported; "
                    "this model reads text only",
                    param=f"messages.{index}.content",
                )
            parts.append(part.text)
        return "".join(parts)


class _SamplingRequest(BaseModel):
    """What chat and text completions share."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: int | None = Field(default=None, ge=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    speculation: str | None = Field(
        default=None,
        description="lmaas extension: this request's speculative decoding policy, `off`, "
        "`fixed:K` or `smartspec` (the model service's when unset); with the openai client "
        "`extra_body={'speculation': 'fixed:3'}`.",
    )

    @field_validator("speculation")
    @classmethod
    def _speculation_policy(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from lmaas.engine.speculation.policy import parse_policy  # torch-free

        return str(parse_policy(value))  # SpecPolicyError (a ValueError) says what is valid

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def refuse_unsupported(self) -> None:
        """Raise `InvalidRequest` for options lmaas does not implement."""
        if self.n not in (None, 1):
            raise InvalidRequest("n must be 1: lmaas returns one choice per request", param="n")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) not in (None, 0, 0.0):
                raise InvalidRequest(f"{name} is not supported; leave it unset", param=name)
        if self.logit_bias:
            raise InvalidRequest("logit_bias is not supported; leave it unset", param="logit_bias")
        if self.stream_options is not None and not self.stream:
            raise InvalidRequest(
                "stream_options is only allowed with stream=true", param="stream_options"
            )


class ChatCompletionRequest(_SamplingRequest):
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    response_format: dict[str, Any] | None = None

    def refuse_unsupported(self) -> None:
        super().refuse_unsupported()
        if self.logprobs:
            raise InvalidRequest(
                "logprobs are not supported yet; leave them unset", param="logprobs"
            )
        if self.tools or self.functions:
            raise InvalidRequest("tools and functions are not supported", param="tools")
        if self.response_format and self.response_format.get("type", "text") != "text":
            raise InvalidRequest(
                "only response_format {'type': 'text'} is supported", param="response_format"
            )

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_SamplingRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(default=16, ge=1)
    echo: bool | None = False
    suffix: str | None = None
    best_of: int | None = None
    logprobs: int | None = None

    def refuse_unsupported(self) -> None:
        super().refuse_unsupported()
        if self.echo:
            raise InvalidRequest("echo is not supported", param="echo")
        if self.suffix:
            raise InvalidRequest("suffix is not supported", param="suffix")
        if self.best_of not in (None, 1):
            raise InvalidRequest("best_of must be 1", param="best_of")
        if self.logprobs:
            raise InvalidRequest("logprobs are not supported yet", param="logprobs")

    def single_prompt(self) -> str | list[int]:
        """The one prompt of the request (text or token ids)."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return prompt
        if prompt and all(isinstance(p, int) for p in prompt):
            return list(prompt)  # type: ignore[arg-type]
        if len(prompt) == 1:
            return prompt[0]  # type: ignore[return-value]
        raise InvalidRequest("send exactly one prompt per request", param="prompt")


class UsageInfo(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatMessageOut
    finish_reason: str | None
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo
    system_fingerprint: str | None = None


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: str | None
    logprobs: None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo
    system_fingerprint: str | None = None
