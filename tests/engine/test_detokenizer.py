"""Streaming text: multi-byte characters, stop strings held back, stop tokens, max tokens."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmaas.engine.detokenizer import IncrementalDetokenizer, StopChecker
from lmaas.engine.tokenizer import Tokenizer
from tests.engine.conftest import write_byte_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    folder: Path = tmp_path_factory.mktemp("tok")
    write_byte_tokenizer(folder)
    return Tokenizer(folder)


def stream(tokenizer: Tokenizer, text: str, stops: list[str], max_tokens: int = 1000):
    ids = tokenizer.encode(text)
    detok = IncrementalDetokenizer(tokenizer, tokenizer.encode("prompt: "))
    checker = StopChecker(stop=stops, stop_token_ids={999}, max_tokens=max_tokens)
    pieces, reason = [], None
    for n, token in enumerate(ids, 1):
        out, reason = checker.step(token, detok.step(token), n)
        pieces.append(out)
        if reason:
            break
    return pieces, reason


def test_multibyte_characters_are_never_split(tokenizer: Tokenizer) -> None:
    text = "héllo 世界 🎉 ok"
    pieces, reason = stream(tokenizer, text, [])
    assert "".join(pieces) == text and reason is None
    assert all("\ufffd" not in p for p in pieces)
    assert "" in pieces, "a byte-level tokenizer splits these characters over several tokens"


def test_stop_string_is_held_back_and_not_sent(tokenizer: Tokenizer) -> None:
    pieces, reason = stream(tokenizer, "one two STOP three", ["STOP"])
    assert reason == "stop" and "".join(pieces) == "one two "
    # Nothing of "STOP" was sent before the match was certain.
    sent = ""
    for p in pieces:
        sent += p
        assert "S" not in sent


def test_false_start_of_a_stop_string_is_released(tokenizer: Tokenizer) -> None:
    pieces, reason = stream(tokenizer, "a ST b STOP", ["STOP"])
    assert reason == "stop" and "".join(pieces) == "a ST b "


def test_stop_string_across_multibyte_tokens(tokenizer: Tokenizer) -> None:
    pieces, reason = stream(tokenizer, "x 世界 y", ["界"])
    assert reason == "stop" and "".join(pieces) == "x 世"


def test_first_of_several_stop_strings_wins(tokenizer: Tokenizer) -> None:
    pieces, reason = stream(tokenizer, "abc def ghi", ["ghi", "def"])
    assert "".join(pieces) == "abc " and reason == "stop"


def test_max_tokens_flushes_held_text(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("xyz ST")
    pieces, reason = stream(tokenizer, "xyz ST", ["STOP"], max_tokens=len(ids))
    assert reason == "length" and "".join(pieces) == "xyz ST"


def test_stop_token_ends_without_text() -> None:
    checker = StopChecker(stop=["zz"], stop_token_ids={7}, max_tokens=10)
    assert checker.step(1, "abz", 1) == ("ab", None)
    assert checker.step(7, "", 2) == ("z", "stop")


def test_token_text_is_unique_for_partial_characters(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("世界")
    texts = [tokenizer.token_text(i) for i in ids]
    assert all(t.startswith("bytes:\\x") for t in texts)
    assert len(set(texts)) == len(set(ids))
