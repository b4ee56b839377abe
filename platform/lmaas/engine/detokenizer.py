"""Streaming output text: incremental detokenization and stop conditions.

`IncrementalDetokenizer` turns tokens into text as they come, correct for characters
split across tokens (nothing is emitted until a character is complete), with the end of
the prompt as context so that leading spaces decode as they would in one piece.

`StopChecker` decides when a sequence ends (a stop token, EOS unless ignored, a stop
string, max tokens) and what text may be streamed now: text that could be the beginning
of a stop string is held back until it is clear it is not one, and a matched stop string
is never sent.
"""

from __future__ import annotations

from tokenizers.decoders import DecodeStream

from lmaas.engine.tokenizer import Tokenizer

__all__ = ["IncrementalDetokenizer", "StopChecker"]

_PROMPT_CONTEXT = 6


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Tokenizer, prompt_token_ids: list[int]) -> None:
        self._tokenizer = tokenizer.backend
        context = prompt_token_ids[-_PROMPT_CONTEXT:]
        self._stream = DecodeStream(context, skip_special_tokens=True)

    def step(self, token_id: int) -> str:
        """The text that `token_id` completes ('' while a character is still partial)."""
        return self._stream.step(self._tokenizer, token_id) or ""


class StopChecker:
    def __init__(
        self,
        *,
        stop: list[str],
        stop_token_ids: set[int],
        max_tokens: int,
    ) -> None:
        self.stops = [s for s in stop if s]
        self.stop_token_ids = stop_token_ids
        self.max_tokens = max_tokens
        self._pending = ""

    def step(self, token_id: int, text: str, num_output_tokens: int) -> tuple[str, str | None]:
        """Feed one generated token and its text; returns (text to send now, finish reason)."""
        if token_id in self.stop_token_ids:
            return self._flush(), "stop"
        self._pending += text
        cut = self._first_stop()
        if cut is not None:
            out, self._pending = self._pending[:cut], ""
            return out, "stop"
        if num_output_tokens >= self.max_tokens:
            return self._flush(), "length"
        hold = self._held_back()
        out = self._pending[: len(self._pending) - hold]
        self._pending = self._pending[len(self._pending) - hold :]
        return out, None

    def flush(self) -> str:
        """What is still held back (sent when the sequence ends for another reason)."""
        return self._flush()

    def _flush(self) -> str:
        out, self._pending = self._pending, ""
        return out

    def _first_stop(self) -> int | None:
        found = [i for i in (self._pending.find(s) for s in self.stops) if i >= 0]
        return min(found) if found else None

    def _held_back(self) -> int:
        """Length of the longest tail of the pending text that starts some stop string."""
        best = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self._pending)), best, -1):
                if s.startswith(self._pending[-k:]):
                    best = k
                    break
        return best
