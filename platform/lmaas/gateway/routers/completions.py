"""``POST /v1/chat/completions`` and ``POST /v1/completions`` (OpenAI-compatible).

Streaming answers Server-Sent Events ending with ``data: [DONE]``; with
``stream_options.include_usage`` every chunk has ``"usage": null`` and one last chunk with
no choices carries the usage. Usage is what the runtime counted: the exact prompt tokens
(after the chat template) and completion tokens.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from lmaas.gateway.deps import StateDep, TenantRepo
from lmaas.gateway.errors import ApiError, BadGateway
from lmaas.gateway.generation import Generation, new_request_id, resolve_target
from lmaas.gateway.schemas.completions import (
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    ChatMessageOut,
    Completion,
    CompletionChoice,
    CompletionRequest,
    UsageInfo,
)
from lmaas.gateway.state import GatewayState
from lmaas.protocol import ChatMessage, GenerateRequest, SamplingParams

__all__ = ["router"]

router = APIRouter(tags=["completions"])

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class _GenerationResponse(StreamingResponse):
    """An SSE response that always finishes its generation, even if the client left
    before the first byte (when the body iterator never starts)."""

    def __init__(self, content: AsyncIterator[bytes], generation: Generation) -> None:
        super().__init__(content, media_type="text/event-stream", headers=_SSE_HEADERS)
        self._generation = generation

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._generation.finish()


def _sampling(
    body: ChatCompletionRequest | CompletionRequest, max_tokens: int | None
) -> SamplingParams:
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        seed=body.seed,
        stop=body.stop_list(),
        speculation=body.speculation,
    )


def _usage(generation: Generation) -> UsageInfo:
    usage = generation.usage_or_zero()
    return UsageInfo(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
    )


def _sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


async def _stream(
    generation: Generation,
    include_usage: bool,
    chunk: Callable[[str | None, str | None, bool], dict[str, Any] | None],
    usage_chunk: Callable[[], dict[str, Any]],
) -> AsyncIterator[bytes]:
    """SSE bytes of a generation; `chunk(text, finish_reason, first)` shapes one chunk."""

    def with_usage(payload: dict[str, Any] | None) -> dict[str, Any]:
        payload = dict(payload or {})
        if include_usage:
            payload["usage"] = None
        return payload

    try:
        if (opening := chunk(None, None, True)) is not None:
            yield _sse(with_usage(opening))
        failed = False
        try:
            async for event in generation.events():
                if event.error is not None:
                    yield _sse({"error": event.error.model_dump()})
                    break
                if event.text:
                    yield _sse(with_usage(chunk(event.text, None, False)))
                if event.finish_reason is not None:
                    yield _sse(with_usage(chunk(None, event.finish_reason, False)))
            else:
                if generation.finish_reason is None:
                    yield _sse(BadGateway("the model runtime ended the stream early").body())
        except ApiError as exc:
            # The replica failed mid-stream (it died, say): part of the answer is out, so it
            # is not retried elsewhere; the client learns why the stream ends here.
            failed = True
            yield _sse(exc.body())
        if include_usage and generation.error is None and not failed:
            yield _sse(usage_chunk())
        yield _sse("[DONE]")
    finally:
        await generation.finish()


async def _start(
    state: GatewayState, repo: TenantRepo, model: str, request: GenerateRequest
) -> Generation:
    target = await run_in_threadpool(resolve_target, repo, model)
    return await Generation.start(state, repo.tenant, target, request)


@router.post("/v1/chat/completions", response_model=ChatCompletion)
async def chat_completions(
    body: ChatCompletionRequest, repo: TenantRepo, state: StateDep
) -> ChatCompletion | StreamingResponse:
    """Chat with a base model or one of your adapters (`model` = its name)."""
    body.refuse_unsupported()
    messages = [ChatMessage(role=m.role, content=m.text(i)) for i, m in enumerate(body.messages)]
    request_id = new_request_id("chatcmpl")
    generate = GenerateRequest(
        request_id=request_id,
        messages=messages,
        sampling=_sampling(body, body.token_limit()),
    )
    generation = await _start(state, repo, body.model, generate)

    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        def chunk(text: str | None, finish: str | None, first: bool) -> dict[str, Any] | None:
            delta: dict[str, Any] = {}
            if first:
                delta = {"role": "assistant", "content": ""}
            elif text is not None:
                delta = {"content": text}
            return {
                "id": request_id,
                "object": "chat.completion.chunk",
                "created": generation.created,
                "model": body.model,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }

        def usage_chunk() -> dict[str, Any]:
            return {
                "id": request_id,
                "object": "chat.completion.chunk",
                "created": generation.created,
                "model": body.model,
                "choices": [],
                "usage": _usage(generation).model_dump(),
            }

        return _GenerationResponse(
            _stream(generation, include_usage, chunk, usage_chunk), generation
        )

    text = await generation.collect()
    return ChatCompletion(
        id=request_id,
        created=generation.created,
        model=body.model,
        choices=[
            ChatChoice(message=ChatMessageOut(content=text), finish_reason=generation.finish_reason)
        ],
        usage=_usage(generation),
    )


@router.post("/v1/completions", response_model=Completion)
async def completions(
    body: CompletionRequest, repo: TenantRepo, state: StateDep
) -> Completion | StreamingResponse:
    """Continue a prompt (text or token ids) with a base model or one of your adapters."""
    body.refuse_unsupported()
    prompt = body.single_prompt()
    request_id = new_request_id("cmpl")
    generate = GenerateRequest(
        request_id=request_id,
        prompt=prompt if isinstance(prompt, str) else None,
        prompt_token_ids=prompt if isinstance(prompt, list) else None,
        sampling=_sampling(body, body.max_tokens),
    )
    generation = await _start(state, repo, body.model, generate)

    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        def chunk(text: str | None, finish: str | None, first: bool) -> dict[str, Any] | None:
            if first:
                return None
            return {
                "id": request_id,
                "object": "text_completion",
                "created": generation.created,
                "model": body.model,
                "choices": [
                    {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
                ],
            }

        def usage_chunk() -> dict[str, Any]:
            return {
                "id": request_id,
                "object": "text_completion",
                "created": generation.created,
                "model": body.model,
                "choices": [],
                "usage": _usage(generation).model_dump(),
            }

        return _GenerationResponse(
            _stream(generation, include_usage, chunk, usage_chunk), generation
        )

    text = await generation.collect()
    return Completion(
        id=request_id,
        created=generation.created,
        model=body.model,
        choices=[CompletionChoice(text=text, finish_reason=generation.finish_reason)],
        usage=_usage(generation),
    )
