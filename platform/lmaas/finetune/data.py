"""Fine-tune data: the chat JSONL format, its validation, and its tokenization.

The format is OpenAI's chat fine-tune format: one JSON object per line,
``{"messages": [{"role": "system"|"user"|"assistant", "content": "…"}, …]}``; an assistant
message may carry ``"weight": 0`` to keep it out of the loss. Validation reads the file line
by line and names the line of every problem, so a person can fix the file.

Tokenization renders each conversation with the base model's own chat template and marks
the tokens of assistant messages (the only ones the loss sees). Assistant spans are found
without knowing the template: the conversation is rendered up to each assistant message
(with the generation prompt) and up to its end; the characters in between are the
message as the template writes it, end-of-turn marker included. Templates that re-render
earlier turns differently (prefixes not stable) get one sequence per assistant turn, each
ending with that turn, whose content is found in the rendered text.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

__all__ = [
    "ALLOWED_ROLES",
    "ChatExample",
    "DataFileError",
    "LineError",
    "TokenizedExample",
    "load_chat_jsonl",
    "tokenize_example",
    "tokenize_examples",
    "validate_chat_jsonl",
]

ALLOWED_ROLES = ("system", "user", "assistant")
_MESSAGE_KEYS = {"role", "content", "name", "weight"}
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_LINES = 100_000


@dataclass(frozen=True)
class LineError:
    """One problem of a data file, at a 1-based line number (0: the whole file)."""

    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}" if self.line else self.message


class DataFileError(ValueError):
    """A data file that cannot be used; `errors` names each bad line (the first few)."""

    def __init__(self, errors: Sequence[LineError], *, total: int | None = None) -> None:
        self.errors = list(errors)
        self.total = total if total is not None else len(self.errors)
        shown = "; ".join(str(e) for e in self.errors)
        more = self.total - len(self.errors)
        suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more > 0 else ""
        super().__init__(f"invalid fine-tune file: {shown}{suffix}")

    @property
    def line(self) -> int:
        """The line of the first problem."""
        return self.errors[0].line if self.errors else 0


@dataclass(frozen=True)
class ChatExample:
    """One validated conversation: messages as dicts with `role`, `content` (+ `weight`)."""

    line: int
    messages: tuple[dict[str, Any], ...]


def _check_message(index: int, message: Any) -> str | None:
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        return f"{where} must be an object with 'role' and 'content'"
    unknown = sorted(set(message) - _MESSAGE_KEYS)
    if unknown:
        return (
            f"{where} has unsupported key(s) {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(sorted(_MESSAGE_KEYS))} (tool calls are not supported)"
        )
    role = message.get("role")
    if role is None:
        return f"{where} has no 'role'"
    if role not in ALLOWED_ROLES:
        return f"{where} has role {role!r}; use one of {', '.join(ALLOWED_ROLES)}"
    if role == "system" and index != 0:
        return f"{where}: a 'system' message may only come first"
    content = message.get("content")
    if not isinstance(content, str):
        return f"{where} ('{role}') must have 'content' as a string"
    if not content.strip():
        return f"{where} ('{role}') has empty content"
    if "name" in message and not isinstance(message["name"], str):
        return f"{where}: 'name' must be a string"
    if "weight" in message:
        if role != "assistant":
            return f"{where}: 'weight' is only allowed on assistant messages"
        if message["weight"] not in (0, 1) or isinstance(message["weight"], bool):
            return f"{where}: 'weight' must be 0 or 1"
    return None


def _parse_line(raw: bytes, number: int) -> ChatExample | LineError | None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return LineError(number, "is not valid UTF-8 text")
    if not text.strip():
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        return LineError(number, f"is not valid JSON ({exc.msg} at column {exc.colno})")
    if not isinstance(record, dict):
        return LineError(number, 'must be a JSON object like {"messages": [...]}')
    unknown = sorted(set(record) - {"messages"})
    if unknown:
        return LineError(
            number,
            f"has unsupported key(s) {', '.join(map(repr, unknown))}; only 'messages' is allowed",
        )
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        return LineError(number, "must have a non-empty 'messages' list")
    for index, message in enumerate(messages):
        problem = _check_message(index, message)
        if problem:
            return LineError(number, problem)
    if not any(m["role"] == "assistant" and m.get("weight", 1) == 1 for m in messages):
        return LineError(number, "has no assistant message to learn from (with weight 1)")
    return ChatExample(number, tuple(messages))


def _read_all(source: bytes | str | Path | BinaryIO, max_bytes: int) -> bytes:
    if isinstance(source, bytes):
        data = source
    elif isinstance(source, str | Path):
        path = Path(source)
        size = path.stat().st_size
        if size > max_bytes:
            raise DataFileError([LineError(0, _too_big(size, max_bytes))])
        data = path.read_bytes()
    else:
        data = source.read(max_bytes + 1)
    if len(data) > max_bytes:
        exact = isinstance(source, bytes | str | Path)
        raise DataFileError([LineError(0, _too_big(len(data) if exact else None, max_bytes))])
    return data


def _too_big(size: int | None, max_bytes: int) -> str:
    shown = f" ({size} bytes)" if size is not None else ""
    return (
        f"the file is too large{shown}: the limit is {max_bytes} bytes; split it into smaller files"
    )


def validate_chat_jsonl(
    source: bytes | str | Path | BinaryIO,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_lines: int = DEFAULT_MAX_LINES,
    max_errors: int = 10,
) -> list[ChatExample]:
    """Parse and check a chat JSONL file; the examples, or `DataFileError` naming bad lines.

    Blank lines are skipped (their numbers still count). At most `max_errors` problems are
    listed; the error says how many more there were.
    """
    data = _read_all(source, max_bytes)
    examples: list[ChatExample] = []
    errors: list[LineError] = []
    total_errors = 0
    for number, raw in enumerate(io.BytesIO(data), start=1):
        if number > max_lines:
            raise DataFileError(
                [LineError(number, f"the file has more than {max_lines} lines: split it")]
            )
        parsed = _parse_line(raw.rstrip(b"\r\n"), number)
        if isinstance(parsed, LineError):
            total_errors += 1
            if len(errors) < max_errors:
                errors.append(parsed)
        elif parsed is not None:
            examples.append(parsed)
    if errors:
        raise DataFileError(errors, total=total_errors)
    if not examples:
        raise DataFileError([LineError(0, "the file has no examples (it is empty)")])
    return examples


def load_chat_jsonl(path: str | Path, **limits: int) -> list[ChatExample]:
    """`validate_chat_jsonl` on a file path (the trainer's entry point)."""
    return validate_chat_jsonl(Path(path), **limits)


@dataclass(frozen=True)
class TokenizedExample:
    """Token ids of one rendered conversation and, per token, whether the loss sees it."""

    input_ids: tuple[int, ...]
    loss_mask: tuple[bool, ...]
    line: int = 0

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def num_loss_tokens(self) -> int:
        return sum(self.loss_mask)


def _render(tokenizer: Any, messages: Sequence[dict[str, Any]], generation_prompt: bool) -> str:
    chat = [{k: v for k, v in m.items() if k != "weight"} for m in messages]
    if not chat:
        return ""
    text = tokenizer.apply_chat_template(
        chat, tokenize=False, add_generation_prompt=generation_prompt
    )
    return str(text)


def _assistant_span(
    tokenizer: Any, messages: Sequence[dict[str, Any]], i: int, full: str
) -> tuple[int, int] | None:
    """Character span of assistant message `i` inside `full`, or None if prefixes drift."""
    end_text = _render(tokenizer, messages[: i + 1], False)
    if not full.startswith(end_text):
        return None
    for generation_prompt in (True, False):
        start_text = _render(tokenizer, messages[:i], generation_prompt)
        if end_text.startswith(start_text) and len(start_text) < len(end_text):
            return len(start_text), len(end_text)
    return None


def _last_message_span(text: str, content: str) -> tuple[int, int] | None:
    """The span of the last message in `text`: its content (as the template wrote it) to the
    end of the text (the end-of-turn marker included)."""
    for needle in (content, content.strip()):
        at = text.rfind(needle)
        if needle and at >= 0:
            return at, len(text)
    return None


def _encode(
    tokenizer: Any, text: str, spans: Sequence[tuple[int, int]]
) -> tuple[list[int], list[bool]]:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    mask = []
    for start, end in enc["offset_mapping"]:
        # A token belongs to the loss if it starts inside an assistant span (a token that
        # merges the span's first character with the header before it starts outside).
        inside = any(a <= start < b for a, b in spans) and end > start
        mask.append(inside)
    return ids, mask


def tokenize_example(
    tokenizer: Any, example: ChatExample | Sequence[dict[str, Any]], max_seq_len: int
) -> list[TokenizedExample]:
    """Token ids and assistant-only loss mask of one conversation (usually one sequence).

    A conversation longer than `max_seq_len` tokens is cut at the end; a cut that leaves no
    assistant token yields no sequence.
    """
    messages = example.messages if isinstance(example, ChatExample) else tuple(example)
    line = example.line if isinstance(example, ChatExample) else 0
    trained = [
        i for i, m in enumerate(messages) if m["role"] == "assistant" and m.get("weight", 1) == 1
    ]
    full = _render(tokenizer, messages, False)
    spans = [_assistant_span(tokenizer, messages, i, full) for i in trained]
    if all(s is not None for s in spans):
        texts = [(full, [s for s in spans if s is not None])]
    else:
        # The template renders earlier turns differently once later turns exist: train each
        # assistant turn on its own prefix, exactly as the model sees it when generating it.
        texts = []
        for i in trained:
            part = _render(tokenizer, messages[: i + 1], False)
            span = _last_message_span(part, messages[i]["content"])
            if span is None:
                raise ValueError(
                    f"line {line}: cannot locate assistant message {i} in the rendered chat "
                    "template of this model"
                )
            texts.append((part, [span]))
    out = []
    for text, text_spans in texts:
        ids, mask = _encode(tokenizer, text, text_spans)
        ids, mask = ids[:max_seq_len], mask[:max_seq_len]
        if any(mask[1:]):  # the first token is never predicted
            out.append(TokenizedExample(tuple(ids), tuple(mask), line))
    return out


def tokenize_examples(
    tokenizer: Any, examples: Iterable[ChatExample], max_seq_len: int
) -> tuple[list[TokenizedExample], int]:
    """All sequences of `examples`, and how many conversations were dropped by truncation."""
    out: list[TokenizedExample] = []
    dropped = 0
    for example in examples:
        sequences = tokenize_example(tokenizer, example, max_seq_len)
        if not sequences:
            dropped += 1
        out.extend(sequences)
    return out, dropped
