"""The `InferenceEngine` the runtime drives: streaming, cancellation, adapters, settings."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from lmaas.config import Settings
from lmaas.engine.async_engine import AsyncEngine
from lmaas.engine.engine_config import EngineConfig
from lmaas.engine.interface import EngineRequestError
from lmaas.protocol import GenerateRequest, SamplingParams


def config(folder: Path, **kw) -> EngineConfig:
    base = dict(
        model_path=folder,
        dtype=torch.float32,
        block_size=4,
        kv_cache_bytes=1 << 20,
        max_num_seqs=8,
        max_batched_tokens=64,
        lora_slots=2,
        max_lora_rank=16,
    )
    base.update(kw)
    return EngineConfig(**base)


@pytest.fixture
async def engine(tiny_models):
    eng = AsyncEngine(config(tiny_models("llama-tied")))
    await eng.start()
    yield eng
    await eng.shutdown()


def request(rid: str, max_tokens: int = 8, **kw) -> GenerateRequest:
    return GenerateRequest(
        request_id=rid,
        prompt=kw.pop("prompt", "the cat sat"),
        sampling=SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True),
        **kw,
    )


async def collect(eng: AsyncEngine, req: GenerateRequest):
    return [event async for event in eng.generate(req)]


async def wait_idle(eng: AsyncEngine) -> None:
    for _ in range(200):
        stats = eng.stats()
        if stats["num_running"] == 0 and stats["num_waiting"] == 0 and stats["kv_usage"] == 0:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"engine did not free its work: {eng.stats()}")


async def test_events_stream_and_end_with_usage(engine) -> None:
    events = await collect(engine, request("r1", max_tokens=6))
    assert len(events) == 6, "one event per generated token"
    assert [e.finish_reason for e in events[:-1]] == [None] * 5
    assert events[-1].finish_reason == "length" and events[-1].usage.completion_tokens == 6


async def test_concurrent_requests_match_one_at_a_time(engine) -> None:
    prompts = [f"prompt number {i} " * (i + 1) for i in range(5)]
    alone = [await collect(engine, request(f"a{i}", prompt=p)) for i, p in enumerate(prompts)]
    together = await asyncio.gather(
        *(collect(engine, request(f"b{i}", prompt=p)) for i, p in enumerate(prompts))
    )
    for x, y in zip(alone, together, strict=True):
        assert [e.token_ids for e in x] == [e.token_ids for e in y]


async def test_validation_errors_raise_before_the_first_event(engine) -> None:
    stream = engine.generate(request("bad", prompt="x" * 400))
    with pytest.raises(EngineRequestError, match="context"):
        await stream.__anext__()
    events = await collect(engine, request("good", max_tokens=2))
    assert events[-1].finish_reason == "length"


async def test_client_gone_frees_the_request(engine) -> None:
    stream = engine.generate(request("long", max_tokens=200))
    first = await stream.__anext__()
    assert first.token_ids
    await stream.aclose()
    await wait_idle(engine)


async def test_adapter_lifecycle(engine, tiny_adapters) -> None:
    folder = tiny_adapters("llama-tied", 8, 5)
    with pytest.raises(EngineRequestError) as err:
        await collect(engine, request("x", adapter_id="tuned"))
    assert err.value.status == 404
    # Loaded on demand from the request's adapter_uri.
    events = await collect(engine, request("y", adapter_id="tuned", adapter_uri=str(folder)))
    assert events[-1].finish_reason == "length"
    states = {s.adapter_id: s for s in engine.adapters()}
    assert states["tuned"].rank == 8 and states["tuned"].location == "device"
    state = await engine.load_adapter("other", folder, pin=True)
    assert state.pinned and state.rank == 8
    await engine.unload_adapter("tuned")
    for _ in range(100):
        if "tuned" not in {s.adapter_id for s in engine.adapters()}:
            break
        await asyncio.sleep(0.02)
    assert {s.adapter_id for s in engine.adapters()} == {"other"}
    with pytest.raises(EngineRequestError):
        await engine.unload_adapter("tuned")


async def test_bad_adapter_is_refused(engine, tmp_path) -> None:
    with pytest.raises(EngineRequestError, match=r"adapter_config\.json"):
        await engine.load_adapter("broken", tmp_path)


async def test_from_settings_and_info(tiny_models, monkeypatch) -> None:
    monkeypatch.setenv("LMAAS_BASE_MODEL", str(tiny_models("qwen2")))
    monkeypatch.setenv("LMAAS_DTYPE", "float32")
    monkeypatch.setenv("LMAAS_KV_CACHE_BYTES", str(1 << 20))
    eng = AsyncEngine.from_settings(Settings())
    info = eng.info()
    assert info.architecture == "qwen2" and info.max_context == 256 and info.device == "cpu"
    assert info.lora_targets["k_proj"].out_features == 32
    assert info.dtype == "float32"
    await eng.start()
    try:
        events = await collect(eng, request("s", max_tokens=3))
        assert events[-1].usage.completion_tokens == 3
    finally:
        await eng.shutdown()


async def test_a_request_id_runs_once_at_a_time(engine) -> None:
    first = engine.generate(request("dup", max_tokens=50))
    await first.__anext__()
    with pytest.raises(EngineRequestError) as err:
        await engine.generate(request("dup")).__anext__()
    assert err.value.status == 409
    rest = [event async for event in first]
    assert rest[-1].finish_reason == "length"
