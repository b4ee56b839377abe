"""From a `GenerateRequest` to prompt tokens and resolved limits, or a clear refusal.

Exactly one of `prompt`, `messages` (rendered with the model's chat template) or
`prompt_token_ids` must be given; the prompt must leave room for at least one generated
token in the model's context and fit in the KV cache; `max_tokens` defaults to the rest
of the context. Every refusal is an `EngineRequestError` saying what to change.
"""

from __future__ import annotations

from dataclasses import dataclass

from lmaas.engine.interface import EngineRequestError
from lmaas.engine.tokenizer import ChatTemplateError, Tokenizer
from lmaas.protocol import GenerateRequest

__all__ = ["InputProcessor", "PreparedRequest"]


@dataclass
class PreparedRequest:
    request: GenerateRequest
    prompt_token_ids: list[int]
    max_tokens: int
    stop_token_ids: set[int]


class InputProcessor:
    def __init__(
        self, tokenizer: Tokenizer, *, max_model_len: int, vocab_size: int, max_cache_tokens: int
    ) -> None:
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.vocab_size = vocab_size
        self.max_cache_tokens = max_cache_tokens

    def process(self, request: GenerateRequest) -> PreparedRequest:
        ids = self._prompt_ids(request)
        n = len(ids)
        if n >= self.max_model_len:
            raise EngineRequestError(
                f"the prompt has {n} tokens but the model's context is {self.max_model_len} tokens "
                "(prompt and output together): shorten the prompt",
                code="context_length_exceeded",
                param="messages" if request.messages is not None else "prompt",
            )
        if n + 1 > self.max_cache_tokens:
            raise EngineRequestError(
                f"the prompt has {n} tokens but this runtime's KV cache holds only "
                f"{self.max_cache_tokens}: shorten the prompt (or the operator raises "
                "LMAAS_KV_CACHE_BYTES)",
                code="context_length_exceeded",
                param="prompt",
            )
        params = request.sampling
        room = self.max_model_len - n
        if params.max_tokens is not None and params.max_tokens > room:
            raise EngineRequestError(
                f"this model's context is {self.max_model_len} tokens; the request asks for "
                f"{n + params.max_tokens} ({n} in the prompt + {params.max_tokens} max_tokens): "
                "lower max_tokens or shorten the prompt",
                code="context_length_exceeded",
                param="max_tokens",
            )
        stop_ids = {int(t) for t in params.stop_token_ids}
        if not params.ignore_eos:
            stop_ids |= self.tokenizer.eos_token_ids
        return PreparedRequest(
            request=request,
            prompt_token_ids=ids,
            max_tokens=params.max_tokens or room,
            stop_token_ids=stop_ids,
        )

    def _prompt_ids(self, request: GenerateRequest) -> list[int]:
        given = [
            name
            for name in ("prompt", "messages", "prompt_token_ids")
            if getattr(request, name) is not None
        ]
        if len(given) != 1:
            raise EngineRequestError(
                "give exactly one of prompt, messages or prompt_token_ids "
                f"(got {', '.join(given) or 'none'})",
                param="prompt",
            )
        if request.prompt_token_ids is not None:
            ids = list(request.prompt_token_ids)
            bad = [t for t in ids if not 0 <= t < self.vocab_size]
            if bad:
                raise EngineRequestError(
                    f"prompt_token_ids holds ids outside the vocabulary (0..{self.vocab_size - 1}): "
                    f"{bad[:5]}",
                    param="prompt_token_ids",
                )
        elif request.messages is not None:
            if not request.messages:
                raise EngineRequestError(
                    "messages is empty: send at least one message", param="messages"
                )
            try:
                ids = self.tokenizer.encode_chat([m.model_dump() for m in request.messages])
            except ChatTemplateError as exc:
                raise EngineRequestError(str(exc), param="messages") from exc
        else:
            ids = self.tokenizer.encode(request.prompt or "")
        if not ids:
            raise EngineRequestError("the prompt is empty: send some text", param="prompt")
        return ids
