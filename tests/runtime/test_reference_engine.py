"""The reference engine against its oracle (transformers/peft `generate`), and its refusals."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lmaas.engine.interface import EngineRequestError
from lmaas.engine.reference_engine import ReferenceEngine
from lmaas.protocol import ChatMessage, GenerateEvent, GenerateRequest, SamplingParams
from tests.helpers.adapters import make_peft_adapter, write_adapter_files

MESSAGES = [ChatMessage(role="user", content="What is the capital of France?")]


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> ReferenceEngine:
    return ReferenceEngine(tiny_model_dir, model_name="tiny-llama")


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_peft_adapter(tiny_model_dir, tmp_path_factory.mktemp("engine") / "adapter")


def request(**kwargs) -> GenerateRequest:  # type: ignore[no-untyped-def]
    sampling = kwargs.pop("sampling", {})
    kwargs.setdefault("messages", MESSAGES)
    return GenerateRequest(request_id="r", sampling=SamplingParams(**sampling), **kwargs)


async def run(engine: ReferenceEngine, req: GenerateRequest) -> list[GenerateEvent]:
    return [event async for event in engine.generate(req)]


def token_ids(events: list[GenerateEvent]) -> list[int]:
    return [t for e in events for t in e.token_ids]


def oracle(model_dir: Path, adapter: Path | None, max_new: int) -> list[int]:
    """Greedy tokens from transformers (and peft) for MESSAGES."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    text = tokenizer.apply_chat_template(
        [m.model_dump() for m in MESSAGES], add_generation_prompt=True, tokenize=False
    )
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    out = model.generate(
        input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new, do_sample=False
    )
    return out[0, ids.shape[1] :].tolist()


async def test_greedy_tokens_match_transformers(
    engine: ReferenceEngine, tiny_model_dir: Path
) -> None:
    events = await run(engine, request(sampling={"max_tokens": 10, "temperature": 0}))
    assert token_ids(events) == oracle(tiny_model_dir, None, 10)
    last = events[-1]
    assert last.finish_reason in ("length", "stop")
    assert last.usage is not None and last.usage.completion_tokens == len(token_ids(events))


async def test_adapter_tokens_match_peft_and_base_stays_base(
    engine: ReferenceEngine, tiny_model_dir: Path, adapter_dir: Path
) -> None:
    state = await engine.load_adapter("a1", adapter_dir)
    assert (state.adapter_id, state.rank) == ("a1", 4)
    greedy = {"max_tokens": 10, "temperature": 0}
    tuned = token_ids(await run(engine, request(adapter_id="a1", sampling=greedy)))
    assert tuned == oracle(tiny_model_dir, adapter_dir, 10)
    base = token_ids(await run(engine, request(sampling=greedy)))
    assert base == oracle(tiny_model_dir, None, 10)
    assert tuned != base

    await engine.load_adapter("a2", adapter_dir)
    await engine.unload_adapter("a1")
    assert token_ids(await run(engine, request(adapter_id="a2", sampling=greedy))) == tuned
    with pytest.raises(EngineRequestError) as exc:
        await run(engine, request(adapter_id="a1"))
    assert (exc.value.code, exc.value.status) == ("adapter_not_found", 404)
    await engine.unload_adapter("a2")
    assert engine.adapters() == []
    assert token_ids(await run(engine, request(sampling=greedy))) == base
    with pytest.raises(EngineRequestError):
        await engine.unload_adapter("a2")


async def test_a_bad_adapter_is_refused_and_changes_nothing(
    engine: ReferenceEngine, tmp_path: Path
) -> None:
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    bad = write_adapter_files(
        tmp_path / "bad",
        {f"{prefix}.lora_A.weight": ([4, 32], None), f"{prefix}.lora_B.weight": ([32, 4], None)},
        rank=4,
    )
    with pytest.raises(EngineRequestError) as exc:
        await engine.load_adapter("bad", bad)
    assert exc.value.code == "shape_mismatch"
    assert "bad" not in [a.adapter_id for a in engine.adapters()]
    assert (await run(engine, request(sampling={"max_tokens": 2})))[-1].finish_reason


async def test_sampling_repeats_with_a_seed(engine: ReferenceEngine) -> None:
    sampled = {"max_tokens": 12, "temperature": 1.0, "top_p": 0.9, "top_k": 50, "seed": 11}
    a = token_ids(await run(engine, request(sampling=sampled)))
    b = token_ids(await run(engine, request(sampling=sampled)))
    c = token_ids(await run(engine, request(sampling={**sampled, "seed": 12})))
    assert a == b
    assert a != c


async def test_stop_strings_are_cut_and_never_streamed(engine: ReferenceEngine) -> None:
    sampled = {"max_tokens": 30, "temperature": 1.0, "seed": 5, "ignore_eos": True}
    full = "".join(e.text for e in await run(engine, request(sampling=sampled)))
    stop = next(full[i : i + 2] for i in range(3, len(full) - 2) if full[i : i + 2].isprintable())
    events = await run(engine, request(sampling={**sampled, "stop": [stop]}))
    text = "".join(e.text for e in events)
    assert text == full[: full.index(stop)]
    assert events[-1].finish_reason == "stop"


async def test_refusals_happen_before_the_first_event(engine: ReferenceEngine) -> None:
    cases = [
        (request(sampling={"max_tokens": 300}), "context_length_exceeded"),
        (request(messages=None, prompt="x " * 400), "context_length_exceeded"),
        (request(messages=None, prompt_token_ids=[1, 2, 99999]), None),
        (request(messages=None, prompt=""), None),
        (request(prompt="both"), None),
        (request(adapter_id="never-loaded"), "adapter_not_found"),
    ]
    for req, code in cases:
        with pytest.raises(EngineRequestError) as exc:
            await run(engine, req)
        assert exc.value.code == code, req
        assert exc.value.message


async def test_cancelled_requests_free_the_engine(engine: ReferenceEngine) -> None:
    long = request(sampling={"max_tokens": 200, "ignore_eos": True})
    stream = engine.generate(long)
    await anext(stream)
    second = asyncio.ensure_future(run(engine, request(sampling={"max_tokens": 2})))
    await asyncio.sleep(0.05)
    assert engine.stats()["num_waiting"] == 1, "requests queue behind the running one"
    await stream.aclose()  # the client went away
    events = await asyncio.wait_for(second, timeout=30)
    assert events[-1].finish_reason is not None
    assert engine.stats()["num_running"] == 0 and engine.stats()["num_waiting"] == 0
