"""From sampled tokens to the stream a caller sees: text, token ids, logprobs, the end.

One `RequestState` per request keeps its incremental detokenizer, its stop checker and its
sampling row (with the request's own random generator when it has a seed).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmaas.engine.detokenizer import IncrementalDetokenizer, StopChecker
from lmaas.engine.input_processor import PreparedRequest
from lmaas.engine.sampler import SamplingRow
from lmaas.engine.sequence import Sequence
from lmaas.engine.tokenizer import Tokenizer
from lmaas.protocol import ErrorInfo, GenerateEvent, TokenLogprob, Usage

__all__ = ["OutputProcessor", "RequestState"]


@dataclass(eq=False)
class RequestState:
    seq: Sequence
    detokenizer: IncrementalDetokenizer
    stop: StopChecker
    row: SamplingRow
    num_completion_tokens: int = 0


class OutputProcessor:
    def __init__(self, tokenizer: Tokenizer, device: torch.device) -> None:
        self.tokenizer = tokenizer
        self.device = device

    def new_state(self, prepared: PreparedRequest, seq: Sequence) -> RequestState:
        params = prepared.request.sampling
        generator = None
        if params.seed is not None and params.temperature > 0:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(params.seed)
        return RequestState(
            seq=seq,
            detokenizer=IncrementalDetokenizer(self.tokenizer, prepared.prompt_token_ids),
            stop=StopChecker(
                stop=list(params.stop),
                stop_token_ids=prepared.stop_token_ids,
                max_tokens=prepared.max_tokens,
            ),
            row=SamplingRow(
                temperature=params.temperature,
                top_p=params.top_p,
                top_k=params.top_k,
                generator=generator,
                num_logprobs=params.logprobs,
            ),
        )

    def on_tokens(
        self,
        state: RequestState,
        token_ids: list[int],
        logprobs: list[tuple[float, list[tuple[int, float]]]] | None,
    ) -> tuple[GenerateEvent, str | None]:
        """The event for newly generated tokens, and the finish reason if they end the request."""
        text_parts: list[str] = []
        emitted: list[int] = []
        reason = None
        for token_id in token_ids:
            state.num_completion_tokens += 1
            emitted.append(token_id)
            piece = state.detokenizer.step(token_id)
            out, reason = state.stop.step(token_id, piece, state.num_completion_tokens)
            text_parts.append(out)
            if reason is not None:
                break
        event = GenerateEvent(text="".join(text_parts), token_ids=emitted)
        if logprobs is not None:
            event.logprobs = [
                self._logprob(t, lp) for t, lp in zip(emitted, logprobs, strict=False)
            ]
        if reason is not None:
            event.finish_reason = reason  # type: ignore[assignment]
            event.usage = self.usage(state)
        return event, reason

    def finish(self, state: RequestState, reason: str, error: str | None = None) -> GenerateEvent:
        """The last event of a request that ends for a reason other than its tokens."""
        return GenerateEvent(
            text=state.stop.flush() if reason != "error" else "",
            finish_reason=reason,  # type: ignore[arg-type]
            usage=self.usage(state),
            error=ErrorInfo(message=error, type="server_error") if error else None,
        )

    def usage(self, state: RequestState) -> Usage:
        return Usage(
            prompt_tokens=state.seq.num_prompt_tokens, completion_tokens=state.num_completion_tokens
        )

    def _logprob(self, token_id: int, entry: tuple[float, list[tuple[int, float]]]) -> TokenLogprob:
        logprob, top = entry
        text = self.tokenizer.token_text
        return TokenLogprob(
            token=text(token_id),
            token_id=token_id,
            logprob=logprob,
            top_logprobs={text(t): lp for t, lp in top},
        )
