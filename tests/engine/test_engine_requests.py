"""The synchronous engine end to end: requests in, events out, bad input refused clearly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from lmaas.engine.interface import EngineRequestError
from lmaas.protocol import ChatMessage, GenerateRequest, SamplingParams
from tests.engine.conftest import build_adapter, cache_bytes, make_engine


@pytest.fixture(scope="module")
def engine(tiny_models):
    return make_engine(tiny_models("llama-tied"), torch.device("cpu"))


def text_of(events) -> str:
    return "".join(e.text for e in events)


def req(request_id: str, **kw) -> GenerateRequest:
    sampling = kw.pop("sampling", SamplingParams(max_tokens=8, temperature=0))
    return GenerateRequest(request_id=request_id, sampling=sampling, **kw)


def test_prompt_chat_and_token_ids_all_work(engine) -> None:
    tok = engine.tokenizer
    chat = [ChatMessage(role="user", content="hi there")]
    rendered = tok.render_chat([m.model_dump() for m in chat])
    assert rendered == "<s><|user|>hi there</s><|assistant|>"
    out = engine.generate(
        [
            req("text", prompt=rendered),
            req("chat", messages=chat),
            req("ids", prompt_token_ids=tok.encode(rendered, add_special_tokens=False)),
        ]
    )
    tokens = {rid: [t for e in evs for t in e.token_ids] for rid, evs in out.items()}
    assert tokens["chat"] == tokens["ids"] == tokens["text"]
    final = out["chat"][-1]
    assert final.finish_reason in ("stop", "length")
    assert final.usage is not None and final.usage.completion_tokens == len(tokens["chat"])
    assert final.usage.prompt_tokens == len(tok.encode_chat([m.model_dump() for m in chat]))


def test_stop_string_cuts_the_output(engine) -> None:
    base = engine.generate(
        [
            req(
                "a",
                prompt="the cat",
                sampling=SamplingParams(max_tokens=12, temperature=0, ignore_eos=True),
            )
        ]
    )
    full = text_of(base["a"])
    assert len(full) > 4
    stop = full[2:4]
    cut = engine.generate(
        [
            req(
                "b",
                prompt="the cat",
                sampling=SamplingParams(max_tokens=12, temperature=0, ignore_eos=True, stop=[stop]),
            )
        ]
    )
    assert text_of(cut["b"]) == full[: full.index(stop)]
    assert cut["b"][-1].finish_reason == "stop"


def test_stop_token_ids_end_the_request(engine) -> None:
    first = engine.generate(
        [
            req(
                "a",
                prompt="hello",
                sampling=SamplingParams(max_tokens=6, temperature=0, ignore_eos=True),
            )
        ]
    )
    tokens = [t for e in first["a"] for t in e.token_ids]
    stopped = engine.generate(
        [
            req(
                "b",
                prompt="hello",
                sampling=SamplingParams(
                    max_tokens=6, temperature=0, ignore_eos=True, stop_token_ids=[tokens[2]]
                ),
            )
        ]
    )
    got = [t for e in stopped["b"] for t in e.token_ids]
    assert got == tokens[: tokens.index(tokens[2]) + 1]
    assert stopped["b"][-1].finish_reason == "stop"


def test_seeded_sampling_does_not_depend_on_the_batch(engine) -> None:
    params = SamplingParams(max_tokens=10, temperature=1.0, seed=42, ignore_eos=True)
    alone = engine.generate([req("s", prompt="once upon", sampling=params)])
    noise = [
        req(
            f"n{i}",
            prompt=f"noise {i} " * (i + 1),
            sampling=SamplingParams(max_tokens=10, temperature=1.0),
        )
        for i in range(5)
    ]
    mixed = engine.generate([*noise[:2], req("s", prompt="once upon", sampling=params), *noise[2:]])
    assert [e.token_ids for e in alone["s"]] == [e.token_ids for e in mixed["s"]]


@pytest.mark.parametrize(
    ("request_kw", "code", "fragment"),
    [
        (dict(prompt="x" * 300), "context_length_exceeded", "context is 256 tokens"),
        (
            dict(prompt="hi", sampling=SamplingParams(max_tokens=300)),
            "context_length_exceeded",
            "max_tokens",
        ),
        (dict(prompt="hi", messages=[ChatMessage(role="user", content="x")]), None, "exactly one"),
        (dict(prompt_token_ids=[1, 99999]), None, "outside the vocabulary"),
        (dict(prompt=""), None, "empty"),
        (dict(prompt="hi", adapter_id="nope"), "adapter_not_found", "not loaded"),
    ],
)
def test_bad_requests_are_refused_clearly(engine, request_kw, code, fragment) -> None:
    with pytest.raises(EngineRequestError) as err:
        engine.add_request(req("bad", **request_kw))
    assert fragment in err.value.message and err.value.code == code
    assert not engine.has_unfinished_requests()


def test_prompt_larger_than_the_whole_cache_is_refused(tiny_models) -> None:
    folder = tiny_models("llama-tied")
    small = make_engine(folder, torch.device("cpu"), kv_cache_bytes=cache_bytes(folder, 4))
    with pytest.raises(EngineRequestError, match="KV cache holds only 16"):
        small.add_request(req("big", prompt_token_ids=list(range(20))))
    out = small.generate([req("ok", prompt_token_ids=list(range(10)))])
    assert out["ok"][-1].finish_reason is not None


def _adapter_copy(src: Path, dst: Path, **config_changes) -> Path:
    shutil.copytree(src, dst)
    config = json.loads((dst / "adapter_config.json").read_text())
    config.update(config_changes)
    (dst / "adapter_config.json").write_text(json.dumps(config))
    return dst


def test_adapters_that_do_not_fit_are_refused(engine, tiny_models, tiny_adapters, tmp_path) -> None:
    good = tiny_adapters("llama-tied", 8, 1)
    other_base = build_adapter(tiny_models("mistral"), tmp_path / "mistral", rank=4, seed=0)
    cases = {
        other_base: "trained for another base model",
        tiny_adapters("llama-tied", 16, 2): None,  # rank 16 = the engine's max: accepted
        _adapter_copy(good, tmp_path / "dora", use_dora=True): "DoRA",
        _adapter_copy(good, tmp_path / "bias", bias="all"): "bias",
        _adapter_copy(good, tmp_path / "r", r=4): "config says r=4",
        tmp_path / "missing": r"no adapter_config\.json",
    }
    for folder, fragment in cases.items():
        if fragment is None:
            engine.read_adapter("fine", folder)
            continue
        with pytest.raises(EngineRequestError, match=fragment):
            engine.read_adapter("x", folder)
    rank_engine = make_engine(tiny_models("llama-tied"), torch.device("cpu"), max_lora_rank=8)
    with pytest.raises(EngineRequestError, match="above this runtime's maximum 8"):
        rank_engine.read_adapter("big", tiny_adapters("llama-tied", 16, 2))


def test_a_failed_forward_pass_fails_its_batch_and_the_engine_goes_on(engine, monkeypatch) -> None:
    calls = {"n": 0}
    real = engine.runner.forward

    def flaky(items):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("injected device failure")
        return real(items)

    monkeypatch.setattr(engine.runner, "forward", flaky)
    failed = engine.generate([req("f1", prompt="a"), req("f2", prompt="b")])
    for events in failed.values():
        assert events[-1].finish_reason == "error"
        assert events[-1].error is not None and "injected" in events[-1].error.message
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
    ok = engine.generate([req("after", prompt="c")])
    assert ok["after"][-1].finish_reason in ("stop", "length")
