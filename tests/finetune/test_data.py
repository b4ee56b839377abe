"""Chat JSONL validation (line numbers in every error) and assistant-only token masks."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from lmaas.finetune.data import (
    ChatExample,
    DataFileError,
    tokenize_example,
    validate_chat_jsonl,
)

GOOD = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
    ]
}


def jsonl(*rows: object) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()


def test_valid_file_parses_and_counts_lines_across_blank_ones() -> None:
    examples = validate_chat_jsonl(jsonl(GOOD, "", "   ", GOOD))
    assert [e.line for e in examples] == [1, 4]
    assert examples[0].messages[2]["content"] == "Paris."


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ('{"messages": [', "line 2: is not valid JSON"),
        ("[1, 2]", "line 2: must be a JSON object"),
        (
            '{"prompt": "x", "completion": "y"}',
            "line 2: has unsupported key(s) 'completion', 'prompt'",
        ),
        ('{"messages": []}', "line 2: must have a non-empty 'messages' list"),
        (
            '{"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]}',
            "line 2: messages[0] has role 'robot'; use one of system, user, assistant",
        ),
        ('{"messages": [{"content": "hi"}]}', "line 2: messages[0] has no 'role'"),
        (
            '{"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "x"}]}',
            "line 2: messages[0] ('user') has empty content",
        ),
        (
            '{"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}]}',
            "line 2: messages[0] ('user') must have 'content' as a string",
        ),
        (
            '{"messages": [{"role": "user", "content": "hi"}]}',
            "line 2: has no assistant message to learn from",
        ),
        (
            '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x", "weight": 0}]}',
            "line 2: has no assistant message to learn from",
        ),
        (
            '{"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}, {"role": "assistant", "content": "c"}]}',
            "line 2: messages[1]: a 'system' message may only come first",
        ),
        (
            '{"messages": [{"role": "user", "content": "a", "weight": 1}, {"role": "assistant", "content": "c"}]}',
            "line 2: messages[0]: 'weight' is only allowed on assistant messages",
        ),
        (
            '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "c", "tool_calls": []}]}',
            "tool calls are not supported",
        ),
    ],
)
def test_bad_line_is_named_with_its_number(line: str, needle: str) -> None:
    with pytest.raises(DataFileError) as err:
        validate_chat_jsonl(jsonl(GOOD, line, GOOD))
    assert needle in str(err.value)
    assert err.value.line == 2


def test_invalid_utf8_is_named() -> None:
    data = jsonl(GOOD) + b'{"messages": "\xff"}\n'
    with pytest.raises(DataFileError, match="line 2: is not valid UTF-8"):
        validate_chat_jsonl(data)


def test_every_bad_line_is_listed_up_to_a_limit() -> None:
    rows = [GOOD] + ["not json"] * 15
    with pytest.raises(DataFileError) as err:
        validate_chat_jsonl(jsonl(*rows), max_errors=3)
    assert [e.line for e in err.value.errors] == [2, 3, 4]
    assert err.value.total == 15
    assert "(and 12 more problems)" in str(err.value)


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"])
def test_empty_file_is_refused(content: bytes) -> None:
    with pytest.raises(DataFileError, match="no examples"):
        validate_chat_jsonl(content)


def test_oversize_file_is_refused_before_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    path.write_bytes(jsonl(*[GOOD] * 50))
    with pytest.raises(DataFileError, match=r"too large \(\d+ bytes\): the limit is 100 bytes"):
        validate_chat_jsonl(path, max_bytes=100)
    with pytest.raises(DataFileError, match="the limit is 100 bytes"):
        validate_chat_jsonl(io.BytesIO(path.read_bytes()), max_bytes=100)


def test_too_many_lines_is_refused() -> None:
    with pytest.raises(DataFileError, match="line 4: the file has more than 3 lines"):
        validate_chat_jsonl(jsonl(*[GOOD] * 5), max_lines=3)


# --- tokenization with a real chat template -------------------------------------------------


def masked_text(tokenizer, ids, mask) -> str:  # type: ignore[no-untyped-def]
    return tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if m])


def test_only_assistant_tokens_are_in_the_loss(smol_tokenizer) -> None:  # type: ignore[no-untyped-def]
    messages = [
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris is the capital."},
        {"role": "user", "content": "And of Italy?"},
        {"role": "assistant", "content": "Rome."},
    ]
    (seq,) = tokenize_example(smol_tokenizer, messages, max_seq_len=512)
    full = smol_tokenizer.apply_chat_template(messages, tokenize=False)
    assert smol_tokenizer.decode(seq.input_ids) == full
    trained = masked_text(smol_tokenizer, seq.input_ids, seq.loss_mask)
    # each answer with its end-of-turn marker, nothing of the system/user turns or headers
    assert trained == "Paris is the capital.<|im_end|>\nRome.<|im_end|>\n"


def test_weight_zero_assistant_turn_is_context_only(smol_tokenizer) -> None:  # type: ignore[no-untyped-def]
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Bad answer.", "weight": 0},
        {"role": "user", "content": "Again"},
        {"role": "assistant", "content": "Good answer."},
    ]
    (seq,) = tokenize_example(smol_tokenizer, messages, max_seq_len=512)
    assert masked_text(smol_tokenizer, seq.input_ids, seq.loss_mask) == "Good answer.<|im_end|>\n"
    assert "Bad answer." in smol_tokenizer.decode(seq.input_ids)


def test_template_that_rerenders_earlier_turns_gets_one_sequence_per_turn(
    smol_tokenizer_dir: Path,
) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smol_tokenizer_dir)
    # A template whose header depends on the number of messages: prefixes are not stable.
    tokenizer.chat_template = (
        "[{{ messages|length }} turns]\n{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
        "{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    messages = [
        {"role": "user", "content": "One?"},
        {"role": "assistant", "content": "First."},
        {"role": "user", "content": "Two?"},
        {"role": "assistant", "content": "Second."},
    ]
    first, second = tokenize_example(tokenizer, messages, max_seq_len=512)
    assert masked_text(tokenizer, first.input_ids, first.loss_mask) == "First.<|im_end|>\n"
    assert masked_text(tokenizer, second.input_ids, second.loss_mask) == "Second.<|im_end|>\n"
    assert "Second." not in tokenizer.decode(first.input_ids)


def test_truncation_keeps_the_start_and_drops_examples_without_answer(smol_tokenizer) -> None:  # type: ignore[no-untyped-def]
    example = ChatExample(
        7,
        (
            {"role": "user", "content": "word " * 200},
            {"role": "assistant", "content": "ok"},
        ),
    )
    assert tokenize_example(smol_tokenizer, example, max_seq_len=50) == []
    (seq,) = tokenize_example(smol_tokenizer, example, max_seq_len=400)
    assert seq.line == 7 and seq.num_loss_tokens >= 2
